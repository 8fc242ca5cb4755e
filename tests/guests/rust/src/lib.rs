//! What every Rust test guest of the built-in VMM links against.
//!
//! The VMM loads the guest ELF at 1 MiB and enters `_start` ([`entry`]) in
//! 64-bit long mode: the first 4 GiB identity-mapped with 2 MiB pages, the
//! VMM's GDT, an empty IDT, interrupts off, `%rsi` pointing at the Linux
//! zero page (see `vmm/src/boot/layout.rs`). Guests never enable
//! interrupts: drivers poll.
//!
//! - [`entry!`] names the guest's `main`; `_start` sets up a stack and SSE,
//!   calls it, then [`exit`]s.
//! - [`print!`]/[`println!`] write to COM1, which the VMM copies to the
//!   guest's serial output; `log` records of level warn and above go there
//!   too (virtio-drivers reports its troubles through `log`).
//! - [`exit`] prints `vmpod-guest: reset` and resets the VM through the
//!   i8042, as the assembly guests do: `vmpod-vmm` exits 0.
//! - A panic prints `PANIC: <message>` and triple-faults, so `vmpod-vmm`
//!   exits non-zero ("guest failed") and the host cannot mistake a panic
//!   for a clean end.
//! - [`heap`] is a bump allocator over a static arena, so `alloc` works.
//! - [`hal::GuestHal`] is virtio-drivers' HAL for identity-mapped memory and
//!   [`virtio`] finds the VMM's virtio-mmio devices.
//! - [`rawq`] drives a device's registers and split queues by hand, for the
//!   devices virtio-drivers does not know and for the hostile guests.
//! - [`eth`] builds Ethernet frames and holds the protocol the network
//!   guests speak with the host tests.

#![no_std]

extern crate alloc;

pub mod entry;
pub mod eth;
pub mod hal;
pub mod heap;
mod logger;
mod mem;
pub mod rawq;
pub mod serial;
pub mod virtio;

pub use virtio_drivers;

/// Port I/O: the serial console, the i8042.
///
/// # Safety
///
/// Writing to an I/O port can do anything the device behind it does.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the port; `out` touches no memory.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
    }
}

/// Reads an I/O port.
///
/// # Safety
///
/// Reading an I/O port can have side effects on the device behind it.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller vouches for the port; `in` touches no memory.
    unsafe {
        core::arch::asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags));
    }
    value
}

/// Ends the guest cleanly: prints `vmpod-guest: reset` and pulses the
/// i8042's reset line (the VMM ends the VM with "guest reset (i8042)").
pub fn exit() -> ! {
    println!("vmpod-guest: reset");
    // SAFETY: 0xfe to the i8042's command port is the CPU reset pulse.
    unsafe { outb(0x64, 0xfe) };
    // A VMM without an i8042: fail loudly instead of spinning.
    triple_fault()
}

/// Ends the guest as a failure: an empty IDT makes the breakpoint's #GP a
/// double fault and then a triple fault (KVM_EXIT_SHUTDOWN), which
/// `vmpod-vmm` reports with a non-zero exit status.
pub fn triple_fault() -> ! {
    #[repr(C, packed)]
    struct Idtr {
        limit: u16,
        base: u64,
    }
    let idtr = Idtr { limit: 0, base: 0 };
    // SAFETY: deliberately unrecoverable; nothing runs after it.
    unsafe {
        core::arch::asm!("lidt [{}]", "int3", in(reg) &idtr, options(nostack));
    }
    loop {
        // SAFETY: interrupts are off; hlt only idles.
        unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(l) => println!("PANIC: {} at {}:{}", info.message(), l.file(), l.line()),
        None => println!("PANIC: {}", info.message()),
    }
    triple_fault()
}

/// The precompiled `alloc` keeps the unwinding landing pads it was built
/// with, and they name this. With `panic = "abort"` and a panic handler that
/// never returns, no unwind ever starts, so it is never called.
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    println!("PANIC: _Unwind_Resume called");
    triple_fault()
}
