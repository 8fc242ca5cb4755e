//! `vmpod-agent`: PID 1 of a vmpod guest, as a library.
//!
//! The binary (`main.rs`) is a thin shell over this: guest setup, the gRPC
//! server and the hidden helper modes the agent re-executes itself in to
//! start containers ([`container::helper`]). Keeping the code in a library
//! lets the integration tests drive the container registry directly, with
//! the real binary as the helper.

pub mod container;
pub mod init;
pub mod logging;
pub mod mounts;
pub mod net;
pub mod port_forward;
pub mod reaper;
pub mod sandbox;
pub mod server;
pub mod sysinfo;
pub mod vsock;

/// The agent's crate version, reported in the banner and over gRPC.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
