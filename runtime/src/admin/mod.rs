//! vmpod's operator API beside CRI on the same socket: a pull that streams
//! per-layer progress, which CRI's unary PullImage cannot carry.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::daemon::Daemon;
use crate::image::pull::{Credentials, LayerPhase, Progress};

/// Generated messages and the `Images` service.
#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("vmpod.admin.v1");
}

use v1::pull_event::Event;
use v1::{Done, Layer, LayerProgress, PullEvent, PullRequest, Resolved};

pub struct Admin {
    daemon: Arc<Daemon>,
}

impl Admin {
    pub fn new(daemon: Arc<Daemon>) -> Self {
        Self { daemon }
    }
}

pub fn phase_name(p: LayerPhase) -> &'static str {
    match p {
        LayerPhase::Downloading => "downloading",
        LayerPhase::Unpacking => "unpacking",
        LayerPhase::Exists => "exists",
        LayerPhase::Done => "done",
    }
}

fn event(p: Progress) -> PullEvent {
    let e = match p {
        Progress::Resolved { reference, layers } => Event::Resolved(Resolved {
            reference,
            layers: layers
                .into_iter()
                .map(|(digest, size)| Layer { digest, size })
                .collect(),
        }),
        Progress::Layer {
            digest,
            done,
            total,
            phase,
        } => Event::Layer(LayerProgress {
            digest,
            done,
            total,
            phase: phase_name(phase).into(),
        }),
    };
    PullEvent { event: Some(e) }
}

type PullStream = Pin<Box<dyn Stream<Item = Result<PullEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl v1::images_server::Images for Admin {
    type PullStream = PullStream;

    async fn pull(&self, req: Request<PullRequest>) -> Result<Response<PullStream>, Status> {
        let req = req.into_inner();
        let creds = (!req.username.is_empty()).then(|| Credentials {
            username: req.username.clone(),
            password: req.password.clone(),
            ..Default::default()
        });
        let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(64);
        let daemon = self.daemon.clone();
        tokio::spawn(async move {
            let pull = crate::image::pull(&daemon, &req.image, creds, Some(progress_tx));
            tokio::pin!(pull);
            let result = loop {
                tokio::select! {
                    r = &mut pull => break r,
                    Some(p) = progress_rx.recv() => {
                        // A client that went away must not stop the pull.
                        let _ = out_tx.send(Ok(event(p))).await;
                    }
                }
            };
            while let Ok(p) = progress_rx.try_recv() {
                let _ = out_tx.send(Ok(event(p))).await;
            }
            let last = result.map(|rec| PullEvent {
                event: Some(Event::Done(Done {
                    image_id: rec.id,
                    size: rec.size,
                })),
            });
            let _ = out_tx.send(last).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}
