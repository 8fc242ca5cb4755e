//! Facts about the running guest, read from the kernel.

use std::fs;

use anyhow::{Context, Result, bail};
use nix::time::{ClockId, clock_gettime};

/// Nanoseconds of CLOCK_BOOTTIME: time since the guest kernel started,
/// suspend included. 0 if the clock cannot be read (it always can on Linux).
pub fn boottime_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .ok()
        .and_then(|t| {
            let secs = u64::try_from(t.tv_sec()).ok()?;
            let nanos = u64::try_from(t.tv_nsec()).ok()?;
            secs.checked_mul(1_000_000_000)?.checked_add(nanos)
        })
        .unwrap_or(0)
}

/// `uname(2)` and the hostname.
#[derive(Debug, Clone)]
pub struct KernelInfo {
    pub release: String,
    pub version: String,
    pub hostname: String,
}

impl KernelInfo {
    /// The running kernel's identity; fields it cannot read are "unknown".
    pub fn current() -> Self {
        match nix::sys::utsname::uname() {
            Ok(u) => Self {
                release: u.release().to_string_lossy().into_owned(),
                version: u.version().to_string_lossy().into_owned(),
                hostname: u.nodename().to_string_lossy().into_owned(),
            },
            Err(_) => Self {
                release: "unknown".into(),
                version: "unknown".into(),
                hostname: "unknown".into(),
            },
        }
    }
}

/// Online CPUs the agent may run on.
pub fn cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// Memory figures from /proc/meminfo, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

pub fn read_meminfo() -> Result<MemInfo> {
    let text = fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
    parse_meminfo(&text).context("cannot parse /proc/meminfo")
}

/// Parses `/proc/meminfo`. `MemTotal` is required; `MemAvailable` falls back
/// to `MemFree` (kernels before 3.14 lack it).
pub fn parse_meminfo(text: &str) -> Result<MemInfo> {
    let mut total = None;
    let mut available = None;
    let mut free = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            "MemFree" => &mut free,
            _ => continue,
        };
        *slot =
            Some(parse_meminfo_value(value).with_context(|| format!("bad {key} line: {line:?}"))?);
    }
    let Some(total_bytes) = total else {
        bail!("no MemTotal line");
    };
    let Some(available_bytes) = available.or(free) else {
        bail!("neither a MemAvailable nor a MemFree line");
    };
    Ok(MemInfo {
        total_bytes,
        available_bytes,
    })
}

/// `"   123456 kB"` → bytes. Values without a unit are bytes already.
fn parse_meminfo_value(value: &str) -> Result<u64> {
    let mut words = value.split_whitespace();
    let number: u64 = words
        .next()
        .context("missing value")?
        .parse()
        .context("value is not a number")?;
    let factor = match words.next() {
        None => 1,
        Some("kB") => 1024,
        Some(unit) => bail!("unknown unit {unit:?}"),
    };
    if words.next().is_some() {
        bail!("trailing words");
    }
    number.checked_mul(factor).context("value overflows u64")
}

pub fn read_uptime() -> Result<f64> {
    let text = fs::read_to_string("/proc/uptime").context("cannot read /proc/uptime")?;
    parse_uptime(&text).context("cannot parse /proc/uptime")
}

/// Parses `/proc/uptime` ("<uptime> <idle>", in seconds) → uptime.
pub fn parse_uptime(text: &str) -> Result<f64> {
    let first = text.split_whitespace().next().context("empty")?;
    let secs: f64 = first
        .parse()
        .with_context(|| format!("{first:?} is not a number"))?;
    if !secs.is_finite() || secs < 0.0 {
        bail!("uptime {secs} out of range");
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "\
MemTotal:         238872 kB
MemFree:          221032 kB
MemAvailable:     214900 kB
Buffers:               0 kB
HugePages_Total:       0
";

    #[test]
    fn meminfo_in_bytes() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total_bytes, 238_872 * 1024);
        assert_eq!(m.available_bytes, 214_900 * 1024);
    }

    #[test]
    fn meminfo_without_available_uses_free() {
        let m = parse_meminfo("MemTotal: 100 kB\nMemFree: 40 kB\n").unwrap();
        assert_eq!(m.available_bytes, 40 * 1024);
    }

    #[test]
    fn meminfo_errors() {
        assert!(parse_meminfo("").is_err());
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: 1 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: x kB\nMemFree: 1 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: 1 MB\nMemFree: 1 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: 18446744073709551615 kB\nMemFree: 1 kB\n").is_err());
    }

    #[test]
    fn meminfo_of_this_host() {
        // Whatever runs the tests is Linux; its meminfo must parse.
        let m = read_meminfo().unwrap();
        assert!(m.total_bytes > 0);
        assert!(m.available_bytes <= m.total_bytes);
    }

    #[test]
    fn uptime() {
        assert_eq!(parse_uptime("12.34 20.50\n").unwrap(), 12.34);
        assert_eq!(parse_uptime("0.00 0.00").unwrap(), 0.0);
        assert!(parse_uptime("").is_err());
        assert!(parse_uptime("abc 1.0").is_err());
        assert!(parse_uptime("-1.0 1.0").is_err());
        assert!(parse_uptime("inf 1.0").is_err());
        assert!(read_uptime().unwrap() > 0.0);
    }

    #[test]
    fn boottime_advances() {
        let a = boottime_ns();
        let b = boottime_ns();
        assert!(a > 0 && b >= a);
    }
}
