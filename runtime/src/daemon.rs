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
    /// Where Exec, Attach and PortForward park their sessions.
    pub streaming: Arc<crate::stream::StreamServer>,
}

impl Daemon {
    /// The shim binary, as [`crate::host::shim_binary`] finds it.
    pub fn shim_binary(&self) -> Option<PathBuf> {
        crate::host::shim_binary(&self.config)
    }
}
