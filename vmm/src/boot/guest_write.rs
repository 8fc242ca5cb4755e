//! Checked writes of boot structures into guest memory, shared by every
//! loader: a structure that would land outside guest RAM fails with one
//! line naming it and its address, not a bare vm-memory error.

use anyhow::{Context, Result, bail};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::GuestMemoryMmap;

/// Checks that `[addr, addr+len)` lies in guest RAM.
pub(crate) fn check_fits(mem: &GuestMemoryMmap, addr: u64, len: usize, what: &str) -> Result<()> {
    if mem
        .checked_offset(GuestAddress(addr), len.saturating_sub(1))
        .is_none()
        || !mem.address_in_range(GuestAddress(addr).unchecked_add(len.saturating_sub(1) as u64))
    {
        bail!("{what} at {addr:#x} (+{len:#x}) lies outside guest memory");
    }
    Ok(())
}

/// Writes `bytes` at `addr`, naming `what` on failure.
pub(crate) fn write_bytes(
    mem: &GuestMemoryMmap,
    addr: u64,
    bytes: &[u8],
    what: &str,
) -> Result<()> {
    check_fits(mem, addr, bytes.len(), what)?;
    mem.write_slice(bytes, GuestAddress(addr))
        .with_context(|| format!("writing {what} at {addr:#x}"))
}
