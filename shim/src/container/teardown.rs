//! Removing one container's host side: its mounts in the share, its mount
//! points in the skeleton and its writable layer.

use super::id::check_id;
use super::{rootfs, volumes, writable};
use crate::share::PodShare;

/// Unmounts everything of container `id` in the share (its volumes, then
/// its root), deletes its mount points from the skeleton, then unmounts and
/// deletes its writable layer. Never deletes while anything is still
/// mounted there: that would delete through a bind into the host's files.
/// Idempotent.
pub fn remove_container(pod: &PodShare, id: &str) -> anyhow::Result<()> {
    check_id(id).map_err(anyhow::Error::msg)?;
    let rel = rootfs::relative_dir(id);
    volumes::unmount_all(&pod.share.join(&rel))?;
    let dir = pod.skeleton.join(&rel);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::Error::new(e).context(format!("removing {}", dir.display()))),
    }
    writable::remove(&pod.writable, id)
}
