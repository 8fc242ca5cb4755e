//! `ContainerStatus`: the record, which the pod's events keep current.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1 as cri;

use super::{cri_image, cri_metadata, cri_state, get_fresh};
use crate::cri::container::create::resources_from_json;
use crate::daemon::Daemon;
use crate::error::store_err;
use crate::state::{ContainerRecord, ContainerState};

pub async fn container_status(
    daemon: &Arc<Daemon>,
    req: cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse, Status> {
    let rec = get_fresh(daemon, &req.container_id).await?;
    let info = if req.verbose {
        let info = serde_json::json!({
            "id": rec.id,
            "sandboxID": rec.sandbox_id,
            "imageID": rec.image_id,
            "logPath": rec.log_path,
            "stopSignal": rec.stop_signal,
            "state": rec.state,
            "mounts": rec.mounts,
            "resources": rec.resources,
        });
        HashMap::from([(
            "info".to_string(),
            serde_json::to_string(&info).map_err(|e| Status::internal(e.to_string()))?,
        )])
    } else {
        HashMap::new()
    };
    Ok(cri::ContainerStatusResponse {
        status: Some(cri_status(&rec)),
        info,
    })
}

/// The CRI statuses of a sandbox's containers, from their records, for
/// PodSandboxStatus and GetContainerEvents.
pub(crate) fn statuses_of(
    daemon: &Daemon,
    sandbox_id: &str,
) -> Result<Vec<cri::ContainerStatus>, Status> {
    Ok(crate::container::containers_of(daemon, sandbox_id)
        .map_err(store_err)?
        .iter()
        .filter(|r| r.state != ContainerState::Creating)
        .map(cri_status)
        .collect())
}

pub(crate) fn cri_status(rec: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: rec.id.clone(),
        metadata: Some(cri_metadata(rec)),
        state: cri_state(rec).into(),
        created_at: rec.created_at,
        started_at: rec.started_at,
        finished_at: rec.finished_at,
        exit_code: rec.exit_code,
        image: Some(cri_image(rec)),
        image_ref: rec.image_ref.clone(),
        image_id: rec.image_id.clone(),
        reason: rec.reason.clone(),
        message: rec.message.clone(),
        labels: rec.labels.clone().into_iter().collect(),
        annotations: rec.annotations.clone().into_iter().collect(),
        mounts: rec
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                propagation: m.propagation,
                ..Default::default()
            })
            .collect(),
        log_path: rec.log_path.clone(),
        resources: rec.resources.as_ref().map(|r| cri::ContainerResources {
            linux: Some(resources_from_json(r)),
            windows: None,
        }),
        user: None,
        stop_signal: rec.stop_signal,
    }
}
