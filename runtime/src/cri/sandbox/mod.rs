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
    if id.is_empty() {
        return Err(Status::invalid_argument("pod_sandbox_id is required"));
    }
    if let Some(rec) = daemon.store.get_sandbox(id).map_err(store_err)? {
        return Ok(Some(rec));
    }
    let mut matches: Vec<SandboxRecord> = daemon
        .store
        .list_sandboxes()
        .map_err(store_err)?
        .into_iter()
        .filter(|r| r.id.starts_with(id))
        .collect();
    match matches.len() {
        0 => Ok(None),
        1 => Ok(matches.pop()),
        n => Err(Status::invalid_argument(format!(
            "pod_sandbox_id prefix {id:?} matches {n} sandboxes"
        ))),
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
