//! cosign signature payloads (container-runtime `signatures.rs`): whatever a registry serves as
//! a signed payload or as a signature annotation, the check never panics, and it passes only a
//! payload signed by the trusted key that names the digest asked for.

use std::sync::OnceLock;

use base64::Engine as _;
use container_runtime::signatures::{TrustedKey, check_payload};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey as _;

const DIGEST: &str = "sha256:46f173991ce8137b9d464c0c7663f62f73760a82da57d4fa1536fce8f996bcc0";

fn key() -> &'static (SigningKey, TrustedKey) {
    static KEY: OnceLock<(SigningKey, TrustedKey)> = OnceLock::new();
    KEY.get_or_init(|| {
        let signing = SigningKey::from_slice(&[7; 32]).expect("key");
        let pem = signing.verifying_key().to_public_key_pem(p256::pkcs8::LineEnding::LF).expect("pem");
        let trusted = TrustedKey::from_pem(&pem, std::path::Path::new("fuzz.pub")).expect("trusted");
        (signing, trusted)
    })
}

pub(crate) fn check(data: &[u8]) {
    let (signing, trusted) = key();
    let keys = std::slice::from_ref(trusted);
    // Signed by the trusted key, so the payload checks are reached.
    let signature: Signature = signing.sign(data);
    let annotation = base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes());
    match check_payload(data, &annotation, DIGEST, keys) {
        Ok(id) => {
            assert_eq!(id, trusted.id);
            let value: serde_json::Value = serde_json::from_slice(data).expect("a passing payload is JSON");
            assert_eq!(value["critical"]["image"]["docker-manifest-digest"], DIGEST);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    // As an annotation over a good payload: never a trusted signature.
    let payload = format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"r"}},"image":{{"docker-manifest-digest":"{DIGEST}"}},"type":"cosign container image signature"}},"optional":null}}"#
    );
    let text = String::from_utf8_lossy(data);
    assert!(check_payload(payload.as_bytes(), &text, DIGEST, keys).is_err());
}
