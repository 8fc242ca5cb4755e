//! A placeholder device (virtio device ID 0, which drivers must ignore) with
//! one queue: it lets the transport be exercised end to end, by unit tests
//! and by the hostile test guest, before any real device exists.

use anyhow::Result;

use super::{Activation, VIRTIO_F_VERSION_1, VirtioDevice};

#[derive(Default)]
pub struct NullDevice {
    pub activations: usize,
    pub resets: usize,
}

const QUEUES: [u16; 1] = [256];

impl VirtioDevice for NullDevice {
    fn device_type(&self) -> u32 {
        0
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUES
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, _activation: Activation) -> Result<()> {
        self.activations += 1;
        Ok(())
    }

    fn reset(&mut self) {
        self.resets += 1;
    }
}
