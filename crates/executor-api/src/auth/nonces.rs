//! The nonces an authenticator has seen within its time window.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// Nonces seen within the window, each dropped once its request's timestamp has left it.
/// Bounded: signatures are checked and the rate limit applied before a nonce is stored, so
/// only the miner's own admitted calls fill it; past `capacity` the oldest go first (they are
/// the closest to expiry and their timestamps are the first to be refused as stale).
#[derive(Debug)]
pub(super) struct NonceCache {
    capacity: usize,
    seen: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl NonceCache {
    /// An empty cache holding at most `capacity` nonces.
    pub(super) fn new(capacity: usize) -> Self {
        Self { capacity, seen: HashMap::new(), order: VecDeque::new() }
    }

    /// Records `nonce` until `expires`; false if it was already there.
    pub(super) fn insert(&mut self, nonce: &str, now: Instant, expires: Instant) -> bool {
        while let Some((at, _)) = self.order.front()
            && (*at <= now || self.order.len() >= self.capacity)
        {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(nonce) {
            return false;
        }
        self.seen.insert(nonce.to_owned(), expires);
        // Expiries arrive nearly in order; keep the queue sorted for the sweep above.
        let at = self.order.partition_point(|(e, _)| *e <= expires);
        self.order.insert(at, (expires, nonce.to_owned()));
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn nonce_cache_stays_bounded() {
        let mut cache = NonceCache::new(4);
        let now = Instant::now();
        for i in 0..10 {
            assert!(cache.insert(&format!("n{i}"), now, now + Duration::from_secs(60)));
        }
        assert!(cache.seen.len() <= 4 && cache.order.len() == cache.seen.len());
        assert!(!cache.insert("n9", now, now + Duration::from_secs(60)));
    }
}
