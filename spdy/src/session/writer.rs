//! The writer task: the only owner of the connection's write half and of
//! the header compressor, so frames are compressed in the order they are
//! sent, as the shared zlib stream requires.

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Error;
use super::shared::{Shared, lock};
use crate::frame::{Codec, Frame, GOAWAY_OK};

/// Bytes gathered before a write, so small frames share a syscall but
/// control frames are not stuck behind megabytes of data.
const BATCH: usize = 256 * 1024;

pub(crate) async fn run<W>(shared: Arc<Shared>, mut io: W, mut queue: mpsc::Receiver<Frame>)
where
    W: AsyncWrite + Unpin,
{
    let result = match write_loop(&shared, &mut io, &mut queue).await {
        // The peer closed the connection: the same as its EOF, which the
        // reader may not have seen yet.
        Err(Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(())
        }
        result => result,
    };
    if let Err(error) = &result {
        tracing::debug!(%error, "SPDY writer stopped");
    }
    shared.end(result);
}

async fn write_loop<W>(
    shared: &Shared,
    io: &mut W,
    queue: &mut mpsc::Receiver<Frame>,
) -> Result<(), Error>
where
    W: AsyncWrite + Unpin,
{
    let mut codec = Codec::new(shared.config.limits);
    let mut out = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            biased;
            () = shared.control_notify.notified() => None,
            frame = queue.recv() => frame,
        };
        let (control, close) = lock(&shared.control).take();
        for frame in &control {
            encode(&mut codec, frame, &mut out)?;
        }
        if let Some(frame) = first {
            encode(&mut codec, &frame, &mut out)?;
        }
        while out.len() < BATCH || close {
            match queue.try_recv() {
                Ok(frame) => encode(&mut codec, &frame, &mut out)?,
                Err(_) => break,
            }
        }
        if close {
            // Whatever the reader queued meanwhile, then GOAWAY: the spec
            // wants one before every close.
            let (control, _) = lock(&shared.control).take();
            for frame in &control {
                encode(&mut codec, frame, &mut out)?;
            }
            let goaway = {
                let mut st = lock(&shared.state);
                (!st.goaway_sent).then(|| {
                    st.goaway_sent = true;
                    Frame::GoAway {
                        last_good_stream_id: st.last_peer_stream_id,
                        status: GOAWAY_OK,
                    }
                })
            };
            if let Some(goaway) = goaway {
                encode(&mut codec, &goaway, &mut out)?;
            }
            write(io, &out).await?;
            // The peer may already be gone; its EOF is what we wanted.
            let _ = io.shutdown().await;
            return Ok(());
        }
        write(io, &out).await?;
        out.clear();
    }
}

fn encode(codec: &mut Codec, frame: &Frame, out: &mut Vec<u8>) -> Result<(), Error> {
    codec.encode(frame, out).map_err(|e| {
        // Handles validate what they queue, so this is a bug here, not the
        // peer's doing; the compressor may be out of step, so stop.
        tracing::error!(error = %e, frame = frame.name(), "cannot encode a SPDY frame");
        Error::Protocol(e)
    })
}

async fn write<W: AsyncWrite + Unpin>(io: &mut W, bytes: &[u8]) -> Result<(), Error> {
    if bytes.is_empty() {
        return Ok(());
    }
    io.write_all(bytes).await.map_err(Error::io)?;
    io.flush().await.map_err(Error::io)
}
