//! Stream handles: a [`Stream`] as accepted or opened, and its two halves.

use std::sync::Arc;

use bytes::Bytes;

use super::Error;
use super::shared::{Shared, StreamShared, lock, wait_until};
use crate::Headers;
use crate::frame::{Frame, RST_CANCEL};

/// Largest DATA frame we send. spdystream hands each frame to its reader
/// whole, so there is no gain in more, and smaller frames interleave
/// streams more fairly.
pub const MAX_DATA_CHUNK: usize = 32 * 1024;

/// One stream: the headers that opened it and both directions.
pub struct Stream {
    headers: Headers,
    recv: RecvStream,
    send: SendStream,
}

/// The receiving half of a stream. Dropping it discards what the peer
/// still sends, while still granting it window.
pub struct RecvStream {
    shared: Arc<Shared>,
    stream: Arc<StreamShared>,
}

/// The sending half of a stream. Dropping it unfinished sends FIN (or
/// resets a peer-opened stream never replied to), best effort.
pub struct SendStream {
    shared: Arc<Shared>,
    stream: Arc<StreamShared>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id())
            .field("headers", &self.headers)
            .finish()
    }
}

impl std::fmt::Debug for RecvStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvStream")
            .field("id", &self.stream.id)
            .finish()
    }
}

impl std::fmt::Debug for SendStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendStream")
            .field("id", &self.stream.id)
            .finish()
    }
}

impl Stream {
    pub(crate) fn new(shared: Arc<Shared>, stream: Arc<StreamShared>, headers: Headers) -> Self {
        Stream {
            headers,
            recv: RecvStream {
                shared: Arc::clone(&shared),
                stream: Arc::clone(&stream),
            },
            send: SendStream { shared, stream },
        }
    }

    pub fn id(&self) -> u32 {
        self.send.stream.id
    }

    /// The SYN_STREAM headers: the peer's for a stream it opened, ours for
    /// one we opened.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first value of `name` in [`Stream::headers`], compared
    /// ignoring case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The peer's SYN_REPLY headers, for a stream we opened.
    pub fn reply_headers(&self) -> Option<Headers> {
        lock(&self.send.stream.state).reply_headers.clone()
    }

    /// Sends SYN_REPLY on a stream the peer opened; it must precede any
    /// data. With `fin`, nothing will be sent on the stream.
    pub async fn reply(&mut self, headers: Headers, fin: bool) -> Result<(), Error> {
        let (shared, stream) = (&self.send.shared, &self.send.stream);
        if !stream.peer_opened {
            return Err(Error::Misuse("only a stream the peer opened takes a reply"));
        }
        crate::headers::validate(&headers).map_err(Error::InvalidHeaders)?;
        let permit = shared.queue.reserve().await.map_err(|_| Error::Closed)?;
        {
            let mut ss = lock(&stream.state);
            if let Some(status) = ss.peer_reset {
                return Err(Error::Reset(status));
            }
            if ss.closed {
                return Err(Error::Closed);
            }
            if ss.replied {
                return Err(Error::Misuse("the stream was already replied to"));
            }
            if ss.local_reset {
                return Err(Error::Misuse("the stream was reset"));
            }
            ss.replied = true;
            ss.send_fin |= fin;
            // Queued under the stream lock so no DATA can overtake it.
            permit.send(Frame::SynReply {
                stream_id: stream.id,
                fin,
                headers,
            });
        }
        if fin {
            shared.maybe_remove(stream);
        }
        Ok(())
    }

    pub fn split(self) -> (RecvStream, SendStream) {
        (self.recv, self.send)
    }

    /// Shorthand for the receiving half's [`RecvStream::recv`].
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.recv.recv().await
    }

    /// Shorthand for the sending half's [`SendStream::send`].
    pub async fn send(&mut self, data: &[u8]) -> Result<(), Error> {
        self.send.send(data).await
    }

    /// Shorthand for the sending half's [`SendStream::finish`].
    pub async fn finish(&mut self) -> Result<(), Error> {
        self.send.finish().await
    }
}

impl RecvStream {
    pub fn id(&self) -> u32 {
        self.stream.id
    }

    /// The next chunk of data; `None` after the peer's FIN or RST_STREAM,
    /// or the session's end (data already buffered is still returned).
    pub async fn recv(&mut self) -> Option<Bytes> {
        let stream = &self.stream;
        let (chunk, fin) = wait_until(&stream.notify, || {
            let mut ss = lock(&stream.state);
            if ss.peer_reset.is_some() || ss.local_reset {
                return Some(None);
            }
            if let Some(chunk) = ss.buf.pop_front() {
                ss.buffered -= chunk.len();
                return Some(Some((chunk, ss.recv_fin)));
            }
            if ss.recv_done() {
                return Some(None);
            }
            None
        })
        .await?;
        // Room for the reader, and window for the peer.
        stream.notify.notify_waiters();
        self.shared.credit((!fin).then_some(stream.id), chunk.len());
        Some(chunk)
    }

    /// Whether the peer reset the stream (RST_STREAM).
    pub fn was_reset(&self) -> bool {
        lock(&self.stream.state).peer_reset.is_some()
    }

    /// The peer's RST_STREAM status, if it reset the stream.
    pub fn reset_status(&self) -> Option<u32> {
        lock(&self.stream.state).peer_reset
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        let (discarded, fin) = {
            let mut ss = lock(&self.stream.state);
            ss.recv_dropped = true;
            ss.buf.clear();
            (std::mem::take(&mut ss.buffered), ss.recv_fin)
        };
        self.shared
            .credit((!fin).then_some(self.stream.id), discarded);
        // The reader may be waiting for room that will now never be needed.
        self.stream.notify.notify_waiters();
    }
}

impl SendStream {
    pub fn id(&self) -> u32 {
        self.stream.id
    }

    /// Sends `data` in DATA frames of at most 32 KiB. Waits while the
    /// session's write queue is full, and while the peer's window is used
    /// up if the peer does flow control (see the module documentation).
    pub async fn send(&mut self, data: &[u8]) -> Result<(), Error> {
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.reserve(rest.len().min(MAX_DATA_CHUNK)).await?;
            let (chunk, tail) = rest.split_at(n);
            self.enqueue(Frame::Data {
                stream_id: self.stream.id,
                fin: false,
                data: Bytes::copy_from_slice(chunk),
            })
            .await?;
            rest = tail;
        }
        Ok(())
    }

    /// Takes up to `want` bytes of send window, waiting for some if the
    /// peer enforces windows.
    async fn reserve(&self, want: usize) -> Result<usize, Error> {
        let (shared, stream) = (&self.shared, &self.stream);
        wait_until(&shared.window_notify, || {
            let mut st = lock(&shared.state);
            if st.ended {
                return Some(Err(Error::Closed));
            }
            let mut ss = lock(&stream.state);
            if let Err(e) = sendable(stream, &ss) {
                return Some(Err(e));
            }
            let mut n = want as i64;
            if st.flow_active {
                n = n.min(ss.send_window).min(st.session_send_window);
                if n <= 0 {
                    return None;
                }
            }
            // Windows are tracked even when not enforced, so they are
            // right if the peer turns flow control on later.
            ss.send_window -= n;
            st.session_send_window -= n;
            Some(Ok(n as usize))
        })
        .await
    }

    async fn enqueue(&self, frame: Frame) -> Result<(), Error> {
        self.shared
            .queue
            .send(frame)
            .await
            .map_err(|_| Error::Closed)
    }

    /// Sends FIN: an empty DATA frame flagged FIN. Idempotent.
    pub async fn finish(&mut self) -> Result<(), Error> {
        let permit = self
            .shared
            .queue
            .reserve()
            .await
            .map_err(|_| Error::Closed)?;
        {
            let mut ss = lock(&self.stream.state);
            if ss.send_fin && !ss.aborted() {
                return Ok(());
            }
            sendable(&self.stream, &ss)?;
            ss.send_fin = true;
            permit.send(Frame::Data {
                stream_id: self.stream.id,
                fin: true,
                data: Bytes::new(),
            });
        }
        self.shared.maybe_remove(&self.stream);
        Ok(())
    }

    /// Resets the stream (RST_STREAM with `status`, which may not be 0):
    /// both directions end at once.
    pub async fn reset(&mut self, status: u32) -> Result<(), Error> {
        if status == 0 {
            return Err(Error::Misuse("RST_STREAM status 0 is reserved"));
        }
        let permit = self
            .shared
            .queue
            .reserve()
            .await
            .map_err(|_| Error::Closed)?;
        {
            let mut ss = lock(&self.stream.state);
            if ss.closed {
                return Err(Error::Closed);
            }
            if ss.aborted() {
                return Ok(());
            }
            ss.local_reset = true;
            ss.buf.clear();
            ss.buffered = 0;
            permit.send(Frame::RstStream {
                stream_id: self.stream.id,
                status,
            });
        }
        self.stream.notify.notify_waiters();
        self.shared.window_notify.notify_waiters();
        self.shared.remove(&self.stream);
        Ok(())
    }
}

/// Why the stream can take no more data, if it cannot.
fn sendable(stream: &StreamShared, ss: &super::shared::StreamState) -> Result<(), Error> {
    if let Some(status) = ss.peer_reset {
        return Err(Error::Reset(status));
    }
    if ss.gone_away {
        return Err(Error::GoneAway);
    }
    if ss.closed {
        return Err(Error::Closed);
    }
    if ss.local_reset {
        return Err(Error::Misuse("the stream was reset"));
    }
    if ss.unidirectional {
        return Err(Error::Misuse("the peer opened the stream unidirectional"));
    }
    if ss.send_fin {
        return Err(Error::Misuse("the stream was already finished"));
    }
    if stream.peer_opened && !ss.replied {
        return Err(Error::Misuse("reply to the stream before sending data"));
    }
    Ok(())
}

impl Drop for SendStream {
    fn drop(&mut self) {
        let frame = {
            let mut ss = lock(&self.stream.state);
            if ss.send_done() {
                return;
            }
            if self.stream.peer_opened && !ss.replied {
                ss.local_reset = true;
                Frame::RstStream {
                    stream_id: self.stream.id,
                    status: RST_CANCEL,
                }
            } else {
                ss.send_fin = true;
                Frame::Data {
                    stream_id: self.stream.id,
                    fin: true,
                    data: Bytes::new(),
                }
            }
        };
        match frame {
            // A reset has no data to stay behind, so it takes the fast lane.
            Frame::RstStream { .. } => {
                self.shared.push_control(frame);
                self.stream.notify.notify_waiters();
                self.shared.remove(&self.stream);
                return;
            }
            // FIN must follow our queued data, so it takes the data queue.
            _ => match self.shared.queue.try_send(frame) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(frame)) => {
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        let queue = self.shared.queue.clone();
                        runtime.spawn(async move {
                            let _ = queue.send(frame).await;
                        });
                    }
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
            },
        }
        self.shared.maybe_remove(&self.stream);
    }
}
