//! The guest-physical memory map: one place for every fixed address the VMM
//! writes boot structures to, so the loaders, the e820 map and the test
//! guests agree on what is free.
//!
//! ```text
//! 0x0000_0500  GDT (5 entries)            0x0000_0520  IDT (empty)
//! 0x0000_1000 .. 0x0000_5fff              free for the guest (the SMP test guest
//!                                         puts its AP trampoline at 0x3000)
//! 0x0000_6000  PVH hvm_start_info         0x0000_6040  PVH module list
//! 0x0000_6100  PVH memory map             0x0000_7000  Linux zero page
//! 0x0000_8ff0  boot stack (grows down)    0x0000_9000  PML4
//! 0x0000_a000  PDPT                       0x0000_b000  4 PDs: identity map of 4 GiB
//! 0x0002_0000  kernel command line        0x0009_fc00  MP table (EBDA, reserved)
//! 0x0010_0000  kernel (HIMEM_START)       ..  initramfs at the top of low RAM
//! 0xc000_0000  32-bit MMIO gap: boot timer, then the virtio-mmio devices
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC (in-kernel irqchip)
//! 0x1_0000_0000 RAM above the gap, when the guest has more than 3 GiB
//! ```

/// Global descriptor table used for every entry mode.
pub const GDT_START: u64 = 0x500;
/// An empty IDT: the guest installs its own before enabling interrupts.
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initramfs).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map entries.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit Linux entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
/// Four page directories of 2 MiB pages map the first 4 GiB, so the guest
/// reaches the MMIO gap (boot timer, virtio-mmio, LAPIC) before it builds its
/// own page tables.
pub const PD_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
/// Linux's default COMMAND_LINE_SIZE on x86 is 2048 bytes.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area: Linux scans its first KiB for the MP
/// floating pointer.
pub const EBDA_START: u64 = 0x9fc00;
/// Where RAM resumes after the legacy VGA/BIOS hole; kernels load here.
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit MMIO gap: [3 GiB, 4 GiB) holds no RAM.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Firecracker-compatible boot timer: a guest write of 123 here.
pub const BOOT_TIMER_START: u64 = MMIO_GAP_START;
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
/// virtio-mmio devices follow the boot timer, one page each.
pub const VIRTIO_MMIO_START: u64 = BOOT_TIMER_START + BOOT_TIMER_SIZE;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The in-kernel IOAPIC; nothing of ours may overlap it.
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's TSS needs three pages below 4 GiB that the guest never uses.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Legacy ISA interrupt lines.
pub const SERIAL_IRQ: u32 = 4;
/// virtio-mmio devices get IRQs from here up to the IOAPIC's last pin.
pub const VIRTIO_IRQ_START: u32 = 5;
pub const IRQ_MAX: u32 = 23;

/// The MP table must fit the EBDA's first KiB; 32 vCPUs leave room to spare.
pub const MAX_VCPUS: u8 = 32;
