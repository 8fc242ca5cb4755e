//! PVH boot: `hvm_start_info` with the command line, the initramfs as module
//! 0 and the memory map (the same e820 map the Linux path uses).

use anyhow::{Result, bail};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::e820::e820_map;
use super::initramfs::Initrd;
use super::layout::{CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START};
use crate::memory::GuestMemoryMmap;

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const START_MAGIC: u32 = 0x336e_c578;

// linux-loader's bindgen structs are not ByteValued; these transparent
// wrappers are, so vm-memory can write them without hand-made byte copies.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(hvm_start_info);
// SAFETY: plain-old-data C struct of integers, any bit pattern is valid.
unsafe impl ByteValued for StartInfo {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MemmapEntry(hvm_memmap_table_entry);
// SAFETY: as above.
unsafe impl ByteValued for MemmapEntry {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModlistEntry(hvm_modlist_entry);
// SAFETY: as above.
unsafe impl ByteValued for ModlistEntry {}

pub fn write_start_info(mem: &GuestMemoryMmap, ram: u64, initrd: Initrd) -> Result<()> {
    let map = e820_map(ram);
    let mut info = hvm_start_info {
        magic: START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        let entry = MemmapEntry(hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: *type_,
            reserved: 0,
        });
        let at = PVH_MEMMAP_START + (i * std::mem::size_of::<MemmapEntry>()) as u64;
        if mem.write_obj(entry, GuestAddress(at)).is_err() {
            bail!("writing the PVH memory map at {at:#x}");
        }
    }
    if let Some((addr, size)) = initrd {
        let module = ModlistEntry(hvm_modlist_entry {
            paddr: addr.0,
            size,
            ..Default::default()
        });
        if mem
            .write_obj(module, GuestAddress(PVH_MODLIST_START))
            .is_err()
        {
            bail!("writing the PVH module list at {PVH_MODLIST_START:#x}");
        }
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    if mem
        .write_obj(StartInfo(info), GuestAddress(PVH_INFO_START))
        .is_err()
    {
        bail!("writing hvm_start_info at {PVH_INFO_START:#x}");
    }
    Ok(())
}
