//! Child processes of the shim: spawned so they cannot outlive it, signalled
//! and reaped by one owner task each.
//!
//! One task per child owns the `tokio::process::Child`; it is the only code
//! that signals the pid, and it does so before it reaps, so a signal can never
//! hit a recycled pid. Exits are also reported on a shared channel, which lets
//! the VM state machine wait for "any child died" while it does other work.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{ChildStdout, Command};
use tokio::sync::{mpsc, watch};

use crate::confine::Confinement;

/// A child exit, as reported on the shared exit channel.
#[derive(Debug, Clone)]
pub struct Exit {
    pub name: String,
    pub pid: u32,
    pub status: ExitStatus,
}

pub type ExitSender = mpsc::UnboundedSender<Exit>;

/// A running (or finished, not yet forgotten) child process.
pub struct Process {
    name: String,
    pid: u32,
    signals: mpsc::UnboundedSender<Signal>,
    status: watch::Receiver<Option<ExitStatus>>,
}

impl Process {
    /// Spawns `cmd` with PR_SET_PDEATHSIG=SIGKILL. Stdin is always null; the
    /// caller chooses stdout/stderr. `stdout` is returned when the caller
    /// asked for a pipe.
    ///
    /// The parent-death signal is tied to the *thread* that forks, not the
    /// process, which is why the shim runs a current-thread runtime: the only
    /// thread that spawns children is the main thread, which lives as long as
    /// the shim.
    pub fn spawn(
        name: &str,
        cmd: Command,
        exits: ExitSender,
    ) -> Result<(Process, Option<ChildStdout>)> {
        Self::spawn_confined(name, cmd, exits, None)
    }

    /// [`Process::spawn`], with `confinement` applied in the child before
    /// exec (see `confine.rs`). The parent-death signal is armed after the
    /// credential switch, which would otherwise reset it, and before the
    /// seccomp filter, which need not allow prctl.
    pub fn spawn_confined(
        name: &str,
        mut cmd: Command,
        exits: ExitSender,
        confinement: Option<Confinement>,
    ) -> Result<(Process, Option<ChildStdout>)> {
        let parent = std::process::id();
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        let mut confinement = confinement;
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe syscalls (prctl, getppid, and the raw syscalls
        // of `Confinement::apply`, which allocates nothing).
        unsafe {
            cmd.pre_exec(move || {
                let die_with_parent = || {
                    if libc::prctl(
                        libc::PR_SET_PDEATHSIG,
                        libc::SIGKILL as libc::c_ulong,
                        0,
                        0,
                        0,
                    ) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    // The shim may have died between fork and prctl; then
                    // nothing would ever kill this child.
                    if libc::getppid() as u32 != parent {
                        return Err(io::Error::other("parent exited before exec"));
                    }
                    Ok(())
                };
                match confinement.as_mut() {
                    Some(c) => c.apply(die_with_parent),
                    None => die_with_parent(),
                }
            });
        }
        let program = cmd.as_std().get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {name} ({program})"))?;
        let pid = child
            .id()
            .with_context(|| format!("{name} exited before its pid was read"))?;
        let stdout = child.stdout.take();
        let (sig_tx, mut sig_rx) = mpsc::unbounded_channel::<Signal>();
        let (status_tx, status_rx) = watch::channel(None);
        let task_name = name.to_owned();
        tokio::spawn(async move {
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status,
                    Some(sig) = sig_rx.recv() => {
                        if let Some(pid) = child.id() {
                            let _ = kill(Pid::from_raw(pid as i32), sig);
                        }
                    }
                }
            };
            let status = match status {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(process = %task_name, pid, "waiting failed: {e}");
                    // Treat as killed; the pid is gone from our view either way.
                    ExitStatus::from_raw(libc::SIGKILL)
                }
            };
            tracing::info!(process = %task_name, pid, "exited: {}", describe(status));
            let _ = status_tx.send(Some(status));
            let _ = exits.send(Exit {
                name: task_name,
                pid,
                status,
            });
        });
        tracing::info!(process = name, pid, "started {program}");
        Ok((
            Process {
                name: name.to_owned(),
                pid,
                signals: sig_tx,
                status: status_rx,
            },
            stdout,
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status, once the child has been reaped.
    pub fn status(&self) -> Option<ExitStatus> {
        *self.status.borrow()
    }

    pub fn signal(&self, sig: Signal) {
        let _ = self.signals.send(sig);
    }

    /// Resolves once the child has been reaped.
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.status.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(s) => s.unwrap_or_else(|| ExitStatus::from_raw(libc::SIGKILL)),
            // The owner task is gone only after it published a status, so
            // this is unreachable in practice; report it as killed.
            Err(_) => self
                .status()
                .unwrap_or_else(|| ExitStatus::from_raw(libc::SIGKILL)),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once reaped.
    pub async fn terminate(&self, grace: Duration) -> ExitStatus {
        if let Some(s) = self.status() {
            return s;
        }
        self.signal(Signal::SIGTERM);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(s) => s,
            Err(_) => {
                tracing::warn!(process = %self.name, pid = self.pid, "no exit after {grace:?}, sending SIGKILL");
                self.signal(Signal::SIGKILL);
                self.wait().await
            }
        }
    }
}

/// `exit status 1` / `killed by SIGKILL`, for error messages.
pub fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(sig) = status.signal() {
        match Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        }
    } else {
        format!("{status}")
    }
}

/// Opens (appending) the log file a helper's stdout and stderr go to.
pub fn log_file(path: &Path) -> Result<(Stdio, Stdio)> {
    let file = open_append(path)?;
    let dup = file
        .try_clone()
        .with_context(|| format!("duplicating {}", path.display()))?;
    Ok((Stdio::from(file), Stdio::from(dup)))
}

pub fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// The last `max` bytes of a log file, lossily decoded, for error messages.
pub fn log_tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(&bytes[start..])
                .trim_end()
                .to_owned()
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Makes orphaned descendants (a helper's own children whose parent died)
/// ours to reap, so "no child left behind" covers grandchildren too.
pub fn become_subreaper() -> Result<()> {
    // SAFETY: plain prctl on the calling process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error()).context("PR_SET_CHILD_SUBREAPER");
    }
    Ok(())
}

/// Reaps whatever children are left once every `Process` has been reaped:
/// orphans reparented to the shim. Ones still alive after `limit` get
/// SIGKILL. Must not run while a `Process` is live, since it waits for any
/// pid.
pub async fn reap_orphans(limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut killed = false;
    loop {
        loop {
            // SAFETY: waitpid with a valid status pointer.
            let mut status = 0;
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid > 0 {
                tracing::info!(pid, "reaped orphaned descendant");
                continue;
            }
            if pid < 0 {
                // ECHILD: nothing left.
                return;
            }
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            if killed {
                tracing::warn!("orphaned descendants survive SIGKILL; giving up");
                return;
            }
            for pid in own_children() {
                tracing::warn!(pid, "orphaned descendant still alive, sending SIGKILL");
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Live children of any of the shim's threads, from /proc.
fn own_children() -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return pids;
    };
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn reports_exit_and_terminates() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]);
        let (p, _) = Process::spawn("short", cmd, tx.clone()).expect("spawn");
        let status = p.wait().await;
        assert_eq!(status.code(), Some(3));
        let exit = rx.recv().await.expect("exit reported");
        assert_eq!(exit.name, "short");
        assert_eq!(describe(exit.status), "exit status 3");

        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let (p, _) = Process::spawn("sleeper", cmd, tx).expect("spawn");
        let status = p.terminate(Duration::from_secs(2)).await;
        assert_eq!(describe(status), "killed by SIGTERM");
    }
}
