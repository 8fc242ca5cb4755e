//! What the daemon holds in memory per container, beside its record: the
//! lock that keeps Start, Stop, Update and Remove of one container from
//! interleaving, the last CPU sample of its stats, the feed of container
//! events, and which pods' event streams are being followed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::events::ChangeFeed;
use crate::cpu_samples::CpuSamples;
use crate::locks::Locks;

#[derive(Default)]
pub struct Registry {
    locks: Locks,
    /// The containers' CPU samples, for usage rates.
    pub cpu_samples: CpuSamples,
    /// Every change of a container's state, for GetContainerEvents.
    pub events: ChangeFeed,
    /// Sandboxes whose shim event stream is open: their records are
    /// current without asking the VM.
    followed: Mutex<HashSet<String>>,
}

impl Registry {
    /// The lock serializing lifecycle operations on one container.
    pub fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock_for(id)
    }

    /// Whether sandbox `id`'s records are kept current by its event stream.
    pub fn is_followed(&self, sandbox_id: &str) -> bool {
        self.followed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(sandbox_id)
    }

    pub fn set_followed(&self, sandbox_id: &str, followed: bool) {
        let mut set = self.followed.lock().unwrap_or_else(|e| e.into_inner());
        if followed {
            set.insert(sandbox_id.to_owned());
        } else {
            set.remove(sandbox_id);
        }
    }

    /// Drops what is held for `id` once its record is gone.
    pub fn forget(&self, id: &str) {
        self.locks.forget(id);
        self.cpu_samples.forget(id);
    }
}
