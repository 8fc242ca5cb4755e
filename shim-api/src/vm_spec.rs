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
    /// A `vm.json` without it (hand-written ones in tests) gets what every
    /// guest had before the daemon allocated CIDs: CID 3 over hybrid vsock.
    #[serde(default)]
    pub vsock: VsockSpec,
    pub guest: GuestSetup,
    /// Who the built-in VMM's threads run as once the VM is built (they
    /// drop every capability in any case). Ignored by the qemu backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_user: Option<VmmUser>,
    /// `console.log` is rotated to `console.log.1` at this size: the guest
    /// decides how much it prints, so the pod dir holds at most twice this.
    #[serde(default = "default_console_log_bytes")]
    pub console_log_bytes: u64,
    /// The pod's network card; `None` gives the guest loopback only
    /// (host-network pods, and `vm.json` files from before CNI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetSpec>,
}

/// A TAP the daemon made in the pod's network namespace and joined to the
/// CNI interface there. The shim opens it inside that namespace and hands
/// the fd to the VMM, so the VMM never needs CAP_NET_ADMIN or the netns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NetSpec {
    /// The pod's named netns, `/run/netns/vmpod-<id>`.
    pub netns: PathBuf,
    /// The TAP's name inside that netns.
    pub tap: String,
    /// The guest card's MAC: the CNI interface's, so the CNI network's
    /// neighbour and bridge tables already know the VM.
    pub mac: String,
}

/// 1 MiB: a whole boot with kernel messages, and the last of a guest that
/// floods its console.
pub const DEFAULT_CONSOLE_LOG_BYTES: u64 = 1 << 20;
/// Below one console read (4 KiB) every read would rotate; above 1 GiB the
/// cap stops protecting the host's disk.
pub const MIN_CONSOLE_LOG_BYTES: u64 = 4 << 10;
pub const MAX_CONSOLE_LOG_BYTES: u64 = 1 << 30;

fn default_console_log_bytes() -> u64 {
    DEFAULT_CONSOLE_LOG_BYTES
}

/// An unprivileged uid/gid; 0 is refused by the shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VmmUser {
    pub uid: u32,
    pub gid: u32,
}

/// `UID:GID`, as `vm.vmm-user` is written; root is refused.
impl std::str::FromStr for VmmUser {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (uid, gid) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not UID:GID"))?;
        let id = |v: &str, what: &str| match v.parse::<u32>() {
            Ok(0) => Err(format!("{what} 0 is root; the point is not to be")),
            Ok(n) => Ok(n),
            Err(_) => Err(format!("{what} {v:?} is not a number")),
        };
        Ok(VmmUser {
            uid: id(uid, "uid")?,
            gid: id(gid, "gid")?,
        })
    }
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

/// The guest's virtio-vsock: one CID for every backend, so the daemon's
/// allocation is the only source of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VsockSpec {
    /// Unique among the daemon's pods. With [`VsockTransport::Kernel`] it is
    /// a host-wide address, checked free with the kernel when allocated;
    /// the hybrid transports give each VM its own namespace, so there it only
    /// keeps the contract one value.
    pub guest_cid: u32,
    pub transport: VsockTransport,
}

impl Default for VsockSpec {
    fn default() -> Self {
        VsockSpec {
            guest_cid: MIN_GUEST_CID,
            transport: VsockTransport::Hybrid,
        }
    }
}

/// How the host reaches the guest's vsock, which decides how the shim
/// connects to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VsockTransport {
    /// The pod's hybrid-vsock unix socket (`CONNECT <port>`), served by
    /// vhost-device-vsock for QEMU and by the built-in VMM's own device.
    Hybrid,
    /// The host kernel's vhost-vsock (QEMU only): the shim connects with
    /// `AF_VSOCK` to `(guest-cid, port)`.
    Kernel,
}

/// CIDs 0 (hypervisor), 1 (local), 2 (host) and `u32::MAX` (any) are not
/// guest addresses.
/// The built-in VMM's MP table holds at most this many CPUs; the shim
/// checks at build time that this matches the VMM's own limit.
pub const BUILTIN_VMM_MAX_VCPUS: u32 = 32;

pub const MIN_GUEST_CID: u32 = 3;
pub const MAX_GUEST_CID: u32 = u32::MAX - 1;

/// Resolved absolute paths of the helper programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Helpers {
    /// Only the qemu backends need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<PathBuf>,
    pub virtiofsd: PathBuf,
    /// Only QEMU with the hybrid transport needs it: `None` for kernel
    /// vsock and for the built-in VMM, whose vsock device is in-process.
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
    /// The guest's network cards, matched by MAC, configured as CNI
    /// configured the pod's interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<GuestInterface>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GuestInterface {
    pub mac: String,
    /// 0: the kernel's default.
    pub mtu: u32,
    /// CIDR, v4 and v6.
    pub addresses: Vec<String>,
    pub routes: Vec<GuestRoute>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GuestRoute {
    /// CIDR; `0.0.0.0/0` for a default route.
    pub destination: String,
    /// `None`: on-link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}
