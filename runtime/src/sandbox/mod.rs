//! Pod sandboxes: each one a microVM owned by a `vmpod-shim`.
//!
//! The CRI calls in `cri/sandbox/` translate requests into operations here
//! (`boot.rs` for RunPodSandbox). The redb record is the truth that survives
//! restarts; `registry.rs` holds the in-memory parts: a lock per sandbox so
//! that Stop and Remove of the same pod never interleave, and a monitor per
//! ready pod that turns it NOTREADY the moment its VM or shim dies.

pub mod boot;
pub mod cgroup;
pub mod cid;
pub mod host_stats;
pub mod monitor;
pub mod recover;
pub mod registry;
pub mod resources;
pub mod shim;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::daemon::Daemon;
use crate::network::attachment;
use crate::state::{NetworkRecord, SandboxRecord, SandboxState, Store};

/// Where pod dirs live under the state dir.
pub const PODS_DIR: &str = "pods";

/// Grace the guest gets on stop before its VMM is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Pod dirs are named by the first 16 hex digits (64 bits) of the sandbox
/// id: the VMM's vhost-user and vsock sockets live inside, and unix socket
/// paths are limited to 107 bytes. RunPodSandbox creates the dir
/// exclusively, so a prefix collision fails instead of sharing a dir.
pub const POD_DIR_ID_LEN: usize = 16;

/// Longest path below a pod dir that becomes a unix socket
/// (`run/vm.vsock_<port>`), with room for a 5-digit port.
const LONGEST_SOCKET_SUFFIX: usize = "/run/vm.vsock_65535".len();

/// The longest state dir whose pod sockets still fit in `sun_path`.
pub const MAX_STATE_DIR_LEN: usize =
    107 - LONGEST_SOCKET_SUFFIX - POD_DIR_ID_LEN - PODS_DIR.len() - 2;

pub fn pod_dir(state_dir: &Path, id: &str) -> PathBuf {
    state_dir
        .join(PODS_DIR)
        .join(&id[..id.len().min(POD_DIR_ID_LEN)])
}

/// Stops the VM and releases host resources that only live while it runs
/// (cgroup leaves). Leaves the record and the pod dir (its logs) in place.
pub async fn stop_vm(rec: &SandboxRecord) -> Vec<String> {
    shim::stop(&rec.pod_dir, rec.vm.shim_pid, STOP_GRACE).await;
    let dirs = rec.cgroups.clone();
    tokio::task::spawn_blocking(move || cgroup::remove(&dirs))
        .await
        .unwrap_or_else(|e| vec![format!("cgroup cleanup task failed: {e}")])
}

/// Deletes the pod dir. Refuses paths outside the state dir's pods dir, so
/// a corrupt record can never make the daemon delete anything else.
pub fn remove_pod_dir(state_dir: &Path, rec: &SandboxRecord) -> Result<(), String> {
    let expected = pod_dir(state_dir, &rec.id);
    if rec.pod_dir != expected {
        return Err(format!(
            "sandbox {} records pod dir {}, expected {}; not deleting it",
            rec.id,
            rec.pod_dir.display(),
            expected.display()
        ));
    }
    // A shim that was killed cannot have released its mounts (the share's
    // bind mount, container roots, writable layers); deleting through them
    // must not happen.
    vmpod_shim_api::mounts::remove_unmounted(&expected).map_err(|e| format!("{e:#}"))
}

/// Undoes a sandbox that never became ready, after a failed boot or one
/// cut short by a daemon crash: VM, network, cgroups, pod dir, record.
/// Failures are logged; there is no caller left to report them to.
pub async fn teardown(daemon: &Daemon, rec: &SandboxRecord) {
    for e in stop_vm(rec).await {
        tracing::warn!(sandbox = %rec.id, error = %e, "teardown");
    }
    let pending = match release_network(daemon, rec).await {
        Ok(()) => None,
        Err(e) => {
            tracing::warn!(sandbox = %rec.id, error = %e, "teardown: CNI DEL failed; retried at daemon start");
            rec.network.as_ref()
        }
    };
    if let Err(e) = remove_pod_dir(daemon.config.state_dir.as_path(), rec) {
        tracing::warn!(sandbox = %rec.id, error = %e, "teardown");
    }
    forget(daemon, rec, pending);
}

/// Deletes the record, keeping an attachment whose DEL is still owed in
/// the pending table (whose netns goes now: it must not outlive the pod).
pub fn forget(daemon: &Daemon, rec: &SandboxRecord, pending: Option<&NetworkRecord>) {
    if let Err(e) = daemon.store.delete_sandbox(&rec.id, pending) {
        tracing::error!(sandbox = %rec.id, error = %e, "cannot delete the sandbox record");
    }
    daemon.sandboxes.forget(&rec.id);
}

/// Runs CNI DEL for the pod's attachment, if it has one, and removes its
/// netns; on success the record no longer holds it. On failure the record
/// keeps it for a retry and the error is returned.
pub async fn release_network(daemon: &Daemon, rec: &SandboxRecord) -> Result<(), String> {
    let Some(net) = &rec.network else {
        return Ok(());
    };
    match attachment::detach(&daemon.config.cni, net).await {
        Ok(()) => {
            daemon
                .store
                .update_sandbox(&rec.id, |r| r.network.take().is_some())
                .map_err(|e| e.to_string())?;
            tracing::info!(sandbox = %rec.id, ips = ?net.ips, "pod network released");
            Ok(())
        }
        Err(e) => {
            // Without its netns a pod leaks nothing a later DEL cannot
            // find: the plugins' state is keyed by the sandbox id.
            if let Err(e) = attachment::remove_netns(net).await {
                tracing::warn!(sandbox = %rec.id, error = %e, "cannot remove the pod netns");
            }
            Err(e)
        }
    }
}

/// Retries the DELs that RemovePodSandbox (or a failed boot) left to the
/// pending table; called at daemon start.
pub async fn retry_pending_networks(daemon: &Daemon) {
    let pending = match daemon.store.list_pending_networks() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot list pending CNI DELs");
            return;
        }
    };
    for net in pending {
        match attachment::detach(&daemon.config.cni, &net).await {
            Ok(()) => {
                tracing::info!(sandbox = %net.sandbox_id, "pending CNI DEL done");
                if let Err(e) = daemon.store.forget_pending_network(&net.sandbox_id) {
                    tracing::error!(sandbox = %net.sandbox_id, error = %e, "cannot drop a done CNI DEL");
                }
            }
            Err(e) => {
                tracing::warn!(sandbox = %net.sandbox_id, error = %e, "pending CNI DEL failed again; retried at the next start");
            }
        }
    }
}

/// Marks a sandbox NOTREADY unless it is gone or already not ready.
pub fn mark_not_ready(store: &Store, id: &str, reason: &str) {
    let result = store.update_sandbox(id, |rec| {
        if rec.state == SandboxState::Ready {
            rec.state = SandboxState::NotReady;
            rec.reason = reason.to_string();
            true
        } else {
            false
        }
    });
    match result {
        Ok(true) => tracing::warn!(sandbox = id, reason, "sandbox not ready"),
        Ok(false) => {}
        Err(e) => tracing::error!(sandbox = id, error = %e, "cannot record sandbox state"),
    }
}
