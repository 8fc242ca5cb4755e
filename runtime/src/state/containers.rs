//! Persisted container records.
//!
//! The agent in the pod's VM is the truth about a live container (its pid,
//! whether it still runs); the record holds what CRI asked for and the last
//! state seen, so that a container whose VM died, or that exited while the
//! daemon was down, still reports how it ended. A terminal state, once
//! recorded, never changes again.
//!
//! The name index makes the duplicate-name check (name and attempt within a
//! sandbox, as kubelet uses them) and the insert one transaction.

use std::collections::BTreeMap;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::store::{Store, StoreError, decode, encode};

pub(super) const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
pub(super) const CONTAINER_NAMES: TableDefinition<&str, &str> =
    TableDefinition::new("container_names");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerState {
    /// CreateContainer is in progress (or crashed while it was).
    Creating,
    Created,
    Running,
    Exited,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMetadata {
    pub name: String,
    pub attempt: u32,
}

/// One CRI mount as the client gave it, reported back by ContainerStatus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub propagation: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub metadata: ContainerMetadata,
    /// The image as the client named it.
    pub image: String,
    /// The image id (config digest).
    pub image_id: String,
    /// A digest reference of the image (`repo@sha256:…`), if known.
    pub image_ref: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Absolute host path of the CRI log file; empty for none.
    pub log_path: String,
    pub mounts: Vec<MountRecord>,
    /// The stop signal from the image config, 0 for SIGTERM.
    pub stop_signal: i32,
    /// The resources as last applied, for ContainerStatus (CRI JSON form).
    pub resources: Option<serde_json::Value>,
    pub state: ContainerState,
    /// ns since the epoch; 0 until reached.
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    /// "Completed", "Error", "OOMKilled" once exited.
    pub reason: String,
    pub message: String,
}

impl ContainerRecord {
    /// The identity kubelet must not reuse within a sandbox.
    pub fn name_key(&self) -> String {
        format!(
            "{}\u{0}{}\u{0}{}",
            self.sandbox_id, self.metadata.name, self.metadata.attempt
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReserveContainerError {
    #[error("a container with this name already exists: {0}")]
    Exists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Inserts a new record unless its name is taken in its sandbox.
    pub fn reserve_container(&self, rec: &ContainerRecord) -> Result<(), ReserveContainerError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut names = tx.open_table(CONTAINER_NAMES).map_err(|e| self.err(e))?;
            let key = rec.name_key();
            if let Some(existing) = names.get(key.as_str()).map_err(|e| self.err(e))? {
                return Err(ReserveContainerError::Exists(existing.value().to_string()));
            }
            names
                .insert(key.as_str(), rec.id.as_str())
                .map_err(|e| self.err(e))?;
            let mut table = tx.open_table(CONTAINERS).map_err(|e| self.err(e))?;
            table
                .insert(rec.id.as_str(), encode(rec)?.as_slice())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Applies `f` to the record in one transaction; an absent record stays
    /// absent. Returns the record after `f` when it changed.
    pub fn update_container(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerRecord) -> bool,
    ) -> Result<Option<ContainerRecord>, StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let changed = {
            let mut table = tx.open_table(CONTAINERS).map_err(|e| self.err(e))?;
            let current = table
                .get(id)
                .map_err(|e| self.err(e))?
                .map(|v| decode::<ContainerRecord>(v.value()));
            match current {
                None => None,
                Some(rec) => {
                    let mut rec = rec?;
                    if f(&mut rec) {
                        table
                            .insert(id, encode(&rec)?.as_slice())
                            .map_err(|e| self.err(e))?;
                        Some(rec)
                    } else {
                        None
                    }
                }
            }
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(changed)
    }

    pub fn get_container(&self, id: &str) -> Result<Option<ContainerRecord>, StoreError> {
        self.get_json(CONTAINERS, id)
    }

    pub fn list_containers(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        self.list_json(CONTAINERS)
    }

    /// Deletes the record and frees its name. Absent ids are fine.
    pub fn delete_container(&self, id: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = tx.open_table(CONTAINERS).map_err(|e| self.err(e))?;
            let old = table.remove(id).map_err(|e| self.err(e))?;
            if let Some(old) = old {
                let rec: ContainerRecord = decode(old.value())?;
                drop(old);
                let mut names = tx.open_table(CONTAINER_NAMES).map_err(|e| self.err(e))?;
                names
                    .remove(rec.name_key().as_str())
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn rec(id: &str, sandbox: &str, name: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            sandbox_id: sandbox.into(),
            metadata: ContainerMetadata {
                name: name.into(),
                attempt: 0,
            },
            image: "busybox".into(),
            image_id: "sha256:00".into(),
            image_ref: String::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            log_path: String::new(),
            mounts: vec![],
            stop_signal: 0,
            resources: None,
            state: ContainerState::Creating,
            created_at: 1,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
        }
    }

    #[test]
    fn names_are_unique_per_sandbox_and_freed_on_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.reserve_container(&rec("a", "s1", "web")).unwrap();
        match store.reserve_container(&rec("b", "s1", "web")) {
            Err(ReserveContainerError::Exists(id)) => assert_eq!(id, "a"),
            other => panic!("{other:?}"),
        }
        // The same name in another sandbox is a different container.
        store.reserve_container(&rec("c", "s2", "web")).unwrap();
        let updated = store
            .update_container("a", |r| {
                r.state = ContainerState::Running;
                true
            })
            .unwrap()
            .unwrap();
        assert_eq!(updated.state, ContainerState::Running);
        assert!(store.update_container("zz", |_| true).unwrap().is_none());
        assert_eq!(store.list_containers().unwrap().len(), 2);
        store.delete_container("a").unwrap();
        store.delete_container("a").unwrap();
        store.reserve_container(&rec("d", "s1", "web")).unwrap();
    }
}
