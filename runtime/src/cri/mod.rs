//! The CRI v1 server: `RuntimeService` and `ImageService`.
//!
//! `service.rs` is the dispatch table from gRPC methods to one module per
//! call, so a kubelet log line like "RunPodSandbox failed" maps to one file.
//! Request validation lives beside the call that needs it.

mod container;
mod image;
mod runtime;
pub(crate) mod sandbox;
mod service;

use std::sync::Arc;

pub(crate) use container::stats::forget as container_stats_forget;
pub(crate) use image::pull::pull as image_pull;
pub use sandbox::run::RUNTIME_HANDLERS;

use crate::daemon::Daemon;

/// The tonic services, sharing the daemon's state.
#[derive(Clone)]
pub struct Cri {
    daemon: Arc<Daemon>,
}

impl Cri {
    pub fn new(daemon: Arc<Daemon>) -> Self {
        Self { daemon }
    }
}

/// The gRPC error for a CRI call that a later vmpod version implements.
/// kubelet treats UNIMPLEMENTED as "feature absent" for optional calls, so
/// this is the honest answer rather than a fake success.
fn unimplemented(method: &str) -> tonic::Status {
    tonic::Status::unimplemented(format!("{method} is not implemented by vmpod yet"))
}

/// Kubernetes caps an object's labels plus annotations at 256 KiB; pods and
/// containers are held to the same.
const MAX_LABELS_BYTES: usize = 256 << 10;

/// Checks a config's labels and annotations: bounded in size, no empty keys.
pub(crate) fn check_labels(
    labels: &std::collections::HashMap<String, String>,
    annotations: &std::collections::HashMap<String, String>,
) -> Result<(), tonic::Status> {
    let bytes: usize = labels
        .iter()
        .chain(annotations.iter())
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if bytes > MAX_LABELS_BYTES {
        return Err(tonic::Status::invalid_argument(format!(
            "config.labels/annotations: {bytes} bytes in total, more than {MAX_LABELS_BYTES}"
        )));
    }
    if labels.keys().any(String::is_empty) {
        return Err(tonic::Status::invalid_argument(
            "config.labels: keys must not be empty",
        ));
    }
    Ok(())
}

/// Finds a record by full id or by a unique id prefix, as crictl users
/// type them. `what` names the field in errors ("pod_sandbox_id").
pub(crate) fn find_by_id_or_prefix<T>(
    what: &str,
    id: &str,
    get: impl FnOnce(&str) -> Result<Option<T>, crate::state::StoreError>,
    list: impl FnOnce() -> Result<Vec<T>, crate::state::StoreError>,
    id_of: impl Fn(&T) -> &str,
) -> Result<Option<T>, tonic::Status> {
    if id.is_empty() {
        return Err(tonic::Status::invalid_argument(format!(
            "{what} is required"
        )));
    }
    if let Some(rec) = get(id).map_err(sandbox::store_err)? {
        return Ok(Some(rec));
    }
    let mut matches: Vec<T> = list()
        .map_err(sandbox::store_err)?
        .into_iter()
        .filter(|r| id_of(r).starts_with(id))
        .collect();
    match matches.len() {
        0 => Ok(None),
        1 => Ok(matches.pop()),
        n => Err(tonic::Status::invalid_argument(format!(
            "{what} prefix {id:?} matches {n} records"
        ))),
    }
}
