//! What the daemon holds in memory per sandbox, beside its record: a lock
//! so that Run, Stop and Remove of one pod never interleave, the monitor
//! that turns a ready pod NOTREADY when its VM or shim dies, its guest
//! vsock CID, and the last CPU samples of its stats.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::cid::{CidAllocator, CidError};
use crate::cpu_samples::CpuSamples;
use crate::locks::Locks;

#[derive(Default)]
pub struct Registry {
    locks: Locks,
    monitors: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    cids: Mutex<CidAllocator>,
    /// The pods' CPU samples (guest and host), for usage rates.
    pub cpu_samples: CpuSamples,
}

impl Registry {
    /// The lock serializing lifecycle operations on one sandbox.
    pub fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock_for(id)
    }

    /// Drops what is held for `id` once its record is gone: its lock, its
    /// monitor, its CPU samples and its vsock CID. Every path that deletes
    /// a sandbox record comes through here, so no CID outlives its record.
    pub fn forget(&self, id: &str) {
        self.locks.forget(id);
        self.stop_monitor(id);
        self.cpu_samples.forget(id);
        self.release_cid(id);
    }

    /// A guest CID for new sandbox `id`. `kernel_check` asks the host kernel
    /// whether another VM has the candidate; pods on hybrid vsock skip it
    /// (their VM has a CID namespace of its own, and the host may have no
    /// `/dev/vhost-vsock` to ask).
    pub fn allocate_cid(&self, id: &str, kernel_check: bool) -> Result<u32, CidError> {
        let mut cids = self.cids.lock().unwrap_or_else(|p| p.into_inner());
        if kernel_check {
            cids.allocate(id, crate::host::vsock::kernel_cid_in_use)
        } else {
            cids.allocate(id, |_| Ok(false))
        }
    }

    /// Holds `cid` for `id` again, from its record (restart recovery).
    pub fn reserve_cid(&self, id: &str, cid: u32) -> Result<(), CidError> {
        self.cids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reserve(id, cid)
    }

    pub fn release_cid(&self, id: &str) {
        self.cids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(id);
    }

    pub fn set_monitor(&self, id: &str, handle: tokio::task::AbortHandle) {
        let old = self
            .monitors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), handle);
        if let Some(old) = old {
            old.abort();
        }
    }

    pub fn stop_monitor(&self, id: &str) {
        if let Some(h) = self
            .monitors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        {
            h.abort();
        }
    }
}
