//! SPDY/3.1, as Kubernetes streaming speaks it.
//!
//! `kubectl exec`, `attach` and `port-forward` reach a CRI streaming server
//! over an HTTP/1.1 upgrade to SPDY/3.1, spoken on the Kubernetes side by
//! Go's moby/spdystream. No maintained Rust SPDY crate exists, so this one
//! implements the protocol from the SPDY/3 draft and its 3.1 amendment
//! (session-level flow control), with what spdystream actually does in mind.
//!
//! - [`frame`]: frames and their wire encoding, pure and synchronous.
//! - [`headers`]: header blocks and their shared zlib compression.
//! - [`session`]: a session over any tokio byte stream: streams, pings,
//!   GOAWAY, flow control.
//!
//! ```no_run
//! # async fn demo(tcp: tokio::net::TcpStream) -> Result<(), vmpod_spdy::Error> {
//! use vmpod_spdy::{Config, Session};
//!
//! let (session, mut incoming) = Session::server(tcp, Config::default());
//! while let Some(mut stream) = incoming.accept().await {
//!     let kind = stream.header("streamtype").unwrap_or("").to_owned();
//!     stream.reply(vec![], false).await?;
//!     let (mut rx, mut tx) = stream.split();
//!     tokio::spawn(async move {
//!         while let Some(chunk) = rx.recv().await {
//!             if tx.send(&chunk).await.is_err() {
//!                 break;
//!             }
//!         }
//!         let _ = tx.finish().await;
//!         let _ = kind;
//!     });
//! }
//! session.closed().await
//! # }
//! ```

pub mod frame;
pub mod headers;
pub mod session;

pub use session::{Config, Error, Incoming, RecvStream, SendStream, Session, Stream};

/// Header name/value pairs, names lowercase. A header with several values
/// travels as one value with the parts joined by NUL bytes, and is kept so.
pub type Headers = Vec<(String, String)>;
