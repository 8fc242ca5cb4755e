//! vmpod-shim as a library: the pieces the binary wires together, public so
//! that `vmpod bench` can boot the very same QEMU command line and helpers
//! without a shim as its raw baseline.

pub mod agent;
pub mod confine;
pub mod console;
pub mod container;
pub mod helpers;
pub mod hypervisor;
pub mod logs;
pub mod pod_dir;
pub mod process;
pub mod relay;
pub mod service;
pub mod share;
pub mod spec;
pub mod vm;
pub mod vmm;
