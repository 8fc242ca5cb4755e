//! An HTTP/1.1 reverse proxy with switchable faults, put between an image
//! client and a [`Registry`](crate::registry::Registry) to test integrity
//! checks, timeouts and mirror fallback.
//!
//! The proxy runs on its own tokio runtime, so it works from sync tests and
//! from inside `#[tokio::test]` alike; the knobs are plain methods taking
//! `&self` and take effect for the next request.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::TcpListener as StdTcpListener;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

type Body = BoxBody<Bytes, hyper::Error>;

/// A reverse proxy on 127.0.0.1:PORT in front of `upstream`. Stops on drop
/// (connections in flight, hung ones included, are dropped).
pub struct FaultyProxy {
    addr: String,
    state: Arc<State>,
    rt: Option<tokio::runtime::Runtime>,
}

struct State {
    upstream: String,
    addr: String,
    corrupt: Mutex<HashSet<String>>,
    hang: watch::Sender<bool>,
    /// 0: off.
    fail_status: AtomicU16,
    requests: AtomicUsize,
    corrupted: AtomicUsize,
}

impl FaultyProxy {
    /// Starts forwarding to `upstream_addr` ("127.0.0.1:PORT"), no faults on.
    pub fn start(upstream_addr: &str) -> FaultyProxy {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("proxy: bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("proxy: set_nonblocking");
        let addr = listener
            .local_addr()
            .expect("proxy: local_addr")
            .to_string();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("faulty-proxy")
            .enable_all()
            .build()
            .expect("proxy: build tokio runtime");
        let state = Arc::new(State {
            upstream: upstream_addr.to_string(),
            addr: addr.clone(),
            corrupt: Mutex::new(HashSet::new()),
            hang: watch::Sender::new(false),
            fail_status: AtomicU16::new(0),
            requests: AtomicUsize::new(0),
            corrupted: AtomicUsize::new(0),
        });
        let st = state.clone();
        rt.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("proxy: register listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, st.clone()));
                    // Errors here are clients going away, hung requests
                    // included; nothing to report.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultyProxy {
            addr,
            state,
            rt: Some(rt),
        }
    }

    /// "127.0.0.1:PORT" of the proxy.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Alters the body of every 200 answer to `GET /v2/<repo>/blobs/<digest>`
    /// from now on: same length, first byte bit-flipped, so a size check
    /// passes and a digest check fails.
    pub fn corrupt_blob(&self, digest: &str) {
        self.state
            .corrupt
            .lock()
            .expect("proxy state lock")
            .insert(digest.to_string());
    }

    /// Turns every fault off: no corruption, no hang (hung requests go on
    /// to the upstream), no forced status.
    pub fn heal(&self) {
        self.state.corrupt.lock().expect("proxy state lock").clear();
        self.state.fail_status.store(0, Ordering::SeqCst);
        self.hang(false);
    }

    /// While on, requests are accepted and read but not answered, holding
    /// the connection open. Turning it off lets held requests proceed.
    pub fn hang(&self, on: bool) {
        self.state.hang.send_replace(on);
    }

    /// Answers every request with `status` (e.g. 503) and an empty body,
    /// without asking the upstream. `heal()` turns it off.
    pub fn fail_all(&self, status: u16) {
        assert!(
            StatusCode::from_u16(status).is_ok() && status != 0,
            "bad status {status}"
        );
        self.state.fail_status.store(status, Ordering::SeqCst);
    }

    /// Requests received so far, whatever happened to them.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Blob bodies corrupted so far.
    pub fn corrupted(&self) -> usize {
        self.state.corrupted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Unlike a plain drop, allowed inside another runtime.
            rt.shutdown_background();
        }
    }
}

/// An address on 127.0.0.1 where nothing listens (a port that was just free),
/// for "mirror is down" tests: connecting gets ECONNREFUSED.
pub fn dead_addr() -> String {
    let l = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").to_string()
}

/// `<digest>` if `path` is `/v2/<repo>/blobs/<digest>` (not an upload).
fn blob_digest(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    let (_repo, digest) = rest.rsplit_once("/blobs/")?;
    (!digest.is_empty() && !digest.contains('/') && digest.contains(':')).then_some(digest)
}

fn plain(status: StatusCode, msg: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(msg)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    resp
}

async fn handle(req: Request<Incoming>, st: Arc<State>) -> Result<Response<Body>, Infallible> {
    st.requests.fetch_add(1, Ordering::SeqCst);

    if *st.hang.borrow() {
        let mut rx = st.hang.subscribe();
        // Returns once hang is switched off; the sender lives as long as the
        // proxy, and dropping the proxy drops this future.
        let _ = rx.wait_for(|on| !on).await;
    }
    let fail = st.fail_status.load(Ordering::SeqCst);
    if fail != 0 {
        let status = StatusCode::from_u16(fail).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return Ok(plain(status, String::new()));
    }

    let corrupt_this = req.method() == http::Method::GET
        && blob_digest(req.uri().path())
            .is_some_and(|d| st.corrupt.lock().expect("proxy state lock").contains(d));

    match forward(req, &st).await {
        Ok(resp) if corrupt_this && resp.status() == StatusCode::OK => {
            let (parts, body) = resp.into_parts();
            let bytes = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(plain(
                        StatusCode::BAD_GATEWAY,
                        format!("proxy: upstream body: {e}"),
                    ));
                }
            };
            let mut bytes = BytesMut::from(&bytes[..]);
            if let Some(first) = bytes.first_mut() {
                *first ^= 0xff;
                st.corrupted.fetch_add(1, Ordering::SeqCst);
            }
            let body = Full::new(bytes.freeze()).map_err(|e| match e {}).boxed();
            Ok(Response::from_parts(parts, body))
        }
        Ok(resp) => Ok(resp.map(BodyExt::boxed)),
        Err(msg) => Ok(plain(StatusCode::BAD_GATEWAY, msg)),
    }
}

/// Sends `req` to the upstream on a fresh connection. The Host header is
/// passed through, so URLs the registry builds from it (upload Locations)
/// point back at the proxy; absolute Locations naming the upstream are
/// rewritten to the proxy as well.
async fn forward(req: Request<Incoming>, st: &State) -> Result<Response<Incoming>, String> {
    let stream = TcpStream::connect(&st.upstream)
        .await
        .map_err(|e| format!("proxy: connect {}: {e}", st.upstream))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("proxy: handshake: {e}"))?;
    tokio::spawn(conn);

    let (mut parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    parts.uri = path_and_query
        .parse()
        .map_err(|e| format!("proxy: bad uri: {e}"))?;
    if !parts.headers.contains_key(http::header::HOST) {
        let host = HeaderValue::from_str(&st.upstream).map_err(|e| e.to_string())?;
        parts.headers.insert(http::header::HOST, host);
    }
    let mut resp = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| format!("proxy: upstream request: {e}"))?;

    let upstream_url = format!("http://{}", st.upstream);
    if let Some(loc) = resp
        .headers()
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        && let Some(rest) = loc.strip_prefix(&upstream_url)
        && let Ok(v) = HeaderValue::from_str(&format!("http://{}{rest}", st.addr))
    {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::blob_digest;

    #[test]
    fn matches_blob_paths_only() {
        assert_eq!(
            blob_digest("/v2/busybox/blobs/sha256:abc"),
            Some("sha256:abc")
        );
        assert_eq!(
            blob_digest("/v2/a/b/c/blobs/sha256:abc"),
            Some("sha256:abc")
        );
        assert_eq!(blob_digest("/v2/busybox/blobs/uploads/"), None);
        assert_eq!(blob_digest("/v2/busybox/blobs/uploads/uuid"), None);
        assert_eq!(blob_digest("/v2/busybox/manifests/latest"), None);
    }
}
