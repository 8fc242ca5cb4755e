//! Accepts gRPC clients that send a unix socket path as `:authority`.
//!
//! grpc-go before the fix kubelet 1.27 carries (and crictl 1.26 still
//! ships) sets the HTTP/2 `:authority` of a unix-socket call to the socket's
//! path, e.g. `/run/vmpod/vmpod.sock`. That is not a valid authority, and the
//! h2 crate under tonic resets every such stream with PROTOCOL_ERROR, so
//! those clients could not talk to vmpod at all. containerd (grpc-go) never
//! notices because its server does not validate.
//!
//! Each accepted connection is therefore relayed through this module: the
//! client-to-server direction is parsed frame by frame, and every header
//! block (HEADERS plus CONTINUATION) is HPACK-decoded, its `:authority`
//! replaced by `localhost` when it is not a valid authority, and re-encoded.
//! Everything else passes through untouched. The relay keeps one HPACK
//! decoder (the client's dynamic table) and one encoder (the server's view)
//! per connection, as HTTP/2 requires.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The server's SETTINGS_MAX_FRAME_SIZE, left at the protocol default.
const MAX_FRAME: usize = 16 * 1024;
/// A header block larger than this is hostile, not a gRPC request.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Buffer between the relay and the in-process server.
const PIPE: usize = 256 * 1024;

/// Relays `client` to a new in-process stream, returned for the server.
pub fn relay<S>(client: S) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (server_side, ours) = tokio::io::duplex(PIPE);
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut ours_rd, mut ours_wr) = tokio::io::split(ours);
    tokio::spawn(async move {
        if let Err(e) = rewrite_client_stream(&mut client_rd, &mut ours_wr).await {
            tracing::debug!(error = %e, "CRI connection closed");
        }
        let _ = ours_wr.shutdown().await;
    });
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut ours_rd, &mut client_wr).await;
        let _ = client_wr.shutdown().await;
    });
    server_side
}

/// Copies the client's half of an HTTP/2 connection, fixing header blocks.
async fn rewrite_client_stream<R, W>(rd: &mut R, wr: &mut W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; PREFACE.len()];
    rd.read_exact(&mut preface).await?;
    wr.write_all(&preface).await?;
    if preface != PREFACE {
        // Not HTTP/2 with prior knowledge: let the server refuse it.
        tokio::io::copy(rd, wr).await?;
        return Ok(());
    }
    let mut fixer = HeaderFixer::default();
    loop {
        let mut head = [0u8; 9];
        match rd.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        if len > MAX_HEADER_BLOCK {
            return Err(std::io::Error::other(format!("frame of {len} bytes")));
        }
        let mut payload = vec![0u8; len];
        rd.read_exact(&mut payload).await?;
        let frame = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        };
        for out in fixer.push(frame)? {
            wr.write_all(&out).await?;
        }
        wr.flush().await?;
    }
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// A header block being collected across HEADERS + CONTINUATION frames.
struct Pending {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

#[derive(Default)]
struct HeaderFixer {
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    pending: Option<Pending>,
}

impl HeaderFixer {
    /// Takes one frame from the client; returns the bytes to send on.
    fn push(&mut self, f: Frame) -> std::io::Result<Vec<Vec<u8>>> {
        let bad = |m: &str| std::io::Error::other(m.to_string());
        match (f.kind, self.pending.as_mut()) {
            (FRAME_HEADERS, None) => {
                let mut body = &f.payload[..];
                let mut pad = 0usize;
                if f.flags & FLAG_PADDED != 0 {
                    let (&p, rest) = body
                        .split_first()
                        .ok_or_else(|| bad("short padded HEADERS"))?;
                    pad = usize::from(p);
                    body = rest;
                }
                let priority = if f.flags & FLAG_PRIORITY != 0 {
                    if body.len() < 5 {
                        return Err(bad("short HEADERS priority"));
                    }
                    let mut p = [0u8; 5];
                    p.copy_from_slice(&body[..5]);
                    body = &body[5..];
                    Some(p)
                } else {
                    None
                };
                let body = body
                    .get(..body.len().saturating_sub(pad))
                    .filter(|_| pad <= body.len())
                    .ok_or_else(|| bad("HEADERS padding longer than the frame"))?;
                self.pending = Some(Pending {
                    stream: f.stream,
                    flags: f.flags,
                    priority,
                    block: body.to_vec(),
                });
                if f.flags & FLAG_END_HEADERS != 0 {
                    return self.finish();
                }
                Ok(Vec::new())
            }
            (FRAME_CONTINUATION, Some(p)) if p.stream == f.stream => {
                if p.block.len() + f.payload.len() > MAX_HEADER_BLOCK {
                    return Err(bad("header block too large"));
                }
                p.block.extend_from_slice(&f.payload);
                if f.flags & FLAG_END_HEADERS != 0 {
                    return self.finish();
                }
                Ok(Vec::new())
            }
            // Anything else in the middle of a header block is a protocol
            // error the server will report; pass it on unchanged.
            _ => Ok(vec![raw(f.kind, f.flags, f.stream, &f.payload)]),
        }
    }

    fn finish(&mut self) -> std::io::Result<Vec<Vec<u8>>> {
        let Some(p) = self.pending.take() else {
            return Ok(Vec::new());
        };
        let headers = self
            .decoder
            .decode(&p.block)
            .map_err(|e| std::io::Error::other(format!("HPACK: {e:?}")))?;
        let fixed: Vec<(Vec<u8>, Vec<u8>)> = headers
            .into_iter()
            .map(|(name, value)| {
                if name == b":authority" && !valid_authority(&value) {
                    (name, b"localhost".to_vec())
                } else {
                    (name, value)
                }
            })
            .collect();
        let block = self
            .encoder
            .encode(fixed.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut first = Vec::with_capacity(block.len() + 5);
        if let Some(pr) = p.priority {
            first.extend_from_slice(&pr);
        }
        let room = MAX_FRAME - first.len();
        let (head, mut rest) = block.split_at(block.len().min(room));
        first.extend_from_slice(head);
        let keep = p.flags & (FLAG_END_STREAM | FLAG_PRIORITY);
        let mut out = Vec::new();
        let end = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        out.push(raw(FRAME_HEADERS, keep | end, p.stream, &first));
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = tail;
            let end = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
            out.push(raw(FRAME_CONTINUATION, end, p.stream, chunk));
        }
        Ok(out)
    }
}

fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut v = Vec::with_capacity(9 + len);
    v.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    v.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// `host[:port]` as h2 accepts it: no path, no percent-escapes, no spaces.
fn valid_authority(v: &[u8]) -> bool {
    !v.is_empty()
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b".-_:[]@~!$&'()*+,;=".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_frame(enc: &mut loona_hpack::Encoder, authority: &[u8], flags: u8) -> Frame {
        let block = enc.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (&b":scheme"[..], &b"http"[..]),
            (&b":authority"[..], authority),
            (&b":path"[..], &b"/runtime.v1.RuntimeService/Version"[..]),
            (&b"content-type"[..], &b"application/grpc"[..]),
        ]);
        Frame {
            kind: FRAME_HEADERS,
            flags,
            stream: 1,
            payload: block,
        }
    }

    fn decode_out(dec: &mut loona_hpack::Decoder, frames: &[Vec<u8>]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut block = Vec::new();
        for f in frames {
            let kind = f[3];
            assert!(kind == FRAME_HEADERS || kind == FRAME_CONTINUATION);
            let flags = f[4];
            let mut p = &f[9..];
            if kind == FRAME_HEADERS && flags & FLAG_PRIORITY != 0 {
                p = &p[5..];
            }
            block.extend_from_slice(p);
        }
        dec.decode(&block).unwrap()
    }

    #[test]
    fn socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        let mut client = loona_hpack::Encoder::new();
        let mut fixer = HeaderFixer::default();
        let mut server = loona_hpack::Decoder::new();
        for (auth, want) in [
            (&b"/run/vmpod/vmpod.sock"[..], &b"localhost"[..]),
            (&b"%2Frun%2Fvmpod.sock"[..], &b"localhost"[..]),
            (&b"localhost"[..], &b"localhost"[..]),
            (&b"127.0.0.1:10010"[..], &b"127.0.0.1:10010"[..]),
        ] {
            let out = fixer
                .push(headers_frame(
                    &mut client,
                    auth,
                    FLAG_END_HEADERS | FLAG_END_STREAM,
                ))
                .unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0][4] & FLAG_END_STREAM, FLAG_END_STREAM);
            let h = decode_out(&mut server, &out);
            let a = h.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(a.1, want);
            assert!(
                h.iter()
                    .any(|(n, v)| n == b":path" && v == b"/runtime.v1.RuntimeService/Version")
            );
        }
    }

    #[test]
    fn continuation_padding_and_priority() {
        let mut client = loona_hpack::Encoder::new();
        let f = headers_frame(&mut client, b"/x.sock", 0);
        let (a, b) = f.payload.split_at(f.payload.len() / 2);
        // HEADERS with padding and priority, then a CONTINUATION.
        let mut payload = vec![3u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 15]);
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut fixer = HeaderFixer::default();
        let out = fixer
            .push(Frame {
                kind: FRAME_HEADERS,
                flags: FLAG_PADDED | FLAG_PRIORITY,
                stream: 3,
                payload,
            })
            .unwrap();
        assert!(out.is_empty());
        let out = fixer
            .push(Frame {
                kind: FRAME_CONTINUATION,
                flags: FLAG_END_HEADERS,
                stream: 3,
                payload: b.to_vec(),
            })
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0][4] & FLAG_PRIORITY, FLAG_PRIORITY);
        assert_eq!(out[0][4] & FLAG_PADDED, 0);
        assert_eq!(&out[0][9..14], &[0, 0, 0, 0, 15]);
        let h = decode_out(&mut loona_hpack::Decoder::new(), &out);
        assert!(
            h.iter()
                .any(|(n, v)| n == b":authority" && v == b"localhost")
        );
    }

    #[test]
    fn other_frames_pass_through_and_garbage_is_refused() {
        let mut fixer = HeaderFixer::default();
        let data = Frame {
            kind: 0,
            flags: 1,
            stream: 1,
            payload: b"abc".to_vec(),
        };
        assert_eq!(fixer.push(data).unwrap(), vec![raw(0, 1, 1, b"abc")]);
        let bad = Frame {
            kind: FRAME_HEADERS,
            flags: FLAG_PADDED | FLAG_END_HEADERS,
            stream: 1,
            payload: vec![9, 1],
        };
        assert!(fixer.push(bad).is_err());
    }
}
