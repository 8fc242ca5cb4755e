//! A virtio-net driver that breaks the rules, with its own minimal split
//! queues (virtio-drivers would not post these chains): an RX buffer the
//! device may only read, TX chains pointing outside guest RAM and over the
//! 65550-byte frame limit, then a descriptor chained to itself. The device
//! must answer the first three and keep serving (a valid frame goes out
//! between them), and give up with DEVICE_NEEDS_RESET on the last; after a
//! device reset it must serve again. Each step prints what it saw; the
//! host test (vmm/tests/vmm_net.rs) checks both the lines and the frames
//! that reached the TAP.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;
use vmpod_guest::eth::{self, Mac, Payload};
use vmpod_guest::println;
use vmpod_guest::rawq::{DESC_NEXT, DESC_WRITE, F_VERSION_1, Queue, Regs, TIMEOUT_CYCLES, reg};
use vmpod_guest::virtio;
use vmpod_guest::virtio_drivers::transport::DeviceType;

vmpod_guest::entry!(main);

const QSIZE: u16 = 8;
const HDR: usize = 12;
/// Far above the guest's 128 MiB, below the MMIO gap: no RAM there.
const OUTSIDE_RAM: u64 = 0x8000_0000;
/// VIRTIO_NET_F_MAC.
const F_MAC: u64 = 1 << 5;

/// Waits for the next used entry of `q`: (head, length).
fn wait_used(q: &mut Queue, regs: &Regs, what: &str) -> (u32, u32) {
    match q.wait_used(regs, TIMEOUT_CYCLES) {
        Ok(u) => (u.id, u.len),
        Err(e) => panic!("waiting for the device to use {what}: {e}"),
    }
}

/// Resets and negotiates VERSION_1 | MAC, sets up both queues, DRIVER_OK.
fn init(regs: &Regs) -> (Queue, Queue) {
    let ready = || -> Result<(Queue, Queue), vmpod_guest::rawq::Error> {
        regs.negotiate(F_VERSION_1 | F_MAC)?;
        let mut rx = Queue::new(QSIZE);
        rx.setup(regs, 0)?;
        let mut tx = Queue::new(QSIZE);
        tx.setup(regs, 1)?;
        regs.driver_ok()?;
        Ok((rx, tx))
    };
    match ready() {
        Ok(queues) => queues,
        Err(e) => panic!("initialising the device: {e}"),
    }
}

fn addr(buf: &[u8]) -> u64 {
    NonNull::from(buf).cast::<u8>().as_ptr() as usize as u64
}

fn main() {
    let Some(index) = virtio::find(DeviceType::Network, 0) else {
        panic!("no virtio-net device");
    };
    let regs = Regs::of(index);
    let (mut rx, mut tx) = init(&regs);
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = regs.config8(i);
    }
    println!("vmpod-net-hostile: mac {}", Mac(mac));

    // A receive buffer the device may only read: it must come back unused,
    // and the frame it was offered must land in the next, proper buffer.
    let readable = vec![0x5au8; 2048];
    rx.post(&regs, &[(addr(&readable), 2048, 0)]);
    println!("vmpod-net-hostile: rx posted");
    let (_, len) = wait_used(&mut rx, &regs, "the device-readable receive buffer");
    // SAFETY: volatile reads of our own buffer, which the device must not
    // have written (the compiler cannot know either way).
    let untouched =
        (0..readable.len()).all(|i| unsafe { readable.as_ptr().add(i).read_volatile() } == 0x5a);
    println!("vmpod-net-hostile: rx readable buffer returned len={len} untouched={untouched}");
    let good = vec![0u8; 2048];
    rx.post(&regs, &[(addr(&good), 2048, DESC_WRITE)]);
    let (_, len) = wait_used(&mut rx, &regs, "the receive buffer");
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
    let (_, len) = wait_used(&mut tx, &regs, "the chain outside RAM");
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
    let (_, len) = wait_used(&mut tx, &regs, "the oversized chain");
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
    wait_used(&mut tx, &regs, "the valid frame");
    println!("vmpod-net-hostile: tx ok sent");

    // A descriptor chained to itself: nothing sane to answer.
    tx.set_desc(0, addr(&header), HDR as u32, DESC_NEXT, 0);
    tx.post_head(&regs, 0);
    if regs.wait_needs_reset(TIMEOUT_CYCLES).is_err() {
        panic!("the looped chain did not set DEVICE_NEEDS_RESET");
    }
    println!(
        "vmpod-net-hostile: needs-reset ok interrupt-status={:#x}",
        regs.read(reg::INTERRUPT_STATUS)
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
    wait_used(&mut tx, &regs, "the frame after the reset");
    println!("vmpod-net-hostile: after reset sent");
    // Keep the buffers alive until the device is done with them.
    drop((readable, good, big, ok, after, header));
}
