//! Containers: the registry behind the agent's container RPCs.
//!
//! Each container is a record here plus processes and a cgroup in the
//! guest. Its lifecycle:
//!
//! ```text
//! CreateContainer ──► CREATED ──StartContainer──► RUNNING ──exit──► EXITED
//!                        │  (init waits before exec)                  ▲
//!                        └──────── killed, or exec failed ────────────┘
//! ```
//!
//! Exits arrive from the one SIGCHLD reaper ([`crate::reaper`]), keyed by
//! pid; nothing here polls. A record's status lives in a `watch` channel,
//! so StopContainer just waits for it to say EXITED. Every lifecycle change
//! is also appended to the event log (`events.rs`) inside the same write to
//! that channel, which is what keeps the Events stream in the order the
//! changes happened.
//!
//! The verbs each have a file: `create.rs` (CreateContainer and
//! StartContainer, which share the init's sync socket), `exec.rs`
//! (ExecSync), `exec_stream.rs` (Exec, with streamed stdio), `attach.rs`
//! (Attach), `stats.rs`, `events.rs` (Events); signal, stop, wait,
//! remove, list, update and output are short enough to live here. The
//! helper processes' side is in `helper.rs`, `mounts.rs` and `process.rs`;
//! `pty.rs` and `fdio.rs` hold the terminal and non-blocking fd plumbing
//! the stdio paths share.

mod attach;
mod caps;
mod cgroup;
mod channel;
mod create;
pub mod events;
mod exec;
pub mod exec_stream;
mod fdio;
pub mod helper;
mod mounts;
mod output;
mod plan;
mod process;
mod pty;
mod resolve;
mod seccomp;
mod stats;
mod stdin;
mod stdio_start;
mod syscalls;
mod user;
mod validate;

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::{info, warn};
use vmpod_agent_proto::v1::{
    ContainerEventType, ContainerSpec, ContainerState, ContainerStatus, OutputChunk, Resources,
};

pub use cgroup::find_cgroup2_mount;

use self::cgroup::{Cgroup, CgroupTree};
use self::events::{EventLog, EventStream};
use self::output::Output;
use self::plan::ProcessPlan;

/// Where things are; the defaults are the guest's.
#[derive(Debug, Clone)]
pub struct Config {
    /// The agent binary to re-execute as the helper.
    pub helper: PathBuf,
    /// The cgroup v2 mount.
    pub cgroup_root: PathBuf,
    /// The pod's cgroup under it (containers are its children).
    pub cgroup_parent: String,
    /// How long container setup (mounts, user switch) may take before
    /// CreateContainer gives up.
    pub setup_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            helper: PathBuf::from("/proc/self/exe"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: "vmpod".into(),
            setup_timeout: Duration::from_secs(60),
        }
    }
}

/// One container.
pub(crate) struct Container {
    id: String,
    spec: ContainerSpec,
    /// For ExecSync: the same user, capabilities, seccomp, env and cwd.
    process: ProcessPlan,
    cgroup: Cgroup,
    output: Arc<Output>,
    status: watch::Sender<ContainerStatus>,
    /// Where its status changes are announced.
    events: Arc<EventLog>,
    /// The init's sync socket until StartContainer has used it.
    sync: tokio::sync::Mutex<Option<tokio::net::UnixStream>>,
    /// Held by StartContainer from Start until it has published how the
    /// exec went, and taken by the exit watcher before it publishes the
    /// exit: a command that exits at once is reaped before Start has read
    /// the exec's outcome, and its STOPPED must still come after STARTED
    /// (and carry the exec error when there was one).
    start_gate: tokio::sync::Mutex<()>,
    /// The write end of stdin (or the pty master), kept for Attach.
    stdin: stdin::ContainerStdin,
    /// A dup of the pty master of a tty container, for Attach's resizes
    /// (also when it has no stdin).
    pty_master: Option<OwnedFd>,
}

impl Container {
    fn status(&self) -> ContainerStatus {
        self.status.borrow().clone()
    }

    /// Changes the status and logs `kind` with the result, under the
    /// status's write lock so that no other change of this container can
    /// come between the two. `change` returns false when there was nothing
    /// to change; then nothing is logged.
    fn transition(
        &self,
        kind: ContainerEventType,
        change: impl FnOnce(&mut ContainerStatus) -> bool,
    ) -> bool {
        self.status.send_if_modified(|s| {
            if !change(s) {
                return false;
            }
            self.events.emit(kind, s.clone());
            true
        })
    }

    /// The status once exited, or None if it is still not after `timeout`.
    async fn exited_within(&self, timeout: Duration) -> Option<ContainerStatus> {
        let mut rx = self.status.subscribe();
        let exited = rx.wait_for(|s| s.state == ContainerState::ContainerExited as i32);
        match tokio::time::timeout(timeout, exited).await {
            Ok(Ok(st)) => Some(st.clone()),
            _ => None,
        }
    }

    /// SIGKILL to the init and cgroup.kill for everything else in the
    /// cgroup (its children, ExecSync processes).
    fn kill_all(&self, pid: u32) -> Result<(), Status> {
        send_signal(&self.id, pid, libc::SIGKILL)?;
        if let Err(e) = self.cgroup.kill()
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(id = self.id, "cgroup.kill failed: {e}");
        }
        Ok(())
    }
}

/// kill(2) with any signal number (nix's `Signal` has no real-time ones).
/// A process that is already gone is not an error: its exit is on its way
/// through the reaper.
fn send_signal(id: &str, pid: u32, signal: i32) -> Result<(), Status> {
    // Pid 0 (an exited container's) would be our own process group.
    if pid == 0 {
        return Ok(());
    }
    let pid = i32::try_from(pid)
        .map_err(|_| Status::internal(format!("container {id} has pid {pid}, out of range")))?;
    // SAFETY: kill(2) with plain integers.
    if unsafe { libc::kill(pid, signal) } == 0 {
        return Ok(());
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        e => Err(Status::internal(format!(
            "cannot send signal {signal} to container {id} (pid {pid}): {e}"
        ))),
    }
}

/// How long a container may take to go once killed before StopContainer
/// and RemoveContainer give up on it: past SIGKILL only a process stuck in
/// the kernel (D state, a hung FUSE or NFS call) can hold out, and waiting
/// longer would not end that either.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause process holding the pod's pid and ipc namespaces.
struct Pause {
    pid: i32,
    alive: Arc<AtomicBool>,
}

/// All containers of this guest.
pub struct Containers {
    config: Config,
    tree: CgroupTree,
    map: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids being created, so two creates of one id cannot both proceed.
    creating: Mutex<HashSet<String>>,
    pause: tokio::sync::Mutex<Option<Pause>>,
    events: Arc<EventLog>,
}

/// Nanoseconds since the Unix epoch.
pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!("container {id} not found"))
}

impl Containers {
    pub fn new(config: Config) -> Self {
        let tree = CgroupTree::new(&config.cgroup_root, &config.cgroup_parent);
        Self {
            config,
            tree,
            map: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            pause: tokio::sync::Mutex::new(None),
            events: Arc::new(EventLog::default()),
        }
    }

    fn lock_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, Status> {
        self.lock_map()
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// The status of one container.
    pub fn status(&self, id: &str) -> Result<ContainerStatus, Status> {
        Ok(self.get(id)?.status())
    }

    /// Lifecycle events after `after_seq`, then live ones (see
    /// `events.rs`).
    pub fn events(&self, after_seq: u64) -> Result<EventStream, Status> {
        self.events.subscribe(after_seq)
    }

    /// Ends every Events stream, so that a graceful server shutdown does
    /// not wait for readers that never finish on their own.
    pub fn close_events(&self) {
        self.events.close();
    }

    /// Every container, oldest first.
    pub fn list(&self) -> Vec<ContainerStatus> {
        let mut out: Vec<ContainerStatus> = self.lock_map().values().map(|c| c.status()).collect();
        out.sort_by(|a, b| (a.created_at_ns, &a.id).cmp(&(b.created_at_ns, &b.id)));
        out
    }

    /// Sends `signal` to the container's init. SIGKILL also kills every
    /// process in its cgroup, and is a no-op on an exited container.
    pub fn signal(&self, id: &str, signal: i32) -> Result<(), Status> {
        let c = self.get(id)?;
        let sig = Signal::try_from(signal)
            .map_err(|_| Status::invalid_argument(format!("signal: {signal} is not a signal")))?;
        let st = c.status();
        if st.state == ContainerState::ContainerExited as i32 {
            if sig == Signal::SIGKILL {
                return Ok(());
            }
            return Err(Status::failed_precondition(format!(
                "container {id} is not running"
            )));
        }
        if sig == Signal::SIGKILL {
            return c.kill_all(st.pid);
        }
        send_signal(id, st.pid, signal)
    }

    /// StopContainer: `signal` (0: SIGTERM) to the init, up to `grace` for
    /// it to exit, then SIGKILL to everything in its cgroup. Resolves with
    /// the exited status; a container that is not running is answered with
    /// its status as it is.
    pub async fn stop(
        &self,
        id: &str,
        signal: i32,
        grace: Duration,
    ) -> Result<ContainerStatus, Status> {
        let signal = match signal {
            0 => libc::SIGTERM,
            1..=64 => signal,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "signal: {signal} is not a signal number (1-64, or 0 for SIGTERM)"
                )));
            }
        };
        let c = self.get(id)?;
        let st = c.status();
        if st.state != ContainerState::ContainerRunning as i32 {
            return Ok(st);
        }
        if !grace.is_zero() {
            send_signal(id, st.pid, signal)?;
            if let Some(exited) = c.exited_within(grace).await {
                // The init is gone; whatever it left in the cgroup (in a
                // shared pid namespace its children outlive it) goes too,
                // so that nothing of the container outlives its stop.
                if let Err(e) = c.cgroup.kill()
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    warn!(id, "cgroup.kill after the init exited failed: {e}");
                }
                return Ok(exited);
            }
            info!(
                id,
                signal,
                ?grace,
                "container outlived its grace; killing it"
            );
        }
        c.kill_all(st.pid)?;
        c.exited_within(KILL_TIMEOUT).await.ok_or_else(|| {
            Status::internal(format!(
                "container {id} did not exit within {KILL_TIMEOUT:?} of SIGKILL"
            ))
        })
    }

    /// The status once the container has exited, or after `timeout`
    /// (zero: no limit) whatever it is then.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<ContainerStatus, Status> {
        let c = self.get(id)?;
        if timeout.is_zero() {
            let mut rx = c.status.subscribe();
            let _ = rx
                .wait_for(|s| s.state == ContainerState::ContainerExited as i32)
                .await;
            return Ok(c.status());
        }
        match c.exited_within(timeout).await {
            Some(st) => Ok(st),
            None => Ok(c.status()),
        }
    }

    /// Forgets an exited or never started container and removes its
    /// cgroup.
    pub async fn remove(&self, id: &str) -> Result<(), Status> {
        let c = self.get(id)?;
        // Holding the sync lock keeps a concurrent StartContainer out.
        let mut sync = c.sync.lock().await;
        let st = c.status();
        if st.state == ContainerState::ContainerRunning as i32 {
            return Err(Status::failed_precondition(format!(
                "container {id} is running; stop it first"
            )));
        }
        if st.state == ContainerState::ContainerCreated as i32 {
            let _ = c.kill_all(st.pid);
            if c.exited_within(KILL_TIMEOUT).await.is_none() {
                return Err(Status::internal(format!(
                    "container {id} did not die after SIGKILL"
                )));
            }
        }
        sync.take();
        drop(sync);
        let cg = c.cgroup.clone();
        tokio::task::spawn_blocking(move || cg.remove())
            .await
            .map_err(|e| Status::internal(format!("cgroup removal task failed: {e}")))?
            .map_err(|e| {
                Status::internal(format!("cannot remove the cgroup of container {id}: {e}"))
            })?;
        {
            // Under the map lock, so that a new container of the same id
            // cannot be announced before this one's DELETED.
            let mut map = self.lock_map();
            if map.get(id).is_some_and(|m| Arc::ptr_eq(m, &c)) {
                map.remove(id);
                self.events
                    .emit(ContainerEventType::ContainerEventDeleted, c.status());
            }
        }
        info!(id, "container removed");
        Ok(())
    }

    /// Applies new limits to a container's cgroup.
    pub fn update(&self, id: &str, resources: Option<&Resources>) -> Result<(), Status> {
        let c = self.get(id)?;
        let r = resources.cloned().unwrap_or_default();
        validate::check_resources("resources", &r)?;
        if c.status().state == ContainerState::ContainerExited as i32 {
            return Err(Status::failed_precondition(format!(
                "container {id} has exited"
            )));
        }
        c.cgroup.apply(&r)
    }

    /// The container's output stream (see `output.rs`).
    pub fn read_output(
        &self,
        id: &str,
    ) -> Result<ReceiverStream<Result<OutputChunk, Status>>, Status> {
        Ok(self.get(id)?.output.subscribe())
    }

    /// Kills every container and the pause process and removes their
    /// cgroups. For a clean end (tests; the VM itself just stops).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Container>> = self.lock_map().values().cloned().collect();
        for c in &all {
            let _ = self.signal(&c.id, Signal::SIGKILL as i32);
        }
        for c in &all {
            let mut rx = c.status.subscribe();
            let exited = rx.wait_for(|s| s.state == ContainerState::ContainerExited as i32);
            let _ = tokio::time::timeout(Duration::from_secs(10), exited).await;
            // Created ones were waiting for Start; running ones are gone.
            let _ = self.remove(&c.id).await;
        }
        if let Some(p) = self.pause.lock().await.take() {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir(self.tree.parent());
    }
}
