//! A container's stdout and stderr, from the first byte, for one reader.
//!
//! Readers of the pipes (or the pty master) start when the container is
//! created, so nothing written before the shim subscribes is lost: chunks
//! queue here until a `ReadOutput` stream takes them. The queue is
//! bounded; when it is full the pipe is not read, and the container
//! blocks on its next write (backpressure, rather than unbounded memory
//! or dropped output). A new subscriber takes over from the previous one
//! where it stopped; a stream ends once every source reached EOF and the
//! queue is empty.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use vmpod_agent_proto::v1::{OutputChunk, OutputStream};

use super::fdio::{async_reader, read_some};

/// Most bytes queued before the sources are no longer read.
pub const QUEUE_LIMIT: usize = 1 << 20;
/// One read; also the largest chunk.
const READ_SIZE: usize = 32 << 10;

#[derive(Default)]
struct State {
    queue: VecDeque<OutputChunk>,
    bytes: usize,
    /// Sources not yet at EOF.
    open: usize,
    /// Bumped by each subscriber; an older one sees the change and stops.
    generation: u64,
}

#[derive(Default)]
pub struct Output {
    state: Mutex<State>,
    /// Data, EOF or a new generation.
    changed: Notify,
    /// The queue got shorter.
    drained: Notify,
}

impl Output {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts reading `fd` (a pipe or pty master) as `stream`. Must run
    /// inside the tokio runtime.
    pub fn add_source(self: &Arc<Self>, fd: OwnedFd, stream: OutputStream) -> io::Result<()> {
        let afd = async_reader(fd)?;
        self.lock().open += 1;
        let this = Arc::clone(self);
        tokio::spawn(async move {
            this.pump(afd, stream).await;
            this.lock().open -= 1;
            this.changed.notify_waiters();
        });
        Ok(())
    }

    async fn pump(&self, afd: AsyncFd<OwnedFd>, stream: OutputStream) {
        let mut buf = vec![0u8; READ_SIZE];
        loop {
            // Backpressure: wait until the queue has room.
            loop {
                let drained = self.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                if self.lock().bytes < QUEUE_LIMIT {
                    break;
                }
                drained.await;
            }
            let n = match read_some(&afd, &mut buf).await {
                Ok(n) if n > 0 => n,
                // EOF (for a pty: its last slave fd closed), or an error
                // that reading again would only repeat.
                _ => return,
            };
            {
                let mut st = self.lock();
                st.bytes += n;
                st.queue.push_back(OutputChunk {
                    stream: stream as i32,
                    data: buf[..n].to_vec(),
                });
            }
            self.changed.notify_waiters();
        }
    }

    /// A new reader; the previous one (if any) stops.
    pub fn subscribe(self: &Arc<Self>) -> ReceiverStream<Result<OutputChunk, Status>> {
        let (tx, rx) = mpsc::channel(8);
        let generation = {
            let mut st = self.lock();
            st.generation += 1;
            st.generation
        };
        self.changed.notify_waiters();
        let this = Arc::clone(self);
        tokio::spawn(async move { this.feed(generation, tx).await });
        ReceiverStream::new(rx)
    }

    async fn feed(&self, generation: u64, tx: mpsc::Sender<Result<OutputChunk, Status>>) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let next = {
                let mut st = self.lock();
                if st.generation != generation {
                    return;
                }
                match st.queue.pop_front() {
                    Some(chunk) => {
                        st.bytes -= chunk.data.len();
                        Some(chunk)
                    }
                    None if st.open == 0 => return,
                    None => None,
                }
            };
            match next {
                Some(chunk) => {
                    self.drained.notify_waiters();
                    if let Err(mpsc::error::SendError(Ok(chunk))) = tx.send(Ok(chunk)).await {
                        // The reader left: keep the chunk for the next one.
                        let mut st = self.lock();
                        st.bytes += chunk.data.len();
                        st.queue.push_front(chunk);
                        return;
                    }
                }
                None => {
                    tokio::select! {
                        _ = &mut changed => {}
                        _ = tx.closed() => return,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio_stream::StreamExt;

    fn pipe() -> (OwnedFd, std::fs::File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (r, std::fs::File::from(w))
    }

    #[test]
    fn buffers_until_subscribed_and_hands_over() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let out = Output::new();
            let (r1, mut w1) = pipe();
            let (r2, mut w2) = pipe();
            out.add_source(r1, OutputStream::Stdout).unwrap();
            out.add_source(r2, OutputStream::Stderr).unwrap();
            w1.write_all(b"early").unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;

            let mut first = out.subscribe();
            let c = first.next().await.unwrap().unwrap();
            assert_eq!(
                (c.stream, c.data.as_slice()),
                (OutputStream::Stdout as i32, &b"early"[..])
            );

            // A second subscriber takes over; the first ends.
            let mut second = out.subscribe();
            assert!(first.next().await.is_none());
            w2.write_all(b"err").unwrap();
            let c = second.next().await.unwrap().unwrap();
            assert_eq!(
                (c.stream, c.data.as_slice()),
                (OutputStream::Stderr as i32, &b"err"[..])
            );
            drop(w1);
            drop(w2);
            assert!(second.next().await.is_none());
        });
    }
}
