//! The vsock worker: one thread, one epoll set over the queue notifiers, the
//! listening socket, host sockets mid-handshake and connected host sockets.
//!
//! TX (guest→host) packets are handled as they come; everything for the
//! guest waits until it posts RX buffers: control replies (RESPONSE, RST,
//! CREDIT_*, REQUEST, SHUTDOWN) first, in order, then data from the
//! connections whose host socket is readable, round-robin. A guest that
//! keeps sending while never taking its RX buffers fills `replies`; at
//! [`MAX_REPLIES`] the TX queue is left alone until RX drains, which stalls
//! that guest's own sends instead of growing host memory.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{PKT_HEADER_SIZE, VsockPacket};
use vm_memory::{Bytes, VolatileSlice};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::config::{HOST_CID, VsockConfig};
use super::connection::{
    BUF_ALLOC, Connection, Key, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE,
    OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, SendError, State,
    TYPE_STREAM,
};
use crate::devices::virtio::Interrupt;
use crate::memory::GuestMemoryMmap;

const TOKEN_STOP: u64 = 0;
const TOKEN_RX: u64 = 1;
const TOKEN_TX: u64 = 2;
const TOKEN_EVENT: u64 = 3;
const TOKEN_LISTENER: u64 = 4;
const FIRST_STREAM_TOKEN: u64 = 16;

/// Open connections per VM; a REQUEST past it is answered with RST.
const MAX_CONNECTIONS: usize = 512;
/// Host sockets that connected but have not sent their CONNECT line.
const MAX_HANDSHAKES: usize = 64;
/// Control packets queued for the guest before TX processing pauses.
const MAX_REPLIES: usize = 1024;
/// The largest payload of one packet either way (Linux sends at most 64 KiB
/// per packet and posts 4 KiB RX buffers).
const MAX_PKT_DATA: u32 = 64 * 1024;
/// `CONNECT 4294967295\n` and some slack.
const MAX_CONNECT_LINE: usize = 32;
/// A guest that neither accepts nor refuses a host connection in this long
/// has no listener worth waiting for (Firecracker uses 2 s as well).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// After a full shutdown the guest owes an RST; it is not waited for longer.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// Host-initiated connections get host ports from here up.
const HOST_PORT_BASE: u32 = 1 << 30;
/// As elsewhere in the VMM: guest mistakes logged at warn level per device.
const LOG_BUDGET: u32 = 32;

/// What the device hands its worker at activation.
pub struct Parts {
    pub memory: Arc<GuestMemoryMmap>,
    pub rx: Queue,
    pub tx: Queue,
    /// rx, tx, event queue notifiers.
    pub kicks: [EventFd; 3],
    pub stop: EventFd,
    pub interrupt: Arc<Interrupt>,
    pub listener: Arc<UnixListener>,
    pub config: VsockConfig,
}

/// A control packet for the guest.
#[derive(Debug, Clone, Copy)]
struct Reply {
    key: Key,
    op: u16,
    flags: u32,
}

enum Stream {
    Handshake,
    Connection(Key),
}

/// The queue itself is unusable; the device needs a reset.
struct Fatal(String);

pub struct Muxer {
    memory: Arc<GuestMemoryMmap>,
    rx: Queue,
    tx: Queue,
    kicks: [EventFd; 3],
    stop: EventFd,
    interrupt: Arc<Interrupt>,
    listener: Arc<UnixListener>,
    config: VsockConfig,
    epoll: Epoll,
    conns: HashMap<Key, Connection>,
    handshakes: HashMap<u64, UnixStream>,
    streams: HashMap<u64, Stream>,
    next_token: u64,
    next_host_port: u32,
    replies: VecDeque<Reply>,
    /// Connections that may have host data or EOF for the guest.
    ready: VecDeque<Key>,
    /// TX chains may be waiting (kicked, or paused at MAX_REPLIES).
    tx_pending: bool,
    rx_used: bool,
    tx_used: bool,
    broken: bool,
    bounce: Vec<u8>,
    complaints: u32,
}

impl Muxer {
    pub fn new(p: Parts) -> Result<Self> {
        let epoll = Epoll::new().context("virtio-vsock: epoll_create")?;
        let level = EventSet::IN;
        let m = Muxer {
            memory: p.memory,
            rx: p.rx,
            tx: p.tx,
            kicks: p.kicks,
            stop: p.stop,
            interrupt: p.interrupt,
            listener: p.listener,
            config: p.config,
            epoll,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            streams: HashMap::new(),
            next_token: FIRST_STREAM_TOKEN,
            next_host_port: HOST_PORT_BASE,
            replies: VecDeque::new(),
            ready: VecDeque::new(),
            tx_pending: true,
            rx_used: false,
            tx_used: false,
            broken: false,
            bounce: vec![0; MAX_PKT_DATA as usize],
            complaints: 0,
        };
        for (fd, token) in [
            (m.stop.as_raw_fd(), TOKEN_STOP),
            (m.kicks[0].as_raw_fd(), TOKEN_RX),
            (m.kicks[1].as_raw_fd(), TOKEN_TX),
            (m.kicks[2].as_raw_fd(), TOKEN_EVENT),
            (m.listener.as_raw_fd(), TOKEN_LISTENER),
        ] {
            m.epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(level, token))
                .context("virtio-vsock: epoll_ctl")?;
        }
        Ok(m)
    }

    fn complain(&mut self, what: std::fmt::Arguments<'_>) {
        if self.complaints < LOG_BUDGET {
            self.complaints += 1;
            tracing::warn!("virtio-vsock: {what}");
            if self.complaints == LOG_BUDGET {
                tracing::warn!(
                    "virtio-vsock: more guest errors like these are logged at debug level only"
                );
            }
        } else {
            tracing::debug!("virtio-vsock: {what}");
        }
    }

    pub fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(self.timeout_ms(), &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("virtio-vsock: epoll_wait: {e}; the worker stops");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return,
                    // Non-blocking eventfds: a spurious wakeup reads EAGAIN.
                    TOKEN_RX => {
                        let _ = self.kicks[0].read();
                    }
                    TOKEN_TX => {
                        let _ = self.kicks[1].read();
                        self.tx_pending = true;
                    }
                    // The device never uses the event queue (it only
                    // carries transport resets after a migration).
                    TOKEN_EVENT => {
                        let _ = self.kicks[2].read();
                    }
                    TOKEN_LISTENER => self.accept(),
                    token => self.stream_event(token, ev.event_set()),
                }
            }
            if self.broken {
                continue;
            }
            self.expire(Instant::now());
            if let Err(Fatal(why)) = self.step() {
                tracing::warn!("virtio-vsock: {why}; marking DEVICE_NEEDS_RESET");
                self.break_down();
            }
        }
    }

    /// Stops serving: no connection survives, nothing is accepted, and only
    /// the stop signal is still heard.
    fn break_down(&mut self) {
        self.broken = true;
        self.interrupt.signal_needs_reset();
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            self.listener.as_raw_fd(),
            EpollEvent::default(),
        );
        // Dropping the sockets closes them, which takes them out of epoll.
        self.conns.clear();
        self.handshakes.clear();
        self.streams.clear();
        self.replies.clear();
        self.ready.clear();
    }

    fn timeout_ms(&self) -> i32 {
        let now = Instant::now();
        self.conns
            .values()
            .filter_map(|c| c.deadline)
            .min()
            .map_or(-1, |d| {
                // Round up, so the deadline has passed when we wake.
                let ms = d.saturating_duration_since(now).as_micros().div_ceil(1000);
                i32::try_from(ms).unwrap_or(i32::MAX)
            })
    }

    /// TX chains may be waiting and the reply backlog has room for their
    /// answers.
    fn tx_can_go(&self) -> bool {
        self.tx_pending && self.replies.len() < MAX_REPLIES
    }

    /// Moves packets both ways until neither queue can make progress, then
    /// interrupts the guest once if either queue was used. Bounded, so the
    /// stop signal is seen between rounds; unfinished TX work re-notifies
    /// itself.
    fn step(&mut self) -> Result<(), Fatal> {
        for _ in 0..4 {
            let mut progress = false;
            if self.tx_can_go() {
                progress |= self.process_tx()?;
            }
            progress |= self.process_rx()?;
            if !(progress && self.tx_can_go()) {
                break;
            }
        }
        if self.tx_can_go() {
            let _ = self.kicks[1].write(1);
        }
        let memory = self.memory.clone();
        // Both queues share the one used-ring interrupt; each honours its
        // VRING_AVAIL_F_NO_INTERRUPT.
        let rx = std::mem::take(&mut self.rx_used)
            && self.rx.needs_notification(&*memory).unwrap_or(true);
        let tx = std::mem::take(&mut self.tx_used)
            && self.tx.needs_notification(&*memory).unwrap_or(true);
        if rx || tx {
            self.interrupt.signal_used_queue();
        }
        Ok(())
    }

    // ---- guest → host ------------------------------------------------

    /// Handles up to two queue-sizes of TX chains; true if any was used.
    fn process_tx(&mut self) -> Result<bool, Fatal> {
        let memory = self.memory.clone();
        let mem: &GuestMemoryMmap = &memory;
        let mut used = false;
        let mut budget = 2 * u32::from(self.tx.size());
        while self.replies.len() < MAX_REPLIES {
            if budget == 0 {
                return Ok(used);
            }
            budget -= 1;
            let chain = match self.tx.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => return Err(Fatal(format!("the TX available ring is invalid: {e}"))),
            };
            let Some(mut chain) = chain else {
                self.tx_pending = false;
                return Ok(used);
            };
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => self.guest_packet(&pkt),
                Err(e) => self.complain(format_args!(
                    "dropping a malformed TX packet (head {head}): {e}"
                )),
            }
            self.tx
                .add_used(mem, head, 0)
                .map_err(|e| Fatal(format!("writing the TX used ring: {e}")))?;
            self.tx_used = true;
            used = true;
        }
        Ok(used)
    }

    fn guest_packet(&mut self, pkt: &VsockPacket<'_, ()>) {
        let op = pkt.op();
        let key = Key {
            local_port: pkt.dst_port(),
            peer_port: pkt.src_port(),
        };
        let guest_cid = self.config.guest_cid;
        if pkt.src_cid() != guest_cid {
            self.complain(format_args!(
                "dropping a packet from CID {} (the guest is CID {guest_cid})",
                pkt.src_cid(),
            ));
            return;
        }
        if pkt.dst_cid() != HOST_CID || pkt.type_() != TYPE_STREAM {
            self.complain(format_args!(
                "refusing a packet to CID {} of type {} (only stream sockets to the host, CID {HOST_CID})",
                pkt.dst_cid(),
                pkt.type_()
            ));
            if op != OP_RST {
                self.reply(key, OP_RST, 0);
            }
            return;
        }
        // Every packet carries the guest's buffer space (a REQUEST's is
        // taken by `guest_connects`).
        if let Some(c) = self.conns.get_mut(&key) {
            c.update_peer_credit(pkt.buf_alloc(), pkt.fwd_cnt());
            if c.wants_credit && c.peer_credit() > 0 {
                c.wants_credit = false;
                self.ready.push_back(key);
            }
        }
        match op {
            OP_REQUEST => self.guest_connects(key, pkt.buf_alloc(), pkt.fwd_cnt()),
            OP_RESPONSE => self.guest_accepted(key),
            OP_RW => self.guest_data(key, pkt),
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                let op = if self.conns.contains_key(&key) {
                    OP_CREDIT_UPDATE
                } else {
                    OP_RST
                };
                self.reply(key, op, 0);
            }
            OP_SHUTDOWN => self.guest_shutdown(key, pkt.flags()),
            OP_RST => self.remove(key),
            other => {
                self.complain(format_args!("unknown vsock op {other}; resetting"));
                self.kill(key);
            }
        }
    }

    /// A guest connection to host port P: a unix connection to `<uds>_P`.
    /// The REQUEST carries the guest's buffer space, as every packet does:
    /// the connection starts with that credit.
    fn guest_connects(&mut self, key: Key, buf_alloc: u32, fwd_cnt: u32) {
        if self.conns.contains_key(&key) {
            self.complain(format_args!(
                "a second REQUEST for port {} from guest port {}",
                key.local_port, key.peer_port
            ));
            self.kill(key);
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            self.complain(format_args!(
                "refusing a connection to port {}: {MAX_CONNECTIONS} are open",
                key.local_port
            ));
            self.reply(key, OP_RST, 0);
            return;
        }
        let mut path = self.config.uds.clone().into_os_string();
        path.push(format!("_{}", key.local_port));
        let path = PathBuf::from(path);
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(
                    "virtio-vsock: guest connection to port {}: {}: {e}",
                    key.local_port,
                    path.display()
                );
                self.reply(key, OP_RST, 0);
                return;
            }
        };
        if let Some(c) = self.add_connection(key, stream, State::Established) {
            c.update_peer_credit(buf_alloc, fwd_cnt);
            self.reply(key, OP_RESPONSE, 0);
            self.ready.push_back(key);
        } else {
            self.reply(key, OP_RST, 0);
        }
    }

    /// The guest accepted a host-initiated connection: tell the host.
    fn guest_accepted(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            self.reply(key, OP_RST, 0);
            return;
        };
        if c.state != State::Connecting {
            self.complain(format_args!(
                "RESPONSE on the established connection {key:?}"
            ));
            self.kill(key);
            return;
        }
        let line = format!("OK {}\n", key.local_port);
        // A fresh socket's send buffer is empty: the line goes in one write.
        match c.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => {
                c.state = State::Established;
                c.deadline = None;
                self.ready.push_back(key);
            }
            _ => self.kill(key),
        }
    }

    fn guest_data(&mut self, key: Key, pkt: &VsockPacket<'_, ()>) {
        let established = self
            .conns
            .get(&key)
            .is_some_and(|c| c.state == State::Established);
        if !established {
            self.reply(key, OP_RST, 0);
            return;
        }
        let len = match pkt.data_slice() {
            Some(data) => data.copy_to(&mut self.bounce[..]),
            None => 0,
        };
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.peer_shutdown & SHUTDOWN_SEND != 0 {
            self.complain(format_args!("data after SHUTDOWN on {key:?}"));
            self.kill(key);
            return;
        }
        match c.send_to_host(&self.bounce[..len]) {
            Ok(()) => {
                let (pending, token, fd) = (c.has_pending(), c.token, c.stream.as_raw_fd());
                let credit = c.wants_credit_update();
                if pending {
                    self.watch(fd, token, true);
                }
                if credit {
                    self.reply(key, OP_CREDIT_UPDATE, 0);
                }
            }
            Err(SendError::CreditExceeded { held, more }) => {
                self.complain(format_args!(
                    "guest sent {more} bytes on {key:?} with {held} of its {BUF_ALLOC}-byte credit already held; resetting"
                ));
                self.kill(key);
            }
            Err(SendError::Io(e)) => {
                tracing::debug!("virtio-vsock: {key:?}: writing to the host: {e}");
                self.kill(key);
            }
        }
    }

    fn guest_shutdown(&mut self, key: Key, flags: u32) {
        let Some(c) = self.conns.get_mut(&key) else {
            self.reply(key, OP_RST, 0);
            return;
        };
        c.peer_shutdown |= flags & SHUTDOWN_BOTH;
        if c.peer_shutdown == SHUTDOWN_BOTH && !c.has_pending() {
            self.kill(key);
            return;
        }
        if c.peer_shutdown & SHUTDOWN_SEND != 0 && !c.has_pending() {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        if c.peer_shutdown == SHUTDOWN_BOTH {
            c.deadline = Some(Instant::now() + SHUTDOWN_TIMEOUT);
        }
    }

    // ---- host side ---------------------------------------------------

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.handshakes.len() >= MAX_HANDSHAKES {
                        tracing::warn!(
                            "virtio-vsock: {MAX_HANDSHAKES} host connections have not sent CONNECT yet; closing a new one"
                        );
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        tracing::warn!("virtio-vsock: accepted socket: {e}");
                        continue;
                    }
                    let token = self.token();
                    // Edge-triggered: a partial line is peeked, not read,
                    // so level-triggered it would be reported forever.
                    if let Err(e) = self.epoll.ctl(
                        ControlOperation::Add,
                        stream.as_raw_fd(),
                        EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, token),
                    ) {
                        tracing::warn!("virtio-vsock: epoll_ctl: {e}");
                        continue;
                    }
                    self.streams.insert(token, Stream::Handshake);
                    self.handshakes.insert(token, stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("virtio-vsock: accept: {e}");
                    return;
                }
            }
        }
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn stream_event(&mut self, token: u64, events: EventSet) {
        match self.streams.get(&token) {
            Some(Stream::Handshake) => self.handshake(token),
            Some(Stream::Connection(key)) => {
                let key = *key;
                let Some(c) = self.conns.get_mut(&key) else {
                    return;
                };
                if events.contains(EventSet::HANG_UP) {
                    c.host_hup = true;
                }
                if events.intersects(
                    EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR,
                ) {
                    c.readable = true;
                    self.ready.push_back(key);
                }
                if events.contains(EventSet::OUT) {
                    self.host_writable(key);
                }
            }
            None => {}
        }
    }

    /// Reads `CONNECT <port>\n` from a new host socket: peeked first, so no
    /// byte after the line is consumed before the guest accepts.
    fn handshake(&mut self, token: u64) {
        let Some(stream) = self.handshakes.get(&token) else {
            return;
        };
        let mut line = [0u8; MAX_CONNECT_LINE];
        let peeked = match peek(stream.as_raw_fd(), &mut line) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => 0,
        };
        let end = line[..peeked].iter().position(|&b| b == b'\n');
        let port = match end {
            None if peeked > 0 && peeked < MAX_CONNECT_LINE => return,
            None => None,
            Some(end) => std::str::from_utf8(&line[..end])
                .ok()
                .and_then(|l| l.strip_prefix("CONNECT "))
                .and_then(|p| p.trim().parse::<u32>().ok()),
        };
        let Some(mut stream) = self.handshakes.remove(&token) else {
            return;
        };
        self.streams.remove(&token);
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            stream.as_raw_fd(),
            EpollEvent::default(),
        );
        let (Some(port), Some(end)) = (port, end) else {
            tracing::debug!("virtio-vsock: a host connection sent no valid CONNECT line");
            return;
        };
        // Consume exactly the line.
        if stream.read_exact(&mut line[..=end]).is_err() {
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::warn!(
                "virtio-vsock: refusing a host connection to guest port {port}: {MAX_CONNECTIONS} are open"
            );
            return;
        }
        let Some(local_port) = self.free_host_port(port) else {
            return;
        };
        let key = Key {
            local_port,
            peer_port: port,
        };
        if let Some(c) = self.add_connection(key, stream, State::Connecting) {
            c.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
            self.reply(key, OP_REQUEST, 0);
        }
    }

    fn free_host_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let p = self.next_host_port;
            self.next_host_port = p.checked_add(1).unwrap_or(HOST_PORT_BASE);
            let key = Key {
                local_port: p,
                peer_port,
            };
            if !self.conns.contains_key(&key) {
                return Some(p);
            }
        }
        None
    }

    /// Registers `stream` (edge-triggered) and records the connection.
    fn add_connection(
        &mut self,
        key: Key,
        stream: UnixStream,
        state: State,
    ) -> Option<&mut Connection> {
        let token = self.token();
        let events = EventSet::IN | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(events, token),
        ) {
            tracing::warn!("virtio-vsock: epoll_ctl: {e}");
            return None;
        }
        self.streams.insert(token, Stream::Connection(key));
        Some(
            self.conns
                .entry(key)
                .insert_entry(Connection::new(stream, token, state))
                .into_mut(),
        )
    }

    /// Adds or drops EPOLLOUT interest (held guest data waits for it).
    fn watch(&self, fd: RawFd, token: u64, writable: bool) {
        let mut events = EventSet::IN | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        if writable {
            events |= EventSet::OUT;
        }
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
        {
            tracing::warn!("virtio-vsock: epoll_ctl: {e}");
        }
    }

    fn host_writable(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if let Err(e) = c.flush() {
            tracing::debug!("virtio-vsock: {key:?}: writing to the host: {e}");
            self.kill(key);
            return;
        }
        if c.has_pending() {
            return;
        }
        let (token, fd) = (c.token, c.stream.as_raw_fd());
        let shutdown = c.peer_shutdown;
        let credit = c.wants_credit_update();
        if shutdown == SHUTDOWN_BOTH {
            self.kill(key);
            return;
        }
        if shutdown & SHUTDOWN_SEND != 0 {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        self.watch(fd, token, false);
        if credit {
            self.reply(key, OP_CREDIT_UPDATE, 0);
        }
    }

    fn expire(&mut self, now: Instant) {
        let due: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            tracing::debug!("virtio-vsock: {key:?} timed out");
            self.kill(key);
        }
    }

    /// Closes a connection and tells the guest with RST.
    fn kill(&mut self, key: Key) {
        self.remove(key);
        self.reply(key, OP_RST, 0);
    }

    /// Forgets a connection; dropping its socket closes the host end.
    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.streams.remove(&c.token);
        }
    }

    fn reply(&mut self, key: Key, op: u16, flags: u32) {
        self.replies.push_back(Reply { key, op, flags });
    }

    // ---- host → guest ------------------------------------------------

    /// Fills the guest's RX buffers: replies first, then data. True if any
    /// buffer was used.
    fn process_rx(&mut self) -> Result<bool, Fatal> {
        let memory = self.memory.clone();
        let mem: &GuestMemoryMmap = &memory;
        let mut used = false;
        let mut budget = 2 * u32::from(self.rx.size());
        while budget > 0 && (!self.replies.is_empty() || !self.ready.is_empty()) {
            budget -= 1;
            let chain = match self.rx.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => return Err(Fatal(format!("the RX available ring is invalid: {e}"))),
            };
            let Some(mut chain) = chain else {
                // No buffers: the guest's next RX notify brings us back.
                break;
            };
            let head = chain.head_index();
            let written = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => {
                    if let Some(r) = self.replies.pop_front() {
                        self.write_header(&mut pkt, r.key, r.op, r.flags, 0);
                        Some(PKT_HEADER_SIZE as u32)
                    } else {
                        self.fill_data(&mut pkt)
                    }
                }
                Err(e) => {
                    self.complain(format_args!(
                        "dropping an unusable RX buffer (head {head}): {e}"
                    ));
                    Some(0)
                }
            };
            let Some(written) = written else {
                // Nothing to send after all: the buffer goes back.
                self.rx.set_next_avail(self.rx.next_avail().wrapping_sub(1));
                break;
            };
            self.rx
                .add_used(mem, head, written)
                .map_err(|e| Fatal(format!("writing the RX used ring: {e}")))?;
            self.rx_used = true;
            used = true;
        }
        Ok(used)
    }

    /// Host data (or its EOF) from the next ready connection into `pkt`.
    /// None when no connection has anything to send now.
    fn fill_data(&mut self, pkt: &mut VsockPacket<'_, ()>) -> Option<u32> {
        let room = pkt.data_slice().map_or(0, VolatileSlice::len);
        while let Some(key) = self.ready.pop_front() {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            if c.state != State::Established
                || !c.readable
                || c.host_eof
                || c.peer_shutdown & SHUTDOWN_RCV != 0
            {
                continue;
            }
            if room == 0 {
                self.complain(format_args!("an RX buffer with no room for data"));
                self.ready.push_front(key);
                return Some(0);
            }
            let credit = c.peer_credit() as usize;
            if credit == 0 {
                if !c.wants_credit {
                    c.wants_credit = true;
                    self.write_header(pkt, key, OP_CREDIT_REQUEST, 0, 0);
                    return Some(PKT_HEADER_SIZE as u32);
                }
                continue;
            }
            let max = credit.min(room).min(self.bounce.len());
            match c.read_from_host(&mut self.bounce[..max]) {
                Ok(0) => {
                    c.readable = false;
                    c.host_eof = true;
                    let flags = if c.host_hup {
                        SHUTDOWN_BOTH
                    } else {
                        SHUTDOWN_SEND
                    };
                    if flags == SHUTDOWN_BOTH || c.peer_shutdown & SHUTDOWN_SEND != 0 {
                        c.deadline = Some(Instant::now() + SHUTDOWN_TIMEOUT);
                    }
                    self.write_header(pkt, key, OP_SHUTDOWN, flags, 0);
                    return Some(PKT_HEADER_SIZE as u32);
                }
                Ok(n) => {
                    if let Some(data) = pkt.data_slice() {
                        data.copy_from(&self.bounce[..n]);
                    }
                    self.write_header(pkt, key, OP_RW, 0, n as u32);
                    // More may be waiting; others get their turn first.
                    self.ready.push_back(key);
                    return Some((PKT_HEADER_SIZE + n) as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.ready.push_front(key),
                Err(e) => {
                    tracing::debug!("virtio-vsock: {key:?}: reading from the host: {e}");
                    self.kill(key);
                }
            }
        }
        None
    }

    fn write_header(
        &mut self,
        pkt: &mut VsockPacket<'_, ()>,
        key: Key,
        op: u16,
        flags: u32,
        len: u32,
    ) {
        let fwd_cnt = self
            .conns
            .get_mut(&key)
            .map_or(0, Connection::stamp_fwd_cnt);
        // Zero first: the buffer holds whatever the guest left there.
        let _ = pkt.header_slice().write_slice(&[0u8; PKT_HEADER_SIZE], 0);
        pkt.set_src_cid(HOST_CID)
            .set_dst_cid(self.config.guest_cid)
            .set_src_port(key.local_port)
            .set_dst_port(key.peer_port)
            .set_type(TYPE_STREAM)
            .set_op(op)
            .set_flags(flags)
            .set_len(len)
            .set_buf_alloc(BUF_ALLOC)
            .set_fwd_cnt(fwd_cnt);
    }
}

/// `recv(MSG_PEEK)`: what the socket holds, without consuming it.
fn peek(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of its length; fd is a socket we own.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A unix stream connection that cannot block the worker: a host listener
/// whose backlog is full refuses (EAGAIN) instead of stalling every other
/// connection of the VM.
fn connect_nonblocking(path: &std::path::Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: addr is a valid sockaddr_un of at least `len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            len as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    //! The muxer driven by a fake driver writing split queues into plain
    //! guest memory, so hostile sequences are exact and repeatable.
    use super::*;
    use crate::vstate::vm::new_eventfd;
    use virtio_vsock::packet::PacketHeader;
    use vm_memory::{Address, ByteValued, GuestAddress};

    const QSIZE: u16 = 4096;
    const GUEST_CID: u64 = 3;
    /// Packet buffers live from here; queues below.
    const BUFFERS: u64 = 0x40_0000;

    /// One split queue as a driver sees it.
    struct Ring {
        desc: u64,
        avail: u64,
        used: u64,
        next_desc: u16,
        avail_idx: u16,
        used_seen: u16,
    }

    impl Ring {
        fn new(base: u64) -> Self {
            let size = u64::from(QSIZE);
            Ring {
                desc: base,
                avail: base + 16 * size,
                used: (base + 16 * size + 6 + 2 * size).next_multiple_of(4),
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
            }
        }

        fn queue(&self) -> Queue {
            let mut q = Queue::new(QSIZE).unwrap();
            q.set_size(QSIZE);
            q.set_ready(true);
            q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
            q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
            q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
            q
        }

        /// Posts a chain of (addr, len, device-writable) descriptors.
        fn post(&mut self, mem: &GuestMemoryMmap, chain: &[(u64, u32, bool)]) {
            let head = self.next_desc;
            for (i, (addr, len, write)) in chain.iter().enumerate() {
                let idx = self.next_desc;
                self.next_desc = (self.next_desc + 1) % QSIZE;
                let last = i + 1 == chain.len();
                let flags: u16 = if *write { 2 } else { 0 } | if last { 0 } else { 1 };
                let at = GuestAddress(self.desc + 16 * u64::from(idx));
                mem.write_obj(*addr, at).unwrap();
                mem.write_obj(*len, at.unchecked_add(8)).unwrap();
                mem.write_obj(flags, at.unchecked_add(12)).unwrap();
                mem.write_obj(self.next_desc, at.unchecked_add(14)).unwrap();
            }
            let slot = u64::from(self.avail_idx % QSIZE);
            mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
                .unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
                .unwrap();
        }

        /// Used entries since the last call: (descriptor id, length).
        fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
            let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
            let mut out = Vec::new();
            while self.used_seen != idx {
                let slot = u64::from(self.used_seen % QSIZE);
                let at = GuestAddress(self.used + 4 + 8 * slot);
                out.push((
                    mem.read_obj(at).unwrap(),
                    mem.read_obj(at.unchecked_add(4)).unwrap(),
                ));
                self.used_seen = self.used_seen.wrapping_add(1);
            }
            out
        }
    }

    struct Driver {
        mem: Arc<GuestMemoryMmap>,
        rx: Ring,
        tx: Ring,
        next_buf: u64,
        _dir: tempfile::TempDir,
        dir: PathBuf,
    }

    impl Driver {
        fn new() -> (Driver, Muxer) {
            let mem =
                Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 256 << 20)]).unwrap());
            let rx = Ring::new(0x1_0000);
            let tx = Ring::new(0x10_0000);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().to_owned();
            let listener = UnixListener::bind(path.join("v.sock")).unwrap();
            listener.set_nonblocking(true).unwrap();
            let muxer = Muxer::new(Parts {
                memory: mem.clone(),
                rx: rx.queue(),
                tx: tx.queue(),
                kicks: [
                    new_eventfd().unwrap(),
                    new_eventfd().unwrap(),
                    new_eventfd().unwrap(),
                ],
                stop: new_eventfd().unwrap(),
                interrupt: Arc::new(Interrupt::new(new_eventfd().unwrap())),
                listener: Arc::new(listener),
                config: VsockConfig {
                    guest_cid: GUEST_CID,
                    uds: path.join("v.sock"),
                },
            })
            .unwrap();
            let d = Driver {
                mem,
                rx,
                tx,
                next_buf: BUFFERS,
                _dir: dir,
                dir: path,
            };
            (d, muxer)
        }

        fn buffer(&mut self, len: u32) -> u64 {
            let at = self.next_buf;
            self.next_buf += u64::from(len).next_multiple_of(64);
            assert!(self.next_buf < 256 << 20, "test buffers exhausted");
            at
        }

        /// A guest packet on TX: header and optional data descriptor.
        fn send(&mut self, src_port: u32, dst_port: u32, op: u16, data: &[u8]) {
            self.send_from(GUEST_CID, src_port, dst_port, op, data);
        }

        fn send_from(&mut self, src_cid: u64, src_port: u32, dst_port: u32, op: u16, data: &[u8]) {
            let hdr = header(src_cid, src_port, dst_port, op, data.len() as u32);
            let h = self.buffer(PKT_HEADER_SIZE as u32);
            self.mem
                .write_slice(hdr.as_slice(), GuestAddress(h))
                .unwrap();
            if data.is_empty() {
                self.tx
                    .post(&self.mem, &[(h, PKT_HEADER_SIZE as u32, false)]);
            } else {
                let d = self.buffer(data.len() as u32);
                self.mem.write_slice(data, GuestAddress(d)).unwrap();
                self.tx.post(
                    &self.mem,
                    &[
                        (h, PKT_HEADER_SIZE as u32, false),
                        (d, data.len() as u32, false),
                    ],
                );
            }
        }

        /// Posts `n` RX buffers of header + 4 KiB, as Linux does.
        fn post_rx(&mut self, n: usize) -> Vec<u64> {
            (0..n)
                .map(|_| {
                    let h = self.buffer(PKT_HEADER_SIZE as u32);
                    let d = self.buffer(4096);
                    self.rx.post(
                        &self.mem,
                        &[(h, PKT_HEADER_SIZE as u32, true), (d, 4096, true)],
                    );
                    h
                })
                .collect()
        }

        /// The headers the device wrote into the RX buffers it used, in order.
        fn received(&mut self, posted: &[u64]) -> Vec<PacketHeader> {
            let used = self.rx.take_used(&self.mem);
            used.iter()
                .map(|(id, _)| {
                    // Each RX chain is two descriptors, posted in order.
                    let h = posted[*id as usize / 2 % posted.len()];
                    self.mem.read_obj(GuestAddress(h)).unwrap()
                })
                .collect()
        }
    }

    fn header(src_cid: u64, src_port: u32, dst_port: u32, op: u16, len: u32) -> PacketHeader {
        let mut raw = [0u8; PKT_HEADER_SIZE];
        raw[0..8].copy_from_slice(&src_cid.to_le_bytes());
        raw[8..16].copy_from_slice(&HOST_CID.to_le_bytes());
        raw[16..20].copy_from_slice(&src_port.to_le_bytes());
        raw[20..24].copy_from_slice(&dst_port.to_le_bytes());
        raw[24..28].copy_from_slice(&len.to_le_bytes());
        raw[28..30].copy_from_slice(&TYPE_STREAM.to_le_bytes());
        raw[30..32].copy_from_slice(&op.to_le_bytes());
        raw[36..40].copy_from_slice(&(64u32 * 1024).to_le_bytes());
        *PacketHeader::from_slice(&raw).unwrap()
    }

    fn op_of(h: &PacketHeader) -> u16 {
        u16::from_le_bytes([h.as_slice()[30], h.as_slice()[31]])
    }

    fn dst_port_of(h: &PacketHeader) -> u32 {
        u32::from_le_bytes(h.as_slice()[20..24].try_into().unwrap())
    }

    #[test]
    fn a_request_flood_without_rx_buffers_is_back_pressured_not_buffered() {
        let (mut d, mut m) = Driver::new();
        // 1500 connection requests to a host port nobody listens on.
        for port in 0..1500 {
            d.send(10_000 + port, 9, OP_REQUEST, &[]);
        }
        assert!(m.step().is_ok());
        assert_eq!(m.replies.len(), MAX_REPLIES, "replies are capped");
        assert_eq!(
            d.tx.take_used(&d.mem).len(),
            MAX_REPLIES,
            "the rest waits in TX"
        );
        assert!(m.tx_pending);
        // RX buffers let the backlog drain and TX resume.
        let posted = d.post_rx(2000);
        for _ in 0..8 {
            let _ = m.kicks[1].read();
            assert!(m.step().is_ok());
        }
        let got = d.received(&posted);
        assert_eq!(got.len(), 1500, "every request was answered");
        assert!(got.iter().all(|h| op_of(h) == OP_RST));
        assert_eq!(d.tx.take_used(&d.mem).len(), 1500 - MAX_REPLIES);
        assert!(m.replies.is_empty() && m.conns.is_empty());
        assert!(!m.interrupt.device_needs_reset());
    }

    #[test]
    fn malformed_packets_are_dropped_and_the_device_keeps_serving() {
        let (mut d, mut m) = Driver::new();
        let posted = d.post_rx(16);
        // A header descriptor too short to hold a header.
        let h = d.buffer(64);
        d.tx.post(&d.mem, &[(h, 10, false)]);
        // A device-writable header.
        d.tx.post(&d.mem, &[(h, PKT_HEADER_SIZE as u32, true)]);
        // Data outside guest memory.
        let hdr = header(GUEST_CID, 1, 2, OP_RW, 100);
        d.mem.write_slice(hdr.as_slice(), GuestAddress(h)).unwrap();
        d.tx.post(
            &d.mem,
            &[(h, PKT_HEADER_SIZE as u32, false), (1 << 40, 100, false)],
        );
        // A length past the largest payload.
        let big = d.buffer(64);
        let hdr = header(GUEST_CID, 1, 2, OP_RW, MAX_PKT_DATA + 1);
        d.mem
            .write_slice(hdr.as_slice(), GuestAddress(big))
            .unwrap();
        d.tx.post(
            &d.mem,
            &[
                (big, PKT_HEADER_SIZE as u32, false),
                (big, MAX_PKT_DATA + 1, false),
            ],
        );
        // A chain whose descriptor points at itself.
        let at = GuestAddress(d.tx.desc + 16 * u64::from(d.tx.next_desc));
        let me = d.tx.next_desc;
        d.tx.post(&d.mem, &[(h, PKT_HEADER_SIZE as u32, false)]);
        d.mem.write_obj(1u16, at.unchecked_add(12)).unwrap();
        d.mem.write_obj(me, at.unchecked_add(14)).unwrap();
        // Someone else's CID: dropped without an answer.
        d.send_from(7, 1, 2, OP_REQUEST, &[]);
        // A packet for a connection that does not exist: RST.
        d.send(5, 6, OP_RW, b"hello");
        assert!(m.step().is_ok());
        assert_eq!(d.tx.take_used(&d.mem).len(), 7, "every chain was returned");
        let got = d.received(&posted);
        let rsts: Vec<u32> = got
            .iter()
            .filter(|h| op_of(h) == OP_RST)
            .map(dst_port_of)
            .collect();
        assert!(rsts.contains(&5), "{rsts:?}");
        assert!(!m.interrupt.device_needs_reset());
        assert!(!m.broken);
    }

    #[test]
    fn a_guest_past_its_credit_is_reset() {
        let (mut d, mut m) = Driver::new();
        // A host listener that never reads.
        let listener = UnixListener::bind(d.dir.join("v.sock_9")).unwrap();
        let posted = d.post_rx(64);
        d.send(100, 9, OP_REQUEST, &[]);
        assert!(m.step().is_ok());
        let (host, _) = listener.accept().unwrap();
        assert_eq!(op_of(&d.received(&posted)[0]), OP_RESPONSE);
        let chunk = vec![0x5au8; MAX_PKT_DATA as usize];
        // The host socket's buffer plus the device's 256 KiB, and then some.
        for _ in 0..64 {
            d.send(100, 9, OP_RW, &chunk);
        }
        // What the TX notify does.
        m.tx_pending = true;
        for _ in 0..4 {
            assert!(m.step().is_ok());
        }
        let ops: Vec<u16> = d.received(&posted).iter().map(op_of).collect();
        assert!(ops.contains(&OP_RST), "{ops:?}");
        let key = Key {
            local_port: 9,
            peer_port: 100,
        };
        assert!(!m.conns.contains_key(&key), "the connection is gone");
        // The host sees the bytes that fit, then EOF.
        host.set_nonblocking(false).unwrap();
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 20];
        let mut host = host;
        loop {
            match host.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(total > 0 && total < 64 * chunk.len(), "{total}");
    }

    #[test]
    fn host_data_reaches_a_guest_connection_on_the_credit_of_its_request() {
        let (mut d, mut m) = Driver::new();
        let listener = UnixListener::bind(d.dir.join("v.sock_9")).unwrap();
        let posted = d.post_rx(8);
        d.send(100, 9, OP_REQUEST, &[]);
        assert!(m.step().is_ok());
        let (mut host, _) = listener.accept().unwrap();
        assert_eq!(op_of(&d.received(&posted)[0]), OP_RESPONSE);
        host.write_all(b"hello").unwrap();
        let key = Key {
            local_port: 9,
            peer_port: 100,
        };
        let token = m.conns[&key].token;
        m.stream_event(token, EventSet::IN);
        assert!(m.step().is_ok());
        let used = d.rx.take_used(&d.mem);
        assert_eq!(used.len(), 1, "{used:?}");
        let (id, len) = used[0];
        let h: PacketHeader = d
            .mem
            .read_obj(GuestAddress(posted[id as usize / 2]))
            .unwrap();
        assert_eq!(op_of(&h), OP_RW, "the REQUEST's buf_alloc is credit enough");
        assert_eq!(len as usize, PKT_HEADER_SIZE + 5);
        // The data buffer follows its header in the test allocator.
        let mut data = [0u8; 5];
        d.mem
            .read_slice(&mut data, GuestAddress(posted[id as usize / 2] + 64))
            .unwrap();
        assert_eq!(&data, b"hello");
    }

    #[test]
    fn a_guest_connection_takes_its_credit_from_the_request() {
        let (mut d, mut m) = Driver::new();
        let listener = UnixListener::bind(d.dir.join("v.sock_9")).unwrap();
        let posted = d.post_rx(8);
        // The REQUEST says the guest has 64 KiB of buffer (see `header`).
        d.send(100, 9, OP_REQUEST, &[]);
        assert!(m.step().is_ok());
        let (mut host, _) = listener.accept().unwrap();
        let ops: Vec<u16> = d.received(&posted).iter().map(op_of).collect();
        assert_eq!(ops, [OP_RESPONSE], "no CREDIT_REQUEST before any data");
        // Host data flows at once, within that credit, unasked.
        host.write_all(b"hello guest").unwrap();
        let mut ops = Vec::new();
        let mut events = vec![EpollEvent::default(); 8];
        for _ in 0..100 {
            let n = m.epoll.wait(10, &mut events).unwrap();
            for ev in &events[..n] {
                m.stream_event(ev.data(), ev.event_set());
            }
            assert!(m.step().is_ok());
            ops.extend(d.received(&posted).iter().map(op_of));
            if !ops.is_empty() {
                break;
            }
        }
        assert_eq!(ops, [OP_RW]);
    }

    #[test]
    fn a_partial_connect_line_waits_without_spinning() {
        let (d, mut m) = Driver::new();
        let mut host = UnixStream::connect(d.dir.join("v.sock")).unwrap();
        host.write_all(b"CONNECT 12").unwrap();
        m.accept();
        let mut events = vec![EpollEvent::default(); 8];
        let n = m.epoll.wait(100, &mut events).unwrap();
        assert_eq!(n, 1, "the first bytes are reported");
        m.stream_event(events[0].data(), events[0].event_set());
        assert_eq!(m.handshakes.len(), 1, "still waiting for the newline");
        assert_eq!(m.epoll.wait(0, &mut events).unwrap(), 0, "and not again");
        host.write_all(b"34\n").unwrap();
        let n = m.epoll.wait(100, &mut events).unwrap();
        assert_eq!(n, 1, "the rest of the line is");
        m.stream_event(events[0].data(), events[0].event_set());
        assert!(m.handshakes.is_empty());
        let c = m
            .conns
            .values()
            .next()
            .expect("a connection to guest port 1234");
        assert_eq!(c.state, State::Connecting);
        assert_eq!(
            m.replies.back().map(|r| (r.key.peer_port, r.op)),
            Some((1234, OP_REQUEST))
        );
    }

    #[test]
    fn an_invalid_avail_index_needs_a_reset() {
        let (d, mut m) = Driver::new();
        // avail.idx more than a queue ahead of what the device has seen.
        d.mem
            .write_obj(QSIZE + 5, GuestAddress(d.tx.avail + 2))
            .unwrap();
        match m.step() {
            Err(Fatal(why)) => assert!(why.contains("TX available ring"), "{why}"),
            Ok(()) => panic!("an impossible avail index was accepted"),
        }
    }
}
