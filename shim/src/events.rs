//! The pod's container events: the shim's copy of each container's latest
//! state, and the numbered log of changes the daemon follows.
//!
//! The agent streams its lifecycle events over one long-lived call
//! ([`pump`]); the shim also folds in the statuses its own create, start,
//! stop and remove calls get back, so its copy is current as soon as a call
//! answers. An event is logged only when it moves a container forward
//! (created → running → exited → deleted), so the same change seen twice
//! (from the call's answer and from the agent's stream) is logged once.
//!
//! The daemon reads the log with `Events(after_seq)`. The shim renumbers
//! events itself and keeps the newest [`CAPACITY`] of them, so a daemon that
//! was restarted resumes where it stopped and misses nothing; one that was
//! away longer is told to re-list. The shim outlives daemon restarts, so
//! this in-memory log is the one that matters.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tonic::Status;
use vmpod_agent_proto::v1::{
    ContainerEvent, ContainerEventType, ContainerState, ContainerStatus, EventsRequest,
    ListContainersRequest,
};
use vmpod_shim_api::v1::{Phase, VmState};

use crate::relay::{AgentSource, call};

/// Events held for a daemon that was away. Kubelet restarts the daemon in
/// seconds; a pod goes through a handful of events per container, so 4096
/// spans far more than any restart while costing well under a MiB.
pub const CAPACITY: usize = 4096;
/// Readers at once: the daemon keeps one; a few more for tools and races
/// between an old and a new daemon. More is a leak, not a use.
const MAX_READERS: usize = 8;
/// A reader that falls this far behind is cut off rather than buffered
/// for: it resumes from its last sequence number and the log replays.
const READER_BACKLOG: usize = 256;
/// Between attempts to reopen the agent's stream while the VM is READY.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);
/// Bounds the re-list after the agent dropped events.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// Which container ids the shim itself created: the agent is believed only
/// about those, so a lying guest cannot grow the log's copy with ids of its
/// own making.
pub type Known = Arc<dyn Fn(&str) -> bool + Send + Sync>;

type Reader = mpsc::Sender<Result<ContainerEvent, Status>>;

#[derive(Default)]
struct Inner {
    /// The sequence number of the last event logged; 0 before the first.
    last_seq: u64,
    ring: VecDeque<ContainerEvent>,
    latest: HashMap<String, ContainerStatus>,
    readers: Vec<Reader>,
    /// The agent has no event stream, so this log would miss every exit:
    /// readers are refused and fall back to asking.
    unsupported: bool,
}

#[derive(Default)]
pub struct EventLog {
    inner: Mutex<Inner>,
    /// Woken on every change, for [`EventLog::wait_exited`].
    changed: Notify,
}

/// created < running < exited: a container only ever moves forward.
fn rank(status: &ContainerStatus) -> u8 {
    match status.state() {
        ContainerState::ContainerCreated => 0,
        ContainerState::ContainerRunning => 1,
        ContainerState::ContainerExited => 2,
    }
}

/// The event that brings a container into `status`'s state.
pub fn event_for(status: &ContainerStatus) -> ContainerEventType {
    match status.state() {
        ContainerState::ContainerCreated => ContainerEventType::ContainerEventCreated,
        ContainerState::ContainerRunning => ContainerEventType::ContainerEventStarted,
        ContainerState::ContainerExited => ContainerEventType::ContainerEventStopped,
    }
}

impl EventLog {
    pub fn new() -> Arc<EventLog> {
        Arc::new(EventLog::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest known status of container `id`.
    pub fn status(&self, id: &str) -> Option<ContainerStatus> {
        self.lock().latest.get(id).cloned()
    }

    /// Folds `status` in, logging `kind` if it moves the container forward.
    /// Returns whether it did. The guest's `message` is cut to
    /// `MAX_GUEST_MESSAGE` bytes: it could send megabytes in each of
    /// [`CAPACITY`] events.
    pub fn record(&self, kind: ContainerEventType, mut status: ContainerStatus) -> bool {
        vmpod_shim_api::bound_guest_message(&mut status.message);
        let mut inner = self.lock();
        let advances = match (kind, inner.latest.get(&status.id)) {
            (ContainerEventType::ContainerEventDeleted, known) => known.is_some(),
            (_, None) => true,
            (_, Some(old)) => rank(&status) > rank(old),
        };
        if !advances {
            return false;
        }
        if kind == ContainerEventType::ContainerEventDeleted {
            inner.latest.remove(&status.id);
        } else {
            inner.latest.insert(status.id.clone(), status.clone());
        }
        inner.last_seq += 1;
        let event = ContainerEvent {
            seq: inner.last_seq,
            r#type: kind as i32,
            status: Some(status),
            resync: false,
        };
        if inner.ring.len() == CAPACITY {
            inner.ring.pop_front();
        }
        inner.ring.push_back(event.clone());
        // A full or closed reader is dropped: its stream ends, and it
        // resumes from its last sequence number with nothing lost.
        inner
            .readers
            .retain(|r| r.try_send(Ok(event.clone())).is_ok());
        drop(inner);
        self.changed.notify_waiters();
        true
    }

    /// Container `id`'s status once it has exited, waiting up to `limit`
    /// for the exit to be recorded; otherwise its latest status (`None`
    /// when it is gone or never was).
    pub async fn wait_exited(&self, id: &str, limit: Duration) -> Option<ContainerStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Registered before looking, so a change in between still wakes it.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let status = self.status(id);
            match &status {
                Some(s) if s.state() != ContainerState::ContainerExited => {}
                _ => return status,
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.status(id);
            }
        }
    }

    /// Brings the copy in line with a full list from the agent, logging the
    /// changes it shows: after the agent dropped events, or restarted.
    pub fn reconcile(&self, list: Vec<ContainerStatus>) {
        let gone: Vec<ContainerStatus> = {
            let inner = self.lock();
            inner
                .latest
                .values()
                .filter(|known| !list.iter().any(|s| s.id == known.id))
                .cloned()
                .collect()
        };
        for status in list {
            self.record(event_for(&status), status);
        }
        for status in gone {
            self.record(ContainerEventType::ContainerEventDeleted, status);
        }
    }

    /// Ends every reader and refuses new ones: the agent cannot tell this
    /// log about exits, so no reader may take it as complete.
    pub fn unsupported(&self) {
        let mut inner = self.lock();
        inner.unsupported = true;
        inner.readers.clear();
    }

    /// A stream of every event after `after_seq`, then live ones. The first
    /// message has `resync` set when some of those events are gone (or
    /// `after_seq` is from a log this shim never had).
    pub fn subscribe(
        &self,
        after_seq: u64,
    ) -> Result<mpsc::Receiver<Result<ContainerEvent, Status>>, Status> {
        let mut inner = self.lock();
        if inner.unsupported {
            return Err(Status::unimplemented(
                "the guest agent has no event stream; ask for container status instead",
            ));
        }
        inner.readers.retain(|r| !r.is_closed());
        if inner.readers.len() >= MAX_READERS {
            return Err(Status::resource_exhausted(format!(
                "{MAX_READERS} event readers already follow this pod"
            )));
        }
        let oldest = inner.ring.front().map_or(inner.last_seq + 1, |e| e.seq);
        let lost = after_seq > inner.last_seq || after_seq + 1 < oldest;
        let replay: Vec<ContainerEvent> = inner
            .ring
            .iter()
            .filter(|e| lost || e.seq > after_seq)
            .cloned()
            .collect();
        let (tx, rx) = mpsc::channel(CAPACITY + READER_BACKLOG);
        if lost {
            // A marker that places the reader just before the oldest event
            // held, then all of them.
            let marker = ContainerEvent {
                seq: oldest - 1,
                resync: true,
                ..Default::default()
            };
            let _ = tx.try_send(Ok(marker));
        }
        for event in replay {
            // Cannot fail: the channel has room for the whole ring.
            let _ = tx.try_send(Ok(event));
        }
        inner.readers.push(tx);
        Ok(rx)
    }
}

/// Follows the agent's event stream for as long as the VM lives, folding
/// every event about a `known` container into `log`. Reopens the stream (resuming from the agent's
/// last sequence number) whenever it breaks while the VM is READY; re-lists
/// when the agent says events were dropped. Returns when the VM is gone.
pub async fn pump<A: AgentSource>(
    agents: A,
    log: Arc<EventLog>,
    known: Known,
    mut vm: watch::Receiver<VmState>,
) {
    let mut after_seq = 0;
    loop {
        let settled =
            |s: &VmState| matches!(s.phase(), Phase::Ready | Phase::Stopped | Phase::Failed);
        let phase = match vm.wait_for(settled).await {
            Ok(s) => s.phase(),
            Err(_) => return,
        };
        if phase != Phase::Ready {
            return;
        }
        match follow(&agents, &log, &known, &mut vm, &mut after_seq).await {
            Ok(()) => {}
            Err(e) if e.code() == tonic::Code::Unimplemented => {
                tracing::warn!("the guest agent has no event stream: {}", e.message());
                log.unsupported();
                return;
            }
            Err(e) => tracing::debug!(error = %e, "agent event stream broke"),
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

async fn follow<A: AgentSource>(
    agents: &A,
    log: &EventLog,
    known: &Known,
    vm: &mut watch::Receiver<VmState>,
    after_seq: &mut u64,
) -> Result<(), Status> {
    let mut client = agents.client()?;
    let mut stream = client
        .events(EventsRequest {
            after_seq: *after_seq,
        })
        .await?
        .into_inner();
    loop {
        let event = tokio::select! {
            next = stream.message() => match next? {
                Some(e) => e,
                None => return Ok(()),
            },
            changed = vm.changed() => {
                if changed.is_err() || vm.borrow().phase() != Phase::Ready {
                    return Ok(());
                }
                continue;
            }
        };
        if event.resync {
            let list = call(
                agents,
                "ListContainers",
                Some(RESYNC_TIMEOUT),
                client.list_containers(ListContainersRequest {}),
            )
            .await?;
            log.reconcile(
                list.containers
                    .into_iter()
                    .filter(|s| known(&s.id))
                    .collect(),
            );
        }
        *after_seq = event.seq;
        let kind = event.r#type();
        if let Some(status) = event.status
            && known(&status.id)
        {
            tracing::debug!(seq = event.seq, container = %status.id, kind = kind.as_str_name(), "agent event");
            log.record(kind, status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, state: ContainerState, exit_code: i32) -> ContainerStatus {
        ContainerStatus {
            id: id.into(),
            state: state as i32,
            exit_code,
            ..Default::default()
        }
    }

    fn drain(rx: &mut mpsc::Receiver<Result<ContainerEvent, Status>>) -> Vec<ContainerEvent> {
        let mut out = Vec::new();
        while let Ok(Ok(e)) = rx.try_recv() {
            out.push(e);
        }
        out
    }

    #[test]
    fn only_forward_moves_are_logged_once() {
        let log = EventLog::default();
        let created = status("a", ContainerState::ContainerCreated, 0);
        let running = status("a", ContainerState::ContainerRunning, 0);
        let exited = status("a", ContainerState::ContainerExited, 3);
        assert!(log.record(event_for(&created), created.clone()));
        assert!(log.record(event_for(&running), running.clone()));
        // The same start, seen again from the agent's stream.
        assert!(!log.record(event_for(&running), running));
        assert!(log.record(event_for(&exited), exited.clone()));
        // A late "running" must not bring an exited container back.
        assert!(!log.record(
            ContainerEventType::ContainerEventStarted,
            status("a", ContainerState::ContainerRunning, 0)
        ));
        assert_eq!(log.status("a").map(|s| s.exit_code), Some(3));
        assert!(log.record(ContainerEventType::ContainerEventDeleted, exited.clone()));
        assert!(!log.record(ContainerEventType::ContainerEventDeleted, exited));
        assert!(log.status("a").is_none());
        let seqs: Vec<u64> = log.lock().ring.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
    }

    #[test]
    fn a_reader_gets_the_replay_then_live_events_in_order() {
        let log = EventLog::default();
        for id in ["a", "b", "c"] {
            log.record(
                ContainerEventType::ContainerEventCreated,
                status(id, ContainerState::ContainerCreated, 0),
            );
        }
        let mut rx = log.subscribe(1).expect("subscribe");
        log.record(
            ContainerEventType::ContainerEventStarted,
            status("a", ContainerState::ContainerRunning, 0),
        );
        let got = drain(&mut rx);
        let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 3, 4]);
        assert!(got.iter().all(|e| !e.resync));
        // Up to date: nothing replayed, nothing lost.
        let mut rx = log.subscribe(4).expect("subscribe");
        assert!(drain(&mut rx).is_empty());
    }

    #[test]
    fn a_reader_older_than_the_ring_is_told_to_resync() {
        let log = EventLog::default();
        for i in 0..CAPACITY + 10 {
            log.record(
                ContainerEventType::ContainerEventCreated,
                status(&format!("c{i}"), ContainerState::ContainerCreated, 0),
            );
        }
        let mut rx = log.subscribe(5).expect("subscribe");
        let got = drain(&mut rx);
        assert!(got[0].resync, "{:?}", got[0]);
        assert_eq!(got.len(), CAPACITY + 1);
        assert_eq!(got[1].seq, 11);
        // A sequence number from a log this shim never had.
        let mut rx = log.subscribe(u64::MAX).expect("subscribe");
        assert!(drain(&mut rx)[0].resync);
    }

    #[test]
    fn a_stalled_reader_is_cut_off_not_buffered_for() {
        let log = EventLog::default();
        let mut stalled = log.subscribe(0).expect("subscribe");
        for i in 0..CAPACITY + READER_BACKLOG + 1 {
            log.record(
                ContainerEventType::ContainerEventCreated,
                status(&format!("c{i}"), ContainerState::ContainerCreated, 0),
            );
        }
        assert!(log.lock().readers.is_empty());
        // It still gets what was queued, then the stream ends.
        assert_eq!(drain(&mut stalled).len(), CAPACITY + READER_BACKLOG);
        assert!(matches!(
            stalled.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn reconcile_logs_what_the_list_shows_and_deletes_what_it_lacks() {
        let log = EventLog::default();
        log.record(
            ContainerEventType::ContainerEventStarted,
            status("a", ContainerState::ContainerRunning, 0),
        );
        log.record(
            ContainerEventType::ContainerEventStarted,
            status("gone", ContainerState::ContainerRunning, 0),
        );
        log.reconcile(vec![
            status("a", ContainerState::ContainerExited, 3),
            status("new", ContainerState::ContainerCreated, 0),
        ]);
        let kinds: Vec<(String, ContainerEventType)> = log
            .lock()
            .ring
            .iter()
            .skip(2)
            .map(|e| (e.status.clone().unwrap_or_default().id, e.r#type()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("a".into(), ContainerEventType::ContainerEventStopped),
                ("new".into(), ContainerEventType::ContainerEventCreated),
                ("gone".into(), ContainerEventType::ContainerEventDeleted),
            ]
        );
    }

    #[test]
    fn without_an_agent_stream_readers_are_refused_and_ended() {
        let log = EventLog::default();
        let mut held = log.subscribe(0).expect("subscribe");
        log.unsupported();
        assert!(matches!(
            held.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        let e = log.subscribe(0).expect_err("refused");
        assert_eq!(e.code(), tonic::Code::Unimplemented);
    }

    #[test]
    fn readers_are_bounded() {
        let log = EventLog::default();
        let held: Vec<_> = (0..MAX_READERS)
            .map(|_| log.subscribe(0).expect("subscribe"))
            .collect();
        let e = log.subscribe(0).expect_err("one too many");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        drop(held);
        assert!(log.subscribe(0).is_ok(), "closed readers free their slot");
    }
}
