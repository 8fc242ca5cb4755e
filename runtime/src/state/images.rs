//! Image records: what was pulled, under which names.
//!
//! An image is keyed by its id, the digest of its config. Names (a tag like
//! `docker.io/library/busybox:latest` or a digest reference
//! `docker.io/library/busybox@sha256:…`) point at ids; a tag moves to the
//! newest image pulled under it, in the same transaction that stores that
//! image, so a reader never sees a tag without its image.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::store::{Store, StoreError, decode, encode};

pub(super) const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
pub(super) const IMAGE_NAMES: TableDefinition<&str, &str> = TableDefinition::new("image_names");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as stored (compressed).
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// Digest of the uncompressed tar, from the image config.
    pub diff_id: String,
    /// Identity of the stack of layers up to and including this one; the
    /// snapshot dir is named after it.
    pub chain_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:…` of the config blob.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub manifest_digest: String,
    pub config_media_type: String,
    pub layers: Vec<LayerRecord>,
    /// Every blob stored for this image. Manifests that differ only in
    /// layer compression share one config, hence one id, but not their
    /// layer blobs: all of them belong to the image until it is removed.
    #[serde(default)]
    pub blobs: Vec<String>,
    /// Config plus compressed layers, as kubelet's image GC accounts it.
    pub size: u64,
    /// The image config's `User`, for ImageStatus uid/username.
    pub user: String,
    /// ns since the epoch.
    pub pulled_at: i64,
}

impl Store {
    /// Stores `rec` and points `names` at it. A name that pointed at another
    /// image is removed from that image's record.
    pub fn put_image(&self, rec: &ImageRecord) -> Result<ImageRecord, StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let merged = {
            let mut images = tx.open_table(IMAGES).map_err(|e| self.err(e))?;
            let mut names = tx.open_table(IMAGE_NAMES).map_err(|e| self.err(e))?;
            let mut merged = match images.get(rec.id.as_str()).map_err(|e| self.err(e))? {
                Some(v) => decode(v.value())?,
                None => rec.clone(),
            };
            for name in rec.repo_tags.iter().chain(&rec.repo_digests) {
                let previous = names
                    .insert(name.as_str(), rec.id.as_str())
                    .map_err(|e| self.err(e))?
                    .map(|v| v.value().to_string());
                if let Some(old_id) = previous.filter(|old| *old != rec.id) {
                    let old: Option<ImageRecord> = images
                        .get(old_id.as_str())
                        .map_err(|e| self.err(e))?
                        .map(|v| decode(v.value()))
                        .transpose()?;
                    if let Some(mut old) = old {
                        old.repo_tags.retain(|t| t != name);
                        old.repo_digests.retain(|t| t != name);
                        images
                            .insert(old_id.as_str(), encode(&old)?.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                }
            }
            for t in &rec.repo_tags {
                if !merged.repo_tags.contains(t) {
                    merged.repo_tags.push(t.clone());
                }
            }
            for d in &rec.repo_digests {
                if !merged.repo_digests.contains(d) {
                    merged.repo_digests.push(d.clone());
                }
            }
            for b in &rec.blobs {
                if !merged.blobs.contains(b) {
                    merged.blobs.push(b.clone());
                }
            }
            merged.pulled_at = rec.pulled_at;
            images
                .insert(rec.id.as_str(), encode(&merged)?.as_slice())
                .map_err(|e| self.err(e))?;
            merged
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(merged)
    }

    pub fn get_image(&self, id: &str) -> Result<Option<ImageRecord>, StoreError> {
        self.get_json(IMAGES, id)
    }

    /// The image id a name points at.
    pub fn image_by_name(&self, name: &str) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = match tx.open_table(IMAGE_NAMES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        Ok(table
            .get(name)
            .map_err(|e| self.err(e))?
            .map(|v| v.value().to_string()))
    }

    pub fn list_images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        self.list_json(IMAGES)
    }

    /// Removes `name` from its image; when it was the image's last name, or
    /// `name` is the id itself, the whole record goes. Returns the removed
    /// record, if one was.
    pub fn remove_image_name(
        &self,
        id: &str,
        name: Option<&str>,
    ) -> Result<Option<ImageRecord>, StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let removed = {
            let mut images = tx.open_table(IMAGES).map_err(|e| self.err(e))?;
            let mut names = tx.open_table(IMAGE_NAMES).map_err(|e| self.err(e))?;
            let rec: Option<ImageRecord> = images
                .get(id)
                .map_err(|e| self.err(e))?
                .map(|v| decode(v.value()))
                .transpose()?;
            match rec {
                None => None,
                Some(mut rec) => {
                    let drop_all = match name {
                        None => true,
                        Some(n) => {
                            rec.repo_tags.retain(|t| t != n);
                            rec.repo_digests.retain(|t| t != n);
                            names.remove(n).map_err(|e| self.err(e))?;
                            // A tag removal leaves the image while other
                            // tags remain; digests alone do not keep it.
                            rec.repo_tags.is_empty()
                        }
                    };
                    if drop_all {
                        for n in rec.repo_tags.iter().chain(&rec.repo_digests) {
                            names.remove(n.as_str()).map_err(|e| self.err(e))?;
                        }
                        images.remove(id).map_err(|e| self.err(e))?;
                        Some(rec)
                    } else {
                        images
                            .insert(id, encode(&rec)?.as_slice())
                            .map_err(|e| self.err(e))?;
                        None
                    }
                }
            }
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, tag: &str) -> ImageRecord {
        ImageRecord {
            id: id.into(),
            repo_tags: vec![tag.into()],
            repo_digests: vec![format!("r@{id}")],
            manifest_digest: "m".into(),
            config_media_type: String::new(),
            layers: vec![],
            blobs: vec![],
            size: 1,
            user: String::new(),
            pulled_at: 0,
        }
    }

    #[test]
    fn tags_move_to_the_newest_image_and_removal_frees_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_image(&img("a", "r:latest")).unwrap();
        store.put_image(&img("b", "r:latest")).unwrap();
        assert_eq!(
            store.image_by_name("r:latest").unwrap().as_deref(),
            Some("b")
        );
        let a = store.get_image("a").unwrap().unwrap();
        assert!(a.repo_tags.is_empty());
        assert_eq!(a.repo_digests, vec!["r@a"]);
        // Pulling "b" again under a second tag keeps both tags.
        store.put_image(&img("b", "r:v2")).unwrap();
        let b = store.get_image("b").unwrap().unwrap();
        assert_eq!(b.repo_tags, vec!["r:latest", "r:v2"]);
        // Untagging one tag keeps the image; the last tag removes it.
        assert!(
            store
                .remove_image_name("b", Some("r:v2"))
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .remove_image_name("b", Some("r:latest"))
                .unwrap()
                .is_some()
        );
        assert!(store.get_image("b").unwrap().is_none());
        assert!(store.image_by_name("r@b").unwrap().is_none());
        assert_eq!(store.list_images().unwrap().len(), 1);
    }
}
