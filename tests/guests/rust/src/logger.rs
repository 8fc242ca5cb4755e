//! `log` records (virtio-drivers' warnings) onto the serial console.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct SerialLog;

static LOGGER: SerialLog = SerialLog;

impl Log for SerialLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= Level::Warn
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            crate::println!("vmpod-guest: {}: {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Warn);
    }
}
