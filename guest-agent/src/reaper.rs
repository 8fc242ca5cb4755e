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
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
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
        let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Exit::Exited(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), Exit::Signaled(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            // Stops and continues are not exits (no WUNTRACED anyway).
            Ok(status) => {
                debug!(?status, "child changed state");
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
