//! A session's idle timeout: when it last carried traffic either way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When a session last carried traffic, for its idle timeout.
#[derive(Clone)]
pub struct Idle {
    start: Instant,
    last_ms: Arc<AtomicU64>,
    limit: Duration,
}

impl Idle {
    pub(super) fn new(limit: Duration) -> Idle {
        Idle {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
            limit,
        }
    }

    pub(super) fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no traffic was seen for the limit.
    pub(super) async fn expired(&self) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = last + self.limit;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}
