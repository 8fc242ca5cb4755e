//! Firecracker-compatible boot timer: the guest writes the byte 123 at
//! offset 0 (guest-physical 0xC000_0000) when it considers itself booted
//! (Firecracker's guest images do it from init), and the VMM records the time
//! since it started. Only the first such write counts; anything else is
//! ignored, reads return zeros.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::devices::bus::BusDevice;

pub const MAGIC_BOOT_COMPLETE: u8 = 123;

pub struct BootTimer {
    start: Instant,
    recorded: Arc<OnceLock<Duration>>,
}

impl BootTimer {
    pub fn new(start: Instant, recorded: Arc<OnceLock<Duration>>) -> Self {
        BootTimer { start, recorded }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&MAGIC_BOOT_COMPLETE) {
            let elapsed = self.start.elapsed();
            if self.recorded.set(elapsed).is_ok() {
                tracing::info!("guest boot time: {} us", elapsed.as_micros());
            }
        } else {
            tracing::debug!(
                "boot timer: ignored {}-byte write at +{offset:#x}",
                data.len()
            );
        }
    }
}
