//! `RemovePodSandbox`: stop if needed, then delete every trace of the pod.

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
    daemon.store.delete_sandbox(&rec.id).map_err(store_err)?;
    daemon.sandboxes.forget(&rec.id);
    tracing::info!(sandbox = %rec.id, "sandbox removed");
    Ok(RemovePodSandboxResponse {})
}
