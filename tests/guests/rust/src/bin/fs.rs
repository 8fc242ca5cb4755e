//! The virtio-fs guest: speaks FUSE to the VMM's virtio-fs device (ID 26)
//! by hand, since virtio-drivers has no file system driver (and its MMIO
//! transport refuses device IDs it does not know, 26 among them), so this
//! guest drives the registers and one small split queue per virtio-fs queue
//! itself, through [`vmpod_guest::rawq`]. Interrupts stay off: it polls the used ring, then checks that
//! InterruptStatus shows the used-ring bit (the VMM's call relay).
//!
//! Steps, each printed as `vmpod-guest: fs ...`: the config space (tag,
//! request queues), FUSE_INIT 7.31, LOOKUP `hello.txt` under the root,
//! OPEN, READ (its content is printed), RELEASE; CREATE `from-guest.txt`,
//! WRITE [`PAYLOAD`], FLUSH, RELEASE; then a device reset, and a second
//! round on fresh rings (a driver coming back after a reset: initialise,
//! LOOKUP again) that ends the guest with the device live. When the device
//! reports DEVICE_NEEDS_RESET instead of answering (a backend that died or
//! misbehaved), it prints `fs needs-reset`, resets the device and checks the
//! status reads 0 again (`fs needs-reset ok`).

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::ptr::NonNull;

use vmpod_guest::hal::{GuestHal, PAGE_SIZE};
use vmpod_guest::println;
use vmpod_guest::rawq::{self, DESC_WRITE, F_VERSION_1, Queue, Regs, TIMEOUT_CYCLES, reg};
use vmpod_guest::virtio::{MAX_DEVICES, device_id};
use vmpod_guest::virtio_drivers::{BufferDirection, Hal};

vmpod_guest::entry!(main);

/// What the guest writes to `from-guest.txt`.
const PAYLOAD: &[u8] = b"written by the vmpod fs guest\n";

const FS_DEVICE_ID: u32 = 26;
const HIPRIO: u16 = 0;
const REQUEST: u16 = 1;
/// Entries per ring: one request is in flight at a time.
const QSIZE: u16 = 8;

// FUSE.
const FUSE_LOOKUP: u32 = 1;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_RELEASE: u32 = 18;
const FUSE_FLUSH: u32 = 25;
const FUSE_INIT: u32 = 26;
const FUSE_CREATE: u32 = 35;
const FUSE_ROOT_ID: u64 = 1;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
/// `fuse_entry_out`: nodeid, generation, valid times, then `fuse_attr`
/// (whose `size` is at 48).
const ENTRY_OUT: usize = 128;
const O_RDONLY: u32 = 0;
const O_WRONLY: u32 = 1;
const O_CREAT: u32 = 0o100;
const O_EXCL: u32 = 0o200;

fn dma_pages(pages: usize) -> NonNull<u8> {
    let (paddr, vaddr) = GuestHal::dma_alloc(pages, BufferDirection::Both);
    if paddr == 0 {
        panic!("out of DMA memory");
    }
    vaddr
}

/// Why a request got no answer. (No `format!`: the prebuilt `alloc`
/// formatting code needs unwinding, which these guests do not link.)
enum Stop {
    NeedsReset,
    Timeout,
    /// What failed, and a number that says more (an opcode, an errno).
    Error(&'static str, i64),
}

impl From<rawq::Error> for Stop {
    fn from(e: rawq::Error) -> Stop {
        match e {
            rawq::Error::NoVersion1 { high_features } => Stop::Error(
                "no VIRTIO_F_VERSION_1, high features",
                i64::from(high_features),
            ),
            rawq::Error::FeaturesRefused { status } => {
                Stop::Error("FEATURES_OK refused, status", i64::from(status))
            }
            rawq::Error::QueueTooSmall { max, .. } => {
                Stop::Error("queue too small, max", i64::from(max))
            }
            rawq::Error::NeedsReset => Stop::NeedsReset,
            rawq::Error::Timeout => Stop::Timeout,
        }
    }
}

struct Device {
    regs: Regs,
    /// The request queue, and the hiprio queue (never used).
    request_queue: Queue,
    hiprio: Queue,
    unique: u64,
    /// Request and reply buffers, one DMA page each... times four: reads
    /// and writes of a few bytes, FUSE_INIT's reply.
    request: *mut u8,
    reply: *mut u8,
}

const BUFFER: usize = 4 * PAGE_SIZE;

impl Device {
    /// Sends `request` (device-readable) with room for `reply_len` bytes of
    /// answer (device-writable) on the request queue and polls for the
    /// answer, giving up at NEEDS_RESET; returns the reply bytes the device
    /// wrote.
    fn send(&mut self, request: &[u8], reply_len: usize) -> Result<Vec<u8>, Stop> {
        if request.len() > BUFFER || reply_len > BUFFER {
            return Err(Stop::Error("request too large", request.len() as i64));
        }
        // SAFETY: both buffers are BUFFER-byte DMA areas of ours; the device
        // only reads `request` and writes `reply` between the notify below
        // and the used-ring entry we wait for.
        unsafe {
            core::ptr::copy_nonoverlapping(request.as_ptr(), self.request, request.len());
            core::ptr::write_bytes(self.reply, 0, reply_len);
        }
        self.request_queue.post(
            &self.regs,
            &[
                (self.request as u64, request.len() as u32, 0),
                (self.reply as u64, reply_len as u32, DESC_WRITE),
            ],
        );
        let used = self.request_queue.wait_used(&self.regs, TIMEOUT_CYCLES)?;
        let len = (used.len as usize).min(reply_len);
        let mut out = Vec::with_capacity(len);
        // SAFETY: the device wrote `len` bytes of our reply buffer.
        unsafe {
            out.extend_from_slice(core::slice::from_raw_parts(self.reply, len));
        }
        Ok(out)
    }

    /// One FUSE request: header + `args`; returns the reply after its
    /// out header, or the FUSE error.
    fn fuse(
        &mut self,
        opcode: u32,
        nodeid: u64,
        args: &[u8],
        reply_len: usize,
    ) -> Result<Vec<u8>, Stop> {
        self.unique += 1;
        let mut req = Vec::with_capacity(IN_HEADER + args.len());
        put32(&mut req, (IN_HEADER + args.len()) as u32);
        put32(&mut req, opcode);
        put64(&mut req, self.unique);
        put64(&mut req, nodeid);
        put32(&mut req, 0); // uid
        put32(&mut req, 0); // gid
        put32(&mut req, 1); // pid
        put32(&mut req, 0); // total_extlen, padding
        req.extend_from_slice(args);
        let reply = self.send(&req, OUT_HEADER + reply_len)?;
        if reply.len() < OUT_HEADER {
            return Err(Stop::Error("short reply to opcode", i64::from(opcode)));
        }
        let error = get32(&reply, 4) as i32;
        if get64(&reply, 8) != self.unique {
            return Err(Stop::Error(
                "reply for another request, opcode",
                i64::from(opcode),
            ));
        }
        if error != 0 {
            println!("vmpod-guest: fs opcode {opcode} failed");
            return Err(Stop::Error("FUSE error", i64::from(error)));
        }
        Ok(reply[OUT_HEADER..].to_vec())
    }

    /// Whether the used-ring bit showed up in InterruptStatus (the VMM
    /// relays the backend's call); acknowledged if so.
    fn used_ring_interrupt(&self) -> bool {
        for _ in 0..100_000 {
            let s = self.regs.read(reg::INTERRUPT_STATUS);
            if s & 1 != 0 {
                self.regs.write(reg::INTERRUPT_ACK, s);
                return true;
            }
        }
        false
    }
}

fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn put64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn get32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn get64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn name(n: &str) -> Vec<u8> {
    let mut v = Vec::from(n.as_bytes());
    v.push(0);
    v
}

fn main() {
    let Some(index) = (0..MAX_DEVICES).find(|i| device_id(*i) == FS_DEVICE_ID) else {
        println!("vmpod-guest: fs no device");
        return;
    };
    let mut dev = Device {
        regs: Regs::of(index),
        request_queue: Queue::new(QSIZE),
        hiprio: Queue::new(QSIZE),
        unique: 0,
        request: dma_pages(BUFFER / PAGE_SIZE).as_ptr(),
        reply: dma_pages(BUFFER / PAGE_SIZE).as_ptr(),
    };
    match run(&mut dev) {
        Ok(()) => {
            dev.regs.set_status(0);
            println!("vmpod-guest: fs done status={:#x}", dev.regs.status());
            // A driver that comes back after a reset (a rebooted kernel):
            // the device starts again, and the guest ends with it live, so
            // the VMM stops the rings on its way out.
            match again(&mut dev) {
                Ok(node) => println!("vmpod-guest: fs again lookup hello.txt node={node}"),
                Err(Stop::NeedsReset) => println!("vmpod-guest: fs again needs-reset"),
                Err(Stop::Timeout) => println!("vmpod-guest: fs again timeout"),
                Err(Stop::Error(what, n)) => println!("vmpod-guest: fs again error {what} {n}"),
            }
        }
        Err(Stop::NeedsReset) => {
            println!("vmpod-guest: fs needs-reset");
            dev.regs.set_status(0);
            if dev.regs.status() == 0 {
                println!("vmpod-guest: fs needs-reset ok");
            }
        }
        Err(Stop::Timeout) => println!("vmpod-guest: fs timeout"),
        Err(Stop::Error(what, n)) => println!("vmpod-guest: fs error {what} {n}"),
    }
}

/// Initialises the device again on fresh rings (FUSE_INIT was done in the
/// first round: the backend's session lives on) and looks `hello.txt` up.
fn again(dev: &mut Device) -> Result<u64, Stop> {
    // The queues' setup clears their rings: fresh rings, used index 0.
    init(dev)?;
    let entry = dev.fuse(FUSE_LOOKUP, FUSE_ROOT_ID, &name("hello.txt"), ENTRY_OUT)?;
    Ok(get64(&entry, 0))
}

/// Device initialisation (virtio 1.x 3.1.1), VERSION_1 only, up to
/// DRIVER_OK with both queues ready (on cleared rings: the device was just
/// reset).
fn init(dev: &mut Device) -> Result<(), Stop> {
    dev.regs.negotiate(F_VERSION_1)?;
    let tag: Vec<u8> = (0..36)
        .map(|i| dev.regs.config8(i))
        .take_while(|b| *b != 0)
        .collect();
    let queues = u32::from_le_bytes([
        dev.regs.config8(36),
        dev.regs.config8(37),
        dev.regs.config8(38),
        dev.regs.config8(39),
    ]);
    println!(
        "vmpod-guest: fs tag={} request-queues={queues}",
        core::str::from_utf8(&tag).unwrap_or("?")
    );
    dev.hiprio.setup(&dev.regs, HIPRIO)?;
    dev.request_queue.setup(&dev.regs, REQUEST)?;
    dev.regs.driver_ok()?;
    Ok(())
}

fn run(dev: &mut Device) -> Result<(), Stop> {
    init(dev)?;

    // FUSE_INIT 7.31, no flags.
    let mut init = Vec::new();
    for x in [7u32, 31, 0, 0] {
        put32(&mut init, x);
    }
    let out = dev.fuse(FUSE_INIT, 0, &init, 64)?;
    println!(
        "vmpod-guest: fs init major={} minor={} irq={}",
        get32(&out, 0),
        get32(&out, 4),
        u8::from(dev.used_ring_interrupt())
    );

    // Read hello.txt.
    let entry = dev.fuse(FUSE_LOOKUP, FUSE_ROOT_ID, &name("hello.txt"), ENTRY_OUT)?;
    let (node, size) = (get64(&entry, 0), get64(&entry, 48));
    println!("vmpod-guest: fs lookup hello.txt node={node} size={size}");
    let mut open = Vec::new();
    put32(&mut open, O_RDONLY);
    put32(&mut open, 0);
    let fh = get64(&dev.fuse(FUSE_OPEN, node, &open, 16)?, 0);
    let mut read = Vec::new();
    put64(&mut read, fh);
    put64(&mut read, 0); // offset
    put32(&mut read, 1024); // size
    put32(&mut read, 0); // read_flags
    put64(&mut read, 0); // lock_owner
    put32(&mut read, O_RDONLY);
    put32(&mut read, 0);
    let data = dev.fuse(FUSE_READ, node, &read, 1024)?;
    // Printable on one line: a newline shows as '|'.
    let text: Vec<u8> = data
        .iter()
        .map(|b| match *b {
            b'\n' => b'|',
            b if b.is_ascii_graphic() || b == b' ' => b,
            _ => b'.',
        })
        .collect();
    println!(
        "vmpod-guest: fs read hello.txt bytes={} text={}",
        data.len(),
        core::str::from_utf8(&text).unwrap_or("?")
    );
    release(dev, node, fh, O_RDONLY)?;

    // Create from-guest.txt and write PAYLOAD.
    let mut create = Vec::new();
    put32(&mut create, O_WRONLY | O_CREAT | O_EXCL);
    put32(&mut create, 0o100644); // S_IFREG | 0644
    put32(&mut create, 0o022); // umask
    put32(&mut create, 0); // open_flags
    create.extend_from_slice(&name("from-guest.txt"));
    let out = dev.fuse(FUSE_CREATE, FUSE_ROOT_ID, &create, ENTRY_OUT + 16)?;
    let (node, fh) = (get64(&out, 0), get64(&out, ENTRY_OUT));
    let mut write = Vec::new();
    put64(&mut write, fh);
    put64(&mut write, 0); // offset
    put32(&mut write, PAYLOAD.len() as u32);
    put32(&mut write, 0); // write_flags
    put64(&mut write, 0); // lock_owner
    put32(&mut write, O_WRONLY);
    put32(&mut write, 0);
    write.extend_from_slice(PAYLOAD);
    let written = get32(&dev.fuse(FUSE_WRITE, node, &write, 8)?, 0);
    let mut flush = Vec::new();
    put64(&mut flush, fh);
    put32(&mut flush, 0);
    put32(&mut flush, 0);
    put64(&mut flush, 0); // lock_owner
    dev.fuse(FUSE_FLUSH, node, &flush, 0)?;
    release(dev, node, fh, O_WRONLY)?;
    println!("vmpod-guest: fs wrote from-guest.txt bytes={written}");
    Ok(())
}

fn release(dev: &mut Device, node: u64, fh: u64, flags: u32) -> Result<(), Stop> {
    let mut rel = Vec::new();
    put64(&mut rel, fh);
    put32(&mut rel, flags);
    put32(&mut rel, 0); // release_flags
    put64(&mut rel, 0); // lock_owner
    dev.fuse(FUSE_RELEASE, node, &rel, 0)?;
    Ok(())
}
