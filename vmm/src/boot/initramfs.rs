//! Placing the initramfs: as high in low RAM as the kernel allows, where
//! neither the kernel image nor its early allocations reach it. Where it
//! went ([`Initrd`]) is what both boot protocols then tell the guest.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{HIMEM_START, MMIO_GAP_START};
use crate::memory::GuestMemoryMmap;

/// Linux's default `initrd_addr_max` for kernels that do not say otherwise.
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Where the initramfs went: (guest address, size).
pub type Initrd = Option<(GuestAddress, u64)>;

/// Puts the initramfs at `path` (if any) as high as it may go in low RAM,
/// page-aligned, where the kernel's own decompression and early
/// allocations will not reach it.
pub fn load(
    mem: &GuestMemoryMmap,
    path: Option<&Path>,
    ram_size: u64,
    kernel_end: u64,
    initrd_addr_max: u64,
) -> Result<Initrd> {
    let Some(path) = path else {
        return Ok(None);
    };
    let mut file =
        File::open(path).with_context(|| format!("opening initramfs {}", path.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("reading the size of initramfs {}", path.display()))?
        .len();
    let addr = initramfs_address(ram_size, size, kernel_end, initrd_addr_max)
        .with_context(|| initramfs_fit_error(path, size, ram_size))?;
    let len = usize::try_from(size).context("initramfs too large for this host")?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .with_context(|| format!("loading initramfs {} at {addr:#x}", path.display()))?;
    Ok(Some((GuestAddress(addr), size)))
}

fn initramfs_fit_error(path: &Path, size: u64, ram: u64) -> String {
    format!(
        "initramfs {} ({} KiB) does not fit in guest memory ({} MiB) above the kernel",
        PathBuf::from(path).display(),
        size >> 10,
        ram >> 20
    )
}

/// The page-aligned address just below min(top of low RAM, initrd_addr_max),
/// or `None` when that would overlap the kernel.
pub fn initramfs_address(
    ram: u64,
    size: u64,
    kernel_end: u64,
    initrd_addr_max: u64,
) -> Option<u64> {
    let top = ram
        .min(MMIO_GAP_START)
        .min(initrd_addr_max.saturating_add(1));
    let start = top.checked_sub(size)? & !0xfff;
    (start >= kernel_end.max(HIMEM_START)).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_goes_high_and_never_over_the_kernel() {
        let ram = 128 << 20;
        assert_eq!(
            initramfs_address(ram, 0x1800, 0x200000, DEFAULT_INITRD_ADDR_MAX),
            Some(ram - 0x2000)
        );
        assert_eq!(
            initramfs_address(ram, ram, 0x200000, DEFAULT_INITRD_ADDR_MAX),
            None
        );
        assert_eq!(
            initramfs_address(8 << 30, 0x1000, 0, 0x0fff_ffff),
            Some(0x0fff_f000)
        );
    }
}
