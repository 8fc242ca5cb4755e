//! The VMM's virtio-mmio devices: one 4 KiB page each from
//! `VIRTIO_MMIO_START` (0xC000_1000) on, in the order the VMM attached them
//! (disks first, then network devices). An address past the last device
//! reads as all ones, so the magic value ends the scan.
//!
//! Dropping a virtio-drivers device stops its queues (QueueReady 0, read
//! back) and resets it; the VMM's transport stops serving the device at the
//! first queue stopped.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use virtio_drivers::transport::DeviceType;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};

pub const MMIO_START: usize = 0xC000_1000;
pub const MMIO_SIZE: usize = 0x1000;
/// IRQs 5..=23: at most 19 devices.
pub const MAX_DEVICES: usize = 19;

/// Which device pages have been handed out: each gets one transport, so no
/// two drivers share a register file.
static CLAIMED: AtomicU32 = AtomicU32::new(0);

/// The `i`-th virtio-mmio device's transport, or None when there is no such
/// device (or it was claimed already). Dropping the transport resets the
/// device; the page stays claimed.
pub fn transport(i: usize) -> Option<MmioTransport<'static>> {
    if i >= MAX_DEVICES {
        return None;
    }
    let bit = 1u32 << i;
    if CLAIMED.fetch_or(bit, Ordering::SeqCst) & bit != 0 {
        return None;
    }
    let header = NonNull::new((MMIO_START + i * MMIO_SIZE) as *mut VirtIOHeader)?;
    // SAFETY: the page is identity-mapped device memory for the whole
    // guest's life, and claimed above so no other transport aliases it.
    match unsafe { MmioTransport::new(header, MMIO_SIZE) } {
        Ok(t) => Some(t),
        Err(_) => {
            CLAIMED.fetch_and(!bit, Ordering::SeqCst);
            None
        }
    }
}

/// The device ID at index `i`, read straight from its registers (0 when
/// there is no device).
pub fn device_id(i: usize) -> u32 {
    if i >= MAX_DEVICES {
        return 0;
    }
    let base = (MMIO_START + i * MMIO_SIZE) as *const u32;
    // SAFETY: MMIO reads of the magic and device ID registers of an
    // identity-mapped page; reads have no side effects there.
    unsafe {
        if base.read_volatile() != 0x7472_6976 {
            return 0;
        }
        base.add(2).read_volatile()
    }
}

/// The index of the `n`-th device (from 0) of type `kind`.
pub fn find(kind: DeviceType, n: usize) -> Option<usize> {
    (0..MAX_DEVICES)
        .take_while(|i| {
            // SAFETY: as in device_id.
            unsafe { ((MMIO_START + i * MMIO_SIZE) as *const u32).read_volatile() == 0x7472_6976 }
        })
        .filter(|i| device_id(*i) == kind as u32)
        .nth(n)
}
