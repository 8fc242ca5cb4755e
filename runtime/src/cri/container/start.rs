//! `StartContainer`: let the prepared process exec its command.

use std::sync::Arc;

use tonic::Status;
use vmpod_agent_proto::v1::ContainerRef;
use vmpod_cri_api::v1::{StartContainerRequest, StartContainerResponse};

use super::{get_fresh, lock_for, sandbox_of};
use crate::container;
use crate::daemon::Daemon;
use crate::error::{shim_err, store_err};
use crate::state::ContainerState;

pub async fn start_container(
    daemon: &Arc<Daemon>,
    req: StartContainerRequest,
) -> Result<StartContainerResponse, Status> {
    let rec = super::get(daemon, &req.container_id)?;
    let lock = lock_for(daemon, &rec.id);
    let _guard = lock.lock().await;
    let rec = get_fresh(daemon, &rec.id).await?;
    match rec.state {
        ContainerState::Created => {}
        ContainerState::Creating => {
            return Err(Status::failed_precondition(format!(
                "container {} is still being created",
                rec.id
            )));
        }
        ContainerState::Running => {
            return Err(Status::failed_precondition(format!(
                "container {} is already running",
                rec.id
            )));
        }
        ContainerState::Exited => {
            return Err(Status::failed_precondition(format!(
                "container {} has already run and exited (code {}); create a new one",
                rec.id, rec.exit_code
            )));
        }
    }
    let sandbox = sandbox_of(daemon, &rec)?;
    let mut client = container::shim_client(&sandbox).await?;
    let result = client
        .start_container(ContainerRef { id: rec.id.clone() })
        .await;
    match result {
        Ok(resp) => {
            let status = resp.into_inner();
            container::record(daemon, &rec.id, |r| container::apply_status(r, &status))
                .map_err(store_err)?;
            tracing::info!(container = %rec.id, pid = status.pid, "container started");
            Ok(StartContainerResponse {})
        }
        Err(e) => {
            // A failed exec leaves the container exited with the reason;
            // record that before answering.
            if let Err(r) = container::refresh(daemon, &rec.sandbox_id).await {
                tracing::warn!(container = %rec.id, error = %r.message(), "refresh after failed start");
            }
            Err(shim_err("starting the container", e))
        }
    }
}
