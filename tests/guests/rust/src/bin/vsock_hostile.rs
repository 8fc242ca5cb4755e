//! A virtio-vsock driver that breaks the rules, on [`vmpod_guest::rawq`]
//! (virtio-drivers would post none of this). Steps, each printed as
//! `vsock-hostile: ...` for the host test (`vmm/tests/vmm.rs`,
//! `vsock_survives_a_hostile_driver`):
//!
//! 1. Garbage in the register file: read-only and unknown registers, 1-,
//!    2- and 8-byte and unaligned accesses, queue registers outside setup,
//!    a notify for a queue that does not exist, config space writes, and an
//!    illegal status (DRIVER_OK alone), which must set NEEDS_RESET until a
//!    reset. The registers must read as before.
//! 2. Malformed TX chains: a header descriptor too short, a device-writable
//!    header, data outside guest RAM, a length over 64 KiB, a descriptor
//!    chained to itself, a chain as long as the queue, a next index past
//!    the queue, an indirect table outside RAM. Each must come back on the
//!    used ring (the device drops it); then a REQUEST to host port
//!    [`PORT_ACCEPT`] must still get its RESPONSE.
//! 3. A flood of [`FLOOD`] REQUESTs to [`PORT_NOBODY`] (nothing listens)
//!    with no RX buffers given back: the device answers into the buffers it
//!    has, queues what it cannot deliver up to its cap, then stops taking TX
//!    chains (back-pressure). The guest sees TX stop, posts RX buffers, and
//!    sees TX resume until every REQUEST has its RST.
//! 4. RW packets on a connection to [`PORT_SINK`] (the host accepts and
//!    never reads) past the credit the device advertised: the device must
//!    RST the connection.
//! 5. An avail index far ahead of what was posted on TX: the device must
//!    set DEVICE_NEEDS_RESET; after a reset it serves again (REQUEST →
//!    RESPONSE), and the guest resets the VM.

#![no_std]
#![no_main]

use vmpod_guest::hal::{GuestHal, PAGE_SIZE};
use vmpod_guest::println;
use vmpod_guest::rawq::{
    self, DESC_NEXT, DESC_WRITE, F_VERSION_1, Queue, Regs, TIMEOUT_CYCLES, reg, status,
};
use vmpod_guest::virtio;
use vmpod_guest::virtio_drivers::transport::DeviceType;
use vmpod_guest::virtio_drivers::{BufferDirection, Hal};

vmpod_guest::entry!(main);

const RX: u16 = 0;
const TX: u16 = 1;
const EVENT: u16 = 2;
/// The device's largest queues: the flood keeps a whole TX queue in flight.
const QSIZE: u16 = 256;
const EVENT_QSIZE: u16 = 8;

const HOST_CID: u64 = 2;
/// The host test listens on `<uds>_6001` (accepts) and `<uds>_6002`
/// (accepts, never reads); nothing listens on `<uds>_6003`.
const PORT_ACCEPT: u32 = 6001;
const PORT_SINK: u32 = 6002;
const PORT_NOBODY: u32 = 6003;
/// Guest ports: one per step, and the flood's from FLOOD_PORT on.
const PORT_STEP2: u32 = 7000;
const PORT_STEP4: u32 = 7001;
const PORT_STEP5: u32 = 7002;
const FLOOD_PORT: u32 = 10_000;
/// More REQUESTs than the device queues replies for (1024).
const FLOOD: u32 = 3000;

const HDR: usize = 44;
const TYPE_STREAM: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
/// What the guest says it can buffer per connection.
const GUEST_BUF_ALLOC: u32 = 64 * 1024;
/// The device's largest packet payload.
const MAX_PKT: u32 = 64 * 1024;
/// Each RX buffer: one descriptor, header and a little room for data.
const RX_BUF: usize = 128;
/// Each TX header slot (one per descriptor).
const TX_SLOT: usize = 64;
/// Far above the guest's 128 MiB, below the MMIO gap: no RAM there.
const OUTSIDE_RAM: u64 = 0x8000_0000;
/// No used entry for this long means the device stopped taking chains:
/// a quarter to half a second at the TSC rates the tests run at, far
/// longer than the device takes for a queue's worth of chains.
const STALL_CYCLES: u64 = 1_000_000_000;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// A packet header (virtio 1.x 5.10.6), little-endian in guest memory.
#[derive(Debug, Clone, Copy, Default)]
struct Hdr {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Hdr {
    fn to_bytes(self) -> [u8; HDR] {
        let mut b = [0u8; HDR];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8; HDR]) -> Hdr {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

/// Zeroed DMA pages: the device reads and writes them, so every access
/// from here is volatile.
#[derive(Clone, Copy)]
struct Dma {
    addr: usize,
    len: usize,
}

impl Dma {
    fn new(bytes: usize) -> Dma {
        let pages = bytes.div_ceil(PAGE_SIZE);
        let (paddr, _) = GuestHal::dma_alloc(pages, BufferDirection::Both);
        if paddr == 0 {
            panic!("out of DMA memory for {bytes} bytes");
        }
        Dma {
            addr: paddr as usize,
            len: pages * PAGE_SIZE,
        }
    }

    fn at(&self, offset: usize) -> u64 {
        (self.addr + offset) as u64
    }

    fn write(&self, offset: usize, bytes: &[u8]) {
        if offset + bytes.len() > self.len {
            panic!("DMA write past the buffer");
        }
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: inside our own DMA pages (checked above).
            unsafe { ((self.addr + offset + i) as *mut u8).write_volatile(*b) };
        }
    }

    fn read_hdr(&self, offset: usize) -> Hdr {
        if offset + HDR > self.len {
            panic!("DMA read past the buffer");
        }
        let mut b = [0u8; HDR];
        for (i, byte) in b.iter_mut().enumerate() {
            // SAFETY: inside our own DMA pages (checked above).
            *byte = unsafe { ((self.addr + offset + i) as *const u8).read_volatile() };
        }
        Hdr::from_bytes(&b)
    }
}

struct Vsock {
    regs: Regs,
    rx: Queue,
    tx: Queue,
    event: Queue,
    /// QSIZE RX buffers of RX_BUF bytes, buffer i in descriptor i.
    rx_bufs: Dma,
    /// QSIZE TX header slots of TX_SLOT bytes, slot i for descriptor i.
    tx_hdrs: Dma,
    /// Payloads: 64 KiB and some.
    data: Dma,
    cid: u64,
}

fn fail(what: &str, e: rawq::Error) -> ! {
    panic!("{what}: {e}")
}

impl Vsock {
    /// Device initialisation up to DRIVER_OK, with every RX buffer posted.
    fn init(&mut self) -> Result<(), rawq::Error> {
        self.regs.negotiate(F_VERSION_1)?;
        self.rx.setup(&self.regs, RX)?;
        self.tx.setup(&self.regs, TX)?;
        self.event.setup(&self.regs, EVENT)?;
        self.regs.driver_ok()?;
        self.cid = (0..8).fold(0u64, |cid, i| {
            cid | u64::from(self.regs.config8(i)) << (8 * i)
        });
        for id in 0..QSIZE {
            self.give_rx(id);
        }
        self.rx.notify(&self.regs);
        Ok(())
    }

    /// Puts RX buffer `id` (back) in the avail ring; no notify.
    fn give_rx(&mut self, id: u16) {
        self.rx.set_desc(
            id,
            self.rx_bufs.at(usize::from(id) * RX_BUF),
            RX_BUF as u32,
            DESC_WRITE,
            0,
        );
        self.rx.push(id);
    }

    /// The next packet the device put in an RX buffer, if any; the buffer
    /// goes back when `give_back`.
    fn poll_rx(&mut self, give_back: bool) -> Option<Hdr> {
        let used = self.rx.poll_used()?;
        let id = (used.id % u32::from(QSIZE)) as u16;
        let h = self.rx_bufs.read_hdr(usize::from(id) * RX_BUF);
        if give_back {
            self.give_rx(id);
            self.rx.notify(&self.regs);
        }
        Some(h)
    }

    fn wait_rx(&mut self, what: &str) -> Hdr {
        match self.rx.wait_used(&self.regs, TIMEOUT_CYCLES) {
            Ok(used) => {
                let id = (used.id % u32::from(QSIZE)) as u16;
                let h = self.rx_bufs.read_hdr(usize::from(id) * RX_BUF);
                self.give_rx(id);
                self.rx.notify(&self.regs);
                h
            }
            Err(e) => fail(what, e),
        }
    }

    fn hdr(&self, src_port: u32, dst_port: u32, op: u16, len: u32) -> Hdr {
        Hdr {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: GUEST_BUF_ALLOC,
            fwd_cnt: 0,
        }
    }

    /// Writes `h` into TX header slot `slot`; returns its address.
    fn put_hdr(&self, slot: u16, h: Hdr) -> u64 {
        let at = usize::from(slot % QSIZE) * TX_SLOT;
        self.tx_hdrs.write(at, &h.to_bytes());
        self.tx_hdrs.at(at)
    }

    /// Posts `chain` from descriptor 0 (nothing else in flight) and waits
    /// for the device to give it back; returns the used length.
    fn tx_chain(&mut self, chain: &[(u64, u32, u16)], what: &str) -> u32 {
        self.tx.post(&self.regs, chain);
        match self.tx.wait_used(&self.regs, TIMEOUT_CYCLES) {
            Ok(u) => u.len,
            Err(e) => fail(what, e),
        }
    }

    /// One well-formed packet, header only or with `data` after it.
    fn send(&mut self, h: Hdr, data: Option<(u64, u32)>, what: &str) {
        let at = self.put_hdr(0, h);
        match data {
            None => self.tx_chain(&[(at, HDR as u32, 0)], what),
            Some((addr, len)) => self.tx_chain(&[(at, HDR as u32, 0), (addr, len, 0)], what),
        };
    }

    /// REQUEST from guest port `from` to host port `to`; waits for the
    /// answer, which must be RESPONSE.
    fn connect(&mut self, from: u32, to: u32) -> Hdr {
        let h = self.hdr(from, to, OP_REQUEST, 0);
        self.send(h, None, "the REQUEST");
        let r = self.wait_rx("the answer to a REQUEST");
        let addressed = r.src_cid == HOST_CID && r.dst_cid == self.cid && r.type_ == TYPE_STREAM;
        let response = r.op == OP_RESPONSE && r.len == 0 && r.flags == 0;
        if !addressed || !response || r.src_port != to || r.dst_port != from {
            panic!("REQUEST {from}->{to} answered with {r:?}");
        }
        r
    }
}

fn main() {
    let Some(index) = virtio::find(DeviceType::Socket, 0) else {
        panic!("no virtio-vsock device");
    };
    let mut v = Vsock {
        regs: Regs::of(index),
        rx: Queue::new(QSIZE),
        tx: Queue::new(QSIZE),
        event: Queue::new(EVENT_QSIZE),
        rx_bufs: Dma::new(usize::from(QSIZE) * RX_BUF),
        tx_hdrs: Dma::new(usize::from(QSIZE) * TX_SLOT),
        data: Dma::new(MAX_PKT as usize + PAGE_SIZE),
        cid: 0,
    };
    garbage(&v.regs);
    if let Err(e) = v.init() {
        fail("initialising the device", e);
    }
    println!("vsock-hostile: ready cid={}", v.cid);
    malformed(&mut v);
    flood(&mut v);
    credit(&mut v);
    bad_avail_index(&mut v);
}

/// Step 1.
fn garbage(regs: &Regs) {
    regs.set_status(0);
    regs.write(reg::MAGIC, 0xdead_beef);
    regs.write(reg::DEVICE_ID, 1);
    regs.write(0x0c0, 0x1234_5678);
    regs.write(0x0f8, u32::MAX);
    let unknown = regs.read(0x0c0);
    regs.write8(reg::STATUS, 0xff);
    regs.write16(reg::QUEUE_SEL, 0xffff);
    regs.write(reg::STATUS + 2, 0x0f0f_0f0f);
    regs.write64(reg::QUEUE_DESC_LOW, u64::MAX);
    regs.write(reg::QUEUE_NUM, 16);
    regs.write(reg::QUEUE_SEL, 77);
    regs.write(reg::QUEUE_NUM, 16);
    let max = regs.read(reg::QUEUE_NUM_MAX);
    regs.write(reg::QUEUE_SEL, 0);
    regs.write(reg::DRIVER_FEATURES, u32::MAX);
    regs.write(reg::QUEUE_NOTIFY, 99);
    regs.write(reg::INTERRUPT_ACK, u32::MAX);
    // The config space (the guest CID) is read-only.
    regs.write(reg::CONFIG, 0x0bad_c0de);
    regs.write8(reg::CONFIG + 3, 0x7f);
    regs.write64(reg::CONFIG + 0x200, u64::MAX);
    // What was written over must read as it did.
    let magic = regs.read(reg::MAGIC);
    let id = regs.read(reg::DEVICE_ID);
    let cid = (0..8).fold(0u64, |cid, i| cid | u64::from(regs.config8(i)) << (8 * i));
    println!(
        "vsock-hostile: garbage written magic={magic:#x} device={id} unknown={unknown} queue77-max={max} cid={cid} status={:#x}",
        regs.status()
    );
    // DRIVER_OK without the steps before it.
    regs.set_status(status::DRIVER_OK);
    let broken = regs.status();
    regs.set_status(status::ACKNOWLEDGE);
    let refused = regs.status();
    regs.set_status(0);
    println!(
        "vsock-hostile: illegal status {broken:#x} then {refused:#x}, after reset {:#x}",
        regs.status()
    );
}

/// Step 2.
fn malformed(v: &mut Vsock) {
    let data = v.data.at(0);
    let rw = |v: &Vsock, len: u32| v.hdr(PORT_STEP2, PORT_ACCEPT, OP_RW, len);

    let at = v.put_hdr(0, rw(v, 0));
    let len = v.tx_chain(&[(at, 10, 0)], "the short header");
    println!("vsock-hostile: tx short-header returned len={len}");

    let at = v.put_hdr(0, rw(v, 0));
    let len = v.tx_chain(&[(at, HDR as u32, DESC_WRITE)], "the writable header");
    println!("vsock-hostile: tx writable-header returned len={len}");

    let at = v.put_hdr(0, rw(v, 100));
    let len = v.tx_chain(
        &[(at, HDR as u32, 0), (OUTSIDE_RAM, 100, 0)],
        "the data outside RAM",
    );
    println!("vsock-hostile: tx data-outside-ram returned len={len}");

    let at = v.put_hdr(0, rw(v, MAX_PKT + 1));
    let len = v.tx_chain(
        &[(at, HDR as u32, 0), (data, MAX_PKT + 1, 0)],
        "the packet over 64 KiB",
    );
    println!("vsock-hostile: tx len-over-64k returned len={len}");

    // Descriptor 0 is its own next: the data descriptor is the header.
    let at = v.put_hdr(0, rw(v, 100));
    v.tx.set_desc(0, at, HDR as u32, DESC_NEXT, 0);
    v.tx.post_head(&v.regs, 0);
    let len = match v.tx.wait_used(&v.regs, TIMEOUT_CYCLES) {
        Ok(u) => u.len,
        Err(e) => fail("the looped chain", e),
    };
    println!("vsock-hostile: tx looped returned len={len}");

    // Every descriptor of the queue in one chain: the header, then the
    // payload it announces scattered over the other 255.
    let piece = MAX_PKT / u32::from(QSIZE);
    let at = v.put_hdr(0, rw(v, piece * u32::from(QSIZE - 1)));
    v.tx.set_desc(0, at, HDR as u32, DESC_NEXT, 1);
    for i in 1..QSIZE {
        let flags = if i + 1 < QSIZE { DESC_NEXT } else { 0 };
        let addr = data + u64::from(u32::from(i - 1) * piece);
        v.tx.set_desc(i, addr, piece, flags, i + 1);
    }
    v.tx.post_head(&v.regs, 0);
    let len = match v.tx.wait_used(&v.regs, TIMEOUT_CYCLES) {
        Ok(u) => u.len,
        Err(e) => fail("the chain as long as the queue", e),
    };
    println!("vsock-hostile: tx chain-as-long-as-queue returned len={len}");

    // A next index past the end of the descriptor table.
    let at = v.put_hdr(0, rw(v, 100));
    v.tx.set_desc(0, at, HDR as u32, DESC_NEXT, 999);
    v.tx.post_head(&v.regs, 0);
    let len = match v.tx.wait_used(&v.regs, TIMEOUT_CYCLES) {
        Ok(u) => u.len,
        Err(e) => fail("the chain with a next index past the queue", e),
    };
    println!("vsock-hostile: tx next-out-of-range returned len={len}");

    // An indirect table (never negotiated) outside RAM.
    v.tx.set_desc(0, OUTSIDE_RAM, 16 * 4, VIRTQ_DESC_F_INDIRECT, 0);
    v.tx.post_head(&v.regs, 0);
    let len = match v.tx.wait_used(&v.regs, TIMEOUT_CYCLES) {
        Ok(u) => u.len,
        Err(e) => fail("the indirect table outside RAM", e),
    };
    println!("vsock-hostile: tx indirect-outside-ram returned len={len}");

    // Nothing of that reached anyone: the first packet for the guest is
    // the answer to a proper REQUEST.
    let r = v.connect(PORT_STEP2, PORT_ACCEPT);
    println!(
        "vsock-hostile: still serving: RESPONSE from port {} buf_alloc={}",
        r.src_port, r.buf_alloc
    );
    let h = v.hdr(PORT_STEP2, PORT_ACCEPT, OP_RST, 0);
    v.send(h, None, "the RST");
}

/// Step 3.
fn flood(v: &mut Vsock) {
    // Single-descriptor chains, so a head is a descriptor is a header slot;
    // free ones are stacked here.
    let mut free = [0u16; QSIZE as usize];
    let mut nfree = 0;
    for id in (0..QSIZE).rev() {
        free[nfree] = id;
        nfree += 1;
    }
    let (mut posted, mut tx_used, mut rst, mut other) = (0u32, 0u32, 0u32, 0u32);
    let rx_posted = v.rx.in_flight();
    let count = |h: Hdr, rst: &mut u32, other: &mut u32| {
        let ours =
            h.src_port == PORT_NOBODY && (FLOOD_PORT..FLOOD_PORT + FLOOD).contains(&h.dst_port);
        if h.op == OP_RST && ours {
            *rst += 1;
        } else {
            *other += 1;
        }
    };

    // Phase A: post TX as fast as the device takes it, give no RX buffer
    // back, until TX stops for STALL_CYCLES twice in a row.
    let mut quiet = 0;
    loop {
        let before = posted;
        while posted < FLOOD && nfree > 0 {
            nfree -= 1;
            flood_request(v, free[nfree], posted);
            posted += 1;
        }
        if posted != before || quiet > 0 {
            v.tx.notify(&v.regs);
        }
        match v.tx.wait_used(&v.regs, STALL_CYCLES) {
            Ok(u) => {
                quiet = 0;
                let mut u = Some(u);
                while let Some(used) = u {
                    tx_used += 1;
                    free[nfree] = (used.id % u32::from(QSIZE)) as u16;
                    nfree += 1;
                    u = v.tx.poll_used();
                }
            }
            Err(rawq::Error::Timeout) if quiet == 0 => quiet = 1,
            Err(rawq::Error::Timeout) => break,
            Err(e) => fail("the flood", e),
        }
        if tx_used == FLOOD {
            panic!("the flood was never back-pressured");
        }
    }
    while let Some(h) = v.poll_rx(false) {
        count(h, &mut rst, &mut other);
    }
    println!(
        "vsock-hostile: flood stalled tx-used={tx_used} posted={posted} rx-buffers={rx_posted} rst={rst} other={other} backlog={}",
        tx_used - rst
    );

    // Phase B: every RX buffer back; TX must resume until every REQUEST
    // has its RST.
    for id in 0..QSIZE {
        v.give_rx(id);
    }
    v.rx.notify(&v.regs);
    let deadline = rawq::rdtsc() + TIMEOUT_CYCLES;
    let mut round = 0u32;
    while tx_used < FLOOD || rst < FLOOD {
        if rawq::rdtsc() > deadline {
            panic!("the flood stalled after the RX buffers came: tx-used={tx_used} rst={rst}");
        }
        // The status is an MMIO exit: looked at now and then only.
        round = round.wrapping_add(1);
        if round.is_multiple_of(1024) && v.regs.status() & status::NEEDS_RESET != 0 {
            panic!("the flood made the device need a reset");
        }
        let mut gave = false;
        for _ in 0..QSIZE {
            let Some(used) = v.rx.poll_used() else { break };
            let id = (used.id % u32::from(QSIZE)) as u16;
            count(
                v.rx_bufs.read_hdr(usize::from(id) * RX_BUF),
                &mut rst,
                &mut other,
            );
            v.give_rx(id);
            gave = true;
        }
        if gave {
            v.rx.notify(&v.regs);
        }
        while let Some(used) = v.tx.poll_used() {
            tx_used += 1;
            free[nfree] = (used.id % u32::from(QSIZE)) as u16;
            nfree += 1;
        }
        let before = posted;
        while posted < FLOOD && nfree > 0 {
            nfree -= 1;
            flood_request(v, free[nfree], posted);
            posted += 1;
        }
        if posted != before {
            v.tx.notify(&v.regs);
        }
        core::hint::spin_loop();
    }
    println!("vsock-hostile: flood resumed tx-used={tx_used} rst={rst} other={other}");
}

/// Flood REQUEST `n` in descriptor (and header slot) `id`, published.
fn flood_request(v: &mut Vsock, id: u16, n: u32) {
    let h = v.hdr(FLOOD_PORT + n, PORT_NOBODY, OP_REQUEST, 0);
    let at = v.put_hdr(id, h);
    v.tx.set_desc(id, at, HDR as u32, 0, 0);
    v.tx.push(id);
}

/// Step 4.
fn credit(v: &mut Vsock) {
    let r = v.connect(PORT_STEP4, PORT_SINK);
    println!(
        "vsock-hostile: credit connected to port {} buf_alloc={}",
        r.src_port, r.buf_alloc
    );
    let payload = [0x5au8; 256];
    for off in (0..MAX_PKT as usize).step_by(payload.len()) {
        v.data.write(off, &payload);
    }
    let (mut sent, mut updates, mut forwarded, mut reset) = (0u64, 0u32, 0u32, false);
    // Credit updates carry what the device handed to the host socket.
    let seen = |h: Hdr, updates: &mut u32, forwarded: &mut u32, reset: &mut bool| {
        let ours = h.src_port == PORT_SINK && h.dst_port == PORT_STEP4;
        match h.op {
            OP_RST if ours => *reset = true,
            OP_CREDIT_UPDATE if ours => {
                *updates += 1;
                *forwarded = h.fwd_cnt;
            }
            op => println!("vsock-hostile: credit unexpected op {op}"),
        }
    };
    // 64 packets of 64 KiB: far past the host socket's buffer and the
    // device's 256 KiB.
    for _ in 0..64 {
        let h = v.hdr(PORT_STEP4, PORT_SINK, OP_RW, MAX_PKT);
        v.send(h, Some((v.data.at(0), MAX_PKT)), "an RW packet");
        sent += u64::from(MAX_PKT);
        while let Some(h) = v.poll_rx(true) {
            seen(h, &mut updates, &mut forwarded, &mut reset);
        }
        if reset {
            break;
        }
    }
    while !reset {
        let h = v.wait_rx("the RST past the credit");
        seen(h, &mut updates, &mut forwarded, &mut reset);
    }
    println!(
        "vsock-hostile: credit reset after {} KiB sent, credit-updates={updates} (the host took {} KiB)",
        sent / 1024,
        forwarded / 1024
    );
}

/// Step 5.
fn bad_avail_index(v: &mut Vsock) {
    let lie = v.tx.avail_idx().wrapping_add(QSIZE + 5);
    v.tx.set_avail_idx(lie);
    v.tx.notify(&v.regs);
    if let Err(e) = v.regs.wait_needs_reset(TIMEOUT_CYCLES) {
        fail("the avail index far ahead", e);
    }
    println!(
        "vsock-hostile: needs-reset ok status={:#x} interrupt-status={:#x}",
        v.regs.status(),
        v.regs.read(reg::INTERRUPT_STATUS)
    );
    v.regs.set_status(0);
    let after = v.regs.status();
    if let Err(e) = v.init() {
        fail("initialising the device after the reset", e);
    }
    let r = v.connect(PORT_STEP5, PORT_ACCEPT);
    println!(
        "vsock-hostile: after reset status={after:#x}, RESPONSE from port {}",
        r.src_port
    );
}
