//! Pod sandbox CRI calls, one file each (the metrics calls, which report
//! per pod, with them).

pub mod list;
pub mod metrics;
pub mod port_forward;
pub mod remove;
pub mod run;
pub mod stats;
pub mod status;
pub mod stop;

use tonic::Status;

use crate::cri::lookup::find_by_id_or_prefix;
use crate::daemon::Daemon;
use crate::state::SandboxRecord;

/// Finds a sandbox by id or unique id prefix, as crictl users type them.
pub(crate) fn find(daemon: &Daemon, id: &str) -> Result<Option<SandboxRecord>, Status> {
    find_by_id_or_prefix(
        "pod_sandbox_id",
        id,
        |id| daemon.store.get_sandbox(id),
        || daemon.store.list_sandboxes(),
        |r| &r.id,
    )
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
