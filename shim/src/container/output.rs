//! A container's stdout and stderr, from the agent into its CRI log file.
//!
//! The agent keeps a container's output from its first byte and hands it
//! out through one `ReadOutput` stream (a later call resumes where the last
//! one stopped). The relay reads that stream for the container's whole life,
//! independent of any daemon request: the daemon may be restarted while the
//! container runs, and kubelet expects every line in the log regardless.
//!
//! Each stream goes through an in-memory pipe into its own
//! [`logs::copy_stream`], so a line cut across chunks is reassembled per
//! stream and a stdout line never swallows the start of a stderr one. The
//! pipes are bounded: a slow disk slows the relay, and through gRPC flow
//! control the agent, instead of growing memory here.
//!
//! The relay is also the only reader of the container's output, so attached
//! clients (`kubectl attach`) get theirs from it: a [`Tee`] hands every
//! chunk, once the log sink has it, to each subscriber's bounded channel.
//! A subscriber that keeps its channel full for [`TEE_TIMEOUT`] is cut off
//! rather than allowed to stall the container (and its log) for longer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;
use vmpod_agent_proto::v1::{ContainerRef, OutputChunk, OutputStream};

use crate::logs::{self, LogFile, Stream};
use crate::relay::{AgentSource, is_transport};

/// Bytes one stream may have in flight between the relay and its copier.
const PIPE_CAPACITY: usize = 64 * 1024;
/// Pauses between attempts to resume a broken ReadOutput stream.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long the copiers get to write what they hold once the relay ended.
const COPIER_FLUSH: Duration = Duration::from_secs(5);
/// How long a subscriber's channel may stay full before it is dropped.
/// Until then the relay waits for it (a slow client slows the container,
/// like a slow terminal would); past it, the client is cut off.
pub const TEE_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunks a subscriber may have queued, and the most bytes in each: the
/// agent's chunks are as large as the guest likes (up to gRPC's message
/// limit), so they are cut to this size for subscribers, bounding each one's
/// queue to a MiB.
const TEE_QUEUE: usize = 32;
const TEE_PIECE: usize = 32 * 1024;
/// Attached clients per container; more is a leak in the daemon, not a use.
const MAX_SUBSCRIBERS: usize = 16;

/// The running relay of one container.
pub struct Relay {
    task: JoinHandle<()>,
    copiers: Vec<JoinHandle<()>>,
    tee: Arc<TeeShared>,
}

/// The write ends of the per-stream pipes; `None` when output is discarded.
/// Duplex pipes, because dropping an end closes them: an aborted relay
/// still ends its copiers (a split simplex would stay open).
struct Sinks {
    stdout: DuplexStream,
    stderr: DuplexStream,
}

/// Starts relaying container `id`'s output into `log`, or reading and
/// discarding it when there is no log: the agent must not be left holding
/// output nobody reads.
pub fn spawn<A: AgentSource>(agents: A, id: String, log: Option<Arc<LogFile>>) -> Relay {
    let mut copiers = Vec::new();
    let sinks = log.map(|log| {
        let (out_r, stdout) = tokio::io::duplex(PIPE_CAPACITY);
        let (err_r, stderr) = tokio::io::duplex(PIPE_CAPACITY);
        for (reader, stream) in [(out_r, Stream::Stdout), (err_r, Stream::Stderr)] {
            let log = Arc::clone(&log);
            let id = id.clone();
            copiers.push(tokio::spawn(async move {
                let path = log.path().to_owned();
                match logs::copy_stream(reader, stream, log).await {
                    Ok(stats) if stats.bytes_dropped > 0 => tracing::warn!(
                        container = %id,
                        stream = stream.as_str(),
                        log = %path.display(),
                        dropped_bytes = stats.bytes_dropped,
                        "container output could not all be written"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(container = %id, error = %e, "copying container output")
                    }
                }
            }));
        }
        Sinks { stdout, stderr }
    });
    let shared = Arc::new(TeeShared::default());
    let tee = Tee {
        shared: Arc::clone(&shared),
        subscribers: Vec::new(),
    };
    let task = tokio::spawn(run(agents, id, sinks, tee));
    Relay {
        task,
        copiers,
        tee: shared,
    }
}

impl Relay {
    /// Output from now on, for an attached client; only the streams asked
    /// for. Ends once the relay has delivered the container's last chunk
    /// (at once, if it already has).
    pub fn subscribe(&self, stdout: bool, stderr: bool) -> Result<Subscription, tonic::Status> {
        self.tee.subscribe(stdout, stderr)
    }

    /// Waits up to `grace` for the output to end on its own (the agent
    /// closes it once the container is gone, and the connection dies with
    /// the VM), then cuts it off. Either way everything read so far is
    /// written to the log before this returns.
    pub async fn finish(mut self, grace: Duration) {
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
        // The pipes' write ends are gone with the task: the copiers see EOF.
        for copier in self.copiers {
            let _ = tokio::time::timeout(COPIER_FLUSH, copier).await;
        }
    }
}

async fn run<A: AgentSource>(agents: A, id: String, mut sinks: Option<Sinks>, mut tee: Tee) {
    let mut pause = RETRY_MIN;
    loop {
        // No client: the VM is going or gone, and the output with it.
        let Ok(mut client) = agents.client() else {
            break;
        };
        let broken = match client.read_output(ContainerRef { id: id.clone() }).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(chunk)) => {
                            pause = RETRY_MIN;
                            deliver(&id, &mut sinks, &mut tee, chunk).await;
                        }
                        Ok(None) => break None,
                        Err(status) => break Some(status),
                    }
                }
            }
            Err(status) => Some(status),
        };
        match broken {
            None => break,
            Some(status) if status.code() == Code::NotFound => break,
            Some(status) if !is_transport(&status) => {
                tracing::warn!(container = %id, error = %status, "agent ReadOutput failed; output is no longer relayed");
                break;
            }
            Some(status) => {
                tracing::debug!(container = %id, error = %status, "ReadOutput interrupted; resuming");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
    // Subscribers end with the output: everything was delivered.
    drop(tee);
    if let Some(mut sinks) = sinks {
        let _ = sinks.stdout.shutdown().await;
        let _ = sinks.stderr.shutdown().await;
    }
}

/// Hands one chunk to the log and then to every subscriber: the log first,
/// so a client that is cut off never costs the log a byte.
async fn deliver(id: &str, sinks: &mut Option<Sinks>, tee: &mut Tee, chunk: OutputChunk) {
    let stream = match OutputStream::try_from(chunk.stream) {
        Ok(stream) => stream,
        Err(_) => {
            tracing::warn!(container = %id, stream = chunk.stream, "output chunk of an unknown stream dropped");
            return;
        }
    };
    if let Some(sinks) = sinks {
        let sink = match stream {
            OutputStream::Stdout => &mut sinks.stdout,
            OutputStream::Stderr => &mut sinks.stderr,
        };
        // Fails only if the copier is gone, which it is not while we hold
        // the write end; nothing to do about it then anyway.
        let _ = sink.write_all(&chunk.data).await;
    }
    tee.deliver(id, stream, &chunk.data).await;
}

/// What the tee's owner (the relay task) shares with `Relay::subscribe`.
#[derive(Default)]
struct TeeShared {
    pending: Mutex<Pending>,
    /// `pending.new.len()`, read without the lock on every chunk: a tee
    /// nobody subscribes to costs one atomic load.
    new: AtomicUsize,
    /// Subscriptions not yet dropped, to bound them.
    live: AtomicUsize,
}

#[derive(Default)]
struct Pending {
    /// Subscribed since the relay last looked.
    new: Vec<Subscriber>,
    /// The relay ended: nothing more will be delivered.
    closed: bool,
}

impl TeeShared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscribe(
        self: &Arc<Self>,
        stdout: bool,
        stderr: bool,
    ) -> Result<Subscription, tonic::Status> {
        let mut pending = self.lock();
        if self.live.load(Ordering::Acquire) >= MAX_SUBSCRIBERS {
            return Err(tonic::Status::resource_exhausted(format!(
                "{MAX_SUBSCRIBERS} clients are already attached to this container"
            )));
        }
        let (tx, rx) = mpsc::channel(TEE_QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        self.live.fetch_add(1, Ordering::AcqRel);
        let subscription = Subscription {
            rx,
            lagged: Arc::clone(&lagged),
            tee: Arc::clone(self),
        };
        // Once closed, the sender goes now and the subscription ends at once.
        if !pending.closed {
            pending.new.push(Subscriber {
                tx,
                stdout,
                stderr,
                lagged,
            });
            self.new.store(pending.new.len(), Ordering::Release);
        }
        Ok(subscription)
    }
}

/// The relay task's half: the subscribers it delivers to. Dropping it (the
/// relay ended, or was aborted) ends every subscription.
struct Tee {
    shared: Arc<TeeShared>,
    subscribers: Vec<Subscriber>,
}

struct Subscriber {
    tx: mpsc::Sender<OutputChunk>,
    stdout: bool,
    stderr: bool,
    /// Set when it was cut off for not keeping up, before `tx` is dropped.
    lagged: Arc<AtomicBool>,
}

impl Subscriber {
    fn wants(&self, stream: OutputStream) -> bool {
        match stream {
            OutputStream::Stdout => self.stdout,
            OutputStream::Stderr => self.stderr,
        }
    }
}

impl Tee {
    /// Sends `data` to every subscriber that wants `stream`, in pieces of
    /// at most [`TEE_PIECE`] bytes. Waits for a full subscriber at most
    /// until [`TEE_TIMEOUT`] after the first wait of a piece began, so all
    /// of them together stall the relay no longer than that per piece.
    async fn deliver(&mut self, id: &str, stream: OutputStream, data: &[u8]) {
        if self.shared.new.load(Ordering::Acquire) > 0 {
            let mut pending = self.shared.lock();
            let new = std::mem::take(&mut pending.new);
            self.shared.new.store(0, Ordering::Release);
            self.subscribers.extend(new);
        }
        if self.subscribers.is_empty() {
            return;
        }
        // Clients that went away, even if they wanted none of this stream.
        self.subscribers.retain(|s| !s.tx.is_closed());
        for piece in data.chunks(TEE_PIECE) {
            let mut deadline = None;
            let mut i = 0;
            while i < self.subscribers.len() {
                let sub = &self.subscribers[i];
                let keep = !sub.wants(stream) || send(sub, &mut deadline, stream, piece).await;
                if keep {
                    i += 1;
                } else {
                    let gone = self.subscribers.swap_remove(i);
                    if gone.lagged.load(Ordering::Acquire) {
                        tracing::info!(container = %id, "an attached client did not keep up for {TEE_TIMEOUT:?}; dropped it");
                    }
                }
            }
        }
    }
}

/// Whether `sub` took the piece (false: it went away, or was cut off).
async fn send(
    sub: &Subscriber,
    deadline: &mut Option<Instant>,
    stream: OutputStream,
    piece: &[u8],
) -> bool {
    let chunk = OutputChunk {
        stream: stream as i32,
        data: piece.to_vec(),
    };
    let chunk = match sub.tx.try_send(chunk) {
        Ok(()) => return true,
        Err(TrySendError::Closed(_)) => return false,
        Err(TrySendError::Full(chunk)) => chunk,
    };
    let until = *deadline.get_or_insert_with(|| Instant::now() + TEE_TIMEOUT);
    match tokio::time::timeout_at(until, sub.tx.send(chunk)).await {
        Ok(sent) => sent.is_ok(),
        Err(_) => {
            sub.lagged.store(true, Ordering::Release);
            false
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        let mut pending = self.shared.lock();
        pending.closed = true;
        pending.new.clear();
        self.shared.new.store(0, Ordering::Release);
    }
}

/// One attached client's view of the output.
pub struct Subscription {
    rx: mpsc::Receiver<OutputChunk>,
    lagged: Arc<AtomicBool>,
    tee: Arc<TeeShared>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.tee.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a subscription yields next.
#[derive(Debug, PartialEq)]
pub enum Teed {
    Chunk(OutputChunk),
    /// The container's output ended and all of it was delivered.
    Ended,
    /// Cut off for not keeping up; what was queued before came first.
    Lagged,
}

impl Subscription {
    pub async fn next(&mut self) -> Teed {
        match self.rx.recv().await {
            Some(chunk) => Teed::Chunk(chunk),
            // The flag is set before the sender is dropped.
            None if self.lagged.load(Ordering::Acquire) => Teed::Lagged,
            None => Teed::Ended,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn tee() -> (Arc<TeeShared>, Tee) {
        let shared = Arc::new(TeeShared::default());
        let tee = Tee {
            shared: Arc::clone(&shared),
            subscribers: Vec::new(),
        };
        (shared, tee)
    }

    /// Log sinks whose contents come back from the returned tasks.
    fn sinks() -> (Sinks, [JoinHandle<Vec<u8>>; 2]) {
        let (out_r, stdout) = tokio::io::duplex(PIPE_CAPACITY);
        let (err_r, stderr) = tokio::io::duplex(PIPE_CAPACITY);
        let read = |mut r: DuplexStream| {
            tokio::spawn(async move {
                let mut all = Vec::new();
                r.read_to_end(&mut all).await.unwrap();
                all
            })
        };
        (Sinks { stdout, stderr }, [read(out_r), read(err_r)])
    }

    fn chunk(stream: OutputStream, data: Vec<u8>) -> OutputChunk {
        OutputChunk {
            stream: stream as i32,
            data,
        }
    }

    /// What a subscription yields until it ends, per stream, and how.
    async fn drain(mut sub: Subscription) -> ([Vec<u8>; 2], Teed) {
        let mut got = [Vec::new(), Vec::new()];
        loop {
            match sub.next().await {
                Teed::Chunk(c) => {
                    assert!(c.data.len() <= TEE_PIECE);
                    let i = if c.stream == OutputStream::Stdout as i32 {
                        0
                    } else {
                        1
                    };
                    got[i].extend(c.data);
                }
                end => return (got, end),
            }
        }
    }

    /// Stdout and stderr of `n` chunks, one of them larger than a piece.
    fn output(n: usize) -> Vec<OutputChunk> {
        (0..n)
            .map(|i| {
                let stream = if i % 3 == 0 {
                    OutputStream::Stderr
                } else {
                    OutputStream::Stdout
                };
                let len = if i == 5 { 3 * TEE_PIECE + 17 } else { 100 + i };
                chunk(stream, (0..len).map(|b| (b + i) as u8).collect())
            })
            .collect()
    }

    fn expected(chunks: &[OutputChunk]) -> [Vec<u8>; 2] {
        let mut all = [Vec::new(), Vec::new()];
        for c in chunks {
            let i = if c.stream == OutputStream::Stdout as i32 {
                0
            } else {
                1
            };
            all[i].extend(&c.data);
        }
        all
    }

    #[tokio::test(flavor = "current_thread")]
    async fn subscribers_get_the_same_bytes_in_order_and_the_log_all_of_them() {
        let (shared, mut tee) = tee();
        let (sinks, [log_out, log_err]) = sinks();
        let mut sinks = Some(sinks);
        let a = tokio::spawn(drain(shared.subscribe(true, true).unwrap()));
        let b = tokio::spawn(drain(shared.subscribe(true, true).unwrap()));
        let only_out = tokio::spawn(drain(shared.subscribe(true, false).unwrap()));
        let chunks = output(200);
        for c in chunks.clone() {
            deliver("c1", &mut sinks, &mut tee, c).await;
        }
        drop(tee);
        drop(sinks);
        let want = expected(&chunks);
        for sub in [a, b] {
            let (got, end) = sub.await.unwrap();
            assert_eq!(end, Teed::Ended);
            assert!(got == want, "a subscriber got other bytes");
        }
        let (got, end) = only_out.await.unwrap();
        assert_eq!(end, Teed::Ended);
        assert!(got[0] == want[0] && got[1].is_empty(), "only stdout");
        assert!(log_out.await.unwrap() == want[0]);
        assert!(log_err.await.unwrap() == want[1]);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_subscriber_that_does_not_read_is_dropped_and_the_log_goes_on() {
        let (shared, mut tee) = tee();
        let (sinks, [log_out, log_err]) = sinks();
        let mut sinks = Some(sinks);
        let stuck = shared.subscribe(true, true).unwrap();
        let reader = tokio::spawn(drain(shared.subscribe(true, true).unwrap()));
        let chunks = output(200);
        let began = Instant::now();
        for c in chunks.clone() {
            deliver("c1", &mut sinks, &mut tee, c).await;
        }
        let stalled = began.elapsed();
        // One stall of the timeout, then the log and the reader go on
        // without it.
        assert!(
            stalled >= TEE_TIMEOUT && stalled < 2 * TEE_TIMEOUT,
            "{stalled:?}"
        );
        assert!(tee.subscribers.len() == 1, "the stuck one was dropped");
        drop(tee);
        drop(sinks);
        let want = expected(&chunks);
        let (got, end) = reader.await.unwrap();
        assert_eq!(end, Teed::Ended);
        assert!(got == want);
        // The stuck one gets what was queued for it, then the reason.
        let (got, end) = drain(stuck).await;
        assert_eq!(end, Teed::Lagged);
        assert!(want[0].starts_with(&got[0]) && want[1].starts_with(&got[1]));
        assert!(log_out.await.unwrap() == want[0]);
        assert!(log_err.await.unwrap() == want[1]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unsubscribed_tee_costs_nothing_and_leavers_are_removed() {
        let (shared, mut tee) = tee();
        let mut none = None;
        deliver(
            "c1",
            &mut none,
            &mut tee,
            chunk(OutputStream::Stdout, b"x".to_vec()),
        )
        .await;
        assert!(tee.subscribers.is_empty());
        assert_eq!(shared.new.load(Ordering::Acquire), 0);

        let gone = shared.subscribe(true, false).unwrap();
        let stays = shared.subscribe(true, false).unwrap();
        assert_eq!(shared.live.load(Ordering::Acquire), 2);
        drop(gone);
        assert_eq!(shared.live.load(Ordering::Acquire), 1);
        // Even a chunk it would not have wanted removes it.
        deliver(
            "c1",
            &mut none,
            &mut tee,
            chunk(OutputStream::Stderr, b"e".to_vec()),
        )
        .await;
        assert_eq!(tee.subscribers.len(), 1);
        drop(tee);
        let (got, end) = drain(stays).await;
        assert_eq!((got, end), ([Vec::new(), Vec::new()], Teed::Ended));
        // After the relay ended, a subscription ends at once.
        let late = shared.subscribe(true, true).unwrap();
        assert_eq!(drain(late).await.1, Teed::Ended);
    }

    #[test]
    fn subscribers_are_bounded() {
        let (shared, _tee) = tee();
        let subs: Vec<_> = (0..MAX_SUBSCRIBERS)
            .map(|_| shared.subscribe(true, true).unwrap())
            .collect();
        let refused = shared.subscribe(true, true).err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        drop(subs);
        assert!(shared.subscribe(true, true).is_ok());
    }
}
