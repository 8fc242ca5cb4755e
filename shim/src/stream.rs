//! Two-way relays of a daemon's stream to an agent streaming call (Exec,
//! PortForward): what the daemon sends becomes the call's input, what the
//! agent answers goes back to the daemon.
//!
//! Nothing is buffered beyond a few messages each way: the queues are
//! bounded, so a slow reader on either side holds the other back through
//! gRPC flow control instead of growing memory in the shim. The agent's
//! messages can be as large as gRPC lets them (the guest decides), so their
//! payloads are cut into pieces of at most [`PIECE`] bytes before they are
//! queued. When the daemon goes away (its half of the call is dropped) the
//! relay ends and drops the agent call with it, which the agent sees as a
//! broken stream.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Response, Status, Streaming};
use vmpod_agent_proto::AgentClient;
use vmpod_agent_proto::v1::{
    OutputChunk, PortForwardOutput, StdioOutput, port_forward_output, stdio_output,
};

use crate::relay::{AgentSource, agent_error, call};

/// Messages queued each way per call.
pub const QUEUE: usize = 16;
/// The most payload bytes in one message queued for the daemon.
pub const PIECE: usize = 64 * 1024;
/// How long the agent may take to answer the opening of a call (it answers
/// once the command started): a wedged guest must not hold the daemon's
/// session forever. Generous, because starts queue in the guest: fifty
/// execs at once in a one-vCPU guest under TCG take tens of seconds.
const OPEN_TIMEOUT: Duration = Duration::from_secs(300);

/// What a relay hands the daemon.
pub type Output<T> = ReceiverStream<Result<T, Status>>;

/// Feeds an agent call's input; dropping it ends the input, which the
/// agent takes as the client having gone (the daemon keeps its stream open
/// for the whole session and closes stdin with `close_stdin`). The call
/// itself is reset once its output is dropped too.
pub type InputSender<I> = mpsc::Sender<I>;

/// A bounded input for an agent call, with its sender.
pub fn call_input<I>() -> (InputSender<I>, ReceiverStream<I>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (tx, ReceiverStream::new(rx))
}

/// The first message of the daemon's stream, which says what to open.
pub async fn first<T, In>(inbound: &mut In, what: &str) -> Result<T, Status>
where
    In: Stream<Item = Result<T, Status>> + Unpin,
{
    match inbound.next().await {
        Some(first) => first,
        None => Err(Status::invalid_argument(format!(
            "{what}: the stream ended before its first message"
        ))),
    }
}

/// An agent message whose payload may need cutting down to size.
pub trait Pieces: Sized {
    /// `self` as one or more messages of at most `max` payload bytes each.
    fn pieces(self, max: usize) -> Vec<Self>;
    /// Whether nothing may follow it (an exit status).
    fn is_last(&self) -> bool {
        false
    }
}

fn cut(data: Vec<u8>, max: usize) -> Vec<Vec<u8>> {
    if data.len() <= max {
        return vec![data];
    }
    data.chunks(max).map(<[u8]>::to_vec).collect()
}

impl Pieces for StdioOutput {
    fn pieces(self, max: usize) -> Vec<Self> {
        match self.output {
            Some(stdio_output::Output::Chunk(OutputChunk { stream, data })) => cut(data, max)
                .into_iter()
                .map(|data| StdioOutput {
                    output: Some(stdio_output::Output::Chunk(OutputChunk { stream, data })),
                })
                .collect(),
            output => vec![StdioOutput { output }],
        }
    }

    fn is_last(&self) -> bool {
        matches!(self.output, Some(stdio_output::Output::ExitCode(_)))
    }
}

impl Pieces for PortForwardOutput {
    fn pieces(self, max: usize) -> Vec<Self> {
        match self.output {
            Some(port_forward_output::Output::Data(data)) => cut(data, max)
                .into_iter()
                .map(|data| PortForwardOutput {
                    output: Some(port_forward_output::Output::Data(data)),
                })
                .collect(),
            output => vec![PortForwardOutput { output }],
        }
    }
}

/// Opens the agent call `what` with `first` as its first input message
/// (`open` makes the call on a fresh client) and relays both ways until
/// either side is done. An error opening the call is the answer to the
/// daemon's request, with the agent's code (UNAVAILABLE when the agent
/// could not be reached).
///
/// The daemon's input ending ends the call's input; the daemon's input
/// breaking drops the call. The agent's output ending, or breaking (its
/// status goes to the daemon), ends the relay.
pub async fn relay<A, I, O, In, F, Fut>(
    agents: &A,
    what: &'static str,
    first: I,
    inbound: In,
    open: F,
) -> Result<Output<O>, Status>
where
    A: AgentSource,
    I: Send + 'static,
    O: Pieces + Send + 'static,
    In: Stream<Item = Result<I, Status>> + Send + Unpin + 'static,
    F: FnOnce(AgentClient<Channel>, ReceiverStream<I>) -> Fut,
    Fut: Future<Output = Result<Response<Streaming<O>>, Status>>,
{
    let client = agents.client()?;
    let (in_tx, in_rx) = call_input();
    // Cannot fail: the queue is empty and its receiver right here.
    let _ = in_tx.try_send(first);
    let mut output = call(agents, what, Some(OPEN_TIMEOUT), open(client, in_rx)).await?;
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    let agents = agents.clone();
    tokio::spawn(async move {
        tokio::select! {
            broke = forward_input(inbound, Some(in_tx)) => {
                // The daemon is most likely gone; if not, it learns why.
                let _ = out_tx.try_send(Err(Status::cancelled(format!(
                    "{what}: the input stream broke: {}", broke.message()
                ))));
            }
            () = forward_output(&agents, what, &mut output, &out_tx) => {}
            () = out_tx.closed() => {}
        }
    });
    Ok(ReceiverStream::new(out_rx))
}

/// Forwards the daemon's messages to the call (to none once `tx` is
/// `None` or refuses them: the call is ending, and says how). Returns only
/// when the daemon's stream broke; after its end, which ends the call's
/// input, it waits to be dropped.
pub async fn forward_input<I, In>(mut inbound: In, tx: Option<InputSender<I>>) -> Status
where
    In: Stream<Item = Result<I, Status>> + Unpin,
{
    let mut tx = tx;
    loop {
        match inbound.next().await {
            Some(Ok(message)) => {
                if let Some(sender) = &tx
                    && sender.send(message).await.is_err()
                {
                    tx = None;
                }
            }
            Some(Err(status)) => return status,
            None => {
                drop(tx);
                return std::future::pending().await;
            }
        }
    }
}

/// Forwards the agent's messages to the daemon, in pieces, until the call
/// ends, its last message went, or the daemon stopped reading.
async fn forward_output<A: AgentSource, O: Pieces>(
    agents: &A,
    what: &str,
    output: &mut Streaming<O>,
    tx: &mpsc::Sender<Result<O, Status>>,
) {
    loop {
        match output.message().await {
            Ok(Some(message)) => {
                let last = message.is_last();
                for piece in message.pieces(PIECE) {
                    if tx.send(Ok(piece)).await.is_err() {
                        return;
                    }
                }
                if last {
                    return;
                }
            }
            Ok(None) => return,
            Err(status) => {
                let _ = tx.send(Err(agent_error(agents, what, status))).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(len: usize) -> StdioOutput {
        StdioOutput {
            output: Some(stdio_output::Output::Chunk(OutputChunk {
                stream: 2,
                data: vec![7; len],
            })),
        }
    }

    #[test]
    fn large_payloads_are_cut_and_small_ones_kept_whole() {
        let pieces = chunk(10).pieces(4);
        let sizes: Vec<usize> = pieces
            .iter()
            .map(|p| match &p.output {
                Some(stdio_output::Output::Chunk(c)) => {
                    assert_eq!(c.stream, 2);
                    c.data.len()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes, [4, 4, 2]);
        assert_eq!(chunk(4).pieces(4).len(), 1);
        let exit = StdioOutput {
            output: Some(stdio_output::Output::ExitCode(3)),
        };
        assert!(exit.is_last());
        assert_eq!(exit.clone().pieces(4), vec![exit]);
        let data = PortForwardOutput {
            output: Some(port_forward_output::Output::Data(vec![1; 9])),
        };
        assert_eq!(data.pieces(8).len(), 2);
        let up = PortForwardOutput {
            output: Some(port_forward_output::Output::Connected(true)),
        };
        assert!(!up.is_last());
    }
}
