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

#[cfg(test)]
mod tests {
    use super::*;

    const METHOD: &str = "/executor.api.v1.ExecutorApi/Identity";

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
