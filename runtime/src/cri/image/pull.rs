//! `PullImage`: pull into the content store and return the image id.

use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1::{PullImageRequest, PullImageResponse};

use crate::daemon::Daemon;
use crate::image::pull::{Credentials, Progress, PullError, Puller};
use crate::state::ImageRecord;

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
        .map(Credentials::from_cri)
        .transpose()
        .map_err(|e| Status::invalid_argument(format!("auth: {e}")))?;
    let rec = pull(daemon, &spec.image, creds, None).await?;
    Ok(PullImageResponse { image_ref: rec.id })
}

/// Runs a pull to completion even if the caller goes away, so a cancelled
/// kubelet request never leaves a half-written download behind.
pub(crate) async fn pull(
    daemon: &Arc<Daemon>,
    image: &str,
    creds: Option<Credentials>,
    progress: Option<tokio::sync::mpsc::UnboundedSender<Progress>>,
) -> Result<ImageRecord, Status> {
    let d = daemon.clone();
    let image = image.to_string();
    tokio::spawn(async move {
        let puller = Puller {
            config: &d.config.registry,
            content: &d.content,
            store: &d.store,
            progress,
        };
        puller.pull(&image, creds.as_ref()).await
    })
    .await
    .map_err(|e| Status::internal(format!("pull task failed: {e}")))?
    .map_err(status_of)
}

pub(crate) fn status_of(e: PullError) -> Status {
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
