//! `kubectl attach`: a client joins a running container's stdio.
//!
//! Output does not come from the agent: the container's one output stream
//! is already read by the log relay, which tees it to attached clients
//! (`output::Tee`), so the log keeps every byte and a client sees the
//! output from the moment it attached. Input (stdin bytes, its close and
//! terminal resizes) goes to the agent's Attach, which is opened only when
//! the client asked for stdin or a tty.
//!
//! The stream ends with the container's exit code once its output ended
//! (it exited and everything was delivered), from the event log. A client
//! that goes away is unsubscribed and its agent call dropped; the container
//! keeps running.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use vmpod_agent_proto::v1::{ContainerState, StdioInput, StdioOutput, stdio_output};

use super::exec::start_of;
use super::output::{Subscription, TEE_TIMEOUT, Teed};
use super::{Containers, Entry};
use crate::events::EventLog;
use crate::relay::{AgentSource, agent_error};
use crate::stream;

/// How long the exit may take to reach the event log after the output
/// ended: the agent's event and its end of output race.
const EXIT_WAIT: Duration = Duration::from_secs(5);
/// How long a final error may wait for room in the client's queue.
const LAST_WORD: Duration = Duration::from_secs(1);

impl Containers {
    pub async fn attach<A, In>(
        &self,
        agents: &A,
        mut inbound: In,
    ) -> Result<stream::Output<StdioOutput>, Status>
    where
        A: AgentSource,
        In: Stream<Item = Result<StdioInput, Status>> + Send + Unpin + 'static,
    {
        let first = stream::first(&mut inbound, "Attach").await?;
        let start = start_of("Attach", &first)?.clone();
        let id = start.id.clone();
        if !start.args.is_empty() {
            return Err(Status::invalid_argument(
                "Attach: joins the container's own process and takes no command",
            ));
        }
        if !self.knows(&id) {
            return Err(Status::not_found(format!("container {id} not found")));
        }
        let status = self.status(agents, &id).await?;
        if status.state() != ContainerState::ContainerRunning {
            return Err(Status::failed_precondition(format!(
                "container {id} is not running ({})",
                status.state().as_str_name()
            )));
        }
        let subscription = match self.entries().get(&id) {
            // A tty has one stream; the agent sends its output as stdout.
            Some(Entry::Ready(c)) => c
                .relay
                .subscribe(start.stdout, start.stderr && !start.tty)?,
            Some(Entry::Busy) => {
                return Err(Status::failed_precondition(format!(
                    "container {id} is being created or removed"
                )));
            }
            None => return Err(Status::not_found(format!("container {id} not found"))),
        };
        let input = if start.stdin || start.tty {
            let mut client = agents.client()?;
            let (tx, rx) = stream::call_input();
            // Cannot fail: the queue is empty and its receiver right here.
            let _ = tx.try_send(first);
            let call = async move { client.attach(rx).await };
            Some((tx, call))
        } else {
            None
        };
        let (out_tx, out_rx) = mpsc::channel(stream::QUEUE);
        tokio::spawn(run(
            agents.clone(),
            Arc::clone(&self.events),
            id,
            subscription,
            inbound,
            input,
            out_tx,
        ));
        Ok(ReceiverStream::new(out_rx))
    }
}

type Out = mpsc::Sender<Result<StdioOutput, Status>>;

/// One attached client, until the output ends, the client goes away or
/// the agent refuses its input.
async fn run<A, In, Call, R>(
    agents: A,
    events: Arc<EventLog>,
    id: String,
    mut subscription: Subscription,
    inbound: In,
    input: Option<(stream::InputSender<StdioInput>, Call)>,
    out: Out,
) where
    A: AgentSource,
    In: Stream<Item = Result<StdioInput, Status>> + Unpin,
    Call: Future<Output = Result<R, Status>>,
{
    let (agent_tx, agent_call) = match input {
        Some((tx, call)) => (Some(tx), Some(call)),
        None => (None, None),
    };
    let output = async {
        loop {
            let message = match subscription.next().await {
                Teed::Chunk(chunk) => Ok(StdioOutput {
                    output: Some(stdio_output::Output::Chunk(chunk)),
                }),
                Teed::Lagged => Err(Status::aborted(format!(
                    "the client did not keep up with container {id}'s output for {TEE_TIMEOUT:?} and was dropped"
                ))),
                Teed::Ended => exit_of(&events, &id).await,
            };
            let last = !matches!(
                message,
                Ok(StdioOutput {
                    output: Some(stdio_output::Output::Chunk(_))
                })
            );
            if out.send(message).await.is_err() || last {
                return;
            }
        }
    };
    let agent = async {
        match agent_call {
            Some(call) => match call.await {
                // Its input ended, or the container exited: the output
                // goes on until the tee says it ended.
                Ok(_) => std::future::pending().await,
                Err(status) => agent_error(&agents, "Attach", status),
            },
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        () = output => None,
        () = out.closed() => None,
        // The client went away.
        _ = stream::forward_input(inbound, agent_tx) => None,
        refused = agent => Some(refused),
    };
    if let Some(status) = ended {
        let _ = tokio::time::timeout(LAST_WORD, out.send(Err(status))).await;
    }
}

/// The last message once the output ended: the container's exit code.
async fn exit_of(events: &EventLog, id: &str) -> Result<StdioOutput, Status> {
    match events.wait_exited(id, EXIT_WAIT).await {
        Some(s) if s.state() == ContainerState::ContainerExited => Ok(StdioOutput {
            output: Some(stdio_output::Output::ExitCode(s.exit_code)),
        }),
        Some(s) => Err(Status::unavailable(format!(
            "container {id} closed its output but is still {} after {EXIT_WAIT:?}",
            s.state().as_str_name()
        ))),
        None => Err(Status::not_found(format!(
            "container {id} was removed while attached"
        ))),
    }
}
