//! Images: the content store, pulls, and lookups by the names kubelet uses.
//! The CRI calls in `cri/image/` (and `vmpod pull` through `admin/`) are
//! thin layers over this module.

pub mod config;
pub mod content;
pub mod error;
pub mod pull;
pub mod reference;
pub mod token;
pub mod unpack;

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tonic::Status;

use crate::daemon::Daemon;
use crate::state::{ImageRecord, Store, StoreError};
pub use content::ContentStore;
use pull::{Credentials, Progress, Puller};

/// Pulls `image` into the daemon's store. Runs to completion even if the
/// caller goes away, so a cancelled request never leaves a half-written
/// download behind.
pub async fn pull(
    daemon: &Arc<Daemon>,
    image: &str,
    creds: Option<Credentials>,
    progress: Option<UnboundedSender<Progress>>,
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
    .map_err(crate::error::pull_status)
}

/// Finds an image by what a user or kubelet typed: the id (`sha256:…`),
/// a unique id prefix (12+ hex digits), a tag or a digest reference, with
/// Docker Hub normalization.
pub fn resolve(
    store: &Store,
    spec: &str,
) -> Result<Option<(ImageRecord, Option<String>)>, StoreError> {
    if spec.is_empty() {
        return Ok(None);
    }
    if let Some(rec) = store.get_image(spec)? {
        return Ok(Some((rec, None)));
    }
    let hex = spec.strip_prefix("sha256:").unwrap_or(spec);
    if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let matches: Vec<ImageRecord> = store
            .list_images()?
            .into_iter()
            .filter(|r| {
                r.id.strip_prefix("sha256:")
                    .is_some_and(|h| h.starts_with(hex))
            })
            .collect();
        if matches.len() == 1 {
            return Ok(matches.into_iter().next().map(|r| (r, None)));
        }
    }
    let Ok(r) = reference::parse(spec) else {
        return Ok(None);
    };
    let name = match r.digest() {
        Some(d) => reference::digest_name(&r, d),
        None => match reference::tag_name(&r) {
            Some(t) => t,
            None => return Ok(None),
        },
    };
    match store.image_by_name(&name)? {
        Some(id) => Ok(store.get_image(&id)?.map(|rec| (rec, Some(name)))),
        None => Ok(None),
    }
}

/// Deletes blobs and snapshots of `removed` that no remaining image uses.
pub fn collect_garbage(
    store: &Store,
    content: &ContentStore,
    removed: &ImageRecord,
) -> Result<(), StoreError> {
    let remaining = store.list_images()?;
    let used = |pred: &dyn Fn(&ImageRecord) -> bool| remaining.iter().any(pred);
    let mut blobs = Vec::new();
    let mut snapshots = Vec::new();
    let mut candidates = removed.blobs.clone();
    candidates.push(removed.id.clone());
    candidates.extend(removed.layers.iter().map(|l| l.digest.clone()));
    candidates.sort();
    candidates.dedup();
    for b in candidates {
        if !used(&|r| r.id == b || r.blobs.contains(&b) || r.layers.iter().any(|x| x.digest == b)) {
            blobs.push(b);
        }
    }
    for l in &removed.layers {
        if !used(&|r| r.layers.iter().any(|x| x.chain_id == l.chain_id)) {
            snapshots.push(l.chain_id.clone());
        }
    }
    content.remove_unreferenced(&blobs, &snapshots);
    Ok(())
}
