//! virtio-net on a TAP (virtio 1.x section 5.1): one receive and one
//! transmit queue, served by one worker thread per activated device
//! ([`worker`]), frames crossing to and from the host through a TAP
//! ([`tap`]) opened by name or handed over as an fd.
//!
//! Offered: `VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC`, nothing else. No
//! checksum or segmentation offloads: every frame is whole and checksummed
//! in both directions, so the 12-byte header carries nothing but
//! `num_buffers = 1` on receive and is ignored (zeroed) on transmit. The
//! config space is the MAC; with STATUS not offered the link is up.
//!
//! Guest-triggered log lines are capped per device, like the transport's.

pub mod tap;
mod worker;

use std::fmt;
use std::os::fd::RawFd;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Result, bail};
use virtio_queue::QueueT;

use self::tap::Tap;
/// The frame limit the worker enforces, part of the device's contract.
pub use self::worker::MAX_FRAME;
use self::worker::Worker;
use super::{Activation, VIRTIO_F_VERSION_1, VirtioDevice, WorkerThread, read_config_space};

/// virtio device ID of a network card.
pub const DEVICE_ID: u32 = 1;
/// The device has a MAC address in its config space.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Receive queue, transmit queue.
const QUEUES: [u16; 2] = [256, 256];

/// An Ethernet address, written `02:00:00:aa:bb:01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// A random locally administered unicast address, for a device given
    /// none.
    pub fn random() -> MacAddress {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS; mixing in the time and a
        // counter keeps two devices of one process apart.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let bits = h.finish().to_le_bytes();
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&bits[..6]);
        // Locally administered (bit 1), unicast (bit 0 clear).
        mac[0] = (mac[0] & 0xfc) | 0x02;
        MacAddress(mac)
    }
}

impl FromStr for MacAddress {
    type Err = String;

    /// Six two-digit hex groups separated by `:`; a NIC's own address
    /// cannot be multicast or all zeroes.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut mac = [0u8; 6];
        let mut groups = s.split(':');
        for byte in &mut mac {
            let group = groups.next().unwrap_or("");
            if group.len() != 2 {
                return Err(format!(
                    "MAC address {s:?} is not six hex bytes like 02:00:00:00:00:01"
                ));
            }
            *byte = u8::from_str_radix(group, 16)
                .map_err(|_| format!("MAC address {s:?}: {group:?} is not a hex byte"))?;
        }
        if groups.next().is_some() {
            return Err(format!("MAC address {s:?} has more than six bytes"));
        }
        if mac[0] & 1 != 0 {
            return Err(format!(
                "MAC address {s} is multicast; a NIC needs a unicast one"
            ));
        }
        if mac == [0; 6] {
            return Err("MAC address 00:00:00:00:00:00 is not an address".to_owned());
        }
        Ok(MacAddress(mac))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Where a device's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// The existing TAP of this name, in the network namespace of the
    /// thread that opens it.
    Tap(String),
    /// An open TAP fd, inherited or passed (IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR); the device takes it over.
    Fd(RawFd),
}

/// A network device to attach: `vmpod-vmm --net tap=NAME[,mac=MAC]` or
/// `--net fd=N[,mac=MAC]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub backend: NetBackend,
    /// None: a random locally administered address.
    pub mac: Option<MacAddress>,
}

impl FromStr for NetConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut backend = None;
        let mut mac = None;
        for part in s.split(',') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!(
                    "{part:?} is not KEY=VALUE (expected tap=NAME or fd=N, then optionally mac=MAC)"
                ));
            };
            match key {
                "tap" | "fd" if backend.is_some() => {
                    return Err(format!("{s:?} names more than one TAP (tap= or fd=)"));
                }
                "tap" => {
                    tap::check_name(value).map_err(|e| format!("tap={value}: {e}"))?;
                    backend = Some(NetBackend::Tap(value.to_owned()));
                }
                "fd" => {
                    let fd = value
                        .parse::<RawFd>()
                        .ok()
                        .filter(|fd| *fd >= 0)
                        .ok_or_else(|| format!("fd={value}: not a file descriptor number"))?;
                    backend = Some(NetBackend::Fd(fd));
                }
                "mac" if mac.is_some() => return Err(format!("{s:?} gives mac= twice")),
                "mac" => mac = Some(value.parse()?),
                other => {
                    return Err(format!(
                        "unknown network option {other:?} in {s:?} (tap=, fd=, mac=)"
                    ));
                }
            }
        }
        let Some(backend) = backend else {
            return Err(format!("{s:?} names no TAP (tap=NAME or fd=N)"));
        };
        Ok(NetConfig { backend, mac })
    }
}

/// The virtio-net device as the transport sees it; its queues are served
/// by a [`Worker`] on its own thread between activation and reset.
pub struct NetDevice {
    tap: Arc<Tap>,
    mac: MacAddress,
    worker: Option<WorkerThread>,
}

impl NetDevice {
    /// Opens the TAP `config` names; fails, naming it, if it is missing or
    /// not a TAP, so a typo costs no KVM set-up.
    pub fn open(config: &NetConfig) -> Result<NetDevice> {
        let tap = match &config.backend {
            NetBackend::Tap(name) => Tap::open(name)?,
            // SAFETY: `--net fd=N` hands the fd over; nothing else in this
            // process owns it.
            NetBackend::Fd(fd) => unsafe { Tap::from_raw_fd(*fd)? },
        };
        Ok(NetDevice::new(tap, config.mac))
    }

    pub fn new(tap: Tap, mac: Option<MacAddress>) -> NetDevice {
        let mac = mac.unwrap_or_else(MacAddress::random);
        tracing::debug!("virtio-net {}: MAC {mac}", tap.name());
        NetDevice {
            tap: Arc::new(tap),
            mac,
            worker: None,
        }
    }

    pub fn mac(&self) -> MacAddress {
        self.mac
    }

    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUES
    }

    /// `struct virtio_net_config` up to `mac`; the rest (status, queue
    /// pairs, MTU: features not offered) reads as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.mac.0, offset, data);
    }

    /// The MAC is writable only through the legacy interface, which is not
    /// offered.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, activation: Activation) -> Result<()> {
        self.worker = None;
        let Activation {
            memory,
            acked_features: _,
            queues,
            notifiers,
            interrupt,
        } = activation;
        let Ok(queues) = <[_; 2]>::try_from(queues) else {
            bail!("virtio-net activated without its two queues");
        };
        let Ok(notifiers) = <[_; 2]>::try_from(notifiers) else {
            bail!("virtio-net activated without its two queue notifiers");
        };
        for (i, q) in queues.iter().enumerate() {
            if !q.ready() {
                bail!(
                    "the driver did not make queue {i} ({}) ready",
                    if i == 0 { "receive" } else { "transmit" }
                );
            }
        }
        let label = format!("virtio-net {}", self.tap.name());
        let tap = self.tap.clone();
        let worker = WorkerThread::spawn("virtio-net", label, |stop| {
            let worker = Worker::new(memory, queues, notifiers, stop, interrupt, tap);
            Ok(move || worker.run())
        })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }
}

#[cfg(test)]
mod tests;
