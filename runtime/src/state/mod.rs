//! Persistent daemon state in an embedded redb database.
//!
//! The store owns the state dir: it holds an exclusive `flock` on
//! `vmpod.lock` for the daemon's lifetime, so a second daemon pointed at the
//! same dir fails fast instead of corrupting pod records. The schema carries a
//! version so that a newer daemon can migrate, and an older one refuses to run
//! on state it does not understand.

use std::path::Path;

pub mod containers;
pub mod images;
pub mod sandboxes;
pub mod store;

pub use containers::{
    ContainerMetadata, ContainerRecord, ContainerState, MountRecord, ReserveContainerError,
};
pub use images::{ImageRecord, LayerRecord};
pub use sandboxes::{Metadata, NetworkRecord, ReserveError, SandboxRecord, SandboxState, VmRecord};
pub use store::{Store, StoreError};

impl Store {
    /// Locks `state_dir` and opens (or creates) the database in it, brought
    /// to [`store::SCHEMA_VERSION`]. The dir itself must already exist.
    ///
    /// Version 0 is a fresh file; version 1 had no sandbox tables, version 2
    /// no image tables, version 3 no container tables, version 4 no
    /// pending network table. Every step only adds
    /// tables, so the migration creates whatever is missing.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let store = Store::open_unmigrated(state_dir)?;
        store.migrate(|tx| {
            tx.open_table(sandboxes::SANDBOXES)?;
            tx.open_table(sandboxes::SANDBOX_NAMES)?;
            tx.open_table(images::IMAGES)?;
            tx.open_table(images::IMAGE_NAMES)?;
            tx.open_table(containers::CONTAINERS)?;
            tx.open_table(containers::CONTAINER_NAMES)?;
            tx.open_table(sandboxes::PENDING_NETWORKS)?;
            Ok(())
        })?;
        Ok(store)
    }
}

/// A new record id: 256 random bits, hex, the same shape as containerd's
/// ids, so tools that abbreviate them work unchanged.
pub fn new_id() -> Result<String, std::io::Error> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::store::{DB_FILE, META, SCHEMA_KEY, SCHEMA_VERSION};
    use super::*;
    use redb::Database;

    #[test]
    fn ids_are_unique_hex() {
        let a = new_id().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_id().unwrap());
    }

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
