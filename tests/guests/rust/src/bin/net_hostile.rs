//! A virtio-net driver that breaks the rules, with its own minimal split
//! queues (virtio-drivers would not post these chains): an RX buffer the
//! device may only read, TX chains pointing outside guest RAM and over the
//! 65550-byte frame limit, then a descriptor chained to itself. The device
//! must answer the first three and keep serving (a valid frame goes out
//! between them), and give up with DEVICE_NEEDS_RESET on the last; after a
//! device reset it must serve again. Each step prints what it saw; the
//! host test (shim/tests/vmm_net.rs) checks both the lines and the frames
//! that reached the TAP.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;
use vmpod_guest::eth::{self, Mac, Payload};
use vmpod_guest::hal::{GuestHal, PAGE_SIZE};
use vmpod_guest::println;
use vmpod_guest::virtio::{self, MMIO_SIZE, MMIO_START};
use vmpod_guest::virtio_drivers::transport::DeviceType;
use vmpod_guest::virtio_drivers::{BufferDirection, Hal};

vmpod_guest::entry!(main);

const QSIZE: u16 = 8;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const HDR: usize = 12;
/// Far above the guest's 128 MiB, below the MMIO gap: no RAM there.
const OUTSIDE_RAM: u64 = 0x8000_0000;
const STATUS_NEEDS_RESET: u32 = 0x40;

/// A virtio-mmio register file.
struct Regs(usize);

impl Regs {
    fn read(&self, offset: usize) -> u32 {
        // SAFETY: an aligned register of the identity-mapped device page.
        unsafe { ((self.0 + offset) as *const u32).read_volatile() }
    }

    fn write(&self, offset: usize, value: u32) {
        // SAFETY: as read.
        unsafe { ((self.0 + offset) as *mut u32).write_volatile(value) }
    }
}

/// One split virtqueue: descriptor table, avail and used ring, a page each.
struct Queue {
    index: u16,
    desc: usize,
    avail: usize,
    used: usize,
    avail_idx: u16,
    used_seen: u16,
}

fn w16(addr: usize, v: u16) {
    // SAFETY: addresses inside the queue's own DMA pages.
    unsafe { (addr as *mut u16).write_volatile(v) }
}

impl Queue {
    fn new(regs: &Regs, index: u16) -> Queue {
        let (paddr, _) = GuestHal::dma_alloc(3, BufferDirection::Both);
        if paddr == 0 {
            panic!("no DMA memory for queue {index}");
        }
        let base = paddr as usize;
        let q = Queue {
            index,
            desc: base,
            avail: base + PAGE_SIZE,
            used: base + 2 * PAGE_SIZE,
            avail_idx: 0,
            used_seen: 0,
        };
        regs.write(0x30, u32::from(index));
        if regs.read(0x34) < u32::from(QSIZE) {
            panic!("queue {index} is smaller than {QSIZE}");
        }
        regs.write(0x38, u32::from(QSIZE));
        for (low, addr) in [(0x80, q.desc), (0x90, q.avail), (0xa0, q.used)] {
            regs.write(low, addr as u32);
            regs.write(low + 4, (addr as u64 >> 32) as u32);
        }
        regs.write(0x44, 1);
        q
    }

    fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc + 16 * usize::from(i);
        // SAFETY: descriptor i < QSIZE of our own table.
        unsafe {
            (at as *mut u64).write_volatile(addr);
            ((at + 8) as *mut u32).write_volatile(len);
        }
        w16(at + 12, flags);
        w16(at + 14, next);
    }

    /// Posts `chain` (address, length, flags) from descriptor 0 on and
    /// notifies the device.
    fn post(&mut self, regs: &Regs, chain: &[(u64, u32, u16)]) {
        for (i, (addr, len, flags)) in chain.iter().enumerate() {
            let next = if i + 1 < chain.len() { NEXT } else { 0 };
            self.set_desc(i as u16, *addr, *len, flags | next, i as u16 + 1);
        }
        self.post_head(regs, 0);
    }

    fn post_head(&mut self, regs: &Regs, head: u16) {
        w16(
            self.avail + 4 + 2 * usize::from(self.avail_idx % QSIZE),
            head,
        );
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        w16(self.avail + 2, self.avail_idx);
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        regs.write(0x50, u32::from(self.index));
    }

    /// Waits for the next used entry: (head, length).
    fn wait_used(&mut self, what: &str) -> (u32, u32) {
        let deadline = rdtsc() + TIMEOUT_CYCLES;
        loop {
            // SAFETY: the used ring's index, in our own DMA page.
            let idx = unsafe { ((self.used + 2) as *const u16).read_volatile() };
            if idx != self.used_seen {
                let at = self.used + 4 + 8 * usize::from(self.used_seen % QSIZE);
                self.used_seen = self.used_seen.wrapping_add(1);
                // SAFETY: a used element of our own ring.
                return unsafe {
                    (
                        (at as *const u32).read_volatile(),
                        ((at + 4) as *const u32).read_volatile(),
                    )
                };
            }
            if rdtsc() > deadline {
                panic!("timed out waiting for the device to use {what}");
            }
            core::hint::spin_loop();
        }
    }
}

/// A few seconds at any plausible TSC rate.
const TIMEOUT_CYCLES: u64 = 20_000_000_000;

fn rdtsc() -> u64 {
    // SAFETY: reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Resets and negotiates VERSION_1 | MAC, sets up both queues, DRIVER_OK.
fn init(regs: &Regs) -> (Queue, Queue) {
    regs.write(0x70, 0);
    regs.write(0x70, 1);
    regs.write(0x70, 3);
    regs.write(0x14, 1);
    if regs.read(0x10) & 1 == 0 {
        panic!("VERSION_1 not offered");
    }
    regs.write(0x24, 1);
    regs.write(0x20, 1);
    regs.write(0x24, 0);
    regs.write(0x20, 1 << 5);
    regs.write(0x70, 0xb);
    if regs.read(0x70) & 8 == 0 {
        panic!("FEATURES_OK refused");
    }
    let rx = Queue::new(regs, 0);
    let tx = Queue::new(regs, 1);
    regs.write(0x70, 0xf);
    if regs.read(0x70) & STATUS_NEEDS_RESET != 0 {
        panic!("the device refused DRIVER_OK");
    }
    (rx, tx)
}

fn addr(buf: &[u8]) -> u64 {
    NonNull::from(buf).cast::<u8>().as_ptr() as usize as u64
}

fn main() {
    let Some(index) = virtio::find(DeviceType::Network, 0) else {
        panic!("no virtio-net device");
    };
    let regs = Regs(MMIO_START + index * MMIO_SIZE);
    let (mut rx, mut tx) = init(&regs);
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        // SAFETY: config space bytes of the device page.
        *b = unsafe { ((regs.0 + 0x100 + i) as *const u8).read_volatile() };
    }
    println!("vmpod-net-hostile: mac {}", Mac(mac));

    // A receive buffer the device may only read: it must come back unused,
    // and the frame it was offered must land in the next, proper buffer.
    let readable = vec![0x5au8; 2048];
    rx.post(&regs, &[(addr(&readable), 2048, 0)]);
    println!("vmpod-net-hostile: rx posted");
    let (_, len) = rx.wait_used("the device-readable receive buffer");
    // SAFETY: volatile reads of our own buffer, which the device must not
    // have written (the compiler cannot know either way).
    let untouched =
        (0..readable.len()).all(|i| unsafe { readable.as_ptr().add(i).read_volatile() } == 0x5a);
    println!("vmpod-net-hostile: rx readable buffer returned len={len} untouched={untouched}");
    let good = vec![0u8; 2048];
    rx.post(&regs, &[(addr(&good), 2048, WRITE)]);
    let (_, len) = rx.wait_used("the receive buffer");
    let len = (len as usize).min(good.len());
    // SAFETY: the device wrote `len` bytes; read them back through volatile
    // reads, as the compiler cannot know it did.
    let got: Vec<u8> = (0..len)
        .map(|i| unsafe { (good.as_ptr().add(i)).read_volatile() })
        .collect();
    match got.get(HDR..).and_then(eth::parse) {
        Some((_, src, kind, payload)) => println!(
            "vmpod-net-hostile: rx got {} bytes num_buffers={} type {kind:04x} from {}: {}",
            len - HDR,
            got[10],
            Mac(src),
            Payload(payload)
        ),
        None => println!("vmpod-net-hostile: rx got a {len}-byte chain"),
    }

    let header = vec![0u8; HDR];
    let frame = |text: &[u8]| eth::frame(eth::BROADCAST, mac, eth::TYPE_GUEST, text);

    // A frame whose payload lies outside guest RAM.
    tx.post(
        &regs,
        &[(addr(&header), HDR as u32, 0), (OUTSIDE_RAM, 64, 0)],
    );
    let (_, len) = tx.wait_used("the chain outside RAM");
    println!("vmpod-net-hostile: tx outside-ram returned len={len}");

    // 80000 bytes of frame: over the limit.
    let big = vec![0x77u8; 40_000];
    tx.post(
        &regs,
        &[
            (addr(&header), HDR as u32, 0),
            (addr(&big), 40_000, 0),
            (addr(&big), 40_000, 0),
        ],
    );
    let (_, len) = tx.wait_used("the oversized chain");
    println!("vmpod-net-hostile: tx oversized returned len={len}");

    // Still serving.
    let ok = frame(b"vmpod-net-hostile ok");
    tx.post(
        &regs,
        &[
            (addr(&header), HDR as u32, 0),
            (addr(&ok), ok.len() as u32, 0),
        ],
    );
    tx.wait_used("the valid frame");
    println!("vmpod-net-hostile: tx ok sent");

    // A descriptor chained to itself: nothing sane to answer.
    tx.set_desc(0, addr(&header), HDR as u32, NEXT, 0);
    tx.post_head(&regs, 0);
    let deadline = rdtsc() + TIMEOUT_CYCLES;
    while regs.read(0x70) & STATUS_NEEDS_RESET == 0 {
        if rdtsc() > deadline {
            panic!("the looped chain did not set DEVICE_NEEDS_RESET");
        }
        core::hint::spin_loop();
    }
    println!(
        "vmpod-net-hostile: needs-reset ok interrupt-status={:#x}",
        regs.read(0x60)
    );

    // A reset brings the device back.
    let (_rx, mut tx) = init(&regs);
    let after = frame(b"vmpod-net-hostile after reset");
    tx.post(
        &regs,
        &[
            (addr(&header), HDR as u32, 0),
            (addr(&after), after.len() as u32, 0),
        ],
    );
    tx.wait_used("the frame after the reset");
    println!("vmpod-net-hostile: after reset sent");
    // Keep the buffers alive until the device is done with them.
    drop((readable, good, big, ok, after, header));
}
