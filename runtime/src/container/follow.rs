//! Follows one pod's container events from its shim and applies them to
//! the container records, so reads never wait on the VM.
//!
//! The stream resumes after the sequence number stored in the sandbox
//! record, which is saved after each event is applied: a daemon killed at
//! any point replays at most the event it was applying, and applying it
//! again changes nothing, so nothing is lost and nothing is published
//! twice. When the shim says events were dropped (`resync`), the pod is
//! re-listed once.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use vmpod_agent_proto::v1::{ContainerEventType, EventsRequest};

use super::{apply_status, record};
use crate::daemon::Daemon;
use crate::sandbox::shim;

/// Between attempts to reopen a broken stream; the sandbox monitor ends
/// the follower when the VM or the shim is gone for good.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Marks the pod followed while the stream is open, and unmarks it however
/// the follower ends (error, or the monitor dropping it).
struct Followed<'a> {
    daemon: &'a Daemon,
    sandbox_id: &'a str,
}

impl<'a> Followed<'a> {
    fn new(daemon: &'a Daemon, sandbox_id: &'a str) -> Self {
        daemon.containers.set_followed(sandbox_id, true);
        Followed { daemon, sandbox_id }
    }
}

impl Drop for Followed<'_> {
    fn drop(&mut self) {
        self.daemon.containers.set_followed(self.sandbox_id, false);
    }
}

/// Runs for as long as the caller keeps it (the sandbox monitor drops it
/// when the VM stops); returns only for a shim without an event stream.
pub async fn follow(daemon: Arc<Daemon>, sandbox_id: String, pod_dir: &Path) {
    loop {
        match follow_once(&daemon, &sandbox_id, pod_dir).await {
            Ok(()) => tracing::debug!(sandbox = %sandbox_id, "shim event stream ended"),
            Err(e) if e.code() == Code::Unimplemented => {
                tracing::warn!(sandbox = %sandbox_id, "the shim has no event stream; reads will ask it");
                return;
            }
            Err(e) => {
                tracing::debug!(sandbox = %sandbox_id, error = %e.message(), "shim event stream broke")
            }
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

async fn follow_once(
    daemon: &Daemon,
    sandbox_id: &str,
    pod_dir: &Path,
) -> Result<(), tonic::Status> {
    let after_seq = match daemon.store.get_sandbox(sandbox_id) {
        Ok(Some(rec)) => rec.event_seq,
        Ok(None) => return Ok(()),
        Err(e) => return Err(tonic::Status::internal(e.to_string())),
    };
    let mut client = shim::connect(pod_dir, CONNECT_TIMEOUT)
        .await
        .map_err(tonic::Status::unavailable)?;
    let mut stream = client
        .events(EventsRequest { after_seq })
        .await?
        .into_inner();
    let _followed = Followed::new(daemon, sandbox_id);
    // What happened between the last event applied and now may be gone
    // from the shim's log only if `resync` says so; otherwise the replay
    // brings the records up to date.
    while let Some(event) = stream.message().await? {
        if event.resync {
            daemon.containers.set_followed(sandbox_id, false);
            if let Err(e) = super::refresh(daemon, sandbox_id).await {
                tracing::warn!(sandbox = sandbox_id, error = %e.message(), "re-listing after dropped events");
            }
            daemon.containers.set_followed(sandbox_id, true);
        }
        let kind = event.r#type();
        tracing::debug!(
            sandbox = sandbox_id,
            seq = event.seq,
            kind = kind.as_str_name(),
            "shim event"
        );
        if let Some(status) = &event.status
            && kind != ContainerEventType::ContainerEventDeleted
        {
            // An id without a record is a container whose CreateContainer
            // failed or that was removed since: nothing to update.
            if let Err(e) = record(daemon, &status.id, |r| {
                r.sandbox_id == sandbox_id && apply_status(r, status)
            }) {
                tracing::error!(container = %status.id, error = %e, "cannot record container state");
                return Err(tonic::Status::internal(e.to_string()));
            }
        }
        let seq = event.seq;
        if let Err(e) = daemon.store.update_sandbox(sandbox_id, |r| {
            let moved = r.event_seq != seq;
            r.event_seq = seq;
            moved
        }) {
            tracing::error!(sandbox = sandbox_id, error = %e, "cannot record the event position");
        }
    }
    Ok(())
}
