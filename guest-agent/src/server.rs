//! The `Agent` gRPC service: a thin table from each RPC to the module that
//! does it (guest facts here, SetupSandbox in `sandbox`, containers in
//! `container`, PortForward in `port_forward`).

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use vmpod_agent_proto::Agent;
use vmpod_agent_proto::v1::{
    AttachResponse, BootTimestamps, ContainerRef, ContainerStatus, CreateContainerRequest,
    EventsRequest, ExecSyncRequest, ExecSyncResponse, GuestInfoRequest, GuestInfoResponse,
    HealthRequest, HealthResponse, ListContainersRequest, ListContainersResponse, OutputChunk,
    PortForwardInput, RemoveContainerResponse, SetupSandboxRequest, SetupSandboxResponse,
    StatsRequest, StatsResponse, StdioInput, StopContainerRequest, UpdateContainerRequest,
    UpdateContainerResponse,
};

use crate::VERSION;
use crate::container::Containers;
use crate::container::events::EventStream;
use crate::container::exec_stream::ExecOutput;
use crate::port_forward::{self, PortForwardOutputStream};
use crate::sandbox::{self, SandboxSetup};
use crate::sysinfo::{self, KernelInfo};

/// Boot milestones, in CLOCK_BOOTTIME nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct BootTimes {
    pub agent_start_ns: u64,
    pub mounts_done_ns: u64,
    pub serving_ns: u64,
}

pub struct AgentService {
    boot: BootTimes,
    /// Whether this is the guest's PID 1. SetupSandbox changes machine-wide
    /// state (hostname, /etc), so it refuses to run anywhere else.
    pid1: bool,
    containers: Arc<Containers>,
}

impl AgentService {
    pub fn new(boot: BootTimes, pid1: bool, containers: Arc<Containers>) -> Self {
        Self {
            boot,
            pid1,
            containers,
        }
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn health(
        &self,
        _request: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        // The service is only reachable once guest setup has finished, so
        // answering at all means ready.
        Ok(Response::new(HealthResponse {
            ready: true,
            agent_version: VERSION.to_string(),
        }))
    }

    async fn guest_info(
        &self,
        _request: Request<GuestInfoRequest>,
    ) -> Result<Response<GuestInfoResponse>, Status> {
        let kernel = KernelInfo::current();
        let mem = sysinfo::read_meminfo().map_err(internal)?;
        let uptime = sysinfo::read_uptime().map_err(internal)?;
        Ok(Response::new(GuestInfoResponse {
            kernel_release: kernel.release,
            kernel_version: kernel.version,
            hostname: kernel.hostname,
            cpus: sysinfo::cpus(),
            memory_total_bytes: mem.total_bytes,
            memory_available_bytes: mem.available_bytes,
            uptime_seconds: uptime,
            boot: Some(BootTimestamps {
                agent_start_ns: self.boot.agent_start_ns,
                mounts_done_ns: self.boot.mounts_done_ns,
                serving_ns: self.boot.serving_ns,
            }),
            agent_version: VERSION.to_string(),
            resolv_conf: sandbox::read_optional(sandbox::RESOLV_CONF).map_err(internal)?,
            hosts: sandbox::read_optional(sandbox::HOSTS).map_err(internal)?,
            virtiofs_mounts: sandbox::virtiofs_mounts().map_err(internal)?,
            wall_clock_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        }))
    }

    async fn setup_sandbox(
        &self,
        request: Request<SetupSandboxRequest>,
    ) -> Result<Response<SetupSandboxResponse>, Status> {
        let setup = SandboxSetup::from_request(request.get_ref())
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        if !self.pid1 {
            return Err(Status::failed_precondition(
                "SetupSandbox changes the whole machine; it only runs in a guest, as PID 1",
            ));
        }
        let share_mountpoint = setup.apply().await.map_err(internal)?;
        tracing::info!(%share_mountpoint, "sandbox set up");
        Ok(Response::new(SetupSandboxResponse { share_mountpoint }))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<ContainerStatus>, Status> {
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: is required"))?;
        self.containers.create(spec).await.map(Response::new)
    }

    async fn start_container(
        &self,
        request: Request<ContainerRef>,
    ) -> Result<Response<ContainerStatus>, Status> {
        self.containers
            .start(&request.get_ref().id)
            .await
            .map(Response::new)
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<ContainerStatus>, Status> {
        let r = request.get_ref();
        self.containers
            .stop(&r.id, r.signal, Duration::from_millis(r.timeout_ms))
            .await
            .map(Response::new)
    }

    async fn remove_container(
        &self,
        request: Request<ContainerRef>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        self.containers.remove(&request.get_ref().id).await?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        _request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        Ok(Response::new(ListContainersResponse {
            containers: self.containers.list(),
        }))
    }

    async fn container_status(
        &self,
        request: Request<ContainerRef>,
    ) -> Result<Response<ContainerStatus>, Status> {
        self.containers
            .status(&request.get_ref().id)
            .map(Response::new)
    }

    type EventsStream = EventStream;

    async fn events(
        &self,
        request: Request<EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        self.containers
            .events(request.get_ref().after_seq)
            .map(Response::new)
    }

    type ReadOutputStream = ReceiverStream<Result<OutputChunk, Status>>;

    async fn read_output(
        &self,
        request: Request<ContainerRef>,
    ) -> Result<Response<Self::ReadOutputStream>, Status> {
        self.containers
            .read_output(&request.get_ref().id)
            .map(Response::new)
    }

    async fn exec_sync(
        &self,
        request: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        self.containers
            .exec_sync(request.into_inner())
            .await
            .map(Response::new)
    }

    type ExecStream = ExecOutput;

    async fn exec(
        &self,
        request: Request<Streaming<StdioInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        self.containers
            .exec(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn attach(
        &self,
        request: Request<Streaming<StdioInput>>,
    ) -> Result<Response<AttachResponse>, Status> {
        self.containers.attach(request.into_inner()).await?;
        Ok(Response::new(AttachResponse {}))
    }

    type PortForwardStream = PortForwardOutputStream;

    async fn port_forward(
        &self,
        request: Request<Streaming<PortForwardInput>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        port_forward::port_forward(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_container(
        &self,
        request: Request<UpdateContainerRequest>,
    ) -> Result<Response<UpdateContainerResponse>, Status> {
        let r = request.get_ref();
        self.containers.update(&r.id, r.resources.as_ref())?;
        Ok(Response::new(UpdateContainerResponse {}))
    }

    async fn stats(
        &self,
        request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        self.containers
            .stats(&request.get_ref().ids)
            .await
            .map(Response::new)
    }
}

fn internal(err: anyhow::Error) -> Status {
    Status::internal(format!("{err:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> AgentService {
        AgentService::new(
            BootTimes {
                agent_start_ns: 1,
                mounts_done_ns: 2,
                serving_ns: 3,
            },
            false,
            Arc::new(Containers::new(crate::container::Config::default())),
        )
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn health_is_ready() {
        let r = block_on(service().health(Request::new(HealthRequest {})))
            .unwrap()
            .into_inner();
        assert!(r.ready);
        assert_eq!(r.agent_version, VERSION);
    }

    #[test]
    fn guest_info_on_this_host() {
        let r = block_on(service().guest_info(Request::new(GuestInfoRequest {})))
            .unwrap()
            .into_inner();
        assert!(!r.kernel_release.is_empty());
        assert!(r.cpus >= 1);
        assert!(r.memory_total_bytes > 0);
        let boot = r.boot.unwrap();
        assert_eq!((boot.agent_start_ns, boot.serving_ns), (1, 3));
    }

    #[test]
    fn setup_sandbox_refused_off_guest() {
        let err = block_on(service().setup_sandbox(Request::new(SetupSandboxRequest::default())))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        let err = block_on(service().setup_sandbox(Request::new(SetupSandboxRequest {
            hostname: "bad name".into(),
            ..Default::default()
        })))
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn container_calls_name_unknown_ids() {
        let svc = service();
        let err = block_on(svc.start_container(Request::new(ContainerRef { id: "nope".into() })))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        let err = block_on(svc.remove_container(Request::new(ContainerRef { id: "nope".into() })))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        let err =
            block_on(svc.create_container(Request::new(CreateContainerRequest { spec: None })))
                .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let list = block_on(svc.list_containers(Request::new(ListContainersRequest {})))
            .unwrap()
            .into_inner();
        assert!(list.containers.is_empty());
        let err = block_on(svc.container_status(Request::new(ContainerRef { id: "nope".into() })))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(err.message(), "container nope not found");
        let err = block_on(svc.stop_container(Request::new(StopContainerRequest {
            id: "nope".into(),
            ..Default::default()
        })))
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }

    #[test]
    fn stop_container_checks_the_signal_number() {
        let svc = service();
        for signal in [-1, 65, i32::MAX] {
            let err = block_on(svc.stop_container(Request::new(StopContainerRequest {
                id: "nope".into(),
                signal,
                timeout_ms: 10,
            })))
            .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(
                err.message().starts_with(&format!("signal: {signal} ")),
                "{}",
                err.message()
            );
        }
    }

    #[test]
    fn events_refuse_a_seq_this_agent_never_sent() {
        let svc = service();
        let err = block_on(svc.events(Request::new(EventsRequest { after_seq: 3 }))).unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange);
        // From the start: open, with nothing to say yet.
        block_on(async {
            use tokio_stream::StreamExt;
            let mut stream = svc
                .events(Request::new(EventsRequest { after_seq: 0 }))
                .await
                .unwrap()
                .into_inner();
            let next = tokio::time::timeout(Duration::from_millis(10), stream.next()).await;
            assert!(next.is_err(), "{next:?}");
        });
    }
}
