//! The path to the guest agent, and the tonic client that rides on it.
//!
//! Two transports reach the guest's vsock port: hybrid vsock (a unix socket
//! on which the host asks for a guest port with `CONNECT <port>\n` and gets
//! `OK <n>\n`), served by vhost-device-vsock or the built-in VMM, and the
//! host kernel's `AF_VSOCK` when QEMU uses `/dev/vhost-vsock`. Both end in a
//! byte stream to the agent, so everything above the connect is shared.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::{Instant, timeout_at};
use tokio_vsock::{VsockAddr, VsockStream};
use tonic::transport::{Channel, Endpoint, Uri};
use vmpod_agent_proto::AgentClient;
use vmpod_agent_proto::v1::SetupSandboxRequest;

/// A reply line longer than this is not a handshake reply.
const MAX_REPLY: usize = 64;
/// One handshake attempt; a guest that accepted answers in milliseconds.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// One RPC to the agent before boot completes.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("connection closed before the handshake reply (guest not listening yet?)")]
    Closed,
    #[error("handshake reply longer than {MAX_REPLY} bytes")]
    TooLong,
    #[error("unexpected handshake reply {0:?}")]
    Unexpected(String),
}

/// Checks one reply line (without its newline): `OK <port>`. The number is
/// the guest port for vhost-device-vsock and a host port for Firecracker, so
/// only its form is checked.
pub fn parse_reply(line: &[u8]) -> Result<u32, HandshakeError> {
    let text = String::from_utf8_lossy(line);
    text.strip_prefix("OK ")
        .and_then(|n| n.trim_end_matches('\r').parse::<u32>().ok())
        .ok_or_else(|| HandshakeError::Unexpected(text.into_owned()))
}

/// Connects to guest `port` through the hybrid-vsock socket at `uds`.
///
/// The reply is read byte by byte so that nothing the guest sends after it
/// (an HTTP/2 server speaks first) is swallowed by a buffer.
pub async fn hybrid_connect(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds).await?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            return Err(io::Error::other(HandshakeError::Closed));
        }
        if byte[0] == b'\n' {
            break;
        }
        if line.len() >= MAX_REPLY {
            return Err(io::Error::other(HandshakeError::TooLong));
        }
        line.push(byte[0]);
    }
    parse_reply(&line).map_err(io::Error::other)?;
    Ok(stream)
}

/// Where the host reaches the guest's vsock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddr {
    /// The pod's hybrid-vsock unix socket.
    Hybrid(PathBuf),
    /// The guest's CID in the host kernel's vsock address space.
    Kernel { cid: u32 },
}

impl std::fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentAddr::Hybrid(uds) => write!(f, "hybrid vsock {}", uds.display()),
            AgentAddr::Kernel { cid } => write!(f, "vsock cid {cid}"),
        }
    }
}

/// The stream either transport yields; tonic needs one type.
pub trait AgentIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AgentIo for T {}

/// One connection to guest `port`, handshake included.
pub async fn connect(addr: &AgentAddr, port: u32) -> io::Result<Box<dyn AgentIo>> {
    let stream: Box<dyn AgentIo> = match addr {
        AgentAddr::Hybrid(uds) => Box::new(hybrid_connect(uds, port).await?),
        AgentAddr::Kernel { cid } => {
            Box::new(VsockStream::connect(VsockAddr::new(*cid, port)).await?)
        }
    };
    Ok(stream)
}

/// A gRPC channel whose every (re)connect is a fresh connection to the
/// guest (for hybrid vsock, a fresh handshake).
pub async fn channel(addr: AgentAddr, port: u32) -> Result<Channel> {
    let shown = addr.to_string();
    // The authority is never resolved: the connector ignores the URI.
    let endpoint = Endpoint::from_static("http://agent.vsock").connect_timeout(HANDSHAKE_TIMEOUT);
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let addr = addr.clone();
            async move {
                let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect(&addr, port))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "vsock connect timed out")
                    })??;
                Ok::<_, io::Error>(TokioIo::new(s))
            }
        }))
        .await
        .with_context(|| format!("connecting to the agent over {shown}"))
}

/// Retries until the agent accepts a connection and reports ready, or the
/// deadline passes; it never gives up earlier, so an error means the
/// deadline was reached. The caller owns the deadline and the error it
/// implies; this only reports the last failure seen.
pub async fn connect_ready(
    addr: &AgentAddr,
    port: u32,
    deadline: Instant,
    setup: &SetupSandboxRequest,
) -> Result<(AgentClient<Channel>, String)> {
    let mut last: Option<anyhow::Error> = None;
    loop {
        match timeout_at(deadline, try_ready(addr, port, setup)).await {
            Ok(Ok(ready)) => return Ok(ready),
            Ok(Err(Attempt::Fatal(e))) => return Err(e),
            Ok(Err(Attempt::Retry(e))) => {
                tracing::debug!("agent not ready yet: {e:#}");
                last = Some(e);
            }
            Err(_) => break,
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep_until((now + RETRY_PAUSE).min(deadline)).await;
    }
    let what = format!("agent not reachable over {addr} before the deadline");
    match last {
        Some(e) => Err(e.context(what)),
        None => bail!(what),
    }
}

enum Attempt {
    /// The guest is not there yet: try again.
    Retry(anyhow::Error),
    /// The agent answered and refused: trying again cannot help.
    Fatal(anyhow::Error),
}

/// One connection attempt. SetupSandbox doubles as the readiness probe:
/// the agent serves only once its own setup is done, and at TCG speed a
/// separate Health round trip costs tens of milliseconds of pod start.
async fn try_ready(
    addr: &AgentAddr,
    port: u32,
    setup: &SetupSandboxRequest,
) -> Result<(AgentClient<Channel>, String), Attempt> {
    let mut client = AgentClient::new(channel(addr.clone(), port).await.map_err(Attempt::Retry)?);
    let resp = tokio::time::timeout(RPC_TIMEOUT, client.setup_sandbox(setup.clone()))
        .await
        .map_err(|_| Attempt::Retry(anyhow::anyhow!("SetupSandbox timed out")))?;
    match resp {
        Ok(r) => Ok((client, r.into_inner().share_mountpoint)),
        Err(status) => {
            let e = anyhow::anyhow!("SetupSandbox: {}", status.message());
            match status.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                    Err(Attempt::Retry(e))
                }
                _ => Err(Attempt::Fatal(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    #[test]
    fn parses_replies() {
        assert_eq!(parse_reply(b"OK 1024"), Ok(1024));
        assert_eq!(parse_reply(b"OK 1073741824\r"), Ok(1_073_741_824));
        assert!(matches!(
            parse_reply(b"OK"),
            Err(HandshakeError::Unexpected(_))
        ));
        assert!(matches!(
            parse_reply(b"ERR no listener"),
            Err(HandshakeError::Unexpected(_))
        ));
        assert!(matches!(
            parse_reply(b"OK -1"),
            Err(HandshakeError::Unexpected(_))
        ));
    }

    /// A fake hybrid-vsock endpoint: checks the request, sends `reply`, then
    /// the first bytes of the "guest" stream right behind it.
    async fn fake(reply: &'static [u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vm.vsock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let mut s = tokio::io::BufReader::new(s);
            let mut req = String::new();
            s.read_line(&mut req).await.expect("read request");
            assert_eq!(req, "CONNECT 1024\n");
            let mut s = s.into_inner();
            let mut out = reply.to_vec();
            out.extend_from_slice(b"GUEST");
            s.write_all(&out).await.expect("reply");
            // Hold the stream open until the client is done.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        });
        (dir, path)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn handshake_leaves_guest_bytes_in_the_stream() {
        let (_dir, path) = fake(b"OK 1024\n").await;
        let mut s = hybrid_connect(&path, 1024).await.expect("handshake");
        let mut first = [0u8; 5];
        s.read_exact(&mut first).await.expect("guest bytes");
        assert_eq!(&first, b"GUEST");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn handshake_rejects_bad_reply() {
        let (_dir, path) = fake(b"NO\n").await;
        let e = hybrid_connect(&path, 1024).await.unwrap_err();
        assert!(e.to_string().contains("unexpected handshake reply"), "{e}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn handshake_reports_early_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vm.vsock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 13];
            let _ = s.read_exact(&mut buf).await;
        });
        let e = hybrid_connect(&path, 1024).await.unwrap_err();
        assert!(e.to_string().contains("closed before"), "{e}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connect_ready_gives_up_at_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing.vsock");
        let start = Instant::now();
        let e = connect_ready(
            &AgentAddr::Hybrid(path),
            1024,
            start + Duration::from_millis(300),
            &SetupSandboxRequest::default(),
        )
        .await
        .unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(format!("{e:#}").contains("deadline"), "{e:#}");
    }

    /// No guest has this CID (on these hosts AF_VSOCK may not even reach a
    /// transport): the kernel path retries like the hybrid one until the
    /// deadline, and says which address it tried.
    #[tokio::test(flavor = "current_thread")]
    async fn kernel_vsock_retries_until_the_deadline() {
        let start = Instant::now();
        let e = connect_ready(
            &AgentAddr::Kernel { cid: u32::MAX - 7 },
            1024,
            start + Duration::from_millis(300),
            &SetupSandboxRequest::default(),
        )
        .await
        .unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(start.elapsed() < Duration::from_secs(3));
        let msg = format!("{e:#}");
        assert!(msg.contains("deadline"), "{msg}");
        assert!(msg.contains("vsock cid 4294967288"), "{msg}");
    }
}
