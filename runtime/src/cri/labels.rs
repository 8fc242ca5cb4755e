//! Labels and annotations of pods and containers.

use std::collections::HashMap;

use tonic::Status;

/// Kubernetes caps an object's labels plus annotations at 256 KiB; pods and
/// containers are held to the same.
const MAX_LABELS_BYTES: usize = 256 << 10;

/// Checks a config's labels and annotations: bounded in size, no empty keys.
pub(crate) fn check_labels(
    labels: &HashMap<String, String>,
    annotations: &HashMap<String, String>,
) -> Result<(), Status> {
    let bytes: usize = labels
        .iter()
        .chain(annotations.iter())
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if bytes > MAX_LABELS_BYTES {
        return Err(Status::invalid_argument(format!(
            "config.labels/annotations: {bytes} bytes in total, more than {MAX_LABELS_BYTES}"
        )));
    }
    if labels.keys().any(String::is_empty) {
        return Err(Status::invalid_argument(
            "config.labels: keys must not be empty",
        ));
    }
    Ok(())
}
