//! vmpod's built-in VMM: a KVM microVM run by threads inside the calling
//! process (an embedder such as vmpod-shim's kvm backend, or the standalone
//! `vmpod-vmm` in `main.rs`, used by tests and benchmarks). It knows nothing
//! of pods, CRI or the shim: its callers hand it a kernel, devices and an
//! unprivileged identity.
//!
//! | module | what |
//! |---|---|
//! | `config.rs` | `VmmConfig`: what to boot and how, as the embedder hands it over |
//! | `builder.rs` | the one place a VM is assembled: memory, VM, devices, boot, vCPUs |
//! | `vmm.rs` | the running `Vmm` (threads, devices, memory) and its `VmmHandle` |
//! | `memory.rs` | memfd-backed shared guest RAM, MMIO gap, guard pages, host-capacity check |
//! | `boot/` | ELF / PVH / bzImage loading, zero page + e820, page tables + GDT, MP table, the memory map |
//! | `vstate/` | VM fd (irqchip, PIT, slots, irqfd/ioeventfd), vCPUs (state, threads, kick, pause), CPUID filter, `ExitReason` |
//! | `devices/` | PIO/MMIO buses, legacy serial / i8042 / boot timer, virtio-mmio transport and device trait |
//! | `devices/virtio/` | the devices: virtio-blk on a file, virtio-net on a TAP (by name or fd, one worker thread polling TAP and queues) |
//! | `privilege.rs` | capabilities, no_new_privs and uid/gid dropped on the VMM's threads before the guest runs |
//! | `devices/virtio/fs.rs` | virtio-fs: tag and queues here, served by virtiofsd through the vhost-user frontend (`vhost_user.rs`: memory table, kick ioeventfds, call relay, bounded waits) |
//! | `seccomp.rs` | the seccomp-BPF allow-list installed on the VMM's threads before the guest runs |
//! | `main.rs` | the standalone `vmpod-vmm` binary: its command line and entry point |
//!
//! Start-up is tuned for time to the first guest instruction: guest memory
//! is mapped but not touched (MAP_NORESERVE, the loader touches only what it
//! writes), the kernel is read straight into guest memory, nothing is
//! allocated per exit, and vCPU threads have small stacks.
//!
//! Security, as far as this milestone goes: every fd the VMM creates is
//! close-on-exec (memfd, eventfds; KVM's own fds are created O_CLOEXEC by
//! the kernel), guest RAM is mapped with guard pages around each region,
//! every guest-controlled value reaching a device is range-checked, and once
//! set-up is done a seccomp allow-list (`seccomp.rs`) confines the vCPU and
//! device threads (the whole process in `vmpod-vmm`), after those threads
//! dropped every capability and, if asked, root (`privilege.rs`).
//!
//! This root only declares the modules and re-exports the embedder's API
//! (`build`, `VmmConfig`, `Vmm`, `VmmHandle`, `ExitReason`, ...): it holds no
//! items of its own, so no module has to reach up to it.

pub mod boot;
pub mod builder;
mod config;
pub mod devices;
pub mod memory;
pub mod privilege;
pub mod seccomp;
mod vmm;
pub mod vstate;

pub use boot::BootProtocol;
pub use builder::{build, build_with};
pub use config::VmmConfig;
pub use seccomp::Seccomp;
pub use vmm::{Vmm, VmmHandle};
pub use vstate::exit::ExitReason;
