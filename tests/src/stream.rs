//! Clients of vmpod's streaming server, written here the way kubectl's
//! behave: an HTTP/1.1 upgrade to SPDY/3.1 (then streams named by a
//! `streamtype` header) or to WebSocket (then channel-prefixed messages).
//!
//! The SPDY side uses the project's own `vmpod-spdy` session in its client
//! role; byte-level interoperability with Go's spdystream is what the
//! manual crictl check in the issue note covers.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use vmpod_spdy::{Incoming, RecvStream, SendStream, Session};

/// The response head of an upgrade request.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body of a refusal (read up to its Content-Length).
    pub body: String,
}

impl Head {
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("not an http:// URL: {url}"))?;
    let slash = rest.find('/').unwrap_or(rest.len());
    Ok((rest[..slash].to_string(), rest[slash..].to_string()))
}

/// Sends an upgrade request to SPDY/3.1 offering `protocols`, and reads the
/// response head byte by byte (so no SPDY frame is swallowed). Returns the
/// connection when the server switched protocols.
pub async fn spdy_upgrade(url: &str, protocols: &[&str]) -> Result<(Head, Option<TcpStream>)> {
    let (host, path) = split_url(url)?;
    let mut tcp = TcpStream::connect(&host)
        .await
        .with_context(|| format!("connect {host}"))?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let head = read_head(&mut tcp).await?;
    if head.status == 101 {
        Ok((head, Some(tcp)))
    } else {
        Ok((head, None))
    }
}

async fn read_head(tcp: &mut TcpStream) -> Result<Head> {
    let mut raw = Vec::new();
    let mut b = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut b))
            .await
            .context("no response head within 30 s")??;
        if n == 0 {
            bail!(
                "connection closed inside the response head: {:?}",
                String::from_utf8_lossy(&raw)
            );
        }
        raw.push(b[0]);
        if raw.len() > 64 << 10 {
            bail!("response head over 64 KiB");
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut head = Head {
        status,
        headers,
        body: String::new(),
    };
    if status != 101 {
        let len: usize = head
            .header_values("content-length")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            .min(64 << 10);
        let mut body = vec![0u8; len];
        tcp.read_exact(&mut body).await?;
        head.body = String::from_utf8_lossy(&body).into_owned();
    }
    Ok(head)
}

/// A plain GET; the status code.
pub async fn http_status(url: &str) -> Result<u16> {
    let (host, path) = split_url(url)?;
    let mut tcp = TcpStream::connect(&host).await?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    Ok(read_head(&mut tcp).await?.status)
}

/// The streams of one remotecommand session, client side.
pub struct SpdyStdio {
    pub session: Session,
    _incoming: Incoming,
    pub stdin: Option<SendStream>,
    pub stdout: Option<RecvStream>,
    pub stderr: Option<RecvStream>,
    pub error: RecvStream,
    pub resize: Option<SendStream>,
}

/// Which streams to open.
#[derive(Clone, Copy, Debug, Default)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Opens a remotecommand session on `url` as kubectl's v4 SPDY client
/// does: the error stream first, then stdin, stdout, stderr (not with a
/// tty) and resize (only with a tty).
pub async fn spdy_stdio(url: &str, protocol: &str, s: Streams) -> Result<SpdyStdio> {
    let (head, tcp) = spdy_upgrade(url, &[protocol]).await?;
    let tcp = tcp.ok_or_else(|| anyhow!("upgrade refused: {head:?}"))?;
    let (session, incoming) = Session::client(tcp, vmpod_spdy::Config::default());
    let open = |kind: &'static str| {
        let session = session.clone();
        async move {
            session
                .open(vec![("streamtype".to_string(), kind.to_string())], false)
                .await
                .with_context(|| format!("opening the {kind} stream"))
        }
    };
    let (error_rx, mut error_tx) = open("error").await?.split();
    // The client never writes on the error stream.
    error_tx.finish().await?;
    let stdin = if s.stdin {
        Some(open("stdin").await?.split().1)
    } else {
        None
    };
    let stdout = if s.stdout {
        Some(open("stdout").await?.split().0)
    } else {
        None
    };
    let stderr = if s.stderr && !s.tty {
        Some(open("stderr").await?.split().0)
    } else {
        None
    };
    let resize = if s.tty {
        Some(open("resize").await?.split().1)
    } else {
        None
    };
    Ok(SpdyStdio {
        session,
        _incoming: incoming,
        stdin,
        stdout,
        stderr,
        error: error_rx,
        resize,
    })
}

/// Reads a stream to its end.
pub async fn read_all(rx: &mut RecvStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = rx.recv().await {
        out.extend_from_slice(&b);
    }
    out
}

/// Reads until `needle` appeared (or the stream ended); everything read.
pub async fn read_until(rx: &mut RecvStream, needle: &[u8], limit: Duration) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !out.windows(needle.len()).any(|w| w == needle) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(b)) => out.extend_from_slice(&b),
            Ok(None) => bail!(
                "stream ended before {:?}: {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&out)
            ),
            Err(_) => bail!(
                "no {:?} within {limit:?}: {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&out)
            ),
        }
    }
    Ok(out)
}

/// The JSON `Status` on an error stream, and the exit code it reports.
pub fn exit_code_of(status: &[u8]) -> Result<i32> {
    let v: serde_json::Value = serde_json::from_slice(status)
        .with_context(|| format!("status {:?}", String::from_utf8_lossy(status)))?;
    match v["status"].as_str() {
        Some("Success") => Ok(0),
        Some("Failure") if v["reason"] == "NonZeroExitCode" => {
            let causes = v["details"]["causes"]
                .as_array()
                .ok_or_else(|| anyhow!("no causes in {v}"))?;
            let code = causes
                .iter()
                .find(|c| c["reason"] == "ExitCode")
                .and_then(|c| c["message"].as_str())
                .and_then(|m| m.parse().ok())
                .ok_or_else(|| anyhow!("no ExitCode cause in {v}"))?;
            Ok(code)
        }
        _ => bail!("failure: {v}"),
    }
}

pub type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket on `url` offering `protocols`; returns it with the
/// chosen subprotocol.
pub async fn ws_connect(url: &str, protocols: &[&str]) -> Result<(Ws, String)> {
    let (host, _) = split_url(url)?;
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        protocols.join(", ").parse().context("protocol header")?,
    );
    let tcp = TcpStream::connect(&host).await?;
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .context("websocket handshake")?;
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((ws, chosen))
}

/// `[channel] + data`.
pub fn channel_message(channel: u8, data: &[u8]) -> tokio_tungstenite::tungstenite::Message {
    let mut v = vec![channel];
    v.extend_from_slice(data);
    tokio_tungstenite::tungstenite::Message::Binary(Bytes::from(v))
}

/// Deterministic pseudo-random bytes (xorshift), so a corrupted or
/// reordered byte is caught.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// VmRSS and VmHWM of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
