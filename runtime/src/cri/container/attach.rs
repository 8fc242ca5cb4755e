//! `Attach`: a URL on the streaming server where the client joins a
//! running container's main process stdio (`kubectl attach`). Output keeps
//! going to the container's log as well; input needs a container created
//! with `stdin`, which the guest checks when the client connects.

use std::sync::Arc;

use tonic::Status;
use vmpod_cri_api::v1 as cri;

use super::exec::{Streams, stdio_target};
use crate::daemon::Daemon;
use crate::stream::Request;

pub async fn attach(
    daemon: &Arc<Daemon>,
    req: cri::AttachRequest,
) -> Result<cri::AttachResponse, Status> {
    let target = stdio_target(
        daemon,
        &req.container_id,
        None,
        Streams {
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        },
    )
    .await?;
    let url = daemon.streaming.url_for(Request::Attach(target))?;
    Ok(cri::AttachResponse { url })
}
