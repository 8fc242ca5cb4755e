//! `RemoveImage` by tag, digest reference or id. Removing a tag of an image
//! with other tags only untags it; removing by id (or the last tag) deletes
//! the image and whatever content no other image shares. Absent images are
//! not an error.

use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1::{RemoveImageRequest, RemoveImageResponse};

use crate::daemon::Daemon;
use crate::error::store_err;

pub async fn remove_image(
    daemon: &Arc<Daemon>,
    req: RemoveImageRequest,
) -> Result<RemoveImageResponse, Status> {
    let spec = req.image.map(|i| i.image).unwrap_or_default();
    if spec.is_empty() {
        return Err(Status::invalid_argument("image.image: is required"));
    }
    let Some((rec, name)) = crate::image::resolve(&daemon.store, &spec).map_err(store_err)? else {
        return Ok(RemoveImageResponse {});
    };
    // By tag: untag (the image goes with its last tag). By id or digest:
    // the image goes.
    let by_tag = name.as_ref().is_some_and(|n| rec.repo_tags.contains(n));
    // Containers run from the image's snapshots: it stays while any
    // container (running or not) was made from it. Untagging one of several
    // tags deletes nothing, so it is always allowed.
    let deletes = !by_tag || rec.repo_tags.len() <= 1;
    if deletes {
        let users: Vec<String> = daemon
            .store
            .list_containers()
            .map_err(store_err)?
            .into_iter()
            .filter(|c| c.image_id == rec.id)
            .map(|c| c.id)
            .collect();
        if let Some(first) = users.first() {
            return Err(Status::failed_precondition(format!(
                "image {spec} ({}) is used by {} container(s), e.g. {first}; remove them first",
                rec.id,
                users.len()
            )));
        }
    }
    let removed = daemon
        .store
        .remove_image_name(&rec.id, if by_tag { name.as_deref() } else { None })
        .map_err(store_err)?;
    if let Some(removed) = removed {
        let content = &daemon.content;
        crate::image::collect_garbage(&daemon.store, content, &removed).map_err(store_err)?;
        tracing::info!(image = %spec, id = %removed.id, "image removed");
    }
    Ok(RemoveImageResponse {})
}
