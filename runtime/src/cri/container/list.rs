//! `ListContainers`: every filter kubelet and crictl use (id or id prefix,
//! state, sandbox id or prefix, label selector; all must match).

use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1 as cri;

use super::{cri_image, cri_metadata, cri_state};
use crate::daemon::Daemon;
use crate::error::store_err;
use crate::state::ContainerRecord;

pub async fn list_containers(
    daemon: &Arc<Daemon>,
    req: cri::ListContainersRequest,
) -> Result<cri::ListContainersResponse, Status> {
    crate::container::refresh_all(daemon).await?;
    let filter = req.filter.unwrap_or_default();
    let mut containers: Vec<cri::Container> = daemon
        .store
        .list_containers()
        .map_err(store_err)?
        .into_iter()
        .filter(|r| matches(r, &filter))
        .map(|r| cri::Container {
            id: r.id.clone(),
            pod_sandbox_id: r.sandbox_id.clone(),
            metadata: Some(cri_metadata(&r)),
            image: Some(cri_image(&r)),
            image_ref: r.image_ref.clone(),
            image_id: r.image_id.clone(),
            state: cri_state(&r).into(),
            created_at: r.created_at,
            labels: r.labels.clone().into_iter().collect(),
            annotations: r.annotations.clone().into_iter().collect(),
        })
        .collect();
    containers.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    Ok(cri::ListContainersResponse { containers })
}

fn matches(r: &ContainerRecord, f: &cri::ContainerFilter) -> bool {
    (f.id.is_empty() || r.id.starts_with(&f.id))
        && (f.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&f.pod_sandbox_id))
        && f.state
            .as_ref()
            .is_none_or(|s| s.state == i32::from(cri_state(r)))
        && f.label_selector
            .iter()
            .all(|(k, v)| r.labels.get(k) == Some(v))
}
