//! Who may call the public API: request signatures by the managing miner's hotkey, checked by
//! the [`Authenticator`] (signature, time window, rate limit, nonce), or a call in a signed
//! session the miner opened (MAC, counter, rate limit); and how many refused calls one address
//! may make.
//!
//! - [`signing`]: the wire protocol (headers, canonical strings, session keys), shared with the
//!   client.
//! - `batch`: the threads that check signatures in batches, behind a bounded queue.
//! - `nonces`: the nonces seen within the window.
//! - [`sessions`]: the signed sessions open now.

mod batch;
mod nonces;
pub mod sessions;
pub mod signing;

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use common::clock::Clock;
use common::config::Config;
use common::hotkey::{Hotkey, SignatureError, Verifier};
use common::identity::ExecutorIdentity;
use common::peers::PeerKey;
use common::proto::api::v1 as pb;
use common::ratelimit::RateLimiter;
use http::HeaderMap;

use self::batch::BatchVerifier;
use self::nonces::NonceCache;
use self::sessions::{Session, Sessions};
pub use self::signing::{
    CANONICAL_PREFIX, COUNTER_HEADER, COUNTER_WINDOW, EXECUTOR_ID_HEADER, HOTKEY_HEADER, MAC_HEADER, NONCE_HEADER,
    OPEN_SESSION_METHOD, SCHEME, SCHEME_HEADER, SESSION_HEADER, SESSION_SCHEME, SIGNATURE_HEADER, TIMESTAMP_HEADER,
    canonical_string, is_open, session_canonical_string, sha256, sign,
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
    /// A session call whose session is not open (never was, expired, ended for a newer one,
    /// or the executor restarted): the client opens a new one.
    UnknownSession,
    /// A session call whose counter was used before, or is too far behind the highest one.
    ReplayedCounter,
}

impl Reason {
    pub const ALL: [Reason; 13] = [
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
        Reason::UnknownSession,
        Reason::ReplayedCounter,
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
            Reason::UnknownSession => "unknown_session",
            Reason::ReplayedCounter => "replayed_counter",
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
pub enum Claim {
    /// Signed by the hotkey (scheme v2).
    Signed(SignedClaim),
    /// A call in a signed session (scheme v3).
    Session(SessionClaim),
}

#[derive(Debug)]
pub struct SignedClaim {
    hotkey: Hotkey,
    timestamp: u64,
    nonce: String,
    signature: Vec<u8>,
    /// The executor's clock when the headers were checked, Unix seconds.
    now: u64,
}

#[derive(Debug)]
pub struct SessionClaim {
    session: Arc<Session>,
    counter: u64,
    mac: Vec<u8>,
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("client_key: {0}")]
    ClientKey(String),
    #[error("no randomness from the operating system: {0}")]
    Random(String),
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
    /// This executor's identity: signatures name its id, and it signs the sessions it opens.
    pub identity: Arc<ExecutorIdentity>,
    /// `[server] auth_time_window`.
    pub window: Duration,
    /// `api_requests_per_minute`: the miner's calls a minute.
    pub per_minute: u32,
    /// `[server] auth_failures_per_minute`: refused calls one address may make a minute.
    pub failures_per_minute: u32,
    /// `[server] session_ttl`.
    pub session_ttl: Duration,
    /// `[server] max_sessions`.
    pub max_sessions: u32,
}

impl Policy {
    pub fn of(miner: Hotkey, identity: Arc<ExecutorIdentity>, config: &Config) -> Self {
        Self {
            miner,
            identity,
            window: config.server.auth_time_window,
            per_minute: config.validator.access_config.rate_limits.api_requests_per_minute,
            failures_per_minute: config.server.auth_failures_per_minute,
            session_ttl: config.server.session_ttl,
            max_sessions: config.server.max_sessions,
        }
    }
}

/// The authentication policy of the public API.
#[derive(Debug)]
pub struct Authenticator {
    miner: Hotkey,
    identity: Arc<ExecutorIdentity>,
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
    sessions: Sessions,
}

impl Authenticator {
    /// Enforces `policy`, with time from `clock`.
    pub fn new(policy: Policy, clock: Arc<dyn Clock>) -> Result<Self, MinerKeyError> {
        let Policy { miner, identity, window, per_minute, failures_per_minute, session_ttl, max_sessions } = policy;
        let verifier = miner.verifier().map_err(|source| MinerKeyError { miner: miner.clone(), source })?;
        // Admitted calls within two windows, twice over: the cache never needs to drop a live nonce.
        let minutes = (2 * window.as_secs()).div_ceil(60).max(1) as usize;
        let capacity = (per_minute as usize).saturating_mul(minutes).saturating_mul(2).max(1024);
        Ok(Self {
            miner,
            executor_id: identity.executor_id(),
            identity,
            sessions: Sessions::new(session_ttl, max_sessions as usize, clock.now()),
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
            Some(SESSION_SCHEME) => return self.precheck_session(headers).map(Claim::Session),
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
        let header = |name: &str| header(headers, name);
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
        Ok(Claim::Signed(SignedClaim { hotkey, timestamp, nonce: nonce.to_owned(), signature, now }))
    }

    /// The headers of a call in a session: well formed, and the session open.
    fn precheck_session(&self, headers: &HeaderMap) -> Result<SessionClaim, AuthFailure> {
        let malformed = |detail: &str| AuthFailure::new(Reason::MalformedMetadata, detail);
        let (id, counter, mac) =
            (header(headers, SESSION_HEADER)?, header(headers, COUNTER_HEADER)?, header(headers, MAC_HEADER)?);
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(malformed("`x-executor-session` must be the 32 hex digits OpenSession answered"));
        }
        let counter = counter
            .parse::<u64>()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| malformed("`x-executor-counter` must be a decimal counter from 1"))?;
        let mac = hex::decode(mac)
            .ok()
            .filter(|m| m.len() == 32)
            .ok_or_else(|| malformed("`x-executor-mac` must be 64 hex digits (HMAC-SHA256)"))?;
        let session = self
            .sessions
            .get(id, self.clock.now())
            .map_err(|e| AuthFailure::new(Reason::UnknownSession, e.to_string()))?;
        Ok(SessionClaim { session, counter, mac })
    }

    /// The signature over the canonical string, then the nonce and the rate limit; or a
    /// session call's MAC, counter and rate limit.
    pub fn verify(&self, method: &str, claim: Claim, message: &[u8]) -> Result<Hotkey, AuthFailure> {
        let claim = match claim {
            Claim::Signed(claim) => claim,
            Claim::Session(claim) => return self.verify_session(method, claim, message),
        };
        let canonical = canonical_string(&self.executor_id, method, claim.timestamp, &claim.nonce, &sha256(message));
        let checked = self.verifier.verify(canonical.as_bytes(), &claim.signature);
        self.admit(claim, checked)
    }

    /// As [`Authenticator::verify`], the signature checked on the batch verifier's thread
    /// together with whatever other calls are waiting (a batch of 16 costs a third as much per
    /// signature as one alone). A session call's MAC is checked here: it costs a microsecond.
    pub async fn verify_batched(&self, method: &str, claim: Claim, message: &[u8]) -> Result<Hotkey, AuthFailure> {
        let claim = match claim {
            Claim::Signed(claim) => claim,
            Claim::Session(claim) => return self.verify_session(method, claim, message),
        };
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
    fn admit(&self, claim: SignedClaim, signature: Result<(), SignatureError>) -> Result<Hotkey, AuthFailure> {
        signature.map_err(|e| {
            AuthFailure::new(
                Reason::BadSignature,
                format!(
                    "{e} (signed string: scheme, executor id, method, timestamp, nonce, body hash; see docs/api.md)"
                ),
            )
        })?;
        let SignedClaim { hotkey, timestamp, nonce, now, .. } = claim;
        // Remember the nonce until the timestamp leaves the window.
        let instant = self.clock.now();
        let remaining = Duration::from_secs((timestamp + self.window.as_secs()).saturating_sub(now) + 1);
        let fresh =
            self.nonces.lock().unwrap_or_else(|e| e.into_inner()).insert(nonce.as_str(), instant, instant + remaining);
        if !fresh {
            return Err(AuthFailure::new(Reason::ReplayedNonce, "this nonce was already used"));
        }
        self.charge(&hotkey)?;
        Ok(hotkey)
    }

    /// A session call: the MAC, then the counter (once it is known to be the client's), then
    /// the rate limit.
    fn verify_session(&self, method: &str, claim: SessionClaim, message: &[u8]) -> Result<Hotkey, AuthFailure> {
        let SessionClaim { session, counter, mac } = claim;
        if method == OPEN_SESSION_METHOD {
            return Err(AuthFailure::new(
                Reason::UnsupportedScheme,
                "OpenSession carries the per-call signature (`x-executor-auth: v2`), not a session's MAC; see docs/api.md",
            ));
        }
        if !session.mac_matches(&self.executor_id, method, counter, &sha256(message), &mac) {
            return Err(AuthFailure::new(
                Reason::BadSignature,
                "the MAC does not match (signed string: scheme v3, executor id, session id, method, counter, body \
                 hash; see docs/api.md)",
            ));
        }
        session.accept(counter).map_err(|e| AuthFailure::new(Reason::ReplayedCounter, e.to_string()))?;
        self.charge(&session.hotkey)?;
        Ok(session.hotkey.clone())
    }

    /// The hotkey's rate limit (`api_requests_per_minute`).
    fn charge(&self, hotkey: &Hotkey) -> Result<(), AuthFailure> {
        self.limiter.check(hotkey).map_err(|retry| {
            AuthFailure::new(
                Reason::RateLimited,
                format!(
                    "more than {} calls a minute; retry in {} ms",
                    self.limiter.per_minute(),
                    retry.0.as_millis().max(1)
                ),
            )
        })
    }

    /// Opens a signed session for `hotkey` (who called `OpenSession` with the per-call
    /// signature) with the client's X25519 key: the executor's own key, signed with its
    /// identity, and the session's id and expiry.
    pub fn open_session(&self, hotkey: &Hotkey, client_key: &[u8]) -> Result<pb::OpenSessionResponse, OpenError> {
        let client_key: [u8; 32] = client_key
            .try_into()
            .map_err(|_| OpenError::ClientKey(format!("{} bytes; an X25519 public key is 32", client_key.len())))?;
        let (secret, executor_key) = signing::session_keypair().map_err(|e| OpenError::Random(e.to_string()))?;
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| OpenError::Random(e.to_string()))?;
        let id = hex::encode(raw);
        let key = signing::session_key(
            &secret,
            &client_key,
            &client_key,
            &executor_key,
            &self.executor_id,
            hotkey.as_str(),
            &id,
        )
        .map_err(|e| OpenError::ClientKey(e.to_string()))?;
        let unix_now = unix_seconds(self.clock.as_ref());
        let (session, ended) = self.sessions.open(id.clone(), hotkey.clone(), key, self.clock.now(), unix_now);
        metrics::counter!("executor_api_sessions_opened_total").increment(1);
        if let Some(ended) = ended {
            tracing::info!(session = %ended, "signed session ended to make room for a new one (server.max_sessions)");
        }
        tracing::info!(session = %id, ttl = ?self.sessions.ttl(), "signed session opened");
        let transcript = signing::session_transcript(
            &self.executor_id,
            hotkey.as_str(),
            &id,
            &client_key,
            &executor_key,
            session.expires_at,
        );
        Ok(pb::OpenSessionResponse {
            session_id: id,
            executor_key: executor_key.to_vec(),
            public_key: self.identity.public_key().to_vec(),
            signature: self.identity.sign(transcript.as_bytes()).to_vec(),
            expires_at: session.expires_at,
            counter_window: COUNTER_WINDOW,
            ttl_seconds: self.sessions.ttl().as_secs(),
        })
    }
}

/// The value of the metadata entry `name`, ASCII.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, AuthFailure> {
    let value = headers.get(name).ok_or_else(|| {
        AuthFailure::new(Reason::MissingSignature, format!("metadata `{name}` is required (see docs/api.md)"))
    })?;
    value.to_str().map_err(|_| AuthFailure::new(Reason::MalformedMetadata, format!("metadata `{name}` is not ASCII")))
}

/// What a client of another scheme is told to do.
const SCHEME_ADVICE: &str = "this executor accepts scheme v2 (`x-executor-auth: v2`, the executor's id in the signed \
                             string, learnt from the `x-executor-id` header of any answer) and calls in a signed session \
                             (`x-executor-auth: v3`, opened with OpenSession); see docs/api.md";

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
    const SEED: [u8; 32] = [3; 32];

    fn id() -> String {
        ExecutorIdentity::from_seed(SEED).executor_id()
    }

    fn sign(pair: &HotkeyPair, method: &str, body: &[u8], timestamp: u64) -> [(&'static str, String); 5] {
        super::sign(pair, &id(), method, body, timestamp)
    }

    fn policy(alice: &HotkeyPair, per_minute: u32) -> Policy {
        Policy {
            miner: alice.hotkey().clone(),
            identity: Arc::new(ExecutorIdentity::from_seed(SEED)),
            window: Duration::from_secs(60),
            per_minute,
            failures_per_minute: 5,
            session_ttl: Duration::from_secs(600),
            max_sessions: 2,
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
        other[0].1 = "v9".into();
        assert_eq!(reason(auth.check(METHOD, &headers(&other), b"")), Reason::UnsupportedScheme);
        let first = &sign(&alice, METHOD, b"", now)[1..];
        let refused = auth.check(METHOD, &headers(first), b"").unwrap_err();
        assert_eq!(refused.reason, Reason::UnsupportedScheme);
        assert!(refused.detail.contains("accepts scheme v2 (`x-executor-auth: v2`"), "{refused:?}");
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

    /// The client's side of `OpenSession`: checks the answer as `ExecutorClient` does and
    /// derives the key.
    fn open(auth: &Authenticator, alice: &HotkeyPair) -> (String, [u8; 32], pb::OpenSessionResponse) {
        use ed25519_dalek::Verifier;
        let (secret, client_key) = signing::session_keypair().unwrap();
        let answer = auth.open_session(alice.hotkey(), &client_key).unwrap();
        let executor_key: [u8; 32] = answer.executor_key.as_slice().try_into().unwrap();
        let public: [u8; 32] = answer.public_key.as_slice().try_into().unwrap();
        assert_eq!(common::identity::executor_id_of(&public), id());
        let transcript = signing::session_transcript(
            &id(),
            alice.hotkey().as_str(),
            &answer.session_id,
            &client_key,
            &executor_key,
            answer.expires_at,
        );
        let signature = ed25519_dalek::Signature::from_slice(&answer.signature).unwrap();
        ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap().verify(transcript.as_bytes(), &signature).unwrap();
        let key = signing::session_key(
            &secret,
            &executor_key,
            &client_key,
            &executor_key,
            &id(),
            alice.hotkey().as_str(),
            &answer.session_id,
        )
        .unwrap();
        (answer.session_id.clone(), key, answer)
    }

    fn in_session(key: &[u8; 32], session: &str, method: &str, counter: u64, body: &[u8]) -> HeaderMap {
        headers(&signing::session_headers(key, &id(), session, method, counter, body))
    }

    /// Issue 25 item 1: a session's calls are accepted once each, in any order within the
    /// window, only with the session's key over the executor, method, counter and body.
    #[test]
    fn session_calls_are_accepted_once_with_the_sessions_key() {
        let (_clock, auth, alice) = setup(1000);
        let (session, key, answer) = open(&auth, &alice);
        assert_eq!(
            (answer.expires_at, answer.counter_window, answer.ttl_seconds),
            (1_800_000_000 + 600, COUNTER_WINDOW, 600)
        );
        for counter in [1, 3, 2] {
            let call = in_session(&key, &session, METHOD, counter, b"body");
            assert_eq!(auth.check(METHOD, &call, b"body").unwrap(), *alice.hotkey());
        }
        // A replay, and a counter too far behind.
        let replay = in_session(&key, &session, METHOD, 2, b"body");
        let refused = auth.check(METHOD, &replay, b"body").unwrap_err();
        assert_eq!(refused.reason, Reason::ReplayedCounter);
        assert_eq!(refused.detail, "counter 2 was already used in this session");
        auth.check(METHOD, &in_session(&key, &session, METHOD, 5000, b""), b"").unwrap();
        let old = in_session(&key, &session, METHOD, 4, b"");
        assert_eq!(reason(auth.check(METHOD, &old, b"")), Reason::ReplayedCounter);
        // The MAC binds body, method, counter and executor; a failed MAC spends no counter.
        let call = in_session(&key, &session, METHOD, 5001, b"body");
        assert_eq!(reason(auth.check(METHOD, &call, b"bodz")), Reason::BadSignature);
        let other = "/executor.api.v1.ExecutorApi/RemoveContainer";
        assert_eq!(reason(auth.check(other, &call, b"body")), Reason::BadSignature);
        let mut moved = signing::session_headers(&key, &id(), &session, METHOD, 5001, b"body");
        moved[2].1 = "5002".into();
        assert_eq!(reason(auth.check(METHOD, &headers(&moved), b"body")), Reason::BadSignature);
        let elsewhere = signing::session_headers(&key, "executor-other", &session, METHOD, 5001, b"body");
        assert_eq!(reason(auth.check(METHOD, &headers(&elsewhere), b"body")), Reason::BadSignature);
        let wrong_key = in_session(&[0; 32], &session, METHOD, 5001, b"body");
        assert_eq!(reason(auth.check(METHOD, &wrong_key, b"body")), Reason::BadSignature);
        auth.check(METHOD, &call, b"body").unwrap();
        // OpenSession itself carries the per-call signature.
        let nested = in_session(&key, &session, OPEN_SESSION_METHOD, 6000, b"");
        let refused = auth.check(OPEN_SESSION_METHOD, &nested, b"").unwrap_err();
        assert_eq!(refused.reason, Reason::UnsupportedScheme, "{refused:?}");
        // Malformed and unknown.
        let mut bad = signing::session_headers(&key, &id(), &session, METHOD, 7000, b"");
        bad[2].1 = "0".into();
        assert_eq!(reason(auth.check(METHOD, &headers(&bad), b"")), Reason::MalformedMetadata);
        let mut bad = signing::session_headers(&key, &id(), &session, METHOD, 7000, b"");
        bad[3].1 = "abcd".into();
        assert_eq!(reason(auth.check(METHOD, &headers(&bad), b"")), Reason::MalformedMetadata);
        let mut bad = signing::session_headers(&key, &id(), &session, METHOD, 7000, b"");
        bad[1].1 = "../../etc".into();
        assert_eq!(reason(auth.check(METHOD, &headers(&bad), b"")), Reason::MalformedMetadata);
        let unknown = in_session(&key, "0123456789abcdef0123456789abcdef", METHOD, 1, b"");
        let refused = auth.check(METHOD, &unknown, b"").unwrap_err();
        assert_eq!(refused.reason, Reason::UnknownSession);
        assert!(refused.detail.contains("open a new one"), "{refused:?}");
        assert_eq!(
            reason(auth.check(
                METHOD,
                &headers(&signing::session_headers(&key, &id(), &session, METHOD, 1, b"")[..3]),
                b""
            )),
            Reason::MissingSignature
        );
    }

    #[test]
    fn sessions_expire_are_bounded_and_end_with_the_process() {
        let (clock, auth, alice) = setup(1000);
        let (first, key, _) = open(&auth, &alice);
        clock.advance(Duration::from_secs(1));
        let (second, key2, _) = open(&auth, &alice);
        clock.advance(Duration::from_secs(1));
        auth.check(METHOD, &in_session(&key2, &second, METHOD, 1, b""), b"").unwrap();
        // max_sessions = 2: a third ends the least recently used (the first).
        let (third, key3, _) = open(&auth, &alice);
        assert_eq!(reason(auth.check(METHOD, &in_session(&key, &first, METHOD, 1, b""), b"")), Reason::UnknownSession);
        auth.check(METHOD, &in_session(&key2, &second, METHOD, 2, b""), b"").unwrap();
        // session_ttl = 600 s from opening.
        clock.advance(Duration::from_secs(597));
        auth.check(METHOD, &in_session(&key3, &third, METHOD, 1, b""), b"").unwrap();
        clock.advance(Duration::from_secs(2));
        let refused = auth.check(METHOD, &in_session(&key2, &second, METHOD, 3, b""), b"").unwrap_err();
        assert_eq!(refused.reason, Reason::UnknownSession);
        assert!(refused.detail.contains("expired (server.session_ttl)"), "{refused:?}");
        // A restart: a new authenticator knows no session.
        let restarted = Authenticator::new(policy(&alice, 1000), clock.clone()).unwrap();
        let refused = restarted.check(METHOD, &in_session(&key3, &third, METHOD, 2, b""), b"").unwrap_err();
        assert_eq!(refused.reason, Reason::UnknownSession);
        // Session calls spend the miner's rate limit like signed ones.
        let (_, auth, alice) = setup(2);
        let (session, key, _) = open(&auth, &alice);
        auth.check(METHOD, &in_session(&key, &session, METHOD, 1, b""), b"").unwrap();
        auth.check(METHOD, &in_session(&key, &session, METHOD, 2, b""), b"").unwrap();
        assert_eq!(reason(auth.check(METHOD, &in_session(&key, &session, METHOD, 3, b""), b"")), Reason::RateLimited);
    }

    #[test]
    fn a_client_key_that_forces_the_secret_is_refused() {
        let (_clock, auth, alice) = setup(1000);
        // Zero and another low-order point: the shared secret would be known to anyone.
        let mut order_eight = [0u8; 32];
        order_eight[0] = 1;
        for low in [[0u8; 32], order_eight] {
            let refused = auth.open_session(alice.hotkey(), &low).unwrap_err();
            assert!(matches!(refused, OpenError::ClientKey(_)), "{refused:?}");
        }
        let refused = auth.open_session(alice.hotkey(), &[9; 31]).unwrap_err();
        assert_eq!(refused.to_string(), "client_key: 31 bytes; an X25519 public key is 32");
    }
}
