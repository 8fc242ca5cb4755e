//! The frontend half of vhost-user: a device whose queues another process
//! (the backend, e.g. virtiofsd) serves straight out of guest memory. The
//! `vhost` crate builds and parses the protocol messages; this module owns
//! the connection, what is negotiated, and what the VMM still has to do
//! while the backend runs the queues:
//!
//! - **memory**: guest RAM is one memfd, mapped shared (`memory.rs`), so
//!   SET_MEM_TABLE hands the backend each region's fd, file offset, guest
//!   address, size and our host address, all read from the region itself
//!   (vm-memory's `FileOffset`); ring addresses are our host addresses,
//!   which the backend translates through that table;
//! - **kicks**: the transport's ioeventfds go to the backend as the kick
//!   fds, so a QueueNotify travels from KVM to the backend with no VMM
//!   thread involved;
//! - **calls**: the backend signals one eventfd for every queue, and the
//!   [`Monitor`] thread turns that into [`Interrupt::signal_used_queue`]:
//!   the used-ring bit of InterruptStatus must be set before the IRQ, which
//!   a bare irqfd would skip;
//! - **a backend that goes wrong**: every exchange on the socket runs under
//!   a deadline that the monitor enforces by shutting the socket down (the
//!   crate's reads retry EAGAIN forever, so SO_RCVTIMEO would not bound
//!   them); a hang-up, an unsolicited message or a bad reply is logged, the
//!   connection is closed for good and the device reports NEEDS_RESET. A
//!   vhost-user backend cannot resume a connection the frontend dropped
//!   (virtiofsd exits), so later activations fail fast with the first
//!   reason.
//!
//! Not supported: the backend's request channel (BACKEND_REQ, which
//! virtio-fs uses for DAX windows), shared memory regions, inflight
//! tracking, dirty logging and migration, more than one memory table
//! update per activation.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::{Interrupt, VIRTIO_F_VERSION_1};
use crate::memory::GuestMemoryMmap;
use crate::vstate::vm::new_eventfd;

/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Feature bits that concern only the rings, which the backend serves: the
/// guest may have them whenever the backend offers them.
pub const RING_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;

/// How long the backend may take over one exchange (connection set-up,
/// an activation, a reset) before it counts as dead. The vCPU that wrote
/// DRIVER_OK or the reset waits at most this long.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A backend that is still starting may have bound its socket but not yet
/// called listen(): ECONNREFUSED is retried this long.
const CONNECT_RETRY: Duration = Duration::from_millis(500);

/// The protocol features we use when the backend offers them. REPLY_ACK:
/// every request without a reply of its own is acknowledged, so a refusal
/// is reported at the request that caused it instead of going unnoticed.
const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::REPLY_ACK;

/// A connection to a vhost-user backend, negotiated and ready to start
/// rings.
pub struct Backend {
    frontend: Frontend,
    socket: PathBuf,
    /// The socket's fd (owned by `frontend`), for the monitor's poll and
    /// shutdown. Valid as long as `frontend` lives; every monitor is joined
    /// before that.
    fd: RawFd,
    queues: usize,
    features: u64,
    protocol_features: VhostUserProtocolFeatures,
    timeout: Duration,
    /// Why the connection was given up; it is shut down then.
    broken: Option<String>,
    running: Option<Running>,
}

/// The rings the backend serves between `start` and `stop`.
struct Running {
    started: Vec<usize>,
    monitor: Monitor,
}

/// One ring as the backend is told about it.
struct Ring {
    index: usize,
    size: u16,
    next_avail: u16,
    config: VringConfigData,
}

impl Backend {
    /// Connects to the backend listening on `socket` and negotiates:
    /// SET_OWNER, GET_FEATURES (VIRTIO_F_VERSION_1 and
    /// VHOST_USER_F_PROTOCOL_FEATURES required), GET/SET_PROTOCOL_FEATURES
    /// (REPLY_ACK when offered). Fails, naming the socket, when nothing
    /// listens there or the backend does not answer within `timeout`.
    pub fn connect(socket: &Path, queues: usize, timeout: Duration) -> Result<Backend> {
        let stream = connect_stream(socket)?;
        let fd = stream.as_raw_fd();
        let mut backend = Backend {
            frontend: Frontend::from_stream(stream, queues as u64),
            socket: socket.to_owned(),
            fd,
            queues,
            features: 0,
            protocol_features: VhostUserProtocolFeatures::empty(),
            timeout,
            broken: None,
            running: None,
        };
        let monitor = Monitor::spawn(backend.name(), fd, None, None)?;
        let negotiated = backend.exchange(&monitor, "the connection set-up", |f| {
            f.set_owner()?;
            let features = f.get_features()?;
            let protocol = if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                let offered = f.get_protocol_features()?;
                let wanted = offered & WANTED_PROTOCOL_FEATURES;
                f.set_protocol_features(wanted)?;
                wanted
            } else {
                VhostUserProtocolFeatures::empty()
            };
            Ok((features, protocol))
        });
        monitor.stop();
        let (features, protocol) = negotiated?;
        if features & VIRTIO_F_VERSION_1 == 0 {
            bail!(
                "vhost-user backend {}: offers features {features:#x} without VIRTIO_F_VERSION_1",
                socket.display()
            );
        }
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            bail!(
                "vhost-user backend {}: offers features {features:#x} without VHOST_USER_F_PROTOCOL_FEATURES (rings could not be enabled one by one)",
                socket.display()
            );
        }
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            backend
                .frontend
                .set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        backend.features = features;
        backend.protocol_features = protocol;
        tracing::debug!(
            "vhost-user backend {}: features {features:#x}, protocol features {:#x}",
            socket.display(),
            protocol.bits()
        );
        Ok(backend)
    }

    /// The backend's virtio features (vhost-user's own bits included).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The protocol features both sides use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn name(&self) -> String {
        format!("vhost-user backend {}", self.socket.display())
    }

    /// Hands the backend guest memory and the ready queues, and enables
    /// them: SET_FEATURES (`acked` plus VHOST_USER_F_PROTOCOL_FEATURES),
    /// SET_MEM_TABLE, then per ready queue SET_VRING_NUM / ADDR / BASE /
    /// CALL / KICK / ENABLE. `notifiers[i]` (the transport's ioeventfd) is
    /// queue i's kick fd. Runs on the vCPU thread that wrote DRIVER_OK and
    /// waits at most the timeout.
    pub fn start(
        &mut self,
        memory: &GuestMemoryMmap,
        acked: u64,
        queues: &[Queue],
        notifiers: &[EventFd],
        interrupt: Arc<Interrupt>,
    ) -> Result<()> {
        self.stop();
        if let Some(why) = &self.broken {
            bail!("{} is unusable: it {why}", self.name());
        }
        if queues.len() > self.queues || notifiers.len() < queues.len() {
            bail!(
                "{}: {} queues and {} notifiers for a device of {} queues",
                self.name(),
                queues.len(),
                notifiers.len(),
                self.queues
            );
        }
        let regions = memory_regions(memory)?;
        let rings = queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.ready())
            .map(|(index, q)| ring(memory, index, q))
            .collect::<Result<Vec<_>>>()?;
        if rings.is_empty() {
            bail!("{}: the driver made no queue ready", self.name());
        }
        let call = Arc::new(new_eventfd()?);
        let monitor = Monitor::spawn(self.name(), self.fd, Some(call.clone()), Some(interrupt))?;
        let features = acked | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let result = self.exchange(&monitor, "the activation", |f| {
            f.set_features(features)?;
            f.set_mem_table(&regions)?;
            for r in &rings {
                f.set_vring_num(r.index, r.size)?;
                f.set_vring_addr(r.index, &r.config)?;
                f.set_vring_base(r.index, r.next_avail)?;
                f.set_vring_call(r.index, &call)?;
                let kick = notifiers.get(r.index).ok_or(vhost::Error::InvalidQueue)?;
                f.set_vring_kick(r.index, kick)?;
                f.set_vring_enable(r.index, true)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            monitor.stop();
            return Err(e);
        }
        tracing::debug!(
            "{}: started queues {:?}",
            self.name(),
            rings.iter().map(|r| r.index).collect::<Vec<_>>()
        );
        self.running = Some(Running {
            started: rings.iter().map(|r| r.index).collect(),
            monitor,
        });
        Ok(())
    }

    /// Stops the rings (SET_VRING_ENABLE 0, then GET_VRING_BASE, after
    /// which the backend no longer touches them or signals) and joins the
    /// monitor: when this returns, no interrupt comes from this backend
    /// until the next `start`. Failures are logged; the connection is then
    /// given up.
    pub fn stop(&mut self) {
        let Some(Running { started, monitor }) = self.running.take() else {
            return;
        };
        // A failure the monitor saw was logged then; the rings are gone
        // with the connection.
        if self.broken.is_none()
            && let Some(failure) = monitor.failure()
        {
            self.broken = Some(failure.describe(self.timeout));
        }
        if self.broken.is_none() {
            let result = self.exchange(&monitor, "stopping the rings", |f| {
                for &index in &started {
                    f.set_vring_enable(index, false)?;
                    f.get_vring_base(index)?;
                }
                Ok(())
            });
            if let Err(e) = result {
                tracing::warn!("{e:#}");
            }
        }
        monitor.stop();
    }

    /// Runs `what` (one or more requests) with the monitor enforcing the
    /// deadline. On any failure the connection is shut down for good: after
    /// a lost or garbled reply the byte stream can no longer be trusted to
    /// be in step.
    fn exchange<T>(
        &mut self,
        monitor: &Monitor,
        what: &str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        if self.broken.is_none()
            && let Some(failure) = monitor.failure()
        {
            self.broken = Some(failure.describe(self.timeout));
        }
        if let Some(why) = &self.broken {
            bail!("{} is unusable: it {why}", self.name());
        }
        monitor.arm(self.timeout);
        let result = f(&mut self.frontend);
        monitor.disarm();
        let e = match result {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        // The monitor may not have seen a hang-up yet that ended this
        // exchange with EOF: look at the socket too.
        let failure = monitor
            .failure()
            .or_else(|| hung_up(self.fd).then_some(Failure::HungUp));
        let why = match failure {
            Some(failure) => format!("{} during {what}", failure.describe(self.timeout)),
            None => format!("failed {what}: {e}"),
        };
        self.give_up(monitor, &why);
        Err(anyhow!("{}: it {why}", self.name()))
    }

    /// Closes the connection for good: the backend sees the frontend gone
    /// (virtiofsd exits), and no later request can read a stale reply.
    fn give_up(&mut self, monitor: &Monitor, why: &str) {
        monitor.expect_hang_up();
        shutdown(self.fd);
        self.broken = Some(why.to_owned());
    }
}

impl Drop for Backend {
    /// Stops the rings and joins the monitor before the socket closes.
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects to `socket`, retrying ECONNREFUSED briefly; the error names the
/// socket.
fn connect_stream(socket: &Path) -> Result<UnixStream> {
    let deadline = Instant::now() + CONNECT_RETRY;
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "connecting to the vhost-user backend socket {} (is its daemon running?)",
                        socket.display()
                    )
                });
            }
        }
    }
}

/// Each guest RAM region as SET_MEM_TABLE describes it.
fn memory_regions(memory: &GuestMemoryMmap) -> Result<Vec<VhostUserMemoryRegionInfo>> {
    memory
        .iter()
        .map(|r| {
            VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|e| {
                anyhow!(
                    "guest memory at {:#x} cannot be shared with a vhost-user backend (it must be file-backed): {e}",
                    vm_memory::GuestMemoryRegion::start_addr(r).0
                )
            })
        })
        .collect()
}

/// Queue `index`'s ring addresses as our host addresses (the transport
/// validated them against guest memory at DRIVER_OK).
fn ring(memory: &GuestMemoryMmap, index: usize, q: &Queue) -> Result<Ring> {
    let host = |what: &str, addr: u64| -> Result<u64> {
        memory
            .get_host_address(GuestAddress(addr))
            .map(|p| p as u64)
            .map_err(|e| anyhow!("queue {index}: {what} at {addr:#x}: {e}"))
    };
    Ok(Ring {
        index,
        size: q.size(),
        next_avail: q.next_avail(),
        config: VringConfigData {
            queue_max_size: q.max_size(),
            queue_size: q.size(),
            flags: 0,
            desc_table_addr: host("descriptor table", q.desc_table())?,
            used_ring_addr: host("used ring", q.used_ring())?,
            avail_ring_addr: host("available ring", q.avail_ring())?,
            log_addr: None,
        },
    })
}

/// Whether the peer closed its end of the socket `fd`.
fn hung_up(fd: RawFd) -> bool {
    let mut fds = [pollfd(fd, libc::POLLRDHUP)];
    // SAFETY: one valid pollfd, zero timeout; `fd` is open (see shutdown).
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    n > 0 && fds[0].revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

fn shutdown(fd: RawFd) {
    // SAFETY: shutdown(2) on a socket fd that is open for as long as the
    // Backend (and so every caller) lives; it touches no memory. An error
    // (ENOTCONN: already shut down) changes nothing.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Why the monitor found the connection dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// An exchange outlived its deadline; the monitor shut the socket down.
    TimedOut,
    /// The backend closed its end (it exited, or was killed).
    HungUp,
    /// The backend sent a message while no request was in flight; the
    /// monitor shut the socket down.
    Unsolicited,
}

impl Failure {
    /// Completes "the backend ...".
    fn describe(self, timeout: Duration) -> String {
        match self {
            Failure::TimedOut => format!("did not answer within {timeout:?}"),
            Failure::HungUp => "hung up (did it exit?)".to_owned(),
            Failure::Unsolicited => "sent a message nobody asked for".to_owned(),
        }
    }
}

/// What the monitor thread and the requesting thread share.
struct Watch {
    /// When the exchange in flight must be over; None while idle.
    deadline: Mutex<Option<Instant>>,
    /// Wakes the monitor: a new deadline, or `stop`.
    wake: EventFd,
    stop: AtomicBool,
    /// The first failure the monitor saw.
    failure: Mutex<Option<Failure>>,
    /// The frontend is closing the socket itself: the hang-up that follows
    /// is not the backend's doing.
    closing: AtomicBool,
}

/// One thread per connection while it is set up or its rings run:
///
/// - relays the backend's call eventfd to [`Interrupt::signal_used_queue`];
/// - shuts the socket down when an exchange outlives its deadline, which
///   ends the blocked read or write on the requesting thread with an error;
/// - notices the backend hanging up, or sending something nobody asked
///   for, and marks the device NEEDS_RESET.
///
/// It sleeps in poll(2) otherwise. Stopping it joins it, and its call
/// eventfd closes with it.
struct Monitor {
    watch: Arc<Watch>,
    thread: JoinHandle<()>,
}

impl Monitor {
    fn spawn(
        name: String,
        socket: RawFd,
        call: Option<Arc<EventFd>>,
        interrupt: Option<Arc<Interrupt>>,
    ) -> Result<Monitor> {
        let watch = Arc::new(Watch {
            deadline: Mutex::new(None),
            wake: new_eventfd()?,
            stop: AtomicBool::new(false),
            failure: Mutex::new(None),
            closing: AtomicBool::new(false),
        });
        let state = MonitorThread {
            name,
            watch: watch.clone(),
            socket,
            call,
            interrupt,
        };
        let thread = std::thread::Builder::new()
            .name("vhost-user".to_owned())
            .spawn(move || state.run())
            .context("spawning the vhost-user monitor thread")?;
        Ok(Monitor { watch, thread })
    }

    fn arm(&self, timeout: Duration) {
        *self
            .watch
            .deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + timeout);
        self.wake();
    }

    /// Woken too: idle, it watches the socket for unasked-for messages.
    fn disarm(&self) {
        *self
            .watch
            .deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.wake();
    }

    fn failure(&self) -> Option<Failure> {
        *self.watch.failure.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expect_hang_up(&self) {
        self.watch.closing.store(true, Ordering::SeqCst);
    }

    fn wake(&self) {
        if let Err(e) = self.watch.wake.write(1) {
            tracing::error!("vhost-user monitor: writing its wake eventfd: {e}");
        }
    }

    fn stop(self) {
        self.watch.stop.store(true, Ordering::SeqCst);
        self.wake();
        if self.thread.join().is_err() {
            tracing::error!("the vhost-user monitor thread panicked");
        }
    }
}

struct MonitorThread {
    name: String,
    watch: Arc<Watch>,
    socket: RawFd,
    call: Option<Arc<EventFd>>,
    interrupt: Option<Arc<Interrupt>>,
}

impl MonitorThread {
    fn run(self) {
        // Once the socket has hung up (or misbehaved) it is not watched any
        // more: poll reports a hang-up on every call.
        let mut watch_socket = true;
        loop {
            if self.watch.stop.load(Ordering::SeqCst) {
                return;
            }
            let (timeout_ms, idle) = self.poll_timeout();
            let mut fds = [
                pollfd(self.watch.wake.as_raw_fd(), libc::POLLIN),
                pollfd(
                    self.call.as_ref().map_or(-1, |c| c.as_raw_fd()),
                    libc::POLLIN,
                ),
                // While no request is in flight, any byte from the backend is
                // one it was not asked for.
                pollfd(
                    if watch_socket { self.socket } else { -1 },
                    libc::POLLRDHUP | if idle { libc::POLLIN } else { 0 },
                ),
            ];
            // SAFETY: fds is a valid array of three pollfds for the call's
            // duration; negative fds are ignored by poll, and the others
            // stay open until this thread is joined (their owners join it
            // first).
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("{}: the monitor's poll failed: {e}; it stops", self.name);
                return;
            }
            if fds[0].revents != 0 {
                let _ = self.watch.wake.read();
            }
            if fds[1].revents != 0
                && let Some(call) = &self.call
            {
                // Non-blocking: a spurious wake-up reads EAGAIN, harmlessly.
                let _ = call.read();
                if let Some(i) = &self.interrupt {
                    i.signal_used_queue();
                }
            }
            let hup = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;
            if fds[2].revents & hup != 0 {
                watch_socket = false;
                if !self.watch.closing.load(Ordering::SeqCst) {
                    self.broken(Failure::HungUp);
                }
            } else if fds[2].revents & libc::POLLIN != 0 && self.unsolicited() {
                watch_socket = false;
                self.watch.closing.store(true, Ordering::SeqCst);
                shutdown(self.socket);
                self.broken(Failure::Unsolicited);
            }
            self.check_deadline();
        }
    }

    /// (poll timeout in ms, whether no request is in flight).
    fn poll_timeout(&self) -> (i32, bool) {
        let deadline = *self
            .watch
            .deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match deadline {
            None => (-1, true),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up, so the deadline has passed when poll returns.
                let ms = left.as_millis().saturating_add(1);
                (i32::try_from(ms).unwrap_or(i32::MAX), false)
            }
        }
    }

    /// Whether data sits on the socket while no request is in flight.
    /// Checked again with the deadline locked, so that a request starting
    /// meanwhile (its reply is expected data) is not mistaken for one.
    fn unsolicited(&self) -> bool {
        let deadline = self
            .watch
            .deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if deadline.is_some() {
            return false;
        }
        let mut fd = [pollfd(self.socket, libc::POLLIN)];
        // SAFETY: one valid pollfd, zero timeout; the socket is open (see run).
        let n = unsafe { libc::poll(fd.as_mut_ptr(), 1, 0) };
        n > 0 && fd[0].revents & libc::POLLIN != 0
    }

    fn check_deadline(&self) {
        let mut deadline = self
            .watch
            .deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if deadline.is_some_and(|d| Instant::now() >= d) {
            *deadline = None;
            self.record(Failure::TimedOut);
            self.watch.closing.store(true, Ordering::SeqCst);
            tracing::error!(
                "{}: no answer before the deadline; closing the connection",
                self.name
            );
            // Ends the requesting thread's blocked sendmsg/recvmsg.
            shutdown(self.socket);
        }
    }

    fn record(&self, failure: Failure) {
        let mut slot = self.watch.failure.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(failure);
    }

    /// The backend is gone or untrustworthy: logged, and the device marked
    /// NEEDS_RESET when its rings run.
    fn broken(&self, failure: Failure) {
        self.record(failure);
        let why = match failure {
            Failure::Unsolicited => "sent a message nobody asked for; the connection is closed",
            Failure::HungUp => "hung up (did it exit?)",
            Failure::TimedOut => "did not answer in time",
        };
        match &self.interrupt {
            Some(i) => {
                tracing::error!("{}: {why}; marking DEVICE_NEEDS_RESET", self.name);
                i.signal_needs_reset();
            }
            None => tracing::error!("{}: {why}", self.name),
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestRam;
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    use std::os::unix::net::UnixListener;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;

    const GET_FEATURES: u32 = 1;
    const SET_FEATURES: u32 = 2;
    const SET_OWNER: u32 = 3;
    const SET_MEM_TABLE: u32 = 5;
    const SET_VRING_NUM: u32 = 8;
    const SET_VRING_ADDR: u32 = 9;
    const SET_VRING_BASE: u32 = 10;
    const GET_VRING_BASE: u32 = 11;
    const SET_VRING_KICK: u32 = 12;
    const SET_VRING_CALL: u32 = 13;
    const GET_PROTOCOL_FEATURES: u32 = 15;
    const SET_PROTOCOL_FEATURES: u32 = 16;
    const SET_VRING_ENABLE: u32 = 18;
    /// Version 1, reply.
    const REPLY: u32 = 0x5;

    fn reply(code: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        for w in [code, REPLY, body.len() as u32] {
            m.extend_from_slice(&w.to_le_bytes());
        }
        m.extend_from_slice(body);
        m
    }

    fn reply_u64(code: u32, value: u64) -> Vec<u8> {
        reply(code, &value.to_le_bytes())
    }

    /// One request as the fake backend got it.
    struct Request {
        code: u32,
        flags: u32,
        body: Vec<u8>,
        files: Vec<File>,
    }

    enum Answer {
        Bytes(Vec<u8>),
        Nothing,
        HangUp,
        /// These bytes, then after 100 ms these (unasked for), or a hang-up.
        Later(Vec<u8>, Option<Vec<u8>>),
    }

    /// A backend on a fresh socket in `dir`: reads requests (and the fds
    /// they carry) until EOF and answers each as `answer` says. The thread
    /// returns the request codes it saw.
    fn fake(
        dir: &Path,
        answer: impl Fn(&Request) -> Answer + Send + 'static,
    ) -> (PathBuf, JoinHandle<Vec<u32>>) {
        let path = dir.join("backend.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let thread = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut seen = Vec::new();
            loop {
                let mut header = [0u8; 12];
                let mut fds = [-1; 8];
                let mut iov = [libc::iovec {
                    iov_base: header.as_mut_ptr().cast(),
                    iov_len: header.len(),
                }];
                // SAFETY: the iovec points at `header`, writable for its
                // whole length.
                let got = unsafe { s.recv_with_fds(&mut iov, &mut fds) };
                let Ok((12, nfds)) = got else { break };
                // SAFETY: recvmsg just gave us these fds; nobody else owns them.
                let files = fds[..nfds]
                    .iter()
                    .map(|fd| unsafe { File::from_raw_fd(*fd) })
                    .collect();
                let word = |i: usize| {
                    u32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
                };
                let mut body = vec![0u8; word(2) as usize];
                if s.read_exact(&mut body).is_err() {
                    break;
                }
                let request = Request {
                    code: word(0),
                    flags: word(1),
                    body,
                    files,
                };
                seen.push(request.code);
                match answer(&request) {
                    Answer::Bytes(b) => {
                        if s.write_all(&b).is_err() {
                            break;
                        }
                    }
                    Answer::Nothing => {}
                    Answer::HangUp => break,
                    Answer::Later(now, later) => {
                        if s.write_all(&now).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                        match later {
                            Some(b) => {
                                if s.write_all(&b).is_err() {
                                    break;
                                }
                            }
                            None => break,
                        }
                    }
                }
            }
            seen
        });
        (path, thread)
    }

    /// Answers as virtiofsd does, REPLY_ACK included.
    fn well_behaved(r: &Request) -> Answer {
        let features =
            VIRTIO_F_VERSION_1 | RING_FEATURES | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        match r.code {
            GET_FEATURES => Answer::Bytes(reply_u64(r.code, features)),
            GET_PROTOCOL_FEATURES => Answer::Bytes(reply_u64(
                r.code,
                (VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ).bits(),
            )),
            GET_VRING_BASE => Answer::Bytes(reply(r.code, &r.body)),
            _ if r.flags & VhostUserHeaderFlag::NEED_REPLY.bits() != 0 => {
                Answer::Bytes(reply_u64(r.code, 0))
            }
            _ => Answer::Nothing,
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "{what} did not happen in 5 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn nothing_listening_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.sock");
        let e = Backend::connect(&path, 2, DEFAULT_TIMEOUT)
            .err()
            .expect("no backend");
        let msg = format!("{e:#}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("No such file"), "{msg}");
    }

    #[test]
    fn set_up_negotiates_reply_ack_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, server) = fake(dir.path(), well_behaved);
        let backend = Backend::connect(&path, 2, DEFAULT_TIMEOUT).expect("connect");
        assert_eq!(
            backend.protocol_features(),
            VhostUserProtocolFeatures::REPLY_ACK
        );
        assert_ne!(backend.features() & VIRTIO_RING_F_EVENT_IDX, 0);
        drop(backend);
        assert_eq!(
            server.join().expect("server"),
            vec![
                SET_OWNER,
                GET_FEATURES,
                GET_PROTOCOL_FEATURES,
                SET_PROTOCOL_FEATURES
            ]
        );
    }

    #[test]
    fn a_stalled_backend_fails_within_the_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Answers nothing, so GET_FEATURES waits forever but for the monitor.
        let (path, server) = fake(dir.path(), |_| Answer::Nothing);
        let started = Instant::now();
        let e = Backend::connect(&path, 2, Duration::from_millis(200))
            .err()
            .expect("stalled");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("did not answer within 200ms during the connection set-up"),
            "{msg}"
        );
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(started.elapsed() < Duration::from_secs(3), "{msg}");
        // The socket was shut down: the backend saw EOF.
        assert_eq!(
            server.join().expect("server"),
            vec![SET_OWNER, GET_FEATURES]
        );
    }

    #[test]
    fn a_garbled_reply_fails_the_set_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        // GET_FEATURES answered as if it were another request.
        let (path, server) = fake(dir.path(), |r| match r.code {
            GET_FEATURES => Answer::Bytes(reply_u64(GET_PROTOCOL_FEATURES, u64::MAX)),
            _ => Answer::Nothing,
        });
        let msg = format!(
            "{:#}",
            Backend::connect(&path, 2, DEFAULT_TIMEOUT)
                .err()
                .expect("garbage")
        );
        assert!(msg.contains("failed the connection set-up"), "{msg}");
        server.join().expect("server");
    }

    #[test]
    fn a_backend_without_protocol_features_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, server) = fake(dir.path(), |r| match r.code {
            GET_FEATURES => Answer::Bytes(reply_u64(r.code, VIRTIO_F_VERSION_1)),
            _ => Answer::Nothing,
        });
        let msg = format!(
            "{:#}",
            Backend::connect(&path, 2, DEFAULT_TIMEOUT)
                .err()
                .expect("refused")
        );
        assert!(msg.contains("VHOST_USER_F_PROTOCOL_FEATURES"), "{msg}");
        server.join().expect("server");
    }

    /// Queue 1 of two made ready at the given ring addresses, as the
    /// transport hands them over.
    fn queues(memory: &GuestMemoryMmap) -> Vec<Queue> {
        let mut q1 = Queue::new(64).expect("queue");
        q1.set_size(16);
        q1.set_desc_table_address(Some(0x1000), Some(0));
        q1.set_avail_ring_address(Some(0x2000), Some(0));
        q1.set_used_ring_address(Some(0x3000), Some(0));
        q1.set_ready(true);
        assert!(q1.is_valid(memory));
        vec![Queue::new(64).expect("queue"), q1]
    }

    #[test]
    fn activation_shares_memory_relays_calls_and_a_hang_up_needs_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ram = GuestRam::new(2).expect("guest ram");
        let memory = ram.memory().clone();
        let host_base = ram.slots()[0].2;
        let mem_table = Arc::new(Mutex::new(None));
        let table = mem_table.clone();
        let (path, server) = fake(dir.path(), move |r| {
            match r.code {
                SET_MEM_TABLE => {
                    // One region: memfd, guest address 0, 2 MiB, our host
                    // address, file offset 0.
                    *table.lock().expect("lock") = Some((r.body.clone(), r.files.len()));
                }
                SET_VRING_ADDR => {
                    let word = |i: usize| {
                        u64::from_le_bytes(r.body[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
                    };
                    // index+flags, then descriptor, used, available.
                    assert_eq!(word(0) & 0xffff_ffff, 1, "queue 1 only");
                    assert_eq!(word(1), host_base + 0x1000);
                    assert_eq!(word(2), host_base + 0x3000);
                    assert_eq!(word(3), host_base + 0x2000);
                }
                SET_VRING_ENABLE if r.body[4] == 1 => return Answer::HangUp,
                _ => {}
            }
            well_behaved(r)
        });
        let mut backend = Backend::connect(&path, 2, DEFAULT_TIMEOUT).expect("connect");
        let interrupt = Arc::new(Interrupt::new(new_eventfd().expect("eventfd")));
        let notifiers = vec![
            new_eventfd().expect("eventfd"),
            new_eventfd().expect("eventfd"),
        ];
        let acked = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
        // The fake hangs up before acking the last ENABLE.
        let e = backend
            .start(
                &memory,
                acked,
                &queues(&memory),
                &notifiers,
                interrupt.clone(),
            )
            .expect_err("hang-up during the activation");
        assert!(
            format!("{e:#}").contains("hung up (did it exit?) during the activation"),
            "{e:#}"
        );
        let seen = server.join().expect("server");
        assert_eq!(
            seen,
            vec![
                SET_OWNER,
                GET_FEATURES,
                GET_PROTOCOL_FEATURES,
                SET_PROTOCOL_FEATURES,
                SET_FEATURES,
                SET_MEM_TABLE,
                SET_VRING_NUM,
                SET_VRING_ADDR,
                SET_VRING_BASE,
                SET_VRING_CALL,
                SET_VRING_KICK,
                SET_VRING_ENABLE
            ]
        );
        let (table, fds) = mem_table.lock().expect("lock").take().expect("mem table");
        assert_eq!(fds, 1, "the memfd");
        // VhostUserMemory: nregions, padding, then gpa, size, uaddr, offset.
        let word = |i: usize| u64::from_le_bytes(table[i * 8..i * 8 + 8].try_into().expect("8"));
        assert_eq!(word(0), 1);
        assert_eq!(
            (word(1), word(2), word(3), word(4)),
            (0, 2 << 20, host_base, 0)
        );
        // A later activation fails fast with the first reason.
        let started = Instant::now();
        let e = backend
            .start(&memory, acked, &queues(&memory), &notifiers, interrupt)
            .expect_err("unusable");
        assert!(format!("{e:#}").contains("is unusable"), "{e:#}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_hang_up_or_an_unsolicited_message_mid_run_needs_reset() {
        for hang_up in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            let ram = GuestRam::new(2).expect("guest ram");
            let memory = ram.memory().clone();
            // Acks the activation, then misbehaves while nothing is asked.
            let (path, server) = fake(dir.path(), move |r| match well_behaved(r) {
                _ if r.code == SET_VRING_CALL => {
                    // A completion at once, through the call eventfd.
                    let mut call = r.files.first().expect("call fd");
                    call.write_all(&1u64.to_ne_bytes()).expect("signal");
                    well_behaved(r)
                }
                Answer::Bytes(ack) if r.code == SET_VRING_ENABLE && r.body[4] == 1 => {
                    let later = if hang_up {
                        None
                    } else {
                        Some(reply_u64(GET_FEATURES, 0))
                    };
                    Answer::Later(ack, later)
                }
                other => other,
            });
            let mut backend = Backend::connect(&path, 2, DEFAULT_TIMEOUT).expect("connect");
            let interrupt = Arc::new(Interrupt::new(new_eventfd().expect("eventfd")));
            let notifiers = vec![
                new_eventfd().expect("eventfd"),
                new_eventfd().expect("eventfd"),
            ];
            backend
                .start(
                    &memory,
                    VIRTIO_F_VERSION_1,
                    &queues(&memory),
                    &notifiers,
                    interrupt.clone(),
                )
                .expect("start");
            // The monitor relays the call: the used-ring bit, then the IRQ.
            wait_for("the used-ring interrupt", || {
                interrupt.status() & super::super::INT_USED_RING != 0
            });
            wait_for("NEEDS_RESET", || interrupt.device_needs_reset());
            // The reset that follows does not wait on the dead connection.
            let started = Instant::now();
            backend.stop();
            assert!(started.elapsed() < Duration::from_secs(1));
            let why = backend.broken.clone().unwrap_or_default();
            let expected = if hang_up {
                "hung up"
            } else {
                "nobody asked for"
            };
            assert!(why.contains(expected), "{why}");
            drop(backend);
            server.join().expect("server");
        }
    }
}
