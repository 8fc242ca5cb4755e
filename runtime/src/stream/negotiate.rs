//! Which protocol a streaming client gets, and the HTTP answers around it.
//!
//! SPDY clients (kubectl through kubelet, crictl) list the versions they
//! speak in `X-Stream-Protocol-Version` headers; WebSocket clients list them
//! in `Sec-WebSocket-Protocol`. The server picks the first one it knows in
//! the client's order. No overlap is the standard Kubernetes refusal: 403,
//! one `X-Accepted-Stream-Protocol-Versions` header per version we accept,
//! and a body saying both sides' lists, so the user sees what to upgrade.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, HeaderMap, HeaderValue, UPGRADE};
use hyper::{Response, StatusCode};

pub type Body = Full<Bytes>;

pub const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
pub const ACCEPTED_HEADER: &str = "x-accepted-stream-protocol-versions";
const WS_PROTOCOL_HEADER: &str = "sec-websocket-protocol";
const WS_KEY_HEADER: &str = "sec-websocket-key";

/// How the client asks to upgrade the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Spdy,
    WebSocket,
}

/// The upgrade the request asks for, if any we speak.
pub fn transport(headers: &HeaderMap) -> Option<Transport> {
    let upgrade = headers.get(UPGRADE)?.to_str().ok()?;
    let wants_upgrade = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !wants_upgrade {
        return None;
    }
    if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        Some(Transport::Spdy)
    } else if upgrade.eq_ignore_ascii_case("websocket") {
        Some(Transport::WebSocket)
    } else {
        None
    }
}

/// The protocols the client offers, in its order.
fn offered(headers: &HeaderMap, transport: Transport) -> Vec<String> {
    let name = match transport {
        Transport::Spdy => PROTOCOL_HEADER,
        Transport::WebSocket => WS_PROTOCOL_HEADER,
    };
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Picks the protocol: the first the client offers that is in `supported`.
/// A SPDY client that offers none gets `legacy` (Kubernetes' clients
/// before negotiation existed), when there is one.
pub fn choose(
    headers: &HeaderMap,
    transport: Transport,
    supported: &[&'static str],
    legacy: Option<&'static str>,
) -> Result<&'static str, Box<Response<Body>>> {
    let offered = offered(headers, transport);
    if offered.is_empty()
        && let Some(legacy) = legacy
    {
        return Ok(legacy);
    }
    offered
        .iter()
        .find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
        .ok_or_else(|| Box::new(refusal(&offered, supported)))
}

fn refusal(offered: &[String], supported: &[&'static str]) -> Response<Body> {
    let text = format!(
        "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {supported:?}\n"
    );
    let mut resp = plain(StatusCode::FORBIDDEN, text);
    for s in supported {
        resp.headers_mut()
            .append(ACCEPTED_HEADER, HeaderValue::from_static(s));
    }
    resp
}

/// A short text answer.
pub fn plain(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(text.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The 101 that hands the connection over to `protocol`.
pub fn switching(
    headers: &HeaderMap,
    transport: Transport,
    protocol: &'static str,
) -> Result<Response<Body>, Box<Response<Body>>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    match transport {
        Transport::Spdy => {
            h.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            h.insert(PROTOCOL_HEADER, HeaderValue::from_static(protocol));
        }
        Transport::WebSocket => {
            let key = headers.get(WS_KEY_HEADER).ok_or_else(|| {
                Box::new(plain(
                    StatusCode::BAD_REQUEST,
                    "Sec-WebSocket-Key: missing\n",
                ))
            })?;
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            h.insert(UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(
                "sec-websocket-accept",
                HeaderValue::from_str(&accept).map_err(|_| {
                    Box::new(plain(StatusCode::INTERNAL_SERVER_ERROR, "bad accept key\n"))
                })?,
            );
            if !protocol.is_empty() {
                h.insert(WS_PROTOCOL_HEADER, HeaderValue::from_static(protocol));
            }
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn transport_needs_connection_upgrade() {
        let spdy = headers(&[("connection", "Upgrade"), ("upgrade", "SPDY/3.1")]);
        assert_eq!(transport(&spdy), Some(Transport::Spdy));
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(transport(&ws), Some(Transport::WebSocket));
        assert_eq!(transport(&headers(&[("upgrade", "websocket")])), None);
        let h2 = headers(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        assert_eq!(transport(&h2), None);
    }

    #[test]
    fn first_offered_supported_protocol_wins() {
        let h = headers(&[
            (PROTOCOL_HEADER, "v9.channel.k8s.io"),
            (PROTOCOL_HEADER, "v4.channel.k8s.io"),
            (PROTOCOL_HEADER, "v3.channel.k8s.io"),
        ]);
        let supported = ["v3.channel.k8s.io", "v4.channel.k8s.io"];
        assert_eq!(
            choose(&h, Transport::Spdy, &supported, None).unwrap(),
            "v4.channel.k8s.io"
        );
        let ws = headers(&[(WS_PROTOCOL_HEADER, "v5.channel.k8s.io, v4.channel.k8s.io")]);
        assert_eq!(
            choose(&ws, Transport::WebSocket, &["v4.channel.k8s.io"], None).unwrap(),
            "v4.channel.k8s.io"
        );
    }

    #[test]
    fn no_overlap_is_a_403_listing_what_is_accepted() {
        let h = headers(&[(PROTOCOL_HEADER, "v99.channel.k8s.io")]);
        let resp = choose(
            &h,
            Transport::Spdy,
            &["v4.channel.k8s.io", "v3.channel.k8s.io"],
            None,
        )
        .unwrap_err();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let accepted: Vec<_> = resp.headers().get_all(ACCEPTED_HEADER).iter().collect();
        assert_eq!(accepted.len(), 2);
        // Nothing offered: the legacy protocol where there is one.
        assert_eq!(
            choose(&HeaderMap::new(), Transport::Spdy, &["a"], Some("legacy")).unwrap(),
            "legacy"
        );
        assert!(choose(&HeaderMap::new(), Transport::Spdy, &["a"], None).is_err());
    }
}
