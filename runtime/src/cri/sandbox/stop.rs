//! `StopPodSandbox`: stop the VM, release the pod network (CNI DEL, netns),
//! keep the record and logs.
//!
//! Idempotent, and an unknown id is not an error: kubelet retries stops of
//! sandboxes it may already have removed.

use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1::{StopPodSandboxRequest, StopPodSandboxResponse};

use super::find;
use crate::daemon::Daemon;
use crate::error::store_err;
use crate::sandbox;
use crate::state::SandboxState;

pub async fn stop_pod_sandbox(
    daemon: &Arc<Daemon>,
    req: StopPodSandboxRequest,
) -> Result<StopPodSandboxResponse, Status> {
    let Some(rec) = find(daemon, &req.pod_sandbox_id)? else {
        return Ok(StopPodSandboxResponse {});
    };
    stop(daemon, &rec.id).await?;
    Ok(StopPodSandboxResponse {})
}

/// Stops sandbox `id` under its lock. Shared with RemovePodSandbox.
pub(crate) async fn stop(daemon: &Arc<Daemon>, id: &str) -> Result<(), Status> {
    let lock = daemon.sandboxes.lock_for(id);
    let _guard = lock.lock().await;
    let Some(rec) = daemon.store.get_sandbox(id).map_err(store_err)? else {
        return Ok(());
    };
    // Containers that already ended keep their real exit codes; the rest
    // end with the VM.
    if let Err(e) = crate::container::refresh(daemon, id).await {
        tracing::warn!(sandbox = id, error = %e.message(), "container refresh before stop");
    }
    if rec.state == SandboxState::Ready {
        crate::container::kill_all(daemon, &rec).await;
    }
    daemon.sandboxes.stop_monitor(id);
    let errors = sandbox::stop_vm(&rec).await;
    crate::container::sandbox_stopped(daemon, id, "the pod sandbox was stopped");
    for e in &errors {
        tracing::warn!(sandbox = id, error = %e, "stop cleanup");
    }
    // The VM is gone either way; a DEL that fails is retried by Remove and
    // at daemon start rather than failing a stop kubelet would repeat.
    if let Err(e) = sandbox::release_network(daemon, &rec).await {
        tracing::warn!(sandbox = id, error = %e, "CNI DEL failed; retried on remove");
    }
    daemon
        .store
        .update_sandbox(id, |r| {
            let changed = r.state != SandboxState::NotReady;
            r.state = SandboxState::NotReady;
            if r.reason.is_empty() {
                r.reason = "stopped".into();
            }
            changed
        })
        .map_err(store_err)?;
    tracing::info!(sandbox = id, "sandbox stopped");
    Ok(())
}
