//! Who may call the public API: request signatures by the managing miner's hotkey, checked by
//! the [`Authenticator`] (signature, time window, rate limit, nonce), and how many refused
//! calls one address may make.
//!
//! - [`signing`]: the wire protocol (headers, canonical string), shared with the client.
//! - `batch`: the threads that check signatures in batches, behind a bounded queue.
//! - `nonces`: the nonces seen within the window.

mod batch;
mod nonces;
pub mod signing;

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use common::clock::Clock;
use common::config::Config;
use common::hotkey::{Hotkey, SignatureError, Verifier};
use common::peers::PeerKey;
use common::ratelimit::RateLimiter;
use http::HeaderMap;

use self::batch::BatchVerifier;
use self::nonces::NonceCache;
pub use self::signing::{
    CANONICAL_PREFIX, EXECUTOR_ID_HEADER, HOTKEY_HEADER, NONCE_HEADER, SCHEME, SCHEME_HEADER, SIGNATURE_HEADER,
    TIMESTAMP_HEADER, canonical_string, is_open, sha256, sign,
};

/// Why a call was refused; the name is the reason code in the status message and the
/// `reason` label of `executor_api_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// One of the five headers is absent.
    MissingSignature,
    /// Signed by another scheme than [`SCHEME`] (the first one had no `x-executor-auth` and no
    /// executor id in the signed string).
    UnsupportedScheme,
    /// A header is present but unparseable (bad address, timestamp, nonce or signature encoding).
    MalformedMetadata,
    /// The request body is not one uncompressed gRPC message.
    MalformedBody,
    /// A valid hotkey that is not `managing_miner_hotkey`.
    HotkeyNotAllowed,
    /// The timestamp is outside `[server] auth_time_window`.
    StaleTimestamp,
    /// The signature does not match the canonical string (a tampered body, method or header).
    BadSignature,
    /// The nonce was used before within the window.
    ReplayedNonce,
    /// More than `api_requests_per_minute`.
    RateLimited,
    /// The caller's address had more than `[server] auth_failures_per_minute` refused calls:
    /// refused before its body is read or its signature checked.
    TooManyFailures,
    /// More signature checks are waiting than the executor queues: refused at once.
    Overloaded,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::MissingSignature,
        Reason::UnsupportedScheme,
        Reason::MalformedMetadata,
        Reason::MalformedBody,
        Reason::HotkeyNotAllowed,
        Reason::StaleTimestamp,
        Reason::BadSignature,
        Reason::ReplayedNonce,
        Reason::RateLimited,
        Reason::TooManyFailures,
        Reason::Overloaded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingSignature => "missing_signature",
            Reason::UnsupportedScheme => "unsupported_scheme",
            Reason::MalformedMetadata => "malformed_metadata",
            Reason::MalformedBody => "malformed_body",
            Reason::HotkeyNotAllowed => "hotkey_not_allowed",
            Reason::StaleTimestamp => "stale_timestamp",
            Reason::BadSignature => "bad_signature",
            Reason::ReplayedNonce => "replayed_nonce",
            Reason::RateLimited => "rate_limited",
            Reason::TooManyFailures => "too_many_failures",
            Reason::Overloaded => "overloaded",
        }
    }

    /// Whether a refusal for this reason counts against the caller's address
    /// (`auth_failures_per_minute`): every refusal of the call itself, not the limits (the
    /// miner's own rate limit, the failure limit, a full queue).
    pub fn is_failure(self) -> bool {
        !matches!(self, Reason::RateLimited | Reason::TooManyFailures | Reason::Overloaded)
    }
}

/// A refusal: the reason and a sentence for the caller (never a secret). Its status is
/// chosen by the errors module (`AuthFailure::to_status`), which this module never imports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    pub reason: Reason,
    pub detail: String,
}

impl AuthFailure {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

/// What a call's headers claim, checked as far as possible without its body.
#[derive(Debug)]
pub struct Claim {
    hotkey: Hotkey,
    timestamp: u64,
    nonce: String,
    signature: Vec<u8>,
    /// The executor's clock when the headers were checked, Unix seconds.
    now: u64,
}

/// `managing_miner_hotkey` is not a key signatures can be checked against.
#[derive(Debug, Clone, thiserror::Error)]
#[error("managing_miner_hotkey {miner}: {source}")]
pub struct MinerKeyError {
    pub miner: Hotkey,
    #[source]
    pub source: SignatureError,
}

/// What the [`Authenticator`] enforces, from the config ([`Policy::of`]).
#[derive(Debug, Clone)]
pub struct Policy {
    /// `managing_miner_hotkey`: the one hotkey that may call.
    pub miner: Hotkey,
    /// This executor's id: signatures name it.
    pub executor_id: String,
    /// `[server] auth_time_window`.
    pub window: Duration,
    /// `api_requests_per_minute`: the miner's calls a minute.
    pub per_minute: u32,
    /// `[server] auth_failures_per_minute`: refused calls one address may make a minute.
    pub failures_per_minute: u32,
}

impl Policy {
    pub fn of(miner: Hotkey, executor_id: String, config: &Config) -> Self {
        Self {
            miner,
            executor_id,
            window: config.server.auth_time_window,
            per_minute: config.validator.access_config.rate_limits.api_requests_per_minute,
            failures_per_minute: config.server.auth_failures_per_minute,
        }
    }
}

/// The authentication policy of the public API.
#[derive(Debug)]
pub struct Authenticator {
    miner: Hotkey,
    executor_id: String,
    /// When this authenticator (the process) started, Unix seconds: nonces from before are
    /// forgotten, so earlier timestamps are refused.
    started: u64,
    /// The miner's key, decompressed once rather than per call.
    verifier: Verifier,
    /// Signature checks in batches on a thread of their own; `None` if it could not start.
    batches: Option<BatchVerifier>,
    window: Duration,
    clock: Arc<dyn Clock>,
    nonces: Mutex<NonceCache>,
    limiter: RateLimiter<Hotkey>,
    /// Refused calls by address.
    failures: RateLimiter<PeerKey>,
}

impl Authenticator {
    /// Enforces `policy`, with time from `clock`.
    pub fn new(policy: Policy, clock: Arc<dyn Clock>) -> Result<Self, MinerKeyError> {
        let Policy { miner, executor_id, window, per_minute, failures_per_minute } = policy;
        let verifier = miner.verifier().map_err(|source| MinerKeyError { miner: miner.clone(), source })?;
        // Admitted calls within two windows, twice over: the cache never needs to drop a live nonce.
        let minutes = (2 * window.as_secs()).div_ceil(60).max(1) as usize;
        let capacity = (per_minute as usize).saturating_mul(minutes).saturating_mul(2).max(1024);
        Ok(Self {
            miner,
            executor_id,
            started: unix_seconds(clock.as_ref()),
            batches: BatchVerifier::start(verifier.clone(), verifier_threads(), batch::QUEUE),
            verifier,
            window,
            limiter: RateLimiter::new(per_minute, clock.clone()),
            failures: RateLimiter::new(failures_per_minute, clock.clone()),
            clock,
            nonces: Mutex::new(NonceCache::new(capacity)),
        })
    }

    /// Refuses at once a caller whose address has spent `auth_failures_per_minute`: before its
    /// headers, body or signature cost anything.
    pub fn admit_peer(&self, peer: PeerKey) -> Result<(), AuthFailure> {
        self.failures.peek(&peer).map_err(|retry| {
            AuthFailure::new(
                Reason::TooManyFailures,
                format!(
                    "more than {} refused calls a minute from {peer}; retry in {} ms",
                    self.failures.per_minute(),
                    retry.0.as_millis().max(1)
                ),
            )
        })
    }

    /// Counts a refused call (one whose reason [`Reason::is_failure`], or one that ran out of
    /// time before it was authenticated) against `peer`.
    pub fn record_failure(&self, peer: PeerKey) {
        let _ = self.failures.check(&peer);
    }

    /// Checks the signature metadata of a call to `method` whose request message is `message`;
    /// returns the caller's hotkey.
    pub fn check(&self, method: &str, headers: &HeaderMap, message: &[u8]) -> Result<Hotkey, AuthFailure> {
        let claim = self.precheck(headers)?;
        self.verify(method, claim, message)
    }

    /// The checks that need no request body (headers, hotkey, time): the layer runs them before
    /// reading a byte of the body, so refused callers cost no buffering.
    pub fn precheck(&self, headers: &HeaderMap) -> Result<Claim, AuthFailure> {
        // The scheme first, so that a client of the first one hears what changed rather than
        // that its signature is bad.
        match headers.get(SCHEME_HEADER).map(|v| v.to_str().unwrap_or("(not ASCII)")) {
            Some(SCHEME) => {}
            Some(other) => {
                return Err(AuthFailure::new(
                    Reason::UnsupportedScheme,
                    format!("`{SCHEME_HEADER}: {other}` is not a scheme this executor accepts; {SCHEME_ADVICE}"),
                ));
            }
            None if headers.contains_key(SIGNATURE_HEADER) => {
                return Err(AuthFailure::new(
                    Reason::UnsupportedScheme,
                    format!("a call signed without `{SCHEME_HEADER}` (the first scheme) is refused; {SCHEME_ADVICE}"),
                ));
            }
            None => {}
        }
        let header = |name: &str| -> Result<&str, AuthFailure> {
            let value = headers.get(name).ok_or_else(|| {
                AuthFailure::new(Reason::MissingSignature, format!("metadata `{name}` is required (see docs/api.md)"))
            })?;
            value
                .to_str()
                .map_err(|_| AuthFailure::new(Reason::MalformedMetadata, format!("metadata `{name}` is not ASCII")))
        };
        header(SCHEME_HEADER)?;
        let (hotkey, timestamp, nonce, signature) =
            (header(HOTKEY_HEADER)?, header(TIMESTAMP_HEADER)?, header(NONCE_HEADER)?, header(SIGNATURE_HEADER)?);
        // The miner's own address needs no decoding; any other is parsed to say what is wrong.
        let hotkey: Hotkey = if hotkey == self.miner.as_str() {
            self.miner.clone()
        } else {
            hotkey
                .parse()
                .map_err(|e| AuthFailure::new(Reason::MalformedMetadata, format!("`{HOTKEY_HEADER}`: {e}")))?
        };
        let timestamp: u64 = timestamp.parse().map_err(|_| {
            AuthFailure::new(Reason::MalformedMetadata, format!("`{TIMESTAMP_HEADER}` must be Unix seconds"))
        })?;
        if !(16..=64).contains(&nonce.len())
            || !nonce.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AuthFailure::new(
                Reason::MalformedMetadata,
                format!("`{NONCE_HEADER}` must be 16 to 64 characters of [A-Za-z0-9_-]"),
            ));
        }
        let signature = hex::decode(signature.strip_prefix("0x").unwrap_or(signature))
            .map_err(|_| AuthFailure::new(Reason::MalformedMetadata, format!("`{SIGNATURE_HEADER}` must be hex")))?;
        if hotkey != self.miner {
            return Err(AuthFailure::new(
                Reason::HotkeyNotAllowed,
                format!("hotkey {hotkey} does not manage this executor"),
            ));
        }
        let now = unix_seconds(self.clock.as_ref());
        let skew = now.abs_diff(timestamp);
        if skew > self.window.as_secs() {
            return Err(AuthFailure::new(
                Reason::StaleTimestamp,
                format!(
                    "timestamp {timestamp} is {skew}s from the executor's clock ({now}); the window is {}s",
                    self.window.as_secs()
                ),
            ));
        }
        if timestamp < self.started {
            return Err(AuthFailure::new(
                Reason::StaleTimestamp,
                format!(
                    "timestamp {timestamp} is before this executor started ({}): nonces from before a restart are not \
                     remembered; sign the call again",
                    self.started
                ),
            ));
        }
        Ok(Claim { hotkey, timestamp, nonce: nonce.to_owned(), signature, now })
    }

    /// The signature over the canonical string, then the nonce and the rate limit.
    pub fn verify(&self, method: &str, claim: Claim, message: &[u8]) -> Result<Hotkey, AuthFailure> {
        let canonical = canonical_string(&self.executor_id, method, claim.timestamp, &claim.nonce, &sha256(message));
        let checked = self.verifier.verify(canonical.as_bytes(), &claim.signature);
        self.admit(claim, checked)
    }

    /// As [`Authenticator::verify`], the signature checked on the batch verifier's thread
    /// together with whatever other calls are waiting (a batch of 16 costs a third as much per
    /// signature as one alone).
    pub async fn verify_batched(&self, method: &str, claim: Claim, message: &[u8]) -> Result<Hotkey, AuthFailure> {
        let canonical = canonical_string(&self.executor_id, method, claim.timestamp, &claim.nonce, &sha256(message));
        let checked = match &self.batches {
            Some(batches) => batches.verify(canonical.into_bytes(), claim.signature.clone()).await.map_err(|_| {
                AuthFailure::new(
                    Reason::Overloaded,
                    format!(
                        "{} signature checks are waiting, the most the executor queues; retry shortly",
                        batch::QUEUE
                    ),
                )
            })?,
            None => self.verifier.verify(canonical.as_bytes(), &claim.signature),
        };
        self.admit(claim, checked)
    }

    /// After the signature: the nonce, checked and recorded first, so a replayed call is
    /// refused without spending the miner's rate limit; then the rate limit.
    fn admit(&self, claim: Claim, signature: Result<(), SignatureError>) -> Result<Hotkey, AuthFailure> {
        signature.map_err(|e| {
            AuthFailure::new(
                Reason::BadSignature,
                format!(
                    "{e} (signed string: scheme, executor id, method, timestamp, nonce, body hash; see docs/api.md)"
                ),
            )
        })?;
        let Claim { hotkey, timestamp, nonce, now, .. } = claim;
        // Remember the nonce until the timestamp leaves the window.
        let instant = self.clock.now();
        let remaining = Duration::from_secs((timestamp + self.window.as_secs()).saturating_sub(now) + 1);
        let fresh =
            self.nonces.lock().unwrap_or_else(|e| e.into_inner()).insert(nonce.as_str(), instant, instant + remaining);
        if !fresh {
            return Err(AuthFailure::new(Reason::ReplayedNonce, "this nonce was already used"));
        }
        if let Err(retry) = self.limiter.check(&hotkey) {
            return Err(AuthFailure::new(
                Reason::RateLimited,
                format!(
                    "more than {} calls a minute; retry in {} ms",
                    self.limiter.per_minute(),
                    retry.0.as_millis().max(1)
                ),
            ));
        }
        Ok(hotkey)
    }
}

/// What a client of another scheme is told to do.
const SCHEME_ADVICE: &str = "this executor accepts scheme v2 only (`x-executor-auth: v2`, the executor's id in the signed \
                             string, learnt from the `x-executor-id` header of any answer); see docs/api.md";

/// The clock's Unix time, whole seconds.
fn unix_seconds(clock: &dyn Clock) -> u64 {
    clock.system_time().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Signature checking threads: half the cores, one to four; the runtime needs the rest.
fn verifier_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).clamp(1, 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::clock::ManualClock;
    use common::hotkey::HotkeyPair;

    const METHOD: &str = "/executor.api.v1.ExecutorApi/Identity";
    const ID: &str = "executor-test";

    fn sign(pair: &HotkeyPair, method: &str, body: &[u8], timestamp: u64) -> [(&'static str, String); 5] {
        super::sign(pair, ID, method, body, timestamp)
    }

    fn policy(alice: &HotkeyPair, per_minute: u32) -> Policy {
        Policy {
            miner: alice.hotkey().clone(),
            executor_id: ID.into(),
            window: Duration::from_secs(60),
            per_minute,
            failures_per_minute: 5,
        }
    }

    fn setup(per_minute: u32) -> (Arc<ManualClock>, Authenticator, HotkeyPair) {
        // Started an hour before `now`, so that a whole window before it is after the start.
        let clock = Arc::new(ManualClock::default());
        clock.advance(Duration::from_secs(1_800_000_000 - 3600));
        let alice = HotkeyPair::parse(e2e::ALICE_SEED).unwrap();
        let auth = Authenticator::new(policy(&alice, per_minute), clock.clone()).unwrap();
        clock.advance(Duration::from_secs(3600));
        (clock, auth, alice)
    }

    fn headers(values: &[(&'static str, String)]) -> HeaderMap {
        values.iter().map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    fn reason(result: Result<Hotkey, AuthFailure>) -> Reason {
        result.unwrap_err().reason
    }

    #[test]
    fn accepts_the_miner_once_and_refuses_everything_else() {
        let (clock, auth, alice) = setup(1000);
        let now = 1_800_000_000;
        let signed = sign(&alice, METHOD, b"body", now);
        assert_eq!(auth.check(METHOD, &headers(&signed), b"body").unwrap(), *alice.hotkey());
        // Same nonce again.
        assert_eq!(reason(auth.check(METHOD, &headers(&signed), b"body")), Reason::ReplayedNonce);
        // Tampered body, another method.
        let signed = sign(&alice, METHOD, b"body", now);
        assert_eq!(reason(auth.check(METHOD, &headers(&signed), b"bodz")), Reason::BadSignature);
        let other = "/executor.api.v1.ExecutorApi/RemoveContainer";
        assert_eq!(reason(auth.check(other, &headers(&signed), b"body")), Reason::BadSignature);
        // Stale and future timestamps.
        for ts in [now - 61, now + 61] {
            let signed = sign(&alice, METHOD, b"", ts);
            assert_eq!(reason(auth.check(METHOD, &headers(&signed), b"")), Reason::StaleTimestamp);
        }
        let signed = sign(&alice, METHOD, b"", now - 60);
        auth.check(METHOD, &headers(&signed), b"").unwrap();
        // Another valid hotkey.
        let bob = HotkeyPair::from_seed(&[7; 32]);
        assert_eq!(reason(auth.check(METHOD, &headers(&sign(&bob, METHOD, b"", now)), b"")), Reason::HotkeyNotAllowed);
        // Missing and malformed metadata.
        assert_eq!(reason(auth.check(METHOD, &HeaderMap::new(), b"")), Reason::MissingSignature);
        let mut bad = sign(&alice, METHOD, b"", now);
        bad[3].1 = "short".into();
        assert_eq!(reason(auth.check(METHOD, &headers(&bad), b"")), Reason::MalformedMetadata);
        let mut bad = sign(&alice, METHOD, b"", now);
        bad[4].1 = "zz".into();
        assert_eq!(reason(auth.check(METHOD, &headers(&bad), b"")), Reason::MalformedMetadata);
        // Another scheme, or none with a signature (the first scheme): said before anything else.
        let mut other = sign(&alice, METHOD, b"", now);
        other[0].1 = "v3".into();
        assert_eq!(reason(auth.check(METHOD, &headers(&other), b"")), Reason::UnsupportedScheme);
        let first = &sign(&alice, METHOD, b"", now)[1..];
        let refused = auth.check(METHOD, &headers(first), b"").unwrap_err();
        assert_eq!(refused.reason, Reason::UnsupportedScheme);
        assert!(refused.detail.contains("accepts scheme v2 only (`x-executor-auth: v2`"), "{refused:?}");
        // Signed for another executor.
        let elsewhere = super::sign(&alice, "executor-other", METHOD, b"", now);
        assert_eq!(reason(auth.check(METHOD, &headers(&elsewhere), b"")), Reason::BadSignature);
        // A nonce is forgotten only after its timestamp has left the window.
        let signed = sign(&alice, METHOD, b"", now);
        auth.check(METHOD, &headers(&signed), b"").unwrap();
        clock.advance(Duration::from_secs(30));
        assert_eq!(reason(auth.check(METHOD, &headers(&signed), b"")), Reason::ReplayedNonce);
        clock.advance(Duration::from_secs(40));
        assert_eq!(reason(auth.check(METHOD, &headers(&signed), b"")), Reason::StaleTimestamp);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_checks_agree_with_single_ones() {
        let (_clock, auth, alice) = setup(100_000);
        let auth = Arc::new(auth);
        let now = 1_800_000_000;
        // Many at once, some tampered: each answer is its own.
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let auth = auth.clone();
                let signed = sign(&alice, METHOD, b"body", now);
                tokio::spawn(async move {
                    let body: &[u8] = if i % 7 == 0 { b"bodz" } else { b"body" };
                    let claim = auth.precheck(&headers(&signed)).unwrap();
                    (i, auth.verify_batched(METHOD, claim, body).await)
                })
            })
            .collect();
        for task in tasks {
            let (i, result) = task.await.unwrap();
            if i % 7 == 0 {
                assert_eq!(result.unwrap_err().reason, Reason::BadSignature, "{i}");
            } else {
                assert_eq!(result.unwrap(), *alice.hotkey(), "{i}");
            }
        }
    }

    #[test]
    fn rate_limit_applies_to_signed_calls_only() {
        let (_clock, auth, alice) = setup(3);
        let now = 1_800_000_000;
        // Unsigned junk does not use the miner's budget.
        for _ in 0..10 {
            assert_eq!(reason(auth.check(METHOD, &HeaderMap::new(), b"")), Reason::MissingSignature);
        }
        for _ in 0..3 {
            auth.check(METHOD, &headers(&sign(&alice, METHOD, b"", now)), b"").unwrap();
        }
        let refused = auth.check(METHOD, &headers(&sign(&alice, METHOD, b"", now)), b"").unwrap_err();
        assert_eq!(refused.reason, Reason::RateLimited);
        // Its status (RESOURCE_EXHAUSTED, `rate_limited: ...`) is pinned in the errors module.
        assert!(refused.detail.starts_with("more than 3 calls a minute"), "{refused:?}");
    }

    /// Issue 17 item 10: a captured call replayed does not spend the miner's rate limit; the
    /// nonce is checked and recorded before anything is charged.
    #[test]
    fn replays_do_not_spend_the_rate_limit() {
        let (_clock, auth, alice) = setup(2);
        let now = 1_800_000_000;
        let captured = sign(&alice, METHOD, b"", now);
        auth.check(METHOD, &headers(&captured), b"").unwrap();
        for _ in 0..5 {
            assert_eq!(reason(auth.check(METHOD, &headers(&captured), b"")), Reason::ReplayedNonce);
        }
        // The miner's own next call still has its budget.
        auth.check(METHOD, &headers(&sign(&alice, METHOD, b"", now)), b"").unwrap();
        assert_eq!(reason(auth.check(METHOD, &headers(&sign(&alice, METHOD, b"", now)), b"")), Reason::RateLimited);
    }

    /// Issue 17 item 12: nonces are remembered in memory only, so a call captured before a
    /// restart was accepted again after it, within the time window. Timestamps from before the
    /// process started are refused.
    #[test]
    fn a_call_signed_before_a_restart_is_refused_after_it() {
        let (clock, auth, alice) = setup(1000);
        let now = 1_800_000_000;
        let captured = sign(&alice, METHOD, b"", now);
        auth.check(METHOD, &headers(&captured), b"").unwrap();
        // The executor restarts a second later: a new authenticator, no nonce remembered.
        clock.advance(Duration::from_secs(1));
        let restarted = Authenticator::new(policy(&alice, 1000), clock.clone()).unwrap();
        let refused = restarted.check(METHOD, &headers(&captured), b"").map(|_| ());
        let refused = refused.expect_err("the captured call was accepted again after the restart");
        assert_eq!(refused.reason, Reason::StaleTimestamp, "{refused:?}");
        assert!(refused.detail.contains("before this executor started"), "{refused:?}");
        // Signed in the second the process started, or later: accepted.
        restarted.check(METHOD, &headers(&sign(&alice, METHOD, b"", now + 1)), b"").unwrap();
    }
}
