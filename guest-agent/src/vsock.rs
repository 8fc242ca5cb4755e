//! The vsock listener, as a connection stream for tonic.
//!
//! tokio-vsock's `VsockStream` implements tonic 0.14's `Connected` (feature
//! `tonic014`). Accepting happens in a task of its own rather than in
//! tonic's accept loop, so that a failing `accept` (e.g. out of file
//! descriptors) is logged and retried after a pause instead of ending the
//! server or spinning.

use std::io;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_vsock::{VMADDR_CID_ANY, VsockAddr, VsockListener, VsockStream};
use tracing::{debug, warn};

const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds `port` on every CID of this guest. Must run inside the runtime.
pub fn listen(port: u32) -> Result<ReceiverStream<io::Result<VsockStream>>> {
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))
        .with_context(|| format!("cannot listen on vsock port {port}"))?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(accept_loop(listener, tx));
    Ok(ReceiverStream::new(rx))
}

async fn accept_loop(listener: VsockListener, tx: mpsc::Sender<io::Result<VsockStream>>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                debug!(%peer, "vsock connection accepted");
                if tx.send(Ok(stream)).await.is_err() {
                    // The server is gone (shutting down).
                    return;
                }
            }
            Err(err) => {
                warn!("vsock accept failed: {err}; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
