//! The one place that calls `waitpid`: every exit of a child of the agent
//! goes through here and is handed to whoever registered that pid.
//!
//! As PID 1 the agent inherits every orphan in the guest, so a
//! `waitpid(-1)` loop is needed anyway, and a `waitpid(pid)` anywhere else
//! would race it and lose the status. Registration takes the lock the loop
//! holds while it reaps, so a child cannot be reaped between being spawned
//! and being registered ([`spawn_tracked`]); processes that only become our
//! children later, by reparenting, are registered with [`watch`] while they
//! still have another parent.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use nix::errno::Errno;
use tokio::sync::oneshot;
use tracing::{debug, warn};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Exited(i32),
    Signaled(i32),
}

impl Exit {
    /// The shell convention: the exit status, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            Exit::Exited(code) => code,
            Exit::Signaled(sig) => 128 + sig,
        }
    }
}

/// What one waitpid(2) call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// A child ended, and its status is ours now.
    Exit(i32, Exit),
    /// A child stopped or continued: not an exit.
    Changed(i32),
    /// WNOHANG and no child has changed state.
    Nothing,
}

/// waitpid(2) (`pid` -1: any child), with the status decoded here: nix's
/// `WaitStatus` holds a `Signal`, which has no real-time signals, so for a
/// process one of those killed nix returns EINVAL after the kernel has
/// already handed over, and forgotten, the status. A container stopped
/// with signal 40 would then stay RUNNING for ever.
pub fn wait_raw(pid: i32, nohang: bool) -> Result<Waited, Errno> {
    let mut status: libc::c_int = 0;
    let flags = if nohang { libc::WNOHANG } else { 0 };
    // SAFETY: waitpid(2) writing into a local int.
    let rc = unsafe { libc::waitpid(pid, &mut status, flags) };
    if rc < 0 {
        return Err(Errno::last());
    }
    if rc == 0 {
        return Ok(Waited::Nothing);
    }
    Ok(if libc::WIFEXITED(status) {
        Waited::Exit(rc, Exit::Exited(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Waited::Exit(rc, Exit::Signaled(libc::WTERMSIG(status)))
    } else {
        Waited::Changed(rc)
    })
}

/// Pids someone waits for. A `BTreeMap` because its `new` is const.
static WAITERS: Mutex<BTreeMap<i32, oneshot::Sender<Exit>>> = Mutex::new(BTreeMap::new());
static INSTALLED: AtomicBool = AtomicBool::new(false);

fn waiters() -> std::sync::MutexGuard<'static, BTreeMap<i32, oneshot::Sender<Exit>>> {
    WAITERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `spawn` (which returns the new child's pid) with reaping held off,
/// and registers the pid before anyone can reap it.
pub fn spawn_tracked<T>(
    spawn: impl FnOnce() -> std::io::Result<(i32, T)>,
) -> std::io::Result<(T, i32, oneshot::Receiver<Exit>)> {
    let mut map = waiters();
    let (pid, value) = spawn()?;
    let (tx, rx) = oneshot::channel();
    map.insert(pid, tx);
    Ok((value, pid, rx))
}

/// Registers a process that is not our child yet but will be once its
/// parent exits (a container init whose intermediate helper is still
/// waiting for our go-ahead). Its exit, once reaped here, is sent on the
/// receiver.
pub fn watch(pid: i32) -> oneshot::Receiver<Exit> {
    let (tx, rx) = oneshot::channel();
    waiters().insert(pid, tx);
    rx
}

/// Installs the SIGCHLD-driven reaper task on the current tokio runtime,
/// once per process. Off PID 1 it also makes this process a child
/// subreaper, so container processes whose helper exited come back to us
/// instead of to the real init.
pub fn install() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let installed = (|| {
        if std::process::id() != 1 {
            // SAFETY: prctl with integer arguments only.
            let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error())
                    .context("prctl(PR_SET_CHILD_SUBREAPER)");
            }
        }
        signal(SignalKind::child()).context("cannot handle SIGCHLD")
    })();
    let mut sigchld = match installed {
        Ok(s) => s,
        Err(err) => {
            INSTALLED.store(false, Ordering::SeqCst);
            return Err(err);
        }
    };
    tokio::spawn(async move {
        loop {
            reap_all();
            if sigchld.recv().await.is_none() {
                warn!("SIGCHLD stream ended; children will no longer be reaped");
                INSTALLED.store(false, Ordering::SeqCst);
                return;
            }
        }
    });
    Ok(())
}

/// Reaps every exited child and dispatches the statuses. Never blocks.
pub fn reap_all() {
    loop {
        let mut map = waiters();
        let (pid, exit) = match wait_raw(-1, true) {
            Ok(Waited::Exit(pid, exit)) => (pid, exit),
            Ok(Waited::Nothing) | Err(Errno::ECHILD) => return,
            // Stops and continues are not exits (no WUNTRACED anyway).
            Ok(Waited::Changed(pid)) => {
                debug!(pid, "child changed state");
                continue;
            }
            Err(Errno::EINTR) => continue,
            Err(err) => {
                warn!("waitpid failed: {err}");
                return;
            }
        };
        match map.remove(&pid) {
            Some(tx) => {
                // The waiter may have given up; nothing to do then.
                let _ = tx.send(exit);
            }
            None => debug!(pid, ?exit, "reaped an untracked child"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The children are reaped by wait_raw, which is what is tested.
    #[allow(clippy::zombie_processes)]
    #[test]
    fn wait_raw_decodes_exits_and_real_time_signals() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 5"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert_eq!(wait_raw(pid, false), Ok(Waited::Exit(pid, Exit::Exited(5))));

        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert_eq!(wait_raw(pid, true), Ok(Waited::Nothing));
        // SAFETY: kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(pid, 40) }, 0);
        let waited = wait_raw(pid, false);
        assert_eq!(waited, Ok(Waited::Exit(pid, Exit::Signaled(40))));
        assert_eq!(Exit::Signaled(40).code(), 168);
        assert_eq!(wait_raw(pid, true), Err(Errno::ECHILD));
    }
}
