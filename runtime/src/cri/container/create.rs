//! `CreateContainer`: the container's root, volumes and process are
//! prepared in the pod's VM; nothing runs until StartContainer.
//!
//! The record is reserved (state `Creating`) before the shim acts, so a
//! daemon that dies half-way finds it on restart and removes what the shim
//! made. A failure while the daemon lives removes it here.

use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1::{CreateContainerRequest, CreateContainerResponse};
use vmpod_shim_api::v1 as shim;

use super::agent_spec;
use crate::container;
use crate::cri::labels::check_labels;
use crate::cri::sandbox as cri_sandbox;
use crate::daemon::Daemon;
use crate::error::{invalid, not_ready, shim_err, store_err};
use crate::image::config::ImageConfig;
use crate::state::{
    ContainerMetadata, ContainerRecord, ContainerState, MountRecord, ReserveContainerError,
    SandboxState,
};

/// Longest container name: a DNS label is shorter, this leaves room.
const MAX_NAME: usize = 253;

pub async fn create_container(
    daemon: &Arc<Daemon>,
    req: CreateContainerRequest,
) -> Result<CreateContainerResponse, Status> {
    let config = req.config.ok_or_else(|| invalid("config", "is required"))?;
    let md = config
        .metadata
        .clone()
        .ok_or_else(|| invalid("config.metadata", "is required"))?;
    if md.name.is_empty() || md.name.len() > MAX_NAME || md.name.contains(['\0', '/']) {
        return Err(invalid(
            "config.metadata.name",
            format!(
                "{:?} must be 1-{MAX_NAME} bytes without '/' or NUL",
                md.name
            ),
        ));
    }
    check_labels(&config.labels, &config.annotations)?;
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    if image_name.is_empty() {
        return Err(invalid("config.image.image", "is required"));
    }

    let Some(sandbox) = cri_sandbox::find(daemon, &req.pod_sandbox_id)? else {
        return Err(Status::failed_precondition(format!(
            "sandbox {:?} not found",
            req.pod_sandbox_id
        )));
    };
    // Held for the whole create: StopPodSandbox must not pull the VM away
    // while a container is being made in it.
    let lock = daemon.sandboxes.lock_for(&sandbox.id);
    let _guard = lock.lock().await;
    let sandbox = daemon
        .store
        .get_sandbox(&sandbox.id)
        .map_err(store_err)?
        .ok_or_else(|| Status::failed_precondition("the sandbox was removed"))?;
    if sandbox.state != SandboxState::Ready {
        return Err(Status::failed_precondition(not_ready(&sandbox)));
    }

    let (image, matched_name) = crate::image::resolve(&daemon.store, &image_name)
        .map_err(store_err)?
        .ok_or_else(|| {
            Status::not_found(format!("image {image_name:?} not found; pull it first"))
        })?;
    let image_config = read_image_config(daemon, &image.id)?;
    let id = crate::state::new_id()
        .map_err(|e| Status::internal(format!("cannot read /dev/urandom: {e}")))?;
    let built = agent_spec::build(
        &id,
        &config,
        &image_config,
        &agent_spec::SandboxContext {
            log_directory: &sandbox.log_directory,
            sysctls: &sandbox.sysctls,
        },
    )?;
    // Top layer first, as overlayfs wants its lowerdirs.
    let layers = image
        .layers
        .iter()
        .rev()
        .map(|l| {
            daemon
                .content
                .snapshot_path(&l.chain_id)
                .map(|p| p.to_string_lossy().into_owned())
                .map_err(Status::internal)
        })
        .collect::<Result<Vec<_>, _>>()?;

    let image_ref = image
        .repo_digests
        .first()
        .cloned()
        .or(matched_name)
        .unwrap_or_else(|| image.id.clone());
    let rec = ContainerRecord {
        id: id.clone(),
        sandbox_id: sandbox.id.clone(),
        metadata: ContainerMetadata {
            name: md.name.clone(),
            attempt: md.attempt,
        },
        image: image_name.clone(),
        image_id: image.id.clone(),
        image_ref,
        labels: config.labels.clone().into_iter().collect(),
        annotations: config.annotations.clone().into_iter().collect(),
        log_path: built.log_path.clone(),
        mounts: config
            .mounts
            .iter()
            .map(|m| MountRecord {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                propagation: m.propagation,
            })
            .collect(),
        stop_signal: built.stop_signal,
        resources: config
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
            .map(resources_json),
        state: ContainerState::Creating,
        created_at: crate::clock::unix_nanos(),
        started_at: 0,
        finished_at: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
    };
    daemon.store.reserve_container(&rec).map_err(|e| match e {
        ReserveContainerError::Exists(existing) => Status::already_exists(format!(
            "container name {:?} (attempt {}) is already used by container {existing} in sandbox {}",
            md.name, md.attempt, sandbox.id
        )),
        ReserveContainerError::Store(e) => store_err(e),
    })?;

    // kubelet makes `<pod log dir>/<container>/` itself; crictl users
    // should not have to. Only dirs below the sandbox's log dir are made.
    if let Some(parent) = std::path::Path::new(&built.log_path).parent()
        && !built.log_path.is_empty()
        && let Err(e) = std::fs::create_dir_all(parent)
    {
        let _ = daemon.store.delete_container(&id);
        return Err(Status::failed_precondition(format!(
            "log_path: cannot create {}: {e}",
            parent.display()
        )));
    }
    let request = shim::CreateContainerRequest {
        layers,
        mounts: built.mounts,
        log_path: built.log_path,
        spec: Some(built.spec),
        writable_layer_bytes: daemon.config.vm.writable_layer_bytes,
    };
    let created = async {
        let mut client = container::shim_client(&sandbox).await?;
        client
            .create_container(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| shim_err("creating the container in the pod VM", e))
    }
    .await;
    match created {
        Ok(status) => {
            container::record(daemon, &id, |r| {
                container::apply_status(r, &status);
                r.state = ContainerState::Created;
                true
            })
            .map_err(store_err)?;
            tracing::info!(container = %id, sandbox = %sandbox.id, name = %md.name, image = %image_name, "container created");
            Ok(CreateContainerResponse { container_id: id })
        }
        Err(status) => {
            tracing::warn!(container = %id, error = %status.message(), "container create failed");
            if let Err(e) = daemon.store.delete_container(&id) {
                tracing::error!(container = %id, error = %e, "cannot delete the record of a failed create");
            }
            Err(status)
        }
    }
}

fn read_image_config(daemon: &Daemon, image_id: &str) -> Result<ImageConfig, Status> {
    let path = daemon
        .content
        .blob_path(image_id)
        .map_err(Status::internal)?;
    let blob = std::fs::read(&path).map_err(|e| {
        Status::internal(format!(
            "image {image_id}: cannot read its config {}: {e}",
            path.display()
        ))
    })?;
    ImageConfig::from_blob(&blob).map_err(|e| Status::internal(format!("image {image_id}: {e}")))
}

/// The resources as ContainerStatus reports them back (kept as JSON in the
/// record, so new CRI fields need no migration).
pub(crate) fn resources_json(r: &vmpod_cri_api::v1::LinuxContainerResources) -> serde_json::Value {
    serde_json::json!({
        "cpu_period": r.cpu_period,
        "cpu_quota": r.cpu_quota,
        "cpu_shares": r.cpu_shares,
        "memory_limit_in_bytes": r.memory_limit_in_bytes,
        "oom_score_adj": r.oom_score_adj,
        "cpuset_cpus": r.cpuset_cpus,
        "cpuset_mems": r.cpuset_mems,
        "memory_swap_limit_in_bytes": r.memory_swap_limit_in_bytes,
        "unified": r.unified,
        "hugepage_limits": r.hugepage_limits.iter().map(|h| (h.page_size.clone(), h.limit)).collect::<std::collections::BTreeMap<_, _>>(),
    })
}

/// The inverse of [`resources_json`].
pub(crate) fn resources_from_json(
    v: &serde_json::Value,
) -> vmpod_cri_api::v1::LinuxContainerResources {
    let i = |k: &str| v.get(k).and_then(serde_json::Value::as_i64).unwrap_or(0);
    let s = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    vmpod_cri_api::v1::LinuxContainerResources {
        cpu_period: i("cpu_period"),
        cpu_quota: i("cpu_quota"),
        cpu_shares: i("cpu_shares"),
        memory_limit_in_bytes: i("memory_limit_in_bytes"),
        oom_score_adj: i("oom_score_adj"),
        cpuset_cpus: s("cpuset_cpus"),
        cpuset_mems: s("cpuset_mems"),
        memory_swap_limit_in_bytes: i("memory_swap_limit_in_bytes"),
        unified: v
            .get("unified")
            .and_then(serde_json::Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        hugepage_limits: v
            .get("hugepage_limits")
            .and_then(serde_json::Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        v.as_u64().map(|limit| vmpod_cri_api::v1::HugepageLimit {
                            page_size: k.clone(),
                            limit,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}
