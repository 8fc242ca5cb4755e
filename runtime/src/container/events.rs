//! Container events as the daemon publishes them: every change of a
//! container record's state (created, started, exited, deleted), in the
//! order the records changed, for `GetContainerEvents` (kubelet's evented
//! PLEG).
//!
//! A change is published by whoever changes the record, and only when it
//! did change, so a change seen twice (a call's answer and the shim's event
//! stream, or a replay after a restart) is published once.
//!
//! kubelet loses its stream whenever the daemon restarts. Changes that no
//! reader has received yet, such as the exits the followers catch up on
//! right after a restart, are held (the newest [`BACKLOG`]) and handed to
//! the next reader, so they arrive exactly once instead of never.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::state::{ContainerRecord, ContainerState};

/// Changes held for a reader that has not connected yet: more than a
/// node's pods go through in the seconds a restart takes.
pub const BACKLOG: usize = 1024;
/// A reader this far behind is cut off rather than buffered for; kubelet
/// then reconnects and relists, as it does after any stream error.
const READER_QUEUE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub container_id: String,
    pub sandbox_id: String,
    pub kind: ChangeKind,
    /// When it happened, ns since the epoch: the container's own
    /// timestamp where it has one (created, started, finished).
    pub at_ns: i64,
}

/// The change that brought a record into its current state; none for a
/// record still being created.
pub fn change_of(rec: &ContainerRecord) -> Option<Change> {
    let (kind, at_ns) = match rec.state {
        ContainerState::Creating => return None,
        ContainerState::Created => (ChangeKind::Created, rec.created_at),
        ContainerState::Running => (ChangeKind::Started, rec.started_at),
        ContainerState::Exited => (ChangeKind::Stopped, rec.finished_at),
    };
    Some(Change {
        container_id: rec.id.clone(),
        sandbox_id: rec.sandbox_id.clone(),
        kind,
        at_ns,
    })
}

#[derive(Default)]
struct Inner {
    /// Changes no reader has received yet, oldest first.
    undelivered: VecDeque<Change>,
    readers: Vec<mpsc::Sender<Change>>,
}

#[derive(Default)]
pub struct ChangeFeed {
    inner: Mutex<Inner>,
}

impl ChangeFeed {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn publish(&self, change: Change) {
        let mut inner = self.lock();
        inner.readers.retain(|r| !r.is_closed());
        if inner.readers.is_empty() {
            if inner.undelivered.len() == BACKLOG {
                inner.undelivered.pop_front();
            }
            inner.undelivered.push_back(change);
            return;
        }
        inner.readers.retain(|r| match r.try_send(change.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    "a container-event reader fell {READER_QUEUE} events behind; cutting it off"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// Every change from now on, after those no reader has received yet.
    pub fn subscribe(&self) -> mpsc::Receiver<Change> {
        let mut inner = self.lock();
        let (tx, rx) = mpsc::channel(READER_QUEUE + BACKLOG);
        for change in inner.undelivered.drain(..) {
            // Cannot fail: the channel has room for the whole backlog.
            let _ = tx.try_send(change);
        }
        inner.readers.push(tx);
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: &str, kind: ChangeKind) -> Change {
        Change {
            container_id: id.into(),
            sandbox_id: "s".into(),
            kind,
            at_ns: 1,
        }
    }

    fn drain(rx: &mut mpsc::Receiver<Change>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.push(c.container_id);
        }
        out
    }

    #[test]
    fn changes_nobody_received_go_to_the_next_reader_once() {
        let feed = ChangeFeed::default();
        feed.publish(change("a", ChangeKind::Stopped));
        feed.publish(change("b", ChangeKind::Stopped));
        let mut first = feed.subscribe();
        feed.publish(change("c", ChangeKind::Started));
        assert_eq!(drain(&mut first), ["a", "b", "c"]);
        let mut second = feed.subscribe();
        feed.publish(change("d", ChangeKind::Started));
        assert_eq!(drain(&mut second), ["d"], "a..c were delivered already");
        assert_eq!(drain(&mut first), ["d"]);
    }

    #[test]
    fn a_closed_reader_does_not_swallow_changes() {
        let feed = ChangeFeed::default();
        drop(feed.subscribe());
        feed.publish(change("a", ChangeKind::Stopped));
        assert_eq!(drain(&mut feed.subscribe()), ["a"]);
    }

    #[test]
    fn the_backlog_and_a_stalled_reader_are_bounded() {
        let feed = ChangeFeed::default();
        for i in 0..BACKLOG + 5 {
            feed.publish(change(&format!("c{i}"), ChangeKind::Created));
        }
        let mut rx = feed.subscribe();
        let got = drain(&mut rx);
        assert_eq!(got.len(), BACKLOG);
        assert_eq!(got[0], "c5", "the oldest are dropped");
        for i in 0..READER_QUEUE + BACKLOG + 1 {
            feed.publish(change(&format!("x{i}"), ChangeKind::Created));
        }
        assert!(
            feed.lock().readers.is_empty(),
            "the stalled reader was cut off"
        );
    }
}
