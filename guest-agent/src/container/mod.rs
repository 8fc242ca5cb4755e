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
//! so WaitContainer just waits for it to say EXITED.
//!
//! The verbs each have a file: `create.rs` (CreateContainer and
//! StartContainer, which share the init's sync socket), `exec.rs`
//! (ExecSync), `stats.rs`; signal, wait, remove, list, update and output
//! are short enough to live here. The helper processes' side is in
//! `helper.rs`, `mounts.rs` and `process.rs`.

mod caps;
mod cgroup;
mod channel;
mod create;
mod exec;
pub mod helper;
mod mounts;
mod output;
mod plan;
mod process;
mod resolve;
mod seccomp;
mod spec;
mod stats;
mod syscalls;
mod user;

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
    ContainerSpec, ContainerState, ContainerStatus, OutputChunk, Resources,
};

pub use cgroup::find_cgroup2_mount;

use self::cgroup::{Cgroup, CgroupTree};
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
    /// The init's sync socket until StartContainer has used it.
    sync: tokio::sync::Mutex<Option<tokio::net::UnixStream>>,
    /// The write end of stdin (or the pty master), kept for a later attach.
    #[allow(dead_code)]
    stdin: Mutex<Option<OwnedFd>>,
}

impl Container {
    fn status(&self) -> ContainerStatus {
        self.status.borrow().clone()
    }
}

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
        match kill(Pid::from_raw(st.pid as i32), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                return Err(Status::internal(format!(
                    "cannot send {sig} to container {id}: {e}"
                )));
            }
        }
        if sig == Signal::SIGKILL
            && let Err(e) = c.cgroup.kill()
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(id, "cgroup.kill failed: {e}");
        }
        Ok(())
    }

    /// The status once the container has exited, or after `timeout`
    /// (zero: no limit) whatever it is then.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<ContainerStatus, Status> {
        let c = self.get(id)?;
        let mut rx = c.status.subscribe();
        let exited = rx.wait_for(|s| s.state == ContainerState::ContainerExited as i32);
        if timeout.is_zero() {
            let _ = exited.await;
        } else {
            let _ = tokio::time::timeout(timeout, exited).await;
        }
        Ok(c.status())
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
            let _ = kill(Pid::from_raw(st.pid as i32), Signal::SIGKILL);
            let _ = c.cgroup.kill();
            let mut rx = c.status.subscribe();
            let exited = rx.wait_for(|s| s.state == ContainerState::ContainerExited as i32);
            if tokio::time::timeout(Duration::from_secs(10), exited)
                .await
                .is_err()
            {
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
        self.lock_map().remove(id);
        info!(id, "container removed");
        Ok(())
    }

    /// Applies new limits to a container's cgroup.
    pub fn update(&self, id: &str, resources: Option<&Resources>) -> Result<(), Status> {
        let c = self.get(id)?;
        let r = resources.cloned().unwrap_or_default();
        spec::check_resources("resources", &r)?;
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
