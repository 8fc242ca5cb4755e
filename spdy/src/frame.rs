//! SPDY/3.1 frames and their wire encoding (SPDY/3 §2.2, §2.6, and the 3.1
//! session-level WINDOW_UPDATE). Pure and synchronous: [`Codec`] turns bytes
//! into [`Frame`]s and back, and the session does all I/O.
//!
//! Every length the peer sends is checked against [`Limits`] before anything
//! is buffered or allocated for it, so a frame header claiming 16 MiB is an
//! error at once rather than a wait for 16 MiB.
//!
//! Control frame types this crate does not know (NOOP from SPDY/2,
//! CREDENTIAL from SPDY/3) decode to [`Frame::Unknown`], which the spec says
//! to ignore. Keeping them as a frame, rather than skipping them inside
//! [`Codec::decode`], keeps "consumed bytes" honest for every call.

use bytes::Bytes;

use crate::Headers;
use crate::headers::{self, Deflater, Inflater};

/// The only protocol version spoken.
pub const VERSION: u16 = 3;

/// Control frame types (§2.6).
pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;

/// FLAG_FIN, on DATA, SYN_STREAM, SYN_REPLY and HEADERS.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL, on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// FLAG_SETTINGS_CLEAR_SETTINGS, on SETTINGS.
pub const FLAG_SETTINGS_CLEAR: u8 = 0x01;

/// SETTINGS ids (§2.6.4); only the initial window matters to a session.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// RST_STREAM status codes (§2.6.3).
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_INVALID_STREAM: u32 = 2;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_UNSUPPORTED_VERSION: u32 = 4;
pub const RST_CANCEL: u32 = 5;
pub const RST_INTERNAL_ERROR: u32 = 6;
pub const RST_FLOW_CONTROL_ERROR: u32 = 7;
pub const RST_STREAM_IN_USE: u32 = 8;
pub const RST_STREAM_ALREADY_CLOSED: u32 = 9;
pub const RST_FRAME_TOO_LARGE: u32 = 11;

/// GOAWAY status codes (§2.6.6).
pub const GOAWAY_OK: u32 = 0;
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;
pub const GOAWAY_INTERNAL_ERROR: u32 = 2;

/// The window every stream and the session start with (SPDY/3.1).
pub const DEFAULT_WINDOW_SIZE: u32 = 64 * 1024;

/// The largest value a 31-bit field (stream ids, window deltas) holds.
pub const MAX_31BIT: u32 = 0x7fff_ffff;
/// The largest frame payload a 24-bit length field describes.
pub const MAX_PAYLOAD: usize = 0x00ff_ffff;

const HEADER_LEN: usize = 8;

/// One SPDY frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_id: u32,
        /// 0 (highest) to 7 (lowest).
        priority: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        clear: bool,
        /// (flags, id, value) per setting.
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    /// Stream id 0 addresses the whole session (SPDY/3.1).
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    /// A control frame of a type this crate does not speak; to be ignored.
    /// It cannot be encoded.
    Unknown {
        kind: u16,
    },
}

impl Frame {
    /// The frame's name as the spec writes it, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::SynStream { .. } => "SYN_STREAM",
            Frame::SynReply { .. } => "SYN_REPLY",
            Frame::RstStream { .. } => "RST_STREAM",
            Frame::Settings { .. } => "SETTINGS",
            Frame::Ping { .. } => "PING",
            Frame::GoAway { .. } => "GOAWAY",
            Frame::Headers { .. } => "HEADERS",
            Frame::WindowUpdate { .. } => "WINDOW_UPDATE",
            Frame::Data { .. } => "DATA",
            Frame::Unknown { .. } => "unknown control frame",
        }
    }
}

fn type_name(kind: u16) -> &'static str {
    match kind {
        TYPE_SYN_STREAM => "SYN_STREAM",
        TYPE_SYN_REPLY => "SYN_REPLY",
        TYPE_RST_STREAM => "RST_STREAM",
        TYPE_SETTINGS => "SETTINGS",
        TYPE_PING => "PING",
        TYPE_GOAWAY => "GOAWAY",
        TYPE_HEADERS => "HEADERS",
        TYPE_WINDOW_UPDATE => "WINDOW_UPDATE",
        _ => "unknown control frame",
    }
}

/// What the decoder accepts from a peer. Each bound caps memory one frame
/// can make us hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest DATA payload. Go's spdystream sends one frame per write, and
    /// kubectl writes at most 32 KiB at a time.
    pub max_data_frame: usize,
    /// Largest control frame payload (the spec requires at least 8192).
    pub max_control_frame: usize,
    /// Largest header block after decompression; zlib can inflate a small
    /// frame a thousandfold, so the compressed size alone bounds nothing.
    pub max_header_block: usize,
    /// Most name/value pairs in one block.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_data_frame: 1 << 20,
            max_control_frame: 64 << 10,
            max_header_block: 64 << 10,
            max_headers: 128,
        }
    }
}

/// Why bytes could not be read as a frame, or a frame could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("control frame has SPDY version {0}; only version 3 is spoken")]
    UnsupportedVersion(u16),
    #[error("{kind} frame of {length} bytes exceeds the limit of {limit}")]
    TooLarge {
        kind: &'static str,
        length: usize,
        limit: usize,
    },
    #[error("{kind} frame is malformed: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error("{kind} frame has stream id 0, which only WINDOW_UPDATE may use")]
    ZeroStreamId { kind: &'static str },
    #[error("header block compression failed: {0}")]
    Compression(String),
    #[error("header block decompresses to more than {limit} bytes")]
    HeaderBlockTooLarge { limit: usize },
    #[error("header block holds {count} pairs, more than the limit of {limit}")]
    TooManyHeaders { count: u32, limit: usize },
    #[error("header block is malformed: {0}")]
    InvalidHeaderBlock(String),
    #[error("header name is empty")]
    EmptyHeaderName,
    #[error("header name {0:?} has uppercase letters, which SPDY forbids")]
    UppercaseHeaderName(String),
    #[error("header name {0:?} contains a NUL byte")]
    InvalidHeaderName(String),
    #[error("header name {0:?} appears twice; SPDY joins repeated values with NUL instead")]
    DuplicateHeader(String),
    #[error("header {0:?} may not be sent over SPDY")]
    ForbiddenHeader(String),
    #[error("cannot encode {0}")]
    Unencodable(&'static str),
}

/// Frame codec for one session. Holds the two header compression contexts,
/// which the spec makes session-wide: the deflater for every block we send,
/// the inflater for every block we receive. Both are created on first use,
/// so a codec used in one direction only carries one of them (a zlib
/// deflater is a quarter megabyte).
pub struct Codec {
    limits: Limits,
    deflater: Option<Deflater>,
    inflater: Option<Inflater>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("limits", &self.limits)
            .field("deflating", &self.deflater.is_some())
            .field("inflating", &self.inflater.is_some())
            .finish()
    }
}

impl Codec {
    pub fn new(limits: Limits) -> Self {
        Codec {
            limits,
            deflater: None,
            inflater: None,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Parses one frame from the front of `buf` if a whole frame is there:
    /// `Ok(Some((frame, consumed)))`, or `Ok(None)` when more bytes are
    /// needed. An error leaves the header decompressor in an unknown state,
    /// so the session must end.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        let length = usize::from(head[5]) << 16 | usize::from(head[6]) << 8 | usize::from(head[7]);
        let total = HEADER_LEN + length;

        if word & 0x8000_0000 == 0 {
            if length > self.limits.max_data_frame {
                return Err(FrameError::TooLarge {
                    kind: "DATA",
                    length,
                    limit: self.limits.max_data_frame,
                });
            }
            let stream_id = word & MAX_31BIT;
            if stream_id == 0 {
                return Err(FrameError::ZeroStreamId { kind: "DATA" });
            }
            if buf.len() < total {
                return Ok(None);
            }
            let frame = Frame::Data {
                stream_id,
                fin: flags & FLAG_FIN != 0,
                data: Bytes::copy_from_slice(&buf[HEADER_LEN..total]),
            };
            return Ok(Some((frame, total)));
        }

        let version = ((word >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let kind = (word & 0xffff) as u16;
        if length > self.limits.max_control_frame {
            return Err(FrameError::TooLarge {
                kind: type_name(kind),
                length,
                limit: self.limits.max_control_frame,
            });
        }
        if buf.len() < total {
            return Ok(None);
        }
        let frame = self.decode_control(kind, flags, &buf[HEADER_LEN..total])?;
        Ok(Some((frame, total)))
    }

    fn decode_control(
        &mut self,
        kind: u16,
        flags: u8,
        payload: &[u8],
    ) -> Result<Frame, FrameError> {
        let name = type_name(kind);
        let fin = flags & FLAG_FIN != 0;
        let frame = match kind {
            TYPE_SYN_STREAM => {
                min_len(name, payload, 10)?;
                let stream_id = stream_id(name, payload)?;
                let associated_id = be32(&payload[4..]) & MAX_31BIT;
                let priority = payload[8] >> 5;
                let headers = self.decode_headers(&payload[10..])?;
                Frame::SynStream {
                    stream_id,
                    associated_id,
                    priority,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers,
                }
            }
            TYPE_SYN_REPLY => {
                min_len(name, payload, 4)?;
                let stream_id = stream_id(name, payload)?;
                let headers = self.decode_headers(&payload[4..])?;
                Frame::SynReply {
                    stream_id,
                    fin,
                    headers,
                }
            }
            TYPE_HEADERS => {
                min_len(name, payload, 4)?;
                let stream_id = stream_id(name, payload)?;
                let headers = self.decode_headers(&payload[4..])?;
                Frame::Headers {
                    stream_id,
                    fin,
                    headers,
                }
            }
            TYPE_RST_STREAM => {
                exact_len(name, payload, 8)?;
                let stream_id = stream_id(name, payload)?;
                let status = be32(&payload[4..]);
                if status == 0 {
                    return Err(malformed(name, "status 0 is reserved".into()));
                }
                Frame::RstStream { stream_id, status }
            }
            TYPE_SETTINGS => {
                min_len(name, payload, 4)?;
                let count = be32(payload) as usize;
                let expected = count.checked_mul(8).and_then(|n| n.checked_add(4));
                if expected != Some(payload.len()) {
                    return Err(malformed(
                        name,
                        format!(
                            "{count} entries need {} bytes, the frame has {}",
                            count.saturating_mul(8).saturating_add(4),
                            payload.len()
                        ),
                    ));
                }
                let entries = payload[4..]
                    .chunks_exact(8)
                    .map(|e| {
                        let word = be32(e);
                        ((word >> 24) as u8, word & 0x00ff_ffff, be32(&e[4..]))
                    })
                    .collect();
                Frame::Settings {
                    clear: flags & FLAG_SETTINGS_CLEAR != 0,
                    entries,
                }
            }
            TYPE_PING => {
                exact_len(name, payload, 4)?;
                Frame::Ping { id: be32(payload) }
            }
            TYPE_GOAWAY => {
                exact_len(name, payload, 8)?;
                Frame::GoAway {
                    last_good_stream_id: be32(payload) & MAX_31BIT,
                    status: be32(&payload[4..]),
                }
            }
            TYPE_WINDOW_UPDATE => {
                exact_len(name, payload, 8)?;
                Frame::WindowUpdate {
                    stream_id: be32(payload) & MAX_31BIT,
                    delta: be32(&payload[4..]) & MAX_31BIT,
                }
            }
            _ => Frame::Unknown { kind },
        };
        Ok(frame)
    }

    fn decode_headers(&mut self, compressed: &[u8]) -> Result<Headers, FrameError> {
        let block = self
            .inflater
            .get_or_insert_with(Inflater::new)
            .decompress(compressed, self.limits.max_header_block)?;
        headers::parse(&block, &self.limits)
    }

    /// Appends `frame`'s encoding to `out`. On error `out` is left as it
    /// was; the deflater has only advanced if the error says so
    /// ([`FrameError::Compression`]), after which the codec must not be used.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let start = out.len();
        let result = self.encode_inner(frame, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn encode_inner(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let start = out.len();
        let flags = match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                check_stream_id(*stream_id)?;
                if data.len() > MAX_PAYLOAD {
                    return Err(FrameError::Unencodable("a DATA payload over 16 MiB"));
                }
                out.extend_from_slice(&stream_id.to_be_bytes());
                push_flags_len(out, flag(*fin, FLAG_FIN), data.len());
                out.extend_from_slice(data);
                return Ok(());
            }
            Frame::Unknown { .. } => {
                return Err(FrameError::Unencodable("a frame of unknown type"));
            }
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                fin,
                unidirectional,
                headers,
            } => {
                check_stream_id(*stream_id)?;
                if *associated_id > MAX_31BIT {
                    return Err(FrameError::Unencodable(
                        "an associated stream id over 31 bits",
                    ));
                }
                if *priority > 7 {
                    return Err(FrameError::Unencodable("a priority over 7"));
                }
                control_header(out, TYPE_SYN_STREAM);
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&associated_id.to_be_bytes());
                out.extend_from_slice(&[priority << 5, 0]);
                self.encode_headers(headers, out)?;
                flag(*fin, FLAG_FIN) | flag(*unidirectional, FLAG_UNIDIRECTIONAL)
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => {
                check_stream_id(*stream_id)?;
                control_header(out, TYPE_SYN_REPLY);
                out.extend_from_slice(&stream_id.to_be_bytes());
                self.encode_headers(headers, out)?;
                flag(*fin, FLAG_FIN)
            }
            Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                check_stream_id(*stream_id)?;
                control_header(out, TYPE_HEADERS);
                out.extend_from_slice(&stream_id.to_be_bytes());
                self.encode_headers(headers, out)?;
                flag(*fin, FLAG_FIN)
            }
            Frame::RstStream { stream_id, status } => {
                check_stream_id(*stream_id)?;
                if *status == 0 {
                    return Err(FrameError::Unencodable("RST_STREAM status 0"));
                }
                control_header(out, TYPE_RST_STREAM);
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&status.to_be_bytes());
                0
            }
            Frame::Settings { clear, entries } => {
                let count = u32::try_from(entries.len())
                    .map_err(|_| FrameError::Unencodable("more than 2^32 settings"))?;
                control_header(out, TYPE_SETTINGS);
                out.extend_from_slice(&count.to_be_bytes());
                for &(flags, id, value) in entries {
                    if id > 0x00ff_ffff {
                        return Err(FrameError::Unencodable("a setting id over 24 bits"));
                    }
                    out.extend_from_slice(&(u32::from(flags) << 24 | id).to_be_bytes());
                    out.extend_from_slice(&value.to_be_bytes());
                }
                flag(*clear, FLAG_SETTINGS_CLEAR)
            }
            Frame::Ping { id } => {
                control_header(out, TYPE_PING);
                out.extend_from_slice(&id.to_be_bytes());
                0
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                if *last_good_stream_id > MAX_31BIT {
                    return Err(FrameError::Unencodable(
                        "a last-good stream id over 31 bits",
                    ));
                }
                control_header(out, TYPE_GOAWAY);
                out.extend_from_slice(&last_good_stream_id.to_be_bytes());
                out.extend_from_slice(&status.to_be_bytes());
                0
            }
            Frame::WindowUpdate { stream_id, delta } => {
                if *stream_id > MAX_31BIT {
                    return Err(FrameError::Unencodable("a stream id over 31 bits"));
                }
                if *delta > MAX_31BIT {
                    return Err(FrameError::Unencodable("a window delta over 31 bits"));
                }
                control_header(out, TYPE_WINDOW_UPDATE);
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&delta.to_be_bytes());
                0
            }
        };

        let length = out.len() - start - HEADER_LEN;
        if length > MAX_PAYLOAD {
            return Err(FrameError::Unencodable("a control frame over 16 MiB"));
        }
        let word = u32::from(flags) << 24 | length as u32;
        out[start + 4..start + HEADER_LEN].copy_from_slice(&word.to_be_bytes());
        Ok(())
    }

    fn encode_headers(&mut self, headers: &Headers, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let mut block = Vec::new();
        headers::serialize(headers, &mut block)?;
        // Refuse before compressing: once the deflater has seen a block the
        // peer must see it too, so a block must not fail after that point.
        // Deflate adds at most a few bytes per 16 KiB plus a fixed overhead.
        if block.len() + block.len() / 1024 + 1024 > MAX_PAYLOAD - 10 {
            return Err(FrameError::Unencodable("a header block over 16 MiB"));
        }
        let deflater = match &mut self.deflater {
            Some(d) => d,
            None => self.deflater.insert(Deflater::new()?),
        };
        deflater.compress(&block, out)
    }
}

fn be32(bytes: &[u8]) -> u32 {
    match bytes.first_chunk::<4>() {
        Some(b) => u32::from_be_bytes(*b),
        None => 0,
    }
}

fn malformed(kind: &'static str, reason: String) -> FrameError {
    FrameError::Malformed { kind, reason }
}

fn min_len(kind: &'static str, payload: &[u8], min: usize) -> Result<(), FrameError> {
    if payload.len() < min {
        return Err(malformed(
            kind,
            format!(
                "payload of {} bytes is shorter than the {min} it needs",
                payload.len()
            ),
        ));
    }
    Ok(())
}

fn exact_len(kind: &'static str, payload: &[u8], len: usize) -> Result<(), FrameError> {
    if payload.len() != len {
        return Err(malformed(
            kind,
            format!("payload is {} bytes, not {len}", payload.len()),
        ));
    }
    Ok(())
}

fn stream_id(kind: &'static str, payload: &[u8]) -> Result<u32, FrameError> {
    let id = be32(payload) & MAX_31BIT;
    if id == 0 {
        return Err(FrameError::ZeroStreamId { kind });
    }
    Ok(id)
}

fn check_stream_id(id: u32) -> Result<(), FrameError> {
    if id == 0 {
        return Err(FrameError::Unencodable("stream id 0"));
    }
    if id > MAX_31BIT {
        return Err(FrameError::Unencodable("a stream id over 31 bits"));
    }
    Ok(())
}

fn flag(set: bool, bit: u8) -> u8 {
    if set { bit } else { 0 }
}

/// Writes a control frame's first word and a placeholder for flags and
/// length, which are known only once the payload is written.
fn control_header(out: &mut Vec<u8>, kind: u16) {
    out.extend_from_slice(
        &(0x8000_0000 | u32::from(VERSION) << 16 | u32::from(kind)).to_be_bytes(),
    );
    out.extend_from_slice(&[0; 4]);
}

fn push_flags_len(out: &mut Vec<u8>, flags: u8, len: usize) {
    // Callers have checked len <= MAX_PAYLOAD.
    let len = (len & MAX_PAYLOAD) as u32;
    out.extend_from_slice(&(u32::from(flags) << 24 | len).to_be_bytes());
}

#[cfg(test)]
mod tests;
