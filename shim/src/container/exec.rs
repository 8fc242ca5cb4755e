//! `kubectl exec`: a command in a running container with its stdio
//! streamed both ways, relayed stream for stream to the agent's Exec. The
//! shim checks only that the call starts with `start` naming a container
//! it created; the agent validates the rest and runs the command.

use tokio_stream::Stream;
use tonic::Status;
use vmpod_agent_proto::v1::{StdioInput, StdioOutput, StdioStart, stdio_input};

use super::{Containers, check_id_status};
use crate::relay::AgentSource;
use crate::stream;

impl Containers {
    pub async fn exec<A, In>(
        &self,
        agents: &A,
        mut inbound: In,
    ) -> Result<stream::Output<StdioOutput>, Status>
    where
        A: AgentSource,
        In: Stream<Item = Result<StdioInput, Status>> + Send + Unpin + 'static,
    {
        let first = stream::first(&mut inbound, "Exec").await?;
        let start = start_of("Exec", &first)?;
        if !self.knows(&start.id) {
            return Err(Status::not_found(format!(
                "container {} not found",
                start.id
            )));
        }
        stream::relay(
            agents,
            "Exec",
            first,
            inbound,
            |mut agent, input| async move { agent.exec(input).await },
        )
        .await
    }
}

/// The `start` that must open an Exec or Attach, with a well-formed id.
pub(super) fn start_of<'a>(what: &str, first: &'a StdioInput) -> Result<&'a StdioStart, Status> {
    let Some(stdio_input::Input::Start(start)) = &first.input else {
        return Err(Status::invalid_argument(format!(
            "{what}: the first message must be `start`"
        )));
    };
    check_id_status(&start.id)?;
    Ok(start)
}
