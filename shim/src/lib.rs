//! vmpod-shim as a library: the pieces the binary wires together, public for
//! its integration tests. `vmpod bench` gets the shim's QEMU and helper
//! command lines from `vmpod-shim --print-commands` (`commands.rs`), not by
//! linking this.

pub mod agent;
pub mod backends;
pub mod commands;
pub mod confine;
pub mod console;
pub mod container;
pub mod events;
pub mod hypervisor;
pub mod logs;
pub mod pod_dir;
pub mod port_forward;
pub mod process;
pub mod relay;
pub mod service;
pub mod share;
pub mod stream;
pub mod tap;
pub mod vm;
pub mod vm_json;
