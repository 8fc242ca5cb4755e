//! The long-lived state of `vmpod serve`, shared by all CRI calls.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::container::registry::Registry as Containers;
use crate::image::content::ContentStore;
use crate::sandbox::registry::Registry as Sandboxes;
use crate::state::Store;

/// Everything a call may touch; one per daemon, nothing per process.
pub struct Daemon {
    pub config: Arc<Config>,
    pub store: Store,
    /// Per sandbox: locks, monitors, vsock CIDs, CPU samples.
    pub sandboxes: Sandboxes,
    /// Per container: locks, CPU samples.
    pub containers: Containers,
    pub content: ContentStore,
}

impl Daemon {
    /// The shim binary: a bare name is looked for beside the running `vmpod`
    /// first, so an unpacked release or `target/debug` works without PATH.
    pub fn shim_binary(&self) -> Option<PathBuf> {
        let name = &self.config.helpers.shim;
        if !name.0.starts_with('/')
            && let Some(dir) = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(PathBuf::from))
        {
            let beside = dir.join(&name.0);
            if crate::host::is_executable(&beside) {
                return Some(beside);
            }
        }
        crate::host::which(name)
    }
}
