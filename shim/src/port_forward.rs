//! `kubectl port-forward`: one TCP connection in the pod's network
//! namespace per call, relayed to the agent's PortForward. The connection
//! is the guest's; the shim only checks that the call names a port.

use tokio_stream::Stream;
use tonic::Status;
use vmpod_agent_proto::v1::{PortForwardInput, PortForwardOutput, port_forward_input};

use crate::relay::AgentSource;
use crate::stream;

/// Relays one connection. The first message must be `port`.
pub async fn port_forward<A, In>(
    agents: &A,
    mut inbound: In,
) -> Result<stream::Output<PortForwardOutput>, Status>
where
    A: AgentSource,
    In: Stream<Item = Result<PortForwardInput, Status>> + Send + Unpin + 'static,
{
    let first = stream::first(&mut inbound, "PortForward").await?;
    check_first(&first)?;
    stream::relay(
        agents,
        "PortForward",
        first,
        inbound,
        |mut agent, input| async move { agent.port_forward(input).await },
    )
    .await
}

fn check_first(first: &PortForwardInput) -> Result<(), Status> {
    match first.input {
        Some(port_forward_input::Input::Port(port)) if (1..=65535).contains(&port) => Ok(()),
        Some(port_forward_input::Input::Port(port)) => Err(Status::invalid_argument(format!(
            "PortForward: {port} is not a TCP port"
        ))),
        _ => Err(Status::invalid_argument(
            "PortForward: the first message must be `port`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(input: port_forward_input::Input) -> PortForwardInput {
        PortForwardInput { input: Some(input) }
    }

    #[test]
    fn the_first_message_must_name_a_tcp_port() {
        assert!(check_first(&input(port_forward_input::Input::Port(8080))).is_ok());
        for bad in [
            input(port_forward_input::Input::Port(0)),
            input(port_forward_input::Input::Port(65536)),
            input(port_forward_input::Input::Data(b"GET /".to_vec())),
            PortForwardInput { input: None },
        ] {
            let err = check_first(&bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }
}
