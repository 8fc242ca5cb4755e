//! The worker driven directly (no thread) on a 1 MiB guest with both
//! queues at fixed addresses and a datagram socketpair standing in for the
//! TAP: the validation paths the test guests do not reach, and the option
//! parsing.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::tap::{Tap, VNET_HDR_SIZE};
use super::worker::Worker;
use super::*;
use crate::devices::virtio::{INT_USED_RING, Interrupt};
use crate::memory::GuestMemoryMmap;
use crate::vstate::vm::new_eventfd;

const RX_BASE: u64 = 0x1000;
const TX_BASE: u64 = 0x4000;
const SIZE: u16 = 16;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

struct Rig {
    worker: Worker,
    /// The host end of the "TAP".
    host: OwnedFd,
    avail: [u16; 2],
}

/// Descriptor table, avail ring, used ring: one page each from `base`.
fn queue(memory: &GuestMemoryMmap, base: u64) -> Queue {
    let mut q = Queue::new(SIZE).expect("queue");
    q.set_size(SIZE);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
    q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
    q.set_ready(true);
    assert!(q.is_valid(memory));
    q
}

impl Rig {
    fn new() -> Rig {
        let memory =
            Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory"));
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds into the array, which we own.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just created and are owned by nobody else.
        let (ours, host) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let rx = queue(&memory, RX_BASE);
        let tx = queue(&memory, TX_BASE);
        let worker = Worker::new(
            memory,
            [rx, tx],
            [
                new_eventfd().expect("eventfd"),
                new_eventfd().expect("eventfd"),
            ],
            new_eventfd().expect("eventfd"),
            Arc::new(Interrupt::new(new_eventfd().expect("eventfd"))),
            Arc::new(Tap::for_test(ours, "rig")),
        );
        Rig {
            worker,
            host,
            avail: [0; 2],
        }
    }

    fn mem(&self) -> &GuestMemoryMmap {
        &self.worker.memory
    }

    fn desc(&self, base: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = base + 16 * u64::from(i);
        let m = self.mem();
        m.write_obj(addr, GuestAddress(at)).expect("addr");
        m.write_obj(len, GuestAddress(at + 8)).expect("len");
        m.write_obj(flags, GuestAddress(at + 12)).expect("flags");
        m.write_obj(next, GuestAddress(at + 14)).expect("next");
    }

    /// Makes the chain at `head` available on queue `q` (0 RX, 1 TX).
    fn post(&mut self, q: usize, head: u16) {
        let base = [RX_BASE, TX_BASE][q] + 0x1000;
        let slot = u64::from(self.avail[q] % SIZE);
        self.mem()
            .write_obj(head, GuestAddress(base + 4 + 2 * slot))
            .expect("ring");
        self.avail[q] = self.avail[q].wrapping_add(1);
        self.mem()
            .write_obj(self.avail[q], GuestAddress(base + 2))
            .expect("idx");
    }

    /// The used ring's entries so far on queue `q`: (head, length).
    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let base = [RX_BASE, TX_BASE][q] + 0x2000;
        let idx: u16 = self
            .mem()
            .read_obj(GuestAddress(base + 2))
            .expect("used idx");
        (0..idx)
            .map(|i| {
                let at = base + 4 + 8 * u64::from(i % SIZE);
                (
                    self.mem().read_obj(GuestAddress(at)).expect("id"),
                    self.mem().read_obj(GuestAddress(at + 4)).expect("len"),
                )
            })
            .collect()
    }

    /// What the host end received, one datagram; None when nothing is
    /// queued.
    fn host_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(self.host.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }

    fn host_send(&self, frame: &[u8]) {
        // SAFETY: frame is valid for reads of its length.
        let n = unsafe { libc::send(self.host.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem()
            .write_slice(bytes, GuestAddress(addr))
            .expect("write");
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem()
            .read_slice(&mut v, GuestAddress(addr))
            .expect("read");
        v
    }
}

/// An Ethernet frame of `len` bytes with a recognisable pattern.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// A TX chain: header at 0x10000, the frame split in two descriptors.
fn tx_chain(rig: &mut Rig, head: u16, frame: &[u8], split: usize) {
    rig.write(0x10000, &[0u8; VNET_HDR_SIZE]);
    rig.write(0x11000, &frame[..split]);
    rig.write(0x20000, &frame[split..]);
    rig.desc(TX_BASE, head, 0x10000, VNET_HDR_SIZE as u32, NEXT, head + 1);
    rig.desc(TX_BASE, head + 1, 0x11000, split as u32, NEXT, head + 2);
    rig.desc(
        TX_BASE,
        head + 2,
        0x20000,
        (frame.len() - split) as u32,
        0,
        0,
    );
}

#[test]
fn tx_gathers_a_chain_into_one_frame() {
    let mut rig = Rig::new();
    let f = frame(1514, 3);
    tx_chain(&mut rig, 0, &f, 100);
    rig.post(1, 0);
    assert!(rig.worker.serve_tx().is_ok());
    let got = rig.host_recv().expect("a frame reached the TAP");
    assert_eq!(&got[..VNET_HDR_SIZE], &[0u8; VNET_HDR_SIZE]);
    assert_eq!(&got[VNET_HDR_SIZE..], f.as_slice());
    assert_eq!(rig.used(1), vec![(0, 0)]);
    assert_ne!(rig.worker.interrupt.status() & INT_USED_RING, 0);
    // A header asking for offloads that were not negotiated: sent with a
    // clean header.
    tx_chain(&mut rig, 3, &f[..60], 20);
    rig.write(0x10000, &[1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    rig.post(1, 3);
    assert!(rig.worker.serve_tx().is_ok());
    let got = rig.host_recv().expect("a frame");
    assert_eq!(&got[..VNET_HDR_SIZE], &[0u8; VNET_HDR_SIZE]);
    assert_eq!(&got[VNET_HDR_SIZE..], &f[..60]);
    assert!(rig.host_recv().is_none());
}

#[test]
fn tx_driver_errors_drop_the_frame_and_keep_serving() {
    type Setup = fn(&mut Rig);
    let cases: [(&str, Setup); 5] = [
        ("a device-writable descriptor", |r| {
            tx_chain(r, 0, &frame(100, 1), 50);
            r.desc(TX_BASE, 1, 0x11000, 50, NEXT | WRITE, 2);
        }),
        ("a buffer outside guest memory", |r| {
            tx_chain(r, 0, &frame(100, 1), 50);
            r.desc(TX_BASE, 2, 0x8000_0000, 50, 0, 0);
        }),
        ("a buffer straddling the end of memory", |r| {
            tx_chain(r, 0, &frame(100, 1), 50);
            r.desc(TX_BASE, 2, (1 << 20) - 10, 50, 0, 0);
        }),
        ("a frame over 65550 bytes", |r| {
            tx_chain(r, 0, &frame(100, 1), 50);
            r.desc(TX_BASE, 1, 0x30000, 40_000, NEXT, 2);
            r.desc(TX_BASE, 2, 0x30000, 25_551, 0, 0);
        }),
        ("a runt shorter than an Ethernet header", |r| {
            tx_chain(r, 0, &frame(13, 1), 6);
        }),
    ];
    for (what, setup) in cases {
        let mut rig = Rig::new();
        setup(&mut rig);
        rig.post(1, 0);
        assert!(rig.worker.serve_tx().is_ok(), "{what}");
        assert_eq!(rig.used(1), vec![(0, 0)], "{what}: returned unused");
        assert!(rig.host_recv().is_none(), "{what}: nothing sent");
        // Still serving.
        let f = frame(64, 9);
        tx_chain(&mut rig, 5, &f, 30);
        rig.post(1, 5);
        assert!(rig.worker.serve_tx().is_ok(), "{what}");
        assert_eq!(
            rig.host_recv().expect("next frame")[VNET_HDR_SIZE..],
            f,
            "{what}"
        );
        assert!(!rig.worker.interrupt.device_needs_reset(), "{what}");
    }
    // Exactly 65550 bytes of frame is allowed.
    let mut rig = Rig::new();
    tx_chain(&mut rig, 0, &frame(100, 1), 50);
    rig.desc(TX_BASE, 1, 0x30000, 40_000, NEXT, 2);
    rig.desc(TX_BASE, 2, 0x30000, 25_550, 0, 0);
    rig.post(1, 0);
    assert!(rig.worker.serve_tx().is_ok());
    assert_eq!(
        rig.host_recv().map(|f| f.len()),
        Some(VNET_HDR_SIZE + MAX_FRAME)
    );
}

#[test]
fn unanswerable_chains_are_fatal() {
    let mut rig = Rig::new();
    rig.desc(TX_BASE, 0, 0x10000, 12, NEXT, 0);
    rig.post(1, 0);
    assert!(
        rig.worker.serve_tx().is_err(),
        "a descriptor chained to itself"
    );

    let mut rig = Rig::new();
    rig.desc(TX_BASE, 0, 0x10000, 12, NEXT, 200);
    rig.post(1, 0);
    assert!(rig.worker.serve_tx().is_err(), "next beyond the table");

    let mut rig = Rig::new();
    tx_chain(&mut rig, 0, &frame(60, 1), 30);
    rig.mem()
        .write_obj(40u16, GuestAddress(TX_BASE + 0x1000 + 2))
        .expect("idx");
    assert!(rig.worker.serve_tx().is_err(), "avail index too far ahead");

    let mut rig = Rig::new();
    rig.host_send(&frame(VNET_HDR_SIZE + 60, 2));
    rig.desc(RX_BASE, 0, 0x40000, 2048, WRITE | NEXT, 1);
    rig.desc(RX_BASE, 1, 0x41000, 2048, WRITE | NEXT, 0);
    rig.post(0, 0);
    assert!(rig.worker.serve_rx().is_err(), "a two-descriptor RX loop");
}

#[test]
fn rx_writes_our_header_and_the_frame_across_the_chain() {
    let mut rig = Rig::new();
    let f = frame(1514, 5);
    // The TAP's own header is garbage as far as the guest is concerned.
    let mut from_tap = vec![0xee; VNET_HDR_SIZE];
    from_tap.extend_from_slice(&f);
    rig.host_send(&from_tap);
    rig.desc(RX_BASE, 0, 0x40000, 100, WRITE | NEXT, 1);
    rig.desc(RX_BASE, 1, 0x50000, 2000, WRITE, 0);
    rig.post(0, 0);
    assert!(rig.worker.serve_rx().is_ok());
    assert_eq!(rig.used(0), vec![(0, (VNET_HDR_SIZE + f.len()) as u32)]);
    let mut got = rig.read(0x40000, 100);
    got.extend(rig.read(0x50000, VNET_HDR_SIZE + f.len() - 100));
    assert_eq!(&got[..VNET_HDR_SIZE], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(&got[VNET_HDR_SIZE..], f.as_slice());
    assert_ne!(rig.worker.interrupt.status() & INT_USED_RING, 0);
}

#[test]
fn rx_without_buffers_waits_and_loses_nothing() {
    let mut rig = Rig::new();
    let f = frame(60, 7);
    let mut from_tap = vec![0; VNET_HDR_SIZE];
    from_tap.extend_from_slice(&f);
    rig.host_send(&from_tap);
    assert!(rig.worker.serve_rx().is_ok());
    assert!(rig.worker.rx_waiting, "no chain: the TAP is left alone");
    assert_eq!(rig.worker.pending, VNET_HDR_SIZE + f.len());
    assert!(rig.used(0).is_empty());
    rig.desc(RX_BASE, 0, 0x40000, 2048, WRITE, 0);
    rig.post(0, 0);
    assert!(rig.worker.serve_rx().is_ok());
    assert_eq!(rig.used(0), vec![(0, (VNET_HDR_SIZE + f.len()) as u32)]);
    assert_eq!(rig.read(0x40000 + VNET_HDR_SIZE as u64, f.len()), f);
    assert_eq!(rig.worker.pending, 0);
}

#[test]
fn rx_bad_chains_come_back_unused_and_the_frame_takes_the_next() {
    let mut rig = Rig::new();
    rig.desc(RX_BASE, 0, 0x40000, 2048, 0, 0); // device-readable
    rig.desc(RX_BASE, 1, 0x41000, 8, WRITE, 0); // shorter than the header
    rig.desc(RX_BASE, 2, 0x8000_0000, 2048, WRITE, 0); // outside memory
    rig.desc(RX_BASE, 3, 0x42000, 2048, WRITE, 0);
    for head in 0..4 {
        rig.post(0, head);
    }
    let f = frame(200, 11);
    let mut from_tap = vec![0; VNET_HDR_SIZE];
    from_tap.extend_from_slice(&f);
    rig.host_send(&from_tap);
    assert!(rig.worker.serve_rx().is_ok());
    assert_eq!(
        rig.used(0),
        vec![
            (0, 0),
            (1, 0),
            (2, 0),
            (3, (VNET_HDR_SIZE + f.len()) as u32)
        ]
    );
    assert_eq!(rig.read(0x42000 + VNET_HDR_SIZE as u64, f.len()), f);
    assert_eq!(
        rig.read(0x40000, 16),
        vec![0; 16],
        "readable buffer untouched"
    );
    assert!(!rig.worker.interrupt.device_needs_reset());
}

#[test]
fn rx_a_frame_too_big_for_the_chain_is_dropped_and_the_chain_kept() {
    let mut rig = Rig::new();
    rig.desc(RX_BASE, 0, 0x40000, (VNET_HDR_SIZE + 64) as u32, WRITE, 0);
    rig.post(0, 0);
    for f in [frame(100, 1), frame(64, 2)] {
        let mut from_tap = vec![0; VNET_HDR_SIZE];
        from_tap.extend_from_slice(&f);
        rig.host_send(&from_tap);
    }
    assert!(rig.worker.serve_rx().is_ok());
    assert_eq!(rig.used(0), vec![(0, (VNET_HDR_SIZE + 64) as u32)]);
    assert_eq!(rig.read(0x40000 + VNET_HDR_SIZE as u64, 64), frame(64, 2));
}

#[test]
fn net_options() {
    let n: NetConfig = "tap=tap0".parse().expect("tap");
    assert_eq!(
        n,
        NetConfig {
            backend: NetBackend::Tap("tap0".into()),
            mac: None
        }
    );
    let n: NetConfig = "tap=tap0,mac=02:00:00:AA:bb:01".parse().expect("mac");
    assert_eq!(n.mac, Some(MacAddress([2, 0, 0, 0xaa, 0xbb, 1])));
    let n: NetConfig = "mac=02:00:00:00:00:02,fd=7".parse().expect("fd");
    assert_eq!(n.backend, NetBackend::Fd(7));
    for (bad, says) in [
        ("", "not KEY=VALUE"),
        ("tap0", "not KEY=VALUE"),
        ("mac=02:00:00:00:00:01", "names no TAP"),
        ("tap=", "must be 1 to 15 bytes"),
        ("tap=a/b", "is not valid"),
        ("tap=waytoolonginterfacename", "must be 1 to 15 bytes"),
        ("tap=a,tap=b", "more than one TAP"),
        ("tap=a,fd=3", "more than one TAP"),
        ("fd=-1", "fd=-1: not a file descriptor number"),
        ("fd=x", "fd=x: not a file descriptor number"),
        ("tap=a,mac=02:00:00:00:00", "not six hex bytes"),
        ("tap=a,mac=02:00:00:00:00:01:02", "more than six bytes"),
        ("tap=a,mac=02:00:00:00:00:zz", "\"zz\" is not a hex byte"),
        ("tap=a,mac=01:00:5e:00:00:01", "multicast"),
        ("tap=a,mac=00:00:00:00:00:00", "not an address"),
        (
            "tap=a,mac=02:00:00:00:00:01,mac=02:00:00:00:00:02",
            "mac= twice",
        ),
        ("tap=a,queues=2", "unknown network option \"queues\""),
    ] {
        let e = bad.parse::<NetConfig>().expect_err(bad);
        assert!(e.contains(says), "{bad:?}: {e}");
    }
}

#[test]
fn mac_addresses() {
    let m: MacAddress = "02:00:00:aa:bb:01".parse().expect("mac");
    assert_eq!(m.to_string(), "02:00:00:aa:bb:01");
    for _ in 0..32 {
        let r = MacAddress::random();
        assert_eq!(r.0[0] & 3, 2, "locally administered unicast: {r}");
    }
    assert_ne!(MacAddress::random(), MacAddress::random());
}

#[test]
fn config_space_and_features() {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds we own.
    assert_eq!(
        unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, fds.as_mut_ptr()) },
        0
    );
    // SAFETY: just created, owned by nobody else.
    let (a, _b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mac = MacAddress([2, 1, 2, 3, 4, 5]);
    let dev = NetDevice::new(Tap::for_test(a, "cfg"), Some(mac));
    assert_eq!(dev.device_type(), DEVICE_ID);
    assert_eq!(dev.features(), VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC);
    assert_eq!(dev.queue_max_sizes().len(), 2);
    let mut cfg = [0xffu8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [2, 1, 2, 3, 4, 5, 0, 0], "MAC, then zeroes");
    let mut far = [0xffu8; 4];
    dev.read_config(u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4], "past the end (and wrapping) reads zero");
    assert_eq!(dev.mac(), mac);
}
