//! The built-in VMM (`vmpod_vmm`) as a `Hypervisor` backend: the VM runs on
//! vCPU threads inside the shim itself, so there is no VMM process to spawn,
//! supervise or lose. Its console is COM1's output through a pipe; its end
//! is reported on the exit channel like a child's, under the shim's own pid,
//! with exit code 0 for a guest reset and the codes of
//! [`ExitReason::exit_code`](vmpod_vmm::ExitReason::exit_code) otherwise.
//!
//! Its devices are what the pod contract needs: the in-process hybrid vsock
//! on the pod's `vm.vsock` socket (the agent channel, no helper process),
//! when asked for, virtio-fs through the vhost-user frontend to the pod's
//! virtiofsd, and the pod's network card on the TAP the shim opened.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::watch;

use super::{BoxFuture, Console, Hypervisor, NetCard, RunningVm, VirtioFs, VmConfig, Vsock};
use crate::process::{Exit, ExitSender};
use vmpod_shim_api::vm_spec::VmmUser;
use vmpod_vmm::devices::virtio::VirtioDevice;
use vmpod_vmm::devices::virtio::fs::{FsConfig, FsDevice};
use vmpod_vmm::devices::virtio::net::NetDevice;
use vmpod_vmm::devices::virtio::net::tap::Tap;
use vmpod_vmm::devices::virtio::vsock::{VsockConfig, VsockDevice};
use vmpod_vmm::privilege::Credentials;
use vmpod_vmm::{self as vmm, BootProtocol, VmmConfig, VmmHandle};

pub const PROCESS_NAME: &str = "kvm";

// The daemon sizes VMs by the limit in shim-api without linking the VMM.
const _: () = assert!(
    vmpod_shim_api::vm_spec::BUILTIN_VMM_MAX_VCPUS == vmpod_vmm::boot::layout::MAX_VCPUS as u32
);

#[derive(Debug, Default)]
pub struct Kvm;

/// The VM's virtio devices, in bus order: vsock, fs, net. The card comes
/// last so that a pod with a network keeps the other devices where a pod
/// without one has them.
fn devices(config: &VmConfig) -> Result<Vec<Box<dyn VirtioDevice>>> {
    // Checked first: a bad TAP fails before the vsock socket is bound.
    let net = config.net.as_ref().map(net_device).transpose()?;
    let mut virtio: Vec<Box<dyn VirtioDevice>> = Vec::new();
    match &config.vsock {
        Vsock::InProcess { guest_cid, uds } => {
            virtio.push(Box::new(VsockDevice::new(VsockConfig {
                guest_cid: u64::from(*guest_cid),
                uds: uds.clone(),
            })?))
        }
        other => bail!("the built-in VMM serves vsock itself, not through {other:?}"),
    }
    if let Some(fs) = &config.fs {
        virtio.push(fs_device(fs)?);
    }
    virtio.extend(net);
    Ok(virtio)
}

/// The device takes its own duplicate of the TAP fd: the config's copy is
/// shared and closes with the config, the device's lives as long as the
/// VM. `Tap::from_fd` checks that it is a TAP with the flags the device's
/// vnet header handling needs, and sets its own header size and offloads.
fn net_device(card: &NetCard) -> Result<Box<dyn VirtioDevice>> {
    let fd = card
        .tap
        .as_ref()
        .context("the network card has no TAP open (a plan, not a VM to start)")?
        .try_clone()
        .context("duplicating the TAP fd for the VMM")?;
    let tap = Tap::from_fd(fd).context("the pod's TAP")?;
    Ok(Box::new(NetDevice::new(tap, Some(card.mac))))
}

/// virtiofsd is already listening (the shim waited for its socket), so a
/// connection failure here is a dead helper, reported before any guest runs.
fn fs_device(fs: &VirtioFs) -> Result<Box<dyn VirtioDevice>> {
    Ok(Box::new(FsDevice::connect(&FsConfig {
        socket: fs.socket.clone(),
        tag: fs.tag.clone(),
    })?))
}

/// The shim's `vm.vmm-user` as the VMM's own type: the VMM knows nothing
/// of vm.json.
fn credentials(user: VmmUser) -> Credentials {
    Credentials {
        uid: user.uid,
        gid: user.gid,
    }
}

/// The backend's command line: `reboot=t` (triple fault, which QEMU's
/// `-no-reboot` turns into a clean exit) becomes `reboot=k`, a reset through
/// the i8042, which this VMM reports as a clean "reset"; a triple fault here
/// means the guest crashed.
pub fn cmdline(base: &str) -> String {
    base.split_whitespace()
        .map(|w| if w == "reboot=t" { "reboot=k" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Hypervisor for Kvm {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn start(&self, config: &VmConfig, exits: ExitSender) -> Result<Box<dyn RunningVm>> {
        let virtio = devices(config)?;
        let vcpus = u8::try_from(config.vcpus)
            .with_context(|| format!("{} vCPUs do not fit the built-in VMM", config.vcpus))?;
        let (console_rx, console_tx) = pipe()?;
        let mut vm = vmm::build(VmmConfig {
            kernel: config.kernel.clone(),
            initramfs: Some(config.initramfs.clone()),
            cmdline: cmdline(&config.cmdline),
            vcpus,
            memory_mib: config.memory_mib,
            serial: Box::new(std::fs::File::from(console_tx)),
            boot: BootProtocol::Auto,
            virtio,
            // The shim stays root (it mounts the containers' roots); its
            // VMM threads lose every capability and, when asked, root
            // (see vmpod_vmm::privilege).
            user: config.vmm_user.map(credentials),
        })?;
        let handle = vm.handle();
        let console = tokio::net::unix::pipe::Receiver::from_owned_fd(console_rx)
            .context("registering the serial console pipe")?;
        let (status_tx, status_rx) = watch::channel(None);
        let diagnostics = Arc::new(Mutex::new(String::new()));
        let diag = diagnostics.clone();
        std::thread::Builder::new()
            .name("vmm-wait".into())
            .spawn(move || {
                let reason = vm.wait();
                // Closes the console pipe: readers see EOF after the last byte.
                drop(vm);
                let status = ExitStatus::from_raw(reason.exit_code() << 8);
                tracing::info!(process = PROCESS_NAME, "VM ended: {reason}");
                *diag.lock().unwrap_or_else(|e| e.into_inner()) = reason.to_string();
                status_tx.send_replace(Some(status));
                let _ = exits.send(Exit {
                    name: PROCESS_NAME.into(),
                    pid: std::process::id(),
                    status,
                });
            })
            .context("spawning the VMM wait thread")?;
        Ok(Box::new(KvmVm {
            handle,
            status: status_rx,
            console: Some(Box::pin(console)),
            diagnostics,
        }))
    }
}

/// A close-on-exec pipe; the read end non-blocking for tokio.
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating the console pipe");
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on an fd we own.
    if unsafe { libc::fcntl(fds[0], libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("making the console pipe non-blocking");
    }
    Ok((rx, tx))
}

struct KvmVm {
    handle: VmmHandle,
    status: watch::Receiver<Option<ExitStatus>>,
    console: Option<Console>,
    diagnostics: Arc<Mutex<String>>,
}

impl RunningVm for KvmVm {
    fn pid(&self) -> u32 {
        std::process::id()
    }

    fn process_name(&self) -> &str {
        PROCESS_NAME
    }

    fn take_console(&mut self) -> Option<Console> {
        self.console.take()
    }

    fn stop(&self, _grace: Duration) -> BoxFuture<'_, ExitStatus> {
        // Without ACPI there is no power button to press; like QEMU on
        // SIGTERM the VM stops at once, and every vCPU thread is joined
        // before the status is published.
        self.handle.stop();
        let mut status = self.status.clone();
        Box::pin(async move {
            match status.wait_for(Option::is_some).await {
                Ok(s) => s.unwrap_or_else(|| ExitStatus::from_raw(libc::SIGKILL)),
                Err(_) => ExitStatus::from_raw(libc::SIGKILL),
            }
        })
    }

    fn diagnostics(&self) -> String {
        self.diagnostics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_card_must_be_an_open_tap() {
        use std::path::PathBuf;
        let dir = tempfile::tempdir().expect("tempdir");
        let null = OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null"));
        let mut config = VmConfig {
            name: "test".into(),
            kernel: PathBuf::from("/nonexistent"),
            initramfs: PathBuf::from("/nonexistent"),
            cmdline: super::super::BASE_CMDLINE.into(),
            vcpus: 1,
            memory_mib: 64,
            vsock: Vsock::InProcess {
                guest_cid: 3,
                uds: dir.path().join("vm.vsock"),
            },
            fs: None,
            log: dir.path().join("kvm.log"),
            vmm_user: None,
            net: Some(NetCard {
                tap: Some(Arc::new(null)),
                mac: "02:00:00:00:00:01".parse().expect("MAC"),
                vhost_net: false,
            }),
        };
        let e = format!("{:#}", devices(&config).err().expect("not a TAP"));
        assert!(e.contains("the pod's TAP: not a TAP device"), "{e}");
        assert!(
            !dir.path().join("vm.vsock").exists(),
            "the vsock socket was bound before the TAP was checked"
        );
        if let Some(card) = config.net.as_mut() {
            card.tap = None;
        }
        let e = format!("{:#}", devices(&config).err().expect("no TAP"));
        assert!(e.contains("no TAP open"), "{e}");
    }

    #[test]
    fn reboot_goes_through_the_i8042() {
        assert_eq!(
            cmdline(super::super::BASE_CMDLINE),
            "console=ttyS0 reboot=k panic=-1 quiet"
        );
    }
}
