//! The e820 map, from the guest's RAM size and the fixed layout: both boot
//! protocols hand the guest this same map (the Linux zero page in
//! [`super::zero_page`], the PVH memory map in [`super::pvh`]), so it is
//! computed in one place.

use super::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};

/// The e820 map both boot protocols describe: (address, size, type).
pub fn e820_map(ram: u64) -> Vec<(u64, u64, u32)> {
    const RAM: u32 = 1;
    const RESERVED: u32 = 2;
    let low_end = ram.min(MMIO_GAP_START);
    let mut map = vec![
        (0, EBDA_START, RAM),
        (EBDA_START, 0xa0000 - EBDA_START, RESERVED),
    ];
    if low_end > HIMEM_START {
        map.push((HIMEM_START, low_end - HIMEM_START, RAM));
    }
    if ram > MMIO_GAP_START {
        map.push((MMIO_GAP_END, ram - MMIO_GAP_START, RAM));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_leaves_out_the_hole_and_the_gap() {
        assert_eq!(
            e820_map(128 << 20),
            vec![
                (0, 0x9fc00, 1),
                (0x9fc00, 0x400, 2),
                (0x100000, (128 << 20) - 0x100000, 1)
            ]
        );
        let big = e820_map(5 << 30);
        assert_eq!(
            big.last(),
            Some(&(MMIO_GAP_END, (5u64 << 30) - MMIO_GAP_START, 1))
        );
    }
}
