//! The MC146818 CMOS real-time clock at ports 0x70 (index) / 0x71 (data),
//! read-only and without alarms or interrupts: just the time of day, so a
//! Linux guest's `read_persistent_clock64` starts its wall clock at the
//! host's UTC time instead of 1970 ("Unable to read current time from RTC").
//! The agent still sets the exact time at SetupSandbox.
//!
//! Each read of a time register is answered from the host clock at that
//! moment, in BCD and 24-hour mode (status B 0x02), and the update-in-
//! progress bit never shows: there is no update cycle to race with. Writes
//! (the guest setting the clock, or the NMI mask in bit 7 of the index) are
//! ignored; the RAM bytes read as zero.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::devices::bus::BusDevice;

pub const CMOS_BASE: u64 = 0x70;
pub const CMOS_LEN: u64 = 2;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
const STATUS_C: u8 = 0x0c;
const STATUS_D: u8 = 0x0d;
const CENTURY: u8 = 0x32;

/// The time of day the registers show, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    pub weekday: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl Civil {
    /// From seconds since the epoch (days to a proleptic Gregorian date by
    /// Howard Hinnant's civil-from-days method).
    pub fn from_unix(secs: u64) -> Civil {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year: u32::try_from(year).unwrap_or(0),
            month: month as u8,
            day: day as u8,
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            weekday: ((days + 4) % 7 + 1) as u8,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }
}

fn bcd(v: u32) -> u8 {
    let v = v % 100;
    (((v / 10) << 4) | (v % 10)) as u8
}

#[derive(Default)]
pub struct Cmos {
    index: u8,
}

impl Cmos {
    /// Register `index` at time `now`.
    pub fn register(index: u8, now: &Civil) -> u8 {
        match index {
            SECONDS => bcd(now.second.into()),
            MINUTES => bcd(now.minute.into()),
            HOURS => bcd(now.hour.into()),
            WEEKDAY => bcd(now.weekday.into()),
            DAY => bcd(now.day.into()),
            MONTH => bcd(now.month.into()),
            YEAR => bcd(now.year),
            CENTURY => bcd(now.year / 100),
            // No update in progress; the standard 32.768 kHz divider.
            STATUS_A => 0x26,
            // 24-hour mode, BCD, no interrupts.
            STATUS_B => 0x02,
            STATUS_C => 0,
            // Valid RAM and time.
            STATUS_D => 0x80,
            _ => 0,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = if offset == 1 {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Cmos::register(self.index, &Civil::from_unix(secs))
        } else {
            0xff
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0
            && let Some(&index) = data.first()
        {
            // Bit 7 is the NMI mask, not part of the index.
            self.index = index & 0x7f;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        let c = Civil::from_unix(0);
        assert_eq!((c.year, c.month, c.day, c.weekday), (1970, 1, 1, 5));
        // 2000-02-29 12:34:56 UTC, a Tuesday (leap day of a century year).
        let c = Civil::from_unix(951_827_696);
        assert_eq!(
            (
                c.year, c.month, c.day, c.hour, c.minute, c.second, c.weekday
            ),
            (2000, 2, 29, 12, 34, 56, 3)
        );
        // 2026-12-01 23:59:59 UTC, a Tuesday.
        let c = Civil::from_unix(1_796_169_599);
        assert_eq!(
            (
                c.year, c.month, c.day, c.hour, c.minute, c.second, c.weekday
            ),
            (2026, 12, 1, 23, 59, 59, 3)
        );
    }

    #[test]
    fn registers_are_bcd_through_the_index_port() {
        let now = Civil::from_unix(951_827_696);
        assert_eq!(Cmos::register(SECONDS, &now), 0x56);
        assert_eq!(Cmos::register(HOURS, &now), 0x12);
        assert_eq!(Cmos::register(YEAR, &now), 0x00);
        assert_eq!(Cmos::register(CENTURY, &now), 0x20);
        assert_eq!(Cmos::register(MONTH, &now), 0x02);
        assert_eq!(
            Cmos::register(STATUS_A, &now) & 0x80,
            0,
            "no update in progress"
        );
        let mut cmos = Cmos::default();
        // The NMI mask bit is not part of the index.
        cmos.write(0, &[0x80 | STATUS_D]);
        let mut b = [0u8; 1];
        cmos.read(1, &mut b);
        assert_eq!(b[0], 0x80);
        cmos.write(0, &[CENTURY]);
        cmos.read(1, &mut b);
        assert_eq!(b[0], 0x20, "this century");
        // Setting the clock is ignored.
        cmos.write(1, &[0x99]);
        cmos.read(1, &mut b);
        assert_eq!(b[0], 0x20);
    }
}
