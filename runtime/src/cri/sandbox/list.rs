//! `ListPodSandbox`: every filter kubelet and crictl use (id or id prefix,
//! state, label selector; all must match).

use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1::{ListPodSandboxRequest, ListPodSandboxResponse, PodSandbox};

use super::{cri_metadata, cri_state};
use crate::daemon::Daemon;
use crate::error::store_err;

pub async fn list_pod_sandbox(
    daemon: &Arc<Daemon>,
    req: ListPodSandboxRequest,
) -> Result<ListPodSandboxResponse, Status> {
    let filter = req.filter.unwrap_or_default();
    let mut items: Vec<PodSandbox> = daemon
        .store
        .list_sandboxes()
        .map_err(store_err)?
        .into_iter()
        .filter(|r| filter.id.is_empty() || r.id.starts_with(&filter.id))
        .filter(|r| {
            filter
                .state
                .as_ref()
                .is_none_or(|s| s.state == i32::from(cri_state(r)))
        })
        .filter(|r| {
            filter
                .label_selector
                .iter()
                .all(|(k, v)| r.labels.get(k) == Some(v))
        })
        .map(|r| PodSandbox {
            id: r.id.clone(),
            metadata: Some(cri_metadata(&r)),
            state: cri_state(&r).into(),
            created_at: r.created_at,
            labels: r.labels.clone().into_iter().collect(),
            annotations: r.annotations.clone().into_iter().collect(),
            runtime_handler: r.runtime_handler.clone(),
        })
        .collect();
    items.sort_by_key(|p| std::cmp::Reverse(p.created_at));
    Ok(ListPodSandboxResponse { items })
}
