//! The `start` message that opens an Exec or Attach input stream.

use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use vmpod_agent_proto::v1::stdio_input::Input;
use vmpod_agent_proto::v1::{StdioInput, StdioStart};

/// Reads the first message of `input`, which must be `start`.
pub async fn first<S>(input: &mut S) -> Result<StdioStart, Status>
where
    S: Stream<Item = Result<StdioInput, Status>> + Unpin,
{
    match input.next().await {
        Some(Ok(StdioInput {
            input: Some(Input::Start(start)),
        })) => Ok(start),
        Some(Ok(_)) => Err(Status::invalid_argument(
            "input: the first message must be `start`",
        )),
        Some(Err(e)) => Err(e),
        None => Err(Status::invalid_argument(
            "input: ended before the `start` message",
        )),
    }
}

/// A `start` after the first message.
pub fn repeated() -> Status {
    Status::invalid_argument("input: `start` may only be the first message")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(input: Input) -> Result<StdioInput, Status> {
        Ok(StdioInput { input: Some(input) })
    }

    #[tokio::test]
    async fn start_must_come_first() {
        let mut ok = tokio_stream::iter(vec![msg(Input::Start(StdioStart {
            id: "c1".into(),
            ..Default::default()
        }))]);
        assert_eq!(first(&mut ok).await.unwrap().id, "c1");

        let mut wrong = tokio_stream::iter(vec![msg(Input::Stdin(b"x".to_vec()))]);
        let e = first(&mut wrong).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(e.message(), "input: the first message must be `start`");

        let mut empty = tokio_stream::iter(Vec::<Result<StdioInput, Status>>::new());
        let e = first(&mut empty).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);

        let mut broken = tokio_stream::iter(vec![Err(Status::cancelled("gone"))]);
        assert_eq!(
            first(&mut broken).await.unwrap_err().code(),
            tonic::Code::Cancelled
        );
    }
}
