//! Legacy PC devices: COM1, the i8042 reset line, the CMOS clock and the
//! boot timer.

pub mod boot_timer;
pub mod cmos;
pub mod i8042;
pub mod serial;
