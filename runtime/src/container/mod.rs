//! Containers: each one runs inside its pod's VM, by the guest agent.
//!
//! The CRI calls in `cri/container/` translate requests into shim calls
//! through this module. The redb record holds what the client asked for and
//! the last state seen. Records follow the pod's event stream
//! ([`follow`]), so reads answer from them without asking the VM; only a
//! pod whose stream is not followed is asked, by [`refresh`], bounded by a
//! short deadline. Containers whose VM is gone become exited ones with
//! reason `Error`, so that kubelet sees them end instead of hanging.
//!
//! Every change of a record's state goes through [`record`], which
//! publishes it as a container event ([`events`]).

pub mod events;
pub mod follow;
pub mod registry;

use std::time::Duration;

use tonic::Status;
use tonic::transport::Channel;
use vmpod_agent_proto::v1 as agent;
use vmpod_shim_api::ShimClient;

use crate::daemon::Daemon;
use crate::error::{not_ready, shim_err, store_err};
use crate::sandbox::shim;
use crate::state::{ContainerRecord, ContainerState, SandboxRecord, SandboxState, StoreError};

/// How long a CRI call waits for a live shim's socket.
const SHIM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a read waits on one pod whose event stream is not followed: a
/// wedged guest must not stretch kubelet's relist, so past this the pod's
/// containers are reported as last recorded.
const REFRESH_DEADLINE: Duration = Duration::from_millis(500);

/// Exit code reported for a container whose VM died under it: like a
/// process killed without a chance to report (containerd uses 255 too).
pub const LOST_EXIT_CODE: i32 = 255;

pub const REASON_COMPLETED: &str = "Completed";
pub const REASON_ERROR: &str = "Error";
pub const REASON_OOM: &str = "OOMKilled";

/// A client for the sandbox's shim, which must be READY.
pub async fn shim_client(sandbox: &SandboxRecord) -> Result<ShimClient<Channel>, Status> {
    if sandbox.state != SandboxState::Ready {
        return Err(Status::unavailable(not_ready(sandbox)));
    }
    shim::connect(&sandbox.pod_dir, SHIM_CONNECT_TIMEOUT)
        .await
        .map_err(|e| Status::unavailable(format!("sandbox {}: {e}", sandbox.id)))
}

/// Copies what the agent reports into the record. Returns whether anything
/// changed. A terminal state is never left.
pub fn apply_status(rec: &mut ContainerRecord, st: &agent::ContainerStatus) -> bool {
    if rec.state == ContainerState::Exited {
        return false;
    }
    // A late answer (an event replayed, a slow Start reply) must not move
    // a container back from running to created.
    if rec.state == ContainerState::Running && st.state() == agent::ContainerState::ContainerCreated
    {
        return false;
    }
    let before = rec.clone();
    match agent::ContainerState::try_from(st.state) {
        Ok(agent::ContainerState::ContainerCreated) => rec.state = ContainerState::Created,
        Ok(agent::ContainerState::ContainerRunning) => {
            rec.state = ContainerState::Running;
            rec.started_at = st.started_at_ns;
        }
        Ok(agent::ContainerState::ContainerExited) => {
            rec.state = ContainerState::Exited;
            rec.started_at = st.started_at_ns;
            rec.finished_at = if st.finished_at_ns > 0 {
                st.finished_at_ns
            } else {
                crate::clock::unix_nanos()
            };
            rec.exit_code = st.exit_code;
            rec.reason = if st.oom_killed {
                REASON_OOM
            } else if st.exit_code == 0 {
                REASON_COMPLETED
            } else {
                REASON_ERROR
            }
            .to_string();
            rec.message = st.message.clone();
            vmpod_shim_api::bound_guest_message(&mut rec.message);
        }
        Err(_) => {}
    }
    *rec != before
}

/// Applies `f` to container `id`'s record, and publishes the change of
/// state it made, if any, as a container event. Returns the record after
/// `f` when it changed.
pub fn record(
    daemon: &Daemon,
    id: &str,
    f: impl FnOnce(&mut ContainerRecord) -> bool,
) -> Result<Option<ContainerRecord>, StoreError> {
    let mut before = None;
    let changed = daemon.store.update_container(id, |r| {
        before = Some(r.state);
        f(r)
    })?;
    if let Some(rec) = &changed
        && before != Some(rec.state)
        && let Some(change) = events::change_of(rec)
    {
        daemon.containers.events.publish(change);
    }
    Ok(changed)
}

/// Deletes container `id`'s record and publishes its deletion.
pub fn delete(daemon: &Daemon, rec: &ContainerRecord) -> Result<(), StoreError> {
    daemon.store.delete_container(&rec.id)?;
    daemon.containers.forget(&rec.id);
    daemon.containers.events.publish(events::Change {
        container_id: rec.id.clone(),
        sandbox_id: rec.sandbox_id.clone(),
        kind: events::ChangeKind::Deleted,
        at_ns: crate::clock::unix_nanos(),
    });
    Ok(())
}

/// Whether the container may still be running in its VM.
pub fn is_live(r: &ContainerRecord) -> bool {
    matches!(r.state, ContainerState::Created | ContainerState::Running)
}

/// The records of one sandbox's containers.
pub fn containers_of(
    daemon: &Daemon,
    sandbox_id: &str,
) -> Result<Vec<ContainerRecord>, StoreError> {
    Ok(daemon
        .store
        .list_containers()?
        .into_iter()
        .filter(|c| c.sandbox_id == sandbox_id)
        .collect())
}

/// The records of one sandbox's containers that may still run.
pub fn live_containers_of(
    daemon: &Daemon,
    sandbox_id: &str,
) -> Result<Vec<ContainerRecord>, StoreError> {
    Ok(containers_of(daemon, sandbox_id)?
        .into_iter()
        .filter(is_live)
        .collect())
}

/// One pod's usage: its `containers` and the pod totals, from one agent
/// `Stats` call. A pod whose VM does not answer has no stats (rather than
/// zeros, which would read as "idle").
pub async fn sample_stats(
    sandbox: &SandboxRecord,
    containers: &[ContainerRecord],
) -> Result<agent::StatsResponse, Status> {
    let mut client = shim_client(sandbox).await?;
    let resp = client
        .stats(agent::StatsRequest {
            ids: containers.iter().map(|c| c.id.clone()).collect(),
        })
        .await
        .map_err(|e| shim_err("reading stats in the pod VM", e))?
        .into_inner();
    Ok(resp)
}

/// SIGKILLs a container through its shim and waits for it to be reaped.
pub async fn kill(
    client: &mut ShimClient<Channel>,
    id: &str,
) -> Result<agent::ContainerStatus, Status> {
    client
        .stop_container(vmpod_shim_api::v1::StopContainerRequest {
            id: id.to_string(),
            timeout_ms: 0,
            signal: 0,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Marks a container that cannot be reached any more as exited.
pub fn mark_lost(rec: &mut ContainerRecord, why: &str) -> bool {
    if matches!(rec.state, ContainerState::Exited | ContainerState::Creating) {
        return false;
    }
    rec.state = ContainerState::Exited;
    rec.finished_at = crate::clock::unix_nanos();
    rec.exit_code = LOST_EXIT_CODE;
    rec.reason = REASON_ERROR.to_string();
    rec.message = why.to_string();
    true
}

/// Brings the records of `sandbox_id`'s live containers up to date with
/// the agent. Errors reaching a shim that should be alive are not errors of
/// the caller: the records stay as last seen, and the sandbox monitor turns
/// a dead VM NOTREADY, after which its containers are marked lost here.
pub async fn refresh(daemon: &Daemon, sandbox_id: &str) -> Result<(), Status> {
    let live = live_containers_of(daemon, sandbox_id).map_err(store_err)?;
    refresh_bounded(daemon, sandbox_id, live).await
}

/// [`refresh_records`] unless the pod's events already keep its records
/// current, bounded by [`REFRESH_DEADLINE`].
async fn refresh_bounded(
    daemon: &Daemon,
    sandbox_id: &str,
    live: Vec<ContainerRecord>,
) -> Result<(), Status> {
    if live.is_empty() || daemon.containers.is_followed(sandbox_id) {
        return Ok(());
    }
    match tokio::time::timeout(REFRESH_DEADLINE, refresh_records(daemon, sandbox_id, live)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(
                sandbox = sandbox_id,
                "the pod did not answer within {REFRESH_DEADLINE:?}; reporting its containers as last recorded"
            );
            Ok(())
        }
    }
}

/// [`refresh`] for records already read: one `ListContainers` to the shim.
async fn refresh_records(
    daemon: &Daemon,
    sandbox_id: &str,
    live: Vec<ContainerRecord>,
) -> Result<(), Status> {
    if live.is_empty() {
        return Ok(());
    }
    let sandbox = daemon.store.get_sandbox(sandbox_id).map_err(store_err)?;
    let statuses = match &sandbox {
        Some(sb) if sb.state == SandboxState::Ready => {
            let mut client = match shim_client(sb).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(sandbox = sandbox_id, error = %e.message(), "refresh skipped");
                    return Ok(());
                }
            };
            match client
                .list_containers(agent::ListContainersRequest {})
                .await
            {
                Ok(r) => Ok(r.into_inner().containers),
                Err(e) if e.code() == tonic::Code::Unavailable => {
                    Err(format!("the pod VM stopped responding: {}", e.message()))
                }
                Err(e) => {
                    tracing::warn!(sandbox = sandbox_id, error = %e.message(), "refresh failed");
                    return Ok(());
                }
            }
        }
        Some(sb) => Err(not_ready(sb)),
        None => Err("the pod sandbox is gone".to_string()),
    };
    for rec in live {
        let found = statuses
            .as_ref()
            .map(|list| list.iter().find(|s| s.id == rec.id).cloned());
        let result = record(daemon, &rec.id, |r| match &found {
            Ok(Some(st)) => apply_status(r, st),
            Ok(None) => mark_lost(r, "the container is gone from the pod VM"),
            Err(why) => mark_lost(r, why),
        });
        match result {
            Ok(Some(r)) if r.state == ContainerState::Exited => {
                tracing::info!(container = %r.id, exit_code = r.exit_code, reason = %r.reason, "container exited");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(container = %rec.id, error = %e, "cannot record container state")
            }
        }
    }
    Ok(())
}

/// Refreshes every sandbox that has live containers (ListContainers and
/// the stats calls look at all of them).
pub async fn refresh_all(daemon: &Daemon) -> Result<(), Status> {
    let mut by_sandbox: std::collections::BTreeMap<String, Vec<ContainerRecord>> =
        std::collections::BTreeMap::new();
    for c in daemon
        .store
        .list_containers()
        .map_err(store_err)?
        .into_iter()
        .filter(is_live)
    {
        by_sandbox.entry(c.sandbox_id.clone()).or_default().push(c);
    }
    let refreshes = by_sandbox
        .into_iter()
        .map(|(id, live)| async move { refresh_bounded(daemon, &id, live).await });
    for r in futures_util::future::join_all(refreshes).await {
        r?;
    }
    Ok(())
}

/// SIGKILLs the running containers of a ready sandbox and records how they
/// ended, so that a pod stopped with containers still running reports them
/// killed (137) rather than lost with their VM.
pub async fn kill_all(daemon: &Daemon, sandbox: &SandboxRecord) {
    let running: Vec<String> = match containers_of(daemon, &sandbox.id) {
        Ok(all) => all
            .into_iter()
            .filter(|c| c.state == ContainerState::Running)
            .map(|c| c.id)
            .collect(),
        Err(e) => {
            tracing::warn!(sandbox = %sandbox.id, error = %e, "cannot list containers to kill");
            return;
        }
    };
    if running.is_empty() {
        return;
    }
    let Ok(mut client) = shim_client(sandbox).await else {
        return;
    };
    for id in running {
        match tokio::time::timeout(Duration::from_secs(10), kill(&mut client, &id)).await {
            Ok(Ok(st)) => {
                if let Err(e) = record(daemon, &id, |r| apply_status(r, &st)) {
                    tracing::error!(container = %id, error = %e, "cannot record container state");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(container = %id, error = %e.message(), "kill before sandbox stop")
            }
            Err(_) => tracing::warn!(container = %id, "kill before sandbox stop timed out"),
        }
    }
}

/// Marks the live containers of a sandbox whose VM was stopped as exited,
/// with `why`. Called by StopPodSandbox and RemovePodSandbox.
pub fn sandbox_stopped(daemon: &Daemon, sandbox_id: &str, why: &str) {
    let Ok(all) = containers_of(daemon, sandbox_id) else {
        return;
    };
    for c in all {
        if let Err(e) = record(daemon, &c.id, |r| mark_lost(r, why)) {
            tracing::error!(container = %c.id, error = %e, "cannot record container state");
        }
    }
}

/// Marks the live containers of a sandbox whose VM just went away as
/// exited, with the reason the sandbox is not ready, and publishes that.
pub fn vm_gone(daemon: &Daemon, sandbox_id: &str) {
    match daemon.store.get_sandbox(sandbox_id) {
        Ok(Some(sb)) if sb.state != SandboxState::Ready => {
            sandbox_stopped(daemon, sandbox_id, &not_ready(&sb));
        }
        Ok(_) => {}
        Err(e) => tracing::error!(sandbox = sandbox_id, error = %e, "cannot read sandbox state"),
    }
}

/// Deletes the records of a removed sandbox's containers (their roots went
/// with the pod dir).
pub fn remove_all_of(daemon: &Daemon, sandbox_id: &str) -> Result<(), StoreError> {
    for c in containers_of(daemon, sandbox_id)? {
        delete(daemon, &c)?;
    }
    Ok(())
}
