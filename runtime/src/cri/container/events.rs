//! `GetContainerEvents`: kubelet's evented PLEG. Each change of a
//! container's state (see `crate::container::events`) is sent with its
//! pod's status and the statuses of all the pod's containers, read from the
//! records right after the change, as kubelet expects.

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use vmpod_cri_api::v1 as cri;

use super::status::statuses_of;
use crate::container::events::{Change, ChangeKind};
use crate::cri::sandbox::status::cri_sandbox_status;
use crate::daemon::Daemon;

/// Responses queued for a slow client before the stream ends; kubelet
/// reconnects and relists.
const QUEUE: usize = 256;

pub type EventStream = ReceiverStream<Result<cri::ContainerEventResponse, Status>>;

pub fn get_container_events(daemon: &Arc<Daemon>) -> EventStream {
    let mut changes = daemon.containers.events.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    let daemon = daemon.clone();
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                c = changes.recv() => match c {
                    Some(c) => c,
                    None => return,
                },
                () = tx.closed() => return,
            };
            let response = response(&daemon, change);
            if tx.send(response).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

fn response(daemon: &Daemon, change: Change) -> Result<cri::ContainerEventResponse, Status> {
    let sandbox = daemon
        .store
        .get_sandbox(&change.sandbox_id)
        .map_err(crate::error::store_err)?;
    Ok(cri::ContainerEventResponse {
        container_id: change.container_id,
        container_event_type: match change.kind {
            ChangeKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
            ChangeKind::Started => cri::ContainerEventType::ContainerStartedEvent,
            ChangeKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
            ChangeKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
        }
        .into(),
        created_at: change.at_ns,
        pod_sandbox_status: sandbox.as_ref().map(cri_sandbox_status),
        containers_statuses: match &sandbox {
            Some(_) => statuses_of(daemon, &change.sandbox_id)?,
            None => Vec::new(),
        },
    })
}
