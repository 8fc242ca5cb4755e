//! `vmpod bench`: performance figures measured against a peer in the same
//! run, never against a remembered number.

pub mod container;
pub mod network;
pub mod pod_start;
pub mod pull;
pub mod stream;
pub mod vmm;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tonic::transport::Channel;
use vmpod_cri_api::RuntimeServiceClient;
use vmpod_cri_api::v1::VersionRequest;

/// A private daemon on a scratch socket and state dir, killed on drop.
pub struct PrivateDaemon(Child);

impl PrivateDaemon {
    /// Starts `vmpod serve` on a socket and state dir inside `work`.
    pub fn start(work: &Path, config: Option<&Path>) -> Result<(PrivateDaemon, PathBuf)> {
        let exe = std::env::current_exe().context("locating the vmpod binary")?;
        Self::start_exe(&exe, work, config)
    }

    /// [`PrivateDaemon::start`] with another `vmpod` binary (a baseline).
    pub fn start_exe(
        exe: &Path,
        work: &Path,
        config: Option<&Path>,
    ) -> Result<(PrivateDaemon, PathBuf)> {
        let socket = work.join("vmpod.sock");
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(work.join("state"))
            .arg("--log-level")
            .arg("warn");
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .context("starting a private vmpod serve")?;
        Ok((PrivateDaemon(child), socket))
    }
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

/// Waits for the private daemon to answer Version, then hands out the channel.
pub async fn connect(socket: &Path) -> Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if socket.exists()
            && let Ok(ch) = crate::sandbox::shim::uds_channel(socket.to_path_buf()).await
        {
            let mut rt = RuntimeServiceClient::new(ch.clone());
            if rt.version(VersionRequest::default()).await.is_ok() {
                return Ok(ch);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "private vmpod serve did not come up on {}",
                socket.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
