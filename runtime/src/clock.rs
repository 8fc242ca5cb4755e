//! Wall-clock time as CRI and the state store carry it: nanoseconds since
//! the Unix epoch in an i64.

/// Now, in ns since the epoch; 0 for a clock before 1970, saturating in 2262.
pub fn unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
