//! Watches a ready pod's shim and turns the sandbox NOTREADY (and its
//! live containers exited) when its VM stops or fails, or the shim itself
//! goes away; meanwhile it follows the pod's container events. The shim pushes state
//! changes over a stream, so this costs no polling and reacts in
//! milliseconds.

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use vmpod_shim_api::v1::{Phase, WatchRequest};

use super::{mark_not_ready, shim};
use crate::daemon::Daemon;
use crate::state::SandboxRecord;

pub fn start(daemon: &Arc<Daemon>, rec: &SandboxRecord) {
    let id = rec.id.clone();
    let pod_dir = rec.pod_dir.clone();
    let d = daemon.clone();
    let task = tokio::spawn(async move {
        // The container records follow the pod's events for as long as
        // the VM runs; its end drops the follower.
        let follower = crate::container::follow::follow(d.clone(), id.clone(), &pod_dir);
        let reason = tokio::select! {
            reason = watch(&pod_dir) => reason,
            () = follower => watch(&pod_dir).await,
        };
        mark_not_ready(&d.store, &id, &reason);
        crate::container::vm_gone(&d, &id);
    });
    daemon.sandboxes.set_monitor(&rec.id, task.abort_handle());
}

/// Returns why the VM is no longer running.
async fn watch(pod_dir: &std::path::Path) -> String {
    let mut client = match shim::connect(pod_dir, Duration::from_secs(2)).await {
        Ok(c) => c,
        Err(e) => return format!("shim unreachable: {e}"),
    };
    let mut stream = match client.watch(WatchRequest {}).await {
        Ok(s) => s.into_inner(),
        Err(e) => return format!("shim Watch failed: {}", e.message()),
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(state) => match state.phase() {
                Phase::Failed => return format!("VM failed: {}", state.error),
                Phase::Stopped => return "VM stopped".into(),
                Phase::Ready | Phase::Booting | Phase::Unspecified => {}
            },
            Err(e) => return format!("shim connection lost: {}", e.message()),
        }
    }
    "shim exited".into()
}
