//! virtio devices over the virtio-mmio transport ([`mmio`]).
//!
//! A device implements [`VirtioDevice`]: its identity, features, config
//! space, and `activate`, which hands it the validated queues, the
//! ioeventfds the guest's QueueNotify writes signal, and the [`Interrupt`]
//! it raises when it used buffers. The device then serves its queues on its
//! own thread or event loop; the transport never touches a queue after
//! activation, so a slow device never stalls a vCPU.
//!
//! Devices: [`block`] (virtio-blk on a file), [`net`] (virtio-net on a TAP,
//! opened by name or handed over as an fd), [`fs`] (virtio-fs served by
//! virtiofsd through the vhost-user frontend in [`vhost_user`]) and
//! [`vsock`] (the hybrid vsock: a unix socket on the host side).

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod null;
pub mod vhost_user;
pub mod vsock;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemoryMmap;

/// `VIRTIO_F_VERSION_1`: the only (modern) interface we offer.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// InterruptStatus bits.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG_CHANGE: u32 = 2;

/// The device's line to the driver: the interrupt status register the
/// driver reads, the irqfd that raises the IRQ, and a NEEDS_RESET flag. The
/// flag lives here because an activated device serves its queues on its own
/// thread and never holds the transport's lock; the transport folds it into
/// the device status on the next register access.
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
    needs_reset: AtomicBool,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            irqfd,
            needs_reset: AtomicBool::new(false),
        }
    }

    /// The device found the driver's queue state unusable (a looped or
    /// truncated chain, a bad avail index): it stops serving and the driver
    /// sees DEVICE_NEEDS_RESET with a config interrupt, as virtio 1.x 2.1.2
    /// prescribes. Only a device reset clears it.
    pub fn signal_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            self.signal_config_change();
        }
    }

    /// Whether the device raised [`Self::signal_needs_reset`] since the last
    /// reset.
    pub fn device_needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The device put buffers in a used ring.
    pub fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    /// The config space changed (or the device needs a reset).
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG_CHANGE);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            tracing::warn!("virtio interrupt: writing the irqfd: {e}");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Device reset: no pending interrupt, no NEEDS_RESET.
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// Everything a device needs to start serving its queues.
pub struct Activation {
    pub memory: Arc<GuestMemoryMmap>,
    /// Features both sides agreed on.
    pub acked_features: u64,
    /// The device's queues in order; only those the driver made ready are
    /// `ready()`, each validated against guest memory.
    pub queues: Vec<Queue>,
    /// Per queue: signalled when the guest notifies it (ioeventfd).
    pub notifiers: Vec<EventFd>,
    pub interrupt: Arc<Interrupt>,
}

pub trait VirtioDevice: Send {
    /// The virtio device ID (1 net, 2 block, 19 vsock, 26 fs, ...).
    fn device_type(&self) -> u32;

    /// Offered features, `VIRTIO_F_VERSION_1` included.
    fn features(&self) -> u64;

    /// The maximum size of each queue; their number is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Reads the device-specific config space; bytes past its end read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the config space; devices ignore what they do not support.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// DRIVER_OK: start serving. An error marks the device NEEDS_RESET.
    fn activate(&mut self, activation: Activation) -> Result<()>;

    /// The driver reset the device: stop serving, drop the queues.
    fn reset(&mut self);
}

/// Reads a device's config space `config` at `offset`; bytes past its end
/// (or past `usize`) read as zero, as the transport promises the driver.
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| config.get(at).copied())
            .unwrap_or(0);
    }
}

/// A device's worker thread between activation and reset. Dropping it
/// signals the worker's stop eventfd and joins the thread: the worker holds
/// guest memory, which must not outlive the VM's mappings, so a device that
/// is reset or dropped (before the buses and the memory go) waits here.
pub struct WorkerThread {
    label: String,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl WorkerThread {
    /// Spawns `run` on a thread named `name`. `build` gets the eventfd the
    /// worker must poll and return on, and makes the worker's body.
    pub fn spawn<F, B>(name: &'static str, label: String, build: B) -> Result<WorkerThread>
    where
        F: FnOnce() + Send + 'static,
        B: FnOnce(EventFd) -> Result<F>,
    {
        let stop = crate::vstate::vm::new_eventfd()?;
        let run = build(stop.try_clone().context("duplicating the stop eventfd")?)?;
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(run)
            .with_context(|| format!("spawning the {name} worker thread"))?;
        Ok(WorkerThread {
            label,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for WorkerThread {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if let Err(e) = self.stop.write(1) {
                tracing::error!("{}: stopping the worker: {e}", self.label);
            }
            if thread.join().is_err() {
                tracing::error!("{}: the worker panicked", self.label);
            }
        }
    }
}
