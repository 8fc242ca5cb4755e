//! Errors as gRPC clients see them, shared by the CRI layer (`cri/`), the
//! operator API (`admin/`) and the mechanism modules below them (`sandbox/`,
//! `container/`, `image/`), so that one failure reads the same whichever
//! call met it. Nothing here knows CRI messages; the mechanism never has to
//! reach up into `cri/` for an error.

use tonic::Status;

use crate::image::error::PullError;
use crate::state::SandboxRecord;

/// A state-store failure: the daemon's own fault, never the client's.
pub fn store_err(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("state store: {e}"))
}

/// Why a sandbox is not ready, for error messages.
pub fn not_ready(rec: &SandboxRecord) -> String {
    if rec.reason.is_empty() {
        format!("sandbox {} is not ready", rec.id)
    } else {
        format!("sandbox {} is not ready ({})", rec.id, rec.reason)
    }
}

/// A request field that is wrong: INVALID_ARGUMENT naming it, since the
/// message is all kubelet shows.
pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

/// A shim error as the client should see it: the shim already speaks gRPC
/// codes (NOT_FOUND, FAILED_PRECONDITION, ...), so only the context is
/// added; a broken connection means the VM or shim went away.
pub fn shim_err(what: &str, status: Status) -> Status {
    let code = match status.code() {
        tonic::Code::Unknown | tonic::Code::Cancelled => tonic::Code::Unavailable,
        c => c,
    };
    Status::new(code, format!("{what}: {}", status.message()))
}

/// A failed pull, by what went wrong: the client's reference or
/// credentials, the registry, the image, or the store's limits.
pub fn pull_status(e: PullError) -> Status {
    let msg = e.to_string();
    match e {
        PullError::InvalidReference(_) => Status::invalid_argument(msg),
        PullError::NotFound(_) => Status::not_found(msg),
        PullError::Auth { .. } => Status::unauthenticated(msg),
        PullError::Digest { .. } => Status::data_loss(msg),
        PullError::Timeout { .. } => Status::deadline_exceeded(msg),
        PullError::Registry { .. } => Status::unavailable(msg),
        PullError::BadImage { .. } => Status::failed_precondition(msg),
        PullError::Store(_) | PullError::Limit { .. } => Status::resource_exhausted(msg),
    }
}
