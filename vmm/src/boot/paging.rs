//! The GDT every entry mode uses and, for the 64-bit entries, page tables
//! identity-mapping the first 4 GiB with 2 MiB pages: the kernel (or test
//! guest) reaches its image, the zero page and the MMIO gap before it builds
//! its own.

use anyhow::Result;
use kvm_bindings::kvm_segment;

use super::guest_write::write_bytes;
use super::layout::{GDT_START, IDT_START, PD_START, PDPT_START, PML4_START};
use crate::memory::GuestMemoryMmap;

/// Selectors: Linux's boot protocol expects `__BOOT_CS` 0x10 and `__BOOT_DS`
/// 0x18; PVH's 32-bit code segment sits at 0x08.
pub const CODE32_SELECTOR: u16 = 0x08;
pub const CODE64_SELECTOR: u16 = 0x10;
pub const DATA_SELECTOR: u16 = 0x18;
pub const TSS_SELECTOR: u16 = 0x20;

/// The GDT: null, code32, code64, data, TSS (flags in the descriptor's
/// access/flags layout: 0xGF_AA with G/DB/L and the access byte).
pub const GDT: [u64; 5] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The `kvm_segment` a descriptor loads as, for the vCPU's segment registers.
pub fn segment(selector: u16) -> kvm_segment {
    let entry = GDT[(selector >> 3) as usize];
    let base = ((entry >> 16) & 0x00ff_ffff) | (((entry >> 56) & 0xff) << 24);
    let limit = (entry & 0xffff) | (((entry >> 48) & 0xf) << 16);
    let g = ((entry >> 55) & 1) as u8;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 {
            ((limit << 12) | 0xfff) as u32
        } else {
            limit as u32
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

pub fn write_gdt(mem: &GuestMemoryMmap) -> Result<()> {
    let bytes: Vec<u8> = GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    write_bytes(mem, GDT_START, &bytes, "the GDT")?;
    write_bytes(mem, IDT_START, &[0u8; 8], "the IDT")
}

/// PML4 → one PDPT → four PDs of 2 MiB pages: 4 GiB identity-mapped.
pub fn write_identity_map(mem: &GuestMemoryMmap) -> Result<()> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    write_bytes(
        mem,
        PML4_START,
        &(PDPT_START | PRESENT_RW).to_le_bytes(),
        "the PML4",
    )?;
    let pdpt: Vec<u8> = (0..4u64)
        .flat_map(|i| ((PD_START + i * 0x1000) | PRESENT_RW).to_le_bytes())
        .collect();
    write_bytes(mem, PDPT_START, &pdpt, "the PDPT")?;
    let pds: Vec<u8> = (0..4 * 512u64)
        .flat_map(|i| ((i << 21) | PRESENT_RW | HUGE).to_le_bytes())
        .collect();
    write_bytes(mem, PD_START, &pds, "the page directories")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_decode_to_flat_segments() {
        let cs = segment(CODE64_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.g, cs.present, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        let cs32 = segment(CODE32_SELECTOR);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let ds = segment(DATA_SELECTOR);
        assert_eq!((ds.type_, ds.s, ds.base), (3, 1, 0));
        let tr = segment(TSS_SELECTOR);
        assert_eq!((tr.type_, tr.s), (0xb, 0));
    }
}
