//! Console logging: one line per event, stamped like printk with the time
//! since the guest kernel started, so agent and kernel lines interleave in a
//! readable order on the serial log.

use std::fmt;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

use crate::sysinfo;

/// Name of the variable that sets the log level (`error` ... `trace`).
/// The kernel passes unknown `NAME=value` command-line words to init as
/// environment, so `VMPOD_AGENT_LOG=debug` on the kernel command line works.
pub const LOG_ENV: &str = "VMPOD_AGENT_LOG";

struct BootTime;

impl FormatTime for BootTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let ns = sysinfo::boottime_ns();
        write!(
            w,
            "[{:5}.{:06}] vmpod-agent:",
            ns / 1_000_000_000,
            (ns % 1_000_000_000) / 1_000
        )
    }
}

/// Installs the global subscriber, writing to stderr (the console).
pub fn init() {
    let (level, bad) = match std::env::var(LOG_ENV) {
        Ok(v) => match v.parse::<LevelFilter>() {
            Ok(level) => (level, None),
            Err(_) => (LevelFilter::INFO, Some(v)),
        },
        Err(_) => (LevelFilter::INFO, None),
    };
    let installed = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_timer(BootTime)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
    if let Err(err) = installed {
        eprintln!("vmpod-agent: cannot install the logger: {err}");
    }
    if let Some(v) = bad {
        tracing::warn!("{LOG_ENV}={v:?} is not a log level; using info");
    }
}
