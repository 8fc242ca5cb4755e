//! `ReopenContainerLog`: kubelet renamed the log file away (rotation); the
//! shim opens the path anew and writes there from now on.

use std::sync::Arc;

use tonic::Status;
use vmpod_agent_proto::v1::ContainerRef;
use vmpod_cri_api::v1 as cri;

use super::{get_fresh, sandbox_of};
use crate::container;
use crate::daemon::Daemon;
use crate::error::shim_err;
use crate::state::ContainerState;

pub async fn reopen_container_log(
    daemon: &Arc<Daemon>,
    req: cri::ReopenContainerLogRequest,
) -> Result<cri::ReopenContainerLogResponse, Status> {
    let rec = get_fresh(daemon, &req.container_id).await?;
    if rec.state != ContainerState::Running {
        return Err(Status::failed_precondition(format!(
            "container {} is not running",
            rec.id
        )));
    }
    if rec.log_path.is_empty() {
        return Err(Status::failed_precondition(format!(
            "container {} has no log_path",
            rec.id
        )));
    }
    let sandbox = sandbox_of(daemon, &rec)?;
    let mut client = container::shim_client(&sandbox).await?;
    client
        .reopen_container_log(ContainerRef { id: rec.id.clone() })
        .await
        .map_err(|e| shim_err("reopening the container log", e))?;
    Ok(cri::ReopenContainerLogResponse {})
}
