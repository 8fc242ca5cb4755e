//! `ListImages`, optionally filtered by an image spec (id, tag or digest).

use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1::{ListImagesRequest, ListImagesResponse};

use super::cri_image;
use crate::daemon::Daemon;
use crate::error::store_err;

pub async fn list_images(
    daemon: &Arc<Daemon>,
    req: ListImagesRequest,
) -> Result<ListImagesResponse, Status> {
    let filter = req
        .filter
        .and_then(|f| f.image)
        .map(|i| i.image)
        .unwrap_or_default();
    let records = if filter.is_empty() {
        daemon.store.list_images().map_err(store_err)?
    } else {
        crate::image::resolve(&daemon.store, &filter)
            .map_err(store_err)?
            .map(|(r, _)| vec![r])
            .unwrap_or_default()
    };
    let mut images: Vec<_> = records.iter().map(|r| cri_image(daemon, r)).collect();
    images.sort_by(|a, b| a.repo_tags.cmp(&b.repo_tags).then(a.id.cmp(&b.id)));
    Ok(ListImagesResponse { images })
}
