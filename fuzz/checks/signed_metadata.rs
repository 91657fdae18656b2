//! The signed request metadata of the public API (executor-api `auth.rs`): arbitrary method,
//! headers and body are refused with a reason that maps to a gRPC code, or accepted once as the
//! miner (never twice: the nonce is spent). Then the same method and body, signed properly with
//! a fuzzed nonce, clock skew and hex spelling: accepted exactly when they are well formed and
//! within the window, refused when the body, the method or the executor changes, and never
//! replayable.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::clock::ManualClock;
use common::hotkey::HotkeyPair;
use common::identity::ExecutorIdentity;
use executor_api::auth::{
    Authenticator, HOTKEY_HEADER, NONCE_HEADER, Policy, Reason, SCHEME, SCHEME_HEADER, SIGNATURE_HEADER,
    TIMESTAMP_HEADER, canonical_string, sha256,
};
use http::{HeaderMap, HeaderValue};

/// The well-known development key //Alice.
const ALICE_SEED: &str = "0xe5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a";
const NOW: u64 = 1_800_000_000;
const WINDOW: u64 = 60;
/// The identity seed of the executor under test; another seed is another executor.
const EXECUTOR_SEED: [u8; 32] = [1; 32];
const HEADERS: [&str; 4] = [HOTKEY_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER];

fn alice() -> &'static HotkeyPair {
    static PAIR: OnceLock<HotkeyPair> = OnceLock::new();
    PAIR.get_or_init(|| HotkeyPair::parse(ALICE_SEED).expect("the //Alice seed parses"))
}

/// A fresh authenticator of this executor at `NOW`, so every input starts with no nonce seen.
fn authenticator() -> Authenticator {
    authenticator_of(EXECUTOR_SEED)
}

fn executor_id() -> String {
    ExecutorIdentity::from_seed(EXECUTOR_SEED).executor_id()
}

/// A fresh authenticator of the executor with the identity `seed` at `NOW`; its process
/// started an hour before, so that the whole window is after the start.
fn authenticator_of(seed: [u8; 32]) -> Authenticator {
    let clock = Arc::new(ManualClock::default());
    clock.advance(Duration::from_secs(NOW - 3600));
    let policy = Policy {
        miner: alice().hotkey().clone(),
        identity: Arc::new(ExecutorIdentity::from_seed(seed)),
        window: Duration::from_secs(WINDOW),
        per_minute: 1000,
        failures_per_minute: 1000,
        session_ttl: Duration::from_secs(3600),
        max_sessions: 4,
    };
    let auth = Authenticator::new(policy, clock.clone()).expect("//Alice is a valid miner key");
    clock.advance(Duration::from_secs(3600));
    auth
}

fn expect_refused(auth: &Authenticator, method: &str, headers: &HeaderMap, body: &[u8], reason: Reason) {
    match auth.check(method, headers, body) {
        Ok(_) => panic!("accepted, expected {reason:?}"),
        Err(failure) => assert_eq!(failure.reason, reason, "{}", failure.detail),
    }
}

pub(crate) fn check(data: &[u8]) {
    // method \n hotkey \n timestamp \n nonce \n signature \n body
    let mut parts = data.splitn(6, |&b| b == b'\n');
    let method = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    // The scheme is always the current one, so the fuzzed headers reach the checks behind it.
    let mut headers = HeaderMap::new();
    headers.insert(SCHEME_HEADER, HeaderValue::from_static(SCHEME));
    let mut raw = Vec::new();
    for name in HEADERS {
        let value = parts.next().unwrap_or_default();
        raw.push(value);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
    }
    let body = parts.next().unwrap_or_default();

    let auth = authenticator();
    match auth.check(&method, &headers, body) {
        Ok(hotkey) => {
            assert_eq!(&hotkey, alice().hotkey());
            expect_refused(&auth, &method, &headers, body, Reason::ReplayedNonce);
        }
        Err(failure) => {
            assert!(!failure.detail.is_empty());
            let status = failure.to_status();
            assert!(
                matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied | tonic::Code::ResourceExhausted
                ),
                "{:?} for {:?}",
                status.code(),
                failure.reason
            );
        }
    }

    // The same call properly signed: the fuzzed nonce when it is one, a skew from the fuzzed
    // timestamp's length, the signature hex in one of the spellings clients use.
    let nonce = String::from_utf8_lossy(raw[2]).into_owned();
    let nonce_ok =
        (16..=64).contains(&nonce.len()) && nonce.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let skew = raw[1].len() as u64 * 7;
    let timestamp = if raw[1].first() == Some(&b'-') { NOW - skew } else { NOW + skew };
    let signature =
        alice().sign(canonical_string(&executor_id(), &method, timestamp, &nonce, &sha256(body)).as_bytes());
    let hex = match raw[3].len() % 3 {
        0 => hex::encode(signature),
        1 => format!("0x{}", hex::encode(signature)),
        _ => hex::encode_upper(signature),
    };
    let mut signed = HeaderMap::new();
    signed.insert(SCHEME_HEADER, HeaderValue::from_static(SCHEME));
    for (name, value) in HEADERS.into_iter().zip([alice().hotkey().to_string(), timestamp.to_string(), nonce, hex]) {
        match HeaderValue::from_str(&value) {
            Ok(value) => {
                signed.insert(name, value);
            }
            Err(_) => return,
        }
    }
    let auth = authenticator();
    let mut tampered = body.to_vec();
    tampered.push(0);
    if !nonce_ok {
        expect_refused(&auth, &method, &signed, body, Reason::MalformedMetadata);
    } else if skew > WINDOW {
        expect_refused(&auth, &method, &signed, body, Reason::StaleTimestamp);
    } else {
        expect_refused(&auth, &method, &signed, &tampered, Reason::BadSignature);
        expect_refused(&auth, &format!("{method}x"), &signed, body, Reason::BadSignature);
        // Signed for another executor of the same miner.
        let elsewhere = authenticator_of([2; 32]);
        expect_refused(&elsewhere, &method, &signed, body, Reason::BadSignature);
        assert_eq!(auth.check(&method, &signed, body).as_ref().map_err(|f| f.reason), Ok(alice().hotkey()));
        expect_refused(&auth, &method, &signed, body, Reason::ReplayedNonce);
    }
}
