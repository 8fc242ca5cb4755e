//! The vhost-user daemons a VM's devices are backed by: virtiofsd for the pod
//! share, and vhost-device-vsock where the host has no `/dev/vhost-vsock`.
//!
//! Each is a child of the shim, logs to `run/<name>.log`, and counts as
//! started once its listening socket exists: QEMU connects to it at start-up
//! and fails if it is not there yet.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::process::Command;
use tokio::time::Instant;

use crate::pod_dir::PodDir;
use crate::process::{ExitSender, Process, describe, log_file, log_tail};

pub const VIRTIOFSD: &str = "virtiofsd";
pub const VHOST_DEVICE_VSOCK: &str = "vhost-device-vsock";

/// How long a helper may take to create its socket.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

pub fn virtiofsd_command(binary: &Path, pod: &PodDir) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("--socket-path")
        .arg(pod.virtiofs_socket())
        .arg("--shared-dir")
        .arg(pod.share())
        // The guest sees host-side changes (the daemon writes rootfs and
        // volumes into the share) without a stale cache.
        .arg("--cache=never");
    cmd
}

pub fn vhost_device_vsock_command(binary: &Path, pod: &PodDir, guest_cid: u32) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("--guest-cid")
        .arg(guest_cid.to_string())
        .arg("--socket")
        .arg(pod.vsock_backend_socket())
        .arg("--uds-path")
        .arg(pod.hybrid_vsock());
    cmd
}

/// Spawns a helper. A stale socket from an earlier run is removed first, so
/// that the socket's presence later means this helper is up.
pub fn spawn(
    name: &str,
    mut cmd: Command,
    socket: &Path,
    pod: &PodDir,
    exits: ExitSender,
) -> Result<Process> {
    remove_stale(socket)?;
    let (out, err) = log_file(&pod.process_log(name))?;
    cmd.stdout(out).stderr(err);
    let (process, _) = Process::spawn(name, cmd, exits)?;
    Ok(process)
}

/// Waits until `helper` created `socket`; fails with its log tail when it
/// exits first or takes longer than `SOCKET_TIMEOUT`. The caller owns the
/// process and tears it down on failure.
pub async fn wait_for_socket(helper: &Process, socket: &Path, pod: &PodDir) -> Result<()> {
    let name = helper.name();
    let log = pod.process_log(name);
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    loop {
        if socket.exists() {
            return Ok(());
        }
        if let Some(status) = helper.status() {
            bail!(
                "{name} exited before creating {} ({}): {}",
                socket.display(),
                describe(status),
                log_tail(&log, 2048)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{name} did not create {} within {SOCKET_TIMEOUT:?}: {}",
                socket.display(),
                log_tail(&log, 2048)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn remove_stale(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => bail!("removing stale {}: {e}", path.display()),
    }
}
