//! CPU usage as a rate. `usage_nano_cores` needs two samples of the
//! cumulative CPU time; the previous one of each container and pod is kept
//! here, so the first sample reports no rate (as kubelet's own cadvisor
//! path does).

use std::collections::HashMap;
use std::sync::Mutex;

/// Where a sample was read: a pod's host samples are kept apart from its
/// guest ones, since they are on another clock and count other processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Guest,
    Host,
}

/// (timestamp ns, cumulative cpu ns) of the last sample per id and source.
#[derive(Default)]
pub struct CpuSamples {
    samples: Mutex<HashMap<(String, Source), (i64, u64)>>,
}

impl CpuSamples {
    /// Records a sample and returns the CPU used since the previous one, in
    /// nanoseconds per second (nano cores); none for a first sample or one
    /// that does not move forward.
    pub fn nano_cores(&self, id: &str, source: Source, ts: i64, cpu_ns: u64) -> Option<u64> {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let (pts, pcpu) = samples.insert((id.to_string(), source), (ts, cpu_ns))?;
        let dt = u64::try_from(ts.checked_sub(pts)?)
            .ok()
            .filter(|d| *d > 0)?;
        let used = cpu_ns.checked_sub(pcpu)?;
        Some((u128::from(used) * 1_000_000_000 / u128::from(dt)) as u64)
    }

    /// Drops the samples of a removed container or pod.
    pub fn forget(&self, id: &str) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        for source in [Source::Guest, Source::Host] {
            samples.remove(&(id.to_string(), source));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_needs_two_samples_per_source() {
        let s = CpuSamples::default();
        assert_eq!(s.nano_cores("a", Source::Host, 1_000_000_000, 1_000), None);
        assert_eq!(s.nano_cores("a", Source::Guest, 5, 7), None);
        assert_eq!(
            s.nano_cores("a", Source::Host, 2_000_000_000, 500_001_000),
            Some(500_000_000)
        );
        // Time that does not move forward, or a counter that went back.
        assert_eq!(
            s.nano_cores("a", Source::Host, 2_000_000_000, 600_000_000),
            None
        );
        assert_eq!(s.nano_cores("a", Source::Host, 3_000_000_000, 1), None);
        s.forget("a");
        assert_eq!(s.nano_cores("a", Source::Guest, 10, 9), None);
    }
}
