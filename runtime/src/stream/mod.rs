//! The streaming server behind `kubectl exec`, `attach` and `port-forward`.
//!
//! kubelet does not stream through CRI. It calls `Exec`, `Attach` or
//! `PortForward`, which validate the request, park it under a single-use
//! token ([`tokens`]) and answer with a URL on this server; kubelet then
//! proxies the client's upgraded HTTP connection to that URL. The
//! connection speaks SPDY/3.1 or WebSocket, whichever the client asks for
//! ([`negotiate`]), carrying Kubernetes' remotecommand ([`remotecommand`])
//! or portforward ([`portforward`]) protocol. Sessions reach the guest
//! through the pod's shim, never directly.
//!
//! This module knows nothing of CRI: a parked [`Request`] already names
//! the pod dir and container it needs.

mod idle;
pub mod negotiate;
pub mod portforward;
pub mod remotecommand;
pub mod status;
pub mod tokens;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::StreamingConfig;
use negotiate::{Body, Transport, plain};
use tokens::Tokens;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// What a token stands for.
#[derive(Debug, Clone)]
pub enum Request {
    Exec(remotecommand::Target),
    Attach(remotecommand::Target),
    PortForward(portforward::Target),
}

impl Request {
    fn path(&self) -> &'static str {
        match self {
            Request::Exec(_) => "exec",
            Request::Attach(_) => "attach",
            Request::PortForward(_) => "portforward",
        }
    }
}

/// The running server: where it listens and what is parked on it.
pub struct StreamServer {
    base_url: String,
    tokens: Tokens<Request>,
    idle: Duration,
}

impl StreamServer {
    /// Binds the listener and starts serving in the background.
    pub async fn start(config: &StreamingConfig) -> Result<Arc<StreamServer>> {
        let listener = TcpListener::bind(config.address.0)
            .await
            .with_context(|| format!("streaming.address {}: cannot listen", config.address.0))?;
        let addr = listener
            .local_addr()
            .context("streaming server: local address")?;
        let server = Arc::new(StreamServer {
            base_url: format!("http://{addr}"),
            tokens: Tokens::new(Duration::from_secs(config.token_ttl_secs)),
            idle: Duration::from_secs(config.idle_timeout_secs),
        });
        tracing::info!(address = %addr, "streaming server listening");
        tokio::spawn(accept_loop(listener, Arc::clone(&server)));
        Ok(server)
    }

    /// Parks `request` and returns the URL its client connects to.
    pub fn url_for(&self, request: Request) -> Result<String, tonic::Status> {
        let path = request.path();
        let token = self.tokens.insert(request).map_err(|e| match e {
            tokens::TokenError::Full => tonic::Status::resource_exhausted(e.to_string()),
            tokens::TokenError::Random(_) => tonic::Status::internal(e.to_string()),
        })?;
        Ok(format!("{}/{path}/{token}", self.base_url))
    }
}

async fn accept_loop(listener: TcpListener, server: Arc<StreamServer>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "streaming server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let server = Arc::clone(&server);
                async move { Ok::<_, Infallible>(route(&server, req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(peer = %peer, error = %e, "streaming connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// Answers one HTTP request: redeems the token, negotiates the protocol
/// and, on success, hands the upgraded connection to the session.
fn route(server: &StreamServer, req: hyper::Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST\n");
    }
    let mut parts = req.uri().path().trim_start_matches('/').splitn(2, '/');
    let (Some(kind), Some(token)) = (parts.next(), parts.next()) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    // Redeemed before anything else can fail: a token is good for one try.
    let request = match server.tokens.take(token) {
        Some(r) if r.path() == kind => r,
        _ => {
            return plain(
                StatusCode::NOT_FOUND,
                "the streaming token is invalid or expired\n",
            );
        }
    };
    let Some(transport) = negotiate::transport(req.headers()) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "this URL needs an upgrade to SPDY/3.1 or websocket\n",
        );
    };
    let (spdy, ws, legacy) = match request {
        Request::PortForward(_) => (portforward::SPDY_PROTOCOLS, portforward::WS_PROTOCOLS, None),
        _ => (
            remotecommand::SPDY_PROTOCOLS,
            remotecommand::WS_PROTOCOLS,
            Some(remotecommand::SPDY_LEGACY),
        ),
    };
    let protocol = match transport {
        Transport::Spdy => negotiate::choose(req.headers(), transport, spdy, legacy),
        Transport::WebSocket => negotiate::choose(req.headers(), transport, ws, None),
    };
    let protocol = match protocol {
        Ok(p) => p,
        Err(refusal) => return *refusal,
    };
    let ports = match (&request, transport) {
        (Request::PortForward(_), Transport::WebSocket) => {
            match portforward::ws_ports(req.uri().query()) {
                Ok(p) => p,
                Err(e) => return plain(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        _ => Vec::new(),
    };
    let response = match negotiate::switching(req.headers(), transport, protocol) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let idle = server.idle;
    tokio::spawn(async move {
        let io = match hyper::upgrade::on(req).await {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(error = %e, "streaming upgrade failed");
                return;
            }
        };
        match (request, transport) {
            (Request::Exec(t) | Request::Attach(t), Transport::Spdy) => {
                remotecommand::serve_spdy(io, protocol, t, idle).await
            }
            (Request::Exec(t) | Request::Attach(t), Transport::WebSocket) => {
                remotecommand::serve_websocket(io, protocol, t, idle).await
            }
            (Request::PortForward(t), Transport::Spdy) => {
                portforward::serve_spdy(io, t, idle).await
            }
            (Request::PortForward(t), Transport::WebSocket) => {
                portforward::serve_websocket(io, t, ports, idle).await
            }
        }
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server() -> Arc<StreamServer> {
        let config = StreamingConfig::default();
        StreamServer::start(&config).await.expect("listens")
    }

    fn exec_request() -> Request {
        Request::Exec(remotecommand::Target {
            pod_dir: "/nonexistent".into(),
            container_id: "c".into(),
            command: Some(vec!["true".into()]),
            tty: false,
            stdin: false,
            stdout: true,
            stderr: false,
        })
    }

    /// Sends `head` to the URL's host and returns the response head and the
    /// connection.
    async fn request(url: &str, head: &str) -> (String, tokio::net::TcpStream) {
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let mut tcp = tokio::net::TcpStream::connect(host).await.unwrap();
        let text = head.replace("PATH", path).replace("HOST", host);
        tcp.write_all(text.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut b).await.unwrap() == 0 {
                break;
            }
            got.push(b[0]);
        }
        (String::from_utf8_lossy(&got).into_owned(), tcp)
    }

    const SPDY_V4: &str = "POST PATH HTTP/1.1\r\nHost: HOST\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n";

    #[tokio::test]
    async fn tokens_are_single_use_and_kinds_do_not_mix() {
        let s = server().await;
        let url = s.url_for(exec_request()).unwrap();
        let (head, _) = request(&url, SPDY_V4).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let (head, _) = request(&url, SPDY_V4).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        // An exec token on the attach path is spent and refused.
        let url = s
            .url_for(exec_request())
            .unwrap()
            .replace("/exec/", "/attach/");
        let (head, _) = request(&url, SPDY_V4).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        let url = url.replace("/attach/", "/exec/");
        let (head, _) = request(&url, SPDY_V4).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    }

    #[tokio::test]
    async fn unknown_protocols_get_the_kubernetes_refusal() {
        let s = server().await;
        let url = s.url_for(exec_request()).unwrap();
        let (head, _) = request(&url, &SPDY_V4.replace("v4.channel", "v9.channel")).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("x-accepted-stream-protocol-versions: v4.channel.k8s.io"),
            "{head}"
        );
        // No upgrade at all.
        let url = s.url_for(exec_request()).unwrap();
        let (head, _) = request(&url, "GET PATH HTTP/1.1\r\nHost: HOST\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    }

    #[tokio::test]
    async fn a_malformed_frame_ends_only_its_own_session() {
        let s = server().await;
        let url = s.url_for(exec_request()).unwrap();
        let (head, mut bad) = request(&url, SPDY_V4).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // A control frame of SPDY version 2: a protocol error.
        bad.write_all(&[0x80, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1])
            .await
            .unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), bad.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the session was not closed");
        // The server goes on serving.
        let url = s.url_for(exec_request()).unwrap();
        let (head, _) = request(&url, SPDY_V4).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    }
}
