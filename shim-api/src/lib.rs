//! The per-pod shim's API, between `vmpod serve` and `vmpod-shim`.

/// Generated messages and the `Shim` service.
#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("vmpod.shim.v1");
}

pub mod mounts;
pub mod vm_spec;

pub use v1::shim_client::ShimClient;
pub use v1::shim_server::{Shim, ShimServer};

/// The longest container exit message the host keeps. The guest writes
/// it; kubelet shows it as the reason a container ended, and a guest could
/// otherwise send megabytes with every status.
pub const MAX_GUEST_MESSAGE: usize = 4096;

/// Cuts a guest-written `message` to [`MAX_GUEST_MESSAGE`] bytes, at a
/// character boundary.
pub fn bound_guest_message(message: &mut String) {
    if message.len() > MAX_GUEST_MESSAGE {
        let mut end = MAX_GUEST_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_message_is_bounded_at_a_character_boundary() {
        let mut short = "exec: not found".to_owned();
        bound_guest_message(&mut short);
        assert_eq!(short, "exec: not found");
        let mut huge = "é".repeat(MAX_GUEST_MESSAGE);
        bound_guest_message(&mut huge);
        assert!(huge.len() <= MAX_GUEST_MESSAGE && huge.len() > MAX_GUEST_MESSAGE - 2);
        assert!(huge.chars().all(|c| c == 'é'));
    }
}

/// Quota of a container's writable layer when the daemon asks for none:
/// larger than any sane container's scratch writes, small enough that one
/// pod cannot fill a node's disk by itself. The layer is a sparse file, so
/// only what is written takes space.
pub const DEFAULT_WRITABLE_LAYER_BYTES: u64 = 10 << 30;
/// Below this mkfs.ext4 cannot lay out a file system with room to spare.
pub const MIN_WRITABLE_LAYER_BYTES: u64 = 4 << 20;
/// Far above any disk; refuses a unit mistake (bytes meant as KiB, ...).
pub const MAX_WRITABLE_LAYER_BYTES: u64 = 1 << 50;

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
    /// Directory shared into the guest over virtio-fs (tag `vmpod`): a
    /// read-only bind of [`SKELETON_DIR`], so the guest can write only
    /// inside the container roots and volumes mounted below it.
    pub const SHARE_DIR: &str = "share";
    /// Host-only: the directories and mount points the share shows. Only
    /// the shim writes here; the guest sees it read-only through the share.
    pub const SKELETON_DIR: &str = "skeleton";
    /// Host-only: each container's writable layer, a size-capped file
    /// system of its own (`<id>.img`, mounted at `<id>/`).
    pub const WRITABLE_DIR: &str = "writable";
    /// Runtime sockets of the VMM and helpers.
    pub const RUN_DIR: &str = "run";
}
