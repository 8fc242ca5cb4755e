//! `kubectl exec` and `kubectl attach`: Kubernetes' remotecommand protocol
//! over SPDY/3.1 or WebSocket, bridged to the shim's Exec and Attach.
//!
//! Both transports carry the same five streams: stdin, stdout, stderr,
//! error (how it ended) and resize (terminal sizes as JSON). SPDY opens one
//! SPDY stream per kind, named by a `streamtype` header; WebSocket prefixes
//! each message with a channel byte (0 stdin, 1 stdout, 2 stderr, 3 error,
//! 4 resize, and from v5 255 to close a channel). What differs between
//! versions is small: v1/v2 report errors as text and have no resize, v4 and
//! v5 report a JSON `Status` (see [`super::status`]).
//!
//! The client's input becomes the shim's `StdioInput` messages and the
//! shim's output becomes writes on the client's streams, each through a
//! bounded channel or an awaited write, so a slow side slows the other
//! rather than growing memory. When the client goes away the shim call is
//! dropped, and the agent hangs up on the command.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};
use tonic::Streaming;
use vmpod_agent_proto::v1::{
    OutputStream, StdioInput, StdioOutput, StdioStart, TerminalSize, stdio_input, stdio_output,
};

use super::idle::Idle;
use super::status::{self, Outcome};
use crate::sandbox::shim;

/// SPDY versions, newest first: what `X-Stream-Protocol-Version` may pick.
pub const SPDY_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// A SPDY client that names no version speaks the first one.
pub const SPDY_LEGACY: &str = "channel.k8s.io";
/// WebSocket subprotocols we speak (binary channel framing only).
pub const WS_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// How long the client may take to open its streams (kubelet's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a tty session waits for the client's first terminal size, so
/// the command starts at the right size instead of being resized after its
/// first output.
const FIRST_SIZE_WAIT: Duration = Duration::from_millis(500);
/// After the end was reported, how long the client gets to close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
const SHIM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest WebSocket message we accept from a client.
pub const WS_MAX_MESSAGE: usize = 1 << 20;
/// Input messages in flight to the shim.
const INPUT_QUEUE: usize = 16;

/// What a token for exec or attach stands for, as the CRI call validated it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The pod's dir, where the shim's socket is.
    pub pod_dir: PathBuf,
    pub container_id: String,
    /// Exec: the command. Attach: `None`.
    pub command: Option<Vec<String>>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl Target {
    /// A tty merges stderr into stdout, so there is no stderr stream.
    fn wants_stderr(&self) -> bool {
        self.stderr && !self.tty
    }
}

/// What the client sends, whatever its transport.
#[derive(Debug)]
enum Input {
    Stdin(Bytes),
    CloseStdin,
    Resize(TerminalSize),
}

impl From<Input> for StdioInput {
    fn from(i: Input) -> Self {
        let input = match i {
            Input::Stdin(b) => stdio_input::Input::Stdin(b.to_vec()),
            Input::CloseStdin => stdio_input::Input::CloseStdin(true),
            Input::Resize(s) => stdio_input::Input::Resize(s),
        };
        StdioInput { input: Some(input) }
    }
}

/// What to hand the client next.
enum Event {
    Output(OutputStream, Bytes),
    End(Outcome),
}

/// A command (or attach) running in the guest.
struct Running {
    input: mpsc::Sender<StdioInput>,
    output: Streaming<StdioOutput>,
}

async fn start(target: &Target, size: Option<TerminalSize>) -> Result<Running, String> {
    let mut client = shim::connect(&target.pod_dir, SHIM_CONNECT_TIMEOUT).await?;
    let (input, rx) = mpsc::channel(INPUT_QUEUE);
    let begin = StdioStart {
        id: target.container_id.clone(),
        args: target.command.clone().unwrap_or_default(),
        tty: target.tty,
        stdin: target.stdin,
        stdout: target.stdout,
        stderr: target.wants_stderr(),
        size,
    };
    // Cannot fail: the receiver is right here.
    let _ = input
        .send(StdioInput {
            input: Some(stdio_input::Input::Start(begin)),
        })
        .await;
    let requests = ReceiverStream::new(rx);
    let resp = match target.command {
        Some(_) => client.exec(requests).await,
        None => client.attach(requests).await,
    };
    let output = resp.map_err(|s| s.message().to_string())?.into_inner();
    Ok(Running { input, output })
}

impl Running {
    async fn next(&mut self) -> Event {
        loop {
            return match self.output.message().await {
                Ok(Some(StdioOutput {
                    output: Some(stdio_output::Output::Chunk(c)),
                })) => Event::Output(
                    OutputStream::try_from(c.stream).unwrap_or(OutputStream::Stdout),
                    Bytes::from(c.data),
                ),
                Ok(Some(StdioOutput {
                    output: Some(stdio_output::Output::ExitCode(code)),
                })) => Event::End(Outcome::Exited(code)),
                Ok(Some(StdioOutput { output: None })) => continue,
                Ok(None) => Event::End(Outcome::Failed(
                    "the session ended without an exit status".into(),
                )),
                Err(s) => Event::End(Outcome::Failed(s.message().to_string())),
            };
        }
    }
}

/// Parses the resize stream: JSON objects `{"Width":W,"Height":H}` one
/// after another, however the transport cut them.
#[derive(Default)]
struct ResizeParser {
    buf: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct Size {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// A resize message longer than this is garbage, not a size.
const MAX_RESIZE_BUFFER: usize = 4096;

impl ResizeParser {
    fn push(&mut self, data: &[u8]) -> Result<Vec<TerminalSize>, String> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Size>();
        let mut used = 0;
        loop {
            match stream.next() {
                Some(Ok(s)) => {
                    used = stream.byte_offset();
                    out.push(TerminalSize {
                        width: s.width.into(),
                        height: s.height.into(),
                    });
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(format!("resize: {e}")),
                None => break,
            }
        }
        self.buf.drain(..used);
        if self.buf.len() > MAX_RESIZE_BUFFER {
            return Err(format!(
                "resize: more than {MAX_RESIZE_BUFFER} bytes without a whole size"
            ));
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------- SPDY ---

/// Serves one exec or attach over an upgraded SPDY/3.1 connection.
pub async fn serve_spdy(io: Upgraded, protocol: &'static str, target: Target, idle: Duration) {
    let (session, mut incoming) =
        vmpod_spdy::Session::server(TokioIo::new(io), vmpod_spdy::Config::default());
    let version = Version::of(protocol);
    let mut want: Vec<&str> = vec!["error"];
    if target.stdin {
        want.push("stdin");
    }
    if target.stdout {
        want.push("stdout");
    }
    if target.wants_stderr() {
        want.push("stderr");
    }
    if target.tty && version.has_resize() {
        want.push("resize");
    }
    let mut got: Vec<(String, vmpod_spdy::Stream)> = Vec::new();
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while !want.iter().all(|w| got.iter().any(|(k, _)| k == w)) {
        tokio::select! {
            s = incoming.accept() => {
                let Some(mut s) = s else { return };
                let kind = s.header("streamtype").unwrap_or_default().to_string();
                if s.reply(Vec::new(), false).await.is_err() {
                    return;
                }
                if !want.contains(&kind.as_str()) || got.iter().any(|(k, _)| *k == kind) {
                    tracing::debug!(container = %target.container_id, streamtype = %kind, "unexpected stream reset");
                    let (_, mut tx) = s.split();
                    let _ = tx.reset(1).await;
                    continue;
                }
                got.push((kind, s));
            }
            _ = &mut deadline => {
                tracing::warn!(container = %target.container_id, "client did not open its streams within {STREAM_CREATION_TIMEOUT:?}");
                session.close().await;
                return;
            }
        }
    }
    let mut take = |kind: &str| {
        got.iter()
            .position(|(k, _)| k == kind)
            .map(|i| got.swap_remove(i).1.split())
    };
    let Some((_, mut error)) = take("error") else {
        return;
    };
    // Our halves of the client's input streams stay open until the end:
    // Kubernetes' client reads its stdin stream to learn when the server
    // is done, and closes stdin for good when we close our side.
    let (stdin, _stdin_open) = take("stdin").unzip();
    let mut stdout = take("stdout").map(|(_, tx)| tx);
    let mut stderr = take("stderr").map(|(_, tx)| tx);
    let (mut resize, _resize_open) = take("resize").unzip();

    let size = match (&mut resize, target.tty) {
        (Some(r), true) => first_spdy_size(r).await,
        _ => None,
    };
    let activity = Idle::new(idle);
    let outcome = match start(&target, size).await {
        Err(e) => Outcome::Failed(e),
        Ok(mut running) => {
            let feeders = spawn_spdy_input(&running.input, stdin, resize, &activity);
            let outcome = loop {
                tokio::select! {
                    ev = running.next() => match ev {
                        Event::Output(stream, data) => {
                            activity.touch();
                            let sink = match stream {
                                OutputStream::Stderr => stderr.as_mut(),
                                OutputStream::Stdout => stdout.as_mut(),
                            };
                            if let Some(sink) = sink
                                && sink.send(&data).await.is_err()
                            {
                                break None;
                            }
                        }
                        Event::End(o) => break Some(o),
                    },
                    _ = session.closed() => break None,
                    _ = activity.expired() => {
                        tracing::info!(container = %target.container_id, "streaming session idle for {idle:?}; closing");
                        break None;
                    }
                }
            };
            for f in feeders {
                f.abort();
            }
            match outcome {
                Some(o) => o,
                // The client went away: dropping `running` ends the shim
                // call, and the agent hangs up on the command.
                None => {
                    session.close().await;
                    return;
                }
            }
        }
    };
    for s in [stdout.as_mut(), stderr.as_mut()].into_iter().flatten() {
        let _ = s.finish().await;
    }
    if let Some(body) = status::encode(&outcome, version.json_status()) {
        let _ = error.send(&body).await;
    }
    let _ = error.finish().await;
    // The client closes once it read the error stream.
    let _ = tokio::time::timeout(CLOSE_GRACE, session.closed()).await;
    session.close().await;
}

async fn first_spdy_size(resize: &mut vmpod_spdy::RecvStream) -> Option<TerminalSize> {
    let first = tokio::time::timeout(FIRST_SIZE_WAIT, resize.recv())
        .await
        .ok()??;
    ResizeParser::default().push(&first).ok()?.pop()
}

fn spawn_spdy_input(
    input: &mpsc::Sender<StdioInput>,
    stdin: Option<vmpod_spdy::RecvStream>,
    resize: Option<vmpod_spdy::RecvStream>,
    activity: &Idle,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(mut rx) = stdin {
        let input = input.clone();
        let activity = activity.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                activity.touch();
                if input.send(Input::Stdin(data).into()).await.is_err() {
                    return;
                }
            }
            let _ = input.send(Input::CloseStdin.into()).await;
        }));
    }
    if let Some(mut rx) = resize {
        let input = input.clone();
        tasks.push(tokio::spawn(async move {
            let mut parser = ResizeParser::default();
            while let Some(data) = rx.recv().await {
                match parser.push(&data) {
                    Ok(sizes) => {
                        for s in sizes {
                            if input.send(Input::Resize(s).into()).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring the rest of a bad resize stream");
                        return;
                    }
                }
            }
        }));
    }
    tasks
}

/// What a negotiated version changes.
#[derive(Clone, Copy)]
struct Version(u8);

impl Version {
    fn of(protocol: &str) -> Version {
        match protocol.split('.').next() {
            Some("v5") => Version(5),
            Some("v4") => Version(4),
            Some("v3") => Version(3),
            Some("v2") => Version(2),
            _ => Version(1),
        }
    }
    fn has_resize(self) -> bool {
        self.0 >= 3
    }
    fn json_status(self) -> bool {
        self.0 >= 4
    }
    fn has_close(self) -> bool {
        self.0 >= 5
    }
}

// ----------------------------------------------------------- WebSocket ---

/// Channel numbers of the WebSocket framing.
const CH_STDIN: u8 = 0;
const CH_STDOUT: u8 = 1;
const CH_STDERR: u8 = 2;
const CH_ERROR: u8 = 3;
const CH_RESIZE: u8 = 4;
/// v5: `[255, n]` closes channel n (the client's stdin EOF).
const CH_CLOSE: u8 = 255;

/// The WebSocket settings for a client we do not trust with our memory.
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(WS_MAX_MESSAGE))
        .max_frame_size(Some(WS_MAX_MESSAGE))
}

/// Serves one exec or attach over an upgraded WebSocket connection.
pub async fn serve_websocket(io: Upgraded, protocol: &'static str, target: Target, idle: Duration) {
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(ws_config())).await;
    let version = Version::of(protocol);
    let (mut sink, mut source) = ws.split();
    let activity = Idle::new(idle);

    // A tty session starts at the client's first size when it comes soon;
    // stdin that arrives meanwhile is kept for after the start.
    let mut early: Vec<Input> = Vec::new();
    let mut size = None;
    if target.tty && version.has_resize() {
        let wait = tokio::time::sleep(FIRST_SIZE_WAIT);
        tokio::pin!(wait);
        let mut resize = ResizeParser::default();
        while size.is_none() && early.len() < INPUT_QUEUE {
            tokio::select! {
                m = source.next() => match m.map(|m| decode_ws(m, version, &mut resize)) {
                    Some(Ok(inputs)) => {
                        for i in inputs {
                            match i {
                                Input::Resize(s) if size.is_none() => size = Some(s),
                                other => early.push(other),
                            }
                        }
                    }
                    _ => return,
                },
                _ = &mut wait => break,
            }
        }
    }

    let outcome = match start(&target, size).await {
        Err(e) => Outcome::Failed(e),
        Ok(mut running) => {
            for i in early {
                let _ = running.input.send(i.into()).await;
            }
            let input = running.input.clone();
            let reader_activity = activity.clone();
            let mut reader = tokio::spawn(async move {
                let mut resize = ResizeParser::default();
                while let Some(m) = source.next().await {
                    reader_activity.touch();
                    match decode_ws(m, version, &mut resize) {
                        Ok(inputs) => {
                            for i in inputs {
                                if input.send(i.into()).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(()) => return,
                    }
                }
            });
            let outcome = loop {
                tokio::select! {
                    ev = running.next() => match ev {
                        Event::Output(stream, data) => {
                            activity.touch();
                            let ch = match stream {
                                OutputStream::Stderr if target.wants_stderr() => CH_STDERR,
                                OutputStream::Stdout if target.stdout => CH_STDOUT,
                                _ => continue,
                            };
                            if sink.send(channel_message(ch, &data)).await.is_err() {
                                break None;
                            }
                        }
                        Event::End(o) => break Some(o),
                    },
                    _ = &mut reader => break None,
                    _ = activity.expired() => break None,
                }
            };
            reader.abort();
            match outcome {
                Some(o) => o,
                None => {
                    let _ = sink.close().await;
                    return;
                }
            }
        }
    };
    if let Some(body) = status::encode(&outcome, version.json_status()) {
        let _ = sink.send(channel_message(CH_ERROR, &body)).await;
    }
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
}

/// `[channel] + data` as one binary message.
pub fn channel_message(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// One client message as inputs; `Err` ends the session (closed, broken
/// or speaking nonsense).
fn decode_ws(
    m: Result<Message, tokio_tungstenite::tungstenite::Error>,
    version: Version,
    resize: &mut ResizeParser,
) -> Result<Vec<Input>, ()> {
    let data = match m {
        Ok(Message::Binary(d)) => d,
        Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => return Ok(Vec::new()),
        Ok(Message::Text(_)) => {
            tracing::debug!("text message on a binary channel protocol; closing");
            return Err(());
        }
        Ok(Message::Close(_)) | Err(_) => return Err(()),
    };
    let Some((&ch, rest)) = data.split_first() else {
        return Ok(Vec::new());
    };
    Ok(match ch {
        CH_STDIN if !rest.is_empty() => vec![Input::Stdin(Bytes::copy_from_slice(rest))],
        CH_RESIZE if version.has_resize() => resize
            .push(rest)
            .map_err(|e| tracing::debug!(error = %e, "bad resize message"))?
            .into_iter()
            .map(Input::Resize)
            .collect(),
        CH_CLOSE if version.has_close() && rest.first() == Some(&CH_STDIN) => {
            vec![Input::CloseStdin]
        }
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_objects_may_be_split_and_joined() {
        let mut p = ResizeParser::default();
        assert!(p.push(br#"{"Width":80,"#).unwrap().is_empty());
        let sizes = p
            .push(b"\"Height\":24}\n{\"Width\":100,\"Height\":40}\n")
            .unwrap();
        assert_eq!(
            sizes
                .iter()
                .map(|s| (s.width, s.height))
                .collect::<Vec<_>>(),
            vec![(80, 24), (100, 40)]
        );
        assert!(p.push(br#"{"Width":"wide","Height":1}"#).is_err());
        let mut p = ResizeParser::default();
        assert!(p.push(&[b' '; MAX_RESIZE_BUFFER + 1]).is_err());
    }

    #[test]
    fn websocket_channels_decode() {
        let v5 = Version(5);
        let v4 = Version(4);
        let mut r = ResizeParser::default();
        let m = |b: &[u8]| Ok(Message::Binary(b.to_vec().into()));
        assert!(matches!(
            decode_ws(m(b"\x00hi"), v5, &mut r).unwrap().as_slice(),
            [Input::Stdin(b)] if b.as_ref() == b"hi"
        ));
        assert!(matches!(
            decode_ws(m(b"\xff\x00"), v5, &mut r).unwrap().as_slice(),
            [Input::CloseStdin]
        ));
        // v4 has no close channel.
        assert!(decode_ws(m(b"\xff\x00"), v4, &mut r).unwrap().is_empty());
        assert!(matches!(
            decode_ws(m(b"\x04{\"Width\":3,\"Height\":2}"), v4, &mut r).unwrap().as_slice(),
            [Input::Resize(s)] if (s.width, s.height) == (3, 2)
        ));
        assert!(decode_ws(Ok(Message::Text("0aGk=".into())), v4, &mut r).is_err());
        assert!(decode_ws(Ok(Message::Close(None)), v4, &mut r).is_err());
    }

    #[test]
    fn versions() {
        assert!(Version::of("v5.channel.k8s.io").has_close());
        assert!(Version::of("v4.channel.k8s.io").json_status());
        assert!(!Version::of("v3.channel.k8s.io").json_status());
        assert!(Version::of("v3.channel.k8s.io").has_resize());
        assert!(!Version::of("channel.k8s.io").has_resize());
    }
}
