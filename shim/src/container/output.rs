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

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
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

/// The running relay of one container.
pub struct Relay {
    task: JoinHandle<()>,
    copiers: Vec<JoinHandle<()>>,
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
    let task = tokio::spawn(run(agents, id, sinks));
    Relay { task, copiers }
}

impl Relay {
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

async fn run<A: AgentSource>(agents: A, id: String, mut sinks: Option<Sinks>) {
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
                            deliver(&id, &mut sinks, chunk).await;
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
    if let Some(mut sinks) = sinks {
        let _ = sinks.stdout.shutdown().await;
        let _ = sinks.stderr.shutdown().await;
    }
}

async fn deliver(id: &str, sinks: &mut Option<Sinks>, chunk: OutputChunk) {
    let Some(sinks) = sinks else {
        return;
    };
    let sink = match OutputStream::try_from(chunk.stream) {
        Ok(OutputStream::Stdout) => &mut sinks.stdout,
        Ok(OutputStream::Stderr) => &mut sinks.stderr,
        Err(_) => {
            tracing::warn!(container = %id, stream = chunk.stream, "output chunk of an unknown stream dropped");
            return;
        }
    };
    // Fails only if the copier is gone, which it is not while we hold
    // the write end; nothing to do about it then anyway.
    let _ = sink.write_all(&chunk.data).await;
}
