//! The `Agent` gRPC service.

use tonic::{Request, Response, Status};
use vmpod_agent_proto::Agent;
use vmpod_agent_proto::v1::{
    BootTimestamps, GuestInfoRequest, GuestInfoResponse, HealthRequest, HealthResponse,
    SetupSandboxRequest, SetupSandboxResponse,
};

use crate::VERSION;
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
}

impl AgentService {
    pub fn new(boot: BootTimes, pid1: bool) -> Self {
        Self { boot, pid1 }
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
        let share_mountpoint = tokio::task::spawn_blocking(move || setup.apply())
            .await
            .map_err(|e| Status::internal(format!("SetupSandbox task failed: {e}")))?
            .map_err(internal)?;
        tracing::info!(%share_mountpoint, "sandbox set up");
        Ok(Response::new(SetupSandboxResponse { share_mountpoint }))
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
        )
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
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
}
