//! Calling the guest agent on behalf of the daemon: where the client comes
//! from, how long a call may take, and which errors are the agent's own.
//!
//! The agent's answers (NOT_FOUND, FAILED_PRECONDITION with the reason an
//! exec failed, ...) are the daemon's answers too and pass through with
//! their code and message. Only a failure to reach the agent at all (VM not
//! READY, a broken vsock connection mid-call) becomes UNAVAILABLE, with the
//! VM's phase and reason, so the daemon can tell "the guest said no" from
//! "there is no guest".

use std::future::Future;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Status};
use vmpod_agent_proto::AgentClient;
use vmpod_shim_api::v1::VmState;

/// Where agent clients come from: the VM in the shim, a fake agent in
/// tests. `Err` is the UNAVAILABLE to answer when there is no agent.
pub trait AgentSource: Clone + Send + Sync + 'static {
    fn client(&self) -> Result<AgentClient<Channel>, Status>;
    /// Why the agent is (or may be) gone, for error messages: "VM is ...".
    fn why_unavailable(&self) -> String;
}

/// "VM is PHASE_FAILED (qemu (pid 7) exited unexpectedly: SIGKILL)": the
/// phase and the first line of the reason (the rest is a console tail).
pub fn describe_vm(state: &VmState) -> String {
    let phase = state.phase().as_str_name();
    match state.error.lines().next() {
        Some(reason) if !reason.is_empty() => format!("VM is {phase} ({reason})"),
        _ => format!("VM is {phase}"),
    }
}

/// Runs one agent call named `what`, bounded by `limit` when given.
pub async fn call<T, A: AgentSource>(
    agents: &A,
    what: &str,
    limit: Option<Duration>,
    fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    let result = match limit {
        Some(limit) => tokio::time::timeout(limit, fut).await.map_err(|_| {
            Status::deadline_exceeded(format!("agent {what} took longer than {limit:?}"))
        })?,
        None => fut.await,
    };
    result
        .map(tonic::Response::into_inner)
        .map_err(|s| agent_error(agents, what, s))
}

/// Keeps the agent's own statuses; turns transport failures into
/// UNAVAILABLE naming the call and the VM's state.
pub fn agent_error<A: AgentSource>(agents: &A, what: &str, status: Status) -> Status {
    if is_transport(&status) {
        Status::unavailable(format!(
            "agent {what}: {} ({})",
            status.message(),
            agents.why_unavailable()
        ))
    } else {
        status
    }
}

/// A status the client made up because the connection failed carries the
/// underlying error as its source; one decoded from the agent's reply has
/// none. UNAVAILABLE is treated as transport either way: that is what it
/// means to the daemon.
pub fn is_transport(status: &Status) -> bool {
    std::error::Error::source(status).is_some() || status.code() == Code::Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpod_shim_api::v1::Phase;

    #[test]
    fn describes_the_vm_with_the_first_line_of_the_reason() {
        let mut s = VmState {
            phase: Phase::Failed as i32,
            error: "qemu exited: SIGKILL\nserial console tail:\n...".into(),
            ..Default::default()
        };
        assert_eq!(describe_vm(&s), "VM is PHASE_FAILED (qemu exited: SIGKILL)");
        s.phase = Phase::Stopped as i32;
        s.error.clear();
        assert_eq!(describe_vm(&s), "VM is PHASE_STOPPED");
    }

    #[test]
    fn agent_statuses_are_not_transport_errors() {
        let s = Status::failed_precondition(r#"exec: "foo": executable file not found in $PATH"#);
        assert!(!is_transport(&s));
        assert!(!is_transport(&Status::not_found("no container x")));
        assert!(is_transport(&Status::unavailable("connection reset")));
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        assert!(is_transport(&Status::from_error(Box::new(io))));
    }
}
