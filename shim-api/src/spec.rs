//! The VM spec: what the daemon asks a shim to boot, written as `vm.json`
//! in the pod dir before the shim starts. The shim validates it again,
//! since it is the process that acts on it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VmSpec {
    /// Opaque id, used in process titles and logs.
    pub id: String,
    pub backend: BackendSpec,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// How long the guest may take to reach agent-ready.
    pub boot_timeout_ms: u64,
    pub helpers: Helpers,
    pub guest: GuestSetup,
    /// Who the built-in VMM's threads run as once the VM is built (they
    /// drop every capability in any case). Ignored by the qemu backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_user: Option<VmmUser>,
}

/// An unprivileged uid/gid; 0 is refused by the shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VmmUser {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendSpec {
    /// QEMU with KVM acceleration.
    QemuKvm,
    /// QEMU with TCG software emulation.
    QemuTcg,
    /// The built-in VMM, on vCPU threads inside the shim.
    Kvm,
}

impl BackendSpec {
    pub fn name(self) -> &'static str {
        match self {
            BackendSpec::QemuKvm => "qemu-kvm",
            BackendSpec::QemuTcg => "qemu-tcg",
            BackendSpec::Kvm => "kvm",
        }
    }
}

/// Resolved absolute paths of the helper programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Helpers {
    /// Only the qemu backends need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<PathBuf>,
    pub virtiofsd: PathBuf,
    /// `None` when the host has `/dev/vhost-vsock` and QEMU's in-kernel
    /// vsock device is used instead, and for the built-in VMM, whose vsock
    /// device is in-process.
    pub vhost_device_vsock: Option<PathBuf>,
}

/// What the agent sets up in the guest once it is up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GuestSetup {
    pub hostname: String,
    pub dns_servers: Vec<String>,
    pub dns_searches: Vec<String>,
    pub dns_options: Vec<String>,
}
