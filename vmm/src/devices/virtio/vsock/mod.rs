//! virtio-vsock (virtio 1.x section 5.10), Firecracker-style "hybrid":
//! the guest sees a normal vsock device with its CID; the host side is a
//! unix socket instead of the kernel's vsock, so no `/dev/vhost-vsock` and
//! no host CID space are needed.
//!
//! - Host-initiated: connect to `uds`, write `CONNECT <port>\n`; the device
//!   asks the guest for a connection to `port` and answers `OK <hostport>\n`
//!   once the guest accepts it (the guest's RST closes the socket instead).
//!   The shim's agent channel uses exactly this (`shim/src/agent.rs`).
//! - Guest-initiated: a guest connection to host CID 2, port P becomes a
//!   unix connection to `<uds>_P`, where something on the host listens.
//!
//! The guest is untrusted, so the device never buffers more for a
//! connection than the credit it advertised (a guest that sends past it is
//! reset), bounds the number of connections and of control replies queued
//! for the guest (past that it stops reading the TX queue until the guest
//! takes its RX buffers: back-pressure, not growth), drops malformed packets
//! with a log line (capped per device), and marks itself NEEDS_RESET only
//! when the queue itself is unusable. Everything runs on one worker thread
//! ([`muxer`]), with no work on the vCPU threads beyond the activation.

mod config;
mod connection;
mod muxer;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use virtio_queue::QueueT;

pub use self::config::{HOST_CID, VsockConfig};
use self::config::{MAX_GUEST_CID, MIN_GUEST_CID};
use super::{Activation, VIRTIO_F_VERSION_1, VirtioDevice, WorkerThread, read_config_space};

/// virtio device ID of a socket device.
pub const DEVICE_ID: u32 = 19;
/// rx, tx, event; Linux posts 4 KiB RX buffers, so 256 of them keep a
/// connection streaming without waiting for the guest.
const QUEUES: [u16; 3] = [256, 256, 256];
/// Config space writes logged at warn level per device; the rest at debug.
const CONFIG_WRITES_LOGGED: u32 = 8;

/// The transport's view of the device. The listening socket is created with
/// the device, so a host client may connect before the guest's driver is
/// up (its CONNECT waits for the driver), and it outlives driver resets.
pub struct VsockDevice {
    config: VsockConfig,
    listener: Arc<UnixListener>,
    /// Every connection ends with the worker (their host sockets see EOF).
    /// The socket file stays when the device goes: it may be dropped under
    /// the VMM's seccomp filter, which allows no path operation, so whoever
    /// chose the path removes it (the shim's teardown does).
    worker: Option<WorkerThread>,
    /// Config space writes so far (the guest's mistakes, logged).
    config_writes: u32,
}

impl VsockDevice {
    /// Binds `uds`. A path that already exists is an error rather than
    /// something to remove: it may be another VM's live socket.
    pub fn new(config: VsockConfig) -> Result<Self> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&config.guest_cid) {
            bail!(
                "vsock guest CID {} is reserved or too large",
                config.guest_cid
            );
        }
        let listener = UnixListener::bind(&config.uds)
            .with_context(|| format!("binding the vsock socket {}", config.uds.display()))?;
        listener
            .set_nonblocking(true)
            .with_context(|| format!("vsock socket {}", config.uds.display()))?;
        Ok(VsockDevice {
            config,
            listener: Arc::new(listener),
            worker: None,
            config_writes: 0,
        })
    }

    pub fn uds(&self) -> &Path {
        &self.config.uds
    }
}

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUES
    }

    /// `struct virtio_vsock_config { le64 guest_cid; }`.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config.guest_cid.to_le_bytes(), offset, data);
    }

    /// The config space is read-only: a write is logged and dropped.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.config_writes = self.config_writes.saturating_add(1);
        let len = data.len();
        let what = format_args!(
            "ignored a {len}-byte write to the read-only config space at +{offset:#x}"
        );
        if self.config_writes <= CONFIG_WRITES_LOGGED {
            tracing::warn!("virtio-vsock: {what}");
        } else {
            tracing::debug!("virtio-vsock: {what}");
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<()> {
        self.worker = None;
        let Activation {
            memory,
            acked_features: _,
            queues,
            notifiers,
            interrupt,
        } = activation;
        let mut queues = queues.into_iter();
        let mut notifiers = notifiers.into_iter();
        let (Some(rx), Some(tx), Some(rx_kick), Some(tx_kick), Some(event_kick)) = (
            queues.next(),
            queues.next(),
            notifiers.next(),
            notifiers.next(),
            notifiers.next(),
        ) else {
            bail!("virtio-vsock activated without its queues");
        };
        if !rx.ready() || !tx.ready() {
            bail!("the driver did not make the RX and TX queues ready");
        }
        let (listener, config) = (self.listener.clone(), self.config.clone());
        let worker = WorkerThread::spawn("virtio-vsock", "virtio-vsock".into(), |stop| {
            let muxer = muxer::Muxer::new(muxer::Parts {
                memory,
                rx,
                tx,
                kicks: [rx_kick, tx_kick, event_kick],
                stop,
                interrupt,
                listener,
                config,
            })?;
            Ok(move || muxer.run())
        })?;
        self.worker = Some(worker);
        Ok(())
    }

    /// Every connection ends with the worker (their host sockets see EOF);
    /// the listening socket stays for the next activation.
    fn reset(&mut self) {
        self.worker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_is_the_guest_cid() {
        let dir = tempfile::tempdir().unwrap();
        let mut dev = VsockDevice::new(VsockConfig {
            guest_cid: 0x0102_0304,
            uds: dir.path().join("v.sock"),
        })
        .unwrap();
        let mut b = [0xffu8; 12];
        dev.read_config(0, &mut b);
        assert_eq!(b, [4, 3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Writes change nothing, at any offset and size, however many.
        for i in 0..2 * CONFIG_WRITES_LOGGED as u64 {
            dev.write_config(i % 12, &[0xaa; 4][..(i % 4 + 1) as usize]);
        }
        dev.write_config(u64::MAX, &[1; 8]);
        let mut b = [0xffu8; 8];
        dev.read_config(0, &mut b);
        assert_eq!(b, [4, 3, 2, 1, 0, 0, 0, 0]);
        // A second device on the same path is refused, naming it.
        let again = VsockDevice::new(dev.config.clone()).err().unwrap();
        assert!(format!("{again:#}").contains("v.sock"), "{again:#}");
        assert!(dev.uds().exists());
    }
}
