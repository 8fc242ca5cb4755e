//! Property tests for the frame codec: it never panics on peer bytes, and
//! what it encodes it decodes back, however the bytes are cut.

use bytes::Bytes;
use proptest::prelude::*;
use vmpod_spdy::Headers;
use vmpod_spdy::frame::{Codec, Frame, Limits};

fn header_name() -> impl Strategy<Value = String> {
    "[a-z:][a-z0-9-]{0,12}".prop_filter("forbidden in SPDY", |n| {
        ![
            "connection",
            "host",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
        ]
        .contains(&n.as_str())
    })
}

fn headers() -> impl Strategy<Value = Headers> {
    // Unique names: repeats would be merged on the wire, by design.
    proptest::collection::btree_map(header_name(), "[ -~]{0,24}", 0..6)
        .prop_map(|m| m.into_iter().collect())
}

fn stream_id() -> impl Strategy<Value = u32> {
    1..=0x7fff_ffffu32
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            stream_id(),
            0..=0x7fff_ffffu32,
            0..8u8,
            any::<bool>(),
            any::<bool>(),
            headers()
        )
            .prop_map(
                |(stream_id, associated_id, priority, fin, unidirectional, headers)| {
                    Frame::SynStream {
                        stream_id,
                        associated_id,
                        priority,
                        fin,
                        unidirectional,
                        headers,
                    }
                }
            ),
        (stream_id(), any::<bool>(), headers()).prop_map(|(stream_id, fin, headers)| {
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
        }),
        (stream_id(), 1..=u32::MAX)
            .prop_map(|(stream_id, status)| Frame::RstStream { stream_id, status }),
        (
            any::<bool>(),
            proptest::collection::vec((any::<u8>(), 0..=0xff_ffffu32, any::<u32>()), 0..5)
        )
            .prop_map(|(clear, entries)| Frame::Settings { clear, entries }),
        any::<u32>().prop_map(|id| Frame::Ping { id }),
        (0..=0x7fff_ffffu32, any::<u32>()).prop_map(|(last_good_stream_id, status)| {
            Frame::GoAway {
                last_good_stream_id,
                status,
            }
        }),
        (stream_id(), any::<bool>(), headers()).prop_map(|(stream_id, fin, headers)| {
            Frame::Headers {
                stream_id,
                fin,
                headers,
            }
        }),
        (0..=0x7fff_ffffu32, 0..=0x7fff_ffffu32)
            .prop_map(|(stream_id, delta)| Frame::WindowUpdate { stream_id, delta }),
        (
            stream_id(),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(stream_id, fin, data)| Frame::Data {
                stream_id,
                fin,
                data: Bytes::from(data),
            }),
    ]
}

fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut codec = Codec::new(Limits::default());
    let mut wire = Vec::new();
    for frame in frames {
        codec.encode(frame, &mut wire).expect("valid frames encode");
    }
    wire
}

/// Decodes whole frames from the front of `bytes`, stopping at the first
/// `Ok(None)` or error; panics only if the codec misreports consumption.
fn decode_prefix(codec: &mut Codec, bytes: &[u8]) -> (Vec<Frame>, usize, bool) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        match codec.decode(&bytes[at..]) {
            Ok(Some((frame, used))) => {
                assert!(used >= 8 && used <= bytes.len() - at, "consumed {used}");
                frames.push(frame);
                at += used;
            }
            Ok(None) => return (frames, at, false),
            Err(_) => return (frames, at, true),
        }
    }
}

/// A control frame of any type and flags with a correct length field:
/// reaches the payload parsers, not just the header check.
fn control_frame_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        0..12u16,
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(kind, flags, payload)| {
            let mut bytes = vec![0x80, 0x03];
            bytes.extend_from_slice(&kind.to_be_bytes());
            bytes.push(flags);
            bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
            bytes.extend_from_slice(&payload);
            bytes
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_prefix(&mut Codec::new(Limits::default()), &bytes);
    }

    #[test]
    fn arbitrary_control_frames_never_panic(
        frames in proptest::collection::vec(control_frame_bytes(), 1..6),
    ) {
        let bytes: Vec<u8> = frames.concat();
        decode_prefix(&mut Codec::new(Limits::default()), &bytes);
    }

    /// A valid first header block followed by garbage: exercises the
    /// inflater on a stream it has accepted the start of.
    #[test]
    fn corrupted_header_blocks_never_panic(
        headers in headers(),
        cut in 0usize..64,
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut wire = encode_all(&[Frame::SynReply { stream_id: 1, fin: false, headers }]);
        let keep = (12 + cut).min(wire.len());
        wire.truncate(keep);
        wire.extend_from_slice(&garbage);
        let len = (wire.len() - 8) as u32;
        wire[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
        decode_prefix(&mut Codec::new(Limits::default()), &wire);
    }

    #[test]
    fn valid_frames_round_trip(frames in proptest::collection::vec(frame(), 1..8)) {
        let wire = encode_all(&frames);
        let (decoded, used, failed) = decode_prefix(&mut Codec::new(Limits::default()), &wire);
        prop_assert!(!failed);
        prop_assert_eq!(used, wire.len());
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn split_at_random_points_decodes_the_same(
        frames in proptest::collection::vec(frame(), 1..8),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..10),
    ) {
        let wire = encode_all(&frames);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut codec = Codec::new(Limits::default());
        let mut buf = Vec::new();
        let mut decoded = Vec::new();
        let mut fed = 0;
        for cut in cuts {
            buf.extend_from_slice(&wire[fed..cut]);
            fed = cut;
            while let Some((frame, used)) = codec.decode(&buf).expect("valid bytes") {
                decoded.push(frame);
                buf.drain(..used);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, frames);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every prefix of a valid sequence decodes to a prefix of the frames,
    /// then asks for more: never an error, never a wrong frame.
    #[test]
    fn truncation_anywhere_needs_more(frames in proptest::collection::vec(frame(), 1..5)) {
        let wire = encode_all(&frames);
        for cut in 0..=wire.len() {
            let (decoded, used, failed) =
                decode_prefix(&mut Codec::new(Limits::default()), &wire[..cut]);
            prop_assert!(!failed, "error at cut {}", cut);
            prop_assert!(used <= cut);
            prop_assert_eq!(&decoded[..], &frames[..decoded.len()]);
            if cut == wire.len() {
                prop_assert_eq!(decoded.len(), frames.len());
            }
        }
    }
}
