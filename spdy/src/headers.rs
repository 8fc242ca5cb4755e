//! Name/value header blocks (SPDY/3 §2.6.10): their uncompressed layout and
//! the zlib contexts that compress them.
//!
//! SPDY compresses every header block sent in one direction with a single
//! zlib stream, primed with a fixed dictionary and ended with a sync flush
//! after each block. A block can therefore only be read by a context that has
//! read every earlier block of that direction, in order: the contexts live in
//! [`crate::frame::Codec`], and a block that fails to decode leaves the
//! session unusable.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::Headers;
use crate::frame::{FrameError, Limits};

/// The dictionary both zlib contexts start from (SPDY/3 §2.6.10.1). It is a
/// protocol constant: a peer's inflater rejects our blocks unless it is
/// byte-for-byte the published one (zlib checks its Adler-32,
/// [`DICTIONARY_ADLER32`]). Each entry below is one 32-bit length and the
/// string it prefixes, then a run of raw strings.
pub const DICTIONARY: &[u8; 1423] = b"\
    \0\0\0\x07options\
    \0\0\0\x04head\
    \0\0\0\x04post\
    \0\0\0\x03put\
    \0\0\0\x06delete\
    \0\0\0\x05trace\
    \0\0\0\x06accept\
    \0\0\0\x0eaccept-charset\
    \0\0\0\x0faccept-encoding\
    \0\0\0\x0faccept-language\
    \0\0\0\x0daccept-ranges\
    \0\0\0\x03age\
    \0\0\0\x05allow\
    \0\0\0\x0dauthorization\
    \0\0\0\x0dcache-control\
    \0\0\0\x0aconnection\
    \0\0\0\x0ccontent-base\
    \0\0\0\x10content-encoding\
    \0\0\0\x10content-language\
    \0\0\0\x0econtent-length\
    \0\0\0\x10content-location\
    \0\0\0\x0bcontent-md5\
    \0\0\0\x0dcontent-range\
    \0\0\0\x0ccontent-type\
    \0\0\0\x04date\
    \0\0\0\x04etag\
    \0\0\0\x06expect\
    \0\0\0\x07expires\
    \0\0\0\x04from\
    \0\0\0\x04host\
    \0\0\0\x08if-match\
    \0\0\0\x11if-modified-since\
    \0\0\0\x0dif-none-match\
    \0\0\0\x08if-range\
    \0\0\0\x13if-unmodified-since\
    \0\0\0\x0dlast-modified\
    \0\0\0\x08location\
    \0\0\0\x0cmax-forwards\
    \0\0\0\x06pragma\
    \0\0\0\x12proxy-authenticate\
    \0\0\0\x13proxy-authorization\
    \0\0\0\x05range\
    \0\0\0\x07referer\
    \0\0\0\x0bretry-after\
    \0\0\0\x06server\
    \0\0\0\x02te\
    \0\0\0\x07trailer\
    \0\0\0\x11transfer-encoding\
    \0\0\0\x07upgrade\
    \0\0\0\x0auser-agent\
    \0\0\0\x04vary\
    \0\0\0\x03via\
    \0\0\0\x07warning\
    \0\0\0\x10www-authenticate\
    \0\0\0\x06method\
    \0\0\0\x03get\
    \0\0\0\x06status\
    \0\0\0\x06200 OK\
    \0\0\0\x07version\
    \0\0\0\x08HTTP/1.1\
    \0\0\0\x03url\
    \0\0\0\x06public\
    \0\0\0\x0aset-cookie\
    \0\0\0\x0akeep-alive\
    \0\0\0\x06origin\
    100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
    203 Non-Authoritative Information\
    204 No Content\
    301 Moved Permanently\
    400 Bad Request\
    401 Unauthorized\
    403 Forbidden\
    404 Not Found\
    500 Internal Server Error\
    501 Not Implemented\
    503 Service Unavailable\
    Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec\x20\
    00:00:00\x20\
    Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
    chunked,text/html,image/png,image/jpg,image/gif,\
    application/xml,application/xhtml+xml,text/plain,text/javascript,\
    publicprivatemax-age=gzip,deflate,sdch\
    charset=utf-8charset=iso-8859-1,utf-,*,enq=0.\
";

/// Adler-32 of [`DICTIONARY`], as a zlib stream names it in its header.
pub const DICTIONARY_ADLER32: u32 = 0xe3c6_a7c2;

/// Headers that SPDY forbids (§3.2.1, §3.2.2). Go's framer rejects a frame
/// carrying one as a read error, which ends the Go side's whole connection,
/// so they are refused before they are sent.
const FORBIDDEN: [&str; 5] = [
    "connection",
    "host",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
];

/// Checks that `headers` can be sent. Names are lowercased when sent, so
/// case does not matter here; what cannot be fixed up is refused.
pub fn validate(headers: &Headers) -> Result<(), FrameError> {
    for (name, _) in headers {
        if name.is_empty() {
            return Err(FrameError::EmptyHeaderName);
        }
        if name.bytes().any(|b| b == 0) {
            return Err(FrameError::InvalidHeaderName(name.clone()));
        }
        let lower = name.to_ascii_lowercase();
        if FORBIDDEN.contains(&lower.as_str()) {
            return Err(FrameError::ForbiddenHeader(lower));
        }
    }
    Ok(())
}

/// Lays out `headers` uncompressed: a 32-bit pair count, then each name and
/// value behind a 32-bit length. Names are lowercased (Go's reader rejects
/// any other case) and repeated names are merged into one NUL-joined value,
/// because SPDY allows each name once.
pub fn serialize(headers: &Headers, out: &mut Vec<u8>) -> Result<(), FrameError> {
    validate(headers)?;
    let mut merged: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                existing.push('\0');
                existing.push_str(value);
            }
            None => merged.push((name, value.clone())),
        }
    }
    put_len(out, merged.len())?;
    for (name, value) in &merged {
        put_len(out, name.len())?;
        out.extend_from_slice(name.as_bytes());
        put_len(out, value.len())?;
        out.extend_from_slice(value.as_bytes());
    }
    Ok(())
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), FrameError> {
    let len =
        u32::try_from(len).map_err(|_| FrameError::Unencodable("a header longer than 4 GiB"))?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Reads an uncompressed header block, refusing what SPDY forbids (empty,
/// uppercase or repeated names) and what exceeds `limits`.
pub fn parse(block: &[u8], limits: &Limits) -> Result<Headers, FrameError> {
    let mut rest = block;
    let count = take_u32(&mut rest, "pair count")?;
    if count as usize > limits.max_headers {
        return Err(FrameError::TooManyHeaders {
            count,
            limit: limits.max_headers,
        });
    }
    let mut headers: Headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = take_string(&mut rest, "name")?;
        if name.is_empty() {
            return Err(FrameError::EmptyHeaderName);
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(FrameError::UppercaseHeaderName(name));
        }
        if name.bytes().any(|b| b == 0) {
            return Err(FrameError::InvalidHeaderName(name));
        }
        if headers.iter().any(|(n, _)| *n == name) {
            return Err(FrameError::DuplicateHeader(name));
        }
        let value = take_string(&mut rest, "value")?;
        headers.push((name, value));
    }
    if !rest.is_empty() {
        return Err(FrameError::InvalidHeaderBlock(format!(
            "{} bytes follow the last of {count} pairs",
            rest.len()
        )));
    }
    Ok(headers)
}

fn take_u32(rest: &mut &[u8], what: &str) -> Result<u32, FrameError> {
    let Some((head, tail)) = rest.split_first_chunk::<4>() else {
        return Err(FrameError::InvalidHeaderBlock(format!(
            "block ends inside the length of a {what}"
        )));
    };
    *rest = tail;
    Ok(u32::from_be_bytes(*head))
}

fn take_string(rest: &mut &[u8], what: &str) -> Result<String, FrameError> {
    let len = take_u32(rest, what)? as usize;
    if len > rest.len() {
        return Err(FrameError::InvalidHeaderBlock(format!(
            "a {what} of {len} bytes runs past the block's end ({} left)",
            rest.len()
        )));
    }
    let (bytes, tail) = rest.split_at(len);
    *rest = tail;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| FrameError::InvalidHeaderBlock(format!("a {what} is not UTF-8")))
}

/// The compressing half: one zlib stream for every block we send.
pub struct Deflater {
    z: Compress,
}

impl Deflater {
    pub fn new() -> Result<Self, FrameError> {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(DICTIONARY)
            .map_err(|e| FrameError::Compression(format!("priming the compressor: {e}")))?;
        Ok(Deflater { z })
    }

    /// Appends `block` compressed to `out`, ending with a sync flush so the
    /// peer can decode it without waiting for more.
    pub fn compress(&mut self, block: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(block.len() - pos + 64);
            }
            let before = self.z.total_in();
            self.z
                .compress_vec(&block[pos..], out, FlushCompress::Sync)
                .map_err(|e| FrameError::Compression(format!("compressing: {e}")))?;
            pos += usize::try_from(self.z.total_in() - before).unwrap_or(usize::MAX);
            // zlib has finished the flush once it returns with room to spare.
            if pos >= block.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

/// The decompressing half: one zlib stream for every block we receive.
pub struct Inflater {
    z: Decompress,
}

impl Inflater {
    pub fn new() -> Self {
        Inflater {
            z: Decompress::new(true),
        }
    }

    /// Decompresses one block, refusing output beyond `limit` bytes.
    pub fn decompress(&mut self, block: &[u8], limit: usize) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(limit.min(block.len().saturating_mul(4) + 256) + 1);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(FrameError::HeaderBlockTooLarge { limit });
                }
                out.reserve_exact(out.len().max(256).min(limit + 1 - out.len()));
            }
            let (in_before, out_before) = (self.z.total_in(), self.z.total_out());
            let status = self
                .z
                .decompress_vec(&block[pos..], &mut out, FlushDecompress::Sync);
            pos += usize::try_from(self.z.total_in() - in_before).unwrap_or(usize::MAX);
            let progressed = self.z.total_in() != in_before || self.z.total_out() != out_before;
            match status {
                Ok(Status::StreamEnd) => {
                    return Err(FrameError::Compression(
                        "the peer ended its header zlib stream, which SPDY never does".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ADLER32) => {
                        self.z.set_dictionary(DICTIONARY).map_err(|e| {
                            FrameError::Compression(format!("priming the decompressor: {e}"))
                        })?;
                        continue;
                    }
                    Some(other) => {
                        return Err(FrameError::Compression(format!(
                            "the peer compresses with dictionary {other:#010x}, not SPDY/3's"
                        )));
                    }
                    None => return Err(FrameError::Compression(e.to_string())),
                },
            }
            if out.len() > limit {
                return Err(FrameError::HeaderBlockTooLarge { limit });
            }
            if pos >= block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if !progressed && out.len() < out.capacity() {
                return Err(FrameError::Compression(format!(
                    "zlib stalled with {} of {} bytes unread",
                    block.len() - pos,
                    block.len()
                )));
            }
        }
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}
