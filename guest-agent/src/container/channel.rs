//! The little protocol between the agent and its helper processes, over a
//! unix stream socket pair: length-prefixed frames of a tag and a payload.
//!
//! ```text
//! agent -> helper   Plan(bytes)            first thing, on the control socket
//! helper -> agent   Pid(pid)               the process that will be the container
//! agent -> helper   Ack                    registered with the reaper; helper may exit
//! init -> agent     Ready                  set up, waiting for Start (sync socket)
//! agent -> init     Start                  exec now
//! any -> agent      Error(code, message)   what failed, as a gRPC code and text
//! ```
//!
//! The sync socket is close-on-exec in the container process, so after
//! Start a clean EOF means the exec happened.

use std::io::{self, Read, Write};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// fd of the control socket in a helper.
pub const CTL_FD: i32 = 3;
/// fd of the container init's sync socket in the init helper.
pub const SYNC_FD: i32 = 4;

/// Frames are small; this only bounds what a confused peer makes us
/// allocate.
const MAX_FRAME: usize = 16 << 20;

const TAG_PLAN: u8 = 1;
const TAG_PID: u8 = 2;
const TAG_ACK: u8 = 3;
const TAG_READY: u8 = 4;
const TAG_START: u8 = 5;
const TAG_ERROR: u8 = 6;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Plan(Vec<u8>),
    Pid(i32),
    Ack,
    Ready,
    Start,
    /// `code` is a `tonic::Code` as i32.
    Error {
        code: i32,
        message: String,
    },
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        let (tag, payload): (u8, Vec<u8>) = match self {
            Msg::Plan(b) => (TAG_PLAN, b.clone()),
            Msg::Pid(pid) => (TAG_PID, pid.to_le_bytes().to_vec()),
            Msg::Ack => (TAG_ACK, Vec::new()),
            Msg::Ready => (TAG_READY, Vec::new()),
            Msg::Start => (TAG_START, Vec::new()),
            Msg::Error { code, message } => {
                let mut p = code.to_le_bytes().to_vec();
                p.extend_from_slice(message.as_bytes());
                (TAG_ERROR, p)
            }
        };
        let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(payload.len() + 5);
        out.extend_from_slice(&len.to_le_bytes());
        out.push(tag);
        out.extend_from_slice(&payload);
        out
    }

    fn decode(frame: &[u8]) -> io::Result<Msg> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let (&tag, payload) = frame.split_first().ok_or_else(|| bad("empty frame"))?;
        let int = |p: &[u8]| -> io::Result<i32> {
            let b: [u8; 4] = p
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| bad("short frame"))?;
            Ok(i32::from_le_bytes(b))
        };
        Ok(match tag {
            TAG_PLAN => Msg::Plan(payload.to_vec()),
            TAG_PID => Msg::Pid(int(payload)?),
            TAG_ACK => Msg::Ack,
            TAG_READY => Msg::Ready,
            TAG_START => Msg::Start,
            TAG_ERROR => Msg::Error {
                code: int(payload)?,
                message: String::from_utf8_lossy(&payload[4..]).into_owned(),
            },
            other => return Err(bad(&format!("unknown frame tag {other}"))),
        })
    }
}

fn frame_len(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_le_bytes(header) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad frame length {len}"),
        ));
    }
    Ok(len)
}

/// Blocking send (helper side).
pub fn send(w: &mut impl Write, msg: &Msg) -> io::Result<()> {
    w.write_all(&msg.encode())
}

/// Blocking receive (helper side); `None` on a clean EOF.
pub fn recv(r: &mut impl Read) -> io::Result<Option<Msg>> {
    let mut header = [0u8; 4];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut frame = vec![0u8; frame_len(header)?];
    r.read_exact(&mut frame)?;
    Msg::decode(&frame).map(Some)
}

/// Async send (agent side).
pub async fn send_async(w: &mut tokio::net::UnixStream, msg: &Msg) -> io::Result<()> {
    w.write_all(&msg.encode()).await
}

/// Async receive (agent side); `None` on a clean EOF.
pub async fn recv_async(r: &mut tokio::net::UnixStream) -> io::Result<Option<Msg>> {
    let mut header = [0u8; 4];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut frame = vec![0u8; frame_len(header)?];
    r.read_exact(&mut frame).await?;
    Msg::decode(&frame).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let msgs = [
            Msg::Plan(vec![1, 2, 3]),
            Msg::Pid(4242),
            Msg::Ack,
            Msg::Ready,
            Msg::Start,
            Msg::Error {
                code: 9,
                message: "exec: \"x\": nope".into(),
            },
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            send(&mut buf, m).unwrap();
        }
        let mut r = &buf[..];
        for m in &msgs {
            assert_eq!(recv(&mut r).unwrap().as_ref(), Some(m));
        }
        assert_eq!(recv(&mut r).unwrap(), None);
    }

    #[test]
    fn rejects_garbage() {
        let mut r = &[0u8, 0, 0, 0][..];
        assert!(recv(&mut r).is_err());
        let mut r = &[1u8, 0, 0, 0, 99][..];
        assert!(recv(&mut r).is_err());
        let mut r = &[3u8, 0, 0, 0, TAG_PID, 1][..];
        assert!(recv(&mut r).is_err());
    }
}
