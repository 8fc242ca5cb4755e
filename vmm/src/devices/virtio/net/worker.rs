//! The thread that moves frames between the TAP and the two queues of an
//! activated virtio-net device: one `poll` over the stop eventfd, the two
//! queue notifiers and the TAP.
//!
//! RX: a frame read from the TAP goes into the next chain the driver made
//! available. With no chain available the frame is held and the TAP is left
//! out of the poll set until the driver notifies RX: no busy loop, and a
//! frame is only ever lost where a real NIC would lose it (its queue in the
//! kernel overflows, or it is too large for the driver's buffer).
//!
//! TX: each chain is gathered into one frame and written to the TAP.
//!
//! Every chain is checked before a byte moves. A chain of the wrong
//! direction, outside guest memory, shorter than the 12-byte header, a TX
//! frame longer than [`MAX_FRAME`] or shorter than an Ethernet header is a
//! driver error: the chain goes back used with nothing written, and the
//! complaint is logged within the budget. A looped or truncated chain, an
//! unreadable descriptor or a bad avail index leaves nothing trustworthy to
//! answer: the device stops serving and raises DEVICE_NEEDS_RESET.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::tap::{Tap, VNET_HDR_SIZE};
use crate::devices::virtio::Interrupt;
use crate::memory::GuestMemoryMmap;

/// The largest frame either way (without the vnet header): a 64 KiB IP
/// packet plus an Ethernet and a VLAN header, as Firecracker allows.
pub const MAX_FRAME: usize = 65550;
/// As in the transport: guest mistakes logged at warn level per device.
const LOG_BUDGET: u32 = 32;
/// The largest chain: header and frame.
const MAX_CHAIN: usize = VNET_HDR_SIZE + MAX_FRAME;
/// Destination, source, EtherType.
const ETH_HEADER: usize = 14;
/// `num_buffers` in `virtio_net_hdr_v1`, at this offset, is 1 without
/// VIRTIO_NET_F_MRG_RXBUF.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Why a queue cannot be served any more.
pub(super) struct Fatal(pub(super) String);

pub(super) struct Worker {
    pub(super) memory: Arc<GuestMemoryMmap>,
    pub(super) rx: Queue,
    pub(super) tx: Queue,
    pub(super) rx_notifier: EventFd,
    pub(super) tx_notifier: EventFd,
    pub(super) stop: EventFd,
    pub(super) interrupt: Arc<Interrupt>,
    pub(super) tap: Arc<Tap>,
    /// RX bounce buffer: the TAP's vnet header, then the frame.
    pub(super) frame: Vec<u8>,
    /// Bytes of `frame` read from the TAP and not yet delivered; 0: none.
    pub(super) pending: usize,
    /// No RX chain was available: the TAP stays out of the poll set until
    /// the driver notifies RX.
    pub(super) rx_waiting: bool,
    /// The TAP reported an error condition; it is not polled any more.
    pub(super) tap_failed: bool,
    pub(super) tx_frame: Vec<u8>,
    /// The chain being served, reused so a frame allocates nothing.
    pub(super) chain: Vec<Descriptor>,
    pub(super) complaints: u32,
}

impl Worker {
    pub(super) fn new(
        memory: Arc<GuestMemoryMmap>,
        queues: [Queue; 2],
        notifiers: [EventFd; 2],
        stop: EventFd,
        interrupt: Arc<Interrupt>,
        tap: Arc<Tap>,
    ) -> Worker {
        let [rx, tx] = queues;
        let [rx_notifier, tx_notifier] = notifiers;
        Worker {
            memory,
            rx,
            tx,
            rx_notifier,
            tx_notifier,
            stop,
            interrupt,
            tap,
            frame: vec![0; MAX_CHAIN],
            pending: 0,
            rx_waiting: false,
            tap_failed: false,
            tx_frame: vec![0; MAX_CHAIN],
            chain: Vec::new(),
            complaints: 0,
        }
    }

    fn complain(&mut self, what: std::fmt::Arguments<'_>) {
        let name = self.tap.name();
        if self.complaints < LOG_BUDGET {
            self.complaints += 1;
            tracing::warn!("virtio-net {name}: {what}");
            if self.complaints == LOG_BUDGET {
                tracing::warn!(
                    "virtio-net {name}: more guest errors like these are logged at debug level only"
                );
            }
        } else {
            tracing::debug!("virtio-net {name}: {what}");
        }
    }

    pub(super) fn run(mut self) {
        let mut broken = false;
        loop {
            // Without RX buffers the TAP is polled for errors only; once it
            // failed (or the device broke) not at all: poll reports POLLERR
            // and POLLHUP whatever the events asked, and a negative fd is
            // the only way to leave an fd out.
            let tap_fd = if broken || self.tap_failed {
                -1
            } else {
                self.tap.as_fd().as_raw_fd()
            };
            let tap_events = if self.rx_waiting { 0 } else { libc::POLLIN };
            let mut fds = [
                pollfd(self.stop.as_raw_fd(), libc::POLLIN),
                pollfd(self.rx_notifier.as_raw_fd(), libc::POLLIN),
                pollfd(self.tx_notifier.as_raw_fd(), libc::POLLIN),
                pollfd(tap_fd, tap_events),
            ];
            // SAFETY: fds is a valid array of pollfds for the call's
            // duration, and every fd stays open (owned by self).
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(
                    "virtio-net {}: poll: {e}; the worker stops",
                    self.tap.name()
                );
                return;
            }
            if fds[0].revents != 0 {
                return;
            }
            let mut rx_work = fds[3].revents & libc::POLLIN != 0;
            if fds[3].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                tracing::error!(
                    "virtio-net {}: the TAP reports an error (poll revents {:#x}); no more frames are read from it",
                    self.tap.name(),
                    fds[3].revents
                );
                self.tap_failed = true;
            }
            if fds[2].revents & libc::POLLIN != 0 {
                // Non-blocking: a spurious wakeup reads EAGAIN, harmlessly.
                let _ = self.tx_notifier.read();
                if !broken {
                    broken = self.fatal(|w| w.serve_tx());
                }
            }
            if fds[1].revents & libc::POLLIN != 0 {
                let _ = self.rx_notifier.read();
                self.rx_waiting = false;
                rx_work = true;
            }
            if rx_work && !broken {
                broken = self.fatal(|w| w.serve_rx());
            }
        }
    }

    /// Runs `serve`; on a fatal error logs it and raises NEEDS_RESET.
    /// Returns whether the device is now broken.
    fn fatal(&mut self, serve: impl FnOnce(&mut Self) -> Result<(), Fatal>) -> bool {
        match serve(self) {
            Ok(()) => false,
            Err(Fatal(why)) => {
                tracing::warn!(
                    "virtio-net {}: {why}; marking DEVICE_NEEDS_RESET",
                    self.tap.name()
                );
                self.interrupt.signal_needs_reset();
                true
            }
        }
    }

    /// Pops the next available chain of `queue` (RX when `rx`) into
    /// `self.chain`; Ok(None) when the driver made none available.
    fn pop(&mut self, rx: bool) -> Result<Option<u16>, Fatal> {
        let which = if rx { "RX" } else { "TX" };
        let queue = if rx { &mut self.rx } else { &mut self.tx };
        let mem: &GuestMemoryMmap = &self.memory;
        let chain = match queue.iter(mem) {
            Ok(mut iter) => iter.next(),
            Err(e) => return Err(Fatal(format!("the {which} available ring is invalid: {e}"))),
        };
        let Some(chain) = chain else {
            return Ok(None);
        };
        let head = chain.head_index();
        self.chain.clear();
        // The iterator yields at most queue-size descriptors, so this is
        // bounded even for a looped chain.
        self.chain.extend(chain);
        match self.chain.last() {
            None => Err(Fatal(format!(
                "{which} chain at head {head}: its first descriptor is unreadable"
            ))),
            Some(last) if last.has_next() => Err(Fatal(format!(
                "{which} chain at head {head} is looped, oversized or truncated (still chained after {} descriptors)",
                self.chain.len()
            ))),
            Some(_) => Ok(Some(head)),
        }
    }

    /// Total length of `self.chain` if every descriptor has the direction
    /// `writable`, lies in guest memory, and the sum stays under `limit`;
    /// otherwise what is wrong.
    fn check_chain(&self, writable: bool, limit: usize) -> Result<usize, String> {
        let mut total: usize = 0;
        for d in &self.chain {
            if d.is_write_only() != writable {
                return Err(format!(
                    "a device-{} descriptor in a {} chain",
                    if writable { "readable" } else { "writable" },
                    if writable { "receive" } else { "transmit" },
                ));
            }
            if !in_memory(&self.memory, d.addr(), u64::from(d.len())) {
                return Err(format!(
                    "buffer {:#x}+{:#x} is outside guest memory",
                    d.addr().0,
                    d.len()
                ));
            }
            total = total.saturating_add(d.len() as usize);
            if total > limit {
                return Err(format!("the chain holds more than {limit} bytes"));
            }
        }
        Ok(total)
    }

    /// Delivers frames from the TAP while the driver has chains for them,
    /// at most twice the queue size per call (then the worker re-notifies
    /// itself, so the stop signal is seen between rounds).
    pub(super) fn serve_rx(&mut self) -> Result<(), Fatal> {
        let mut used = false;
        let mut budget = 2 * u32::from(self.rx.size());
        let result = loop {
            if budget == 0 {
                if let Err(e) = self.rx_notifier.write(1) {
                    tracing::error!("virtio-net {}: re-notifying RX: {e}", self.tap.name());
                }
                break Ok(());
            }
            budget -= 1;
            if self.pending == 0 {
                if self.tap_failed {
                    break Ok(());
                }
                match self.tap.read(&mut self.frame) {
                    Ok(n) if n < VNET_HDR_SIZE + ETH_HEADER => {
                        tracing::debug!(
                            "virtio-net {}: a {n}-byte read from the TAP dropped",
                            self.tap.name()
                        );
                        continue;
                    }
                    Ok(n) => self.pending = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // Not a transient condition: stop reading rather
                        // than spin on a TAP that keeps failing.
                        tracing::error!(
                            "virtio-net {}: reading the TAP: {e}; no more frames are read from it",
                            self.tap.name()
                        );
                        self.tap_failed = true;
                        break Ok(());
                    }
                }
            }
            let Some(head) = self.pop(true)? else {
                self.rx_waiting = true;
                break Ok(());
            };
            let capacity = match self.check_chain(true, usize::MAX) {
                Ok(c) if c >= VNET_HDR_SIZE => c,
                Ok(c) => {
                    self.complain(format_args!(
                        "receive chain at head {head} holds {c} bytes, less than the {VNET_HDR_SIZE}-byte header; returned unused"
                    ));
                    self.add_used(true, head, 0)?;
                    used = true;
                    continue;
                }
                Err(why) => {
                    self.complain(format_args!(
                        "receive chain at head {head}: {why}; returned unused"
                    ));
                    self.add_used(true, head, 0)?;
                    used = true;
                    continue;
                }
            };
            let len = self.pending;
            if capacity < len {
                // Too small for this frame, maybe not for the next: the
                // frame goes, the chain stays available.
                self.complain(format_args!(
                    "a {}-byte frame does not fit the {}-byte receive chain at head {head}; frame dropped",
                    len - VNET_HDR_SIZE,
                    capacity - VNET_HDR_SIZE
                ));
                self.rx.go_to_previous_position();
                self.pending = 0;
                continue;
            }
            // Our own header, not the TAP's: no offloads were negotiated,
            // so flags and GSO are zero and num_buffers is 1.
            self.frame[..VNET_HDR_SIZE].fill(0);
            self.frame[NUM_BUFFERS_OFFSET] = 1;
            let mut done = 0;
            for d in &self.chain {
                if done == len {
                    break;
                }
                let n = (d.len() as usize).min(len - done);
                if self
                    .memory
                    .write_slice(&self.frame[done..done + n], d.addr())
                    .is_err()
                {
                    // check_chain saw it in memory; only a racing unmap fails.
                    return Err(Fatal(format!(
                        "receive buffer {:#x} became unwritable",
                        d.addr().0
                    )));
                }
                done += n;
            }
            self.pending = 0;
            self.add_used(true, head, len as u32)?;
            used = true;
        };
        if used {
            self.notify(true);
        }
        result
    }

    /// Sends every chain the driver made available on TX, at most twice
    /// the queue size per call.
    pub(super) fn serve_tx(&mut self) -> Result<(), Fatal> {
        let mut used = false;
        let mut budget = 2 * u32::from(self.tx.size());
        let result = loop {
            if budget == 0 {
                if let Err(e) = self.tx_notifier.write(1) {
                    tracing::error!("virtio-net {}: re-notifying TX: {e}", self.tap.name());
                }
                break Ok(());
            }
            budget -= 1;
            let Some(head) = self.pop(false)? else {
                break Ok(());
            };
            used = true;
            let len = match self.check_chain(false, MAX_CHAIN) {
                Ok(len) if len < VNET_HDR_SIZE + ETH_HEADER => {
                    self.complain(format_args!(
                        "transmit chain at head {head} holds {len} bytes, less than the header and an Ethernet header; dropped"
                    ));
                    self.add_used(false, head, 0)?;
                    continue;
                }
                Ok(len) => len,
                Err(why) => {
                    self.complain(format_args!(
                        "transmit chain at head {head}: {why}; dropped"
                    ));
                    self.add_used(false, head, 0)?;
                    continue;
                }
            };
            let mut done = 0;
            for d in &self.chain {
                let n = d.len() as usize;
                if self
                    .memory
                    .read_slice(&mut self.tx_frame[done..done + n], d.addr())
                    .is_err()
                {
                    return Err(Fatal(format!(
                        "transmit buffer {:#x} became unreadable",
                        d.addr().0
                    )));
                }
                done += n;
            }
            // Nothing was negotiated that the header could ask for.
            let mut header = [0u8; NUM_BUFFERS_OFFSET];
            header.copy_from_slice(&self.tx_frame[..NUM_BUFFERS_OFFSET]);
            if header != [0; NUM_BUFFERS_OFFSET] {
                self.complain(format_args!(
                    "transmit chain at head {head} asks for offloads that were not negotiated (header {header:02x?}); sent without them"
                ));
            }
            self.tx_frame[..VNET_HDR_SIZE].fill(0);
            match self.tap.write(&self.tx_frame[..len]) {
                Ok(n) if n == len => {}
                Ok(n) => tracing::debug!(
                    "virtio-net {}: the TAP took {n} of {len} bytes",
                    self.tap.name()
                ),
                // The kernel's queue is full, or the TAP is down: the frame
                // is lost, as on a wire.
                Err(e) => {
                    let name = self.tap.name().to_owned();
                    self.complain(format_args!(
                        "writing a {}-byte frame to {name}: {e}; dropped",
                        len - VNET_HDR_SIZE
                    ));
                }
            }
            self.add_used(false, head, 0)?;
        };
        if used {
            self.notify(false);
        }
        result
    }

    fn add_used(&mut self, rx: bool, head: u16, len: u32) -> Result<(), Fatal> {
        let queue = if rx { &mut self.rx } else { &mut self.tx };
        queue
            .add_used(self.memory.as_ref(), head, len)
            .map_err(|e| Fatal(format!("writing the used ring: {e}")))
    }

    /// Raises the used-ring interrupt unless the driver suppressed it
    /// (VRING_AVAIL_F_NO_INTERRUPT); an unreadable avail ring interrupts,
    /// so the driver looks and finds out.
    fn notify(&mut self, rx: bool) {
        let queue = if rx { &mut self.rx } else { &mut self.tx };
        if queue
            .needs_notification(self.memory.as_ref())
            .unwrap_or(true)
        {
            self.interrupt.signal_used_queue();
        }
    }
}

fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Whether `[addr, addr + len)` is guest RAM (and does not wrap).
fn in_memory(memory: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> bool {
    let Ok(len) = usize::try_from(len) else {
        return false;
    };
    addr.0.checked_add(len as u64).is_some() && GuestMemoryBackend::check_range(memory, addr, len)
}
