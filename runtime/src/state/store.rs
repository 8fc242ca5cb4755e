//! The redb database under its state-dir lock: opening it, the schema
//! version, JSON records and the store's errors. The tables themselves are
//! the record modules' (`sandboxes.rs`, `images.rs`, `containers.rs`), which
//! build on this one; `mod.rs` ties them together.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bumped whenever a table's layout changes; see `Store::open` in
/// `state/mod.rs`.
pub const SCHEMA_VERSION: u64 = 5;

pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const SCHEMA_KEY: &str = "schema_version";

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
    /// Locks `state_dir` and opens (or creates) the database in it, as it
    /// is: `Store::open` (in `state/mod.rs`, which knows every table) also
    /// migrates it. The dir itself must already exist.
    pub(super) fn open_unmigrated(state_dir: &Path) -> Result<Store, StoreError> {
        let lock = lock_state_dir(state_dir)?;
        let path = state_dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Store {
            db,
            path,
            _lock: lock,
        })
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

    /// Brings the database to [`SCHEMA_VERSION`]. Every step so far only
    /// added tables, so the migration records the version and has
    /// `create_tables` create whatever is missing.
    pub(super) fn migrate(
        &self,
        create_tables: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::TableError>,
    ) -> Result<(), StoreError> {
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
            create_tables(&tx).map_err(|e| self.err(e))?;
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
