//! Persisted pod sandbox records.
//!
//! A record is written before anything is started for a pod (state
//! `Creating`), so a daemon that crashes mid-RunPodSandbox finds it on
//! restart and cleans up what that attempt left behind. The name index makes
//! the duplicate-name check and the insert one transaction.

use std::collections::BTreeMap;
use std::path::PathBuf;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::store::{Store, StoreError, decode, encode};

pub(super) const SANDBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("sandboxes");
pub(super) const SANDBOX_NAMES: TableDefinition<&str, &str> = TableDefinition::new("sandbox_names");
/// CNI attachments whose DEL failed after their sandbox was removed:
/// RemovePodSandbox never waits on a broken plugin, and the daemon retries
/// these at start until DEL succeeds.
pub(super) const PENDING_NETWORKS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("pending_networks");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxState {
    /// RunPodSandbox is in progress (or crashed while it was).
    Creating,
    Ready,
    NotReady,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

impl Metadata {
    /// The identity kubelet must not reuse while a sandbox exists.
    pub fn key(&self) -> String {
        format!(
            "{}\u{0}{}\u{0}{}\u{0}{}",
            self.name, self.namespace, self.uid, self.attempt
        )
    }
}

/// The VM as the shim reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub backend: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub shim_pid: u32,
    pub vmm_pid: u32,
    /// Boot phases in ns since the epoch: shim start, VMM spawned, kernel
    /// entry, agent ready.
    pub boot_ns: [u64; 4],
}

/// A pod's CNI attachment: what DEL needs to undo ADD exactly, kept from
/// before the netns exists until DEL succeeds. The JSON documents are kept
/// as text, as they were sent and received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// The sandbox it belongs to: the CNI container id.
    pub sandbox_id: String,
    /// The named netns, `/run/netns/vmpod-…`.
    pub netns: PathBuf,
    /// The CNI interface in the netns (`eth0`).
    pub ifname: String,
    /// The TAP joined to it, which the VM's card reads and writes.
    pub tap: String,
    /// The conflist ADD ran (`name`, `cniVersion`, `plugins`).
    pub conflist: String,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
    /// Capability args (`portMappings`, `dns`) as a JSON object.
    pub capability_args: String,
    /// Whether the loopback plugin was run on `lo` too.
    pub loopback: bool,
    /// The chain's final ADD result, once ADD succeeded: DEL's `prevResult`.
    pub result: Option<String>,
    /// The pod's IPs from the result, primary first.
    pub ips: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub metadata: Metadata,
    pub state: SandboxState,
    /// ns since the epoch.
    pub created_at: i64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub runtime_handler: String,
    pub hostname: String,
    pub log_directory: String,
    /// The pod dir under the state dir, owned by the shim.
    pub pod_dir: PathBuf,
    /// Host cgroup dirs created for the pod's processes.
    pub cgroups: Vec<PathBuf>,
    /// The CRI NamespaceOption modes (network, pid, ipc) as given.
    pub namespace_modes: [i32; 3],
    /// `linux.sysctls` of the pod, applied to each of its containers.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// The guest's vsock CID, allocated before the record is first written
    /// and held until it is deleted; restart recovery re-reserves it from
    /// here. `None` in records of daemons that gave every guest CID 3.
    #[serde(default)]
    pub vsock_cid: Option<u32>,
    pub vm: VmRecord,
    /// The sequence number of the last shim container event applied to
    /// the records, so a restarted daemon resumes the stream after it.
    #[serde(default)]
    pub event_seq: u64,
    /// Why the sandbox is not ready, when it is not.
    pub reason: String,
    /// The CNI attachment, while one exists; `None` for host-network pods
    /// and once DEL succeeded.
    #[serde(default)]
    pub network: Option<NetworkRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("a sandbox with this name already exists: {0}")]
    Exists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Inserts a new record unless its metadata identity is taken.
    pub fn reserve_sandbox(&self, rec: &SandboxRecord) -> Result<(), ReserveError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut names = tx.open_table(SANDBOX_NAMES).map_err(|e| self.err(e))?;
            let key = rec.metadata.key();
            if let Some(existing) = names.get(key.as_str()).map_err(|e| self.err(e))? {
                return Err(ReserveError::Exists(existing.value().to_string()));
            }
            names
                .insert(key.as_str(), rec.id.as_str())
                .map_err(|e| self.err(e))?;
            let mut table = tx.open_table(SANDBOXES).map_err(|e| self.err(e))?;
            table
                .insert(rec.id.as_str(), encode(rec)?.as_slice())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Overwrites an existing record.
    pub fn put_sandbox(&self, rec: &SandboxRecord) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = tx.open_table(SANDBOXES).map_err(|e| self.err(e))?;
            table
                .insert(rec.id.as_str(), encode(rec)?.as_slice())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Applies `f` to the record in one transaction; absent records are left
    /// absent (a monitor must never resurrect a removed sandbox). Returns
    /// whether `f` reported a change.
    pub fn update_sandbox(
        &self,
        id: &str,
        f: impl FnOnce(&mut SandboxRecord) -> bool,
    ) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let changed = {
            let mut table = tx.open_table(SANDBOXES).map_err(|e| self.err(e))?;
            let current = table
                .get(id)
                .map_err(|e| self.err(e))?
                .map(|v| decode(v.value()));
            match current {
                None => false,
                Some(rec) => {
                    let mut rec = rec?;
                    let changed = f(&mut rec);
                    if changed {
                        table
                            .insert(id, encode(&rec)?.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    changed
                }
            }
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(changed)
    }

    pub fn get_sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        self.get_json(SANDBOXES, id)
    }

    pub fn list_sandboxes(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        self.list_json(SANDBOXES)
    }

    /// Deletes the record and frees its name; absent ids are fine. In the
    /// same transaction `pending`, an attachment whose DEL is still owed,
    /// goes to the pending table, so no crash can lose it.
    pub fn delete_sandbox(
        &self,
        id: &str,
        pending: Option<&NetworkRecord>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        if let Some(net) = pending {
            let mut pending = tx.open_table(PENDING_NETWORKS).map_err(|e| self.err(e))?;
            pending
                .insert(id, encode(net)?.as_slice())
                .map_err(|e| self.err(e))?;
        }
        {
            let mut table = tx.open_table(SANDBOXES).map_err(|e| self.err(e))?;
            let old = table.remove(id).map_err(|e| self.err(e))?;
            if let Some(old) = old {
                let rec: SandboxRecord = decode(old.value())?;
                drop(old);
                let mut names = tx.open_table(SANDBOX_NAMES).map_err(|e| self.err(e))?;
                names
                    .remove(rec.metadata.key().as_str())
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }
}

impl Store {
    pub fn list_pending_networks(&self) -> Result<Vec<NetworkRecord>, StoreError> {
        self.list_json(PENDING_NETWORKS)
    }

    pub fn forget_pending_network(&self, sandbox_id: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut pending = tx.open_table(PENDING_NETWORKS).map_err(|e| self.err(e))?;
            pending.remove(sandbox_id).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, name: &str) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            metadata: Metadata {
                name: name.into(),
                uid: "u".into(),
                namespace: "ns".into(),
                attempt: 0,
            },
            state: SandboxState::Creating,
            created_at: 1,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            runtime_handler: String::new(),
            hostname: name.into(),
            log_directory: String::new(),
            pod_dir: PathBuf::from("/x"),
            cgroups: vec![],
            namespace_modes: [0; 3],
            sysctls: BTreeMap::new(),
            vsock_cid: Some(3),
            vm: VmRecord::default(),
            event_seq: 0,
            reason: String::new(),
            network: None,
        }
    }

    #[test]
    fn reserve_rejects_duplicate_names_and_delete_frees_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.reserve_sandbox(&rec("a", "pod")).unwrap();
        match store.reserve_sandbox(&rec("b", "pod")) {
            Err(ReserveError::Exists(id)) => assert_eq!(id, "a"),
            other => panic!("{other:?}"),
        }
        store.reserve_sandbox(&rec("c", "other")).unwrap();
        let mut r = rec("a", "pod");
        r.state = SandboxState::Ready;
        store.put_sandbox(&r).unwrap();
        assert_eq!(
            store.get_sandbox("a").unwrap().unwrap().state,
            SandboxState::Ready
        );
        assert_eq!(store.list_sandboxes().unwrap().len(), 2);
        store.delete_sandbox("a", None).unwrap();
        store.delete_sandbox("a", None).unwrap();
        assert!(store.get_sandbox("a").unwrap().is_none());
        store.reserve_sandbox(&rec("d", "pod")).unwrap();
    }

    /// Records written before the CID existed still load, and a record that
    /// has one keeps it through the store.
    #[test]
    fn vsock_cid_is_optional_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut json = serde_json::to_value(rec("old", "pod")).unwrap();
        json.as_object_mut().unwrap().remove("vsock_cid");
        let old: SandboxRecord = decode(&serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(old.vsock_cid, None);
        let mut r = rec("new", "other");
        r.vsock_cid = Some(70000);
        store.reserve_sandbox(&r).unwrap();
        assert_eq!(
            store.get_sandbox("new").unwrap().unwrap().vsock_cid,
            Some(70000)
        );
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.reserve_sandbox(&rec("a", "pod")).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.list_sandboxes().unwrap()[0].id, "a");
    }
}
