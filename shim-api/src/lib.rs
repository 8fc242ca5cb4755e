//! The per-pod shim's API, between `vmpod serve` and `vmpod-shim`.

/// Generated messages and the `Shim` service.
#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("vmpod.shim.v1");
}

pub mod spec;

pub use v1::shim_client::ShimClient;
pub use v1::shim_server::{Shim, ShimServer};

/// Files in a pod's directory, shared knowledge of daemon and shim.
pub mod layout {
    /// The VM spec the daemon writes before starting the shim (JSON).
    pub const SPEC: &str = "vm.json";
    /// The shim's gRPC socket.
    pub const SHIM_SOCKET: &str = "shim.sock";
    /// The shim's own log (its stderr).
    pub const SHIM_LOG: &str = "shim.log";
    /// Serial console of the guest.
    pub const CONSOLE_LOG: &str = "console.log";
    /// Written by the shim once it serves: its pid.
    pub const SHIM_PID: &str = "shim.pid";
    /// Directory shared into the guest over virtio-fs (tag `vmpod`).
    pub const SHARE_DIR: &str = "share";
    /// Runtime sockets of the VMM and helpers.
    pub const RUN_DIR: &str = "run";
}
