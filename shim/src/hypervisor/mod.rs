//! The VMM behind a trait, so the VM state machine never knows which one runs
//! the pod: QEMU (with KVM or TCG), or the built-in KVM VMM on the shim's own
//! threads (`kvm.rs`).
//!
//! The contract is deliberately small: start a VM from a description of its
//! boot files and devices, report exactly one exit on the shared exit
//! channel, stop it on request. Pod concepts (spec, pod dir, agent) stay out.

pub mod kvm;
pub mod qemu;

use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::AsyncRead;
use vmpod_shim_api::vm_spec::VmmUser;
use vmpod_vmm::devices::virtio::net::MacAddress;

use crate::process::ExitSender;

/// Kernel command line every backend uses. `reboot=t` + `panic=-1` turn a
/// guest reboot or panic into a VM exit, which the shim supervises.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 quiet";

/// How the guest's virtio-vsock is backed on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vsock {
    /// A vhost-user backend (vhost-device-vsock) listening on `socket`.
    VhostUser { socket: PathBuf },
    /// The host kernel's vhost-vsock (`/dev/vhost-vsock`).
    Kernel { guest_cid: u32 },
    /// The built-in VMM's own device, whose host end is the hybrid-vsock
    /// socket `uds` itself (no helper process).
    InProcess { guest_cid: u32, uds: PathBuf },
}

/// A vhost-user virtio-fs backend (virtiofsd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioFs {
    pub socket: PathBuf,
    pub tag: String,
}

/// The guest's network card, backed by the pod's TAP (see `crate::tap`).
#[derive(Debug, Clone)]
pub struct NetCard {
    /// The TAP the shim opened in the pod's netns. Shared, not owned: the
    /// config is cloned, and the fd must stay open until the VMM holds its
    /// own copy. `None` only in a plan (`--print-commands`), which opens
    /// nothing.
    pub tap: Option<Arc<OwnedFd>>,
    /// The guest sees it as the card's address; the agent finds the card
    /// by it.
    pub mac: MacAddress,
    /// QEMU moves the data path into the host kernel (`vhost=on`), which
    /// needs `/dev/vhost-net`; without it QEMU would refuse to start.
    /// Decided where the config is made, so the command line is a pure
    /// function of the config.
    pub vhost_net: bool,
}

/// Two configs are the same VM when the card is on the same fd (by
/// number: an fd cannot be compared by content).
impl PartialEq for NetCard {
    fn eq(&self, other: &Self) -> bool {
        let fd = |c: &NetCard| c.tap.as_ref().map(|t| t.as_raw_fd());
        fd(self) == fd(other) && self.mac == other.mac && self.vhost_net == other.vhost_net
    }
}

impl Eq for NetCard {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Names the VM in process titles.
    pub name: String,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub vsock: Vsock,
    pub fs: Option<VirtioFs>,
    /// Where the VMM's own diagnostics (not the guest console) go.
    pub log: PathBuf,
    /// The built-in VMM's threads switch to this uid/gid before the guest
    /// runs; QEMU does (`-runas`) once its files and sockets are open.
    pub vmm_user: Option<VmmUser>,
    /// `None`: loopback only.
    pub net: Option<NetCard>,
}

pub type Console = Pin<Box<dyn AsyncRead + Send + Sync + Unpin>>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Hypervisor {
    /// "qemu-tcg", "qemu-kvm", "kvm": reported in `VmState.backend`.
    fn name(&self) -> &'static str;

    /// Starts the VM. Its end is reported once on `exits`, under the name
    /// `RunningVm::process_name`.
    fn start(&self, config: &VmConfig, exits: ExitSender) -> Result<Box<dyn RunningVm>>;
}

pub trait RunningVm: Send + Sync {
    /// The pid that runs the VM (the shim's own for an in-process VMM).
    fn pid(&self) -> u32;

    /// The name its exit carries on the exit channel.
    fn process_name(&self) -> &str;

    /// The guest's serial output; `None` once taken.
    fn take_console(&mut self) -> Option<Console>;

    /// Asks the VM to stop, forcing it after `grace`; resolves once it has.
    fn stop(&self, grace: Duration) -> BoxFuture<'_, ExitStatus>;

    /// The VMM's own last words, for error messages.
    fn diagnostics(&self) -> String;
}
