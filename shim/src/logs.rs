//! Container log files in the CRI logging format that kubelet and `crictl
//! logs` read: one record per line,
//!
//! ```text
//! 2016-10-06T00:17:09.669794202Z stdout F hello world
//! ```
//!
//! that is `<timestamp> <stream> <tag> <content>\n`, where the timestamp is
//! Go's `time.RFC3339Nano` in UTC (trailing zeros of the fraction trimmed,
//! no fraction at all on a whole second: containerd formats it that way and
//! we want byte-identical files), the tag is `F` when the content is a whole
//! line (its newline is not repeated inside the content) and `P` when it is
//! a piece of one: a line longer than [`MAX_RECORD_CONTENT`] or an
//! unterminated tail at EOF.
//!
//! The shim runs a current-thread runtime, so the file writes happen on
//! tokio's blocking pool, one hop per batch of records read together: a log
//! directory on a slow or stuck disk must not stall the VM relay.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest content one record carries. containerd and CRI-O split longer
/// lines at 16 KiB (`max_container_log_line_size`), so kubelet's reader and
/// log tooling are used to exactly this; a line of exactly 16 KiB is still a
/// single `F` record: only the byte that would make it longer splits it.
pub const MAX_RECORD_CONTENT: usize = 16 * 1024;

/// How much one read takes from a stream; several records fit, so that a
/// chatty container costs one blocking-pool hop per read, not per line.
const READ_CHUNK: usize = 64 * 1024;

/// Mode of a newly created log file: kubelet (root) and the log agents in
/// the owning group read it, nobody else does, as with containerd.
const LOG_FILE_MODE: u32 = 0o640;

/// Which of the container's output streams a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The stream's name as written in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Whether a record ends a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// The content is a whole line; the stream had a newline after it.
    Full,
    /// The content is part of a line that continues in the next record (or
    /// never ended: the stream closed first).
    Partial,
}

impl Tag {
    fn as_char(self) -> char {
        match self {
            Tag::Full => 'F',
            Tag::Partial => 'P',
        }
    }

    /// How many bytes of the stream a record with `content` stands for: a
    /// full record also consumed the newline.
    fn input_len(self, content: &[u8]) -> u64 {
        content.len() as u64 + u64::from(self == Tag::Full)
    }
}

/// Appends `ts` as Go's `time.RFC3339Nano` in UTC:
/// `2016-10-06T00:17:09.669794202Z`, `...:09.5Z`, `...:09Z`.
///
/// Hand-rolled (days to civil date) rather than a date crate: it is the only
/// date arithmetic the shim needs.
fn push_timestamp(out: &mut String, ts: SystemTime) {
    // Before the epoch (a badly set clock) still formats as a real date:
    // whole seconds round down and the fraction stays positive.
    let (secs, nanos) = match ts.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let before: Duration = e.duration();
            let mut secs = -(before.as_secs() as i64);
            let mut nanos = before.subsec_nanos();
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            (secs, nanos)
        }
    };
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
    if nanos != 0 {
        let mut digits = 9;
        let mut frac = nanos;
        while frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
        let _ = write!(out, ".{frac:0digits$}");
    }
    out.push('Z');
}

/// Formats `ts` the way records carry it; see [`push_timestamp`].
pub fn format_timestamp(ts: SystemTime) -> String {
    let mut out = String::with_capacity(30);
    push_timestamp(&mut out, ts);
    out
}

/// The proleptic Gregorian date `days` days after 1970-01-01. Works in
/// 400-year eras (146097 days each), within which the calendar repeats, and
/// counts years from March so that the leap day is the last day of a year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends one whole record, newline included.
fn encode_record(out: &mut Vec<u8>, stream: Stream, tag: Tag, content: &[u8], ts: SystemTime) {
    let mut header = String::with_capacity(48);
    push_timestamp(&mut header, ts);
    header.push(' ');
    header.push_str(stream.as_str());
    header.push(' ');
    header.push(tag.as_char());
    header.push(' ');
    out.reserve(header.len() + content.len() + 1);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// One container's log file, shared by its stdout and stderr copiers.
///
/// Every record goes out in one `write(2)` on an `O_APPEND` file, under a
/// lock, so readers (kubelet, `crictl logs`, log shippers) never find two
/// records interleaved within a line, and [`LogFile::reopen`] can swap the
/// file underneath running copiers.
pub struct LogFile {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    file: File,
    /// A write stopped part way through a record (disk full): the file ends
    /// in a line without its newline, which the next record would otherwise
    /// be glued to. The next write terminates it first.
    torn: bool,
    /// Bytes of stream dropped since writes started failing; `Some` while
    /// they still fail, so that a full disk warns once, not per record.
    dropping: Option<u64>,
    /// Reused for [`LogFile::write_record`]'s encoding.
    scratch: Vec<u8>,
}

impl LogFile {
    /// Opens (creating if needed) the log file at `path` for appending.
    ///
    /// The directory is not created: kubelet creates the pod's log directory
    /// and owns its layout, and a missing one means the request is wrong.
    pub fn open(path: &Path) -> io::Result<Arc<LogFile>> {
        let file = open_append(path)?;
        Ok(Arc::new(LogFile {
            path: path.to_owned(),
            state: Mutex::new(State {
                file,
                torn: false,
                dropping: None,
                scratch: Vec::new(),
            }),
        }))
    }

    /// The path this log writes to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path anew and writes there from now on: kubelet rotates a
    /// container's log by renaming the file and then calling
    /// `ReopenContainerLog`. Records already handed to the old file stay
    /// there; none is lost or split between the two. Safe while copiers
    /// are writing. On error the old file stays in use.
    pub fn reopen(&self) -> io::Result<()> {
        // Open outside the lock so that writers wait only for the swap.
        let file = open_append(&self.path)?;
        let old = {
            let mut state = self.lock();
            state.torn = false;
            std::mem::replace(&mut state.file, file)
        };
        drop(old);
        Ok(())
    }

    /// Writes one record with `content` (which must not contain a newline;
    /// [`copy_stream`] splits lines) stamped with `ts`.
    pub fn write_record(
        &self,
        stream: Stream,
        tag: Tag,
        content: &[u8],
        ts: SystemTime,
    ) -> io::Result<()> {
        let mut state = self.lock();
        let mut record = std::mem::take(&mut state.scratch);
        record.clear();
        encode_record(&mut record, stream, tag, content, ts);
        let result = self.write_locked(&mut state, &record, tag.input_len(content));
        state.scratch = record;
        result
    }

    /// Writes already encoded records, one `write(2)` each, and returns how
    /// many bytes of stream the failed ones stood for.
    fn write_batch(&self, batch: &Batch) -> u64 {
        let mut state = self.lock();
        let mut start = 0;
        let mut dropped = 0;
        for span in &batch.spans {
            let record = &batch.bytes[start..span.end];
            start = span.end;
            if self.write_locked(&mut state, record, span.input).is_err() {
                dropped += span.input;
            }
        }
        dropped
    }

    /// Appends one encoded record, keeping track of torn lines and of
    /// failure bursts (the one place that logs about them).
    fn write_locked(&self, state: &mut State, record: &[u8], input: u64) -> io::Result<()> {
        let result = append(state, record);
        match (&result, state.dropping) {
            (Ok(()), Some(dropped)) => {
                tracing::warn!(
                    path = %self.path.display(),
                    dropped_bytes = dropped,
                    "container log is writable again; output was dropped meanwhile"
                );
                state.dropping = None;
            }
            (Err(e), None) => {
                tracing::warn!(
                    path = %self.path.display(),
                    error = %e,
                    "cannot write container log; dropping output until writes succeed"
                );
                state.dropping = Some(input);
            }
            (Err(_), Some(dropped)) => state.dropping = Some(dropped + input),
            (Ok(()), None) => {}
        }
        result
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves at worst a torn record.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(LOG_FILE_MODE)
        // std opens with O_CLOEXEC already; explicit, since a log fd leaking
        // into QEMU or a helper would keep a rotated file alive.
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::NotFound {
                " (its directory must exist: kubelet creates it)"
            } else {
                ""
            };
            io::Error::new(
                e.kind(),
                format!("opening container log {}: {e}{hint}", path.display()),
            )
        })
}

/// One record in one `write(2)` (retrying only if the kernel takes part of
/// it, which for a regular file means the disk filled up mid-record).
fn append(state: &mut State, record: &[u8]) -> io::Result<()> {
    if state.torn {
        // A line of its own: readers skip the garbled one and lose nothing
        // else.
        write_fully(&mut state.file, b"\n", &mut state.torn)?;
        state.torn = false;
    }
    write_fully(&mut state.file, record, &mut state.torn)
}

fn write_fully(file: &mut File, mut bytes: &[u8], torn: &mut bool) -> io::Result<()> {
    let mut written_any = false;
    while !bytes.is_empty() {
        match file.write(bytes) {
            Ok(0) => {
                *torn |= written_any;
                return Err(io::ErrorKind::WriteZero.into());
            }
            Ok(n) => {
                written_any = true;
                bytes = &bytes[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                *torn |= written_any;
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Records encoded back to back, ready for the blocking pool.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    spans: Vec<Span>,
}

struct Span {
    /// Where the record ends in `bytes`.
    end: usize,
    /// Bytes of the stream it stands for.
    input: u64,
}

impl Batch {
    fn push(&mut self, stream: Stream, tag: Tag, content: &[u8], ts: SystemTime) {
        encode_record(&mut self.bytes, stream, tag, content, ts);
        self.spans.push(Span {
            end: self.bytes.len(),
            input: tag.input_len(content),
        });
    }

    fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }
}

/// Cuts a byte stream into records. Holds at most one record's worth of an
/// unfinished line, so a container that never prints a newline costs
/// 16 KiB, not unbounded memory.
struct LineSplitter {
    stream: Stream,
    line: Vec<u8>,
}

impl LineSplitter {
    fn new(stream: Stream) -> Self {
        LineSplitter {
            stream,
            line: Vec::with_capacity(MAX_RECORD_CONTENT),
        }
    }

    /// Adds `data`, read at `ts`, and appends every record it completes.
    /// A line's timestamp is when its end arrived, as containerd does.
    fn push(&mut self, mut data: &[u8], ts: SystemTime, batch: &mut Batch) {
        while !data.is_empty() {
            // A full buffer only becomes a `P` record once a byte other than
            // the newline arrives: exactly 16 KiB and a newline is one `F`.
            if self.line.len() == MAX_RECORD_CONTENT && data[0] != b'\n' {
                batch.push(self.stream, Tag::Partial, &self.line, ts);
                self.line.clear();
            }
            let room = MAX_RECORD_CONTENT - self.line.len();
            // A newline may sit right after the last byte that fits.
            let window = &data[..data.len().min(room + 1)];
            match window.iter().position(|&b| b == b'\n') {
                Some(newline) => {
                    if self.line.is_empty() {
                        batch.push(self.stream, Tag::Full, &data[..newline], ts);
                    } else {
                        self.line.extend_from_slice(&data[..newline]);
                        batch.push(self.stream, Tag::Full, &self.line, ts);
                        self.line.clear();
                    }
                    data = &data[newline + 1..];
                }
                None => {
                    let take = data.len().min(room);
                    self.line.extend_from_slice(&data[..take]);
                    data = &data[take..];
                }
            }
        }
    }

    /// The stream ended: an unterminated tail becomes a `P` record.
    fn finish(&mut self, ts: SystemTime, batch: &mut Batch) {
        if !self.line.is_empty() {
            batch.push(self.stream, Tag::Partial, &self.line, ts);
            self.line.clear();
        }
    }
}

/// What [`copy_stream`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Bytes read from the stream, up to EOF.
    pub bytes_read: u64,
    /// Of those, the bytes whose records could not be written (disk full,
    /// I/O errors); they are gone.
    pub bytes_dropped: u64,
}

/// Copies `reader` into `log` as `stream`'s records until EOF.
///
/// Write errors do not stop the copy: the container's output pipe must keep
/// draining or the container would block on a full pipe, so failed records
/// are counted in [`CopyStats::bytes_dropped`] (and warned about once per
/// burst) and copying goes on; writes resume when the file accepts them
/// again. Only a read error ends the copy early; what was read before it is
/// written first.
pub async fn copy_stream(
    mut reader: impl AsyncRead + Unpin,
    stream: Stream,
    log: Arc<LogFile>,
) -> io::Result<CopyStats> {
    let mut stats = CopyStats::default();
    let mut splitter = LineSplitter::new(stream);
    let mut batch = Batch::default();
    let mut buf = vec![0u8; READ_CHUNK];
    let read_error = loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break None,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Some(e),
        };
        stats.bytes_read += n as u64;
        splitter.push(&buf[..n], SystemTime::now(), &mut batch);
        if !batch.is_empty() {
            batch = write_off_thread(&log, batch, &mut stats).await?;
        }
    };
    splitter.finish(SystemTime::now(), &mut batch);
    if !batch.is_empty() {
        write_off_thread(&log, batch, &mut stats).await?;
    }
    match read_error {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}

/// Writes `batch` on the blocking pool and hands it back, emptied, for
/// reuse.
async fn write_off_thread(
    log: &Arc<LogFile>,
    mut batch: Batch,
    stats: &mut CopyStats,
) -> io::Result<Batch> {
    let log = Arc::clone(log);
    let (batch, dropped) = tokio::task::spawn_blocking(move || {
        let dropped = log.write_batch(&batch);
        batch.clear();
        (batch, dropped)
    })
    .await
    .map_err(|e| io::Error::other(format!("container log writer task failed: {e}")))?;
    stats.bytes_dropped += dropped;
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// One record as read back, checked the way kubelet's parser would
    /// split it, plus the format details we promise (timestamp shape).
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Record {
        ts: String,
        stream: Stream,
        tag: Tag,
        content: Vec<u8>,
    }

    fn parse_record(line: &[u8]) -> Result<Record, String> {
        let mut fields = line.splitn(4, |&b| b == b' ');
        let ts = fields.next().ok_or("no timestamp")?;
        let stream = fields.next().ok_or("no stream")?;
        let tag = fields.next().ok_or("no tag")?;
        let content = fields.next().ok_or("no content field")?;
        let ts = std::str::from_utf8(ts).map_err(|e| e.to_string())?;
        check_timestamp(ts)?;
        let stream = match stream {
            b"stdout" => Stream::Stdout,
            b"stderr" => Stream::Stderr,
            other => return Err(format!("bad stream {:?}", String::from_utf8_lossy(other))),
        };
        let tag = match tag {
            b"F" => Tag::Full,
            b"P" => Tag::Partial,
            other => return Err(format!("bad tag {:?}", String::from_utf8_lossy(other))),
        };
        Ok(Record {
            ts: ts.to_owned(),
            stream,
            tag,
            content: content.to_vec(),
        })
    }

    /// `YYYY-MM-DDTHH:MM:SS[.f{1,9} without trailing 0]Z`.
    fn check_timestamp(ts: &str) -> Result<(), String> {
        let b = ts.as_bytes();
        let bad = || format!("bad timestamp {ts:?}");
        if b.len() < 20 || b[b.len() - 1] != b'Z' {
            return Err(bad());
        }
        for (i, &c) in b[..19].iter().enumerate() {
            let ok = match i {
                4 | 7 => c == b'-',
                10 => c == b'T',
                13 | 16 => c == b':',
                _ => c.is_ascii_digit(),
            };
            if !ok {
                return Err(bad());
            }
        }
        let frac = &b[19..b.len() - 1];
        if !frac.is_empty() {
            let digits = &frac[1..];
            if frac[0] != b'.'
                || digits.is_empty()
                || digits.len() > 9
                || !digits.iter().all(u8::is_ascii_digit)
                || digits.last() == Some(&b'0')
            {
                return Err(bad());
            }
        }
        Ok(())
    }

    /// Every line of the file as a record; the file must end in a newline.
    fn read_records(path: &Path) -> Vec<Record> {
        let bytes = std::fs::read(path).expect("read log");
        if bytes.is_empty() {
            return Vec::new();
        }
        assert_eq!(bytes.last(), Some(&b'\n'), "log must end with a newline");
        bytes[..bytes.len() - 1]
            .split(|&b| b == b'\n')
            .map(|line| {
                parse_record(line)
                    .unwrap_or_else(|e| panic!("{e}: line {:?}", String::from_utf8_lossy(line)))
            })
            .collect()
    }

    /// The stream the records of `stream` stand for.
    fn reassemble(records: &[Record], stream: Stream) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records.iter().filter(|r| r.stream == stream) {
            out.extend_from_slice(&r.content);
            if r.tag == Tag::Full {
                out.push(b'\n');
            }
        }
        out
    }

    fn shape(records: &[Record]) -> Vec<(Tag, usize)> {
        records.iter().map(|r| (r.tag, r.content.len())).collect()
    }

    /// Feeds `chunks` (as separate writes) through a pipe into a fresh log.
    async fn copy_chunks(chunks: &[&[u8]]) -> (Vec<Record>, CopyStats) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let log = LogFile::open(&path).expect("open");
        let (mut tx, rx) = tokio::io::duplex(1024);
        let copier = tokio::spawn(copy_stream(rx, Stream::Stdout, log));
        for chunk in chunks {
            tx.write_all(chunk).await.expect("write");
            tx.flush().await.expect("flush");
            // Let the copier see each chunk as its own read.
            tokio::task::yield_now().await;
        }
        drop(tx);
        let stats = copier.await.expect("join").expect("copy");
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        assert_eq!(stats.bytes_read, total as u64);
        assert_eq!(stats.bytes_dropped, 0);
        let records = read_records(&path);
        assert_eq!(reassemble(&records, Stream::Stdout), chunks.concat());
        (records, stats)
    }

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn timestamps_match_go_rfc3339nano() {
        let cases = [
            (
                at(1_475_713_029, 669_794_202),
                "2016-10-06T00:17:09.669794202Z",
            ),
            (at(1_475_713_029, 500_000_000), "2016-10-06T00:17:09.5Z"),
            (at(1_475_713_029, 0), "2016-10-06T00:17:09Z"),
            (at(1_475_713_029, 1), "2016-10-06T00:17:09.000000001Z"),
            (at(1_475_713_029, 120_000), "2016-10-06T00:17:09.00012Z"),
            (at(0, 0), "1970-01-01T00:00:00Z"),
            (at(951_782_400, 0), "2000-02-29T00:00:00Z"),
            (
                at(951_868_799, 999_999_999),
                "2000-02-29T23:59:59.999999999Z",
            ),
            (at(4_107_542_400, 0), "2100-03-01T00:00:00Z"),
            (at(253_402_300_799, 0), "9999-12-31T23:59:59Z"),
            (
                UNIX_EPOCH - Duration::from_millis(500),
                "1969-12-31T23:59:59.5Z",
            ),
            (UNIX_EPOCH - Duration::from_secs(1), "1969-12-31T23:59:59Z"),
        ];
        for (ts, want) in cases {
            assert_eq!(format_timestamp(ts), want);
            check_timestamp(want).expect("test parser accepts it");
        }
    }

    /// The era arithmetic against plain day counting, day by day from 1900
    /// to 2300 (leap centuries included).
    #[test]
    fn civil_dates_agree_with_counting() {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let month_days = |y: i64, m: u32| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let first: i64 = -25_567; // 1900-01-01
        let (mut y, mut m, mut d) = (1900i64, 1u32, 1u32);
        for days in first..first + 146_097 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            d += 1;
            if d > month_days(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn record_encoding() {
        let mut out = Vec::new();
        encode_record(&mut out, Stream::Stderr, Tag::Partial, b"a b", at(0, 0));
        encode_record(&mut out, Stream::Stdout, Tag::Full, b"", at(1, 0));
        assert_eq!(
            out,
            b"1970-01-01T00:00:00Z stderr P a b\n1970-01-01T00:00:01Z stdout F \n"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn full_lines() {
        let (records, _) = copy_chunks(&[b"hello world\nsecond\n"]).await;
        assert_eq!(
            records
                .iter()
                .map(|r| (r.tag, r.content.as_slice()))
                .collect::<Vec<_>>(),
            vec![
                (Tag::Full, b"hello world".as_slice()),
                (Tag::Full, b"second".as_slice())
            ]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unterminated_tail_is_partial() {
        let (records, _) = copy_chunks(&[b"done\nhalf"]).await;
        assert_eq!(shape(&records), vec![(Tag::Full, 4), (Tag::Partial, 4)]);
        assert_eq!(records[1].content, b"half");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn line_across_reads_is_one_record() {
        let (records, _) = copy_chunks(&[b"a", b"b", b"c", b"\nd", b"e\n"]).await;
        assert_eq!(shape(&records), vec![(Tag::Full, 3), (Tag::Full, 2)]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn empty_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let log = LogFile::open(&path).expect("open");
        let stats = copy_stream(&b"\n\n"[..], Stream::Stdout, log)
            .await
            .expect("copy");
        assert_eq!(stats.bytes_read, 2);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for line in lines {
            let (ts, rest) = line.split_once(' ').expect("space");
            check_timestamp(ts).expect("timestamp");
            assert_eq!(rest, "stdout F ");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn carriage_return_is_content() {
        let (records, _) = copy_chunks(&[b"dos\r\n\r\n"]).await;
        assert_eq!(records[0].content, b"dos\r");
        assert_eq!(records[1].content, b"\r");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn exactly_16k_line_is_one_full_record() {
        let mut line = vec![b'x'; MAX_RECORD_CONTENT];
        line.push(b'\n');
        let (records, _) = copy_chunks(&[&line]).await;
        assert_eq!(shape(&records), vec![(Tag::Full, MAX_RECORD_CONTENT)]);
        // The same with the newline arriving in a later read.
        let (records, _) = copy_chunks(&[&line[..MAX_RECORD_CONTENT], b"\n"]).await;
        assert_eq!(shape(&records), vec![(Tag::Full, MAX_RECORD_CONTENT)]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_byte_over_16k_splits() {
        let mut line = vec![b'y'; MAX_RECORD_CONTENT + 1];
        line.push(b'\n');
        let (records, _) = copy_chunks(&[&line]).await;
        assert_eq!(
            shape(&records),
            vec![(Tag::Partial, MAX_RECORD_CONTENT), (Tag::Full, 1)]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn exactly_16k_at_eof_is_one_partial() {
        let line = vec![b'z'; MAX_RECORD_CONTENT];
        let (records, _) = copy_chunks(&[&line]).await;
        assert_eq!(shape(&records), vec![(Tag::Partial, MAX_RECORD_CONTENT)]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn forty_k_line_is_p_p_f() {
        let mut line: Vec<u8> = (0..40 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        line.push(b'\n');
        line.extend_from_slice(b"next\n");
        let (records, _) = copy_chunks(&[&line[..1000], &line[1000..]]).await;
        assert_eq!(
            shape(&records),
            vec![
                (Tag::Partial, MAX_RECORD_CONTENT),
                (Tag::Partial, MAX_RECORD_CONTENT),
                (Tag::Full, 40 * 1024 - 2 * MAX_RECORD_CONTENT),
                (Tag::Full, 4),
            ]
        );
    }

    #[test]
    fn open_needs_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing").join("0.log");
        let Err(e) = LogFile::open(&path) else {
            panic!("opened a log in a missing directory");
        };
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let message = e.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(!dir.path().join("missing").exists());
    }

    #[test]
    fn new_file_mode_and_append() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let log = LogFile::open(&path).expect("open");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode & !LOG_FILE_MODE, 0, "mode {mode:o}");
        log.write_record(Stream::Stdout, Tag::Full, b"one", at(1, 0))
            .expect("write");
        drop(log);
        // Opening again (a shim restart) appends.
        let log = LogFile::open(&path).expect("reopen");
        log.write_record(Stream::Stderr, Tag::Full, b"two", at(2, 0))
            .expect("write");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "1970-01-01T00:00:01Z stdout F one\n1970-01-01T00:00:02Z stderr F two\n"
        );
    }

    /// Both streams into one file from two threads: every line is one whole
    /// record and each stream reassembles exactly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stdout_and_stderr_concurrently() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let log = LogFile::open(&path).expect("open");
        let input = |stream: Stream| {
            let mut out = Vec::new();
            for i in 0..3000usize {
                let len = if i % 500 == 7 { 20_000 } else { i % 97 };
                out.extend_from_slice(format!("{} {i} ", stream.as_str()).as_bytes());
                out.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, len));
                out.push(b'\n');
            }
            out.extend_from_slice(b"no newline");
            out
        };
        let mut tasks = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let data = input(stream);
            let (mut tx, rx) = tokio::io::duplex(4096);
            let copier = tokio::spawn(copy_stream(rx, stream, Arc::clone(&log)));
            let writer = tokio::spawn(async move {
                // Odd sizes so that lines straddle reads.
                for chunk in data.chunks(1237) {
                    tx.write_all(chunk).await.expect("write");
                }
            });
            tasks.push((stream, copier, writer));
        }
        for (stream, copier, writer) in tasks {
            writer.await.expect("writer");
            let stats = copier.await.expect("join").expect("copy");
            assert_eq!(stats.bytes_read, input(stream).len() as u64);
            assert_eq!(stats.bytes_dropped, 0);
        }
        let records = read_records(&path);
        for stream in [Stream::Stdout, Stream::Stderr] {
            assert!(reassemble(&records, stream) == input(stream), "{stream:?}");
        }
    }

    #[test]
    fn rotation_reopens_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let rotated = dir.path().join("0.log.20240101-000000");
        let log = LogFile::open(&path).expect("open");
        log.write_record(Stream::Stdout, Tag::Full, b"before", at(1, 0))
            .expect("write");
        std::fs::rename(&path, &rotated).expect("rename");
        // Until the reopen, writes still land in the renamed file.
        log.write_record(Stream::Stdout, Tag::Full, b"still old", at(2, 0))
            .expect("write");
        log.reopen().expect("reopen");
        log.write_record(Stream::Stderr, Tag::Full, b"after", at(3, 0))
            .expect("write");
        let contents =
            |p: &Path| -> Vec<Vec<u8>> { read_records(p).into_iter().map(|r| r.content).collect() };
        assert_eq!(
            contents(&rotated),
            vec![b"before".to_vec(), b"still old".to_vec()]
        );
        assert_eq!(contents(&path), vec![b"after".to_vec()]);
    }

    #[test]
    fn failed_reopen_keeps_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = dir.path().join("pod");
        std::fs::create_dir(&logs).expect("mkdir");
        let path = logs.join("0.log");
        let log = LogFile::open(&path).expect("open");
        std::fs::rename(&logs, dir.path().join("gone")).expect("rename dir");
        assert!(log.reopen().is_err());
        log.write_record(Stream::Stdout, Tag::Full, b"kept", at(1, 0))
            .expect("write");
        let records = read_records(&dir.path().join("gone").join("0.log"));
        assert_eq!(records[0].content, b"kept");
    }

    /// Rotating while a copier writes: the old file then the new one hold
    /// the whole stream, in order, with no record split across them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotation_while_copying_loses_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let rotated = dir.path().join("0.log.1");
        let log = LogFile::open(&path).expect("open");
        let (mut tx, rx) = tokio::io::duplex(512);
        let copier = tokio::spawn(copy_stream(rx, Stream::Stdout, Arc::clone(&log)));
        let mut input = Vec::new();
        for i in 0..4000 {
            let line = format!("line {i}\n");
            tx.write_all(line.as_bytes()).await.expect("write");
            input.extend_from_slice(line.as_bytes());
            if i == 2000 {
                std::fs::rename(&path, &rotated).expect("rename");
                let log = Arc::clone(&log);
                tokio::task::spawn_blocking(move || log.reopen())
                    .await
                    .expect("join")
                    .expect("reopen");
            }
        }
        drop(tx);
        copier.await.expect("join").expect("copy");
        let old = read_records(&rotated);
        let new = read_records(&path);
        assert!(!old.is_empty() && !new.is_empty());
        let mut all = old;
        all.extend(new);
        assert!(reassemble(&all, Stream::Stdout) == input);
        assert!(all.iter().all(|r| r.tag == Tag::Full));
    }

    /// Unmounts the test's tmpfs however the test ends.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// A full disk: the copier drains its whole input, counts what it could
    /// not write, and the file recovers once space is back. Needs root (to
    /// mount a 64 KiB tmpfs).
    #[tokio::test(flavor = "current_thread")]
    async fn full_disk_keeps_draining() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        if let Err(e) = nix::mount::mount(
            Some("tmpfs"),
            &mnt,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=64k"),
        ) {
            // The suite runs as root, like the shim; a host that refuses
            // the mount cannot run this test, and that is a failure.
            panic!("mounting a 64k tmpfs needs root (CAP_SYS_ADMIN): {e}");
        }
        let _unmount = Unmount(mnt.clone());
        let path = mnt.join("0.log");
        let log = LogFile::open(&path).expect("open");
        // Part of a page in use, so that a later record gets cut short where
        // the page ends: the torn-record path runs too.
        log.write_record(Stream::Stdout, Tag::Full, b"first", SystemTime::now())
            .expect("first write");
        let filler_path = mnt.join("filler");
        let mut filler = File::create(&filler_path).expect("filler");
        let block = [0u8; 4096];
        loop {
            match filler.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling tmpfs: {e}"),
            }
        }
        drop(filler);

        // 1 MiB of distinct 100-byte lines, far more than the disk holds.
        let mut input = Vec::new();
        for i in 0..10_486 {
            input.extend_from_slice(format!("line {i:06} ").as_bytes());
            input.extend_from_slice(&[b'x'; 87]);
            input.push(b'\n');
        }
        let (mut tx, rx) = tokio::io::duplex(8192);
        let copier = tokio::spawn(copy_stream(rx, Stream::Stdout, Arc::clone(&log)));
        tx.write_all(&input)
            .await
            .expect("the copier must keep reading");
        drop(tx);
        let stats = copier.await.expect("join").expect("copy ends at EOF");
        assert_eq!(stats.bytes_read, input.len() as u64);
        assert!(stats.bytes_dropped > 0, "{stats:?}");
        assert!(stats.bytes_dropped < input.len() as u64, "{stats:?}");

        std::fs::remove_file(&filler_path).expect("free space");
        log.write_record(Stream::Stderr, Tag::Full, b"recovered", SystemTime::now())
            .expect("writes succeed again");

        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.last(), Some(&b'\n'));
        let lines: Vec<&[u8]> = bytes[..bytes.len() - 1].split(|&b| b == b'\n').collect();
        let first = parse_record(lines[0]).expect("first record");
        assert_eq!(first.content, b"first");
        let last = parse_record(lines[lines.len() - 1]).expect("last record");
        assert_eq!(
            (last.stream, last.content.as_slice()),
            (Stream::Stderr, b"recovered".as_slice())
        );
        // Between them: whole records of the input's first lines, in order,
        // then at most one line cut short by the full disk.
        let middle = &lines[1..lines.len() - 1];
        let mut whole = 0;
        for line in middle {
            match parse_record(line) {
                Ok(r) if r.content.len() == 99 => {
                    assert_eq!(r.content, input[whole * 100..whole * 100 + 99]);
                    whole += 1;
                }
                _ => break,
            }
        }
        assert!(
            middle.len() - whole <= 1,
            "{} torn lines",
            middle.len() - whole
        );
        // Every input byte was either written or counted as dropped (a torn
        // record is counted as dropped, even if the cut fell on its newline).
        let accounted = whole as u64 * 100 + stats.bytes_dropped;
        let total = input.len() as u64;
        assert!(
            accounted == total || accounted == total + 100,
            "written {whole} lines, {stats:?}"
        );
    }
}
