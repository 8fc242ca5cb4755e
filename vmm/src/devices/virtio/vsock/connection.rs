//! One vsock stream connection: its host socket, where it is in its life,
//! and the credit accounting in both directions (virtio 1.x 5.10.6.3).
//!
//! Guest→host: the device advertises [`BUF_ALLOC`] bytes per connection and
//! counts what it handed to the host socket in `fwd_cnt`. Bytes the host
//! socket would not take wait in `pending`, which the credit bounds: a guest
//! that sends more than it was granted is broken or hostile, and is reset.
//! Host→guest: the device reads from the host socket only as much as the
//! guest's last `buf_alloc` / `fwd_cnt` allow, and asks for credit when that
//! reaches zero, so the guest's buffers are never overrun and the host
//! socket's own buffer applies back-pressure to the host writer.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Guest→host bytes the device holds per connection when the host reader
/// is slow (as Firecracker and Linux's vhost-vsock default).
pub const BUF_ALLOC: u32 = 256 * 1024;
/// A credit update is volunteered once the guest's view of our free space
/// is this far behind; sooner would cost a packet per small write.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// A connection as both ends name it: the host-side port and the guest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: the REQUEST is queued or sent; the guest has not
    /// answered.
    Connecting,
    Established,
}

/// The guest sent more than the credit it was given.
#[derive(Debug)]
pub enum SendError {
    CreditExceeded { held: usize, more: usize },
    Io(io::Error),
}

pub struct Connection {
    pub stream: UnixStream,
    /// The epoll token of `stream`.
    pub token: u64,
    pub state: State,
    /// Guest→host bytes the host socket did not take yet.
    pending: VecDeque<u8>,
    fwd_cnt: Wrapping<u32>,
    /// The `fwd_cnt` the guest last heard.
    fwd_cnt_sent: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Host→guest bytes sent so far.
    rx_cnt: Wrapping<u32>,
    /// The host socket may have bytes (or its EOF) to read: epoll is
    /// edge-triggered, so this stays set until a read says EAGAIN.
    pub readable: bool,
    /// The host closed both directions (EPOLLHUP), not just its write side.
    pub host_hup: bool,
    /// The host's EOF was read and SHUTDOWN sent to the guest.
    pub host_eof: bool,
    /// The guest's SHUTDOWN flags so far.
    pub peer_shutdown: u32,
    /// An unanswered REQUEST, or a shutdown the guest never followed with
    /// RST, is given up at this time.
    pub deadline: Option<Instant>,
    /// Out of the guest's credit, with a CREDIT_REQUEST sent.
    pub wants_credit: bool,
}

impl Connection {
    pub fn new(stream: UnixStream, token: u64, state: State) -> Self {
        Connection {
            stream,
            token,
            state,
            pending: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            readable: true,
            host_hup: false,
            host_eof: false,
            peer_shutdown: 0,
            deadline: None,
            wants_credit: false,
        }
    }

    /// Every guest packet carries its current buffer space.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes the guest can take now. A guest whose counters claim more in
    /// flight than its buffer (lying or confused) gets nothing.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// `fwd_cnt` for an outgoing header; the guest now knows it.
    pub fn stamp_fwd_cnt(&mut self) -> u32 {
        self.fwd_cnt_sent = self.fwd_cnt;
        self.fwd_cnt.0
    }

    pub fn wants_credit_update(&self) -> bool {
        (self.fwd_cnt - self.fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Guest data for the host: written now as far as the socket takes it,
    /// the rest held, within the credit.
    pub fn send_to_host(&mut self, data: &[u8]) -> Result<(), SendError> {
        let mut data = data;
        if self.pending.is_empty() {
            let n = write_some(&mut self.stream, data).map_err(SendError::Io)?;
            self.fwd_cnt += Wrapping(n as u32);
            data = &data[n..];
        }
        if data.is_empty() {
            return Ok(());
        }
        if self.pending.len() + data.len() > BUF_ALLOC as usize {
            return Err(SendError::CreditExceeded {
                held: self.pending.len(),
                more: data.len(),
            });
        }
        self.pending.extend(data);
        Ok(())
    }

    /// Writes held data once the host socket is writable again.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            let n = write_some(&mut self.stream, front)?;
            if n == 0 {
                break;
            }
            self.pending.drain(..n);
            self.fwd_cnt += Wrapping(n as u32);
        }
        Ok(())
    }

    /// Reads host data for the guest; counts what was read as sent.
    pub fn read_from_host(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        self.rx_cnt += Wrapping(n as u32);
        Ok(n)
    }
}

/// Writes what the socket takes without blocking: 0 on EAGAIN.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    loop {
        return match stream.write(data) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Connection::new(a, 16, State::Established), b)
    }

    #[test]
    fn credit_follows_the_peer_counters_and_never_underflows() {
        let (mut c, mut host) = pair();
        assert_eq!(c.peer_credit(), 0, "no credit before the guest says so");
        c.update_peer_credit(4096, 0);
        assert_eq!(c.peer_credit(), 4096);
        host.write_all(&[7; 1000]).unwrap();
        let mut buf = [0u8; 4096];
        assert_eq!(c.read_from_host(&mut buf).unwrap(), 1000);
        assert_eq!(c.peer_credit(), 3096);
        c.update_peer_credit(4096, 1000);
        assert_eq!(c.peer_credit(), 4096);
        // A guest claiming to have consumed more than was sent is not
        // trusted with more than its buffer.
        c.update_peer_credit(4096, 5000);
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn held_data_is_bounded_by_the_advertised_buffer() {
        let (mut c, host) = pair();
        // Fill the host socket's buffer so everything else is held.
        let chunk = vec![1u8; 64 * 1024];
        loop {
            let before = c.pending.len();
            c.send_to_host(&chunk).unwrap();
            if c.pending.len() > before {
                break;
            }
        }
        while c.pending.len() + chunk.len() <= BUF_ALLOC as usize {
            c.send_to_host(&chunk).unwrap();
        }
        match c.send_to_host(&chunk) {
            Err(SendError::CreditExceeded { .. }) => {}
            other => panic!("expected CreditExceeded, got {other:?}"),
        }
        // Once the host reads, held bytes flow and fwd_cnt counts them.
        host.set_nonblocking(true).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        let mut host = host;
        let sent_before = c.fwd_cnt.0;
        while c.has_pending() {
            let _ = host.read(&mut sink);
            c.flush().unwrap();
        }
        assert!(c.fwd_cnt.0 > sent_before);
        assert!(c.wants_credit_update());
        c.stamp_fwd_cnt();
        assert!(!c.wants_credit_update());
    }
}
