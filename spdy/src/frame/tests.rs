use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex"))
        .collect()
}

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

fn decode_one(bytes: &[u8]) -> Frame {
    let mut codec = Codec::new(Limits::default());
    let (frame, used) = codec.decode(bytes).expect("decodes").expect("whole frame");
    assert_eq!(used, bytes.len());
    frame
}

fn encode_one(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    Codec::new(Limits::default())
        .encode(frame, &mut out)
        .expect("encodes");
    out
}

/// Frames without header blocks have one encoding; check it both ways.
#[test]
fn fixed_layouts_are_byte_exact() {
    let cases = [
        ("80 03 00 06 00 00 00 04 00 00 00 01", Frame::Ping { id: 1 }),
        (
            "80 03 00 03 00 00 00 08 00 00 00 05 00 00 00 03",
            Frame::RstStream {
                stream_id: 5,
                status: RST_REFUSED_STREAM,
            },
        ),
        (
            "80 03 00 04 01 00 00 0c 00 00 00 01 01 00 00 07 00 01 00 00",
            Frame::Settings {
                clear: true,
                entries: vec![(1, SETTINGS_INITIAL_WINDOW_SIZE, 65536)],
            },
        ),
        (
            "80 03 00 07 00 00 00 08 00 00 00 07 00 00 00 01",
            Frame::GoAway {
                last_good_stream_id: 7,
                status: GOAWAY_PROTOCOL_ERROR,
            },
        ),
        (
            "80 03 00 09 00 00 00 08 00 00 00 00 00 00 10 00",
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 4096,
            },
        ),
        (
            "00 00 00 05 01 00 00 03 61 62 63",
            Frame::Data {
                stream_id: 5,
                fin: true,
                data: Bytes::from_static(b"abc"),
            },
        ),
        (
            "00 00 00 02 00 00 00 00",
            Frame::Data {
                stream_id: 2,
                fin: false,
                data: Bytes::new(),
            },
        ),
    ];
    for (bytes, frame) in cases {
        let bytes = hex(bytes);
        assert_eq!(decode_one(&bytes), frame, "decoding {bytes:02x?}");
        assert_eq!(encode_one(&frame), bytes, "encoding {frame:?}");
    }
}

#[test]
fn reserved_bits_are_ignored_on_decode() {
    // The top bit of stream ids and deltas is reserved.
    let frame = decode_one(&hex("80 03 00 09 00 00 00 08 80 00 00 03 80 00 00 10"));
    assert_eq!(
        frame,
        Frame::WindowUpdate {
            stream_id: 3,
            delta: 16
        }
    );
}

/// SYN_STREAMs compressed by C zlib (Python's zlib, level 9, SPDY/3
/// dictionary), the second depending on the first's context: our inflater
/// must read another implementation's stream.
#[test]
fn decodes_blocks_compressed_by_c_zlib() {
    let first = hex(
        "80030001000000310000000100000000000078f9e3c6a7c202e50e703a2b294a4dcc851625aca9a0808614cb45e01c6061606100000000ffff",
    );
    let second = hex("800300010000001800000003000000000000c2aa1454ea24a2ab04000000ffff");
    let mut codec = Codec::new(Limits::default());
    let mut bytes = first.clone();
    bytes.extend_from_slice(&second);
    let (frame, used) = codec.decode(&bytes).unwrap().unwrap();
    assert_eq!(used, first.len());
    assert_eq!(
        frame,
        Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: h(&[("streamtype", "error"), ("port", "8080")]),
        }
    );
    let (frame, _) = codec.decode(&bytes[used..]).unwrap().unwrap();
    assert_eq!(
        frame,
        Frame::SynStream {
            stream_id: 3,
            associated_id: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: h(&[("streamtype", "data"), ("port", "8080")]),
        }
    );
}

#[test]
fn dictionary_is_the_published_one() {
    assert_eq!(headers::DICTIONARY.len(), 1423);
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in headers::DICTIONARY {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    assert_eq!(b << 16 | a, headers::DICTIONARY_ADLER32);
    assert!(headers::DICTIONARY.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
    assert!(headers::DICTIONARY.ends_with(b",utf-,*,enq=0."));
}

#[test]
fn first_header_block_names_the_dictionary() {
    let bytes = encode_one(&Frame::SynReply {
        stream_id: 1,
        fin: false,
        headers: vec![],
    });
    // zlib header (deflate, 32 KiB window, FDICT), then the dictionary id.
    let block = &bytes[12..];
    assert_eq!(block[0], 0x78);
    assert_ne!(block[1] & 0x20, 0, "FDICT set");
    assert_eq!(u16::from_be_bytes([block[0], block[1]]) % 31, 0);
    assert_eq!(block[2..6], headers::DICTIONARY_ADLER32.to_be_bytes());
    // A sync flush ends every block.
    assert!(bytes.ends_with(&[0, 0, 0xff, 0xff]));
}

fn every_kind() -> Vec<Frame> {
    vec![
        Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 3,
            fin: false,
            unidirectional: false,
            headers: h(&[("streamtype", "stdin"), ("x-multi", "a\0b")]),
        },
        Frame::SynStream {
            stream_id: 0x7fff_ffff,
            associated_id: 9,
            priority: 7,
            fin: true,
            unidirectional: true,
            headers: vec![],
        },
        Frame::SynReply {
            stream_id: 1,
            fin: true,
            headers: h(&[(":status", "200"), ("empty", "")]),
        },
        Frame::RstStream {
            stream_id: 1,
            status: RST_CANCEL,
        },
        Frame::Settings {
            clear: false,
            entries: vec![],
        },
        Frame::Settings {
            clear: false,
            entries: vec![(0, 4, 100), (2, 0x00ff_ffff, u32::MAX)],
        },
        Frame::Ping { id: 0xffff_ffff },
        Frame::GoAway {
            last_good_stream_id: 0,
            status: GOAWAY_OK,
        },
        Frame::Headers {
            stream_id: 3,
            fin: true,
            headers: h(&[("trailer-ish", "x")]),
        },
        Frame::WindowUpdate {
            stream_id: 5,
            delta: MAX_31BIT,
        },
        Frame::Data {
            stream_id: 7,
            fin: false,
            data: Bytes::from(vec![0xa5; 70_000]),
        },
    ]
}

#[test]
fn every_kind_round_trips_through_one_context() {
    let frames = every_kind();
    let mut tx = Codec::new(Limits::default());
    let mut wire = Vec::new();
    for frame in &frames {
        tx.encode(frame, &mut wire).unwrap();
    }
    let mut rx = Codec::new(Limits::default());
    let mut at = 0;
    for frame in &frames {
        let (got, used) = rx.decode(&wire[at..]).unwrap().unwrap();
        assert_eq!(&got, frame);
        at += used;
    }
    assert_eq!(at, wire.len());
    assert_eq!(rx.decode(&wire[at..]).unwrap(), None);
}

#[test]
fn header_blocks_share_one_context_across_frames() {
    let mut tx = Codec::new(Limits::default());
    let mut rx = Codec::new(Limits::default());
    let headers = h(&[
        ("streamtype", "stdout"),
        ("port", "8080"),
        ("requestid", "1"),
    ]);
    let mut sizes = Vec::new();
    for id in (1..40).step_by(2) {
        let frame = Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: headers.clone(),
        };
        let mut wire = Vec::new();
        tx.encode(&frame, &mut wire).unwrap();
        sizes.push(wire.len());
        assert_eq!(rx.decode(&wire).unwrap(), Some((frame, wire.len())));
    }
    // Repeats compress against earlier blocks, which only a shared context
    // can do.
    assert!(sizes[10] < sizes[0], "sizes {sizes:?}");
    // A fresh decoder cannot read a later block alone.
    let mut wire = Vec::new();
    tx.encode(
        &Frame::Headers {
            stream_id: 1,
            fin: false,
            headers,
        },
        &mut wire,
    )
    .unwrap();
    assert!(Codec::new(Limits::default()).decode(&wire).is_err());
}

#[test]
fn names_are_lowercased_and_repeats_merged_on_encode() {
    let frame = Frame::SynReply {
        stream_id: 1,
        fin: false,
        headers: h(&[("Content-Type", "a"), ("X-Y", "1"), ("x-y", "2")]),
    };
    let wire = encode_one(&frame);
    assert_eq!(
        decode_one(&wire),
        Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: h(&[("content-type", "a"), ("x-y", "1\u{0}2")]),
        }
    );
}

/// Compresses a raw header block as a peer would, to feed the decoder
/// blocks our encoder refuses to make.
fn syn_reply_with_raw_block(block: &[u8]) -> Vec<u8> {
    let mut deflater = headers::Deflater::new().unwrap();
    let mut payload = 1u32.to_be_bytes().to_vec();
    deflater.compress(block, &mut payload).unwrap();
    let mut frame = vec![0x80, 0x03, 0x00, 0x02];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

fn raw_block(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut block = (pairs.len() as u32).to_be_bytes().to_vec();
    for (name, value) in pairs {
        block.extend_from_slice(&(name.len() as u32).to_be_bytes());
        block.extend_from_slice(name);
        block.extend_from_slice(&(value.len() as u32).to_be_bytes());
        block.extend_from_slice(value);
    }
    block
}

fn decode_err(bytes: &[u8], limits: Limits) -> FrameError {
    Codec::new(limits)
        .decode(bytes)
        .expect_err("must be refused")
}

#[test]
fn bad_header_blocks_are_refused() {
    let limits = Limits::default();
    let frame = syn_reply_with_raw_block(&raw_block(&[(b"Streamtype", b"x")]));
    assert_eq!(
        decode_err(&frame, limits),
        FrameError::UppercaseHeaderName("Streamtype".into())
    );
    let frame = syn_reply_with_raw_block(&raw_block(&[(b"", b"x")]));
    assert_eq!(decode_err(&frame, limits), FrameError::EmptyHeaderName);
    let frame = syn_reply_with_raw_block(&raw_block(&[(b"a", b"1"), (b"a", b"2")]));
    assert_eq!(
        decode_err(&frame, limits),
        FrameError::DuplicateHeader("a".into())
    );
    let mut block = raw_block(&[(b"a", b"1")]);
    block.push(0);
    assert!(matches!(
        decode_err(&syn_reply_with_raw_block(&block), limits),
        FrameError::InvalidHeaderBlock(_)
    ));
    // A count far beyond the pairs present.
    let mut block = raw_block(&[(b"a", b"1")]);
    block[..4].copy_from_slice(&100u32.to_be_bytes());
    assert!(matches!(
        decode_err(&syn_reply_with_raw_block(&block), limits),
        FrameError::InvalidHeaderBlock(_)
    ));
    // Garbage where a zlib stream should be.
    let frame = hex("80 03 00 02 00 00 00 08 00 00 00 01 de ad be ef");
    assert!(matches!(
        decode_err(&frame, limits),
        FrameError::Compression(_)
    ));
}

#[test]
fn oversize_header_blocks_are_refused() {
    let limits = Limits {
        max_header_block: 1024,
        max_headers: 4,
        ..Limits::default()
    };
    // Compresses to almost nothing, inflates past the limit.
    let big = vec![b'a'; 4096];
    let frame = syn_reply_with_raw_block(&raw_block(&[(b"x", &big)]));
    assert!(frame.len() < 200);
    assert_eq!(
        decode_err(&frame, limits),
        FrameError::HeaderBlockTooLarge { limit: 1024 }
    );
    let pairs: Vec<(&[u8], &[u8])> = vec![
        (b"a", b""),
        (b"b", b""),
        (b"c", b""),
        (b"d", b""),
        (b"e", b""),
    ];
    let frame = syn_reply_with_raw_block(&raw_block(&pairs));
    assert_eq!(
        decode_err(&frame, limits),
        FrameError::TooManyHeaders { count: 5, limit: 4 }
    );
}

#[test]
fn forbidden_and_invalid_headers_are_not_encoded() {
    let mut codec = Codec::new(Limits::default());
    let mut out = Vec::new();
    for (headers, err) in [
        (
            h(&[("Host", "x")]),
            FrameError::ForbiddenHeader("host".into()),
        ),
        (h(&[("", "x")]), FrameError::EmptyHeaderName),
        (
            h(&[("a\0b", "x")]),
            FrameError::InvalidHeaderName("a\0b".into()),
        ),
    ] {
        let frame = Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers,
        };
        assert_eq!(codec.encode(&frame, &mut out), Err(err));
        assert!(out.is_empty(), "nothing written on error");
    }
    // The refused blocks never reached the compressor: the next one still
    // decodes with a fresh context.
    let frame = Frame::SynReply {
        stream_id: 1,
        fin: false,
        headers: h(&[("ok", "1")]),
    };
    codec.encode(&frame, &mut out).unwrap();
    assert_eq!(decode_one(&out), frame);
}

#[test]
fn sizes_are_checked_before_waiting_for_the_payload() {
    let limits = Limits {
        max_data_frame: 16,
        max_control_frame: 32,
        ..Limits::default()
    };
    // Only the 8-byte header is present: the limit applies already.
    assert_eq!(
        decode_err(&hex("00 00 00 01 00 00 00 11"), limits),
        FrameError::TooLarge {
            kind: "DATA",
            length: 17,
            limit: 16
        }
    );
    assert_eq!(
        decode_err(&hex("80 03 00 01 00 ff ff ff"), limits),
        FrameError::TooLarge {
            kind: "SYN_STREAM",
            length: 0xff_ffff,
            limit: 32
        }
    );
    // Within limits, a partial frame just needs more.
    assert_eq!(
        Codec::new(limits)
            .decode(&hex("00 00 00 01 00 00 00 10 61"))
            .unwrap(),
        None
    );
}

#[test]
fn malformed_frames_are_named() {
    let limits = Limits::default();
    assert_eq!(
        decode_err(&hex("80 02 00 06 00 00 00 04 00 00 00 01"), limits),
        FrameError::UnsupportedVersion(2)
    );
    assert_eq!(
        decode_err(&hex("00 00 00 00 00 00 00 00"), limits),
        FrameError::ZeroStreamId { kind: "DATA" }
    );
    assert_eq!(
        decode_err(
            &hex("80 03 00 03 00 00 00 08 00 00 00 00 00 00 00 01"),
            limits
        ),
        FrameError::ZeroStreamId { kind: "RST_STREAM" }
    );
    assert!(matches!(
        decode_err(&hex("80 03 00 06 00 00 00 03 00 00 01"), limits),
        FrameError::Malformed { kind: "PING", .. }
    ));
    assert!(matches!(
        decode_err(
            &hex("80 03 00 03 00 00 00 08 00 00 00 01 00 00 00 00"),
            limits
        ),
        FrameError::Malformed {
            kind: "RST_STREAM",
            ..
        }
    ));
    // SETTINGS claiming more entries than it carries.
    assert!(matches!(
        decode_err(
            &hex("80 03 00 04 00 00 00 0c 00 00 00 02 00 00 00 07 00 00 00 01"),
            limits
        ),
        FrameError::Malformed {
            kind: "SETTINGS",
            ..
        }
    ));
    assert!(matches!(
        decode_err(&hex("80 03 00 01 00 00 00 04 00 00 00 01"), limits),
        FrameError::Malformed {
            kind: "SYN_STREAM",
            ..
        }
    ));
}

#[test]
fn unknown_control_frames_are_passed_over() {
    // NOOP (5) and CREDENTIAL (10) are not spoken; they decode to Unknown
    // and the bytes are consumed.
    let mut bytes = hex("80 03 00 05 00 00 00 00");
    bytes.extend(hex("80 03 00 0a 00 00 00 03 01 02 03"));
    bytes.extend(hex("80 03 00 06 00 00 00 04 00 00 00 02"));
    let mut codec = Codec::new(Limits::default());
    let (f, n) = codec.decode(&bytes).unwrap().unwrap();
    assert_eq!((f, n), (Frame::Unknown { kind: 5 }, 8));
    let (f, m) = codec.decode(&bytes[n..]).unwrap().unwrap();
    assert_eq!((f, m), (Frame::Unknown { kind: 10 }, 11));
    let (f, _) = codec.decode(&bytes[n + m..]).unwrap().unwrap();
    assert_eq!(f, Frame::Ping { id: 2 });
    assert!(
        Codec::new(Limits::default())
            .encode(&Frame::Unknown { kind: 5 }, &mut Vec::new())
            .is_err()
    );
}

#[test]
fn unencodable_values_are_refused() {
    let mut codec = Codec::new(Limits::default());
    let mut out = Vec::new();
    for frame in [
        Frame::RstStream {
            stream_id: 0,
            status: 1,
        },
        Frame::RstStream {
            stream_id: 1,
            status: 0,
        },
        Frame::Data {
            stream_id: 0x8000_0000,
            fin: false,
            data: Bytes::new(),
        },
        Frame::WindowUpdate {
            stream_id: 1,
            delta: 0x8000_0000,
        },
        Frame::Settings {
            clear: false,
            entries: vec![(0, 0x0100_0000, 0)],
        },
        Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 8,
            fin: false,
            unidirectional: false,
            headers: vec![],
        },
    ] {
        assert!(codec.encode(&frame, &mut out).is_err(), "{frame:?}");
        assert!(out.is_empty());
    }
}
