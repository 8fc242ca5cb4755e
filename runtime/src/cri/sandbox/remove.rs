//! `RemovePodSandbox`: stop if needed, then delete every trace of the pod.
//! A CNI DEL that still fails does not block it: the attachment moves to
//! the pending table, retried at daemon start.

use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1::{RemovePodSandboxRequest, RemovePodSandboxResponse};

use super::{find, stop::stop};
use crate::daemon::Daemon;
use crate::error::store_err;
use crate::sandbox;

pub async fn remove_pod_sandbox(
    daemon: &Arc<Daemon>,
    req: RemovePodSandboxRequest,
) -> Result<RemovePodSandboxResponse, Status> {
    let Some(rec) = find(daemon, &req.pod_sandbox_id)? else {
        return Ok(RemovePodSandboxResponse {});
    };
    stop(daemon, &rec.id).await?;
    let lock = daemon.sandboxes.lock_for(&rec.id);
    let _guard = lock.lock().await;
    let Some(rec) = daemon.store.get_sandbox(&rec.id).map_err(store_err)? else {
        return Ok(RemovePodSandboxResponse {});
    };
    sandbox::remove_pod_dir(daemon.config.state_dir.as_path(), &rec).map_err(Status::internal)?;
    crate::container::remove_all_of(daemon, &rec.id).map_err(store_err)?;
    // Stop's DEL failed if the record still holds the attachment: one more
    // try, then the DEL is owed by the pending table, never by this call.
    let pending = match sandbox::release_network(daemon, &rec).await {
        Ok(()) => None,
        Err(e) => {
            tracing::warn!(sandbox = %rec.id, error = %e, "CNI DEL failed again; retried at daemon start");
            rec.network.as_ref()
        }
    };
    daemon
        .store
        .delete_sandbox(&rec.id, pending)
        .map_err(store_err)?;
    daemon.sandboxes.forget(&rec.id);
    tracing::info!(sandbox = %rec.id, "sandbox removed");
    Ok(RemovePodSandboxResponse {})
}
