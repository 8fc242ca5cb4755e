//! vmpod's built-in VMM: a KVM microVM run by threads inside the calling
//! process (an embedder such as vmpod-shim's kvm backend, or the standalone
//! `vmpod-vmm` in `main.rs`, used by tests and benchmarks). It knows nothing
//! of pods, CRI or the shim: its callers hand it a kernel, devices and an
//! unprivileged identity.
//!
//! | module | what |
//! |---|---|
//! | `builder.rs` | the one place a VM is assembled: memory, VM, devices, boot, vCPUs |
//! | `memory.rs` | memfd-backed shared guest RAM, MMIO gap, guard pages, host-capacity check |
//! | `boot/` | ELF / PVH / bzImage loading, zero page + e820, page tables + GDT, MP table, the memory map |
//! | `vstate/` | VM fd (irqchip, PIT, slots, irqfd/ioeventfd), vCPUs (state, threads, kick, pause), CPUID filter |
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

pub mod boot;
pub mod builder;
pub mod devices;
pub mod memory;
pub mod privilege;
pub mod seccomp;
pub mod vstate;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

pub use boot::BootProtocol;
pub use builder::{build, build_with};
pub use seccomp::Seccomp;

use self::devices::legacy::serial::Output;
use self::devices::virtio::VirtioDevice;
use self::memory::GuestRam;
use self::vstate::vcpu::Control;
use self::vstate::vm::Vm;

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset itself through the i8042 (Linux `reboot=k`).
    Reset,
    /// KVM reported a guest power-off (PSCI/ACPI system event).
    PowerOff,
    /// The host asked the VM to stop.
    Stopped,
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault { vcpu: u8 },
    /// KVM could not emulate an instruction, or similar.
    InternalError { vcpu: u8, suberror: u32 },
    /// VM entry failed; the hardware reason is in `reason`.
    FailEntry { vcpu: u8, reason: u64 },
    /// KVM reported a guest crash.
    Crash { vcpu: u8 },
    /// An unexpected exit or a failed ioctl.
    Error { vcpu: Option<u8>, message: String },
}

impl ExitReason {
    /// Process exit code for the standalone VMM: 0 for the endings a guest
    /// asks for, distinct codes for the failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Reset | ExitReason::PowerOff | ExitReason::Stopped => 0,
            ExitReason::Error { .. } => 1,
            ExitReason::TripleFault { .. } => 2,
            ExitReason::InternalError { .. } | ExitReason::FailEntry { .. } => 3,
            ExitReason::Crash { .. } => 4,
        }
    }

    /// A short machine-readable name.
    pub fn name(&self) -> &'static str {
        match self {
            ExitReason::Reset => "reset",
            ExitReason::PowerOff => "power-off",
            ExitReason::Stopped => "stopped",
            ExitReason::TripleFault { .. } => "triple-fault",
            ExitReason::InternalError { .. } => "internal-error",
            ExitReason::FailEntry { .. } => "fail-entry",
            ExitReason::Crash { .. } => "crash",
            ExitReason::Error { .. } => "error",
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Reset => write!(f, "guest reset (i8042)"),
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Stopped => write!(f, "stopped by the host"),
            ExitReason::TripleFault { vcpu } => {
                write!(f, "triple fault on vCPU {vcpu} (KVM_EXIT_SHUTDOWN)")
            }
            ExitReason::InternalError { vcpu, suberror } => write!(
                f,
                "KVM internal error on vCPU {vcpu} (suberror {suberror}{})",
                if *suberror == 1 {
                    ": emulation failure"
                } else {
                    ""
                }
            ),
            ExitReason::FailEntry { vcpu, reason } => {
                write!(
                    f,
                    "VM entry failed on vCPU {vcpu} (hardware reason {reason:#x})"
                )
            }
            ExitReason::Crash { vcpu } => write!(f, "guest crashed on vCPU {vcpu}"),
            ExitReason::Error {
                vcpu: Some(v),
                message,
            } => write!(f, "vCPU {v}: {message}"),
            ExitReason::Error {
                vcpu: None,
                message,
            } => write!(f, "{message}"),
        }
    }
}

/// What to boot and how.
pub struct VmmConfig {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Where COM1's output goes.
    pub serial: Output,
    pub boot: BootProtocol,
    /// virtio-mmio devices, in order: device i gets the i-th MMIO page after
    /// the boot timer and IRQ 5 + i, and a `virtio_mmio.device=` entry.
    /// A disk is a [`devices::virtio::block::BlockDevice`] opened from a
    /// [`devices::virtio::block::DiskConfig`], so a missing file fails
    /// before any KVM set-up.
    /// A file system is a [`devices::virtio::fs::FsDevice`] connected to
    /// its vhost-user backend, so a daemon that is not there fails just as
    /// early.
    /// before any KVM set-up; a network card is a
    /// [`devices::virtio::net::NetDevice`] opened from a
    /// [`devices::virtio::net::NetConfig`], so a missing TAP does too.
    pub virtio: Vec<Box<dyn VirtioDevice>>,
    /// Who the VMM threads run as once the VM is built; `None` keeps the
    /// uid. Capabilities are dropped either way.
    pub user: Option<privilege::Credentials>,
}

/// A running VM. Dropping it stops the VM and joins every thread.
pub struct Vmm {
    control: Arc<Control>,
    threads: Vec<JoinHandle<()>>,
    boot_time: Arc<OnceLock<Duration>>,
    started: std::time::Instant,
    // Field order is drop order: devices (holding eventfds) and VM before
    // the memory KVM maps.
    _buses: Arc<devices::bus::Buses>,
    _vm: Vm,
    ram: GuestRam,
}

/// Pause, resume and stop from anywhere (cheap to clone).
#[derive(Clone)]
pub struct VmmHandle {
    control: Arc<Control>,
}

impl VmmHandle {
    pub fn stop(&self) {
        self.control.request_exit(ExitReason::Stopped);
    }

    /// Returns once every vCPU is parked outside KVM_RUN.
    pub fn pause(&self) {
        self.control.pause();
    }

    pub fn resume(&self) {
        self.control.resume();
    }

    pub fn is_paused(&self) -> bool {
        self.control.is_paused()
    }

    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.control.exit_reason()
    }
}

impl Vmm {
    pub fn handle(&self) -> VmmHandle {
        VmmHandle {
            control: self.control.clone(),
        }
    }

    /// Blocks until the guest ends (or `stop` is called), then joins every
    /// vCPU thread.
    pub fn wait(&mut self) -> ExitReason {
        let reason = self.control.wait_exit();
        self.join();
        reason
    }

    fn join(&mut self) {
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
    }

    /// Time from the start of `build` to the guest's boot-timer write.
    pub fn boot_time(&self) -> Option<Duration> {
        self.boot_time.get().copied()
    }

    /// When `build` started.
    pub fn started(&self) -> std::time::Instant {
        self.started
    }

    /// Guest RAM the guest or the loader touched, in bytes.
    pub fn guest_resident_bytes(&self) -> u64 {
        self.ram.resident_bytes()
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.control.request_exit(ExitReason::Stopped);
            self.join();
        }
    }
}
