//! `UpdateContainerResources`: new cgroup limits, applied live in the guest.

use std::sync::Arc;

use tonic::Status;
use vmpod_agent_proto::v1 as agent;
use vmpod_cri_api::v1 as cri;

use super::agent_spec;
use super::{get_fresh, lock_for, sandbox_of};
use crate::container;
use crate::cri::container::create::resources_json;
use crate::daemon::Daemon;
use crate::error::{shim_err, store_err};
use crate::state::ContainerState;

pub async fn update_container_resources(
    daemon: &Arc<Daemon>,
    req: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse, Status> {
    let Some(linux) = req.linux else {
        // Only Windows resources (or none): nothing applies to a Linux VM.
        return Ok(cri::UpdateContainerResourcesResponse {});
    };
    let resources = agent_spec::resources(&linux)?;
    let rec = super::get(daemon, &req.container_id)?;
    let lock = lock_for(daemon, &rec.id);
    let _guard = lock.lock().await;
    let rec = get_fresh(daemon, &rec.id).await?;
    if !matches!(rec.state, ContainerState::Created | ContainerState::Running) {
        return Err(Status::failed_precondition(format!(
            "container {} is not running",
            rec.id
        )));
    }
    let sandbox = sandbox_of(daemon, &rec)?;
    let mut client = container::shim_client(&sandbox).await?;
    client
        .update_container(agent::UpdateContainerRequest {
            id: rec.id.clone(),
            resources: Some(resources),
        })
        .await
        .map_err(|e| shim_err("updating the container's resources", e))?;
    let json = resources_json(&linux);
    container::record(daemon, &rec.id, |r| {
        r.resources = Some(json);
        true
    })
    .map_err(store_err)?;
    tracing::info!(container = %rec.id, "container resources updated");
    Ok(cri::UpdateContainerResourcesResponse {})
}
