//! Dispatch table: each CRI method forwards to the module that implements it.

use std::future::Future;
use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use vmpod_cri_api::v1::*;
use vmpod_cri_api::{ImageService, RuntimeService};

use super::{Cri, image, runtime, sandbox, unimplemented};

type Rpc<T> = Result<Response<T>, Status>;

/// Declares methods that answer UNIMPLEMENTED, naming the CRI method.
///
/// `#[async_trait]` cannot see `async fn`s produced by a macro inside the
/// impl, so this spells out the boxed-future signature it would generate.
macro_rules! not_yet {
    ($($fn:ident($req:ty) -> $resp:ty = $name:literal;)*) => {
        $(
            fn $fn<'life0, 'async_trait>(
                &'life0 self,
                _: Request<$req>,
            ) -> Pin<Box<dyn Future<Output = Rpc<$resp>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(std::future::ready(Err(unimplemented($name))))
            }
        )*
    };
}

#[tonic::async_trait]
impl RuntimeService for Cri {
    async fn version(&self, r: Request<VersionRequest>) -> Rpc<VersionResponse> {
        runtime::version::version(r.into_inner()).map(Response::new)
    }

    async fn status(&self, r: Request<StatusRequest>) -> Rpc<StatusResponse> {
        runtime::status::status(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn runtime_config(&self, r: Request<RuntimeConfigRequest>) -> Rpc<RuntimeConfigResponse> {
        runtime::runtime_config::runtime_config(&self.daemon, r.into_inner()).map(Response::new)
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<RunPodSandboxRequest>,
    ) -> Rpc<RunPodSandboxResponse> {
        sandbox::run::run_pod_sandbox(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<StopPodSandboxRequest>,
    ) -> Rpc<StopPodSandboxResponse> {
        sandbox::stop::stop_pod_sandbox(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<RemovePodSandboxRequest>,
    ) -> Rpc<RemovePodSandboxResponse> {
        sandbox::remove::remove_pod_sandbox(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<PodSandboxStatusRequest>,
    ) -> Rpc<PodSandboxStatusResponse> {
        sandbox::status::pod_sandbox_status(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<ListPodSandboxRequest>,
    ) -> Rpc<ListPodSandboxResponse> {
        sandbox::list::list_pod_sandbox(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    type GetContainerEventsStream =
        Pin<Box<dyn Stream<Item = Result<ContainerEventResponse, Status>> + Send + 'static>>;

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Rpc<Self::GetContainerEventsStream> {
        Err(unimplemented("GetContainerEvents"))
    }

    not_yet! {
        create_container(CreateContainerRequest) -> CreateContainerResponse = "CreateContainer";
        start_container(StartContainerRequest) -> StartContainerResponse = "StartContainer";
        stop_container(StopContainerRequest) -> StopContainerResponse = "StopContainer";
        remove_container(RemoveContainerRequest) -> RemoveContainerResponse = "RemoveContainer";
        list_containers(ListContainersRequest) -> ListContainersResponse = "ListContainers";
        container_status(ContainerStatusRequest) -> ContainerStatusResponse = "ContainerStatus";
        update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse = "UpdateContainerResources";
        reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse = "ReopenContainerLog";
        exec_sync(ExecSyncRequest) -> ExecSyncResponse = "ExecSync";
        exec(ExecRequest) -> ExecResponse = "Exec";
        attach(AttachRequest) -> AttachResponse = "Attach";
        port_forward(PortForwardRequest) -> PortForwardResponse = "PortForward";
        container_stats(ContainerStatsRequest) -> ContainerStatsResponse = "ContainerStats";
        list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse = "ListContainerStats";
        pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse = "PodSandboxStats";
        list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse = "ListPodSandboxStats";
        update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse = "UpdateRuntimeConfig";
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse = "CheckpointContainer";
        list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse = "ListMetricDescriptors";
        list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse = "ListPodSandboxMetrics";
        update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest) -> UpdatePodSandboxResourcesResponse = "UpdatePodSandboxResources";
    }
}

#[tonic::async_trait]
impl ImageService for Cri {
    async fn list_images(&self, r: Request<ListImagesRequest>) -> Rpc<ListImagesResponse> {
        image::list::list_images(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn image_status(&self, r: Request<ImageStatusRequest>) -> Rpc<ImageStatusResponse> {
        image::status::image_status(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn pull_image(&self, r: Request<PullImageRequest>) -> Rpc<PullImageResponse> {
        image::pull::pull_image(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_image(&self, r: Request<RemoveImageRequest>) -> Rpc<RemoveImageResponse> {
        image::remove::remove_image(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn image_fs_info(&self, r: Request<ImageFsInfoRequest>) -> Rpc<ImageFsInfoResponse> {
        image::fs_info::image_fs_info(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }
}
