//! The vsock guest: echoes 1 MiB through a host-initiated connection, then
//! pushes 1 MiB through a connection of its own and checks the echo.
//!
//! Protocol with the host test (`vmm/tests/vmm.rs`):
//! 1. It listens on port 5000 and prints `vsock: listening cid=N`. The host
//!    connects through the hybrid socket (`CONNECT 5000`), sends 1 MiB;
//!    the guest sends every byte back and prints
//!    `vsock: host-initiated echoed N bytes`.
//! 2. It connects to host port 6000 (the host listens on `<uds>_6000` and
//!    echoes), sends 1 MiB of `pattern(i)`, reads the echo back, checks it
//!    byte for byte and prints `vsock: guest-initiated echo ok N bytes`.
//! 3. It resets the VM.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use vmpod_guest::hal::GuestHal;
use vmpod_guest::println;
use vmpod_guest::virtio;
use vmpod_guest::virtio_drivers::Error;
use vmpod_guest::virtio_drivers::device::socket::{
    SocketError, VirtIOSocket, VsockAddr, VsockConnectionManager, VsockEvent, VsockEventType,
};
use vmpod_guest::virtio_drivers::transport::DeviceType;
use vmpod_guest::virtio_drivers::transport::mmio::MmioTransport;

vmpod_guest::entry!(main);

const TOTAL: usize = 1 << 20;
const HOST_CID: u64 = 2;
const LISTEN_PORT: u32 = 5000;
const HOST_PORT: u32 = 6000;
const LOCAL_PORT: u32 = 7000;
/// What the guest sends per packet.
const CHUNK: usize = 4096;
/// The guest's receive buffer per connection (its advertised credit).
const CREDIT: u32 = 64 * 1024;

/// 4 KiB RX buffers, as Linux posts them (the default 512 would take
/// eight times the packets and exits).
const RX_BUFFER: usize = 4096;

type Manager = VsockConnectionManager<GuestHal, MmioTransport<'static>, RX_BUFFER>;

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7).wrapping_add(13) % 251) as u8
}

fn main() {
    let Some(index) = virtio::find(DeviceType::Socket, 0) else {
        panic!("no virtio-vsock device");
    };
    let Some(transport) = virtio::transport(index) else {
        panic!("virtio device {index} cannot be claimed");
    };
    let socket = match VirtIOSocket::<GuestHal, _, RX_BUFFER>::new(transport) {
        Ok(s) => s,
        Err(e) => panic!("virtio-vsock: {e}"),
    };
    let mut vsock: Manager = VsockConnectionManager::new_with_capacity(socket, CREDIT);
    vsock.listen(LISTEN_PORT);
    println!("vsock: listening cid={}", vsock.guest_cid());
    let echoed = echo_host_connection(&mut vsock);
    println!("vsock: host-initiated echoed {echoed} bytes");
    let checked = guest_connection(&mut vsock);
    println!("vsock: guest-initiated echo ok {checked} bytes");
    // Ends the guest with the device live: see `virtio` on dropping one.
    vmpod_guest::exit();
}

/// Sends all of `data`, polling (and so taking credit updates) while the
/// host has no room.
fn send_all(vsock: &mut Manager, peer: VsockAddr, port: u32, data: &[u8]) {
    for chunk in data.chunks(CHUNK) {
        loop {
            match vsock.send(peer, port, chunk) {
                Ok(()) => break,
                Err(Error::SocketDeviceError(SocketError::InsufficientBufferSpaceInPeer)) => {
                    // Events for this connection are buffered by poll.
                    if let Err(e) = vsock.poll() {
                        panic!("vsock poll: {e}");
                    }
                }
                Err(e) => panic!("vsock send: {e}"),
            }
        }
    }
}

/// Takes what the connection buffered; tells the peer it has room again.
fn drain(vsock: &mut Manager, peer: VsockAddr, port: u32, buf: &mut [u8]) -> usize {
    let n = match vsock.recv(peer, port, buf) {
        Ok(n) => n,
        Err(e) => panic!("vsock recv: {e}"),
    };
    if n > 0
        && let Err(e) = vsock.update_credit(peer, port)
    {
        panic!("vsock credit update: {e}");
    }
    n
}

fn echo_host_connection(vsock: &mut Manager) -> usize {
    let mut buf = vec![0u8; CREDIT as usize];
    let mut peer = None;
    let mut echoed = 0;
    while echoed < TOTAL {
        let event = match vsock.wait_for_event() {
            Ok(e) => e,
            Err(e) => panic!("vsock: {e}"),
        };
        match event.event_type {
            VsockEventType::ConnectionRequest => {
                println!("vsock: host connected from port {}", event.source.port);
                peer = Some(event.source);
            }
            VsockEventType::Received { .. } => {
                let Some(p) = peer else { continue };
                let n = drain(vsock, p, LISTEN_PORT, &mut buf);
                send_all(vsock, p, LISTEN_PORT, &buf[..n]);
                echoed += n;
            }
            VsockEventType::Disconnected { .. } => {
                panic!("vsock: the host left after {echoed} bytes")
            }
            _ => {}
        }
    }
    echoed
}

fn guest_connection(vsock: &mut Manager) -> usize {
    let host = VsockAddr {
        cid: HOST_CID,
        port: HOST_PORT,
    };
    if let Err(e) = vsock.connect(host, LOCAL_PORT) {
        panic!("vsock connect: {e}");
    }
    // Events of the earlier, host-initiated connection (its end) may
    // still come; only this connection's count.
    let ours = |e: &VsockEvent| e.source == host && e.destination.port == LOCAL_PORT;
    loop {
        match vsock.wait_for_event() {
            Ok(e) if ours(&e) && e.event_type == VsockEventType::Connected => break,
            Ok(e) if ours(&e) && matches!(e.event_type, VsockEventType::Disconnected { .. }) => {
                panic!("vsock: host port {HOST_PORT} refused the connection")
            }
            Ok(_) => {}
            Err(e) => panic!("vsock: {e}"),
        }
    }
    let data: alloc::vec::Vec<u8> = (0..TOTAL).map(pattern).collect();
    let mut buf = vec![0u8; CREDIT as usize];
    let (mut sent, mut checked) = (0, 0);
    while checked < TOTAL {
        // Interleave: at most one credit's worth ahead of the echo, so
        // neither side's buffers are the limit.
        if sent < TOTAL && sent - checked < CREDIT as usize / 2 {
            let end = (sent + CHUNK).min(TOTAL);
            send_all(vsock, host, LOCAL_PORT, &data[sent..end]);
            sent = end;
        }
        match vsock.poll() {
            Ok(Some(e))
                if ours(&e) && matches!(e.event_type, VsockEventType::Disconnected { .. }) =>
            {
                panic!("vsock: the host closed after {checked} bytes")
            }
            Ok(_) => {}
            Err(e) => panic!("vsock poll: {e}"),
        }
        let n = drain(vsock, host, LOCAL_PORT, &mut buf);
        for (i, b) in buf[..n].iter().enumerate() {
            if *b != pattern(checked + i) {
                panic!("vsock: echo byte {} is {b}, not {}", checked + i, pattern(checked + i));
            }
        }
        checked += n;
    }
    if let Err(e) = vsock.shutdown(host, LOCAL_PORT) {
        panic!("vsock shutdown: {e}");
    }
    checked
}
