//! COM1: vm-superio's 8250 at 0x3f8, transmitting to a file, pipe or any
//! writer, its interrupt (IRQ 4) raised through an irqfd. Output is unbuffered
//! so the first guest byte reaches the console the moment it is written.

use std::io::Write;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;

pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;

/// Raises the serial IRQ by writing the irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub type Output = Box<dyn Write + Send>;

pub struct SerialDevice {
    serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, Output>,
    /// One warning for a broken output, not one per guest byte.
    warned: bool,
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: Output) -> Self {
        SerialDevice {
            serial: Serial::new(IrqTrigger(irq), out),
            warned: false,
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Wider accesses to a byte-wide UART read the one register.
        let value = self.serial.read(offset as u8);
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        if let Err(e) = self.serial.write(offset as u8, value)
            && !self.warned
        {
            self.warned = true;
            tracing::warn!("serial console: {e:?} (further errors not logged)");
        }
    }
}
