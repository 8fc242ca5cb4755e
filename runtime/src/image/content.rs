//! The content store on disk: verified blobs and unpacked layer snapshots.
//!
//! ```text
//! <state>/images/blobs/sha256/<hex>       image configs (and compressed layers
//!                                         that an older vmpod kept)
//! <state>/images/snapshots/<chain hex>/   one layer's diff, overlayfs lowerdir format
//! <state>/images/ingest/                  downloads in progress
//! ```
//!
//! Compressed layers are not kept: a layer streams from the registry
//! straight into its unpack, verified on the way, and only its snapshot is
//! stored (see `pull.rs`).
//!
//! Nothing becomes visible under `blobs/` or `snapshots/` until it is
//! complete, verified and durable: downloads land in `ingest/` and unpacks
//! in `snapshots/.tmp-*`, their data is flushed to disk (fsync for a blob,
//! [`sync_filesystem`] for a snapshot), and only then are they renamed into
//! place; [`ContentStore::sync_dirs`] makes the renames durable before the
//! image record that names them is written. A crash therefore leaves either
//! a complete entry or a leftover, and leftovers are removed when the store
//! opens. Per-key async locks make concurrent pulls that share a blob or a
//! snapshot wait for one download or unpack.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::reference::validate_digest;

pub struct ContentStore {
    root: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ContentStore {
    pub fn open(root: &Path) -> Result<ContentStore, String> {
        for d in ["blobs/sha256", "snapshots", "ingest"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p)
                .map_err(|e| format!("cannot create {}: {e}", p.display()))?;
        }
        let store = ContentStore {
            root: root.to_path_buf(),
            locks: Mutex::default(),
        };
        store.clean_leftovers();
        Ok(store)
    }

    fn clean_leftovers(&self) {
        let mut stale: Vec<PathBuf> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.root.join("ingest")) {
            stale.extend(entries.flatten().map(|e| e.path()));
        }
        if let Ok(entries) = std::fs::read_dir(self.root.join("snapshots")) {
            stale.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
                    .map(|e| e.path()),
            );
        }
        for p in stale {
            tracing::info!(path = %p.display(), "removing an interrupted download or unpack");
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, String> {
        Ok(self
            .root
            .join("blobs/sha256")
            .join(validate_digest(digest)?))
    }

    pub fn snapshot_path(&self, chain_id: &str) -> Result<PathBuf, String> {
        Ok(self.root.join("snapshots").join(validate_digest(chain_id)?))
    }

    pub fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    /// A fresh, hidden dir beside the snapshots, for an unpack in progress.
    pub fn snapshot_tmp(&self) -> Result<tempfile::TempDir, String> {
        tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(self.root.join("snapshots"))
            .map_err(|e| format!("cannot create an unpack dir: {e}"))
    }

    /// Makes renames into `blobs/` and `snapshots/` durable (fsync of both
    /// directories), for before a record names what was renamed.
    pub async fn sync_dirs(&self) -> std::io::Result<()> {
        let dirs = [self.root.join("blobs/sha256"), self.root.join("snapshots")];
        tokio::task::spawn_blocking(move || {
            for d in &dirs {
                std::fs::File::open(d)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", d.display())))?;
            }
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Serializes work on one blob or snapshot across concurrent pulls.
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(key.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// Deletes a blob and a snapshot no image uses any more.
    pub fn remove_unreferenced(&self, blobs: &[String], snapshots: &[String]) {
        for d in blobs {
            if let Ok(p) = self.blob_path(d) {
                let _ = std::fs::remove_file(p);
            }
        }
        for c in snapshots {
            if let Ok(p) = self.snapshot_path(c)
                && let Err(e) = std::fs::remove_dir_all(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove snapshot");
            }
        }
    }

    /// Bytes and inodes used by the store, as ImageFsInfo reports them.
    pub fn usage(&self) -> (u64, u64) {
        fn walk(dir: &Path, bytes: &mut u64, inodes: &mut u64) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let Ok(m) = e.path().symlink_metadata() else {
                    continue;
                };
                *inodes += 1;
                use std::os::unix::fs::MetadataExt;
                *bytes += m.blocks() * 512;
                if m.is_dir() {
                    walk(&e.path(), bytes, inodes);
                }
            }
        }
        let (mut bytes, mut inodes) = (0, 0);
        walk(&self.root, &mut bytes, &mut inodes);
        (bytes, inodes)
    }
}

/// Flushes all dirty data and metadata of the filesystem holding `dir` to
/// disk (`syncfs(2)`): one call that makes a whole unpacked tree durable.
pub fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = std::fs::File::open(dir)?;
    // SAFETY: syncfs takes a valid open fd and touches no memory of ours.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `chain_id(n) = sha256(chain_id(n-1) + " " + diff_id(n))`, the OCI rule
/// that names a stack of layers.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    use sha2::{Digest, Sha256};
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {d}")))
            ),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_rule() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        use sha2::{Digest, Sha256};
        assert_eq!(
            c[1],
            format!("sha256:{}", hex::encode(Sha256::digest(format!("{a} {b}"))))
        );
    }

    #[test]
    fn leftovers_are_cleaned_and_bad_digests_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = ContentStore::open(dir.path()).unwrap();
        std::fs::write(s.ingest_dir().join("partial"), b"x").unwrap();
        let tmp = s.snapshot_tmp().unwrap().keep();
        drop(s);
        let s = ContentStore::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(s.ingest_dir()).unwrap().count(), 0);
        assert!(!tmp.exists());
        assert!(s.blob_path("sha256:../../x").is_err());
    }
}
