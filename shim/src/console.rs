//! The guest's serial console: copied to `console.log`, timestamped at its
//! first byte (the kernel is running), and its tail kept in memory so that a
//! failed boot can say what the guest printed last.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Result;
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

/// Copies `serial` into `log` (appending) until EOF. `on_first_byte` runs
/// once, as soon as the guest printed anything.
pub fn spawn_reader<R>(
    mut serial: R,
    log: &Path,
    tail: ConsoleTail,
    on_first_byte: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let file = crate::process::open_append(log)?;
    let mut file = tokio::fs::File::from_std(file);
    let shown = log.display().to_string();
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
            if let Err(e) = file.write_all(&buf[..n]).await {
                // Keep draining: a full disk must not block the guest's
                // serial port, and the tail still helps error messages.
                tracing::warn!("writing {shown}: {e}");
            }
        }
        let _ = file.flush().await;
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
        let h = spawn_reader(r, &log, tail.clone(), move || {
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
}
