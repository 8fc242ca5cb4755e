//! The guest's serial console: copied to `console.log`, timestamped at its
//! first byte (the kernel is running), and its tail kept in memory so that a
//! failed boot can say what the guest printed last.
//!
//! The guest decides how much it prints, so `console.log` is capped: at the
//! cap it is renamed to `console.log.1` (replacing the one before) and a new
//! one begins, which keeps the newest output and at most twice the cap on
//! disk. A rename costs nothing at any cap, where keeping a tail inside one
//! file would mean copying up to the cap on every rotation; and readers that
//! follow the file (`tail -F`) know renames from logrotate.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use vmpod_agent_proto::BANNER_PREFIX;

/// How much of the console stays in memory for error messages.
pub const TAIL_BYTES: usize = 8 * 1024;

#[derive(Clone, Default)]
pub struct ConsoleTail {
    bytes: Arc<Mutex<VecDeque<u8>>>,
    /// Set once the agent's banner went by; it is printed after the agent
    /// bound its vsock listener.
    banner: Arc<tokio::sync::watch::Sender<bool>>,
}

impl ConsoleTail {
    fn push(&self, bytes: &[u8]) {
        let mut tail = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        tail.extend(bytes);
        let excess = tail.len().saturating_sub(TAIL_BYTES);
        tail.drain(..excess);
        if !*self.banner.borrow() {
            // Only the new bytes, plus enough before them for a banner split
            // across reads, need looking at.
            let needle = BANNER_PREFIX.as_bytes();
            let from = tail.len().saturating_sub(bytes.len() + needle.len());
            let recent: Vec<u8> = tail.range(from..).copied().collect();
            if recent.windows(needle.len()).any(|w| w == needle) {
                self.banner.send_replace(true);
            }
        }
    }

    /// Resolves once the agent's banner has appeared on the console.
    pub async fn banner_seen(&self) {
        let mut rx = self.banner.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|seen| *seen).await;
    }

    /// The last `max` bytes, lossily decoded; empty when nothing was printed.
    pub fn last(&self, max: usize) -> String {
        let tail = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let start = tail.len().saturating_sub(max);
        let bytes: Vec<u8> = tail.range(start..).copied().collect();
        String::from_utf8_lossy(&bytes).trim_end().to_owned()
    }
}

/// `console.log` and its one rotated generation.
struct CappedLog {
    path: PathBuf,
    rotated: PathBuf,
    cap: u64,
    /// `None` after a failed reopen; retried at the next rotation.
    file: Option<tokio::fs::File>,
    /// Bytes given to the current file, failed writes included, so that a
    /// failing disk cannot keep the file from rotating.
    written: u64,
    /// Set after a failed write, so a full disk logs once, not once per
    /// read of guest output into `shim.log`.
    failing: bool,
}

impl CappedLog {
    fn open(path: &Path, cap: u64) -> Result<Self> {
        let file = crate::process::open_append(path)?;
        // A file left from before (a restarted shim) counts toward the cap.
        let written = file
            .metadata()
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        Ok(Self {
            path: path.to_owned(),
            rotated: rotated.into(),
            cap: cap.max(1),
            file: Some(tokio::fs::File::from_std(file)),
            written,
            failing: false,
        })
    }

    async fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.written >= self.cap {
                self.rotate().await;
            }
            let room = usize::try_from(self.cap - self.written).unwrap_or(usize::MAX);
            let (now, rest) = data.split_at(room.min(data.len()));
            data = rest;
            self.written += now.len() as u64;
            if let Some(file) = &mut self.file {
                let result = file.write_all(now).await;
                self.report(result);
            }
        }
    }

    async fn rotate(&mut self) {
        if let Some(mut file) = self.file.take() {
            // tokio writes in the background; the last one lands first.
            let _ = file.flush().await;
        }
        self.written = 0;
        match tokio::fs::rename(&self.path, &self.rotated).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                // Without the rename the bound must still hold: start over.
                tracing::warn!(
                    "renaming {} to {}: {e}; truncating it instead",
                    self.path.display(),
                    self.rotated.display()
                );
                let _ = tokio::fs::remove_file(&self.path).await;
            }
        }
        match crate::process::open_append(&self.path) {
            Ok(f) => self.file = Some(tokio::fs::File::from_std(f)),
            Err(e) => self.report(Err(std::io::Error::other(format!("{e:#}")))),
        }
    }

    fn report(&mut self, result: std::io::Result<()>) {
        match result {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!(
                    "writing {}: {e}; guest console output is dropped until writes work again",
                    self.path.display()
                );
            }
            Err(_) => {}
        }
    }

    async fn flush(&mut self) {
        if let Some(file) = &mut self.file {
            let _ = file.flush().await;
        }
    }
}

/// Copies `serial` into `log` (appending, rotated at `cap` bytes, see the
/// module doc) until EOF. `on_first_byte` runs once, as soon as the guest
/// printed anything.
pub fn spawn_reader<R>(
    mut serial: R,
    log: &Path,
    cap: u64,
    tail: ConsoleTail,
    on_first_byte: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let mut file = CappedLog::open(log, cap)?;
    Ok(tokio::spawn(async move {
        let mut first = Some(on_first_byte);
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match serial.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!("reading the serial console: {e}");
                    break;
                }
            };
            if let Some(f) = first.take() {
                f();
            }
            tail.push(&buf[..n]);
            // Failures are logged inside and the reading goes on: a full
            // disk must not block the guest's serial port, and the tail
            // still helps error messages.
            file.write(&buf[..n]).await;
        }
        file.flush().await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "current_thread")]
    async fn banner_split_across_reads_is_seen() {
        let tail = ConsoleTail::default();
        let (a, b) = BANNER_PREFIX.as_bytes().split_at(5);
        tail.push(b"[    0.7] kernel noise\n");
        tail.push(a);
        assert!(!*tail.banner.borrow());
        tail.push(b);
        tokio::time::timeout(std::time::Duration::from_secs(1), tail.banner_seen())
            .await
            .expect("banner seen");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn copies_keeps_tail_and_fires_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        let (mut w, r) = tokio::io::duplex(64);
        let tail = ConsoleTail::default();
        let fired = Arc::new(AtomicUsize::new(0));
        let f = fired.clone();
        let h = spawn_reader(r, &log, 1 << 20, tail.clone(), move || {
            f.fetch_add(1, Ordering::SeqCst);
        })
        .expect("reader");
        let big = vec![b'x'; TAIL_BYTES * 2];
        w.write_all(&big).await.expect("write");
        w.write_all(b"\nlast line\n").await.expect("write");
        drop(w);
        h.await.expect("join");
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        assert!(tail.last(100).ends_with("last line"));
        assert!(!*tail.banner.borrow());
        assert_eq!(tail.last(usize::MAX).len(), TAIL_BYTES - 1); // trailing '\n' trimmed
        let on_disk = std::fs::read(&log).expect("read log");
        assert_eq!(on_disk.len(), TAIL_BYTES * 2 + 11);
    }

    /// Writes `data` through a reader capped at `cap` in reads of at most
    /// `chunk` bytes and waits for EOF.
    async fn feed(log: &Path, cap: u64, data: &[u8], chunk: usize) -> ConsoleTail {
        let (mut w, r) = tokio::io::duplex(chunk);
        let tail = ConsoleTail::default();
        let h = spawn_reader(r, log, cap, tail.clone(), || {}).expect("reader");
        for part in data.chunks(chunk) {
            w.write_all(part).await.expect("write");
        }
        drop(w);
        h.await.expect("join");
        tail
    }

    /// Bytes no shorter run repeats, so a kept tail shows where it starts.
    fn numbered(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn rotates_at_the_cap_keeping_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        let old = dir.path().join("console.log.1");
        let data = numbered(1000);
        let tail = feed(&log, 300, &data, 64).await;
        // 1000 = 300 + 300 + 300 + 100: the third 300 was rotated last.
        let current = std::fs::read(&log).expect("read log");
        let rotated = std::fs::read(&old).expect("read log.1");
        assert_eq!(current, data[900..]);
        assert_eq!(rotated, data[600..900]);
        // Nothing else in the dir: one generation only.
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 2);
        assert!(tail.bytes.lock().expect("lock").len() <= TAIL_BYTES);

        // A restarted reader counts what is there and replaces the old .1.
        feed(&log, 300, &numbered(250), 64).await;
        assert_eq!(std::fs::read(&old).expect("read log.1").len(), 300);
        assert_eq!(std::fs::read(&log).expect("read log").len(), 50);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_flood_stays_within_twice_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        let data = numbered(1 << 20);
        // A cap of no multiple of the 4 KiB reads, so reads are split
        // across files.
        let tail = feed(&log, 5000, &data, 16 << 10).await;
        let current = std::fs::read(&log).expect("read log");
        let rotated = std::fs::read(dir.path().join("console.log.1")).expect("read log.1");
        assert_eq!((current.len(), rotated.len()), ((1 << 20) % 5000, 5000));
        let kept = [rotated, current].concat();
        assert_eq!(kept, data[data.len() - kept.len()..]);
        assert_eq!(tail.bytes.lock().expect("lock").len(), TAIL_BYTES);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_oversized_leftover_rotates_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        std::fs::write(&log, vec![b'o'; 500]).expect("write");
        feed(&log, 300, b"new\n", 64).await;
        assert_eq!(std::fs::read(&log).expect("read log"), b"new\n");
        assert_eq!(
            std::fs::read(dir.path().join("console.log.1"))
                .expect("read log.1")
                .len(),
            500
        );
    }
}
