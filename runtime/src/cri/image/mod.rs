//! Image CRI calls, one file each.

pub mod fs_info;
pub mod list;
pub mod pull;
pub mod remove;
pub mod status;

use vmpod_cri_api::v1::{Image, ImageSpec, Int64Value};

use crate::daemon::Daemon;
use crate::state::ImageRecord;

/// The CRI view of an image record.
pub(crate) fn cri_image(daemon: &Daemon, rec: &ImageRecord) -> Image {
    // The image config's User is "uid[:gid]" or "name[:group]".
    let user = rec.user.split(':').next().unwrap_or_default();
    let (uid, username) = match user.parse::<i64>() {
        Ok(n) => (Some(Int64Value { value: n }), String::new()),
        Err(_) => (None, user.to_string()),
    };
    Image {
        id: rec.id.clone(),
        repo_tags: rec.repo_tags.clone(),
        repo_digests: rec.repo_digests.clone(),
        size: rec.size,
        uid,
        username,
        spec: Some(ImageSpec {
            image: rec.id.clone(),
            ..Default::default()
        }),
        pinned: is_pinned(daemon, rec),
    }
}

fn is_pinned(daemon: &Daemon, rec: &ImageRecord) -> bool {
    daemon.config.registry.pinned_images.iter().any(|p| {
        crate::image::resolve(&daemon.store, p)
            .ok()
            .flatten()
            .is_some_and(|(r, _)| r.id == rec.id)
    })
}
