//! The container half of the shim: host-side assembly (root overlay, volume
//! binds, log file, output relay) around relayed agent calls.
//!
//! The daemon speaks in host terms; everything the guest needs is made
//! visible under `share/containers/<id>` and named by its guest path. What
//! the shim keeps per container is what only the host has: the log file
//! (for ReopenContainerLog), the task copying output into it and the
//! writable layer (measured for stats). The guest state (created, running,
//! exited) is the agent's; the shim's copy of it is the event log
//! (`crate::events`), fed by the agent's stream and by the answers to the
//! calls below.
//!
//! Which containers exist on the host is known from these records and from
//! the host-only trees (`skeleton/`, `writable/`), never by listing the
//! share: whatever the guest can write, it can forge.
//!
//! Create and Remove run as tasks of their own: tonic drops a handler when
//! its caller goes away, and a daemon killed half-way through either must
//! not leave mounts without a record or a record without its guest half.

mod attach;
pub mod create;
mod exec;
pub mod id;
mod output;
pub mod rootfs;
pub mod teardown;
#[cfg(test)]
mod tests;
pub mod volumes;
pub mod writable;

pub use id::{CONTAINERS_DIR, MAX_ID, check_id};
pub use teardown::remove_container;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tonic::{Code, Status};
use vmpod_agent_proto::v1::{
    ContainerEventType, ContainerRef, ContainerState, ContainerStatus, ExecSyncRequest,
    ExecSyncResponse, ListContainersRequest, ListContainersResponse, RemoveContainerResponse,
    StatsRequest, StatsResponse, StopContainerRequest as AgentStopRequest, UpdateContainerRequest,
    UpdateContainerResponse,
};
use vmpod_shim_api::v1::{
    CreateContainerRequest, ReopenContainerLogResponse, StopContainerRequest,
};

use crate::events::{EventLog, event_for};
use crate::logs::LogFile;
use crate::relay::{AgentSource, call};
use crate::share::PodShare;

/// Create, start and remove make namespaces, cgroups and mounts in the
/// guest, which under TCG takes far longer than a query.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Queries and small changes (list, stats, update, signal).
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Added to a caller's own timeout (exec, wait), for the round trip.
const CALL_MARGIN: Duration = Duration::from_secs(10);
/// How long a container may take to die after SIGKILL (its cgroup is
/// killed at once; this only bounds a wedged guest).
const KILL_WAIT: Duration = Duration::from_secs(60);
/// Output still in flight when a container is removed gets this long.
const RELAY_GRACE: Duration = Duration::from_secs(2);
/// At VM teardown the connection is already gone; this only flushes.
const TEARDOWN_RELAY_GRACE: Duration = Duration::from_millis(500);

fn check_id_status(id: &str) -> Result<(), Status> {
    check_id(id).map_err(Status::invalid_argument)
}

/// The pod's containers, as far as the host is concerned.
pub struct Containers {
    pod: PodShare,
    entries: Mutex<HashMap<String, Entry>>,
    events: Arc<EventLog>,
}

enum Entry {
    /// A Create or Remove is under way; others keep out.
    Busy,
    Ready(Container),
}

struct Container {
    log: Option<Arc<LogFile>>,
    relay: output::Relay,
    writable: writable::Writable,
}

impl Containers {
    pub fn new(pod: PodShare) -> Arc<Containers> {
        Arc::new(Containers {
            pod,
            entries: Mutex::new(HashMap::new()),
            events: EventLog::new(),
        })
    }

    /// The pod's container events and the latest status of each container.
    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    /// Folds a status an agent call answered with into the event log.
    fn seen(&self, status: &ContainerStatus) {
        if self.knows(&status.id) {
            self.events.record(event_for(status), status.clone());
        }
    }

    /// Whether container `id` is one this shim created (or is creating or
    /// removing): the only ids the guest is believed about.
    pub fn knows(&self, id: &str) -> bool {
        self.entries().contains_key(id)
    }

    /// [`Self::knows`] as the event pump takes it.
    pub fn known(self: &Arc<Self>) -> crate::events::Known {
        let this = Arc::clone(self);
        Arc::new(move |id: &str| this.knows(id))
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether anything of container `id` is on the host (host-only trees).
    fn leftover(&self, id: &str) -> bool {
        self.pod.skeleton.join(rootfs::relative_dir(id)).exists()
            || self.pod.writable.join(format!("{id}.img")).exists()
    }

    /// Assembles the container on the host, creates it in the guest and
    /// starts relaying its output. On failure nothing is left on the host.
    pub async fn create<A: AgentSource>(
        self: &Arc<Self>,
        agents: &A,
        req: CreateContainerRequest,
    ) -> Result<ContainerStatus, Status> {
        let this = Arc::clone(self);
        let agents = agents.clone();
        detached(async move { this.create_now(&agents, req).await }).await
    }

    async fn create_now<A: AgentSource>(
        &self,
        agents: &A,
        req: CreateContainerRequest,
    ) -> Result<ContainerStatus, Status> {
        let id = req.spec.as_ref().map(|s| s.id.clone()).unwrap_or_default();
        check_id_status(&id)?;
        // Cheap refusals first: no host work for a VM that is not there.
        let mut client = agents.client()?;
        {
            let mut entries = self.entries();
            if entries.contains_key(&id) {
                return Err(Status::already_exists(format!(
                    "container {id} already exists"
                )));
            }
            entries.insert(id.clone(), Entry::Busy);
        }
        let result = self
            .assemble_and_create(agents, &mut client, &id, req)
            .await;
        let mut entries = self.entries();
        match result {
            Ok((status, container)) => {
                entries.insert(id, Entry::Ready(container));
                drop(entries);
                self.seen(&status);
                Ok(status)
            }
            Err(e) => {
                entries.remove(&id);
                Err(e)
            }
        }
    }

    async fn assemble_and_create<A: AgentSource>(
        &self,
        agents: &A,
        client: &mut vmpod_agent_proto::AgentClient<tonic::transport::Channel>,
        id: &str,
        req: CreateContainerRequest,
    ) -> Result<(ContainerStatus, Container), Status> {
        let pod = self.pod.clone();
        let leftover = self.leftover(id);
        let owned_id = id.to_owned();
        // Validation stats host paths and assembly mounts; a hung host
        // filesystem must stall this request only, not the VM relay.
        let (spec, log, writable) = blocking(move || {
            let plan = create::validate(req)?;
            if leftover {
                // No record, so nothing of a live container: a leftover.
                remove_container(&pod, &owned_id)
                    .map_err(|e| Status::internal(format!("{e:#}")))?;
            }
            let log = match &plan.log_path {
                Some(path) => Some(LogFile::open(path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Status::not_found(e.to_string()),
                    _ => Status::internal(e.to_string()),
                })?),
                None => None,
            };
            let (spec, writable) =
                create::assemble(&pod, plan).map_err(|e| Status::internal(format!("{e:#}")))?;
            Ok((spec, log, writable))
        })
        .await?;
        let created = call(
            agents,
            "CreateContainer",
            Some(LIFECYCLE_TIMEOUT),
            client.create_container(vmpod_agent_proto::v1::CreateContainerRequest {
                spec: Some(spec),
            }),
        )
        .await;
        let status = match created {
            Ok(status) => status,
            Err(e) => {
                let pod = self.pod.clone();
                let owned_id = id.to_owned();
                if let Err(undo) = blocking(move || {
                    remove_container(&pod, &owned_id)
                        .map_err(|e| Status::internal(format!("{e:#}")))
                })
                .await
                {
                    tracing::error!(container = %id, error = %undo.message(), "undoing a failed create");
                }
                return Err(e);
            }
        };
        let relay = output::spawn(agents.clone(), id.to_owned(), log.clone());
        Ok((
            status,
            Container {
                log,
                relay,
                writable,
            },
        ))
    }

    pub async fn start<A: AgentSource>(
        &self,
        agents: &A,
        req: ContainerRef,
    ) -> Result<ContainerStatus, Status> {
        check_id_status(&req.id)?;
        let mut client = agents.client()?;
        let status = call(
            agents,
            "StartContainer",
            Some(LIFECYCLE_TIMEOUT),
            client.start_container(req),
        )
        .await?;
        self.seen(&status);
        Ok(status)
    }

    /// Signals, waits out the grace, then kills; resolves with the exit.
    /// One agent call does it all in the guest. A container that is not
    /// running (exited, or never started) is answered with its status:
    /// Stop is idempotent.
    pub async fn stop<A: AgentSource>(
        &self,
        agents: &A,
        req: StopContainerRequest,
    ) -> Result<ContainerStatus, Status> {
        check_id_status(&req.id)?;
        if req.signal != 0 && !(1..=64).contains(&req.signal) {
            return Err(Status::invalid_argument(format!(
                "signal {} is not a signal number",
                req.signal
            )));
        }
        let grace = Duration::from_millis(req.timeout_ms);
        let mut client = agents.client()?;
        let status = call(
            agents,
            "StopContainer",
            Some(grace.saturating_add(KILL_WAIT).saturating_add(CALL_MARGIN)),
            client.stop_container(AgentStopRequest {
                id: req.id,
                signal: req.signal,
                timeout_ms: req.timeout_ms,
            }),
        )
        .await?;
        self.seen(&status);
        Ok(status)
    }

    /// Removes the container in the guest, then its host side. Refused (by
    /// the agent) while it runs. An id nobody knows is fine, but a dir left
    /// for it is still cleaned up.
    pub async fn remove<A: AgentSource>(
        self: &Arc<Self>,
        agents: &A,
        req: ContainerRef,
    ) -> Result<RemoveContainerResponse, Status> {
        check_id_status(&req.id)?;
        let this = Arc::clone(self);
        let agents = agents.clone();
        detached(async move { this.remove_now(&agents, req.id).await }).await
    }

    async fn remove_now<A: AgentSource>(
        &self,
        agents: &A,
        id: String,
    ) -> Result<RemoveContainerResponse, Status> {
        let container = {
            let mut entries = self.entries();
            match entries.insert(id.clone(), Entry::Busy) {
                Some(Entry::Busy) => {
                    return Err(Status::failed_precondition(format!(
                        "container {id} is being created or removed"
                    )));
                }
                Some(Entry::Ready(c)) => Some(c),
                None => None,
            }
        };
        // Without an agent (VM stopped or failed) the guest half is gone.
        if let Ok(mut client) = agents.client() {
            let removed = call(
                agents,
                "RemoveContainer",
                Some(LIFECYCLE_TIMEOUT),
                client.remove_container(ContainerRef { id: id.clone() }),
            )
            .await;
            match removed {
                Ok(_) => {}
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => {
                    let mut entries = self.entries();
                    match container {
                        Some(c) => entries.insert(id, Entry::Ready(c)),
                        None => entries.remove(&id),
                    };
                    return Err(s);
                }
            }
        }
        if let Some(c) = container {
            c.relay.finish(RELAY_GRACE).await;
        }
        let pod = self.pod.clone();
        let owned_id = id.clone();
        let cleaned = blocking(move || {
            remove_container(&pod, &owned_id).map_err(|e| Status::internal(format!("{e:#}")))
        })
        .await;
        self.entries().remove(&id);
        if let Some(last) = self.events.status(&id) {
            self.events
                .record(ContainerEventType::ContainerEventDeleted, last);
        }
        cleaned.map(|()| RemoveContainerResponse {})
    }

    pub async fn list<A: AgentSource>(
        &self,
        agents: &A,
        req: ListContainersRequest,
    ) -> Result<ListContainersResponse, Status> {
        let mut client = agents.client()?;
        call(
            agents,
            "ListContainers",
            Some(QUERY_TIMEOUT),
            client.list_containers(req),
        )
        .await
    }

    /// The latest status of container `id`: the event log's copy, which
    /// never waits on the guest; the agent is asked only about an id the
    /// log has not seen (a container created before this shim's log began
    /// following the agent).
    pub async fn status<A: AgentSource>(
        &self,
        agents: &A,
        id: &str,
    ) -> Result<ContainerStatus, Status> {
        check_id_status(id)?;
        if let Some(status) = self.events.status(id) {
            return Ok(status);
        }
        let mut client = agents.client()?;
        let status = call(
            agents,
            "ContainerStatus",
            Some(QUERY_TIMEOUT),
            client.container_status(ContainerRef { id: id.to_owned() }),
        )
        .await?;
        if status.id != id {
            return Err(Status::internal(format!(
                "the agent answered about container {:?} when asked about {id}",
                status.id
            )));
        }
        self.seen(&status);
        Ok(status)
    }

    /// Bounded by the exec's own timeout (plus a margin), not by the
    /// generic one: probes legitimately run for minutes.
    pub async fn exec_sync<A: AgentSource>(
        &self,
        agents: &A,
        req: ExecSyncRequest,
    ) -> Result<ExecSyncResponse, Status> {
        check_id_status(&req.id)?;
        let limit = exec_limit(req.timeout_ms);
        let mut client = agents.client()?;
        call(agents, "ExecSync", limit, client.exec_sync(req)).await
    }

    pub async fn update<A: AgentSource>(
        &self,
        agents: &A,
        req: UpdateContainerRequest,
    ) -> Result<UpdateContainerResponse, Status> {
        check_id_status(&req.id)?;
        let mut client = agents.client()?;
        call(
            agents,
            "UpdateContainer",
            Some(QUERY_TIMEOUT),
            client.update_container(req),
        )
        .await
    }

    pub async fn stats<A: AgentSource>(
        &self,
        agents: &A,
        req: StatsRequest,
    ) -> Result<StatsResponse, Status> {
        for id in &req.ids {
            check_id_status(id)?;
        }
        let mut client = agents.client()?;
        let mut stats = call(agents, "Stats", Some(QUERY_TIMEOUT), client.stats(req)).await?;
        // The guest's own count of its writable layer is not to be trusted
        // (kubelet evicts on it); the host measures the layer's file system.
        let layers: HashMap<String, writable::Writable> = self
            .entries()
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Ready(c) => Some((id.clone(), c.writable.clone())),
                Entry::Busy => None,
            })
            .collect();
        stats = blocking(move || {
            for usage in &mut stats.containers {
                let measured = layers.get(&usage.id).map(|w| w.usage());
                (usage.writable_bytes, usage.writable_inodes) = match measured {
                    Some(Ok(u)) => u,
                    Some(Err(e)) => {
                        tracing::warn!(container = %usage.id, "writable layer usage: {e:#}");
                        (0, 0)
                    }
                    None => (0, 0),
                };
            }
            Ok(stats)
        })
        .await?;
        Ok(stats)
    }

    /// Reopens the log at its path, after kubelet renamed the old file.
    /// Like containerd, only for a running container: one that exited has
    /// written its last line and rotating its log is kubelet's own job.
    pub async fn reopen_log<A: AgentSource>(
        &self,
        agents: &A,
        req: ContainerRef,
    ) -> Result<ReopenContainerLogResponse, Status> {
        check_id_status(&req.id)?;
        let log = match self.entries().get(&req.id) {
            Some(Entry::Ready(c)) => c.log.clone(),
            Some(Entry::Busy) => {
                return Err(Status::failed_precondition(format!(
                    "container {} is being created or removed",
                    req.id
                )));
            }
            None => return Err(Status::not_found(format!("container {} not found", req.id))),
        };
        let status = self.status(agents, &req.id).await?;
        if status.state() != ContainerState::ContainerRunning {
            return Err(Status::failed_precondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        let Some(log) = log else {
            // Created without a log path: output is discarded, nothing to reopen.
            return Ok(ReopenContainerLogResponse {});
        };
        blocking(move || {
            log.reopen().map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Status::not_found(e.to_string()),
                _ => Status::internal(e.to_string()),
            })
        })
        .await?;
        Ok(ReopenContainerLogResponse {})
    }

    /// Called once the VM is gone: ends every relay (flushing what was read)
    /// and unmounts and deletes every container's root and volumes, so no
    /// mount of the pod outlives its VM. Idempotent.
    pub async fn teardown_all(&self) {
        let (ready, busy): (Vec<Container>, Vec<String>) = {
            let mut entries = self.entries();
            let mut busy = Vec::new();
            let mut ready = Vec::new();
            for (id, entry) in entries.drain() {
                match entry {
                    Entry::Ready(c) => ready.push(c),
                    Entry::Busy => busy.push(id),
                }
            }
            // A create or remove under way owns its dir and finishes (or
            // undoes) it itself.
            for id in &busy {
                entries.insert(id.clone(), Entry::Busy);
            }
            (ready, busy)
        };
        for c in ready {
            c.relay.finish(TEARDOWN_RELAY_GRACE).await;
        }
        let pod = self.pod.clone();
        let result = blocking(move || {
            // Records are gone with the entries; what is left on the host
            // shows in the host-only trees, which the guest cannot write.
            let mut ids = std::collections::BTreeSet::new();
            for (dir, suffix) in [
                (pod.skeleton.join(CONTAINERS_DIR), ""),
                (pod.writable.clone(), ".img"),
            ] {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if let Some(id) = name.strip_suffix(suffix)
                        && check_id(id).is_ok()
                    {
                        ids.insert(id.to_owned());
                    }
                }
            }
            for id in ids.iter().filter(|id| !busy.contains(id)) {
                if let Err(e) = remove_container(&pod, id) {
                    tracing::error!(container = %id, "container teardown: {e:#}");
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = result {
            tracing::error!("container teardown: {}", e.message());
        }
    }
}

/// How long an ExecSync may take: its own timeout plus the round trip;
/// unbounded when it has none (0), like the agent.
fn exec_limit(timeout_ms: u64) -> Option<Duration> {
    match timeout_ms {
        0 => None,
        ms => Some(Duration::from_millis(ms).saturating_add(CALL_MARGIN)),
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("host task failed: {e}")))?
}

/// Runs `fut` to completion even if the caller stops waiting for it.
async fn detached<T: Send + 'static>(
    fut: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(fut)
        .await
        .map_err(|e| Status::internal(format!("container task failed: {e}")))?
}
