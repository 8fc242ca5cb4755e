//! `PortForward`: a URL on the streaming server through which the client
//! opens TCP connections to ports of the pod (`kubectl port-forward`). The
//! connections are made inside the pod's VM, to its localhost, so the pod
//! needs no IP and a host-network pod works the same.

use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1 as cri;

use super::find;
use crate::daemon::Daemon;
use crate::state::SandboxState;
use crate::stream::{Request, portforward};

pub async fn port_forward(
    daemon: &Arc<Daemon>,
    req: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, Status> {
    if req.pod_sandbox_id.is_empty() {
        return Err(Status::invalid_argument("pod_sandbox_id: is required"));
    }
    // The ports a client forwards are named per connection; the ones given
    // here (kubelet sends them) must still be real ports.
    if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
        return Err(Status::invalid_argument(format!(
            "port: {p} is not a port number (1-65535)"
        )));
    }
    let rec = find(daemon, &req.pod_sandbox_id)?.ok_or_else(|| {
        Status::not_found(format!("pod sandbox {:?} not found", req.pod_sandbox_id))
    })?;
    if rec.state != SandboxState::Ready {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {} is not ready",
            rec.id
        )));
    }
    let url = daemon
        .streaming
        .url_for(Request::PortForward(portforward::Target {
            pod_dir: rec.pod_dir,
            sandbox_id: rec.id,
        }))?;
    Ok(cri::PortForwardResponse { url })
}
