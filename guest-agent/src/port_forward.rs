//! PortForward: one TCP connection to a port of the pod (`kubectl
//! port-forward`).
//!
//! The guest's network namespace is the pod's, so the agent connects to
//! `127.0.0.1:<port>` itself (then `[::1]:<port>`, for a server that only
//! listens on IPv6). Data is copied both ways with backpressure: a socket
//! read only follows a sent chunk (through a small bounded channel), and
//! the next request message is only read once the last one is written to
//! the socket.
//!
//! ```text
//! request:  port ─► connect ─► data... ─► close_write ─► (end)
//!                                            │ shutdown(Write)
//! response:          connected ─► data... ─► (end, on the socket's EOF)
//! ```

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use tracing::debug;
use vmpod_agent_proto::v1::port_forward_input::Input;
use vmpod_agent_proto::v1::port_forward_output::Output;
use vmpod_agent_proto::v1::{PortForwardInput, PortForwardOutput};

/// One socket read, and the largest data message.
const READ_SIZE: usize = 32 << 10;
/// Messages in flight between the socket reader and the response.
const OUTPUT_QUEUE: usize = 4;
/// A loopback connect is answered at once unless the listener's backlog
/// is full; then this is as long as we wait.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Tx = mpsc::Sender<Result<PortForwardOutput, Status>>;

/// The PortForward response stream.
pub type PortForwardOutputStream = ReceiverStream<Result<PortForwardOutput, Status>>;

/// Connects to the port the first input message names and returns the
/// response stream, which starts with `connected`; a task copies the data
/// from then on.
pub async fn port_forward<S>(mut input: S) -> Result<PortForwardOutputStream, Status>
where
    S: Stream<Item = Result<PortForwardInput, Status>> + Send + Unpin + 'static,
{
    let port = match input.next().await {
        Some(Ok(PortForwardInput {
            input: Some(Input::Port(port)),
        })) => check_port(port)?,
        Some(Ok(_)) => {
            return Err(Status::invalid_argument(
                "input: the first message must be `port`",
            ));
        }
        Some(Err(e)) => return Err(e),
        None => {
            return Err(Status::invalid_argument(
                "input: ended before the `port` message",
            ));
        }
    };
    let socket = connect(port).await?;
    let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
    tx.send(Ok(PortForwardOutput {
        output: Some(Output::Connected(true)),
    }))
    .await
    .map_err(|_| Status::cancelled("the client went away"))?;
    tokio::spawn(copy(port, socket, input, tx));
    Ok(ReceiverStream::new(rx))
}

fn check_port(port: u32) -> Result<u16, Status> {
    match u16::try_from(port) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(Status::invalid_argument(format!(
            "port: {port} is not a TCP port (1-65535)"
        ))),
    }
}

/// 127.0.0.1, then ::1 if nothing listens there.
async fn connect(port: u16) -> Result<TcpStream, Status> {
    let refused = || {
        Status::unavailable(format!(
            "connection refused: nothing listens on port {port} in the pod"
        ))
    };
    let attempt = |ip: SocketAddr| async move {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(ip)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    };
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match attempt(v4).await {
        Ok(s) => return Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        Err(e) => return Err(Status::unavailable(format!("connecting to {v4}: {e}"))),
    }
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    match attempt(v6).await {
        Ok(s) => Ok(s),
        // Refused, or no IPv6 loopback in this guest at all: either way
        // nothing listens.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::Unsupported
            ) || e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
        {
            Err(refused())
        }
        Err(e) => Err(Status::unavailable(format!("connecting to {v6}: {e}"))),
    }
}

/// Copies both ways until the socket's EOF has been sent on, the client
/// went away (its input broke or it stopped reading the output; the socket
/// is then closed), or either side failed.
async fn copy<S>(port: u16, socket: TcpStream, mut input: S, tx: Tx)
where
    S: Stream<Item = Result<PortForwardInput, Status>> + Unpin,
{
    let (reader, writer) = socket.into_split();
    let up = upstream(&mut input, writer);
    let down = downstream(reader, tx.clone());
    tokio::pin!(up, down);
    let mut up_done = false;
    loop {
        tokio::select! {
            r = &mut up, if !up_done => match r {
                // The client sends no more: only the other way is left.
                Ok(()) => up_done = true,
                Err(Some(status)) => {
                    let _ = tx.send(Err(status)).await;
                    break;
                }
                // The input broke: the client is gone. Dropping both
                // halves closes the socket.
                Err(None) => break,
            },
            () = &mut down => break,
            // Also while only the socket's side is left and it is quiet.
            () = tx.closed() => break,
        }
    }
    debug!(port, "port-forward connection closed");
}

/// Client → socket. Ok once the client will send no more (its write
/// shutdown done); Err when the input broke (with a status when the
/// client broke the protocol).
async fn upstream<S>(input: &mut S, mut writer: OwnedWriteHalf) -> Result<(), Option<Status>>
where
    S: Stream<Item = Result<PortForwardInput, Status>> + Unpin,
{
    let mut open = true;
    loop {
        let msg = match input.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                debug!("port-forward input broke: {e}");
                return Err(None);
            }
            // The client finished sending: as close_write.
            None => {
                if open {
                    let _ = writer.shutdown().await;
                }
                return Ok(());
            }
        };
        match msg.input {
            Some(Input::Port(_)) => {
                return Err(Some(Status::invalid_argument(
                    "input: `port` may only be the first message",
                )));
            }
            Some(Input::Data(data)) => {
                if !open {
                    return Err(Some(Status::invalid_argument(
                        "data: arrived after close_write",
                    )));
                }
                if let Err(e) = writer.write_all(&data).await {
                    // The peer closed or reset: nothing more can go that
                    // way, and its side ends the call through downstream.
                    debug!("port-forward write: {e}");
                    open = false;
                }
            }
            Some(Input::CloseWrite(true)) => {
                if open {
                    let _ = writer.shutdown().await;
                    open = false;
                }
            }
            Some(Input::CloseWrite(false)) | None => {}
        }
    }
}

/// Socket → client, until the socket's EOF or the client stopped reading.
async fn downstream(mut reader: OwnedReadHalf, tx: Tx) {
    let mut buf = vec![0u8; READ_SIZE];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                let _ = tx
                    .send(Err(Status::unavailable(format!(
                        "the connection in the pod failed: {e}"
                    ))))
                    .await;
                return;
            }
        };
        let msg = PortForwardOutput {
            output: Some(Output::Data(buf[..n].to_vec())),
        };
        if tx.send(Ok(msg)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn port_msg(port: u32) -> Result<PortForwardInput, Status> {
        Ok(PortForwardInput {
            input: Some(Input::Port(port)),
        })
    }

    fn data(d: &[u8]) -> Result<PortForwardInput, Status> {
        Ok(PortForwardInput {
            input: Some(Input::Data(d.to_vec())),
        })
    }

    fn close_write() -> Result<PortForwardInput, Status> {
        Ok(PortForwardInput {
            input: Some(Input::CloseWrite(true)),
        })
    }

    type InputMsg = Result<PortForwardInput, Status>;

    /// An input stream the test feeds as it goes.
    fn channel() -> (mpsc::Sender<InputMsg>, ReceiverStream<InputMsg>) {
        let (tx, rx) = mpsc::channel(4);
        (tx, ReceiverStream::new(rx))
    }

    async fn expect_connected(out: &mut PortForwardOutputStream) {
        let first = out.next().await.unwrap().unwrap();
        assert_eq!(first.output, Some(Output::Connected(true)));
    }

    /// All data until the stream ends.
    async fn read_all(out: &mut PortForwardOutputStream) -> Vec<u8> {
        let mut got = Vec::new();
        while let Some(msg) = out.next().await {
            match msg.unwrap().output {
                Some(Output::Data(d)) => got.extend(d),
                other => panic!("unexpected {other:?}"),
            }
        }
        got
    }

    #[tokio::test]
    async fn ports_are_checked() {
        for (port, text) in [(0, "port: 0 is"), (70000, "port: 70000 is")] {
            let input = tokio_stream::iter(vec![port_msg(port)]);
            let e = port_forward(input).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(text), "{}", e.message());
        }
        let input = tokio_stream::iter(vec![data(b"x")]);
        let e = port_forward(input).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn refused_port_is_unavailable() {
        // A port that was just free: bind, note it, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let input = tokio_stream::iter(vec![port_msg(port.into())]);
        let e = port_forward(input).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(
            e.message().contains("connection refused"),
            "{}",
            e.message()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_megabyte_each_way_with_half_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let down: Vec<u8> = (0..1_000_000u32).map(|i| (i * 13 % 241) as u8).collect();

        // The pod's server: reads everything to EOF (the client's
        // close_write), then answers and closes.
        let server = {
            let down = down.clone();
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                s.write_all(&down).await.unwrap();
                s.shutdown().await.unwrap();
                got
            })
        };

        let (tx, input) = channel();
        tx.send(port_msg(port.into())).await.unwrap();
        let mut out = port_forward(input).await.unwrap();
        expect_connected(&mut out).await;
        let feed = {
            let up = up.clone();
            tokio::spawn(async move {
                for chunk in up.chunks(10_000) {
                    tx.send(data(chunk)).await.unwrap();
                }
                tx.send(close_write()).await.unwrap();
                // The input stays open: the call must end on the socket's
                // EOF, not on the end of the input.
                tx
            })
        };
        let got = tokio::time::timeout(Duration::from_secs(30), read_all(&mut out))
            .await
            .expect("the output did not end");
        assert!(got == down, "{} bytes back, not the 1 MB sent", got.len());
        assert!(server.await.unwrap() == up, "the server got other bytes");
        drop(feed.await.unwrap());
    }

    #[tokio::test]
    async fn a_broken_input_closes_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, input) = channel();
        tx.send(port_msg(port.into())).await.unwrap();
        let mut out = port_forward(input).await.unwrap();
        expect_connected(&mut out).await;
        let (mut s, _) = listener.accept().await.unwrap();
        tx.send(data(b"hello")).await.unwrap();
        tx.send(Err(Status::cancelled("client gone")))
            .await
            .unwrap();
        // The server reads the data, then EOF: the agent closed its end.
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
            .await
            .expect("the socket was not closed")
            .unwrap();
        assert_eq!(got, b"hello");
        assert!(out.next().await.is_none());
    }

    #[tokio::test]
    async fn ipv6_only_servers_are_found() {
        let Ok(listener) = TcpListener::bind("[::1]:0").await else {
            eprintln!("SKIP: no IPv6 loopback here");
            return;
        };
        let port = listener.local_addr().unwrap().port();
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            eprintln!("SKIP: the port is taken on IPv4");
            return;
        }
        let input = tokio_stream::iter(vec![port_msg(port.into())]);
        let mut out = port_forward(input).await.unwrap();
        expect_connected(&mut out).await;
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"v6").await.unwrap();
        drop(s);
        assert_eq!(read_all(&mut out).await, b"v6");
    }
}
