//! Persistent daemon state in an embedded redb database.
//!
//! The store owns the state dir: it holds an exclusive `flock` on
//! `vmpod.lock` for the daemon's lifetime, so a second daemon pointed at the
//! same dir fails fast instead of corrupting pod records. The schema carries a
//! version so that a newer daemon can migrate, and an older one refuses to run
//! on state it does not understand.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod containers;
pub mod images;
pub mod sandboxes;

pub use containers::{
    ContainerMetadata, ContainerRecord, ContainerState, MountRecord, ReserveContainerError,
};
pub use images::{ImageRecord, LayerRecord};
pub use sandboxes::{Metadata, ReserveError, SandboxRecord, SandboxState, VmRecord};

/// Bumped whenever a table's layout changes; see [`Store::migrate`].
pub const SCHEMA_VERSION: u64 = 4;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SCHEMA_KEY: &str = "schema_version";

pub const DB_FILE: &str = "vmpod.redb";
pub const LOCK_FILE: &str = "vmpod.lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state dir {dir} is in use by another vmpod daemon{}", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { dir: PathBuf, holder: Option<u32> },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open state database {path}: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("state database {path}: {source}")]
    Db { path: PathBuf, source: redb::Error },
    #[error("state database: {0}")]
    Corrupt(String),
    #[error(
        "state database {path} has schema version {found}, newer than this vmpod understands ({SCHEMA_VERSION}); upgrade vmpod"
    )]
    TooNew { path: PathBuf, found: u64 },
}

pub struct Store {
    pub(crate) db: Database,
    path: PathBuf,
    // Held, never read: dropping it releases the state-dir lock.
    _lock: Flock<File>,
}

impl Store {
    /// Locks `state_dir` and opens (or creates) the database in it. The dir
    /// itself must already exist.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let lock = lock_state_dir(state_dir)?;
        let path = state_dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        let store = Store {
            db,
            path,
            _lock: lock,
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(self.err(e)),
        };
        let v = table.get(SCHEMA_KEY).map_err(|e| self.err(e))?;
        Ok(v.map_or(0, |v| v.value()))
    }

    /// Brings the database to [`SCHEMA_VERSION`]. Version 0 is a fresh file;
    /// version 1 had no sandbox tables, version 2 no image tables, version 3 no
    /// container tables. Every step only adds tables, so the migration
    /// creates whatever is missing.
    fn migrate(&self) -> Result<(), StoreError> {
        let found = self.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
            });
        }
        if found == SCHEMA_VERSION {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION)
                .map_err(|e| self.err(e))?;
            tx.open_table(sandboxes::SANDBOXES)
                .map_err(|e| self.err(e))?;
            tx.open_table(sandboxes::SANDBOX_NAMES)
                .map_err(|e| self.err(e))?;
            tx.open_table(images::IMAGES).map_err(|e| self.err(e))?;
            tx.open_table(images::IMAGE_NAMES)
                .map_err(|e| self.err(e))?;
            tx.open_table(containers::CONTAINERS)
                .map_err(|e| self.err(e))?;
            tx.open_table(containers::CONTAINER_NAMES)
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        tracing::info!(path = %self.path.display(), from = found, to = SCHEMA_VERSION, "state schema migrated");
        Ok(())
    }

    /// One JSON record of a `key → JSON` table; a missing table is empty.
    pub(crate) fn get_json<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(table) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let v = t.get(key).map_err(|e| self.err(e))?;
        v.map(|v| decode(v.value())).transpose()
    }

    /// Every JSON record of a `key → JSON` table.
    pub(crate) fn list_json<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = match tx.open_table(table) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| self.err(e))? {
            let (_, v) = entry.map_err(|e| self.err(e))?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    pub(crate) fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source: e.into(),
        }
    }
}

/// Records are stored as JSON: readable with any redb tool, and a new
/// optional field needs no migration.
pub(crate) fn encode<T: Serialize>(rec: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt(format!("encoding a record: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("decoding a record: {e}")))
}

/// Takes the exclusive state-dir lock and records our pid in it, so the
/// error a second daemon prints names the one that holds it.
fn lock_state_dir(state_dir: &Path) -> Result<Flock<File>, StoreError> {
    let path = state_dir.join(LOCK_FILE);
    let lock_err = |source| StoreError::Lock {
        path: path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_err)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let holder = file
                .read_to_string(&mut pid)
                .ok()
                .and_then(|_| pid.trim().parse().ok());
            return Err(StoreError::Locked {
                dir: state_dir.to_path_buf(),
                holder,
            });
        }
        Err((_, errno)) => return Err(lock_err(errno.into())),
    };
    lock.set_len(0).map_err(lock_err)?;
    lock.rewind().map_err(lock_err)?;
    writeln!(lock, "{}", std::process::id()).map_err(lock_err)?;
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_store_gets_current_schema_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn second_open_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path())
            .err()
            .expect("second open must fail");
        let msg = err.to_string();
        assert!(msg.contains("in use by another vmpod daemon"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert(SCHEMA_KEY, SCHEMA_VERSION + 1)
                .unwrap();
            tx.commit().unwrap();
        }
        let msg = Store::open(dir.path()).err().unwrap().to_string();
        assert!(msg.contains("newer than this vmpod understands"), "{msg}");
    }
}
