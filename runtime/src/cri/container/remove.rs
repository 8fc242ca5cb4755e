//! `RemoveContainer`: the container in the guest, its root and volume
//! binds on the host, and its record. A running container is killed first
//! (CRI: "the container must be forcibly removed"). Unknown ids are not
//! errors.

use std::sync::Arc;

use tonic::Status;
use vmpod_agent_proto::v1::ContainerRef;
use vmpod_cri_api::v1::{RemoveContainerRequest, RemoveContainerResponse};

use super::{find, get_fresh, lock_for};
use crate::container;
use crate::daemon::Daemon;
use crate::error::{shim_err, store_err};
use crate::state::{ContainerState, SandboxState};

pub async fn remove_container(
    daemon: &Arc<Daemon>,
    req: RemoveContainerRequest,
) -> Result<RemoveContainerResponse, Status> {
    let Some(rec) = find(daemon, &req.container_id)? else {
        return Ok(RemoveContainerResponse {});
    };
    let lock = lock_for(daemon, &rec.id);
    let _guard = lock.lock().await;
    let rec = get_fresh(daemon, &rec.id).await?;
    let sandbox = daemon
        .store
        .get_sandbox(&rec.sandbox_id)
        .map_err(store_err)?;
    if let Some(sandbox) = sandbox.filter(|s| s.state == SandboxState::Ready) {
        let mut client = container::shim_client(&sandbox).await?;
        if rec.state == ContainerState::Running {
            tracing::info!(container = %rec.id, "removing a running container: killing it first");
            container::kill(&mut client, &rec.id)
                .await
                .map_err(|e| shim_err("killing the container before removal", e))?;
        }
        match client
            .remove_container(ContainerRef { id: rec.id.clone() })
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(shim_err("removing the container", e)),
        }
    }
    // A VM that is gone took the container with it, and its shim released
    // the host mounts on the way out.
    container::delete(daemon, &rec).map_err(store_err)?;
    tracing::info!(container = %rec.id, "container removed");
    Ok(RemoveContainerResponse {})
}
