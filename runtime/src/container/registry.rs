//! What the daemon holds in memory per container, beside its record: the
//! lock that keeps Start, Stop, Update and Remove of one container from
//! interleaving, and the last CPU sample of its stats.

use std::sync::Arc;

use crate::cpu_samples::CpuSamples;
use crate::locks::Locks;

#[derive(Default)]
pub struct Registry {
    locks: Locks,
    /// The containers' CPU samples, for usage rates.
    pub cpu_samples: CpuSamples,
}

impl Registry {
    /// The lock serializing lifecycle operations on one container.
    pub fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock_for(id)
    }

    /// Drops what is held for `id` once its record is gone.
    pub fn forget(&self, id: &str) {
        self.locks.forget(id);
        self.cpu_samples.forget(id);
    }
}
