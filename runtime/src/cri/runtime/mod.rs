//! Calls about the runtime itself rather than pods or containers.

pub mod runtime_config;
pub mod status;
pub mod version;
