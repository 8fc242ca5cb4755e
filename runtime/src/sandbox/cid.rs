//! Guest vsock CIDs, one per sandbox.
//!
//! With the kernel's vhost-vsock a guest CID is a host-wide address: two VMs
//! asking for the same one cannot both start. Each sandbox therefore gets its
//! own, written into its record before the record is first stored, held for
//! as long as the record exists (Stop keeps it, Remove and the teardown of a
//! failed boot release it), and re-reserved from the records when the daemon
//! restarts. The allocator itself is only memory; the records are the truth.
//!
//! Hybrid-vsock pods get one as well: their VMs each have a CID namespace of
//! their own, so uniqueness costs nothing there, and the VM contract stays a
//! single value that every backend takes from the spec.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::io;

use vmpod_shim_api::vm_spec::{MAX_GUEST_CID, MIN_GUEST_CID};

/// How many CIDs the kernel may report taken, by VMs that are not ours, in
/// one allocation before it gives up: enough for any host, few enough that a
/// broken probe cannot stall RunPodSandbox.
const MAX_KERNEL_BUSY: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidError {
    #[error(
        "no free vsock guest CID: {busy} candidates in a row are in use by other VMs on this host"
    )]
    Exhausted { busy: usize },
    #[error("cannot check vsock guest CID {cid} with the kernel: {reason}")]
    Probe { cid: u32, reason: String },
    #[error("vsock guest CID {cid} is outside {MIN_GUEST_CID}..={MAX_GUEST_CID}")]
    Reserved { cid: u32 },
    #[error("vsock guest CID {cid} is already held by sandbox {owner}")]
    Taken { cid: u32, owner: String },
}

/// CIDs held by this daemon's sandboxes.
#[derive(Debug)]
pub struct CidAllocator {
    /// CID → sandbox id.
    held: BTreeMap<u32, String>,
    /// Where the next search starts. It moves on past every allocation
    /// instead of reusing the lowest free CID, so a CID that was just
    /// released is not handed out again at once: a host process still
    /// holding a connection to the old guest's address must not reach the
    /// next pod.
    next: u32,
}

impl Default for CidAllocator {
    fn default() -> Self {
        CidAllocator {
            held: BTreeMap::new(),
            next: MIN_GUEST_CID,
        }
    }
}

fn after(cid: u32) -> u32 {
    if cid >= MAX_GUEST_CID {
        MIN_GUEST_CID
    } else {
        cid + 1
    }
}

impl CidAllocator {
    /// Hands `owner` a CID that no sandbox of ours holds and that
    /// `in_use_elsewhere` (the kernel, for kernel-vsock pods) reports free.
    /// A probe error ends the search: a kernel that cannot answer is not a
    /// reason to guess.
    pub fn allocate(
        &mut self,
        owner: &str,
        mut in_use_elsewhere: impl FnMut(u32) -> io::Result<bool>,
    ) -> Result<u32, CidError> {
        let mut busy = 0;
        let mut cid = self.next;
        // Each step either passes a CID we hold or probes one, so this many
        // steps always reach the busy limit or a free CID.
        for _ in 0..=self.held.len() + MAX_KERNEL_BUSY {
            if let Entry::Vacant(slot) = self.held.entry(cid) {
                match in_use_elsewhere(cid) {
                    Ok(false) => {
                        slot.insert(owner.to_owned());
                        self.next = after(cid);
                        return Ok(cid);
                    }
                    Ok(true) => {
                        busy += 1;
                        if busy >= MAX_KERNEL_BUSY {
                            break;
                        }
                    }
                    Err(e) => {
                        return Err(CidError::Probe {
                            cid,
                            reason: e.to_string(),
                        });
                    }
                }
            }
            cid = after(cid);
        }
        Err(CidError::Exhausted { busy })
    }

    /// Marks `cid` as held by `owner` again, from its record after a restart.
    /// No kernel check: the pod's own VM, if it still runs, holds it there.
    pub fn reserve(&mut self, owner: &str, cid: u32) -> Result<(), CidError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cid) {
            return Err(CidError::Reserved { cid });
        }
        match self.held.get(&cid) {
            Some(o) if o != owner => Err(CidError::Taken {
                cid,
                owner: o.clone(),
            }),
            _ => {
                self.held.insert(cid, owner.to_owned());
                if cid >= self.next {
                    self.next = after(cid);
                }
                Ok(())
            }
        }
    }

    /// Frees whatever `owner` holds; nothing held is fine.
    pub fn release(&mut self, owner: &str) {
        self.held.retain(|_, o| o != owner);
    }

    #[cfg(test)]
    fn holder(&self, cid: u32) -> Option<&str> {
        self.held.get(&cid).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free(_: u32) -> io::Result<bool> {
        Ok(false)
    }

    #[test]
    fn cids_are_unique_and_start_past_the_reserved_ones() {
        let mut a = CidAllocator::default();
        let cids: Vec<u32> = (0..100)
            .map(|i| a.allocate(&format!("pod{i}"), free).unwrap())
            .collect();
        assert_eq!(cids[0], MIN_GUEST_CID);
        let mut sorted = cids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 100);
        assert!(cids.iter().all(|&c| (3..u32::MAX).contains(&c)));
        assert_eq!(a.holder(3), Some("pod0"));
    }

    #[test]
    fn the_search_wraps_around_without_touching_reserved_values() {
        let mut a = CidAllocator::default();
        a.reserve("last", MAX_GUEST_CID).unwrap();
        // The next search starts after u32::MAX - 1, so it wraps to 3,
        // never yielding u32::MAX, 0, 1 or 2.
        let mut asked = Vec::new();
        let cid = a
            .allocate("p", |c| {
                asked.push(c);
                Ok(false)
            })
            .unwrap();
        assert_eq!(cid, MIN_GUEST_CID);
        assert_eq!(asked, [MIN_GUEST_CID]);
        for cid in [0, 1, 2, u32::MAX] {
            assert_eq!(a.reserve("x", cid), Err(CidError::Reserved { cid }));
        }
    }

    #[test]
    fn released_cids_come_back_only_after_the_others() {
        let mut a = CidAllocator::default();
        let first = a.allocate("a", free).unwrap();
        let second = a.allocate("b", free).unwrap();
        a.release("a");
        a.release("a");
        a.release("never-held");
        assert_eq!(a.holder(first), None);
        assert_eq!(a.holder(second), Some("b"));
        let third = a.allocate("c", free).unwrap();
        assert_ne!(third, first, "a just-released CID is not reused at once");
        assert_ne!(third, second);
    }

    #[test]
    fn a_cid_the_kernel_reports_taken_is_skipped() {
        let mut a = CidAllocator::default();
        // Another VMM on the host has 3 and 4 (EADDRINUSE from the kernel).
        let mut asked = Vec::new();
        let cid = a
            .allocate("p", |c| {
                asked.push(c);
                Ok(c == 3 || c == 4)
            })
            .unwrap();
        assert_eq!(cid, 5);
        assert_eq!(asked, [3, 4, 5]);
        assert_eq!(a.holder(3), None, "not ours: nothing to release later");
    }

    #[test]
    fn held_cids_are_not_probed_again() {
        let mut a = CidAllocator::default();
        a.reserve("old", 3).unwrap();
        let mut asked = Vec::new();
        let cid = a
            .allocate("p", |c| {
                asked.push(c);
                Ok(false)
            })
            .unwrap();
        assert_eq!(cid, 4);
        assert_eq!(asked, [4]);
    }

    #[test]
    fn a_kernel_that_reports_everything_taken_ends_the_search() {
        let mut a = CidAllocator::default();
        let mut calls = 0;
        let e = a
            .allocate("p", |_| {
                calls += 1;
                Ok(true)
            })
            .unwrap_err();
        assert_eq!(
            e,
            CidError::Exhausted {
                busy: MAX_KERNEL_BUSY
            }
        );
        assert_eq!(calls, MAX_KERNEL_BUSY);
        assert!(e.to_string().contains("in use by other VMs"), "{e}");
    }

    #[test]
    fn a_probe_error_is_reported_not_guessed_around() {
        let mut a = CidAllocator::default();
        let e = a
            .allocate("p", |_| Err(io::Error::other("EPERM")))
            .unwrap_err();
        assert_eq!(
            e,
            CidError::Probe {
                cid: 3,
                reason: "EPERM".into()
            }
        );
        assert_eq!(a.holder(3), None);
    }

    #[test]
    fn recovery_restores_holders_and_moves_past_them() {
        let mut a = CidAllocator::default();
        a.reserve("x", 10).unwrap();
        a.reserve("y", 4).unwrap();
        // Idempotent for the same owner; a second owner is refused.
        a.reserve("x", 10).unwrap();
        assert_eq!(
            a.reserve("z", 10),
            Err(CidError::Taken {
                cid: 10,
                owner: "x".into()
            })
        );
        assert_eq!(a.allocate("new", free).unwrap(), 11);
        a.release("x");
        assert_eq!(a.holder(10), None);
        assert_eq!(a.holder(4), Some("y"));
    }
}
