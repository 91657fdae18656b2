//! The signature protocol of the public API, for servers and clients alike.
//!
//! Every call except health (`grpc.health.v1.Health`, `health.v1.Health`) and server
//! reflection carries five metadata entries (docs/api.md):
//!
//! | header | value |
//! |---|---|
//! | `x-executor-auth` | `v2`, the scheme |
//! | `x-executor-hotkey` | SS58 address of the caller's sr25519 hotkey |
//! | `x-executor-timestamp` | Unix seconds when the request was signed |
//! | `x-executor-nonce` | 16 to 64 characters of `[A-Za-z0-9_-]`, never reused |
//! | `x-executor-signature` | hex of the 64-byte sr25519 signature (context `substrate`) |
//!
//! The signature covers the canonical string of [`canonical_string`]: the executor's id, the
//! method path, the timestamp, the nonce and the SHA-256 of the request message bytes (the
//! protobuf encoding, without gRPC framing), so a signature cannot be moved to another
//! executor, another method or another body. Every response names the executor's id in
//! `x-executor-id` (the open health check included), which is how a client learns it.

use std::time::UNIX_EPOCH;

use common::hotkey::HotkeyPair;
use sha2::{Digest, Sha256};

pub const SCHEME_HEADER: &str = "x-executor-auth";
pub const HOTKEY_HEADER: &str = "x-executor-hotkey";
pub const TIMESTAMP_HEADER: &str = "x-executor-timestamp";
pub const NONCE_HEADER: &str = "x-executor-nonce";
pub const SIGNATURE_HEADER: &str = "x-executor-signature";
/// Response header: the id of the executor that answered.
pub const EXECUTOR_ID_HEADER: &str = "x-executor-id";

/// The value of [`SCHEME_HEADER`]: the second scheme, which names the executor. The first
/// (`basilica-executor-api-v1`, no scheme header) is refused with a message saying so.
pub const SCHEME: &str = "v2";

/// First line of every canonical string: names the protocol so a signature made for anything
/// else (a validator challenge, another service) never verifies here.
pub const CANONICAL_PREFIX: &str = "basilica-executor-api-v2";

/// Method path prefixes anyone may call.
const OPEN_SERVICES: [&str; 4] = [
    "/grpc.health.v1.Health/",
    "/health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Whether `path` (`/package.Service/Method`) is served without a signature.
pub fn is_open(path: &str) -> bool {
    OPEN_SERVICES.iter().any(|prefix| path.starts_with(prefix))
}

/// The string a client signs: `basilica-executor-api-v2\n<executor id>\n<method path>\n
/// <timestamp>\n<nonce>\n<hex sha256 of the message>`.
pub fn canonical_string(
    executor_id: &str,
    method: &str,
    timestamp: u64,
    nonce: &str,
    message_sha256: &[u8; 32],
) -> String {
    format!("{CANONICAL_PREFIX}\n{executor_id}\n{method}\n{timestamp}\n{nonce}\n{}", hex::encode(message_sha256))
}

pub fn sha256(message: &[u8]) -> [u8; 32] {
    Sha256::digest(message).into()
}

/// The five metadata values for a call to `method` of the executor `executor_id` with the
/// encoded `message`, signed by `pair` at `timestamp` (Unix seconds) with a fresh random nonce.
pub fn sign(
    pair: &HotkeyPair,
    executor_id: &str,
    method: &str,
    message: &[u8],
    timestamp: u64,
) -> [(&'static str, String); 5] {
    let mut raw = [0u8; 16];
    // Without randomness the nonce still differs per call: fall back to the clock's nanoseconds.
    if getrandom::fill(&mut raw).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        raw = nanos.to_le_bytes();
    }
    let nonce = hex::encode(raw);
    let signature = pair.sign(canonical_string(executor_id, method, timestamp, &nonce, &sha256(message)).as_bytes());
    [
        (SCHEME_HEADER, SCHEME.to_owned()),
        (HOTKEY_HEADER, pair.hotkey().to_string()),
        (TIMESTAMP_HEADER, timestamp.to_string()),
        (NONCE_HEADER, nonce),
        (SIGNATURE_HEADER, hex::encode(signature)),
    ]
}

/// The value of [`SCHEME_HEADER`] for a call in a signed session (scheme v3): the call carries
/// [`SESSION_HEADER`], [`COUNTER_HEADER`] and [`MAC_HEADER`] instead of the per-call signature.
pub const SESSION_SCHEME: &str = "v3";
/// The session id `OpenSession` answered.
pub const SESSION_HEADER: &str = "x-executor-session";
/// Decimal, from 1; each counter is accepted once (see [`COUNTER_WINDOW`]).
pub const COUNTER_HEADER: &str = "x-executor-counter";
/// Hex of HMAC-SHA256 under the session key over [`session_canonical_string`].
pub const MAC_HEADER: &str = "x-executor-mac";
/// First line of a session call's canonical string.
pub const SESSION_PREFIX: &str = "basilica-executor-api-v3";
/// First line of the transcript the executor signs when it opens a session, and of the HKDF
/// info: never the first line of anything else signed or derived here.
pub const TRANSCRIPT_PREFIX: &str = "basilica-executor-session-v1";
/// How far behind the highest counter seen a counter is still accepted (once): calls sent at
/// once over HTTP/2 may arrive in any order.
pub const COUNTER_WINDOW: u64 = 1024;
/// The method that opens sessions: per-call signature only.
pub const OPEN_SESSION_METHOD: &str = "/executor.api.v1.ExecutorApi/OpenSession";

/// The string a session call's MAC covers: `basilica-executor-api-v3\n<executor id>\n<session
/// id>\n<method path>\n<counter>\n<hex sha256 of the message>`.
pub fn session_canonical_string(
    executor_id: &str,
    session_id: &str,
    method: &str,
    counter: u64,
    message_sha256: &[u8; 32],
) -> String {
    format!("{SESSION_PREFIX}\n{executor_id}\n{session_id}\n{method}\n{counter}\n{}", hex::encode(message_sha256))
}

/// What the executor signs (ed25519, its identity key) when it opens a session:
/// `basilica-executor-session-v1\n<executor id>\n<hotkey>\n<session id>\n<hex client key>\n<hex
/// executor key>\n<expires at>`.
pub fn session_transcript(
    executor_id: &str,
    hotkey: &str,
    session_id: &str,
    client_key: &[u8; 32],
    executor_key: &[u8; 32],
    expires_at: u64,
) -> String {
    format!(
        "{TRANSCRIPT_PREFIX}\n{executor_id}\n{hotkey}\n{session_id}\n{}\n{}\n{expires_at}",
        hex::encode(client_key),
        hex::encode(executor_key)
    )
}

/// A fresh X25519 key pair: the secret and its public key.
pub fn session_keypair() -> Result<(x25519_dalek::StaticSecret, [u8; 32]), getrandom::Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    let secret = x25519_dalek::StaticSecret::from(seed);
    let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
    Ok((secret, public))
}

/// Why two keys give no session key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the other side's X25519 key is a low-order point (no shared secret)")]
pub struct LowOrderKey;

/// The session key: HKDF-SHA256 with the X25519 shared secret of `secret` and `peer` as input,
/// `client_key ‖ executor_key` as salt and `basilica-executor-session-v1\n<executor id>\n<hotkey>
/// \n<session id>` as info; 32 bytes. A low-order `peer` (which forces a known secret) is refused.
pub fn session_key(
    secret: &x25519_dalek::StaticSecret,
    peer: &[u8; 32],
    client_key: &[u8; 32],
    executor_key: &[u8; 32],
    executor_id: &str,
    hotkey: &str,
    session_id: &str,
) -> Result<[u8; 32], LowOrderKey> {
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
    if !shared.was_contributory() {
        return Err(LowOrderKey);
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(client_key);
    salt[32..].copy_from_slice(executor_key);
    let info = format!("{TRANSCRIPT_PREFIX}\n{executor_id}\n{hotkey}\n{session_id}");
    let mut key = [0u8; 32];
    hkdf::Hkdf::<sha2_11::Sha256>::new(Some(&salt), shared.as_bytes())
        .expand(info.as_bytes(), &mut key)
        .map_err(|_| LowOrderKey)?;
    Ok(key)
}

/// The HMAC-SHA256 under `key` of a call's [`session_canonical_string`], fed to the MAC piece
/// by piece: the string is never built (this is every session call's work, on both sides).
fn session_hmac(
    key: &[u8; 32],
    executor_id: &str,
    session_id: &str,
    method: &str,
    counter: u64,
    message_sha256: &[u8; 32],
) -> hmac::Hmac<sha2_11::Sha256> {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2_11::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = counter;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut hash = [0u8; 64];
    hex::encode_to_slice(message_sha256, &mut hash).expect("64 hex digits for 32 bytes");
    for piece in [
        SESSION_PREFIX.as_bytes(),
        b"\n",
        executor_id.as_bytes(),
        b"\n",
        session_id.as_bytes(),
        b"\n",
        method.as_bytes(),
        b"\n",
        &digits[at..],
        b"\n",
        &hash,
    ] {
        mac.update(piece);
    }
    mac
}

/// Whether `tag` is the MAC under `key` of the call's [`session_canonical_string`], compared in
/// constant time.
pub fn session_mac_matches(
    key: &[u8; 32],
    executor_id: &str,
    session_id: &str,
    method: &str,
    counter: u64,
    message_sha256: &[u8; 32],
    tag: &[u8],
) -> bool {
    use hmac::Mac;
    session_hmac(key, executor_id, session_id, method, counter, message_sha256).verify_slice(tag).is_ok()
}

/// The four metadata values of a call in a session.
pub fn session_headers(
    key: &[u8; 32],
    executor_id: &str,
    session_id: &str,
    method: &str,
    counter: u64,
    message: &[u8],
) -> [(&'static str, String); 4] {
    use hmac::Mac;
    let mac = session_hmac(key, executor_id, session_id, method, counter, &sha256(message)).finalize().into_bytes();
    [
        (SCHEME_HEADER, SESSION_SCHEME.to_owned()),
        (SESSION_HEADER, session_id.to_owned()),
        (COUNTER_HEADER, counter.to_string()),
        (MAC_HEADER, hex::encode(mac)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const METHOD: &str = "/executor.api.v1.ExecutorApi/Identity";

    #[test]
    fn the_mac_fed_in_pieces_is_the_mac_of_the_canonical_string() {
        let key = [5u8; 32];
        for counter in [1, 9, 10, 1234567890, u64::MAX] {
            let digest = sha256(b"body");
            let canonical = session_canonical_string("executor-x", "ab12", METHOD, counter, &digest);
            let tag = {
                use hmac::{KeyInit, Mac};
                let mut mac = hmac::Hmac::<sha2_11::Sha256>::new_from_slice(&key).unwrap();
                mac.update(canonical.as_bytes());
                mac.finalize().into_bytes()
            };
            assert!(session_mac_matches(&key, "executor-x", "ab12", METHOD, counter, &digest, &tag), "{counter}");
            assert!(!session_mac_matches(&key, "executor-x", "ab12", METHOD, counter ^ 1, &digest, &tag));
        }
    }

    #[test]
    fn canonical_string_is_as_documented() {
        let id = "executor-0123456789abcdef0123456789abcdef";
        let text = canonical_string(id, METHOD, 1_700_000_000, "00112233445566778899aabbccddeeff", &sha256(b""));
        assert_eq!(
            text,
            "basilica-executor-api-v2\nexecutor-0123456789abcdef0123456789abcdef\n\
             /executor.api.v1.ExecutorApi/Identity\n1700000000\n\
             00112233445566778899aabbccddeeff\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(is_open("/health.v1.Health/Check") && is_open("/grpc.health.v1.Health/Watch"));
        assert!(is_open("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"));
        assert!(!is_open("/executor.api.v1.ExecutorApi/Identity") && !is_open("/grpc.health.v1.Healthy/Check"));
    }
}
