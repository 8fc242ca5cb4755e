//! The i8042 keyboard controller, only for its reset line: the guest writes
//! 0xFE to port 0x64 (Linux `reboot=k`) and the VM ends with the "reset"
//! status. vm-superio does the port decoding.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::devices::bus::BusDevice;
use crate::vstate::exit::ExitReason;
use crate::vstate::vcpu::Control;

/// Ports 0x60 (data) to 0x64 (command/status).
pub const I8042_BASE: u64 = 0x60;
pub const I8042_LEN: u64 = 5;

pub struct ResetTrigger(pub Arc<Control>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request_exit(ExitReason::Reset);
        Ok(())
    }
}

pub struct I8042(I8042Device<ResetTrigger>);

impl I8042 {
    pub fn new(control: Arc<Control>) -> Self {
        I8042(I8042Device::new(ResetTrigger(control)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = self.0.read(offset as u8);
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            let _ = self.0.write(offset as u8, value);
        }
    }
}
