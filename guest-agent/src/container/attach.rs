//! Attach: input for a running container's main process (`kubectl
//! attach`).
//!
//! Only input travels here (stdin bytes, a stdin close, resizes); the
//! container's output keeps flowing through ReadOutput, where the shim
//! tees it to attached clients. The container's stdin writer (a pipe, or
//! the pty master) is created with the container and kept in
//! [`ContainerStdin`]; every attach writes through that one writer, one
//! message at a time, so two clients typing at once interleave whole
//! messages, never parts of them.

use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use tracing::debug;
use vmpod_agent_proto::v1::stdio_input::Input;
use vmpod_agent_proto::v1::{ContainerState, StdioInput, StdioStart};

use super::pty::{self, Size};
use super::{Container, Containers, stdio_start, validate};

/// Checks an Attach `start` on its own; what depends on the container is
/// checked in [`Containers::attach`].
fn check_start(start: &StdioStart) -> Result<(), Status> {
    validate::check_id("start.id", &start.id)?;
    if !start.args.is_empty() {
        return Err(Status::invalid_argument(
            "start.args: must be empty: Attach joins the container's own process",
        ));
    }
    if let Some(size) = &start.size {
        Size::from_proto("start.size", size)?;
    }
    Ok(())
}

fn no_stdin(id: &str) -> Status {
    Status::failed_precondition(format!("container {id} was not created with stdin"))
}

/// Closes a stdin_once container's stdin when its attach ends, however it
/// ends: also when the call is dropped (the client went away).
struct CloseOnEnd(Option<Arc<Container>>);

impl CloseOnEnd {
    async fn close(mut self) {
        if let Some(c) = self.0.take() {
            c.stdin.close().await;
        }
    }
}

impl Drop for CloseOnEnd {
    fn drop(&mut self) {
        if let Some(c) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move { c.stdin.close().await });
        }
    }
}

impl Containers {
    /// Attach: forwards `input` to the container's process until the input
    /// ends or the container exits.
    pub async fn attach<S>(&self, mut input: S) -> Result<(), Status>
    where
        S: Stream<Item = Result<StdioInput, Status>> + Unpin,
    {
        let start = stdio_start::first(&mut input).await?;
        check_start(&start)?;
        let id = start.id.as_str();
        let c = self.get(id)?;
        if c.status().state != ContainerState::ContainerRunning as i32 {
            return Err(Status::failed_precondition(format!(
                "container {id} is not running"
            )));
        }
        if start.tty != c.process.tty {
            return Err(Status::invalid_argument(if c.process.tty {
                format!("start.tty: container {id} has a tty; attach with tty")
            } else {
                format!("start.tty: container {id} has no tty; attach without tty")
            }));
        }
        if start.stdin {
            if !c.stdin.created {
                return Err(no_stdin(id));
            }
            if !c.stdin.is_open().await {
                return Err(Status::failed_precondition(format!(
                    "container {id}: stdin was closed when its first attach ended (stdin_once)"
                )));
            }
        }
        if let Some(size) = start
            .size
            .as_ref()
            .map(|s| Size::from_proto("start.size", s))
        {
            resize(&c, size?);
        }
        // CRI: "stdin_once: if true, stdin will be closed after the first
        // attach session ends".
        let once = start.stdin && c.spec.process.as_ref().is_some_and(|p| p.stdin_once);
        let close = CloseOnEnd(once.then(|| Arc::clone(&c)));

        let mut status = c.status.subscribe();
        let result = tokio::select! {
            r = forward(&c, &start, &mut input) => r,
            _ = status.wait_for(|s| s.state == ContainerState::ContainerExited as i32) => Ok(()),
        };
        close.close().await;
        result
    }
}

/// Applies the input to the container until it ends.
async fn forward<S>(c: &Container, start: &StdioStart, input: &mut S) -> Result<(), Status>
where
    S: Stream<Item = Result<StdioInput, Status>> + Unpin,
{
    let once = c.spec.process.as_ref().is_some_and(|p| p.stdin_once);
    // Off after a close_stdin, or once the process stopped reading.
    let mut forwarding = start.stdin;
    while let Some(msg) = input.next().await {
        match msg?.input {
            Some(Input::Start(_)) => return Err(stdio_start::repeated()),
            Some(Input::Stdin(bytes)) => {
                if !c.stdin.created {
                    return Err(no_stdin(&c.id));
                }
                if !start.stdin {
                    return Err(Status::invalid_argument(
                        "stdin: this attach was started without stdin",
                    ));
                }
                if forwarding && !c.stdin.write(&bytes).await {
                    forwarding = false;
                }
            }
            Some(Input::CloseStdin(true)) => {
                if once && start.stdin {
                    c.stdin.close().await;
                }
                forwarding = false;
            }
            Some(Input::Resize(size)) => {
                if let Some(size) = Size::from_proto("resize", &size)? {
                    resize(c, Some(size));
                }
            }
            Some(Input::CloseStdin(false)) | None => {}
        }
    }
    Ok(())
}

/// TIOCSWINSZ on the container's pty; nothing for a container without one.
fn resize(c: &Container, size: Option<Size>) {
    if let (Some(size), Some(master)) = (size, c.pty_master.as_ref())
        && let Err(e) = pty::set_size(master, size)
    {
        debug!(id = c.id, "resize: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> StdioStart {
        StdioStart {
            id: "c1".into(),
            stdin: true,
            ..Default::default()
        }
    }

    #[test]
    fn start_is_checked() {
        check_start(&start()).unwrap();
        let e = check_start(&StdioStart {
            args: vec!["sh".into()],
            ..start()
        })
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("start.args: "), "{}", e.message());
        let e = check_start(&StdioStart {
            id: "../x".into(),
            ..start()
        })
        .unwrap_err();
        assert!(e.message().starts_with("start.id: "), "{}", e.message());
        let e = check_start(&StdioStart {
            size: Some(vmpod_agent_proto::v1::TerminalSize {
                width: 1 << 17,
                height: 1,
            }),
            ..start()
        })
        .unwrap_err();
        assert!(
            e.message().starts_with("start.size.width: "),
            "{}",
            e.message()
        );
    }

    #[tokio::test]
    async fn attach_to_an_unknown_container() {
        let containers = Containers::new(super::super::Config::default());
        let input = tokio_stream::iter(vec![Ok(StdioInput {
            input: Some(Input::Start(start())),
        })]);
        let e = containers.attach(input).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert_eq!(e.message(), "container c1 not found");
    }
}
