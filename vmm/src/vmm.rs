//! A VM once built: the [`Vmm`] that owns its threads, devices and memory,
//! and the [`VmmHandle`] that pauses, resumes and stops it from anywhere.
//! The builder ([`crate::build`]) assembles a `Vmm`; this module only runs
//! and ends one.

use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::devices::bus::Buses;
use crate::memory::GuestRam;
use crate::vstate::exit::ExitReason;
use crate::vstate::vcpu::Control;
use crate::vstate::vm::Vm;

/// A running VM. Dropping it stops the VM and joins every thread.
///
/// The builder fills in the fields; everyone else goes through the methods.
pub struct Vmm {
    pub(crate) control: Arc<Control>,
    pub(crate) threads: Vec<JoinHandle<()>>,
    pub(crate) boot_time: Arc<OnceLock<Duration>>,
    pub(crate) started: std::time::Instant,
    // Field order is drop order: devices (holding eventfds) and VM before
    // the memory KVM maps.
    pub(crate) _buses: Arc<Buses>,
    pub(crate) _vm: Vm,
    pub(crate) ram: GuestRam,
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

    /// Joins every vCPU thread; the builder also uses it to wind down a VM
    /// whose start failed part-way.
    pub(crate) fn join(&mut self) {
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
