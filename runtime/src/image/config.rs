//! The image config (the JSON blob an image id names): the part of it a
//! container starts from.

use serde::Deserialize;

/// The part of an OCI image config a container starts from.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(rename = "User", default)]
    pub user: String,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: String,
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: String,
}

impl ImageConfig {
    /// Parses the config blob (`{"config": {...}, "rootfs": ...}`); an image
    /// without a `config` section runs with the defaults.
    pub fn from_blob(blob: &[u8]) -> Result<ImageConfig, String> {
        #[derive(Deserialize)]
        struct Outer {
            #[serde(default)]
            config: Option<ImageConfig>,
        }
        let outer: Outer =
            serde_json::from_slice(blob).map_err(|e| format!("image config is not valid: {e}"))?;
        Ok(outer.config.unwrap_or_default())
    }
}
