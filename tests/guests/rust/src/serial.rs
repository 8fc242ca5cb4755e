//! COM1 output. The VMM's 8250 takes a byte per `out` and its transmitter
//! is always ready, so nothing polls the line status register.

use core::fmt::{self, Write};

pub const COM1: u16 = 0x3f8;

/// A `fmt::Write` onto COM1.
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

pub fn write_bytes(bytes: &[u8]) {
    for b in bytes {
        // SAFETY: COM1's transmit register.
        unsafe { crate::outb(COM1, *b) };
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let _ = Serial.write_fmt(args);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::_print(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        $crate::serial::_print(format_args!($($arg)*));
        $crate::print!("\n");
    }};
}
