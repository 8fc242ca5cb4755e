//! `ExecSync`: a command in a running container, its output and exit code.
//!
//! Probes run through here, so a command that outlives its timeout is
//! killed in the guest and the call answers DEADLINE_EXCEEDED, which
//! kubelet counts as a probe timeout.

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use vmpod_agent_proto::v1 as agent;
use vmpod_cri_api::v1 as cri;

use super::{get_fresh, sandbox_of};
use crate::container;
use crate::daemon::Daemon;
use crate::error::shim_err;
use crate::state::ContainerState;

/// kubelet reads at most this much of each stream (like containerd).
pub const OUTPUT_LIMIT: u64 = 16 << 20;
/// Time past the command's own timeout for the guest to kill and report.
const MARGIN: Duration = Duration::from_secs(10);
const MAX_ARGS: usize = 4096;
const MAX_ARGS_BYTES: usize = 1 << 20;

/// A command for ExecSync or Exec: present, bounded, no NUL bytes.
pub(super) fn check_command(cmd: &[String]) -> Result<(), Status> {
    if cmd.first().is_none_or(String::is_empty) {
        return Err(Status::invalid_argument("cmd: is required"));
    }
    let bytes: usize = cmd.iter().map(String::len).sum();
    if cmd.len() > MAX_ARGS || bytes > MAX_ARGS_BYTES || cmd.iter().any(|a| a.contains('\0')) {
        return Err(Status::invalid_argument(format!(
            "cmd: at most {MAX_ARGS} arguments of {MAX_ARGS_BYTES} bytes in all, without NUL"
        )));
    }
    Ok(())
}

pub async fn exec_sync(
    daemon: &Arc<Daemon>,
    req: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse, Status> {
    check_command(&req.cmd)?;
    if req.timeout < 0 {
        return Err(Status::invalid_argument(format!(
            "timeout: {} is negative",
            req.timeout
        )));
    }
    let rec = get_fresh(daemon, &req.container_id).await?;
    if rec.state != ContainerState::Running {
        return Err(Status::failed_precondition(format!(
            "container {} is not running",
            rec.id
        )));
    }
    let sandbox = sandbox_of(daemon, &rec)?;
    let mut client = container::shim_client(&sandbox).await?;
    let timeout = Duration::from_secs(req.timeout.unsigned_abs());
    let call = client.exec_sync(agent::ExecSyncRequest {
        id: rec.id.clone(),
        args: req.cmd.clone(),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        output_limit: OUTPUT_LIMIT,
    });
    let resp = if timeout.is_zero() {
        call.await
    } else {
        tokio::time::timeout(timeout + MARGIN, call)
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "command {:?} did not finish within {timeout:?}, and the guest did not report",
                    req.cmd[0]
                ))
            })?
    }
    .map_err(|e| shim_err("exec in the container", e))?
    .into_inner();
    if resp.timed_out {
        return Err(Status::deadline_exceeded(format!(
            "command {:?} timed out after {timeout:?} and was killed",
            req.cmd[0]
        )));
    }
    Ok(cri::ExecSyncResponse {
        stdout: resp.stdout,
        stderr: resp.stderr,
        exit_code: resp.exit_code,
    })
}
