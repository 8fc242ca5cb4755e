//! `vmpod bench`: performance figures measured against a peer in the same
//! run, never against a remembered number.

pub mod pod_start;

/// Latencies in milliseconds.
#[derive(Default)]
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.0.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn median(&self) -> f64 {
        self.percentile(50.0)
    }

    /// Nearest-rank percentile; NaN without samples.
    pub fn percentile(&self, p: f64) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }
}

pub fn print_table(rows: &[(&str, &Samples)]) {
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    println!(
        "{:<width$}  {:>10}  {:>10}  {:>3}",
        "phase", "median ms", "p95 ms", "n"
    );
    for (name, s) in rows {
        println!(
            "{name:<width$}  {:>10.1}  {:>10.1}  {:>3}",
            s.median(),
            s.percentile(95.0),
            s.sorted().len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s = Samples::default();
        for v in [5.0, 1.0, 3.0, 2.0, 4.0, f64::NAN] {
            s.push(v);
        }
        assert_eq!(s.median(), 3.0);
        assert_eq!(s.percentile(95.0), 5.0);
        assert!(Samples::default().median().is_nan());
    }
}
