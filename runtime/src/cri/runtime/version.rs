//! `Version`: who we are and which CRI we speak.

use tonic::Status;
use vmpod_cri_api::v1::{VersionRequest, VersionResponse};

/// The CRI API version this server implements.
pub const CRI_API_VERSION: &str = "v1";
pub const RUNTIME_NAME: &str = "vmpod";

pub fn version(_req: VersionRequest) -> Result<VersionResponse, Status> {
    Ok(VersionResponse {
        // The kubelet-facing "version" is the API version of the *protocol*,
        // a fixed "0.1.0" in every CRI runtime since dockershim.
        version: "0.1.0".into(),
        runtime_name: RUNTIME_NAME.into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: CRI_API_VERSION.into(),
    })
}
