//! The `Shim` gRPC service on `shim.sock`: a thin layer over `VmHandle`
//! (the VM) and `Containers` (everything about containers).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use vmpod_agent_proto::v1::{
    ContainerEvent, ContainerRef, ContainerStatus, EventsRequest, ExecSyncRequest,
    ExecSyncResponse, GuestInfoRequest, GuestInfoResponse, ListContainersRequest,
    ListContainersResponse, PortForwardInput, PortForwardOutput, RemoveContainerResponse,
    StatsRequest, StatsResponse, StdioInput, StdioOutput, UpdateContainerRequest,
    UpdateContainerResponse,
};
use vmpod_shim_api::Shim;
use vmpod_shim_api::v1::{
    CreateContainerRequest, ReopenContainerLogResponse, ShutdownRequest, ShutdownResponse,
    StateRequest, StopContainerRequest, VmState, WatchRequest,
};

use crate::container::Containers;
use crate::port_forward::port_forward;
use crate::relay::{self, AgentSource};
use crate::stream;
use crate::vm::{DEFAULT_STOP_GRACE, VmHandle};

/// Relayed agent calls must not hang a daemon request on a wedged guest.
const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Lets the Shutdown response reach the daemon before the socket goes away.
const EXIT_DELAY: Duration = Duration::from_millis(100);

pub struct ShimService {
    vm: VmHandle,
    containers: Arc<Containers>,
    /// Asks main to exit the shim.
    exit: mpsc::UnboundedSender<()>,
    /// Turns true when the shim is about to exit, ending Watch streams
    /// cleanly instead of with a reset connection.
    exiting: watch::Receiver<bool>,
}

impl ShimService {
    pub fn new(
        vm: VmHandle,
        containers: Arc<Containers>,
        exit: mpsc::UnboundedSender<()>,
        exiting: watch::Receiver<bool>,
    ) -> Self {
        ShimService {
            vm,
            containers,
            exit,
            exiting,
        }
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
        let mut agent = self.vm.client()?;
        relay::call(
            &self.vm,
            "GuestInfo",
            Some(AGENT_CALL_TIMEOUT),
            agent.guest_info(GuestInfoRequest {}),
        )
        .await
        .map(Response::new)
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

    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<ContainerStatus>, Status> {
        let r = self.containers.create(&self.vm, req.into_inner()).await;
        r.map(Response::new)
    }

    async fn start_container(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<ContainerStatus>, Status> {
        let r = self.containers.start(&self.vm, req.into_inner()).await;
        r.map(Response::new)
    }

    async fn stop_container(
        &self,
        req: Request<StopContainerRequest>,
    ) -> Result<Response<ContainerStatus>, Status> {
        let r = self.containers.stop(&self.vm, req.into_inner()).await;
        r.map(Response::new)
    }

    async fn remove_container(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let r = self.containers.remove(&self.vm, req.into_inner()).await;
        r.map(Response::new)
    }

    async fn list_containers(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let r = self.containers.list(&self.vm, req.into_inner()).await;
        r.map(Response::new)
    }

    async fn container_status(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<ContainerStatus>, Status> {
        let r = self.containers.status(&self.vm, &req.into_inner().id).await;
        r.map(Response::new)
    }

    type EventsStream = ReceiverStream<Result<ContainerEvent, Status>>;

    async fn events(
        &self,
        req: Request<EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let rx = self
            .containers
            .events()
            .subscribe(req.into_inner().after_seq)?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn exec_sync(
        &self,
        req: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let r = self.containers.exec_sync(&self.vm, req.into_inner()).await;
        r.map(Response::new)
    }

    async fn update_container(
        &self,
        req: Request<UpdateContainerRequest>,
    ) -> Result<Response<UpdateContainerResponse>, Status> {
        let r = self.containers.update(&self.vm, req.into_inner()).await;
        r.map(Response::new)
    }

    async fn stats(&self, req: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let r = self.containers.stats(&self.vm, req.into_inner()).await;
        r.map(Response::new)
    }

    async fn reopen_container_log(
        &self,
        req: Request<ContainerRef>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        let r = self.containers.reopen_log(&self.vm, req.into_inner()).await;
        r.map(Response::new)
    }

    type ExecStream = stream::Output<StdioOutput>;

    async fn exec(
        &self,
        req: Request<Streaming<StdioInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let r = self.containers.exec(&self.vm, req.into_inner()).await;
        r.map(Response::new)
    }

    type AttachStream = stream::Output<StdioOutput>;

    async fn attach(
        &self,
        req: Request<Streaming<StdioInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let r = self.containers.attach(&self.vm, req.into_inner()).await;
        r.map(Response::new)
    }

    type PortForwardStream = stream::Output<PortForwardOutput>;

    async fn port_forward(
        &self,
        req: Request<Streaming<PortForwardInput>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        port_forward(&self.vm, req.into_inner())
            .await
            .map(Response::new)
    }
}
