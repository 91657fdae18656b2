//! The executor's side of signed sessions (scheme v3, docs/api.md): the sessions open now,
//! each with its key, its hotkey, its expiry and the counters it has accepted.
//!
//! Sessions live in memory only: a restart ends them all (clients open new ones). They end
//! `session_ttl` after they opened, and opening one more than `max_sessions` ends the one used
//! least recently (a miner that reopens often is not locked out by its own old sessions).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::hotkey::Hotkey;

use super::signing::{COUNTER_WINDOW, session_mac_matches};

/// One open session.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub hotkey: Hotkey,
    key: [u8; 32],
    expires: Instant,
    /// Unix seconds of `expires`, as the client was told.
    pub expires_at: u64,
    /// Milliseconds from the table's epoch to the last call, for least-recently-used eviction.
    last_used: AtomicU64,
    counters: Mutex<Counters>,
}

impl Session {
    /// Whether `tag` is this session's MAC of the call (see `signing::session_mac_matches`).
    pub fn mac_matches(
        &self,
        executor_id: &str,
        method: &str,
        counter: u64,
        message_sha256: &[u8; 32],
        tag: &[u8],
    ) -> bool {
        session_mac_matches(&self.key, executor_id, &self.id, method, counter, message_sha256, tag)
    }

    /// Accepts `counter` once: refused when it was seen, or is [`COUNTER_WINDOW`] or more
    /// behind the highest seen. Only after the MAC checked, so nobody else spends counters.
    pub fn accept(&self, counter: u64) -> Result<(), CounterRefused> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).accept(counter)
    }
}

/// Why a counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CounterRefused {
    #[error("counter {counter} was already used in this session")]
    Used { counter: u64 },
    #[error(
        "counter {counter} is {COUNTER_WINDOW} or more behind the highest one seen ({highest}); \
         counters are accepted once, in any order within that window"
    )]
    TooOld { counter: u64, highest: u64 },
}

/// The counters a session accepted: the highest, and which of the [`COUNTER_WINDOW`] below it
/// were seen (bit `counter % COUNTER_WINDOW`).
#[derive(Debug)]
struct Counters {
    highest: u64,
    seen: [u64; (COUNTER_WINDOW / 64) as usize],
}

impl Counters {
    fn new() -> Self {
        Self { highest: 0, seen: [0; (COUNTER_WINDOW / 64) as usize] }
    }

    fn bit(counter: u64) -> (usize, u64) {
        let slot = counter % COUNTER_WINDOW;
        ((slot / 64) as usize, 1 << (slot % 64))
    }

    fn accept(&mut self, counter: u64) -> Result<(), CounterRefused> {
        if counter < self.highest && self.highest - counter >= COUNTER_WINDOW {
            return Err(CounterRefused::TooOld { counter, highest: self.highest });
        }
        if counter > self.highest {
            // The slots of the counters between the old highest and this one are free again.
            let fresh = (counter - self.highest).min(COUNTER_WINDOW);
            for n in 1..=fresh {
                let (word, mask) = Self::bit(self.highest + n);
                self.seen[word] &= !mask;
            }
            self.highest = counter;
        } else {
            let (word, mask) = Self::bit(counter);
            if self.seen[word] & mask != 0 {
                return Err(CounterRefused::Used { counter });
            }
        }
        let (word, mask) = Self::bit(counter);
        self.seen[word] |= mask;
        Ok(())
    }
}

/// Why a session id finds no session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionGone {
    #[error(
        "session {0} is not open on this executor (it never was, was ended to make room for newer ones, or the \
         executor restarted); open a new one"
    )]
    Unknown(String),
    #[error("session {0} expired (server.session_ttl); open a new one")]
    Expired(String),
}

/// The open sessions.
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    max: usize,
    epoch: Instant,
    open: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    pub fn new(ttl: Duration, max: usize, now: Instant) -> Self {
        Self { ttl, max: max.max(1), epoch: now, open: Mutex::new(HashMap::new()) }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Opens a session for `hotkey` with `key`, ending the least recently used one (and any
    /// expired) when the table is full; returns it and the id of the one ended, if any.
    pub fn open(
        &self,
        id: String,
        hotkey: Hotkey,
        key: [u8; 32],
        now: Instant,
        unix_now: u64,
    ) -> (Arc<Session>, Option<String>) {
        let session = Arc::new(Session {
            id: id.clone(),
            hotkey,
            key,
            expires: now + self.ttl,
            expires_at: unix_now + self.ttl.as_secs(),
            last_used: AtomicU64::new(self.millis(now)),
            counters: Mutex::new(Counters::new()),
        });
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, s| s.expires > now);
        let mut ended = None;
        if open.len() >= self.max
            && let Some(oldest) =
                open.values().min_by_key(|s| s.last_used.load(Ordering::Relaxed)).map(|s| s.id.clone())
        {
            open.remove(&oldest);
            ended = Some(oldest);
        }
        open.insert(id, session.clone());
        (session, ended)
    }

    /// The session `id`, if it is open at `now` (an expired one is ended here).
    pub fn get(&self, id: &str, now: Instant) -> Result<Arc<Session>, SessionGone> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let Some(session) = open.get(id) else {
            return Err(SessionGone::Unknown(id.to_owned()));
        };
        if session.expires <= now {
            open.remove(id);
            return Err(SessionGone::Expired(id.to_owned()));
        }
        session.last_used.store(self.millis(now), Ordering::Relaxed);
        Ok(session.clone())
    }

    /// How many sessions are open (expired ones not yet ended included).
    pub fn count(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_accepted_once_in_any_order_within_the_window() {
        let mut c = Counters::new();
        assert_eq!(c.accept(1), Ok(()));
        assert_eq!(c.accept(1), Err(CounterRefused::Used { counter: 1 }));
        // Out of order within the window: each once.
        for n in [5, 3, 4, 2] {
            assert_eq!(c.accept(n), Ok(()), "{n}");
        }
        assert_eq!(c.accept(3), Err(CounterRefused::Used { counter: 3 }));
        // A jump: what was below stays refused once seen, what was skipped is still open.
        assert_eq!(c.accept(1000), Ok(()));
        assert_eq!(c.accept(500), Ok(()));
        assert_eq!(c.accept(500), Err(CounterRefused::Used { counter: 500 }));
        assert_eq!(c.accept(5), Err(CounterRefused::Used { counter: 5 }));
        // Past the window: refused however it was.
        assert_eq!(c.accept(1030), Ok(()));
        assert_eq!(c.accept(6), Err(CounterRefused::TooOld { counter: 6, highest: 1030 }));
        assert_eq!(c.accept(7), Ok(()), "1030 - 7 < 1024: still in the window, never seen");
        // A slot reused by a later counter is free for it, not for the old one.
        assert_eq!(c.accept(1030 + 1024 + 5), Ok(()));
        assert_eq!(c.accept(1030 + 5), Err(CounterRefused::TooOld { counter: 1035, highest: 2059 }));
        assert_eq!(c.accept(2059 - 1023), Ok(()));
        assert_eq!(c.accept(u64::MAX), Ok(()));
        assert_eq!(c.accept(u64::MAX), Err(CounterRefused::Used { counter: u64::MAX }));
        assert_eq!(c.accept(u64::MAX - 1), Ok(()));
    }

    fn hotkey() -> Hotkey {
        e2e::keys::alice().hotkey().clone()
    }

    #[test]
    fn sessions_expire_and_the_least_recently_used_makes_room() {
        let t0 = Instant::now();
        let sessions = Sessions::new(Duration::from_secs(60), 2, t0);
        let (a, ended) = sessions.open("a".into(), hotkey(), [1; 32], t0, 1000);
        assert_eq!((a.expires_at, ended), (1060, None));
        sessions.open("b".into(), hotkey(), [2; 32], t0 + Duration::from_secs(1), 1001);
        // a is used after b opened: b is the least recently used.
        sessions.get("a", t0 + Duration::from_secs(2)).unwrap();
        let (_, ended) = sessions.open("c".into(), hotkey(), [3; 32], t0 + Duration::from_secs(3), 1003);
        assert_eq!(ended.as_deref(), Some("b"));
        assert_eq!(sessions.get("b", t0 + Duration::from_secs(3)).unwrap_err(), SessionGone::Unknown("b".into()));
        assert!(sessions.get("a", t0 + Duration::from_secs(59)).is_ok());
        assert_eq!(sessions.get("a", t0 + Duration::from_secs(60)).unwrap_err(), SessionGone::Expired("a".into()));
        assert_eq!(sessions.count(), 1, "the expired one is ended when asked for");
        // An expired session makes room before anyone is evicted.
        let (_, ended) = sessions.open("d".into(), hotkey(), [4; 32], t0 + Duration::from_secs(61), 1061);
        assert_eq!(ended, None);
        let (_, ended) = sessions.open("e".into(), hotkey(), [5; 32], t0 + Duration::from_secs(64), 1064);
        assert_eq!(ended, None, "c expired at 63 s");
    }
}
