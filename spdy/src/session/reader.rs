//! The reader task: parses frames off the connection and routes them.
//!
//! It is the only place that waits on the peer's behalf: when a stream's
//! buffer is full it stops reading the socket until the application makes
//! room, so TCP pushes back on a peer that ignores flow control.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::shared::{Shared, StreamShared, StreamState, lock, wait_until};
use super::{Error, Stream};
use crate::Headers;
use crate::frame::{
    Codec, Frame, MAX_31BIT, RST_INVALID_STREAM, RST_PROTOCOL_ERROR, RST_REFUSED_STREAM,
    RST_STREAM_ALREADY_CLOSED, RST_STREAM_IN_USE, SETTINGS_INITIAL_WINDOW_SIZE,
};

pub(crate) async fn run<R>(shared: Arc<Shared>, io: R)
where
    R: AsyncRead + Unpin,
{
    match read_loop(&shared, io).await {
        Ok(()) => shared.end(Ok(())),
        Err(error @ Error::Io(_)) => shared.end(Err(error)),
        Err(error) => shared.fail(error),
    }
}

async fn read_loop<R>(shared: &Arc<Shared>, mut io: R) -> Result<(), Error>
where
    R: AsyncRead + Unpin,
{
    let mut codec = Codec::new(shared.config.limits);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        while let Some((frame, used)) = codec.decode(&buf)? {
            buf.advance(used);
            handle(shared, frame).await?;
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        if io.read_buf(&mut buf).await.map_err(Error::io)? == 0 {
            if buf.is_empty() {
                return Ok(());
            }
            return Err(Error::io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed inside a frame ({} bytes of it read)",
                    buf.len()
                ),
            )));
        }
    }
}

async fn handle(shared: &Arc<Shared>, frame: Frame) -> Result<(), Error> {
    match frame {
        Frame::SynStream {
            stream_id,
            fin,
            unidirectional,
            headers,
            ..
        } => on_syn_stream(shared, stream_id, fin, unidirectional, headers),
        Frame::SynReply {
            stream_id,
            fin,
            headers,
        } => on_syn_reply(shared, stream_id, fin, headers),
        Frame::RstStream { stream_id, status } => {
            on_rst_stream(shared, stream_id, status);
            Ok(())
        }
        Frame::Settings { entries, .. } => {
            on_settings(shared, &entries);
            Ok(())
        }
        Frame::Ping { id } => on_ping(shared, id),
        Frame::GoAway {
            last_good_stream_id,
            ..
        } => {
            on_goaway(shared, last_good_stream_id);
            Ok(())
        }
        Frame::Headers { stream_id, fin, .. } => {
            // Kubernetes sends none; all that matters is a FIN on one.
            if fin && let Some(stream) = stream(shared, stream_id) {
                finish_recv(shared, &stream);
            }
            Ok(())
        }
        Frame::WindowUpdate { stream_id, delta } => {
            on_window_update(shared, stream_id, delta);
            Ok(())
        }
        Frame::Data {
            stream_id,
            fin,
            data,
        } => on_data(shared, stream_id, fin, data).await,
        Frame::Unknown { kind } => {
            tracing::debug!(kind, "ignoring a SPDY control frame of unknown type");
            Ok(())
        }
    }
}

fn stream(shared: &Shared, id: u32) -> Option<Arc<StreamShared>> {
    lock(&shared.state).streams.get(&id).cloned()
}

/// Whether `id` has the parity of streams the peer opens.
fn peer_parity(shared: &Shared, id: u32) -> bool {
    // Clients open odd ids, servers even ones.
    (id & 1 == 1) == shared.is_server
}

fn control(shared: &Shared, frame: Frame) -> Result<(), Error> {
    if shared.push_control(frame) {
        Ok(())
    } else {
        Err(Error::Violation(
            "the peer keeps sending frames that need a reply without reading the replies".into(),
        ))
    }
}

fn rst(shared: &Shared, stream_id: u32, status: u32) -> Result<(), Error> {
    control(shared, Frame::RstStream { stream_id, status })
}

fn on_syn_stream(
    shared: &Arc<Shared>,
    id: u32,
    fin: bool,
    unidirectional: bool,
    headers: Headers,
) -> Result<(), Error> {
    let (stream, incoming) = {
        let mut st = lock(&shared.state);
        if st.ended {
            return Ok(());
        }
        // Out-of-order or wrong-parity ids get a stream error, as
        // spdystream gives them; the session itself stays usable.
        if !peer_parity(shared, id) || id <= st.last_peer_stream_id {
            drop(st);
            tracing::debug!(id, "refusing a SYN_STREAM with an invalid stream id");
            return rst(shared, id, RST_PROTOCOL_ERROR);
        }
        st.last_peer_stream_id = id;
        let incoming = match &st.incoming {
            Some(tx)
                if !st.goaway_sent
                    && !st.closing
                    && st.peer_streams < shared.config.max_streams =>
            {
                tx.clone()
            }
            _ => {
                drop(st);
                tracing::debug!(
                    id,
                    "refusing a SYN_STREAM: at the stream limit or going away"
                );
                return rst(shared, id, RST_REFUSED_STREAM);
            }
        };
        let stream = StreamShared::new(
            id,
            true,
            StreamState {
                recv_fin: fin,
                unidirectional,
                // We may not send on a stream the peer made one-way.
                send_fin: unidirectional,
                send_window: st.peer_initial_window,
                ..StreamState::default()
            },
        );
        st.streams.insert(id, Arc::clone(&stream));
        st.peer_streams += 1;
        (stream, incoming)
    };
    let handle = Stream::new(Arc::clone(shared), stream, headers);
    if let Err(refused) = incoming.send(handle) {
        // Nobody accepts any more; dropping the handle resets the stream.
        drop(refused);
    }
    Ok(())
}

fn on_syn_reply(shared: &Shared, id: u32, fin: bool, headers: Headers) -> Result<(), Error> {
    let Some(stream) = stream(shared, id) else {
        return Ok(()); // reset or finished meanwhile
    };
    let status = {
        let mut ss = lock(&stream.state);
        if stream.peer_opened {
            Some(RST_PROTOCOL_ERROR)
        } else if ss.replied {
            Some(RST_STREAM_IN_USE)
        } else {
            ss.replied = true;
            ss.reply_headers = Some(headers);
            ss.recv_fin |= fin;
            None
        }
    };
    if let Some(status) = status {
        return reset_locally(shared, &stream, status);
    }
    stream.notify.notify_waiters();
    shared.maybe_remove(&stream);
    Ok(())
}

/// A stream error (§2.4.2): RST_STREAM to the peer, and the stream is over
/// here too.
fn reset_locally(shared: &Shared, stream: &StreamShared, status: u32) -> Result<(), Error> {
    {
        let mut ss = lock(&stream.state);
        ss.local_reset = true;
        ss.buf.clear();
        ss.buffered = 0;
    }
    stream.notify.notify_waiters();
    shared.window_notify.notify_waiters();
    shared.remove(stream);
    rst(shared, stream.id, status)
}

fn on_rst_stream(shared: &Shared, id: u32, status: u32) {
    let Some(stream) = stream(shared, id) else {
        return;
    };
    let discarded = {
        let mut ss = lock(&stream.state);
        ss.peer_reset = Some(status);
        ss.buf.clear();
        std::mem::take(&mut ss.buffered)
    };
    // What the application will never read still counts against the
    // session window.
    shared.credit(None, discarded);
    stream.notify.notify_waiters();
    shared.window_notify.notify_waiters();
    shared.remove(&stream);
}

fn on_settings(shared: &Shared, entries: &[(u8, u32, u32)]) {
    for &(_, id, value) in entries {
        if id != SETTINGS_INITIAL_WINDOW_SIZE || value > MAX_31BIT {
            continue;
        }
        let mut st = lock(&shared.state);
        let delta = i64::from(value) - st.peer_initial_window;
        st.peer_initial_window = i64::from(value);
        st.flow_active = true;
        for stream in st.streams.values() {
            lock(&stream.state).send_window += delta;
        }
    }
    shared.window_notify.notify_waiters();
}

fn on_ping(shared: &Shared, id: u32) -> Result<(), Error> {
    if id == 0 {
        return Ok(());
    }
    // Our pings have our parity: servers even, clients odd.
    let ours = (id & 1 == 0) == shared.is_server;
    if ours {
        if let Some(waiter) = lock(&shared.state).pings.remove(&id) {
            let _ = waiter.send(());
        }
        return Ok(());
    }
    control(shared, Frame::Ping { id })
}

fn on_goaway(shared: &Shared, last_good: u32) {
    let (unprocessed, close) = {
        let mut st = lock(&shared.state);
        st.goaway_received = true;
        // Our streams above `last_good` were never seen by the peer.
        let unprocessed: Vec<_> = st
            .streams
            .values()
            .filter(|s| !s.peer_opened && s.id > last_good)
            .cloned()
            .collect();
        (unprocessed, st.streams.is_empty())
    };
    for stream in &unprocessed {
        lock(&stream.state).gone_away = true;
        stream.notify.notify_waiters();
        shared.remove(stream);
    }
    shared.window_notify.notify_waiters();
    if close {
        shared.request_close();
    }
}

fn on_window_update(shared: &Shared, id: u32, delta: u32) {
    {
        let mut st = lock(&shared.state);
        st.flow_active = true;
        if id == 0 {
            st.session_send_window += i64::from(delta);
        } else if let Some(stream) = st.streams.get(&id) {
            lock(&stream.state).send_window += i64::from(delta);
        }
    }
    shared.window_notify.notify_waiters();
}

fn finish_recv(shared: &Shared, stream: &StreamShared) {
    lock(&stream.state).recv_fin = true;
    stream.notify.notify_waiters();
    shared.maybe_remove(stream);
}

async fn on_data(shared: &Arc<Shared>, id: u32, fin: bool, data: Bytes) -> Result<(), Error> {
    let len = data.len();
    let (stream, never_opened) = {
        let st = lock(&shared.state);
        let never_opened = if peer_parity(shared, id) {
            id > st.last_peer_stream_id
        } else {
            id >= st.next_stream_id
        };
        (st.streams.get(&id).cloned(), never_opened)
    };
    let Some(stream) = stream else {
        // Data racing our RST or a finished stream is dropped quietly, as
        // spdystream does; data for a stream that never existed is an error
        // for that id (§2.2.2).
        shared.credit(None, len);
        if never_opened {
            return rst(shared, id, RST_INVALID_STREAM);
        }
        return Ok(());
    };
    let violation = {
        let ss = lock(&stream.state);
        if ss.recv_fin {
            Some(RST_STREAM_ALREADY_CLOSED)
        } else if !stream.peer_opened && !ss.replied {
            Some(RST_PROTOCOL_ERROR) // data before SYN_REPLY (§2.2.2)
        } else {
            None
        }
    };
    if let Some(status) = violation {
        shared.credit(None, len);
        return reset_locally(shared, &stream, status);
    }

    if len > 0 {
        let limit = shared.config.recv_buffer;
        let mut data = Some(data);
        let kept = wait_until(&stream.notify, || {
            let mut ss = lock(&stream.state);
            if ss.recv_dropped || ss.aborted() {
                return Some(false);
            }
            if ss.buffered == 0 || ss.buffered + len <= limit {
                if let Some(data) = data.take() {
                    ss.buffered += len;
                    ss.buf.push_back(data);
                }
                return Some(true);
            }
            None
        })
        .await;
        if kept {
            stream.notify.notify_waiters();
        } else {
            // Nobody will read it: grant the window back at once.
            shared.credit(Some(id), len);
        }
    }
    if fin {
        finish_recv(shared, &stream);
    }
    Ok(())
}
