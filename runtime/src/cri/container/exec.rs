//! `Exec`: a URL on the streaming server where the client runs a command
//! in a running container with its stdio streamed (`kubectl exec`).
//!
//! Everything that can be checked before the client connects is checked
//! here, with kubelet's own rules, so a bad request fails in the CRI call
//! with a clear status rather than as a broken stream later.

use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1 as cri;

use super::exec_sync::check_command;
use super::{get_fresh, sandbox_of};
use crate::daemon::Daemon;
use crate::state::ContainerState;
use crate::stream::{Request, remotecommand};

pub async fn exec(
    daemon: &Arc<Daemon>,
    req: cri::ExecRequest,
) -> Result<cri::ExecResponse, Status> {
    check_command(&req.cmd)?;
    let target = stdio_target(
        daemon,
        &req.container_id,
        Some(req.cmd),
        Streams {
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        },
    )
    .await?;
    let url = daemon.streaming.url_for(Request::Exec(target))?;
    Ok(cri::ExecResponse { url })
}

/// The streams a client asked for.
pub(super) struct Streams {
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// Checks the streams and that the container runs, and names what the
/// session will reach.
pub(super) async fn stdio_target(
    daemon: &Arc<Daemon>,
    container_id: &str,
    command: Option<Vec<String>>,
    s: Streams,
) -> Result<remotecommand::Target, Status> {
    if !(s.stdin || s.stdout || s.stderr) {
        return Err(Status::invalid_argument(
            "one of stdin, stdout and stderr must be set",
        ));
    }
    if s.tty && s.stderr {
        return Err(Status::invalid_argument(
            "tty and stderr cannot both be set: a terminal has one output stream",
        ));
    }
    if container_id.is_empty() {
        return Err(Status::invalid_argument("container_id: is required"));
    }
    let rec = get_fresh(daemon, container_id).await?;
    if rec.state != ContainerState::Running {
        return Err(Status::failed_precondition(format!(
            "container {} is not running",
            rec.id
        )));
    }
    let sandbox = sandbox_of(daemon, &rec)?;
    Ok(remotecommand::Target {
        pod_dir: sandbox.pod_dir,
        container_id: rec.id,
        command,
        tty: s.tty,
        stdin: s.stdin,
        stdout: s.stdout,
        stderr: s.stderr,
    })
}
