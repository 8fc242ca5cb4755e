//! Container CRI calls, one file each.

pub mod agent_spec;
pub mod attach;
pub mod create;
pub mod events;
pub mod exec;
pub mod exec_sync;
pub mod list;
pub mod remove;
pub mod reopen_log;
pub mod start;
pub mod stats;
pub mod status;
pub mod stop;
pub mod update;

use tonic::Status;
use vmpod_cri_api::v1 as cri;

use crate::cri::lookup::find_by_id_or_prefix;
use crate::daemon::Daemon;
use crate::error::store_err;
use crate::state::{ContainerRecord, ContainerState, SandboxRecord};

/// Finds a container by id or unique id prefix, as crictl users type them.
pub(crate) fn find(daemon: &Daemon, id: &str) -> Result<Option<ContainerRecord>, Status> {
    find_by_id_or_prefix(
        "container_id",
        id,
        |id| daemon.store.get_container(id),
        || daemon.store.list_containers(),
        |r| &r.id,
    )
}

/// Like [`find`], but an unknown container is NOT_FOUND.
pub(crate) fn get(daemon: &Daemon, id: &str) -> Result<ContainerRecord, Status> {
    find(daemon, id)?.ok_or_else(|| Status::not_found(format!("container {id:?} not found")))
}

/// The container's record after bringing it up to date with its VM.
pub(crate) async fn get_fresh(daemon: &Daemon, id: &str) -> Result<ContainerRecord, Status> {
    let rec = get(daemon, id)?;
    crate::container::refresh(daemon, &rec.sandbox_id).await?;
    get(daemon, &rec.id)
}

/// The sandbox a container belongs to; it always exists while the
/// container does, since RemovePodSandbox removes its containers first.
pub(crate) fn sandbox_of(daemon: &Daemon, rec: &ContainerRecord) -> Result<SandboxRecord, Status> {
    daemon
        .store
        .get_sandbox(&rec.sandbox_id)
        .map_err(store_err)?
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "the sandbox {} of container {} is gone",
                rec.sandbox_id, rec.id
            ))
        })
}

pub(crate) fn cri_state(rec: &ContainerRecord) -> cri::ContainerState {
    match rec.state {
        ContainerState::Creating | ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
    }
}

pub(crate) fn cri_metadata(rec: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: rec.metadata.name.clone(),
        attempt: rec.metadata.attempt,
    }
}

pub(crate) fn cri_image(rec: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: rec.image.clone(),
        user_specified_image: rec.image.clone(),
        ..Default::default()
    }
}

pub(crate) fn attributes(rec: &ContainerRecord) -> cri::ContainerAttributes {
    cri::ContainerAttributes {
        id: rec.id.clone(),
        metadata: Some(cri_metadata(rec)),
        labels: rec.labels.clone().into_iter().collect(),
        annotations: rec.annotations.clone().into_iter().collect(),
    }
}

/// The per-container lock.
pub(crate) fn lock_for(daemon: &Daemon, id: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    daemon.containers.lock_for(id)
}
