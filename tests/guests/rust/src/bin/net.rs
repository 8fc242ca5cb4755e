//! The virtio-net guest (virtio-drivers' `VirtIONet`, polled): prints its
//! MAC, sends the guest frames of the protocol in `vmpod_guest::eth`, then
//! echoes every host frame back reversed until the host says bye.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use vmpod_guest::eth::{self, Mac, Payload};
use vmpod_guest::hal::GuestHal;
use vmpod_guest::println;
use vmpod_guest::virtio;
use vmpod_guest::virtio_drivers::Error;
use vmpod_guest::virtio_drivers::device::net::{TxBuffer, VirtIONet};
use vmpod_guest::virtio_drivers::transport::DeviceType;

vmpod_guest::entry!(main);

const QUEUE: usize = 16;
/// Each receive buffer holds a header and a 1514-byte frame.
const RX_BUFFER: usize = 2048;

fn main() {
    let Some(index) = virtio::find(DeviceType::Network, 0) else {
        panic!("no virtio-net device");
    };
    let Some(transport) = virtio::transport(index) else {
        panic!("virtio device {index} cannot be claimed");
    };
    let mut net = match VirtIONet::<GuestHal, _, QUEUE>::new(transport, RX_BUFFER) {
        Ok(n) => n,
        Err(e) => panic!("virtio-net: {e}"),
    };
    let mac = net.mac_address();
    println!("vmpod-net: device {index} mac {}", Mac(mac));

    for n in 0..eth::GUEST_FRAMES {
        let payload: Vec<u8> = if n + 1 < eth::GUEST_FRAMES {
            alloc::format!("vmpod-net {n}").into_bytes()
        } else {
            eth::big_payload(b"vmpod-net big ")
        };
        let f = eth::frame(eth::BROADCAST, mac, eth::TYPE_GUEST, &payload);
        if let Err(e) = net.send(TxBuffer::from(&f)) {
            panic!("sending frame {n}: {e}");
        }
    }
    println!("vmpod-net: sent {}", eth::GUEST_FRAMES);
    // The receive buffers went in with the device: the host may start.
    println!("vmpod-net: ready");

    let mut echoed = 0;
    loop {
        let rx = match net.receive() {
            Ok(rx) => rx,
            Err(Error::NotReady) => {
                core::hint::spin_loop();
                continue;
            }
            Err(e) => panic!("receiving: {e}"),
        };
        let mut done = false;
        match eth::parse(rx.packet()) {
            Some((_, src, eth::TYPE_HOST, payload)) => {
                println!(
                    "vmpod-net: got {} bytes type {:04x} from {}: {}",
                    rx.packet().len(),
                    eth::TYPE_HOST,
                    Mac(src),
                    Payload(payload)
                );
                let reversed: Vec<u8> = payload.iter().rev().copied().collect();
                let f = eth::frame(src, mac, eth::TYPE_ECHO, &reversed);
                if let Err(e) = net.send(TxBuffer::from(&f)) {
                    panic!("echoing: {e}");
                }
                echoed += 1;
                done = payload == eth::BYE;
            }
            Some((_, src, kind, _)) => {
                println!("vmpod-net: ignored type {kind:04x} from {}", Mac(src));
            }
            None => println!("vmpod-net: ignored a {}-byte runt", rx.packet().len()),
        }
        if let Err(e) = net.recycle_rx_buffer(rx) {
            panic!("recycling a receive buffer: {e}");
        }
        if done {
            break;
        }
    }
    println!("vmpod-net: echoed {echoed}");
}
