//! Which vsock carries a pod's agent channel, and the host kernel's view of
//! guest CIDs.
//!
//! QEMU can back the guest's virtio-vsock with the host kernel's vhost-vsock
//! (no helper process, the shim connects with `AF_VSOCK`) or with
//! vhost-device-vsock over vhost-user (a hybrid-vsock unix socket per pod).
//! The kernel's CIDs are one host-wide address space, shared with anything
//! else on the host that runs VMs; the hybrid socket gives each VM its own.
//! The built-in VMM has its own in-process hybrid device and never uses the
//! kernel's: `vm.vsock` is about QEMU, so the built-in VMM ignores it rather
//! than failing pods pinned to it by RuntimeClass on a host set to "kernel".

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use serde::Serialize;

use super::backend::Backend;
use crate::config::VsockChoice;

pub const VHOST_VSOCK: &str = "/dev/vhost-vsock";

/// `VHOST_VSOCK_SET_GUEST_CID`, `_IOW(VHOST_VIRTIO, 0x60, __u64)`.
const VHOST_VSOCK_SET_GUEST_CID: libc::c_ulong = 0x4008_AF60;

/// How a pod's guest vsock is backed on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VsockBackend {
    /// The host kernel's vhost-vsock, QEMU only.
    Kernel,
    /// vhost-device-vsock, QEMU only.
    VhostUser,
    /// The built-in VMM's own device.
    InProcess,
}

impl VsockBackend {
    /// Whether the guest's CID is a host-wide address that the kernel must
    /// agree is free.
    pub fn is_kernel(self) -> bool {
        self == VsockBackend::Kernel
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VsockDecision {
    pub backend: VsockBackend,
    pub reason: String,
}

/// Opens the device as QEMU does: read-write. An open instance holds no CID
/// until asked to, and closing it releases everything.
fn open_vhost_vsock(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// Whether the kernel's vhost-vsock is usable here: `Ok`, or why not.
/// Existence is not enough: a device node without the module loaded, or one
/// the daemon may not open, fails QEMU just the same.
pub fn probe_kernel() -> Result<(), String> {
    probe_kernel_at(Path::new(VHOST_VSOCK))
}

fn probe_kernel_at(path: &Path) -> Result<(), String> {
    open_vhost_vsock(path)
        .map(drop)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// Resolves `vm.vsock` for `backend`, given whether [`probe_kernel`]
/// succeeded. An error names the key, for `FAILED_PRECONDITION` and
/// `vmpod check`.
pub fn choose(
    choice: VsockChoice,
    backend: Backend,
    kernel: &Result<(), String>,
) -> Result<VsockDecision, String> {
    if backend == Backend::Kvm {
        let reason = match choice {
            VsockChoice::Auto => "built-in VMM: its own in-process hybrid vsock".to_string(),
            other => format!(
                "built-in VMM: its own in-process hybrid vsock (vm.vsock = {:?} applies to QEMU only)",
                other.as_str()
            ),
        };
        return Ok(VsockDecision {
            backend: VsockBackend::InProcess,
            reason,
        });
    }
    match (choice, kernel) {
        (VsockChoice::VhostUser, _) => Ok(VsockDecision {
            backend: VsockBackend::VhostUser,
            reason: "configured: vhost-device-vsock".into(),
        }),
        (VsockChoice::Kernel, Ok(())) => Ok(VsockDecision {
            backend: VsockBackend::Kernel,
            reason: format!("configured: kernel vhost-vsock ({VHOST_VSOCK})"),
        }),
        (VsockChoice::Kernel, Err(why)) => Err(format!(
            "vm.vsock = \"kernel\" needs {VHOST_VSOCK}: {why}; load the vhost_vsock module or set vm.vsock = \"auto\""
        )),
        (VsockChoice::Auto, Ok(())) => Ok(VsockDecision {
            backend: VsockBackend::Kernel,
            reason: format!("auto: kernel vhost-vsock ({VHOST_VSOCK} opens)"),
        }),
        (VsockChoice::Auto, Err(_)) => Ok(VsockDecision {
            backend: VsockBackend::VhostUser,
            reason: format!("auto: vhost-device-vsock ({VHOST_VSOCK} does not open)"),
        }),
    }
}

/// Whether the kernel already has a VM with guest CID `cid`.
///
/// Asks the kernel to give `cid` to a throw-away vhost-vsock instance: it
/// refuses with `EADDRINUSE` while another VM (any VMM, not only ours) has
/// it. The instance is closed at once, which frees the CID again for the
/// pod's QEMU; a VM started elsewhere in between makes that QEMU fail with
/// the same error, and a retried RunPodSandbox then skips the CID.
pub fn kernel_cid_in_use(cid: u32) -> io::Result<bool> {
    let dev = open_vhost_vsock(Path::new(VHOST_VSOCK))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {VHOST_VSOCK}: {e}")))?;
    let arg = u64::from(cid);
    // SAFETY: VHOST_VSOCK_SET_GUEST_CID reads one u64 through the pointer,
    // which lives for the call; the fd is ours.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), VHOST_VSOCK_SET_GUEST_CID, &arg) };
    if r == 0 {
        return Ok(false);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EADDRINUSE) {
        Ok(true)
    } else {
        Err(io::Error::new(
            e.kind(),
            format!("VHOST_VSOCK_SET_GUEST_CID {cid} on {VHOST_VSOCK}: {e}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::backend::Accel;

    const QEMU: Backend = Backend::Qemu { accel: Accel::Tcg };
    const QEMU_KVM: Backend = Backend::Qemu { accel: Accel::Kvm };

    fn present() -> Result<(), String> {
        Ok(())
    }

    fn absent() -> Result<(), String> {
        Err("cannot open /dev/vhost-vsock: No such file or directory".into())
    }

    fn pick(choice: VsockChoice, backend: Backend, kernel: Result<(), String>) -> VsockBackend {
        choose(choice, backend, &kernel)
            .unwrap_or_else(|e| panic!("{choice:?} {backend:?}: {e}"))
            .backend
    }

    #[test]
    fn auto_takes_the_kernel_where_the_device_opens() {
        for b in [QEMU, QEMU_KVM] {
            assert_eq!(pick(VsockChoice::Auto, b, present()), VsockBackend::Kernel);
            assert_eq!(
                pick(VsockChoice::Auto, b, absent()),
                VsockBackend::VhostUser
            );
        }
        let d = choose(VsockChoice::Auto, QEMU, &absent()).unwrap();
        assert!(d.reason.contains("does not open"), "{}", d.reason);
    }

    #[test]
    fn vhost_user_is_kept_even_with_the_device() {
        for kernel in [present(), absent()] {
            assert_eq!(
                pick(VsockChoice::VhostUser, QEMU, kernel),
                VsockBackend::VhostUser
            );
        }
    }

    #[test]
    fn kernel_without_the_device_names_the_key() {
        assert_eq!(
            pick(VsockChoice::Kernel, QEMU_KVM, present()),
            VsockBackend::Kernel
        );
        let e = choose(VsockChoice::Kernel, QEMU, &absent()).unwrap_err();
        assert!(e.contains("vm.vsock = \"kernel\""), "{e}");
        assert!(e.contains("/dev/vhost-vsock"), "{e}");
        assert!(e.contains("No such file"), "{e}");
    }

    #[test]
    fn the_builtin_vmm_always_serves_its_own() {
        for choice in [
            VsockChoice::Auto,
            VsockChoice::VhostUser,
            VsockChoice::Kernel,
        ] {
            for kernel in [present(), absent()] {
                assert_eq!(pick(choice, Backend::Kvm, kernel), VsockBackend::InProcess);
            }
        }
        let d = choose(VsockChoice::Kernel, Backend::Kvm, &absent()).unwrap();
        assert!(d.reason.contains("QEMU only"), "{}", d.reason);
    }

    #[test]
    fn probe_names_the_path() {
        let e = probe_kernel_at(Path::new("/nonexistent/vhost-vsock")).unwrap_err();
        assert!(e.contains("/nonexistent/vhost-vsock"), "{e}");
    }
}
