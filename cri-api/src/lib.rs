//! The Kubernetes Container Runtime Interface, `runtime.v1`.
//!
//! The proto in `proto/runtime/v1/api.proto` is wire-identical to upstream, so
//! the generated types talk to kubelet and crictl directly. Both the server
//! traits (used by `vmpod serve`) and clients (used by tests and tools) are
//! generated.

/// Generated messages and services of package `runtime.v1`.
#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

pub use v1::image_service_client::ImageServiceClient;
pub use v1::image_service_server::{ImageService, ImageServiceServer};
pub use v1::runtime_service_client::RuntimeServiceClient;
pub use v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
