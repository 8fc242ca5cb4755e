//! `PullImage`: pull into the content store and return the image id.

use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1::{AuthConfig, PullImageRequest, PullImageResponse};

use crate::daemon::Daemon;
use crate::image::pull::Credentials;

pub async fn pull_image(
    daemon: &Arc<Daemon>,
    req: PullImageRequest,
) -> Result<PullImageResponse, Status> {
    let spec = req
        .image
        .ok_or_else(|| Status::invalid_argument("image: is required"))?;
    // Pods are VMs: there is no pause image, so the sandbox config that
    // kubelet sends along is not needed.
    let creds = req
        .auth
        .as_ref()
        .map(credentials)
        .transpose()
        .map_err(|e| Status::invalid_argument(format!("auth: {e}")))?;
    let rec = crate::image::pull(daemon, &spec.image, creds, None).await?;
    Ok(PullImageResponse { image_ref: rec.id })
}

/// From CRI `AuthConfig`: username/password, the base64 `auth` field,
/// or an identity/registry token.
fn credentials(a: &AuthConfig) -> Result<Credentials, String> {
    let mut c = Credentials {
        username: a.username.clone(),
        password: a.password.clone(),
        bearer: a.registry_token.clone(),
        identity_token: if a.registry_token.is_empty() {
            a.identity_token.clone()
        } else {
            String::new()
        },
    };
    if !a.auth.is_empty() && c.username.is_empty() {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|_| "auth.auth is not valid base64".to_string())?;
        let text = String::from_utf8(raw).map_err(|_| "auth.auth is not UTF-8".to_string())?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| "auth.auth must decode to user:password".to_string())?;
        c.username = u.to_string();
        c.password = p.to_string();
    }
    Ok(c)
}
