//! `ImageStatus`: one image, or an empty answer when it is absent (not an
//! error: kubelet asks before every pull).

use std::collections::HashMap;
use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1::{ImageStatusRequest, ImageStatusResponse};

use super::cri_image;
use crate::daemon::Daemon;
use crate::error::store_err;

pub async fn image_status(
    daemon: &Arc<Daemon>,
    req: ImageStatusRequest,
) -> Result<ImageStatusResponse, Status> {
    let spec = req.image.map(|i| i.image).unwrap_or_default();
    if spec.is_empty() {
        return Err(Status::invalid_argument("image.image: is required"));
    }
    let Some((rec, _)) = crate::image::resolve(&daemon.store, &spec).map_err(store_err)? else {
        return Ok(ImageStatusResponse::default());
    };
    let info = if req.verbose {
        let config = daemon
            .content
            .blob_path(&rec.id)
            .ok()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        let info = serde_json::json!({
            "id": rec.id,
            "manifestDigest": rec.manifest_digest,
            "size": rec.size,
            "layers": rec.layers,
            "config": config,
            "pulledAt": rec.pulled_at,
        });
        HashMap::from([(
            "info".to_string(),
            serde_json::to_string(&info).map_err(|e| Status::internal(e.to_string()))?,
        )])
    } else {
        HashMap::new()
    };
    Ok(ImageStatusResponse {
        image: Some(cri_image(daemon, &rec)),
        info,
    })
}
