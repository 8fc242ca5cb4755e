//! What an embedder asks for: the kernel, its command line, the vCPUs and
//! memory, and the devices, already opened. Plain data, read by the builder
//! ([`crate::build`]); kept apart from the running [`crate::Vmm`] so the
//! builder and the crate root both depend on it, never on each other.

use std::path::PathBuf;

use crate::boot::BootProtocol;
use crate::devices::legacy::serial::Output;
use crate::devices::virtio::VirtioDevice;
use crate::privilege::Credentials;

/// What to boot and how.
pub struct VmmConfig {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Where COM1's output goes.
    pub serial: Output,
    pub boot: BootProtocol,
    /// virtio-mmio devices, in order: device i gets the i-th MMIO page after
    /// the boot timer and IRQ 5 + i, and a `virtio_mmio.device=` entry.
    /// A disk is a [`BlockDevice`](crate::devices::virtio::block::BlockDevice)
    /// opened from a [`DiskConfig`](crate::devices::virtio::block::DiskConfig),
    /// so a missing file fails before any KVM set-up; a network card is a
    /// [`NetDevice`](crate::devices::virtio::net::NetDevice) opened from a
    /// [`NetConfig`](crate::devices::virtio::net::NetConfig), so a missing
    /// TAP does too. A file system is a
    /// [`FsDevice`](crate::devices::virtio::fs::FsDevice) connected to its
    /// vhost-user backend, so a daemon that is not there fails just as early.
    pub virtio: Vec<Box<dyn VirtioDevice>>,
    /// Who the VMM threads run as once the VM is built; `None` keeps the
    /// uid. Capabilities are dropped either way.
    pub user: Option<Credentials>,
}
