//! The `Shim` gRPC service on `shim.sock`: a thin layer over `VmHandle`.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use vmpod_agent_proto::v1::{GuestInfoRequest, GuestInfoResponse};
use vmpod_shim_api::Shim;
use vmpod_shim_api::v1::{ShutdownRequest, ShutdownResponse, StateRequest, VmState, WatchRequest};

use crate::vm::{DEFAULT_STOP_GRACE, VmHandle};

/// Relayed agent calls must not hang a daemon request on a wedged guest.
const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Lets the Shutdown response reach the daemon before the socket goes away.
const EXIT_DELAY: Duration = Duration::from_millis(100);

pub struct ShimService {
    vm: VmHandle,
    /// Asks main to exit the shim.
    exit: mpsc::UnboundedSender<()>,
    /// Turns true when the shim is about to exit, ending Watch streams
    /// cleanly instead of with a reset connection.
    exiting: watch::Receiver<bool>,
}

impl ShimService {
    pub fn new(
        vm: VmHandle,
        exit: mpsc::UnboundedSender<()>,
        exiting: watch::Receiver<bool>,
    ) -> Self {
        ShimService { vm, exit, exiting }
    }
}

#[tonic::async_trait]
impl Shim for ShimService {
    async fn state(&self, _: Request<StateRequest>) -> Result<Response<VmState>, Status> {
        Ok(Response::new(self.vm.state()))
    }

    type WatchStream = ReceiverStream<Result<VmState, Status>>;

    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let mut states = self.vm.subscribe();
        let mut exiting = self.exiting.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let state = states.borrow_and_update().clone();
                if tx.send(Ok(state)).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = states.changed() => if changed.is_err() { return },
                    _ = exiting.wait_for(|e| *e) => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn guest_info(
        &self,
        _: Request<GuestInfoRequest>,
    ) -> Result<Response<GuestInfoResponse>, Status> {
        let Some(mut agent) = self.vm.agent() else {
            let phase = self.vm.state().phase().as_str_name();
            return Err(Status::unavailable(format!(
                "guest agent not ready (phase {phase})"
            )));
        };
        match tokio::time::timeout(AGENT_CALL_TIMEOUT, agent.guest_info(GuestInfoRequest {})).await
        {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(status)) => Err(Status::unavailable(format!(
                "agent GuestInfo: {}",
                status.message()
            ))),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "agent GuestInfo took longer than {AGENT_CALL_TIMEOUT:?}"
            ))),
        }
    }

    async fn shutdown(
        &self,
        req: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        let req = req.into_inner();
        let grace = match req.timeout_ms {
            0 => DEFAULT_STOP_GRACE,
            ms => Duration::from_millis(u64::from(ms)),
        };
        self.vm.shutdown(grace).await;
        if !req.keep_running {
            let exit = self.exit.clone();
            tokio::spawn(async move {
                tokio::time::sleep(EXIT_DELAY).await;
                let _ = exit.send(());
            });
        }
        Ok(Response::new(ShutdownResponse {}))
    }
}
