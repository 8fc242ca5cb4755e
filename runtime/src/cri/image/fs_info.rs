//! `ImageFsInfo`: what the content store uses on its filesystem, for
//! kubelet's image GC thresholds.

use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1::{
    FilesystemIdentifier, FilesystemUsage, ImageFsInfoRequest, ImageFsInfoResponse, UInt64Value,
};

use crate::daemon::Daemon;

pub async fn image_fs_info(
    daemon: &Arc<Daemon>,
    _req: ImageFsInfoRequest,
) -> Result<ImageFsInfoResponse, Status> {
    let d = daemon.clone();
    let (bytes, inodes) = tokio::task::spawn_blocking(move || d.content.usage())
        .await
        .map_err(|e| Status::internal(format!("usage task failed: {e}")))?;
    let timestamp = crate::clock::unix_nanos();
    let usage = FilesystemUsage {
        timestamp,
        fs_id: Some(FilesystemIdentifier {
            mountpoint: daemon.content.root().display().to_string(),
        }),
        used_bytes: Some(UInt64Value { value: bytes }),
        inodes_used: Some(UInt64Value { value: inodes }),
    };
    Ok(ImageFsInfoResponse {
        image_filesystems: vec![usage.clone()],
        container_filesystems: vec![usage],
    })
}
