//! The smallest Rust guest: proves the entry, the console, the heap and the
//! exit path. Given a virtio-blk disk (`--disk`), it also reads sector 0
//! through virtio-drivers and prints its first 16 bytes, which proves the
//! HAL and the device lookup, then drops the driver, which stops the
//! queues and resets the device.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use vmpod_guest::hal::GuestHal;
use vmpod_guest::println;
use vmpod_guest::virtio;
use vmpod_guest::virtio_drivers::device::blk::{SECTOR_SIZE, VirtIOBlk};
use vmpod_guest::virtio_drivers::transport::DeviceType;

vmpod_guest::entry!(main);

fn main() {
    let squares: Vec<u64> = (1..=4u64).map(|i| i * i).collect();
    println!("vmpod-guest: hello from Rust, squares={squares:?}");
    // The CMOS clock: century and year, in BCD.
    let cmos = |index: u8| {
        // SAFETY: the RTC's index and data ports; reading has no effect
        // beyond the value.
        unsafe {
            vmpod_guest::outb(0x70, index);
            vmpod_guest::inb(0x71)
        }
    };
    println!("vmpod-guest: hello rtc {:02x}{:02x}", cmos(0x32), cmos(0x09));
    let Some(index) = virtio::find(DeviceType::Block, 0) else {
        return;
    };
    let Some(transport) = virtio::transport(index) else {
        panic!("virtio device {index} cannot be claimed");
    };
    let mut blk = match VirtIOBlk::<GuestHal, _>::new(transport) {
        Ok(b) => b,
        Err(e) => panic!("virtio-blk: {e}"),
    };
    let mut sector = [0u8; SECTOR_SIZE];
    if let Err(e) = blk.read_blocks(0, &mut sector) {
        panic!("virtio-blk read: {e}");
    }
    let text: Vec<u8> = sector[..16]
        .iter()
        .map(|b| if b.is_ascii_graphic() { *b } else { b'.' })
        .collect();
    println!(
        "vmpod-guest: hello blk{index} capacity={} sector0={}",
        blk.capacity(),
        core::str::from_utf8(&text).unwrap_or("?")
    );
    // Dropping the driver takes the queues down and resets the device.
    drop(blk);
    println!("vmpod-guest: hello blk{index} released");
}
