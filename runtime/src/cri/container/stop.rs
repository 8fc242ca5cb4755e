//! `StopContainer`: the stop signal, then SIGKILL once `timeout` runs out.
//! Idempotent: an exited container is already stopped.

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use vmpod_cri_api::v1::{StopContainerRequest, StopContainerResponse};
use vmpod_shim_api::v1 as shim;

use super::{find, get_fresh, lock_for, sandbox_of};
use crate::container;
use crate::daemon::Daemon;
use crate::error::{shim_err, store_err};
use crate::state::{ContainerState, SandboxState};

/// Time for the shim to kill and reap once the grace is over.
const KILL_MARGIN: Duration = Duration::from_secs(15);
/// kubelet sends grace periods in seconds; more than a day is a typo.
const MAX_TIMEOUT_S: i64 = 86_400;

pub async fn stop_container(
    daemon: &Arc<Daemon>,
    req: StopContainerRequest,
) -> Result<StopContainerResponse, Status> {
    let Some(rec) = find(daemon, &req.container_id)? else {
        return Err(Status::not_found(format!(
            "container {:?} not found",
            req.container_id
        )));
    };
    if !(0..=MAX_TIMEOUT_S).contains(&req.timeout) {
        return Err(Status::invalid_argument(format!(
            "timeout: {} is outside 0..{MAX_TIMEOUT_S} seconds",
            req.timeout
        )));
    }
    let lock = lock_for(daemon, &rec.id);
    let _guard = lock.lock().await;
    let rec = get_fresh(daemon, &rec.id).await?;
    if matches!(rec.state, ContainerState::Exited) {
        return Ok(StopContainerResponse {});
    }
    let sandbox = sandbox_of(daemon, &rec)?;
    if sandbox.state != SandboxState::Ready {
        // Its VM is gone, and so is the process.
        container::record(daemon, &rec.id, |r| {
            container::mark_lost(r, "the pod sandbox was stopped")
        })
        .map_err(store_err)?;
        return Ok(StopContainerResponse {});
    }
    let timeout = Duration::from_secs(req.timeout.unsigned_abs());
    let mut client = container::shim_client(&sandbox).await?;
    let call = client.stop_container(shim::StopContainerRequest {
        id: rec.id.clone(),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        signal: rec.stop_signal,
    });
    let status = match tokio::time::timeout(timeout + KILL_MARGIN, call).await {
        Ok(Ok(resp)) => resp.into_inner(),
        Ok(Err(e)) => return Err(shim_err("stopping the container", e)),
        Err(_) => {
            return Err(Status::deadline_exceeded(format!(
                "container {} did not stop within {:?} of SIGKILL",
                rec.id, KILL_MARGIN
            )));
        }
    };
    container::record(daemon, &rec.id, |r| container::apply_status(r, &status))
        .map_err(store_err)?;
    tracing::info!(container = %rec.id, exit_code = status.exit_code, "container stopped");
    Ok(StopContainerResponse {})
}
