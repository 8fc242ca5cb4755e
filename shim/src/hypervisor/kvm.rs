//! The built-in VMM (`crate::vmm`) as a `Hypervisor` backend: the VM runs on
//! vCPU threads inside the shim itself, so there is no VMM process to spawn,
//! supervise or lose. Its console is COM1's output through a pipe; its end
//! is reported on the exit channel like a child's, under the shim's own pid,
//! with exit code 0 for a guest reset and the codes of
//! [`ExitReason::exit_code`](crate::vmm::ExitReason::exit_code) otherwise.
//!
//! Not wired into the pod path yet: the guest device contract needs
//! virtio-vsock and virtio-fs, which the VMM does not have in this
//! milestone. [`MissingDevices::Refuse`] (the default) makes `start` say so
//! instead of booting a guest whose agent can never be reached;
//! [`MissingDevices::Ignore`] boots without them, for tests and benchmarks
//! of the boot path.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::watch;

use super::{BoxFuture, Console, Hypervisor, RunningVm, VmConfig};
use crate::process::{Exit, ExitSender};
use crate::vmm::{self, BootProtocol, VmmConfig, VmmHandle};

pub const PROCESS_NAME: &str = "kvm";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingDevices {
    /// Refuse to start a VM that asks for vsock / virtio-fs.
    #[default]
    Refuse,
    /// Boot without them (boot-path tests and benchmarks).
    Ignore,
}

#[derive(Debug, Default)]
pub struct Kvm {
    pub missing_devices: MissingDevices,
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
        if self.missing_devices == MissingDevices::Refuse {
            bail!(
                "the built-in KVM VMM has no virtio-vsock or virtio-fs yet, which a pod's agent \
                 needs; use a qemu backend"
            );
        }
        tracing::warn!(
            vsock = ?config.vsock,
            fs = ?config.fs,
            "built-in VMM: booting without the requested virtio devices"
        );
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
            virtio: Vec::new(),
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
    fn reboot_goes_through_the_i8042() {
        assert_eq!(
            cmdline(super::super::BASE_CMDLINE),
            "console=ttyS0 reboot=k panic=-1 quiet"
        );
    }
}
