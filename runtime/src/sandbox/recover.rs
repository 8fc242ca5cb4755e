//! Restart recovery: make the host match the records after the daemon was
//! killed, possibly in the middle of a RunPodSandbox.
//!
//! - `Creating`: the attempt died with the daemon. Kill its shim (if any),
//!   remove its cgroups, pod dir and record, as the failed call would have.
//! - `Ready`: reconnect to the shim and watch it again; if the shim is gone
//!   the sandbox is NOTREADY.
//! - Containers still `Creating`: the CreateContainer died with the daemon;
//!   whatever the shim made for it is removed, then the record. Containers
//!   of sandboxes that are gone lose their records.
//! - Pod dirs without a record (a crash between delete steps) are removed
//!   once no live shim uses them.
//! - Every record's vsock CID is held again before anything else happens,
//!   so no new pod can be given the CID of a VM that is still running.
//! - Pod networks still attached to stopped pods, and DELs left pending by
//!   a RemovePodSandbox, are released (CNI DEL with the recorded result).

use std::sync::Arc;

use super::registry::Registry;
use super::{mark_not_ready, monitor, shim};
use crate::daemon::Daemon;
use crate::state::{ContainerState, SandboxRecord, SandboxState};

pub async fn recover(daemon: &Arc<Daemon>) -> Result<(), String> {
    let records = daemon.store.list_sandboxes().map_err(|e| e.to_string())?;
    reserve_cids(&daemon.sandboxes, &records);
    let mut known = std::collections::HashSet::new();
    for rec in records {
        known.insert(rec.pod_dir.clone());
        match rec.state {
            SandboxState::Creating => {
                tracing::warn!(sandbox = %rec.id, "cleaning up a sandbox whose creation was interrupted");
                super::teardown(daemon, &rec).await;
            }
            SandboxState::Ready if shim::is_shim_of(rec.vm.shim_pid, &rec.pod_dir) => {
                tracing::info!(sandbox = %rec.id, pid = rec.vm.shim_pid, "reconnecting to shim");
                monitor::start(daemon, &rec);
            }
            SandboxState::Ready => {
                mark_not_ready(
                    &daemon.store,
                    &rec.id,
                    "shim exited while the daemon was down",
                );
            }
            SandboxState::NotReady => {}
        }
        // A stopped pod whose DEL failed (or a Ready one whose shim died
        // with the daemon) still holds its attachment; Remove would retry,
        // but kubelet may not call it soon, and the lease is held meanwhile.
        if let Some(current) = daemon
            .store
            .get_sandbox(&rec.id)
            .map_err(|e| e.to_string())?
            && current.state == SandboxState::NotReady
            && current.network.is_some()
            && let Err(e) = super::release_network(daemon, &current).await
        {
            tracing::warn!(sandbox = %rec.id, error = %e, "CNI DEL failed; retried on remove");
        }
    }
    super::retry_pending_networks(daemon).await;
    recover_containers(daemon).await?;
    let pods = daemon.config.state_dir.as_path().join(super::PODS_DIR);
    let Ok(entries) = std::fs::read_dir(&pods) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if known.contains(&dir) {
            continue;
        }
        let pid = std::fs::read_to_string(dir.join(vmpod_shim_api::layout::SHIM_PID))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if shim::is_shim_of(pid, &dir) {
            tracing::warn!(dir = %dir.display(), pid, "stopping orphaned shim");
            shim::stop(&dir, pid, super::STOP_GRACE).await;
        }
        tracing::warn!(dir = %dir.display(), "removing orphaned pod dir");
        if let Err(e) = vmpod_shim_api::mounts::remove_unmounted(&dir) {
            tracing::warn!(dir = %dir.display(), error = %format!("{e:#}"), "cannot remove orphaned pod dir");
        }
    }
    Ok(())
}

/// Re-reserves the records' CIDs; a `Creating` record's is released again by
/// its teardown. A conflict can only come from a corrupt record: it is
/// logged, and the first record keeps the CID.
fn reserve_cids(registry: &Registry, records: &[SandboxRecord]) {
    for rec in records {
        if let Some(cid) = rec.vsock_cid
            && let Err(e) = registry.reserve_cid(&rec.id, cid)
        {
            tracing::warn!(sandbox = %rec.id, error = %e, "cannot re-reserve the vsock CID");
        }
    }
}

async fn recover_containers(daemon: &Arc<Daemon>) -> Result<(), String> {
    let containers = daemon.store.list_containers().map_err(|e| e.to_string())?;
    for c in containers {
        let sandbox = daemon
            .store
            .get_sandbox(&c.sandbox_id)
            .map_err(|e| e.to_string())?;
        let Some(sandbox) = sandbox else {
            tracing::warn!(container = %c.id, "removing the record of a container whose sandbox is gone");
            daemon
                .store
                .delete_container(&c.id)
                .map_err(|e| e.to_string())?;
            continue;
        };
        if c.state != ContainerState::Creating {
            continue;
        }
        tracing::warn!(container = %c.id, "cleaning up a container whose creation was interrupted");
        if sandbox.state == SandboxState::Ready
            && let Ok(mut client) = crate::container::shim_client(&sandbox).await
            && let Err(e) = client
                .remove_container(vmpod_agent_proto::v1::ContainerRef { id: c.id.clone() })
                .await
            && e.code() != tonic::Code::NotFound
        {
            tracing::warn!(container = %c.id, error = %e.message(), "cannot remove an interrupted container");
        }
        daemon
            .store
            .delete_container(&c.id)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::state::{Metadata, VmRecord};

    fn rec(id: &str, cid: Option<u32>) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            metadata: Metadata {
                name: id.into(),
                uid: "u".into(),
                namespace: "ns".into(),
                attempt: 0,
            },
            state: SandboxState::Ready,
            created_at: 1,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            runtime_handler: String::new(),
            hostname: id.into(),
            log_directory: String::new(),
            pod_dir: PathBuf::from("/x"),
            cgroups: vec![],
            namespace_modes: [0; 3],
            sysctls: BTreeMap::new(),
            vsock_cid: cid,
            vm: VmRecord::default(),
            event_seq: 0,
            reason: String::new(),
            network: None,
        }
    }

    #[test]
    fn recorded_cids_are_held_again_after_a_restart() {
        let registry = Registry::default();
        reserve_cids(
            &registry,
            &[
                rec("a", Some(3)),
                rec("old", None),
                rec("b", Some(7)),
                // Corrupt: the same CID twice. The first record keeps it.
                rec("dup", Some(3)),
                rec("bad", Some(u32::MAX)),
            ],
        );
        let fresh: Vec<u32> = (0..5)
            .map(|i| registry.allocate_cid(&format!("new{i}"), false).unwrap())
            .collect();
        assert!(!fresh.contains(&3) && !fresh.contains(&7), "{fresh:?}");
        assert!(fresh.iter().all(|&c| c > 7), "{fresh:?}");
        // Removing a sandbox (forget) frees its CID for later allocations.
        registry.forget("a");
        registry.forget("dup");
        assert!(registry.reserve_cid("c", 3).is_ok());
        assert!(registry.reserve_cid("d", 7).is_err(), "b still holds 7");
    }
}
