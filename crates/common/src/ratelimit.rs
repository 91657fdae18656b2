//! Per-key rate limits: a token bucket for each key (a hotkey, an IP address), refilled
//! continuously, with time from a [`Clock`] so tests never sleep.
//!
//! `per_minute = 100` allows a burst of 100 and then one request every 0.6 s. The map of
//! buckets is bounded: when it is full, buckets that have refilled completely (and so carry
//! no state) are dropped first; if none has, the least recently used one goes.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;

/// Keys remembered at most; more distinct keys than this evict idle ones.
const DEFAULT_MAX_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by key.
#[derive(Debug)]
pub struct RateLimiter<K> {
    per_minute: u32,
    max_keys: usize,
    clock: Arc<dyn Clock>,
    buckets: Mutex<HashMap<K, Bucket>>,
}

/// A refused request: when the next one would be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_minute` requests per key per minute, burst included; 0 is treated as 1.
    pub fn new(per_minute: u32, clock: Arc<dyn Clock>) -> Self {
        Self { per_minute: per_minute.max(1), max_keys: DEFAULT_MAX_KEYS, clock, buckets: Mutex::new(HashMap::new()) }
    }

    /// Bounds the number of keys remembered (at least 1).
    pub fn with_max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// Takes one token from `key`'s bucket, or says how long until one is there.
    pub fn check(&self, key: &K) -> Result<(), RetryAfter> {
        let now = self.clock.now();
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= self.max_keys {
            Self::evict(&mut buckets, self.max_keys, now, capacity, per_second);
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket { tokens: capacity, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(RetryAfter(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second)))
        }
    }

    /// Whether `key` has a token now, taking none: for limits charged only when something
    /// fails (a refused login, a bad signature), checked before the attempt.
    pub fn peek(&self, key: &K) -> Result<(), RetryAfter> {
        let now = self.clock.now();
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(bucket) = buckets.get(key) else { return Ok(()) };
        let tokens =
            (bucket.tokens + now.saturating_duration_since(bucket.updated).as_secs_f64() * per_second).min(capacity);
        if tokens >= 1.0 { Ok(()) } else { Err(RetryAfter(Duration::from_secs_f64((1.0 - tokens) / per_second))) }
    }

    fn evict(buckets: &mut HashMap<K, Bucket>, max_keys: usize, now: Instant, capacity: f64, per_second: f64) {
        let full =
            |b: &Bucket| b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * per_second >= capacity;
        buckets.retain(|_, b| !full(b));
        if buckets.len() >= max_keys
            && let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.updated).map(|(k, _)| k.clone())
        {
            buckets.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn bursts_then_refills_at_the_configured_rate() {
        let clock = Arc::new(ManualClock::default());
        let limiter = RateLimiter::new(60, clock.clone());
        for _ in 0..60 {
            limiter.check(&"a").unwrap();
        }
        let RetryAfter(wait) = limiter.check(&"a").unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(900), "{wait:?}");
        // Another key has its own bucket.
        limiter.check(&"b").unwrap();
        clock.advance(Duration::from_secs(1));
        limiter.check(&"a").unwrap();
        assert!(limiter.check(&"a").is_err());
        // A full minute refills the whole burst, no more.
        clock.advance(Duration::from_secs(600));
        for _ in 0..60 {
            limiter.check(&"a").unwrap();
        }
        assert!(limiter.check(&"a").is_err());
    }

    #[test]
    fn peek_takes_nothing() {
        let clock = Arc::new(ManualClock::default());
        let limiter = RateLimiter::new(2, clock.clone());
        for _ in 0..5 {
            limiter.peek(&"a").unwrap();
        }
        limiter.check(&"a").unwrap();
        limiter.check(&"a").unwrap();
        let RetryAfter(wait) = limiter.peek(&"a").unwrap_err();
        assert_eq!(wait, Duration::from_secs(30));
        clock.advance(Duration::from_secs(30));
        limiter.peek(&"a").unwrap();
        limiter.peek(&"b").unwrap();
    }

    #[test]
    fn the_key_map_is_bounded() {
        let clock = Arc::new(ManualClock::default());
        let limiter = RateLimiter::new(1, clock.clone()).with_max_keys(2);
        limiter.check(&1).unwrap();
        clock.advance(Duration::from_millis(1));
        limiter.check(&2).unwrap();
        clock.advance(Duration::from_millis(1));
        // Key 1 (least recently used) is forgotten to make room for 3.
        limiter.check(&3).unwrap();
        assert_eq!(limiter.buckets.lock().unwrap().len(), 2);
        assert!(limiter.check(&3).is_err());
    }
}
