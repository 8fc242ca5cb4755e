//! Pod sandbox CRI calls, one file each.

pub mod list;
pub mod remove;
pub mod run;
pub mod status;
pub mod stop;

use tonic::Status;

use crate::daemon::Daemon;
use crate::state::SandboxRecord;

/// Finds a sandbox by id or unique id prefix, as crictl users type them.
pub(crate) fn find(daemon: &Daemon, id: &str) -> Result<Option<SandboxRecord>, Status> {
    super::find_by_id_or_prefix(
        "pod_sandbox_id",
        id,
        |id| daemon.store.get_sandbox(id),
        || daemon.store.list_sandboxes(),
        |r| &r.id,
    )
}

/// Why a sandbox is not ready, for error messages.
pub(crate) fn not_ready(rec: &SandboxRecord) -> String {
    if rec.reason.is_empty() {
        format!("sandbox {} is not ready", rec.id)
    } else {
        format!("sandbox {} is not ready ({})", rec.id, rec.reason)
    }
}

pub(crate) fn store_err(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("state store: {e}"))
}

/// The CRI state of a record: a sandbox still being created is not ready.
pub(crate) fn cri_state(rec: &SandboxRecord) -> vmpod_cri_api::v1::PodSandboxState {
    use vmpod_cri_api::v1::PodSandboxState;
    match rec.state {
        crate::state::SandboxState::Ready => PodSandboxState::SandboxReady,
        _ => PodSandboxState::SandboxNotready,
    }
}

pub(crate) fn cri_metadata(rec: &SandboxRecord) -> vmpod_cri_api::v1::PodSandboxMetadata {
    vmpod_cri_api::v1::PodSandboxMetadata {
        name: rec.metadata.name.clone(),
        uid: rec.metadata.uid.clone(),
        namespace: rec.metadata.namespace.clone(),
        attempt: rec.metadata.attempt,
    }
}
