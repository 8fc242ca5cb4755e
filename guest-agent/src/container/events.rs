//! The container event log behind the Events RPC.
//!
//! The registry appends an event for every lifecycle change (created,
//! started, stopped, deleted) while it still holds that container's status
//! for writing, so the numbering is the order the changes happened in and a
//! container's STOPPED can never come before its STARTED.
//!
//! Readers have no queues of their own: an Events stream is a cursor into
//! the one ring of the newest [`EVENT_RING`] events, woken when an event is
//! appended. Appending therefore never waits for a reader, and a reader
//! that stops reading costs nothing but its cursor: gRPC only asks the
//! stream for the next event when the connection has room for it. A reader
//! whose next event has been pushed out of the ring is ended with
//! RESOURCE_EXHAUSTED; calling Events again with the last seq it applied
//! then starts with `resync` set, which tells it to re-list.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio_stream::Stream;
use tonic::Status;
use tracing::debug;
use vmpod_agent_proto::v1::{ContainerEvent, ContainerEventType, ContainerStatus};

/// How many events the agent keeps for readers that reconnect or lag.
///
/// A container's whole life is four events, so this covers the last 256
/// container lifecycles: far more than a pod churns through while the host
/// reconnects (a shim restart, a dropped vsock connection). An event is a
/// few hundred bytes, so a full ring is about 300 KiB of guest memory.
pub const EVENT_RING: usize = 1024;

struct Inner {
    /// The newest events, oldest first; their seqs are consecutive and end
    /// at `next_seq - 1`.
    ring: VecDeque<ContainerEvent>,
    next_seq: u64,
    /// The streams that found nothing new, by stream id: one waker each,
    /// however often a stream is polled in between.
    waiting: HashMap<u64, Waker>,
    next_stream: u64,
    /// The agent is shutting down: streams end, so that a graceful server
    /// shutdown is not held up by readers that never finish on their own.
    closed: bool,
}

impl Inner {
    /// The seq of the oldest event held (`next_seq` when none is).
    fn oldest(&self) -> u64 {
        self.next_seq - self.ring.len() as u64
    }

    fn get(&self, seq: u64) -> Option<&ContainerEvent> {
        let index = seq.checked_sub(self.oldest())?;
        self.ring.get(usize::try_from(index).ok()?)
    }
}

/// The agent's container events; see the module doc.
pub struct EventLog {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::with_capacity(EVENT_RING)
    }
}

impl EventLog {
    /// A log holding the newest `capacity` events (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            inner: Mutex::new(Inner {
                ring: VecDeque::with_capacity(capacity),
                next_seq: 1,
                waiting: HashMap::new(),
                next_stream: 0,
                closed: false,
            }),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event and wakes the streams waiting for one; returns its
    /// seq. Never blocks on a reader.
    pub fn emit(&self, kind: ContainerEventType, status: ContainerStatus) -> u64 {
        let (seq, wakers) = {
            let mut inner = self.lock();
            let seq = inner.next_seq;
            inner.next_seq += 1;
            debug!(seq, ?kind, id = %status.id, "container event");
            // Make room first, so the ring never outgrows its allocation.
            if inner.ring.len() >= self.capacity {
                inner.ring.pop_front();
            }
            inner.ring.push_back(ContainerEvent {
                seq,
                r#type: kind as i32,
                status: Some(status),
                resync: false,
            });
            let wakers: Vec<Waker> = inner.waiting.drain().map(|(_, w)| w).collect();
            (seq, wakers)
        };
        for w in wakers {
            w.wake();
        }
        seq
    }

    /// The seq of the newest event, 0 before the first.
    pub fn newest(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// A stream of every event after `after_seq`: those still held, then
    /// live ones. When some of the wanted ones are gone the first message
    /// has `resync` set (the reader re-lists) and the stream goes on from
    /// the oldest held. A seq the log never reached is refused: the reader
    /// is talking to another agent than the one it counted with.
    pub fn subscribe(self: &Arc<Self>, after_seq: u64) -> Result<EventStream, Status> {
        let mut inner = self.lock();
        let newest = inner.next_seq - 1;
        if after_seq > newest {
            return Err(Status::out_of_range(format!(
                "after_seq: {after_seq} is past this agent's newest event, {newest}; \
                 re-list and call again with 0"
            )));
        }
        let oldest = inner.oldest();
        let resync = after_seq + 1 < oldest;
        let id = inner.next_stream;
        inner.next_stream += 1;
        Ok(EventStream {
            log: Arc::clone(self),
            id,
            next: if resync { oldest } else { after_seq + 1 },
            resync,
            sent_any: false,
            done: false,
        })
    }

    /// Ends every stream (after what each has already taken), now and for
    /// later subscribers; for the agent's shutdown.
    pub fn close(&self) {
        let wakers: Vec<Waker> = {
            let mut inner = self.lock();
            inner.closed = true;
            inner.waiting.drain().map(|(_, w)| w).collect()
        };
        for w in wakers {
            w.wake();
        }
    }
}

/// One Events call: a cursor into the log's ring.
pub struct EventStream {
    log: Arc<EventLog>,
    id: u64,
    /// The seq of the next event to send.
    next: u64,
    /// The next message must say that events were lost.
    resync: bool,
    sent_any: bool,
    done: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("id", &self.id)
            .field("next", &self.next)
            .field("resync", &self.resync)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Stream for EventStream {
    type Item = Result<ContainerEvent, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut inner = this.log.lock();
        if inner.closed {
            this.done = true;
            inner.waiting.remove(&this.id);
            return Poll::Ready(None);
        }
        let oldest = inner.oldest();
        if this.next < oldest {
            if this.sent_any {
                // Carrying on would skip events, and resync is only
                // promised on a first message: end, so the reader comes
                // back with its seq and is told to re-list.
                this.done = true;
                inner.waiting.remove(&this.id);
                return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                    "events reader fell behind: event {} was dropped from the agent's \
                     {}-event ring before it was read; call Events again with the last \
                     seq applied",
                    this.next, this.log.capacity
                )))));
            }
            // Nothing sent yet (the reader did not poll before the ring
            // moved on): this can still be the resync message.
            this.next = oldest;
            this.resync = true;
        }
        match inner.get(this.next) {
            Some(event) => {
                let mut event = event.clone();
                event.resync = std::mem::take(&mut this.resync);
                this.next += 1;
                this.sent_any = true;
                Poll::Ready(Some(Ok(event)))
            }
            None => {
                match inner.waiting.get_mut(&this.id) {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    Some(w) => w.clone_from(cx.waker()),
                    None => {
                        inner.waiting.insert(this.id, cx.waker().clone());
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.log.lock().waiting.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpod_agent_proto::v1::ContainerState;

    use ContainerEventType::{
        ContainerEventCreated as Created, ContainerEventDeleted as Deleted,
        ContainerEventStarted as Started, ContainerEventStopped as Stopped,
    };

    fn status(id: &str, state: ContainerState) -> ContainerStatus {
        ContainerStatus {
            id: id.into(),
            state: state as i32,
            ..Default::default()
        }
    }

    fn lifecycle(log: &EventLog, id: &str) {
        log.emit(Created, status(id, ContainerState::ContainerCreated));
        log.emit(Started, status(id, ContainerState::ContainerRunning));
        log.emit(Stopped, status(id, ContainerState::ContainerExited));
        log.emit(Deleted, status(id, ContainerState::ContainerExited));
    }

    /// Polls once without a runtime: Some(item) if one was ready.
    fn poll(s: &mut EventStream) -> Option<Option<Result<ContainerEvent, Status>>> {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(s).poll_next(&mut cx) {
            Poll::Ready(item) => Some(item),
            Poll::Pending => None,
        }
    }

    /// Every event ready now, stopping at the first pending poll.
    fn drain(s: &mut EventStream) -> Vec<ContainerEvent> {
        let mut out = Vec::new();
        while let Some(Some(item)) = poll(s) {
            out.push(item.expect("event"));
        }
        out
    }

    fn seqs(events: &[ContainerEvent]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn events_are_numbered_in_order_from_one() {
        let log = Arc::new(EventLog::default());
        assert_eq!(log.newest(), 0);
        let mut s = log.subscribe(0).unwrap();
        assert!(poll(&mut s).is_none(), "nothing yet");
        lifecycle(&log, "a");
        lifecycle(&log, "b");
        let got = drain(&mut s);
        assert_eq!(seqs(&got), (1..=8).collect::<Vec<_>>());
        let kinds: Vec<i32> = got[..4].iter().map(|e| e.r#type).collect();
        assert_eq!(
            kinds,
            [Created, Started, Stopped, Deleted].map(|k| k as i32)
        );
        assert!(got.iter().all(|e| !e.resync));
        assert_eq!(got[4].status.as_ref().unwrap().id, "b");
        assert_eq!(log.newest(), 8);
    }

    #[test]
    fn replay_starts_after_the_given_seq() {
        let log = Arc::new(EventLog::default());
        lifecycle(&log, "a");
        let mut s = log.subscribe(2).unwrap();
        assert_eq!(seqs(&drain(&mut s)), [3, 4]);
        // Then live ones, on the same stream.
        log.emit(Created, status("b", ContainerState::ContainerCreated));
        assert_eq!(seqs(&drain(&mut s)), [5]);
        // Caught up: nothing to replay, no resync.
        let mut s = log.subscribe(5).unwrap();
        assert!(poll(&mut s).is_none());
        let e = log.subscribe(6).expect_err("past the newest");
        assert_eq!(e.code(), tonic::Code::OutOfRange);
        assert!(e.message().contains("after_seq: 6"), "{}", e.message());
    }

    #[test]
    fn ring_overflow_marks_resync() {
        let log = Arc::new(EventLog::with_capacity(4));
        for _ in 0..3 {
            lifecycle(&log, "a");
        }
        // Holds 9..=12; 3..=8 are gone.
        let mut s = log.subscribe(2).unwrap();
        let got = drain(&mut s);
        assert_eq!(seqs(&got), [9, 10, 11, 12]);
        assert!(got[0].resync);
        assert!(got[1..].iter().all(|e| !e.resync));
        // 0 means "from the oldest held", which is a resync too once
        // events were dropped.
        let got = drain(&mut log.subscribe(0).unwrap());
        assert!(got[0].resync && got[0].seq == 9);
        // Exactly at the edge: nothing wanted was dropped.
        let got = drain(&mut log.subscribe(8).unwrap());
        assert_eq!(got[0].seq, 9);
        assert!(!got[0].resync);
        // A stream that had not read yet when the ring moved on still
        // starts with the resync message.
        let mut s = log.subscribe(12).unwrap();
        lifecycle(&log, "b");
        lifecycle(&log, "c");
        let got = drain(&mut s);
        assert_eq!(seqs(&got), [17, 18, 19, 20]);
        assert!(got[0].resync);
    }

    #[test]
    fn two_subscribers_each_get_every_event() {
        let log = Arc::new(EventLog::default());
        let mut one = log.subscribe(0).unwrap();
        lifecycle(&log, "a");
        let mut two = log.subscribe(0).unwrap();
        let first = drain(&mut one);
        lifecycle(&log, "b");
        let mut all_one = first;
        all_one.extend(drain(&mut one));
        let all_two = drain(&mut two);
        assert_eq!(seqs(&all_one), (1..=8).collect::<Vec<_>>());
        assert_eq!(all_one, all_two);
    }

    #[test]
    fn slow_subscriber_is_ended_and_costs_no_memory() {
        let log = Arc::new(EventLog::with_capacity(8));
        let mut slow = log.subscribe(0).unwrap();
        let mut fast = log.subscribe(0).unwrap();
        log.emit(Created, status("a", ContainerState::ContainerCreated));
        assert_eq!(seqs(&drain(&mut slow)), [1]);
        let allocated = log.lock().ring.capacity();
        let mut fast_seen = Vec::new();
        for i in 0..1000 {
            log.emit(
                Created,
                status(&format!("c{i}"), ContainerState::ContainerCreated),
            );
            fast_seen.extend(drain(&mut fast));
        }
        // Appending never waited for the slow reader, the fast one missed
        // nothing, and the log still holds only its capacity.
        assert_eq!(seqs(&fast_seen), (1..=1001).collect::<Vec<_>>());
        assert_eq!(log.lock().ring.len(), 8);
        assert_eq!(log.lock().ring.capacity(), allocated);
        // The slow one is told it fell behind, then ends.
        let e = poll(&mut slow).unwrap().unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().contains("event 2 was dropped"),
            "{}",
            e.message()
        );
        assert!(matches!(poll(&mut slow), Some(None)));
        // Coming back with its seq, it is told to re-list.
        let got = drain(&mut log.subscribe(1).unwrap());
        assert_eq!(got[0].seq, 994);
        assert!(got[0].resync);
    }

    #[test]
    fn pending_streams_are_woken_and_forgotten_when_dropped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio_stream::StreamExt;
            let log = Arc::new(EventLog::default());
            let mut a = log.subscribe(0).unwrap();
            let mut b = log.subscribe(0).unwrap();
            let emitter = {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    log.emit(Created, status("x", ContainerState::ContainerCreated));
                })
            };
            let (ea, eb) = tokio::join!(a.next(), b.next());
            assert_eq!(ea.unwrap().unwrap().seq, 1);
            assert_eq!(eb.unwrap().unwrap().seq, 1);
            emitter.await.unwrap();
            assert!(poll(&mut a).is_none());
            assert_eq!(log.lock().waiting.len(), 1);
            drop(a);
            assert!(log.lock().waiting.is_empty());
            // Shutdown ends the streams.
            let waiter = tokio::spawn(async move { b.next().await.is_none() });
            tokio::task::yield_now().await;
            log.close();
            assert!(waiter.await.unwrap());
            assert!(log.subscribe(0).unwrap().next().await.is_none());
        });
    }
}
