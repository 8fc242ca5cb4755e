//! `kubectl port-forward`: TCP connections into the pod, carried over
//! SPDY/3.1 or WebSocket and through the shim to the agent, which connects
//! to `localhost:<port>` inside the VM. No pod IP is involved, so
//! host-network pods work the same.
//!
//! SPDY: the client opens a pair of streams per connection, `error` and
//! `data`, both with `port` and `requestid` headers; the pair is one TCP
//! connection, and any number of them share the session. WebSocket: the
//! ports come in the URL's `port` query parameters, and port i gets
//! channels 2i (data) and 2i+1 (error), each starting with the port as two
//! little-endian bytes from us; one connection per port per session.
//!
//! A failed connection is reported on its error stream as kubectl expects
//! to print it, and the session goes on.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tonic::Streaming;
use vmpod_agent_proto::v1::{
    PortForwardInput, PortForwardOutput, port_forward_input, port_forward_output,
};

use super::idle::Idle;
use super::remotecommand::{channel_message, ws_config};
use crate::sandbox::shim;

pub const SPDY_PROTOCOLS: &[&str] = &["portforward.k8s.io"];
pub const WS_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "portforward.k8s.io"];

/// How long the second stream of a pair may take to follow the first.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the client gets to read what is left once every connection
/// of a WebSocket session ended.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
const SHIM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages in flight towards the shim, per connection.
const INPUT_QUEUE: usize = 16;
/// Connections being set up or running in one session; kubectl makes one
/// per accepted local connection, so this bounds what a client can make
/// us hold.
const MAX_CONNECTIONS: usize = 256;
/// Ports one WebSocket session may name.
pub const MAX_WS_PORTS: usize = 64;

/// What a port-forward token stands for.
#[derive(Debug, Clone)]
pub struct Target {
    pub pod_dir: PathBuf,
    /// For messages only.
    pub sandbox_id: String,
}

/// One TCP connection in the guest.
struct Connection {
    input: mpsc::Sender<PortForwardInput>,
    output: Streaming<PortForwardOutput>,
}

fn message(input: port_forward_input::Input) -> PortForwardInput {
    PortForwardInput { input: Some(input) }
}

async fn connect(target: &Target, port: u16) -> Result<Connection, String> {
    let mut client = shim::connect(&target.pod_dir, SHIM_CONNECT_TIMEOUT).await?;
    let (input, rx) = mpsc::channel(INPUT_QUEUE);
    let _ = input
        .send(message(port_forward_input::Input::Port(port.into())))
        .await;
    let mut output = client
        .port_forward(ReceiverStream::new(rx))
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    match output.message().await {
        Ok(Some(PortForwardOutput {
            output: Some(port_forward_output::Output::Connected(_)),
        })) => Ok(Connection { input, output }),
        Ok(_) => Err("the guest ended the connection before it was up".into()),
        Err(s) => Err(s.message().to_string()),
    }
}

/// kubectl prints this after "an error occurred forwarding L -> R: ".
fn failure(target: &Target, port: u16, why: &str) -> String {
    format!(
        "error forwarding port {port} to pod {}: {why}",
        target.sandbox_id
    )
}

/// The client's side of one connection: what it sends us.
trait FromClient: Send {
    /// The next bytes; `None` once the client will send no more.
    fn recv(&mut self) -> impl Future<Output = Option<Bytes>> + Send;
}

/// The client's side of one connection: where the guest's bytes go.
trait ToClient: Send {
    /// `false` once the client can take no more.
    fn send(&mut self, data: Bytes) -> impl Future<Output = bool> + Send;
}

impl FromClient for vmpod_spdy::RecvStream {
    async fn recv(&mut self) -> Option<Bytes> {
        vmpod_spdy::RecvStream::recv(self).await
    }
}

impl ToClient for vmpod_spdy::SendStream {
    async fn send(&mut self, data: Bytes) -> bool {
        vmpod_spdy::SendStream::send(self, &data).await.is_ok()
    }
}

impl FromClient for mpsc::Receiver<Bytes> {
    async fn recv(&mut self) -> Option<Bytes> {
        mpsc::Receiver::recv(self).await
    }
}

/// One WebSocket data channel, through the session's single writer.
struct WsChannel {
    out: mpsc::Sender<Message>,
    channel: u8,
}

impl ToClient for WsChannel {
    async fn send(&mut self, data: Bytes) -> bool {
        self.out
            .send(channel_message(self.channel, &data))
            .await
            .is_ok()
    }
}

/// Copies between the client's side of one connection and the guest's
/// until both directions ended. Returns the error text for the client.
async fn pump(
    conn: Connection,
    from_client: &mut impl FromClient,
    to_client: &mut impl ToClient,
    activity: &Idle,
) -> Result<(), String> {
    let Connection { input, mut output } = conn;
    let mut client_done = false;
    let mut guest_done = false;
    while !(client_done && guest_done) {
        tokio::select! {
            data = from_client.recv(), if !client_done => {
                activity.touch();
                let msg = match data {
                    Some(d) => message(port_forward_input::Input::Data(d.to_vec())),
                    None => {
                        client_done = true;
                        message(port_forward_input::Input::CloseWrite(true))
                    }
                };
                if input.send(msg).await.is_err() {
                    client_done = true;
                }
            }
            out = output.message(), if !guest_done => match out {
                Ok(Some(PortForwardOutput { output: Some(port_forward_output::Output::Data(d)) })) => {
                    activity.touch();
                    if !to_client.send(Bytes::from(d)).await {
                        return Ok(());
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => guest_done = true,
                Err(s) => return Err(s.message().to_string()),
            },
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- SPDY ---

/// One half of a connection's stream pair, waiting for the other.
struct Half {
    port: String,
    error: Option<vmpod_spdy::Stream>,
    data: Option<vmpod_spdy::Stream>,
    since: Instant,
}

/// Serves a port-forward session over an upgraded SPDY/3.1 connection.
pub async fn serve_spdy(io: Upgraded, target: Target, idle: Duration) {
    let config = vmpod_spdy::Config {
        max_streams: 2 * MAX_CONNECTIONS,
        ..Default::default()
    };
    let (session, mut incoming) = vmpod_spdy::Session::server(TokioIo::new(io), config);
    let activity = Idle::new(idle);
    let mut pending: HashMap<String, Half> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            s = incoming.accept() => {
                let Some(mut s) = s else { break };
                activity.touch();
                if s.reply(Vec::new(), false).await.is_err() {
                    break;
                }
                let kind = s.header("streamtype").unwrap_or_default().to_string();
                let port = s.header("port").unwrap_or_default().to_string();
                // Clients before requestID paired streams by id: the data
                // stream follows its error stream.
                let request = match s.header("requestid") {
                    Some(r) => r.to_string(),
                    None if kind == "error" => (s.id() + 2).to_string(),
                    None => s.id().to_string(),
                };
                if pending.len() >= MAX_CONNECTIONS && !pending.contains_key(&request) {
                    let (_, mut tx) = s.split();
                    let _ = tx.reset(3).await;
                    continue;
                }
                let half = pending.entry(request.clone()).or_insert_with(|| Half {
                    port: port.clone(),
                    error: None,
                    data: None,
                    since: Instant::now(),
                });
                let slot = match kind.as_str() {
                    "error" => &mut half.error,
                    "data" => &mut half.data,
                    other => {
                        tracing::debug!(streamtype = other, "unknown port-forward stream reset");
                        let (_, mut tx) = s.split();
                        let _ = tx.reset(1).await;
                        continue;
                    }
                };
                if slot.is_some() || half.port != port {
                    let (_, mut tx) = s.split();
                    let _ = tx.reset(1).await;
                    continue;
                }
                *slot = Some(s);
                if half.error.is_some() && half.data.is_some()
                    && let Some(Half { port, error: Some(error), data: Some(data), .. }) =
                        pending.remove(&request)
                {
                    let target = target.clone();
                    let activity = activity.clone();
                    tokio::spawn(async move {
                        spdy_connection(target, port, error, data, activity).await;
                    });
                }
            }
            _ = sweep.tick() => {
                pending.retain(|request, half| {
                    let alive = half.since.elapsed() < PAIR_TIMEOUT;
                    if !alive {
                        tracing::debug!(request, "port-forward stream pair never completed");
                    }
                    alive
                });
            }
            _ = session.closed() => break,
            _ = activity.expired() => {
                tracing::info!(pod = %target.sandbox_id, "port-forward session idle for {idle:?}; closing");
                break;
            }
        }
    }
    session.close().await;
}

async fn spdy_connection(
    target: Target,
    port: String,
    error: vmpod_spdy::Stream,
    data: vmpod_spdy::Stream,
    activity: Idle,
) {
    let (_, mut error) = error.split();
    let (mut rx, mut tx) = data.split();
    let result = match port.parse::<u16>() {
        Ok(p) if p > 0 => match connect(&target, p).await {
            Ok(conn) => {
                let r = pump(conn, &mut rx, &mut tx, &activity)
                    .await
                    .map_err(|e| failure(&target, p, &e));
                let _ = tx.finish().await;
                r
            }
            Err(e) => Err(failure(&target, p, &e)),
        },
        _ => Err(format!("invalid port {port:?}: must be 1-65535")),
    };
    if let Err(e) = result {
        tracing::debug!(pod = %target.sandbox_id, error = %e, "port-forward connection failed");
        let _ = error.send(e.as_bytes()).await;
    }
    let _ = error.finish().await;
}

// ----------------------------------------------------------- WebSocket ---

/// The `port` parameters of a WebSocket port-forward URL.
pub fn ws_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.unwrap_or_default().split('&') {
        let Some(value) = pair.strip_prefix("port=") else {
            continue;
        };
        for v in value.split(',') {
            match v.parse::<u16>() {
                Ok(p) if p > 0 => ports.push(p),
                _ => return Err(format!("port: {v:?} is not a port number (1-65535)")),
            }
        }
    }
    if ports.is_empty() {
        return Err("port: at least one is required (?port=N)".into());
    }
    if ports.len() > MAX_WS_PORTS {
        return Err(format!("port: at most {MAX_WS_PORTS} per session"));
    }
    Ok(ports)
}

/// Serves a port-forward session over an upgraded WebSocket connection.
pub async fn serve_websocket(io: Upgraded, target: Target, ports: Vec<u16>, idle: Duration) {
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(ws_config())).await;
    let (mut sink, mut source) = ws.split();
    let activity = Idle::new(idle);
    // One writer owns the socket; connections hand it messages.
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(INPUT_QUEUE);
    let mut writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut inputs: Vec<mpsc::Sender<Bytes>> = Vec::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, error_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let prefix = port.to_le_bytes();
        for ch in [data_ch, error_ch] {
            let _ = out_tx.send(channel_message(ch, &prefix)).await;
        }
        let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(INPUT_QUEUE);
        inputs.push(in_tx);
        let out = out_tx.clone();
        let target = target.clone();
        let activity = activity.clone();
        tasks.push(tokio::spawn(async move {
            let mut to_client = WsChannel {
                out: out.clone(),
                channel: data_ch,
            };
            let result = match connect(&target, port).await {
                Ok(conn) => pump(conn, &mut in_rx, &mut to_client, &activity)
                    .await
                    .map_err(|e| failure(&target, port, &e)),
                Err(e) => Err(failure(&target, port, &e)),
            };
            if let Err(e) = result {
                let _ = out.send(channel_message(error_ch, e.as_bytes())).await;
            }
        }));
    }
    drop(out_tx);
    let all_done = futures_util::future::join_all(tasks);
    tokio::pin!(all_done);
    let all_ended = loop {
        tokio::select! {
            m = source.next() => {
                activity.touch();
                let data = match m {
                    Some(Ok(Message::Binary(d))) => d,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    _ => break false,
                };
                let Some((&ch, rest)) = data.split_first() else { continue };
                // Only data channels carry input; errors are ours to write.
                if ch % 2 == 0
                    && let Some(tx) = inputs.get(usize::from(ch / 2))
                    && !rest.is_empty()
                {
                    let _ = tx.send(Bytes::copy_from_slice(rest)).await;
                }
            }
            _ = &mut all_done => break true,
            _ = activity.expired() => break false,
        }
    };
    drop(inputs);
    if all_ended {
        // Every connection ended and dropped its sender: the writer sends
        // what they left (an error message, the last data) and closes.
        let _ = tokio::time::timeout(CLOSE_GRACE, &mut writer).await;
    }
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_ports_come_from_the_query() {
        assert_eq!(ws_ports(Some("port=80&port=443")).unwrap(), vec![80, 443]);
        assert_eq!(ws_ports(Some("port=80,81")).unwrap(), vec![80, 81]);
        assert!(ws_ports(Some("port=0")).unwrap_err().contains("\"0\""));
        assert!(ws_ports(Some("port=http")).is_err());
        assert!(ws_ports(None).unwrap_err().contains("at least one"));
        let many = vec!["port=1"; MAX_WS_PORTS + 1].join("&");
        assert!(ws_ports(Some(&many)).is_err());
    }
}
