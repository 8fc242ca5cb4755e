//! The host↔guest protocol of vmpod, shared by `vmpod-shim` and `vmpod-agent`.
//!
//! Keeping it in its own crate makes the guest agent independent of CRI and
//! lets both sides compile against one definition.

/// Generated messages and the `Agent` service.
#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("vmpod.agent.v1");
}

pub use v1::agent_client::AgentClient;
pub use v1::agent_server::{Agent, AgentServer};

/// The vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The CID every guest gets; each VM has its own vsock device, so it need
/// not be unique across pods.
pub const GUEST_CID: u32 = 3;

/// First line the agent prints on the serial console once it runs as PID 1.
/// Tests and the shim look for it to tell "kernel booted, agent started".
pub const BANNER_PREFIX: &str = "vmpod-agent: started";

/// virtio-fs tag of the pod's shared directory.
pub const SHARE_TAG: &str = "vmpod";

/// Where the agent mounts the pod share in the guest.
pub const SHARE_MOUNTPOINT: &str = "/run/vmpod/share";
