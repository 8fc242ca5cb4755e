//! A raw virtio-mmio driver kit for the guests that virtio-drivers cannot
//! serve: devices it does not know (virtio-fs, ID 26, which its MMIO
//! transport refuses) and hostile drivers that post what no real driver
//! would (device-readable receive buffers, descriptors outside RAM, loops,
//! chains as long as the queue, an avail index far ahead of what was
//! posted).
//!
//! - [`Regs`]: a device's register file, at the offsets in [`reg`], with
//!   accesses of any size (a hostile guest writes bytes and quads too).
//! - [`Regs::negotiate`] and [`Regs::driver_ok`]: device initialisation
//!   (virtio 1.x 3.1.1) around the queue setup, VERSION_1 required.
//! - [`Queue`]: one split virtqueue in zeroed DMA pages. Descriptors are
//!   written as given ([`Queue::set_desc`], [`Queue::write_chain`]), heads
//!   published one by one ([`Queue::push`], [`Queue::post_head`]) and the
//!   avail index can be set to anything ([`Queue::set_avail_idx`]). Used
//!   entries are polled ([`Queue::poll_used`]) or waited for with a deadline
//!   ([`Queue::wait_used`]), which also gives up when the device reports
//!   DEVICE_NEEDS_RESET.
//!
//! Guest memory is identity-mapped, so a buffer's address is what the device
//! is told. Nothing here allocates on the heap.

use core::fmt;
use core::sync::atomic::{Ordering, fence};

use virtio_drivers::{BufferDirection, Hal};

use crate::hal::{GuestHal, PAGE_SIZE};
use crate::virtio::{MMIO_SIZE, MMIO_START};

/// virtio-mmio (version 2) register offsets.
pub mod reg {
    pub const MAGIC: usize = 0x000;
    pub const VERSION: usize = 0x004;
    pub const DEVICE_ID: usize = 0x008;
    pub const VENDOR_ID: usize = 0x00c;
    pub const DEVICE_FEATURES: usize = 0x010;
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    pub const DRIVER_FEATURES: usize = 0x020;
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    pub const QUEUE_SEL: usize = 0x030;
    pub const QUEUE_NUM_MAX: usize = 0x034;
    pub const QUEUE_NUM: usize = 0x038;
    pub const QUEUE_READY: usize = 0x044;
    pub const QUEUE_NOTIFY: usize = 0x050;
    pub const INTERRUPT_STATUS: usize = 0x060;
    pub const INTERRUPT_ACK: usize = 0x064;
    pub const STATUS: usize = 0x070;
    pub const QUEUE_DESC_LOW: usize = 0x080;
    pub const QUEUE_DRIVER_LOW: usize = 0x090;
    pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
    pub const CONFIG_GENERATION: usize = 0x0fc;
    pub const CONFIG: usize = 0x100;
}

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Descriptor flags.
pub const DESC_NEXT: u16 = 1;
pub const DESC_WRITE: u16 = 2;

/// VIRTIO_F_VERSION_1 (feature bit 32).
pub const F_VERSION_1: u64 = 1 << 32;

/// A deadline for [`Queue::wait_used`] and status polls: several seconds at
/// any plausible TSC rate (10 s at 2 GHz, 4 s at 5 GHz).
pub const TIMEOUT_CYCLES: u64 = 20_000_000_000;

/// Why the device did not do what the driver asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// VERSION_1 is missing from the upper feature word (shown).
    NoVersion1 { high_features: u32 },
    /// FEATURES_OK did not stick; the status read back.
    FeaturesRefused { status: u32 },
    /// The queue's QueueNumMax is below the size asked for.
    QueueTooSmall { queue: u16, max: u32 },
    /// The device set DEVICE_NEEDS_RESET.
    NeedsReset,
    /// The deadline passed first.
    Timeout,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoVersion1 { high_features } => {
                write!(
                    f,
                    "VERSION_1 not offered (high features {high_features:#x})"
                )
            }
            Error::FeaturesRefused { status } => {
                write!(f, "FEATURES_OK refused (status {status:#x})")
            }
            Error::QueueTooSmall { queue, max } => {
                write!(f, "queue {queue} holds at most {max} entries")
            }
            Error::NeedsReset => f.write_str("the device needs a reset"),
            Error::Timeout => f.write_str("timed out"),
        }
    }
}

/// The time-stamp counter, for deadlines.
pub fn rdtsc() -> u64 {
    // SAFETY: reads the time-stamp counter; touches no memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// One virtio-mmio device's register file (its 4 KiB page).
#[derive(Debug, Clone, Copy)]
pub struct Regs {
    base: usize,
}

impl Regs {
    /// The registers of the `index`-th virtio-mmio device (see
    /// [`crate::virtio::find`]).
    pub fn of(index: usize) -> Regs {
        Regs {
            base: MMIO_START + index * MMIO_SIZE,
        }
    }

    fn at(&self, offset: usize) -> usize {
        self.base + offset % MMIO_SIZE
    }

    pub fn read(&self, offset: usize) -> u32 {
        // SAFETY: an access inside the device's identity-mapped MMIO page
        // (the offset wraps within it); only the device sees it.
        unsafe { (self.at(offset) as *const u32).read_volatile() }
    }

    pub fn write(&self, offset: usize, value: u32) {
        // SAFETY: as in `read`.
        unsafe { (self.at(offset) as *mut u32).write_volatile(value) }
    }

    pub fn read8(&self, offset: usize) -> u8 {
        // SAFETY: as in `read`.
        unsafe { (self.at(offset) as *const u8).read_volatile() }
    }

    pub fn write8(&self, offset: usize, value: u8) {
        // SAFETY: as in `read`.
        unsafe { (self.at(offset) as *mut u8).write_volatile(value) }
    }

    pub fn write16(&self, offset: usize, value: u16) {
        // SAFETY: as in `read`; an unaligned offset is the caller's point.
        unsafe { (self.at(offset) as *mut u16).write_volatile(value) }
    }

    /// An 8-byte access, which virtio-mmio does not have.
    pub fn write64(&self, offset: usize, value: u64) {
        // SAFETY: as in `read`; the page is 4 KiB, so keep offset below
        // 0xff9.
        unsafe { (self.at(offset) as *mut u64).write_volatile(value) }
    }

    /// A byte of the device's config space.
    pub fn config8(&self, offset: usize) -> u8 {
        self.read8(reg::CONFIG + offset)
    }

    pub fn status(&self) -> u32 {
        self.read(reg::STATUS)
    }

    pub fn set_status(&self, value: u32) {
        self.write(reg::STATUS, value);
    }

    /// Resets the device (status 0), then ACKNOWLEDGE, DRIVER, accepts
    /// `features` (VERSION_1 must be among the offered ones; `features`
    /// should include it) and sets FEATURES_OK, checking that it stuck.
    /// The queues come next, then [`Regs::driver_ok`].
    pub fn negotiate(&self, features: u64) -> Result<(), Error> {
        self.set_status(0);
        self.set_status(status::ACKNOWLEDGE);
        self.set_status(status::ACKNOWLEDGE | status::DRIVER);
        self.write(reg::DEVICE_FEATURES_SEL, 1);
        let high = self.read(reg::DEVICE_FEATURES);
        if u64::from(high) << 32 & F_VERSION_1 == 0 {
            return Err(Error::NoVersion1 {
                high_features: high,
            });
        }
        self.write(reg::DRIVER_FEATURES_SEL, 0);
        self.write(reg::DRIVER_FEATURES, features as u32);
        self.write(reg::DRIVER_FEATURES_SEL, 1);
        self.write(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        let s = self.status();
        if s & status::FEATURES_OK == 0 {
            return Err(Error::FeaturesRefused { status: s });
        }
        Ok(())
    }

    /// DRIVER_OK: the device goes live, or reports NEEDS_RESET (a queue it
    /// refused, an activation that failed).
    pub fn driver_ok(&self) -> Result<(), Error> {
        self.set_status(
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        if self.status() & status::NEEDS_RESET != 0 {
            return Err(Error::NeedsReset);
        }
        Ok(())
    }

    /// Polls the status until NEEDS_RESET shows, up to `cycles` of TSC.
    pub fn wait_needs_reset(&self, cycles: u64) -> Result<(), Error> {
        let deadline = rdtsc().saturating_add(cycles);
        while self.status() & status::NEEDS_RESET == 0 {
            if rdtsc() > deadline {
                return Err(Error::Timeout);
            }
            core::hint::spin_loop();
        }
        Ok(())
    }
}

/// A used-ring entry: the head of the chain the device is done with and the
/// bytes it wrote into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    pub id: u32,
    pub len: u32,
}

/// One split virtqueue: the descriptor table with the avail ring after it,
/// and the used ring on a page of its own, all zeroed DMA memory.
pub struct Queue {
    /// Which queue of the device it is (what QueueNotify is told).
    index: u16,
    size: u16,
    desc: usize,
    avail: usize,
    used: usize,
    pages: usize,
    /// The avail index the driver published last, and the used index it
    /// has consumed up to.
    avail_idx: u16,
    used_seen: u16,
}

fn w16(addr: usize, v: u16) {
    // SAFETY: callers pass addresses inside the queue's own DMA pages.
    unsafe { (addr as *mut u16).write_volatile(v) }
}

fn r16(addr: usize) -> u16 {
    // SAFETY: as in `w16`.
    unsafe { (addr as *const u16).read_volatile() }
}

impl Queue {
    /// Rings for `size` entries (a power of two), not yet given to any
    /// device. Panics when the DMA arena is exhausted: a test guest's bug.
    pub fn new(size: u16) -> Queue {
        let n = usize::from(size);
        let low = (16 * n + 6 + 2 * n).div_ceil(PAGE_SIZE);
        let high = (6 + 8 * n).div_ceil(PAGE_SIZE);
        let (paddr, _) = GuestHal::dma_alloc(low + high, BufferDirection::Both);
        if paddr == 0 {
            panic!("no DMA memory for a {size}-entry queue");
        }
        let base = paddr as usize;
        Queue {
            index: 0,
            size,
            desc: base,
            avail: base + 16 * n,
            used: base + low * PAGE_SIZE,
            pages: low + high,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Clears the rings (used index 0: a fresh queue, so the device must
    /// not be using them: before DRIVER_OK, after a reset) and gives them
    /// to queue `index` of the device: QueueSel, QueueNum, the three
    /// addresses, QueueReady 1.
    pub fn setup(&mut self, regs: &Regs, index: u16) -> Result<(), Error> {
        // SAFETY: our own DMA pages, which no device uses now (see above).
        unsafe { core::ptr::write_bytes(self.desc as *mut u8, 0, self.pages * PAGE_SIZE) };
        self.index = index;
        self.avail_idx = 0;
        self.used_seen = 0;
        regs.write(reg::QUEUE_SEL, u32::from(index));
        let max = regs.read(reg::QUEUE_NUM_MAX);
        if max < u32::from(self.size) {
            return Err(Error::QueueTooSmall { queue: index, max });
        }
        regs.write(reg::QUEUE_NUM, u32::from(self.size));
        for (low, addr) in [
            (reg::QUEUE_DESC_LOW, self.desc),
            (reg::QUEUE_DRIVER_LOW, self.avail),
            (reg::QUEUE_DEVICE_LOW, self.used),
        ] {
            regs.write(low, addr as u32);
            regs.write(low + 4, (addr as u64 >> 32) as u32);
        }
        regs.write(reg::QUEUE_READY, 1);
        Ok(())
    }

    /// Writes descriptor `i` (modulo the size) exactly as given.
    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc + 16 * usize::from(i % self.size);
        // SAFETY: a descriptor of our own table.
        unsafe {
            (at as *mut u64).write_volatile(addr);
            ((at + 8) as *mut u32).write_volatile(len);
        }
        w16(at + 12, flags);
        w16(at + 14, next);
    }

    /// Writes `chain` (address, length, flags) into descriptors `first`,
    /// `first + 1`, ... (wrapping), each but the last flagged NEXT to the
    /// one after it; returns the head, `first`. Not published yet.
    pub fn write_chain(&self, first: u16, chain: &[(u64, u32, u16)]) -> u16 {
        for (i, (addr, len, flags)) in chain.iter().enumerate() {
            let at = first.wrapping_add(i as u16) % self.size;
            let next = (at + 1) % self.size;
            let more = if i + 1 < chain.len() { DESC_NEXT } else { 0 };
            self.set_desc(at, *addr, *len, flags | more, next);
        }
        first % self.size
    }

    /// Publishes `head` in the avail ring; the device hears of it at the
    /// next [`Queue::notify`].
    pub fn push(&mut self, head: u16) {
        w16(
            self.avail + 4 + 2 * usize::from(self.avail_idx % self.size),
            head,
        );
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        w16(self.avail + 2, self.avail_idx);
        fence(Ordering::SeqCst);
    }

    pub fn notify(&self, regs: &Regs) {
        regs.write(reg::QUEUE_NOTIFY, u32::from(self.index));
    }

    /// Publishes `head` and notifies.
    pub fn post_head(&mut self, regs: &Regs, head: u16) {
        self.push(head);
        self.notify(regs);
    }

    /// Writes `chain` from descriptor 0 on, publishes it and notifies: for
    /// a driver with one chain in flight at a time.
    pub fn post(&mut self, regs: &Regs, chain: &[(u64, u32, u16)]) {
        let head = self.write_chain(0, chain);
        self.post_head(regs, head);
    }

    /// The avail index as published so far.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Publishes `idx` as the avail index, whatever was posted: a lie the
    /// device must catch. Later pushes count on from it.
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        fence(Ordering::SeqCst);
        w16(self.avail + 2, idx);
        fence(Ordering::SeqCst);
    }

    /// Chains published and not yet seen used.
    pub fn in_flight(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.used_seen)
    }

    /// The next used entry, if the device has written one.
    pub fn poll_used(&mut self) -> Option<Used> {
        if r16(self.used + 2) == self.used_seen {
            return None;
        }
        fence(Ordering::SeqCst);
        let at = self.used + 4 + 8 * usize::from(self.used_seen % self.size);
        self.used_seen = self.used_seen.wrapping_add(1);
        // SAFETY: a used element of our own ring, complete once the index
        // moved past it.
        let (id, len) = unsafe {
            (
                (at as *const u32).read_volatile(),
                ((at + 4) as *const u32).read_volatile(),
            )
        };
        Some(Used { id, len })
    }

    /// Waits for the next used entry for up to `cycles` of TSC, looking at
    /// the status between polls (an MMIO exit, which also paces the loop):
    /// NEEDS_RESET ends the wait.
    pub fn wait_used(&mut self, regs: &Regs, cycles: u64) -> Result<Used, Error> {
        let deadline = rdtsc().saturating_add(cycles);
        loop {
            for _ in 0..1000 {
                if let Some(u) = self.poll_used() {
                    return Ok(u);
                }
                core::hint::spin_loop();
            }
            if regs.status() & status::NEEDS_RESET != 0 {
                return Err(Error::NeedsReset);
            }
            if rdtsc() > deadline {
                return Err(Error::Timeout);
            }
        }
    }
}
