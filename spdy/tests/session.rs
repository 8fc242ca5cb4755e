//! Sessions end to end over in-memory pipes: two of ours talking, and ours
//! against a hand-driven peer that behaves like Go's spdystream or worse.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;
use vmpod_spdy::frame::{self, Codec, Frame, Limits};
use vmpod_spdy::{Config, Error, Headers, Incoming, Session};

const LIMIT: Duration = Duration::from_secs(20);

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

fn pair(config: Config) -> ((Session, Incoming), (Session, Incoming)) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (
        Session::client(a, config.clone()),
        Session::server(b, config),
    )
}

/// Pattern bytes that differ per stream, so crossed streams show.
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(7919)) as u8)
        .collect()
}

async fn read_all(rx: &mut vmpod_spdy::RecvStream) -> Vec<u8> {
    let mut all = Vec::new();
    while let Some(chunk) = rx.recv().await {
        all.extend_from_slice(&chunk);
    }
    all
}

#[tokio::test]
async fn open_accept_reply_and_data_both_ways() {
    let ((client, _), (server, mut incoming)) = pair(Config::default());
    let serve = tokio::spawn(async move {
        let mut stream = incoming.accept().await.expect("a stream");
        assert_eq!(stream.header("StreamType"), Some("stdin"));
        assert_eq!(stream.header("port"), Some("80"));
        assert_eq!(stream.id() % 2, 1, "client ids are odd");
        stream.reply(h(&[(":status", "200")]), false).await.unwrap();
        let (mut rx, mut tx) = stream.split();
        assert_eq!(read_all(&mut rx).await, b"hello");
        assert!(!rx.was_reset());
        tx.send(b"world").await.unwrap();
        tx.finish().await.unwrap();
        tx.finish().await.unwrap(); // idempotent
    });
    let stream = timeout(
        LIMIT,
        client.open(h(&[("streamtype", "stdin"), ("port", "80")]), false),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(stream.header("streamtype"), Some("stdin"));
    assert_eq!(stream.reply_headers(), Some(h(&[(":status", "200")])));
    let (mut rx, mut tx) = stream.split();
    tx.send(b"hello").await.unwrap();
    tx.finish().await.unwrap();
    assert_eq!(timeout(LIMIT, read_all(&mut rx)).await.unwrap(), b"world");
    serve.await.unwrap();
    drop((rx, tx));

    client.close().await;
    assert!(client.closed().await.is_ok());
    assert!(timeout(LIMIT, server.closed()).await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabytes_over_many_concurrent_streams() {
    const STREAMS: usize = 16;
    const EACH: usize = 10 * 1024 * 1024 / STREAMS;
    let ((client, _), (_server, mut incoming)) = pair(Config::default());
    // The server echoes every stream back.
    tokio::spawn(async move {
        while let Some(mut stream) = incoming.accept().await {
            tokio::spawn(async move {
                stream.reply(vec![], false).await.unwrap();
                let (mut rx, mut tx) = stream.split();
                while let Some(chunk) = rx.recv().await {
                    tx.send(&chunk).await.unwrap();
                }
                tx.finish().await.unwrap();
            });
        }
    });
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let stream = client
                .open(h(&[("n", &i.to_string())]), false)
                .await
                .unwrap();
            let (mut rx, mut tx) = stream.split();
            let data = pattern(i, EACH);
            let sent = data.clone();
            let writer = tokio::spawn(async move {
                // Uneven writes, to cross frame boundaries.
                for part in sent.chunks(50_000) {
                    tx.send(part).await.unwrap();
                }
                tx.finish().await.unwrap();
            });
            let echoed = read_all(&mut rx).await;
            writer.await.unwrap();
            assert!(echoed == data, "stream {i} came back different");
        }));
    }
    for task in tasks {
        timeout(Duration::from_secs(60), task)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn ping_both_ways() {
    let ((client, _), (server, _)) = pair(Config::default());
    for _ in 0..3 {
        timeout(LIMIT, client.ping()).await.unwrap().unwrap();
        timeout(LIMIT, server.ping()).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn goaway_refuses_new_streams_and_lets_open_ones_finish() {
    let ((client, _), (server, mut incoming)) = pair(Config::default());
    let opened = tokio::spawn({
        let client = client.clone();
        async move { client.open(vec![], false).await }
    });
    let mut accepted = incoming.accept().await.unwrap();
    accepted.reply(vec![], false).await.unwrap();
    let stream = opened.await.unwrap().unwrap();

    server.goaway().await;
    // Once the client has seen the GOAWAY, it opens nothing more.
    let refused = timeout(LIMIT, async {
        loop {
            match client.open(vec![], false).await {
                Err(Error::GoneAway) => return,
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => panic!("unexpected {e}"),
            }
        }
    });
    refused.await.unwrap();

    // The open stream still works, both ways.
    let (mut crx, mut ctx) = stream.split();
    let (mut srx, mut stx) = accepted.split();
    ctx.send(b"still here").await.unwrap();
    ctx.finish().await.unwrap();
    assert_eq!(
        timeout(LIMIT, read_all(&mut srx)).await.unwrap(),
        b"still here"
    );
    stx.send(b"bye").await.unwrap();
    stx.finish().await.unwrap();
    assert_eq!(timeout(LIMIT, read_all(&mut crx)).await.unwrap(), b"bye");

    // With the last stream done, the session winds down by itself.
    assert!(timeout(LIMIT, server.closed()).await.unwrap().is_ok());
    assert!(timeout(LIMIT, client.closed()).await.unwrap().is_ok());
}

#[tokio::test]
async fn reset_ends_the_stream_on_both_sides() {
    let ((client, _), (_server, mut incoming)) = pair(Config::default());
    let opened = tokio::spawn({
        let client = client.clone();
        async move { client.open(vec![], false).await }
    });
    let mut accepted = incoming.accept().await.unwrap();
    accepted.reply(vec![], false).await.unwrap();
    let (mut crx, mut ctx) = opened.await.unwrap().unwrap().split();
    let (_srx, mut stx) = accepted.split();
    stx.reset(frame::RST_CANCEL).await.unwrap();
    assert_eq!(timeout(LIMIT, crx.recv()).await.unwrap(), None);
    assert!(crx.was_reset());
    assert_eq!(crx.reset_status(), Some(frame::RST_CANCEL));
    assert!(matches!(
        ctx.send(b"x").await,
        Err(Error::Reset(frame::RST_CANCEL))
    ));
    assert!(matches!(stx.send(b"x").await, Err(Error::Misuse(_))));
    // The session is unaffected.
    timeout(LIMIT, client.ping()).await.unwrap().unwrap();
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let config = Config {
        max_streams: 2,
        ..Config::default()
    };
    let ((client, _), (_server, mut incoming)) = pair(config);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(mut stream) = incoming.accept().await {
            // Done sending at once; the stream ends when the client finishes.
            stream.reply(vec![], true).await.unwrap();
            held.push(stream);
        }
    });
    let mut a = client.open(vec![], false).await.unwrap();
    let _b = client.open(vec![], false).await.unwrap();
    let refused = timeout(LIMIT, client.open(vec![], false)).await.unwrap();
    assert!(
        matches!(refused, Err(Error::Reset(frame::RST_REFUSED_STREAM))),
        "{refused:?}"
    );
    // A stream done both ways frees its slot.
    assert_eq!(a.recv().await, None);
    a.finish().await.unwrap();
    timeout(LIMIT, client.open(vec![], false))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn dropping_the_send_half_finishes_and_unreplied_streams_reset() {
    let ((client, _), (_server, mut incoming)) = pair(Config::default());
    let opened = tokio::spawn({
        let client = client.clone();
        async move { client.open(vec![], false).await }
    });
    let mut accepted = incoming.accept().await.unwrap();
    accepted.reply(vec![], false).await.unwrap();
    let (mut crx, ctx) = opened.await.unwrap().unwrap().split();
    let (mut srx, stx) = accepted.split();
    drop(ctx);
    assert_eq!(timeout(LIMIT, srx.recv()).await.unwrap(), None);
    assert!(!srx.was_reset());
    drop(stx);
    assert_eq!(timeout(LIMIT, crx.recv()).await.unwrap(), None);
    assert!(!crx.was_reset());

    // A stream dropped before its reply is reset, so the opener hears.
    let opened = tokio::spawn({
        let client = client.clone();
        async move { client.open(vec![], false).await }
    });
    drop(incoming.accept().await.unwrap());
    let refused = timeout(LIMIT, opened).await.unwrap().unwrap();
    assert!(
        matches!(refused, Err(Error::Reset(frame::RST_CANCEL))),
        "{refused:?}"
    );
}

/// Two of our sessions do flow control with each other: a receiver that
/// does not read stops the sender at the window, without stalling other
/// streams, and the sender resumes when it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_control_between_our_sessions() {
    const TOTAL: usize = 1024 * 1024;
    const PART: usize = 8 * 1024;
    let config = Config::default();
    let window = config.initial_window as usize;
    let ((client, _), (_server, mut incoming)) = pair(config);
    // After a ping round trip the server's SETTINGS have arrived.
    client.ping().await.unwrap();

    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.open(h(&[("name", "slow")]), false).await.unwrap() }
    });
    let mut slow_server = incoming.accept().await.unwrap();
    slow_server.reply(vec![], false).await.unwrap();
    let (_slow_rx, mut slow_tx) = slow.await.unwrap().split();

    let sent = Arc::new(AtomicUsize::new(0));
    let data = pattern(1, TOTAL);
    let sender = tokio::spawn({
        let sent = Arc::clone(&sent);
        async move {
            for part in data.chunks(PART) {
                slow_tx.send(part).await.unwrap();
                sent.fetch_add(part.len(), Ordering::SeqCst);
            }
            slow_tx.finish().await.unwrap();
        }
    });

    // The sender gets going, then stops at the stream window.
    timeout(LIMIT, async {
        while sent.load(Ordering::SeqCst) < window / 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the sender makes progress");
    let mut last = sent.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sent.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    let stalled_at = sent.load(Ordering::SeqCst);
    assert!(
        stalled_at <= window,
        "sent {stalled_at} past a {window} window"
    );

    // Another stream is not held up meanwhile.
    let other = tokio::spawn({
        let client = client.clone();
        async move {
            let mut s = client.open(h(&[("name", "other")]), false).await.unwrap();
            s.send(b"unblocked").await.unwrap();
            s.finish().await.unwrap();
            s
        }
    });
    let mut other_server = timeout(LIMIT, incoming.accept()).await.unwrap().unwrap();
    other_server.reply(vec![], true).await.unwrap();
    let (mut orx, _otx) = other_server.split();
    assert_eq!(
        timeout(LIMIT, read_all(&mut orx)).await.unwrap(),
        b"unblocked"
    );
    drop(other.await.unwrap());
    assert_eq!(sent.load(Ordering::SeqCst), stalled_at, "still stalled");

    // Reading lets it all through.
    let (mut srx, _stx) = slow_server.split();
    let got = timeout(LIMIT, read_all(&mut srx)).await.unwrap();
    sender.await.unwrap();
    assert_eq!(got.len(), TOTAL);
    assert!(got == pattern(1, TOTAL));
}

/// A peer driven frame by frame from the test, over the other end of the
/// pipe.
struct RawPeer {
    io: DuplexStream,
    codec: Codec,
    buf: Vec<u8>,
}

impl RawPeer {
    fn new(io: DuplexStream) -> Self {
        RawPeer {
            io,
            codec: Codec::new(Limits::default()),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = Vec::new();
        self.codec.encode(&frame, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    /// The next frame, or `None` at EOF.
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = self.codec.decode(&self.buf).unwrap() {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = timeout(LIMIT, self.io.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame that is not our session's greeting or bookkeeping.
    async fn recv_significant(&mut self) -> Option<Frame> {
        loop {
            match self.recv().await? {
                Frame::Settings { .. } | Frame::WindowUpdate { .. } => continue,
                frame => return Some(frame),
            }
        }
    }
}

fn raw_pair(config: Config) -> (Session, Incoming, RawPeer) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (session, incoming) = Session::server(ours, config);
    (session, incoming, RawPeer::new(theirs))
}

fn syn_stream(stream_id: u32, headers: Headers) -> Frame {
    Frame::SynStream {
        stream_id,
        associated_id: 0,
        priority: 0,
        fin: false,
        unidirectional: false,
        headers,
    }
}

#[tokio::test]
async fn malformed_frame_ends_the_session_with_goaway() {
    let (server, _incoming, mut peer) = raw_pair(Config::default());
    // A control frame of SPDY version 2.
    peer.io
        .write_all(&[0x80, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1])
        .await
        .unwrap();
    let result = timeout(LIMIT, server.closed()).await.unwrap();
    assert!(
        matches!(
            result,
            Err(Error::Protocol(frame::FrameError::UnsupportedVersion(2)))
        ),
        "{result:?}"
    );
    let mut goaway = None;
    while let Some(frame) = peer.recv().await {
        if let Frame::GoAway { status, .. } = frame {
            goaway = Some(status);
        }
    }
    assert_eq!(goaway, Some(frame::GOAWAY_PROTOCOL_ERROR));
    assert!(server.is_closed());
    assert!(matches!(
        server.open(vec![], false).await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn oversize_frame_ends_the_session() {
    let config = Config {
        limits: Limits {
            max_data_frame: 1024,
            ..Limits::default()
        },
        ..Config::default()
    };
    let (server, _incoming, mut peer) = raw_pair(config);
    peer.send(syn_stream(1, vec![])).await;
    peer.send(Frame::Data {
        stream_id: 1,
        fin: false,
        data: Bytes::from(vec![0; 2048]),
    })
    .await;
    let result = timeout(LIMIT, server.closed()).await.unwrap();
    assert!(
        matches!(
            result,
            Err(Error::Protocol(frame::FrameError::TooLarge {
                length: 2048,
                ..
            }))
        ),
        "{result:?}"
    );
}

/// Go's spdystream never sends WINDOW_UPDATE: it must still get more than
/// the 64 KiB initial window from us.
#[tokio::test]
async fn a_peer_without_window_updates_receives_more_than_the_window() {
    const TOTAL: usize = 1024 * 1024;
    let (_server, mut incoming, mut peer) = raw_pair(Config::default());
    peer.send(syn_stream(1, h(&[("streamtype", "stdout")])))
        .await;
    let mut stream = timeout(LIMIT, incoming.accept()).await.unwrap().unwrap();
    let app = tokio::spawn(async move {
        stream.reply(vec![], false).await.unwrap();
        let (_rx, mut tx) = stream.split();
        tx.send(&pattern(3, TOTAL)).await.unwrap();
        tx.finish().await.unwrap();
    });
    assert!(matches!(
        peer.recv_significant().await,
        Some(Frame::SynReply { stream_id: 1, .. })
    ));
    let mut got = Vec::new();
    loop {
        match peer.recv_significant().await.expect("data until FIN") {
            Frame::Data {
                stream_id: 1,
                fin,
                data,
            } => {
                assert!(data.len() <= 32 * 1024);
                got.extend_from_slice(&data);
                if fin {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    app.await.unwrap();
    assert!(got == pattern(3, TOTAL));
}

/// A peer that ignores our windows fills the stream's buffer; then we stop
/// reading the socket until the application reads, rather than buffer
/// without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_ignoring_windows_is_held_back_by_tcp() {
    const TOTAL: usize = 2 * 1024 * 1024;
    let config = Config {
        recv_buffer: 128 * 1024,
        ..Config::default()
    };
    let (_server, mut incoming, mut peer) = raw_pair(config);
    peer.send(syn_stream(1, vec![])).await;
    let mut stream = timeout(LIMIT, incoming.accept()).await.unwrap().unwrap();
    stream.reply(vec![], false).await.unwrap();
    let (mut rx, _tx) = stream.split();

    let pushed = Arc::new(AtomicUsize::new(0));
    let (mut peer_rd, mut peer_wr) = tokio::io::split(peer.io);
    // Keep reading what we send, as a real peer would.
    tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(peer_rd.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let writer = tokio::spawn({
        let pushed = Arc::clone(&pushed);
        let mut codec = peer.codec;
        async move {
            for part in pattern(5, TOTAL).chunks(16 * 1024) {
                let mut out = Vec::new();
                let frame = Frame::Data {
                    stream_id: 1,
                    fin: false,
                    data: Bytes::copy_from_slice(part),
                };
                codec.encode(&frame, &mut out).unwrap();
                peer_wr.write_all(&out).await.unwrap();
                pushed.fetch_add(part.len(), Ordering::SeqCst);
            }
            let mut out = Vec::new();
            let fin = Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::new(),
            };
            codec.encode(&fin, &mut out).unwrap();
            peer_wr.write_all(&out).await.unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Buffered by us, plus what the pipe and our read buffer hold.
    let held = pushed.load(Ordering::SeqCst);
    assert!(
        held < 512 * 1024,
        "peer pushed {held} bytes into an unread stream"
    );
    let got = timeout(LIMIT, read_all(&mut rx)).await.unwrap();
    writer.await.unwrap();
    assert!(got == pattern(5, TOTAL));
}

#[tokio::test]
async fn bad_stream_ids_are_reset_without_ending_the_session() {
    let (server, mut incoming, mut peer) = raw_pair(Config::default());
    // Even ids belong to the server.
    peer.send(syn_stream(2, vec![])).await;
    assert_eq!(
        peer.recv_significant().await,
        Some(Frame::RstStream {
            stream_id: 2,
            status: frame::RST_PROTOCOL_ERROR
        })
    );
    peer.send(syn_stream(5, vec![])).await;
    let accepted = timeout(LIMIT, incoming.accept()).await.unwrap().unwrap();
    assert_eq!(accepted.id(), 5);
    // Ids must increase.
    peer.send(syn_stream(3, vec![])).await;
    assert_eq!(
        peer.recv_significant().await,
        Some(Frame::RstStream {
            stream_id: 3,
            status: frame::RST_PROTOCOL_ERROR
        })
    );
    // Data for a stream never opened.
    peer.send(Frame::Data {
        stream_id: 9,
        fin: false,
        data: Bytes::from_static(b"x"),
    })
    .await;
    assert_eq!(
        peer.recv_significant().await,
        Some(Frame::RstStream {
            stream_id: 9,
            status: frame::RST_INVALID_STREAM
        })
    );
    // Pings are echoed; the session is fine.
    peer.send(Frame::Ping { id: 7 }).await;
    assert_eq!(peer.recv_significant().await, Some(Frame::Ping { id: 7 }));
    assert!(!server.is_closed());
}

#[tokio::test]
async fn peer_eof_closes_cleanly() {
    let (server, mut incoming, peer) = raw_pair(Config::default());
    drop(peer);
    assert!(timeout(LIMIT, server.closed()).await.unwrap().is_ok());
    assert!(incoming.accept().await.is_none());
    assert!(matches!(server.ping().await, Err(Error::Closed)));
}

#[tokio::test]
async fn peer_goaway_fails_pending_opens_and_closes_when_idle() {
    let (server, _incoming, mut peer) = raw_pair(Config::default());
    let opening = tokio::spawn({
        let server = server.clone();
        async move { server.open(vec![], false).await }
    });
    let Some(Frame::SynStream { stream_id, .. }) = peer.recv_significant().await else {
        panic!("expected SYN_STREAM");
    };
    assert_eq!(stream_id, 2, "server ids are even");
    // The peer never processed it.
    peer.send(Frame::GoAway {
        last_good_stream_id: 0,
        status: frame::GOAWAY_OK,
    })
    .await;
    let result = timeout(LIMIT, opening).await.unwrap().unwrap();
    assert!(matches!(result, Err(Error::GoneAway)), "{result:?}");
    assert!(timeout(LIMIT, server.closed()).await.unwrap().is_ok());
}

/// We grant window back, per stream and for the session, as the
/// application reads, and announce our windows up front.
#[tokio::test]
async fn window_updates_follow_what_the_application_reads() {
    let (_server, mut incoming, mut peer) = raw_pair(Config::default());
    let Some(Frame::Settings { entries, .. }) = peer.recv().await else {
        panic!("SETTINGS come first");
    };
    assert_eq!(
        entries,
        vec![(0, frame::SETTINGS_INITIAL_WINDOW_SIZE, 64 * 1024)]
    );
    assert!(matches!(
        peer.recv().await,
        Some(Frame::WindowUpdate { stream_id: 0, .. })
    ));

    peer.send(syn_stream(1, vec![])).await;
    let mut stream = timeout(LIMIT, incoming.accept()).await.unwrap().unwrap();
    stream.reply(vec![], false).await.unwrap();
    assert!(matches!(
        peer.recv().await,
        Some(Frame::SynReply { stream_id: 1, .. })
    ));
    for _ in 0..4 {
        peer.send(Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::from(vec![7; 16 * 1024]),
        })
        .await;
    }
    let mut read = 0;
    while read < 64 * 1024 {
        read += timeout(LIMIT, stream.recv()).await.unwrap().unwrap().len();
    }
    // Half the 64 KiB stream window read: at least one stream update.
    let mut granted = 0;
    while granted < 32 * 1024 {
        match peer.recv().await.unwrap() {
            Frame::WindowUpdate {
                stream_id: 1,
                delta,
            } => granted += delta as usize,
            other => panic!("unexpected {other:?}"),
        }
    }
}
