//! ELF vmlinux: linux-loader copies the PT_LOAD segments to their physical
//! addresses and finds the PVH note; we only name the file in its errors.

use std::fs::File;
use std::path::Path;

use anyhow::{Result, anyhow};
use linux_loader::loader::KernelLoader;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use vm_memory::GuestAddress;

use super::layout::HIMEM_START;
use crate::memory::GuestMemoryMmap;

pub struct LoadedElf {
    /// The ELF entry point, used for the 64-bit Linux entry.
    pub entry: GuestAddress,
    /// The PVH 32-bit entry from the `XEN_ELFNOTE_PHYS32_ENTRY` note.
    pub pvh_entry: Option<GuestAddress>,
    /// First byte past the loaded image (including its bss).
    pub end: u64,
}

pub fn load(mem: &GuestMemoryMmap, path: &Path, file: &mut File) -> Result<LoadedElf> {
    // No kernel_offset: PVH requires loading at the linked physical address.
    let result = Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| anyhow!("loading ELF kernel {}: {e}", path.display()))?;
    let pvh_entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr),
        _ => None,
    };
    Ok(LoadedElf {
        entry: result.kernel_load,
        pvh_entry,
        end: result.kernel_end,
    })
}
