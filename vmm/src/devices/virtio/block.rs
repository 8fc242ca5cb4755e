//! virtio-blk backed by a host file (virtio 1.x section 5.2), served by one
//! worker thread per activated device.
//!
//! The guest controls every byte of a request, so each value is checked
//! before it is used, and a failure is reported to the guest rather than
//! trusted or panicked on:
//!
//! - the chain itself: virtio-queue's iterator stops at the queue size (so a
//!   looped chain ends) and at a descriptor it cannot read; a chain whose last
//!   descriptor still says NEXT was therefore looped or truncated. That, a
//!   chain too short to hold a header and a status byte, a status descriptor
//!   that is not device-writable or not in guest memory, and a bad avail
//!   index leave nowhere to report the error: the device stops serving and
//!   raises DEVICE_NEEDS_RESET;
//! - everything else ends the request with a status byte: an unknown type
//!   is `UNSUPP`; a header of the wrong direction or size, data descriptors of
//!   the wrong direction, data outside guest memory, a length that is not
//!   whole sectors, sectors beyond the capacity, a write to a read-only disk
//!   and host I/O errors are `IOERR`. Nothing is read or written before the
//!   whole request has been validated.
//!
//! Guest-triggered log lines are capped per device, like the transport's.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::{
    Activation, Interrupt, VIRTIO_F_VERSION_1, VirtioDevice, WorkerThread, read_config_space,
};
use crate::memory::GuestMemoryMmap;

/// virtio device ID of a block device.
pub const DEVICE_ID: u32 = 2;
/// The device is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// The device honours FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Sectors are always 512 bytes, whatever the backing file's block size.
pub const SECTOR_SIZE: u64 = 512;
/// `struct virtio_blk_outhdr`: type, reserved, sector.
const HEADER_SIZE: u32 = 16;
/// GET_ID answers with at most this many bytes (no NUL when it is full).
const ID_BYTES: usize = 20;
/// One queue; Linux uses one per vCPU only with VIRTIO_BLK_F_MQ.
const QUEUES: [u16; 1] = [256];
/// Data moves through a bounce buffer this large, so a request of any size
/// costs a bounded amount of host memory.
const BOUNCE: usize = 64 * 1024;
/// As in the transport: guest mistakes logged at warn level per device.
const LOG_BUDGET: u32 = 32;

/// A disk to attach: `vmpod-vmm --disk FILE[,ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

impl std::str::FromStr for DiskConfig {
    type Err = String;

    /// `FILE` or `FILE,ro`; nothing else follows the comma.
    fn from_str(s: &str) -> Result<Self, String> {
        let (path, read_only) = match s.rsplit_once(',') {
            Some((path, "ro")) => (path, true),
            Some((path, "rw")) => (path, false),
            Some((_, opt)) => return Err(format!("unknown disk option {opt:?} (only \"ro\")")),
            None => (s, false),
        };
        if path.is_empty() {
            return Err("a disk needs a file".to_owned());
        }
        Ok(DiskConfig {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

/// The virtio-blk device as the transport sees it; the queue is served by
/// [`Worker`] on its own thread between activation and reset.
pub struct BlockDevice {
    file: Arc<File>,
    path: PathBuf,
    read_only: bool,
    capacity: u64,
    id: [u8; ID_BYTES],
    /// `struct virtio_blk_config` up to and including `blk_size`; the rest
    /// reads as zero.
    config: [u8; 24],
    worker: Option<WorkerThread>,
}

impl BlockDevice {
    /// Opens the disk file (close-on-exec, as std opens every file) and
    /// sizes it. A length that is not whole sectors loses its tail, with a
    /// warning, since the guest can only address whole sectors.
    pub fn open(disk: &DiskConfig) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(!disk.read_only)
            .open(&disk.path)
            .with_context(|| format!("opening disk {}", disk.path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("disk {}", disk.path.display()))?;
        if !meta.is_file() {
            bail!("disk {} is not a regular file", disk.path.display());
        }
        let len = meta.len();
        if !len.is_multiple_of(SECTOR_SIZE) {
            tracing::warn!(
                "disk {}: {len} bytes is not a multiple of {SECTOR_SIZE}; the last {} bytes are not visible to the guest",
                disk.path.display(),
                len % SECTOR_SIZE
            );
        }
        let capacity = len / SECTOR_SIZE;
        let mut config = [0u8; 24];
        config[..8].copy_from_slice(&capacity.to_le_bytes());
        Ok(BlockDevice {
            file: Arc::new(file),
            path: disk.path.clone(),
            read_only: disk.read_only,
            capacity,
            id: disk_id(&disk.path),
            config,
            worker: None,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

/// GET_ID's answer: the file name, cut to 20 bytes, so a guest can tell its
/// disks apart (`/sys/block/vda/serial`).
fn disk_id(path: &Path) -> [u8; ID_BYTES] {
    let mut id = [0u8; ID_BYTES];
    let name = path.file_name().map_or_else(
        || path.as_os_str().as_encoded_bytes(),
        |n| n.as_encoded_bytes(),
    );
    let n = name.len().min(ID_BYTES);
    id[..n].copy_from_slice(&name[..n]);
    id
}

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | ro
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config, offset, data);
    }

    /// Only `writeback` would be writable, and only with
    /// VIRTIO_BLK_F_CONFIG_WCE, which is not offered.
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
        let (Some(queue), Some(notifier)) =
            (queues.into_iter().next(), notifiers.into_iter().next())
        else {
            bail!("virtio-blk activated without its queue");
        };
        if !queue.ready() {
            bail!("the driver did not make queue 0 ready");
        }
        let name = self.path.display().to_string();
        let label = format!("virtio-blk {name}");
        let (file, read_only, capacity, id) =
            (self.file.clone(), self.read_only, self.capacity, self.id);
        let worker = WorkerThread::spawn("virtio-blk", label, |stop| {
            let worker = Worker {
                memory,
                queue,
                notifier,
                stop,
                interrupt,
                file,
                name,
                read_only,
                capacity,
                id,
                bounce: vec![0; BOUNCE],
                complaints: 0,
            };
            Ok(move || worker.run())
        })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }
}

/// Why a chain could not be answered at all.
struct Fatal(String);

/// The parts of a validated request.
struct Request {
    /// None when the header itself was unusable: the answer is IOERR.
    kind: Option<u32>,
    sector: u64,
    /// Data descriptors, header and status excluded.
    data: Vec<Descriptor>,
    status: GuestAddress,
}

/// Serves queue 0: waits for the guest's notify (or the stop signal),
/// answers every available chain, then raises the used-ring interrupt.
struct Worker {
    memory: Arc<GuestMemoryMmap>,
    queue: Queue,
    notifier: EventFd,
    stop: EventFd,
    interrupt: Arc<Interrupt>,
    file: Arc<File>,
    name: String,
    read_only: bool,
    capacity: u64,
    id: [u8; ID_BYTES],
    bounce: Vec<u8>,
    complaints: u32,
}

impl Worker {
    fn complain(&mut self, what: std::fmt::Arguments<'_>) {
        if self.complaints < LOG_BUDGET {
            self.complaints += 1;
            tracing::warn!("virtio-blk {}: {what}", self.name);
            if self.complaints == LOG_BUDGET {
                tracing::warn!(
                    "virtio-blk {}: more guest errors like these are logged at debug level only",
                    self.name
                );
            }
        } else {
            tracing::debug!("virtio-blk {}: {what}", self.name);
        }
    }

    fn run(mut self) {
        let mut broken = false;
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&self.notifier),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&self.stop),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: fds is a valid array of two pollfds for the call's
            // duration, and both fds stay open (owned by self).
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("virtio-blk {}: poll: {e}; the worker stops", self.name);
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            if fds[0].revents & libc::POLLIN != 0 {
                // Non-blocking: a spurious wakeup reads EAGAIN, harmlessly.
                let _ = self.notifier.read();
                // After NEEDS_RESET the queue is not touched again; the
                // notifier is still drained so poll does not spin.
                if !broken && let Err(Fatal(why)) = self.serve() {
                    tracing::warn!(
                        "virtio-blk {}: {why}; marking DEVICE_NEEDS_RESET",
                        self.name
                    );
                    self.interrupt.signal_needs_reset();
                    broken = true;
                }
            }
        }
    }

    /// Answers the chains the driver made available, at most twice the
    /// queue size per call: a driver that refills the ring as fast as it is
    /// served must not keep the worker from seeing the stop signal (a reset
    /// or the VM's end joins this thread). When the budget runs out the
    /// worker re-notifies itself and comes back after a look at `stop`.
    fn serve(&mut self) -> Result<(), Fatal> {
        let memory = self.memory.clone();
        let mem: &GuestMemoryMmap = &memory;
        let mut used = false;
        let mut budget = 2 * u32::from(self.queue.size());
        let result = loop {
            if budget == 0 {
                if let Err(e) = self.notifier.write(1) {
                    tracing::error!("virtio-blk {}: re-notifying itself: {e}", self.name);
                }
                break Ok(());
            }
            budget -= 1;
            let chain = match self.queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => break Err(Fatal(format!("the available ring is invalid: {e}"))),
            };
            let Some(chain) = chain else {
                break Ok(());
            };
            let head = chain.head_index();
            // The iterator yields at most queue-size descriptors, so this
            // is bounded even for a looped chain.
            let descriptors: Vec<Descriptor> = chain.collect();
            let written = match self.parse(head, &descriptors) {
                Ok(request) => {
                    let (status, written) = self.execute(&request);
                    if mem.write_obj(status, request.status).is_err() {
                        // parse checked it; only a racing unmap could fail.
                        break Err(Fatal("the status byte became unwritable".to_owned()));
                    }
                    written.saturating_add(1)
                }
                Err(e) => break Err(e),
            };
            if let Err(e) = self.queue.add_used(mem, head, written) {
                break Err(Fatal(format!("writing the used ring: {e}")));
            }
            used = true;
        };
        // Honours VRING_AVAIL_F_NO_INTERRUPT; an unreadable avail ring
        // interrupts, so the driver looks and finds out.
        if used && self.queue.needs_notification(mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
        result
    }

    /// Checks the chain's shape: header first, status byte last.
    fn parse(&mut self, head: u16, chain: &[Descriptor]) -> Result<Request, Fatal> {
        let (Some(first), Some(last)) = (chain.first(), chain.last()) else {
            return Err(Fatal("an empty or unreadable descriptor chain".to_owned()));
        };
        if last.has_next() {
            return Err(Fatal(format!(
                "descriptor chain at head {head} is looped, oversized or truncated (still chained after {} descriptors)",
                chain.len()
            )));
        }
        if chain.len() < 2 {
            return Err(Fatal(format!(
                "chain at head {head}: one descriptor has no room for both header and status"
            )));
        }
        if !last.is_write_only() || last.len() < 1 || !in_memory(&self.memory, last.addr(), 1) {
            return Err(Fatal(format!(
                "chain at head {head}: the status descriptor ({:#x}, {} bytes, {}) is not a writable byte of guest memory",
                last.addr().0,
                last.len(),
                if last.is_write_only() {
                    "device-writable"
                } else {
                    "device-readable"
                }
            )));
        }
        let mut request = Request {
            kind: None,
            sector: 0,
            data: chain[1..chain.len() - 1].to_vec(),
            status: last.addr(),
        };
        // A header we cannot read still gets an answer: IOERR.
        if first.is_write_only() || first.len() < HEADER_SIZE {
            self.complain(format_args!(
                "request header ({:#x}, {} bytes) is device-writable or shorter than {HEADER_SIZE} bytes",
                first.addr().0,
                first.len()
            ));
            return Ok(request);
        }
        let mut header = [0u8; HEADER_SIZE as usize];
        if self.memory.read_slice(&mut header, first.addr()).is_err() {
            self.complain(format_args!(
                "request header at {:#x} is outside guest memory",
                first.addr().0
            ));
            return Ok(request);
        }
        let (kind, rest) = header.split_at(4);
        request.kind = Some(u32::from_le_bytes(kind.try_into().unwrap_or_default()));
        request.sector = u64::from_le_bytes(rest[4..].try_into().unwrap_or_default());
        Ok(request)
    }

    /// Runs a request; returns its status and the bytes written into the
    /// guest's data buffers.
    fn execute(&mut self, r: &Request) -> (u8, u32) {
        let Some(kind) = r.kind else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        match kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => match self.transfer(r) {
                Ok(written) => (VIRTIO_BLK_S_OK, written),
                Err(e) => {
                    self.complain(format_args!("{e:#}"));
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            },
            VIRTIO_BLK_T_FLUSH => match self.file.sync_data() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(e) => {
                    tracing::error!("virtio-blk {}: flush: {e}", self.name);
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            },
            VIRTIO_BLK_T_GET_ID => match self.get_id(r) {
                Ok(written) => (VIRTIO_BLK_S_OK, written),
                Err(e) => {
                    self.complain(format_args!("GET_ID: {e:#}"));
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            },
            other => {
                self.complain(format_args!("request type {other} is not supported"));
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
        }
    }

    /// Checks every data descriptor of a read or write, then moves the data.
    fn transfer(&mut self, r: &Request) -> Result<u32> {
        let write = r.kind == Some(VIRTIO_BLK_T_OUT);
        if write && self.read_only {
            bail!("write to sector {} of a read-only disk", r.sector);
        }
        let mut total: u64 = 0;
        for d in &r.data {
            if d.is_write_only() == write {
                bail!(
                    "{} request with a device-{} data descriptor",
                    if write { "write" } else { "read" },
                    if write { "writable" } else { "readable" }
                );
            }
            if !in_memory(&self.memory, d.addr(), u64::from(d.len())) {
                bail!(
                    "data buffer {:#x}+{:#x} is outside guest memory",
                    d.addr().0,
                    d.len()
                );
            }
            total += u64::from(d.len());
        }
        if !total.is_multiple_of(SECTOR_SIZE) {
            bail!("request of {total} bytes is not whole {SECTOR_SIZE}-byte sectors");
        }
        let sectors = total / SECTOR_SIZE;
        if r.sector
            .checked_add(sectors)
            .is_none_or(|end| end > self.capacity)
        {
            bail!(
                "sectors {}+{sectors} lie beyond the disk's {} sectors",
                r.sector,
                self.capacity
            );
        }
        // No overflow: sector + sectors <= capacity = file length / 512.
        let mut offset = r.sector * SECTOR_SIZE;
        for d in &r.data {
            let mut done: u64 = 0;
            while done < u64::from(d.len()) {
                let n = (u64::from(d.len()) - done).min(BOUNCE as u64) as usize;
                let buf = &mut self.bounce[..n];
                let at = GuestAddress(d.addr().0 + done);
                if write {
                    self.memory
                        .read_slice(buf, at)
                        .with_context(|| format!("reading guest memory at {:#x}", at.0))?;
                    self.file
                        .write_all_at(buf, offset)
                        .with_context(|| format!("writing the disk at byte {offset}"))?;
                } else {
                    read_exact_or_zero(&self.file, buf, offset)
                        .with_context(|| format!("reading the disk at byte {offset}"))?;
                    self.memory
                        .write_slice(buf, at)
                        .with_context(|| format!("writing guest memory at {:#x}", at.0))?;
                }
                done += n as u64;
                offset += n as u64;
            }
        }
        // Bytes handed to the guest: all of a read, none of a write. Fits a
        // u32: a chain of more than 4 GiB ends virtio-queue's iterator.
        Ok(if write {
            0
        } else {
            u32::try_from(total).unwrap_or(u32::MAX)
        })
    }

    /// Writes the disk ID into the first data descriptor.
    fn get_id(&mut self, r: &Request) -> Result<u32> {
        let Some(d) = r.data.first() else {
            bail!("no buffer for the ID");
        };
        if !d.is_write_only() {
            bail!("the ID buffer is device-readable");
        }
        let n = (d.len() as usize).min(ID_BYTES);
        self.memory
            .write_slice(&self.id[..n], d.addr())
            .with_context(|| format!("ID buffer {:#x}+{n:#x}", d.addr().0))?;
        Ok(n as u32)
    }
}

/// Whether `[addr, addr + len)` is guest RAM (and does not wrap).
fn in_memory(memory: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> bool {
    let Ok(len) = usize::try_from(len) else {
        return false;
    };
    addr.0.checked_add(len as u64).is_some() && GuestMemoryBackend::check_range(memory, addr, len)
}

/// Fills `buf` from `offset`; a file that shrank under us reads as zeros
/// past its end rather than failing the request.
fn read_exact_or_zero(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::vm::new_eventfd;

    #[test]
    fn disk_specs() {
        let d: DiskConfig = "/a/b.img".parse().expect("plain");
        assert_eq!(
            d,
            DiskConfig {
                path: "/a/b.img".into(),
                read_only: false
            }
        );
        let d: DiskConfig = "/a/b,c.img,ro".parse().expect("ro");
        assert!(d.read_only);
        assert_eq!(d.path, PathBuf::from("/a/b,c.img"));
        assert!("/a,rx".parse::<DiskConfig>().is_err());
        assert!(",ro".parse::<DiskConfig>().is_err());
    }

    #[test]
    fn config_space_and_features() {
        let path = std::env::temp_dir().join(format!("vmpod-blk-unit-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 3 * 512 + 100]).expect("write");
        let dev = BlockDevice::open(&DiskConfig {
            path: path.clone(),
            read_only: true,
        })
        .expect("open");
        assert_eq!(dev.capacity(), 3, "the partial tail sector is dropped");
        let mut cap = [0u8; 8];
        dev.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 3);
        let mut far = [0xffu8; 4];
        dev.read_config(u64::MAX - 1, &mut far);
        assert_eq!(far, [0; 4], "past the end (and wrapping) reads zero");
        assert_eq!(dev.device_type(), DEVICE_ID);
        let f = dev.features();
        assert_ne!(f & VIRTIO_F_VERSION_1, 0);
        assert_ne!(f & VIRTIO_BLK_F_FLUSH, 0);
        assert_ne!(f & VIRTIO_BLK_F_RO, 0);
        let name = path.file_name().expect("name").as_encoded_bytes();
        let n = name.len().min(ID_BYTES);
        assert_eq!(&dev.id[..n], &name[..n], "GET_ID is the file name");
        drop(dev);
        let _ = std::fs::remove_file(&path);
    }

    /// A worker on a 1 MiB guest with queue 0 at fixed addresses, driven
    /// directly (no thread): the validation paths the test guests do not
    /// reach.
    struct Rig {
        worker: Worker,
        path: PathBuf,
        avail_idx: u16,
    }

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const HDR: u64 = 0x4000;
    const DATA: u64 = 0x5000;
    const STATUS: u64 = 0x6000;
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;

    impl Rig {
        fn new(name: &str, read_only: bool) -> Rig {
            let path =
                std::env::temp_dir().join(format!("vmpod-blk-rig-{name}-{}", std::process::id()));
            let image: Vec<u8> = (0..4 * 512).map(|i| (i % 253) as u8).collect();
            std::fs::write(&path, image).expect("write");
            let dev = BlockDevice::open(&DiskConfig {
                path: path.clone(),
                read_only,
            })
            .expect("open");
            let memory = Arc::new(
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory"),
            );
            let mut queue = Queue::new(16).expect("queue");
            queue.set_size(16);
            queue.set_desc_table_address(Some(DESC as u32), Some(0));
            queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
            queue.set_used_ring_address(Some(USED as u32), Some(0));
            queue.set_ready(true);
            assert!(queue.is_valid(memory.as_ref()));
            let worker = Worker {
                memory,
                queue,
                notifier: new_eventfd().expect("eventfd"),
                stop: new_eventfd().expect("eventfd"),
                interrupt: Arc::new(Interrupt::new(new_eventfd().expect("eventfd"))),
                file: dev.file.clone(),
                name: name.to_owned(),
                read_only,
                capacity: dev.capacity,
                id: dev.id,
                bounce: vec![0; BOUNCE],
                complaints: 0,
            };
            Rig {
                worker,
                path,
                avail_idx: 0,
            }
        }

        fn mem(&self) -> &GuestMemoryMmap {
            &self.worker.memory
        }

        fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let at = GuestAddress(DESC + 16 * u64::from(i));
            let m = self.mem();
            m.write_obj(addr, at).expect("addr");
            m.write_obj(len, GuestAddress(at.0 + 8)).expect("len");
            m.write_obj(flags, GuestAddress(at.0 + 12)).expect("flags");
            m.write_obj(next, GuestAddress(at.0 + 14)).expect("next");
        }

        fn header(&self, kind: u32, sector: u64) {
            self.mem().write_obj(kind, GuestAddress(HDR)).expect("type");
            self.mem()
                .write_obj(sector, GuestAddress(HDR + 8))
                .expect("sector");
            self.mem()
                .write_obj(0xffu8, GuestAddress(STATUS))
                .expect("status");
        }

        /// Header, one data buffer, status: the usual three descriptors.
        fn three(&self, kind: u32, sector: u64, data_len: u32, data_flags: u16) {
            self.header(kind, sector);
            self.desc(0, HDR, 16, NEXT, 1);
            self.desc(1, DATA, data_len, data_flags | NEXT, 2);
            self.desc(2, STATUS, 1, WRITE, 0);
        }

        /// Makes head 0 available and serves the queue; returns the status
        /// byte, or None when the device gave up (NEEDS_RESET).
        fn submit(&mut self) -> Option<u8> {
            self.post(self.avail_idx.wrapping_add(1));
            match self.worker.serve() {
                Ok(()) => Some(self.mem().read_obj(GuestAddress(STATUS)).expect("status")),
                Err(Fatal(_)) => None,
            }
        }

        fn post(&mut self, idx: u16) {
            let slot = u64::from(self.avail_idx % 16);
            self.mem()
                .write_obj(0u16, GuestAddress(AVAIL + 4 + 2 * slot))
                .expect("ring");
            self.avail_idx = idx;
            self.mem()
                .write_obj(idx, GuestAddress(AVAIL + 2))
                .expect("idx");
        }

        fn used_len(&self) -> u32 {
            let idx: u16 = self
                .mem()
                .read_obj(GuestAddress(USED + 2))
                .expect("used idx");
            let slot = u64::from(idx.wrapping_sub(1) % 16);
            self.mem()
                .read_obj(GuestAddress(USED + 4 + 8 * slot + 4))
                .expect("used len")
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    #[test]
    fn reads_writes_flush_and_id() {
        let mut rig = Rig::new("ok", false);
        rig.three(VIRTIO_BLK_T_IN, 2, 1024, WRITE);
        assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_OK));
        assert_eq!(rig.used_len(), 1025);
        let mut got = vec![0u8; 1024];
        rig.mem()
            .read_slice(&mut got, GuestAddress(DATA))
            .expect("data");
        let file = std::fs::read(&rig.path).expect("file");
        assert_eq!(got, file[1024..2048]);

        rig.mem()
            .write_slice(&[0xabu8; 512], GuestAddress(DATA))
            .expect("data");
        rig.three(VIRTIO_BLK_T_OUT, 3, 512, 0);
        assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_OK));
        assert_eq!(rig.used_len(), 1);
        let file = std::fs::read(&rig.path).expect("file");
        assert!(file[1536..].iter().all(|b| *b == 0xab));

        rig.header(VIRTIO_BLK_T_FLUSH, 0);
        rig.desc(0, HDR, 16, NEXT, 1);
        rig.desc(1, STATUS, 1, WRITE, 0);
        assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_OK));

        rig.three(VIRTIO_BLK_T_GET_ID, 0, 64, WRITE);
        assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_OK));
        assert_eq!(rig.used_len(), ID_BYTES as u32 + 1);
        let mut id = [0u8; ID_BYTES];
        rig.mem()
            .read_slice(&mut id, GuestAddress(DATA))
            .expect("id");
        assert_eq!(id, rig.worker.id);
        assert!(!rig.worker.interrupt.device_needs_reset());
        assert_ne!(
            rig.worker.interrupt.status() & super::super::INT_USED_RING,
            0
        );
    }

    #[test]
    fn bad_requests_get_a_status() {
        let mut rig = Rig::new("bad", false);
        for kind in [99, u32::MAX] {
            rig.three(kind, 0, 512, WRITE);
            assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_UNSUPP), "type {kind}");
        }
        // Wrong directions.
        rig.three(VIRTIO_BLK_T_IN, 0, 512, 0);
        assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_IOERR), "read into readable");
        rig.three(VIRTIO_BLK_T_OUT, 0, 512, WRITE);
        assert_eq!(
            rig.submit(),
            Some(VIRTIO_BLK_S_IOERR),
            "write from writable"
        );
        rig.three(VIRTIO_BLK_T_IN, 0, 512, WRITE);
        rig.desc(0, HDR, 16, NEXT | WRITE, 1);
        assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_IOERR), "writable header");
        rig.three(VIRTIO_BLK_T_IN, 0, 512, WRITE);
        rig.desc(0, HDR, 8, NEXT, 1);
        assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_IOERR), "short header");
        // Sizes and ranges.
        rig.three(VIRTIO_BLK_T_IN, 0, 100, WRITE);
        assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_IOERR), "partial sector");
        rig.three(VIRTIO_BLK_T_IN, 3, 1024, WRITE);
        assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_IOERR), "past the end");
        rig.three(VIRTIO_BLK_T_IN, u64::MAX, 512, WRITE);
        assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_IOERR), "sector overflow");
        rig.three(VIRTIO_BLK_T_IN, 0, 512, WRITE);
        rig.desc(1, (1 << 20) - 256, 512, WRITE | NEXT, 2);
        assert_eq!(
            rig.submit(),
            Some(VIRTIO_BLK_S_IOERR),
            "straddles RAM's end"
        );
        rig.three(VIRTIO_BLK_T_IN, 0, 512, WRITE);
        rig.desc(1, u64::MAX - 100, 512, WRITE | NEXT, 2);
        assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_IOERR), "wraps");
        rig.three(VIRTIO_BLK_T_IN, 0, 512, WRITE);
        rig.desc(0, 1 << 40, 16, NEXT, 1);
        assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_IOERR), "header outside RAM");
        rig.three(VIRTIO_BLK_T_GET_ID, 0, 64, 0);
        assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_IOERR), "readable ID buffer");
        // Still serving.
        rig.three(VIRTIO_BLK_T_IN, 0, 512, WRITE);
        assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_OK));
        assert!(!rig.worker.interrupt.device_needs_reset());
    }

    #[test]
    fn a_full_ring_is_served_in_one_wakeup() {
        // A full ring (16 chains, all head 0) fits the budget of twice the
        // queue size, so nothing is left over and no self-notify is queued;
        // exceeding the budget takes a driver refilling concurrently.
        let mut rig = Rig::new("full", false);
        rig.three(VIRTIO_BLK_T_IN, 0, 512, WRITE);
        for _ in 0..16 {
            let next = rig.avail_idx.wrapping_add(1);
            rig.post(next);
        }
        assert!(rig.worker.serve().is_ok());
        let used: u16 = rig.mem().read_obj(GuestAddress(USED + 2)).expect("used");
        assert_eq!(used, 16);
        assert!(
            rig.worker.notifier.read().is_err(),
            "EAGAIN: no self-notify"
        );
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let mut rig = Rig::new("ro", true);
        rig.three(VIRTIO_BLK_T_OUT, 0, 512, 0);
        assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_IOERR));
        rig.three(VIRTIO_BLK_T_IN, 0, 512, WRITE);
        assert_eq!(rig.submit(), Some(VIRTIO_BLK_S_OK));
    }

    #[test]
    fn unanswerable_chains_are_fatal() {
        type Setup = fn(&Rig);
        let cases: [(&str, Setup); 5] = [
            ("a two-descriptor loop", |r| {
                r.three(VIRTIO_BLK_T_IN, 0, 512, WRITE);
                r.desc(1, DATA, 512, WRITE | NEXT, 0);
            }),
            ("next beyond the table", |r| {
                r.three(VIRTIO_BLK_T_IN, 0, 512, WRITE);
                r.desc(1, DATA, 512, WRITE | NEXT, 200);
            }),
            ("a lone descriptor", |r| {
                r.header(VIRTIO_BLK_T_IN, 0);
                r.desc(0, HDR, 16, 0, 0);
            }),
            ("a readable status", |r| {
                r.three(VIRTIO_BLK_T_IN, 0, 512, WRITE);
                r.desc(2, STATUS, 1, 0, 0);
            }),
            ("a status outside RAM", |r| {
                r.three(VIRTIO_BLK_T_IN, 0, 512, WRITE);
                r.desc(2, 1 << 30, 1, WRITE, 0);
            }),
        ];
        for (what, setup) in cases {
            let mut rig = Rig::new("fatal", false);
            setup(&rig);
            assert_eq!(rig.submit(), None, "{what}");
        }
        // The driver claims more available chains than the queue holds.
        let mut rig = Rig::new("avail", false);
        rig.three(VIRTIO_BLK_T_IN, 0, 512, WRITE);
        rig.post(40);
        assert!(rig.worker.serve().is_err(), "avail index too far ahead");
    }

    #[test]
    fn needs_reset_reaches_the_driver_and_reset_clears_it() {
        let irq = Interrupt::new(new_eventfd().expect("eventfd"));
        irq.signal_needs_reset();
        assert!(irq.device_needs_reset());
        assert_ne!(irq.status() & super::super::INT_CONFIG_CHANGE, 0);
        irq.clear();
        assert!(!irq.device_needs_reset());
    }
}
