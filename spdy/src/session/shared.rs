//! State shared by a session's handles and its two tasks.
//!
//! Locks are std mutexes, never held across an await. Order: a session's
//! [`State`] before a stream's [`StreamState`]; [`Control`] is a leaf and may
//! be taken under either.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use super::{Config, Error, Stream};
use crate::frame::{DEFAULT_WINDOW_SIZE, Frame, MAX_31BIT};

/// Frames an application may have queued for the writer before `send`
/// waits: with 32 KiB DATA frames, at most about 2 MiB per session.
pub(crate) const QUEUE_FRAMES: usize = 64;

/// Frames the reader may have queued in reply to the peer (PING echoes,
/// RST_STREAMs) that the writer has not sent yet. A peer that keeps sending
/// pings without reading our replies reaches this and loses the session.
const MAX_CONTROL_FRAMES: usize = 1024;

/// How long a closing session waits for its writer to flush before it
/// drops the connection anyway.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The session receive window we grant the peer (SPDY/3.1 starts every
/// session at 64 KiB): big enough that one stream the application does not
/// read cannot use up the whole session's window and stall the others.
pub(crate) fn session_window(config: &Config) -> u32 {
    let per_stream = config.initial_window.clamp(1, MAX_31BIT);
    per_stream
        .saturating_mul(16)
        .clamp(DEFAULT_WINDOW_SIZE, MAX_31BIT)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind;
    // keep going rather than turn one panic into many.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits until `check` returns something. `check` runs with the waiter
/// already registered, so a `notify_waiters` after a state change that
/// `check` missed still wakes it.
pub(crate) async fn wait_until<T>(notify: &Notify, mut check: impl FnMut() -> Option<T>) -> T {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(value) = check() {
            return value;
        }
        notified.await;
    }
}

pub(crate) struct Shared {
    pub config: Config,
    pub is_server: bool,
    pub state: Mutex<State>,
    pub control: Mutex<Control>,
    /// Wakes the writer: control frames or a close request are waiting.
    pub control_notify: Notify,
    /// Wakes senders waiting for flow-control window, and on reset or end.
    pub window_notify: Notify,
    /// Application frames, in the order they must reach the wire.
    pub queue: mpsc::Sender<Frame>,
    /// `Some` once the session is over, with how it ended.
    pub ended: watch::Sender<Option<Result<(), Error>>>,
    pub tasks: Mutex<Tasks>,
}

#[derive(Default)]
pub(crate) struct Tasks {
    pub reader: Option<AbortHandle>,
    pub writer: Option<AbortHandle>,
}

pub(crate) struct State {
    pub streams: HashMap<u32, Arc<StreamShared>>,
    /// Next id for a stream we open: odd for a client, even for a server.
    pub next_stream_id: u32,
    pub next_ping_id: u32,
    pub pings: HashMap<u32, oneshot::Sender<()>>,
    /// Highest stream id the peer has opened (accepted or refused).
    pub last_peer_stream_id: u32,
    /// Peer-opened streams still in `streams`, bounded by `max_streams`.
    pub peer_streams: usize,
    pub goaway_sent: bool,
    pub goaway_received: bool,
    /// `close()` was called or the session is winding down: no new work.
    pub closing: bool,
    pub ended: bool,
    pub incoming: Option<mpsc::UnboundedSender<Stream>>,
    /// Whether the peer does flow control, so its windows bind us; see the
    /// module documentation.
    pub flow_active: bool,
    pub peer_initial_window: i64,
    pub session_send_window: i64,
}

impl State {
    /// Drops a stream from routing. Returns whether the session should now
    /// close, because GOAWAY was exchanged and nothing is left.
    pub fn remove(&mut self, stream: &StreamShared) -> bool {
        if let Some(s) = self.streams.get(&stream.id)
            && std::ptr::eq(Arc::as_ptr(s), stream)
        {
            self.streams.remove(&stream.id);
            if stream.peer_opened {
                self.peer_streams = self.peer_streams.saturating_sub(1);
            }
        }
        self.streams.is_empty() && (self.goaway_sent || self.goaway_received)
    }
}

/// What the reader (and dropped handles) ask the writer to send, apart from
/// the application's ordered queue. Unbounded in form, bounded in fact:
/// frames by [`MAX_CONTROL_FRAMES`], window credit by one entry per stream.
#[derive(Default)]
pub(crate) struct Control {
    pub frames: VecDeque<Frame>,
    /// Bytes consumed but not yet granted back, per stream (0 = session).
    unacked: HashMap<u32, u64>,
    /// Credit that crossed its threshold and awaits a WINDOW_UPDATE.
    pub ready: BTreeMap<u32, u64>,
    /// Flush what is queued, send GOAWAY if not yet sent, and shut down.
    pub close: bool,
}

impl Control {
    /// Queues a frame; false if the peer has let too many pile up.
    pub fn push(&mut self, frame: Frame) -> bool {
        if self.frames.len() >= MAX_CONTROL_FRAMES {
            return false;
        }
        self.frames.push_back(frame);
        true
    }

    /// Records `n` consumed bytes on `id`; true if a WINDOW_UPDATE is due.
    pub fn credit(&mut self, id: u32, n: u64, threshold: u64) -> bool {
        if n == 0 {
            return false;
        }
        let pending = self.unacked.entry(id).or_default();
        *pending += n;
        if *pending < threshold {
            return false;
        }
        let n = std::mem::take(pending);
        self.unacked.remove(&id);
        *self.ready.entry(id).or_default() += n;
        true
    }

    pub fn forget(&mut self, id: u32) {
        self.unacked.remove(&id);
    }

    /// Takes everything due, window updates first so a stalled peer
    /// resumes as soon as possible.
    pub fn take(&mut self) -> (Vec<Frame>, bool) {
        let mut frames = Vec::with_capacity(self.ready.len() + self.frames.len());
        for (stream_id, mut n) in std::mem::take(&mut self.ready) {
            while n > 0 {
                let delta = n.min(u64::from(MAX_31BIT));
                n -= delta;
                frames.push(Frame::WindowUpdate {
                    stream_id,
                    delta: delta as u32,
                });
            }
        }
        frames.extend(self.frames.drain(..));
        (frames, self.close)
    }
}

pub(crate) struct StreamShared {
    pub id: u32,
    pub peer_opened: bool,
    pub state: Mutex<StreamState>,
    /// Wakes the application's `recv`, a pending `open`, and the reader
    /// waiting for buffer space.
    pub notify: Notify,
}

#[derive(Default)]
pub(crate) struct StreamState {
    pub buf: VecDeque<Bytes>,
    pub buffered: usize,
    pub recv_fin: bool,
    pub recv_dropped: bool,
    pub peer_reset: Option<u32>,
    pub local_reset: bool,
    /// The peer's GOAWAY said it never processed this stream.
    pub gone_away: bool,
    /// The session ended.
    pub closed: bool,
    /// Peer-opened: we sent SYN_REPLY. Opened by us: we received it.
    pub replied: bool,
    pub reply_headers: Option<crate::Headers>,
    pub unidirectional: bool,
    pub send_fin: bool,
    pub send_window: i64,
}

impl StreamState {
    pub fn recv_done(&self) -> bool {
        self.recv_fin || self.aborted()
    }

    pub fn send_done(&self) -> bool {
        self.send_fin || self.aborted()
    }

    pub fn aborted(&self) -> bool {
        self.peer_reset.is_some() || self.local_reset || self.gone_away || self.closed
    }
}

impl StreamShared {
    pub fn new(id: u32, peer_opened: bool, state: StreamState) -> Arc<Self> {
        Arc::new(StreamShared {
            id,
            peer_opened,
            state: Mutex::new(state),
            notify: Notify::new(),
        })
    }
}

impl Shared {
    /// Threshold of consumed bytes before a stream WINDOW_UPDATE: half the
    /// window, as is usual, so the peer never idles waiting for credit.
    pub fn stream_threshold(&self) -> u64 {
        u64::from(self.config.initial_window.max(2) / 2)
    }

    pub fn session_threshold(&self) -> u64 {
        u64::from(session_window(&self.config) / 2)
    }

    /// Queues a control frame for the writer. False means the peer is
    /// flooding us, which only the reader turns into an error.
    pub fn push_control(&self, frame: Frame) -> bool {
        let pushed = lock(&self.control).push(frame);
        self.control_notify.notify_one();
        pushed
    }

    /// Grants the peer `n` more bytes on `stream_id` (if it still matters)
    /// and on the session.
    pub fn credit(&self, stream_id: Option<u32>, n: usize) {
        let n = n as u64;
        let mut due = false;
        {
            let mut control = lock(&self.control);
            if let Some(id) = stream_id {
                due |= control.credit(id, n, self.stream_threshold());
            }
            due |= control.credit(0, n, self.session_threshold());
        }
        if due {
            self.control_notify.notify_one();
        }
    }

    /// Forgets `stream` once both directions are done.
    pub fn maybe_remove(&self, stream: &StreamShared) {
        let done = {
            let ss = lock(&stream.state);
            ss.recv_done() && ss.send_done()
        };
        if done {
            self.remove(stream);
        }
    }

    pub fn remove(&self, stream: &StreamShared) {
        let close = lock(&self.state).remove(stream);
        lock(&self.control).forget(stream.id);
        if close {
            self.request_close();
        }
    }

    /// Asks the writer to flush, say GOAWAY and shut the connection.
    pub fn request_close(&self) {
        lock(&self.state).closing = true;
        lock(&self.control).close = true;
        self.control_notify.notify_one();
    }

    /// Ends the session with a protocol error: GOAWAY(PROTOCOL_ERROR), then
    /// close. The first ending wins.
    pub fn fail(&self, error: Error) {
        tracing::warn!(%error, "SPDY session failed");
        let goaway = {
            let mut st = lock(&self.state);
            if st.ended || st.goaway_sent {
                None
            } else {
                st.goaway_sent = true;
                Some(Frame::GoAway {
                    last_good_stream_id: st.last_peer_stream_id,
                    status: crate::frame::GOAWAY_PROTOCOL_ERROR,
                })
            }
        };
        if let Some(goaway) = goaway {
            lock(&self.control).frames.push_back(goaway);
        }
        self.end(Err(error));
    }

    /// Marks the session over: wakes every waiter, ends `accept`, stops the
    /// reader, and gives the writer [`CLOSE_GRACE`] to flush and shut down.
    pub fn end(&self, result: Result<(), Error>) {
        let (streams, pings, incoming) = {
            let mut st = lock(&self.state);
            if st.ended {
                return;
            }
            st.ended = true;
            st.closing = true;
            (
                std::mem::take(&mut st.streams),
                std::mem::take(&mut st.pings),
                st.incoming.take(),
            )
        };
        for stream in streams.values() {
            lock(&stream.state).closed = true;
            stream.notify.notify_waiters();
        }
        drop(pings);
        drop(incoming);
        self.window_notify.notify_waiters();
        self.ended.send_replace(Some(result));

        lock(&self.control).close = true;
        self.control_notify.notify_one();
        let tasks = lock(&self.tasks);
        if let Some(reader) = &tasks.reader {
            reader.abort();
        }
        if let Some(writer) = tasks.writer.clone()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                tokio::time::sleep(CLOSE_GRACE).await;
                writer.abort();
            });
        }
    }

    pub fn is_ended(&self) -> bool {
        lock(&self.state).ended
    }
}
