//! A SPDY/3.1 session over any tokio byte stream.
//!
//! Two tasks run each session. The reader parses frames and routes them to
//! streams; the writer owns the write half and the header compressor and
//! sends frames in queue order. Applications hold cheap handles:
//! [`Session`] (clonable) opens streams, pings and closes; [`Incoming`]
//! yields the streams the peer opens; each [`Stream`] splits into a
//! [`RecvStream`] and a [`SendStream`].
//!
//! # Flow control
//!
//! SPDY/3.1 gives every stream and the session a send window that the
//! receiver widens with WINDOW_UPDATE. Kubernetes' Go side (moby/spdystream)
//! speaks SPDY/3 without it: it never sends WINDOW_UPDATE and ignores ours.
//! Honouring its (never widened) 64 KiB windows would stall every stream
//! after 64 KiB, so flow control here is advisory in one direction:
//!
//! - Receiving, we always play by the rules: SETTINGS announce our initial
//!   stream window, a session WINDOW_UPDATE widens the session window (see
//!   [`Config::initial_window`]), and WINDOW_UPDATEs follow as the
//!   application consumes data.
//! - Sending, we track the peer's windows from the start but only wait on
//!   them once the peer has shown it does flow control: at least one
//!   WINDOW_UPDATE or an INITIAL_WINDOW_SIZE setting. Two of our own
//!   sessions therefore do full flow control with each other.
//!
//! Memory stays bounded either way. A stream buffers at most
//! [`Config::recv_buffer`] bytes (or one frame, if a frame is larger); when
//! a peer that ignores windows fills it, the reader stops reading the
//! socket until the application catches up, so TCP pushes back. That
//! stalls the session's other streams too, which a peer doing flow control
//! never causes.
//!
//! # Errors
//!
//! A frame that breaks the protocol in a way that corrupts the session (bad
//! framing, undecodable headers, over-limit sizes) ends the session: GOAWAY
//! with PROTOCOL_ERROR, then close, and [`Session::closed`] returns the
//! error. Errors confined to a stream get a RST_STREAM for that stream, as
//! the spec asks: a SYN_STREAM whose id has the wrong parity or does not
//! increase (PROTOCOL_ERROR, as spdystream answers), data before SYN_REPLY
//! (PROTOCOL_ERROR), data after FIN (STREAM_ALREADY_CLOSED), a second
//! SYN_REPLY (STREAM_IN_USE), data for a stream that never existed
//! (INVALID_STREAM). Streams beyond [`Config::max_streams`], or opened after
//! our GOAWAY, are refused with REFUSED_STREAM rather than ignored, so the
//! peer learns at once.

mod reader;
mod shared;
mod stream;
mod writer;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use self::shared::{
    Control, QUEUE_FRAMES, Shared, State, StreamShared, StreamState, Tasks, lock, wait_until,
};
pub use self::stream::{RecvStream, SendStream, Stream};
use crate::Headers;
use crate::frame::{
    DEFAULT_WINDOW_SIZE, Frame, FrameError, GOAWAY_OK, Limits, MAX_31BIT, RST_CANCEL,
    SETTINGS_INITIAL_WINDOW_SIZE,
};

/// How a session bounds what a peer can make it hold.
#[derive(Debug, Clone)]
pub struct Config {
    pub limits: Limits,
    /// Peer-opened streams open at once; more are refused (REFUSED_STREAM).
    pub max_streams: usize,
    /// Bytes buffered per stream before the reader stops reading the socket.
    pub recv_buffer: usize,
    /// The stream receive window we announce (SPDY's default is 64 KiB).
    /// The session window we grant is 16 times this, so that one stream
    /// left unread cannot block the others.
    pub initial_window: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            max_streams: 128,
            recv_buffer: 256 * 1024,
            initial_window: DEFAULT_WINDOW_SIZE,
        }
    }
}

/// What went wrong with a session or a stream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("SPDY connection I/O failed: {0}")]
    Io(Arc<std::io::Error>),
    #[error("SPDY peer sent a malformed frame: {0}")]
    Protocol(#[from] FrameError),
    #[error("SPDY peer broke the session's rules: {0}")]
    Violation(String),
    #[error("the peer reset the stream (RST_STREAM status {0})")]
    Reset(u32),
    #[error("the SPDY session is going away (GOAWAY): no new streams")]
    GoneAway,
    #[error("the SPDY session is closed")]
    Closed,
    #[error("headers cannot be sent over SPDY: {0}")]
    InvalidHeaders(FrameError),
    #[error("no stream ids are left on this SPDY session")]
    StreamIdsExhausted,
    #[error("SPDY stream misused: {0}")]
    Misuse(&'static str),
}

impl Error {
    pub(crate) fn io(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

/// A handle on a session. Clones share it.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

/// The streams the peer opens.
pub struct Incoming {
    rx: mpsc::UnboundedReceiver<Stream>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("server", &self.shared.is_server)
            .field("ended", &self.shared.is_ended())
            .finish()
    }
}

impl Session {
    /// Starts the server end: we open even stream ids and ping with even
    /// ids. Must be called inside a tokio runtime.
    pub fn server<IO>(io: IO, config: Config) -> (Session, Incoming)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::start(io, config, true)
    }

    /// Starts the client end: odd stream and ping ids.
    pub fn client<IO>(io: IO, config: Config) -> (Session, Incoming)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::start(io, config, false)
    }

    fn start<IO>(io: IO, mut config: Config, is_server: bool) -> (Session, Incoming)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        config.initial_window = config.initial_window.clamp(1, MAX_31BIT);
        let (queue_tx, queue_rx) = mpsc::channel(QUEUE_FRAMES);
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let first_id = if is_server { 2 } else { 1 };

        // Announce our windows first, so a peer that does flow control
        // (another of ours) knows we do too.
        let mut control = Control::default();
        control.frames.push_back(Frame::Settings {
            clear: false,
            entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, config.initial_window)],
        });
        let session_window = shared::session_window(&config);
        if session_window > DEFAULT_WINDOW_SIZE {
            control.frames.push_back(Frame::WindowUpdate {
                stream_id: 0,
                delta: session_window - DEFAULT_WINDOW_SIZE,
            });
        }

        let shared = Arc::new(Shared {
            config,
            is_server,
            state: Mutex::new(State {
                streams: Default::default(),
                next_stream_id: first_id,
                next_ping_id: first_id,
                pings: Default::default(),
                last_peer_stream_id: 0,
                peer_streams: 0,
                goaway_sent: false,
                goaway_received: false,
                closing: false,
                ended: false,
                incoming: Some(incoming_tx),
                flow_active: false,
                peer_initial_window: i64::from(DEFAULT_WINDOW_SIZE),
                session_send_window: i64::from(DEFAULT_WINDOW_SIZE),
            }),
            control: Mutex::new(control),
            control_notify: Notify::new(),
            window_notify: Notify::new(),
            queue: queue_tx,
            ended: watch::Sender::new(None),
            tasks: Mutex::new(Tasks::default()),
        });
        shared.control_notify.notify_one();

        let (read_half, write_half) = tokio::io::split(io);
        let writer = tokio::spawn(writer::run(Arc::clone(&shared), write_half, queue_rx));
        let reader = tokio::spawn(reader::run(Arc::clone(&shared), read_half));
        {
            let mut tasks = lock(&shared.tasks);
            tasks.writer = Some(writer.abort_handle());
            tasks.reader = Some(reader.abort_handle());
        }
        // The session may have ended before the handles were stored.
        if shared.is_ended() {
            reader.abort();
        }
        (Session { shared }, Incoming { rx: incoming_rx })
    }

    /// Opens a stream: sends SYN_STREAM and waits for the peer's SYN_REPLY.
    /// With `fin`, nothing will be sent on it (the stream is half-closed).
    pub async fn open(&self, headers: Headers, fin: bool) -> Result<Stream, Error> {
        crate::headers::validate(&headers).map_err(Error::InvalidHeaders)?;
        let permit = self
            .shared
            .queue
            .reserve()
            .await
            .map_err(|_| Error::Closed)?;
        let stream = {
            let mut st = lock(&self.shared.state);
            if st.ended || st.closing {
                return Err(Error::Closed);
            }
            if st.goaway_received || st.goaway_sent {
                return Err(Error::GoneAway);
            }
            let id = st.next_stream_id;
            if id > MAX_31BIT {
                return Err(Error::StreamIdsExhausted);
            }
            st.next_stream_id += 2;
            let stream = StreamShared::new(
                id,
                false,
                StreamState {
                    send_fin: fin,
                    send_window: st.peer_initial_window,
                    ..StreamState::default()
                },
            );
            st.streams.insert(id, Arc::clone(&stream));
            // Sent under the lock: ids must reach the wire in increasing
            // order, and the lock orders the allocations.
            permit.send(Frame::SynStream {
                stream_id: id,
                associated_id: 0,
                priority: 0,
                fin,
                unidirectional: false,
                headers: headers.clone(),
            });
            stream
        };

        let mut pending = PendingOpen {
            shared: &self.shared,
            stream: Some(&stream),
        };
        let replied = wait_until(&stream.notify, || {
            let ss = lock(&stream.state);
            if ss.replied {
                Some(Ok(()))
            } else if let Some(status) = ss.peer_reset {
                Some(Err(Error::Reset(status)))
            } else if ss.gone_away {
                Some(Err(Error::GoneAway))
            } else if ss.closed || ss.local_reset {
                Some(Err(Error::Closed))
            } else {
                None
            }
        })
        .await;
        pending.stream = None;
        drop(pending);
        match replied {
            Ok(()) => Ok(Stream::new(Arc::clone(&self.shared), stream, headers)),
            Err(e) => {
                self.shared.remove(&stream);
                Err(e)
            }
        }
    }

    /// Sends a PING and waits for its echo; returns the round trip.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = lock(&self.shared.state);
            if st.ended || st.closing {
                return Err(Error::Closed);
            }
            let id = st.next_ping_id;
            // Ping ids may wrap; keep the parity, skip 0.
            st.next_ping_id = match id.checked_add(2) {
                Some(next) if next <= MAX_31BIT => next,
                _ => 2 - u32::from(!self.shared.is_server),
            };
            st.pings.insert(id, tx);
            // PINGs skip the data queue, so the time measures the network
            // rather than our backlog.
            lock(&self.shared.control)
                .frames
                .push_back(Frame::Ping { id });
        }
        self.shared.control_notify.notify_one();
        let start = Instant::now();
        rx.await.map_err(|_| Error::Closed)?;
        Ok(start.elapsed())
    }

    /// Sends GOAWAY(OK): the peer may open no more streams, and we open
    /// none. Streams already open go on; the session closes once the last
    /// one is done (at once if there are none).
    pub async fn goaway(&self) {
        let Ok(permit) = self.shared.queue.reserve().await else {
            return;
        };
        let close = {
            let mut st = lock(&self.shared.state);
            if st.goaway_sent || st.ended {
                return;
            }
            st.goaway_sent = true;
            permit.send(Frame::GoAway {
                last_good_stream_id: st.last_peer_stream_id,
                status: GOAWAY_OK,
            });
            st.streams.is_empty()
        };
        if close {
            self.shared.request_close();
        }
    }

    /// Resolves when the session is over: `Ok` after a close, the peer's
    /// EOF or a GOAWAY wind-down; `Err` when it failed (a protocol error,
    /// after which we sent GOAWAY(PROTOCOL_ERROR), or an I/O error).
    pub async fn closed(&self) -> Result<(), Error> {
        let mut rx = self.shared.ended.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(ended) => ended.clone().unwrap_or(Ok(())),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Closes the session now: flushes queued frames, sends GOAWAY(OK) and
    /// shuts the connection. Streams still open end with it.
    pub async fn close(&self) {
        self.shared.request_close();
        if tokio::time::timeout(shared::CLOSE_GRACE, self.closed())
            .await
            .is_err()
        {
            self.shared.end(Ok(()));
        }
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        self.shared.is_ended()
    }
}

/// Resets a stream whose `open` was abandoned before the reply, so it does
/// not linger.
struct PendingOpen<'a> {
    shared: &'a Arc<Shared>,
    stream: Option<&'a Arc<StreamShared>>,
}

impl Drop for PendingOpen<'_> {
    fn drop(&mut self) {
        let Some(stream) = self.stream else {
            return;
        };
        let already_over = {
            let mut ss = lock(&stream.state);
            let over = ss.aborted();
            ss.local_reset = true;
            over
        };
        self.shared.remove(stream);
        if !already_over {
            self.shared.push_control(Frame::RstStream {
                stream_id: stream.id,
                status: RST_CANCEL,
            });
        }
    }
}

impl Incoming {
    /// The next stream the peer opened, not yet replied to. `None` once the
    /// session has ended.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.rx.recv().await
    }
}
