//! The CRI v1 server: `RuntimeService` and `ImageService`.
//!
//! `service.rs` is the dispatch table from gRPC methods to one module per
//! call, so a kubelet log line like "RunPodSandbox failed" maps to one file.
//! Request validation lives beside the call that needs it; the work is
//! done by the mechanism modules (`sandbox/`, `container/`, `image/`),
//! which never call back up here.

mod container;
mod image;
mod labels;
mod lookup;
mod runtime;
mod sandbox;
mod service;

use std::sync::Arc;

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
