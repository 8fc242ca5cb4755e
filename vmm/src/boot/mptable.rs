//! An Intel MP Specification 1.4 table in the EBDA, so an SMP guest without
//! ACPI finds its processors, the IOAPIC and how the ISA IRQs are wired: one
//! processor entry per vCPU (APIC id = vCPU index, vCPU 0 the BSP), one ISA
//! bus, the in-kernel IOAPIC with IRQ n on pin n, and the LAPIC's LINT0 as
//! ExtINT and LINT1 as NMI (matching how the vCPUs' LAPICs are programmed).

use anyhow::{Result, bail};

use super::guest_write::write_bytes;
use super::layout::{EBDA_START, IOAPIC_START, IRQ_MAX, LAPIC_START};
use crate::memory::GuestMemoryMmap;

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6, the signature KVM guests usually see; Linux only logs it.
const CPU_SIGNATURE: u32 = 0x600;
/// FPU | APIC in the feature flags.
const CPU_FEATURES: u32 = 0x201;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// The floating pointer, then the configuration table, as bytes.
pub fn build(vcpus: u8) -> Vec<u8> {
    let table_addr = EBDA_START as u32 + 16;
    let ioapic_id = vcpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpus {
        entries.push(0); // processor
        entries.push(cpu);
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 });
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([1, 0]); // bus 0
    entries.extend(*b"ISA   ");
    count += 1;
    entries.extend([2, ioapic_id, IOAPIC_VERSION, 1]); // IOAPIC, enabled
    entries.extend((IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        // I/O interrupt: conforming polarity/trigger, ISA irq n -> pin n.
        entries.extend([3, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts to every LAPIC (0xff): LINT0 ExtINT, LINT1 NMI.
    entries.extend([4, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend([4, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend(*b"PCMP");
    table.extend(((44 + entries.len()) as u16).to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum, below
    table.extend(*b"VMPOD   ");
    table.extend(*b"MICROVM     ");
    table.extend(0u32.to_le_bytes()); // OEM table
    table.extend(0u16.to_le_bytes());
    table.extend(count.to_le_bytes());
    table.extend((LAPIC_START as u32).to_le_bytes());
    table.extend(0u16.to_le_bytes()); // extended table
    table.extend([0, 0]);
    table.extend(entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend(*b"_MP_");
    fp.extend(table_addr.to_le_bytes());
    fp.extend([1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);

    fp.extend(table);
    fp
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<()> {
    let bytes = build(vcpus);
    let room = (0xa0000 - EBDA_START) as usize;
    if bytes.len() > room {
        bail!(
            "MP table for {vcpus} vCPUs is {} bytes; the EBDA has {room}",
            bytes.len()
        );
    }
    write_bytes(mem, EBDA_START, &bytes, "the MP table")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts() {
        let t = build(2);
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let cfg = &t[16..];
        assert_eq!(&cfg[..4], b"PCMP");
        let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
        assert_eq!(len, cfg.len());
        assert_eq!(cfg.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let count = u16::from_le_bytes([cfg[34], cfg[35]]);
        assert_eq!(count, 2 + 1 + 1 + 24 + 2);
        // BSP flag only on CPU 0.
        assert_eq!(cfg[44 + 3], CPU_ENABLED | CPU_BSP);
        assert_eq!(cfg[64 + 3], CPU_ENABLED);
        assert!(build(crate::boot::layout::MAX_VCPUS).len() <= 0x400);
    }
}
