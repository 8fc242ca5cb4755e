//! Single-use, short-lived tokens that stand for one streaming request.
//!
//! The CRI call (Exec, Attach, PortForward) validates the request and
//! parks it here; the URL it returns carries only the token. Whoever holds
//! the URL may connect once, within the TTL: a token is removed as it is
//! redeemed, so a replayed or leaked URL is worth nothing afterwards. The
//! cache is bounded, because every CRI client can fill it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

/// Requests parked at once; kubelet's own streaming server uses the same.
pub const MAX_PENDING: usize = 1000;
/// Random bytes per token: guessing one is hopeless within its TTL.
const TOKEN_BYTES: usize = 18;

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{MAX_PENDING} streaming requests are already waiting for their client")]
    Full,
    #[error("no randomness for a token: {0}")]
    Random(String),
}

pub struct Tokens<T> {
    ttl: Duration,
    pending: Mutex<HashMap<String, (Instant, T)>>,
}

impl<T> Tokens<T> {
    pub fn new(ttl: Duration) -> Self {
        Tokens {
            ttl,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Parks `request` and returns its token (URL-safe).
    pub fn insert(&self, request: T) -> Result<String, TokenError> {
        let mut raw = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut raw).map_err(|e| TokenError::Random(e.to_string()))?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, (expires, _)| *expires > now);
        if pending.len() >= MAX_PENDING {
            return Err(TokenError::Full);
        }
        pending.insert(token.clone(), (now + self.ttl, request));
        Ok(token)
    }

    /// Redeems `token`: its request if it exists and has not expired. Either
    /// way the token is gone afterwards.
    pub fn take(&self, token: &str) -> Option<T> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, request) = pending.remove(token)?;
        (expires > Instant::now()).then_some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_single_use() {
        let t = Tokens::new(Duration::from_secs(60));
        let a = t.insert(1).unwrap();
        let b = t.insert(2).unwrap();
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(t.take(&a), Some(1));
        assert_eq!(t.take(&a), None);
        assert_eq!(t.take(&b), Some(2));
        assert_eq!(t.take("nonsense"), None);
    }

    #[test]
    fn an_expired_token_is_refused_and_forgotten() {
        let t = Tokens::new(Duration::from_millis(1));
        let a = t.insert(1).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(t.take(&a), None);
    }

    #[test]
    fn the_cache_is_bounded_but_expired_entries_make_room() {
        // Long enough that none expires while the cache fills, even on a
        // loaded machine.
        let t = Tokens::new(Duration::from_secs(2));
        for i in 0..MAX_PENDING {
            t.insert(i).unwrap();
        }
        assert!(matches!(t.insert(0), Err(TokenError::Full)));
        std::thread::sleep(Duration::from_millis(2100));
        t.insert(0).unwrap();
    }
}
