//! The vhost-user daemons a VM's devices are backed by: virtiofsd for the pod
//! share, and vhost-device-vsock where the host has no `/dev/vhost-vsock`.
//!
//! Each is a child of the shim, logs to `run/<name>.log`, and counts as
//! started once its listening socket exists: QEMU connects to it at start-up
//! and fails if it is not there yet. Both face the guest, so both start
//! confined (`confine.rs`): vhost-device-vsock as the unprivileged VMM user
//! under an allow-list, virtiofsd as root with a reduced capability set in
//! its own namespaces, under its allow-list and ours.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;
use tokio::time::Instant;
use vmpod_shim_api::vm_spec::VmmUser;

use crate::confine::{self, Confinement};
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
        .arg("--cache=never")
        // Its own defaults, stated because the pod depends on them: a
        // pid/mount/net namespace pivoted into the share, and its own
        // allow-list (kill on anything else).
        .arg("--sandbox=namespace")
        .arg("--seccomp=kill")
        // Volumes are mounts under the share: the guest sees each as its
        // own file system, so inode numbers of two host file systems never
        // collide in the guest.
        .arg("--announce-submounts")
        // O_PATH fds rather than file handles: handles need
        // CAP_DAC_READ_SEARCH and open_by_handle_at, which reach any inode
        // of the file system the share lives on, outside the sandbox's
        // root. With `never` virtiofsd keeps neither.
        .arg("--inode-file-handles=never")
        // Of the capabilities it keeps to serve files of any owner, the
        // guest needs neither device nodes on the host (CAP_MKNOD; FIFOs
        // and sockets need none) nor file capabilities (CAP_SETFCAP;
        // xattrs are off anyway). What remains: CHOWN, DAC_OVERRIDE,
        // FOWNER, FSETID, SETGID, SETUID.
        .arg("--modcaps=-mknod:-setfcap");
    // No `--xattr`: nothing in a pod needs extended attributes through the
    // share (overlayfs keeps its own on the host side, below virtiofsd),
    // and without them the guest can set no security.* or trusted.*
    // attribute on host files.
    cmd
}

/// virtiofsd stays root (it serves files of every owner and sets up its
/// own namespaces); before exec it gets no_new_privs and the deny-list.
/// What its namespace sandbox, capability set and allow-list leave open is
/// its own business; the deny-list covers the outer process, which keeps
/// none of its own.
pub fn virtiofsd_confinement() -> Result<Confinement> {
    Ok(Confinement::new().filter(confine::deny_list(false)?))
}

/// The raw command, with absolute paths, for `vmpod bench`'s baseline and
/// anything else that runs it unconfined.
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

/// vhost-device-vsock as the pod runs it: as `user` without capabilities,
/// in `run/` with relative socket paths (the directories above are
/// root-only), sockets for its owner only, and its allow-list. argv[0]
/// names the pod's run dir, so the process is found by it as before.
pub fn vhost_device_vsock_confined(
    binary: &Path,
    pod: &PodDir,
    guest_cid: u32,
    user: VmmUser,
) -> Result<(Command, Confinement)> {
    let mut confinement = Confinement::new().cwd(&pod.run())?.user(user)?.umask(0o077);
    for program in confine::vsock_allow_list()? {
        confinement = confinement.filter(program);
    }
    let program = confinement.exec_by_fd(binary)?;
    let file = |p: std::path::PathBuf| -> Result<std::ffi::OsString> {
        p.file_name()
            .map(|n| n.to_os_string())
            .with_context(|| format!("{} has no file name", p.display()))
    };
    let mut cmd = Command::new(program);
    cmd.arg0(format!("{VHOST_DEVICE_VSOCK}@{}", pod.run().display()))
        .arg("--guest-cid")
        .arg(guest_cid.to_string())
        .arg("--socket")
        .arg(file(pod.vsock_backend_socket())?)
        .arg("--uds-path")
        .arg(file(pod.hybrid_vsock())?);
    Ok((cmd, confinement))
}

/// Lets `user`'s group create the vsock helper's sockets in `run/`: owner
/// root, group `user.gid`, `rwx` for both, and the sticky bit, so the
/// helper can remove only what it created (not virtiofsd's socket or the
/// logs). The directories above stay root-only, so another pod's
/// processes, which share the uid, cannot reach it by path.
pub fn open_run_dir_to(pod: &PodDir, user: VmmUser) -> Result<()> {
    let run = pod.run();
    std::os::unix::fs::lchown(&run, Some(0), Some(user.gid))
        .with_context(|| format!("chown root:{} {}", user.gid, run.display()))?;
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o1770))
        .with_context(|| format!("chmod 1770 {}", run.display()))
}

/// Spawns a helper. A stale socket from an earlier run is removed first, so
/// that the socket's presence later means this helper is up.
pub fn spawn(
    name: &str,
    mut cmd: Command,
    confinement: Confinement,
    socket: &Path,
    pod: &PodDir,
    exits: ExitSender,
) -> Result<Process> {
    remove_stale(socket)?;
    let (out, err) = log_file(&pod.process_log(name))?;
    cmd.stdout(out).stderr(err);
    let (process, _) = Process::spawn_confined(name, cmd, exits, Some(confinement))?;
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
