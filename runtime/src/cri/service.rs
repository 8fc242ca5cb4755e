//! Dispatch table: each CRI method forwards to the module that implements it.

use std::future::Future;
use std::pin::Pin;

use tonic::{Request, Response, Status};
use vmpod_cri_api::v1::*;
use vmpod_cri_api::{ImageService, RuntimeService};

use super::{Cri, container, image, runtime, sandbox, unimplemented};

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

    async fn create_container(
        &self,
        r: Request<CreateContainerRequest>,
    ) -> Rpc<CreateContainerResponse> {
        container::create::create_container(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn start_container(
        &self,
        r: Request<StartContainerRequest>,
    ) -> Rpc<StartContainerResponse> {
        container::start::start_container(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn stop_container(&self, r: Request<StopContainerRequest>) -> Rpc<StopContainerResponse> {
        container::stop::stop_container(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_container(
        &self,
        r: Request<RemoveContainerRequest>,
    ) -> Rpc<RemoveContainerResponse> {
        container::remove::remove_container(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_containers(
        &self,
        r: Request<ListContainersRequest>,
    ) -> Rpc<ListContainersResponse> {
        container::list::list_containers(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn container_status(
        &self,
        r: Request<ContainerStatusRequest>,
    ) -> Rpc<ContainerStatusResponse> {
        container::status::container_status(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_container_resources(
        &self,
        r: Request<UpdateContainerResourcesRequest>,
    ) -> Rpc<UpdateContainerResourcesResponse> {
        container::update::update_container_resources(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn reopen_container_log(
        &self,
        r: Request<ReopenContainerLogRequest>,
    ) -> Rpc<ReopenContainerLogResponse> {
        container::reopen_log::reopen_container_log(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn exec(&self, r: Request<ExecRequest>) -> Rpc<ExecResponse> {
        container::exec::exec(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn attach(&self, r: Request<AttachRequest>) -> Rpc<AttachResponse> {
        container::attach::attach(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn port_forward(&self, r: Request<PortForwardRequest>) -> Rpc<PortForwardResponse> {
        sandbox::port_forward::port_forward(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn exec_sync(&self, r: Request<ExecSyncRequest>) -> Rpc<ExecSyncResponse> {
        container::exec_sync::exec_sync(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn container_stats(
        &self,
        r: Request<ContainerStatsRequest>,
    ) -> Rpc<ContainerStatsResponse> {
        container::stats::container_stats_call(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_container_stats(
        &self,
        r: Request<ListContainerStatsRequest>,
    ) -> Rpc<ListContainerStatsResponse> {
        container::stats::list_container_stats(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<PodSandboxStatsRequest>,
    ) -> Rpc<PodSandboxStatsResponse> {
        sandbox::stats::pod_sandbox_stats(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<ListPodSandboxStatsRequest>,
    ) -> Rpc<ListPodSandboxStatsResponse> {
        sandbox::stats::list_pod_sandbox_stats(&self.daemon, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<ListMetricDescriptorsRequest>,
    ) -> Rpc<ListMetricDescriptorsResponse> {
        Ok(Response::new(sandbox::metrics::list_metric_descriptors()))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<ListPodSandboxMetricsRequest>,
    ) -> Rpc<ListPodSandboxMetricsResponse> {
        sandbox::metrics::list_pod_sandbox_metrics(&self.daemon)
            .await
            .map(Response::new)
    }

    type GetContainerEventsStream = container::events::EventStream;

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Rpc<Self::GetContainerEventsStream> {
        Ok(Response::new(container::events::get_container_events(
            &self.daemon,
        )))
    }

    not_yet! {
        update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse = "UpdateRuntimeConfig";
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse = "CheckpointContainer";
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
