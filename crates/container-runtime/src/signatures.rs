//! Cosign signatures of images, key-based, looked up in the registry the way `cosign verify
//! --key` does:
//!
//! 1. the reference is resolved to its manifest digest (`sha256:<hex>`, the digest of the bytes
//!    the registry serves; for a multi-platform image, the index);
//! 2. the signatures are the manifest tagged `sha256-<hex>.sig` in the same repository: each
//!    layer of media type `application/vnd.dev.cosign.simplesigning.v1+json` is a signed
//!    payload, its annotation `dev.cosignproject.cosign/signature` the base64 DER ECDSA P-256
//!    signature (SHA-256) of the payload bytes;
//! 3. the image passes when a trusted key verifies a payload whose
//!    `critical.image.docker-manifest-digest` is the digest of step 1.
//!
//! The registry reads (manifests, payloads with their digests checked, each bounded: a
//! registry that sends more than it declares is refused) are [`crate::registry`]'s; the crypto
//! and the key format (SPKI PEM) are RustCrypto's `p256`. No transparency log is consulted
//! (nothing outside the registry is reached): trust is the keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use oci_client::Reference;
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
    OciImageManifest,
};
use oci_client::secrets::RegistryAuth;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use sha2::{Digest as _, Sha256};

use crate::reference::ImageRef;
pub use crate::registry::{ClientError, is_loopback_registry};
use crate::registry::{MAX_PAYLOAD, ReadError, RegistryClient, Session};

/// Media type of a cosign signature layer.
pub const SIMPLESIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Annotation holding a layer's signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of a cosign payload.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Manifests an image reference may resolve to.
const IMAGE_MEDIA_TYPES: &[&str] =
    &[OCI_IMAGE_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, IMAGE_MANIFEST_LIST_MEDIA_TYPE];
/// Signature layers looked at (each payload read is bounded by [`crate::registry`]): a hostile
/// registry cannot make verification expensive.
const MAX_SIGNATURES: usize = 32;

/// A trusted cosign public key.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub path: PathBuf,
    /// `sha256:` and the first 16 hex digits of the key's SPKI DER: how logs and audit name it.
    pub id: String,
    key: VerifyingKey,
}

impl TrustedKey {
    /// Reads a PEM public key as `cosign generate-key-pair` writes it (`cosign.pub`).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| KeyError::Unreadable { path: path.to_owned(), source })?;
        Self::from_pem(&text, path)
    }

    /// The key in `text`, read from `path` (which names it in errors and logs).
    pub fn from_pem(text: &str, path: &Path) -> Result<Self, KeyError> {
        let not_p256 = |source| KeyError::NotP256 { path: path.to_owned(), source };
        let key = VerifyingKey::from_public_key_pem(text).map_err(not_p256)?;
        let der = p256::pkcs8::EncodePublicKey::to_public_key_der(&key).map_err(not_p256)?;
        let id = format!("sha256:{}", &hex::encode(Sha256::digest(der.as_bytes()))[..16]);
        Ok(Self { path: path.to_owned(), id, key })
    }

    /// Whether `signature` (DER, as cosign writes it) is this key's over `payload`.
    pub fn verifies(&self, payload: &[u8], signature: &[u8]) -> bool {
        Signature::from_der(signature).is_ok_and(|s| self.key.verify(payload, &s).is_ok())
    }
}

/// A trusted key that cannot be used; each names its file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", path.display())]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("{}: not an ECDSA P-256 public key in PEM (SPKI) form: {source}", path.display())]
    NotP256 { path: PathBuf, source: p256::pkcs8::spki::Error },
}

/// Why an image is not verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error("no cosign signature in the registry (looked for tag `{0}`)")]
    Unsigned(String),
    #[error("no signature by a trusted key ({0})")]
    BadSignature(String),
    #[error("the registry serves digest {served}, not the {asked} that was asked for")]
    DigestMismatch { served: String, asked: String },
    #[error("registry lookup failed: {0}")]
    Registry(String),
    /// The registry announced or sent more than a manifest or payload may have.
    #[error("registry answer refused: {0}")]
    Oversized(String),
    #[error("registry lookup took longer than {0:?}")]
    Timeout(Duration),
}

impl Unverified {
    /// The metric label of the outcome.
    pub fn kind(&self) -> &'static str {
        match self {
            Unverified::Unsigned(_) => "unsigned",
            Unverified::BadSignature(_) => "bad_signature",
            Unverified::DigestMismatch { .. } => "digest_mismatch",
            Unverified::Registry(_) => "registry_error",
            Unverified::Oversized(_) => "oversized",
            Unverified::Timeout(_) => "timeout",
        }
    }
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The manifest digest the reference resolved to, when the registry answered.
    pub digest: Option<String>,
    /// The id of the key that signed it, or why it is not verified.
    pub result: Result<String, Unverified>,
}

/// The cosign payload, as far as it is checked.
#[derive(Debug, serde::Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Debug, serde::Deserialize)]
struct Critical {
    image: CriticalImage,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, serde::Deserialize)]
struct CriticalImage {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// Why one signed payload does not vouch for an image.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("signature annotation is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("signed by no trusted key")]
    NoTrustedKey,
    #[error("signed payload is not a cosign payload: {0}")]
    NotCosign(#[from] serde_json::Error),
    #[error("signed payload has type `{0}`, not `{PAYLOAD_TYPE}`")]
    WrongType(String),
    #[error("signed payload is for {signed}, not {wanted}")]
    OtherDigest { signed: String, wanted: String },
}

/// Checks one signed payload against the trusted keys: the key id when one of them signed it
/// and it names `digest`.
pub fn check_payload(
    payload: &[u8],
    signature_b64: &str,
    digest: &str,
    keys: &[TrustedKey],
) -> Result<String, PayloadError> {
    let signature = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim())?;
    let key = keys.iter().find(|k| k.verifies(payload, &signature)).ok_or(PayloadError::NoTrustedKey)?;
    let payload: Payload = serde_json::from_slice(payload)?;
    if payload.critical.kind != PAYLOAD_TYPE {
        return Err(PayloadError::WrongType(payload.critical.kind));
    }
    if payload.critical.image.digest != digest {
        return Err(PayloadError::OtherDigest { signed: payload.critical.image.digest, wanted: digest.to_owned() });
    }
    Ok(key.id.clone())
}

/// The tag cosign stores the signatures of `digest` under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The registry client used for lookups: plain HTTP to loopback registries (as Docker does),
/// HTTPS with the system's trust store everywhere else.
pub fn client(registries: &[String], timeout: Duration) -> Result<RegistryClient, ClientError> {
    RegistryClient::new(registries, timeout)
}

/// Resolves `image` in its registry and checks its cosign signatures against `keys`.
pub async fn verify(client: &RegistryClient, auth: &RegistryAuth, image: &ImageRef, keys: &[TrustedKey]) -> Verdict {
    let failed = |e: ReadError| Verdict { digest: None, result: Err(unverified(e)) };
    let repository = Reference::with_tag(image.registry.clone(), image.repository.clone(), "latest".to_owned());
    let session = match client.session(&repository, auth).await {
        Ok(session) => session,
        Err(e) => return failed(e),
    };
    let asked = image.digest.clone().or_else(|| image.tag.clone()).unwrap_or_else(|| "latest".to_owned());
    let digest = match session.manifest(&asked, IMAGE_MEDIA_TYPES).await {
        Ok(bytes) => sha256_digest(&bytes),
        Err(e) => return failed(e),
    };
    if let Some(asked) = &image.digest
        && *asked != digest
    {
        let result = Err(Unverified::DigestMismatch { served: digest.clone(), asked: asked.clone() });
        return Verdict { digest: Some(digest), result };
    }
    let result = signatures(&session, &digest, keys).await;
    Verdict { digest: Some(digest), result }
}

/// A failed read as a verdict: what the registry sent too much of, or why the lookup failed.
fn unverified(e: ReadError) -> Unverified {
    if e.is_oversized() { Unverified::Oversized(e.to_string()) } else { Unverified::Registry(e.to_string()) }
}

async fn signatures(session: &Session<'_>, digest: &str, keys: &[TrustedKey]) -> Result<String, Unverified> {
    let tag = signature_tag(digest);
    let manifest = match session.manifest(&tag, &[OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE]).await {
        Ok(bytes) => bytes,
        Err(ReadError::NotFound { .. }) => return Err(Unverified::Unsigned(tag)),
        Err(e) => return Err(unverified(e)),
    };
    let manifest: OciImageManifest = serde_json::from_slice(&manifest)
        .map_err(|e| Unverified::BadSignature(format!("`{tag}` is not an image manifest: {e}")))?;
    let mut why = Vec::new();
    for layer in manifest.layers.iter().filter(|l| l.media_type == SIMPLESIGNING_MEDIA_TYPE).take(MAX_SIGNATURES) {
        let Some(signature) = layer.annotations.as_ref().and_then(|a| a.get(SIGNATURE_ANNOTATION)) else {
            why.push(format!("layer {} has no signature annotation", layer.digest));
            continue;
        };
        let declared = match u64::try_from(layer.size) {
            Ok(size) if size <= MAX_PAYLOAD => size,
            _ => {
                why.push(format!("payload {} is declared {} bytes, more than {MAX_PAYLOAD}", layer.digest, layer.size));
                continue;
            }
        };
        // Read to the declared size at most, its digest checked; a registry that sends more
        // than it declared is refused whole.
        let payload = match session.payload(&layer.digest, declared).await {
            Ok(payload) => payload,
            Err(e) if e.is_oversized() => return Err(unverified(e)),
            Err(e) => {
                why.push(e.to_string());
                continue;
            }
        };
        match check_payload(&payload, signature, digest, keys) {
            Ok(key) => return Ok(key),
            Err(e) => why.push(e.to_string()),
        }
    }
    if why.is_empty() {
        why.push(format!("`{tag}` holds no cosign signature layer"));
    }
    why.dedup();
    Err(Unverified::BadSignature(why.join("; ")))
}

/// Registry logins: from `[docker.registry.registries."<host>"]`, else the Docker config file.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// host → (user, password), read from the config's password files at start.
    configured: BTreeMap<String, (String, String)>,
    docker_config_file: Option<PathBuf>,
}

/// A login for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// An identity (refresh) token from the Docker config file: Docker can use it, the lookup
    /// client cannot.
    IdentityToken(String),
}

impl Credentials {
    /// Reads the password files; an unreadable or empty one is an error naming its key.
    pub fn load(config: &common::config::RegistryConfig) -> Result<Self, CredentialsError> {
        let mut configured = BTreeMap::new();
        for (host, settings) in &config.registries {
            if let (Some(user), Some(file)) = (&settings.username, &settings.password_file) {
                let key = format!("docker.registry.registries.\"{host}\".password_file");
                let text = std::fs::read_to_string(file).map_err(|source| CredentialsError::Unreadable {
                    key: key.clone(),
                    path: file.clone(),
                    source,
                })?;
                let password = text.lines().next().unwrap_or("").trim().to_owned();
                if password.is_empty() {
                    return Err(CredentialsError::Empty { key, path: file.clone() });
                }
                configured.insert(host.clone(), (user.clone(), password));
            }
        }
        if let Some(file) = &config.docker_config_file {
            std::fs::File::open(file).map_err(|source| CredentialsError::Unreadable {
                key: "docker.registry.docker_config_file".to_owned(),
                path: file.clone(),
                source,
            })?;
        }
        Ok(Self { configured, docker_config_file: config.docker_config_file.clone() })
    }

    /// The login for `registry`; errors (a broken config file, a failing helper) name the file.
    pub fn login(&self, registry: &str) -> Result<Login, CredentialsError> {
        if let Some((username, password)) = self.configured.get(registry) {
            return Ok(Login::Basic { username: username.clone(), password: password.clone() });
        }
        let Some(file) = &self.docker_config_file else {
            return Ok(Login::Anonymous);
        };
        // Docker keys Docker Hub's login by its v1 index URL.
        let server = if registry == crate::reference::DOCKER_HUB { "https://index.docker.io/v1/" } else { registry };
        let reader =
            std::fs::File::open(file).map_err(|source| CredentialsError::ConfigFile { path: file.clone(), source })?;
        use docker_credential::{CredentialRetrievalError as E, DockerCredential as C};
        match docker_credential::get_credential_from_reader(std::io::BufReader::new(reader), server) {
            Ok(C::UsernamePassword(username, password)) => Ok(Login::Basic { username, password }),
            Ok(C::IdentityToken(token)) => Ok(Login::IdentityToken(token)),
            Err(E::NoCredentialConfigured) => Ok(Login::Anonymous),
            Err(source) => Err(CredentialsError::Lookup { path: file.clone(), registry: registry.to_owned(), source }),
        }
    }
}

/// A registry login that cannot be read; each names the config key or the file.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{key}: {}: {source}", path.display())]
    Unreadable { key: String, path: PathBuf, source: std::io::Error },
    #[error("{key}: {}: empty", path.display())]
    Empty { key: String, path: PathBuf },
    #[error("{}: {source}", path.display())]
    ConfigFile { path: PathBuf, source: std::io::Error },
    #[error("{}: credentials for {registry}: {source}", path.display())]
    Lookup { path: PathBuf, registry: String, source: docker_credential::CredentialRetrievalError },
}

impl Login {
    /// For registry lookups.
    pub fn registry_auth(&self) -> RegistryAuth {
        match self {
            Login::Basic { username, password } => RegistryAuth::Basic(username.clone(), password.clone()),
            Login::Anonymous | Login::IdentityToken(_) => RegistryAuth::Anonymous,
        }
    }

    /// For Docker's pull (`X-Registry-Auth`); None when anonymous.
    pub fn docker_credentials(&self, registry: &str) -> Option<bollard::auth::DockerCredentials> {
        let base = bollard::auth::DockerCredentials { serveraddress: Some(registry.to_owned()), ..Default::default() };
        match self {
            Login::Anonymous => None,
            Login::Basic { username, password } => Some(bollard::auth::DockerCredentials {
                username: Some(username.clone()),
                password: Some(password.clone()),
                ..base
            }),
            Login::IdentityToken(token) => {
                Some(bollard::auth::DockerCredentials { identitytoken: Some(token.clone()), ..base })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;

    const DIGEST: &str = "sha256:4b2f2b1d3c2d9a5c1f7a0f6c6a3e1d3c7b1a2e3f4d5c6b7a8e9f0a1b2c3d4e5f";

    fn key(seed: u8) -> (SigningKey, TrustedKey) {
        let signing = SigningKey::from_slice(&[seed; 32]).unwrap();
        let pem = signing.verifying_key().to_public_key_pem(p256::pkcs8::LineEnding::LF).unwrap();
        let trusted = TrustedKey::from_pem(&pem, Path::new("k.pub")).unwrap();
        (signing, trusted)
    }

    fn payload(digest: &str) -> Vec<u8> {
        serde_json::json!({
            "critical": {
                "identity": {"docker-reference": "127.0.0.1:5000/test/signed"},
                "image": {"docker-manifest-digest": digest},
                "type": PAYLOAD_TYPE,
            },
            "optional": null,
        })
        .to_string()
        .into_bytes()
    }

    fn sign(key: &SigningKey, payload: &[u8]) -> String {
        let signature: Signature = key.sign(payload);
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    }

    #[test]
    fn a_trusted_key_over_the_right_digest_passes() {
        let (signing, trusted) = key(7);
        let body = payload(DIGEST);
        assert_eq!(
            check_payload(&body, &sign(&signing, &body), DIGEST, std::slice::from_ref(&trusted)).unwrap(),
            trusted.id
        );
        assert!(trusted.id.starts_with("sha256:") && trusted.id.len() == 23, "{}", trusted.id);
    }

    #[test]
    fn wrong_key_wrong_digest_wrong_type_and_garbage_are_refused() {
        let (signing, _) = key(7);
        let (_, other) = key(9);
        let body = payload(DIGEST);
        let err =
            check_payload(&body, &sign(&signing, &body), DIGEST, std::slice::from_ref(&other)).unwrap_err().to_string();
        assert!(err.contains("no trusted key"), "{err}");

        let (signing, trusted) = key(7);
        let other_digest = DIGEST.replace("4b2f", "0000");
        let err = check_payload(&body, &sign(&signing, &body), &other_digest, std::slice::from_ref(&trusted))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is for sha256:4b2f"), "{err}");

        let mut tampered = body.clone();
        tampered[5] ^= 1;
        assert!(check_payload(&tampered, &sign(&signing, &body), DIGEST, std::slice::from_ref(&trusted)).is_err());

        let odd = serde_json::json!({"critical": {"image": {"docker-manifest-digest": DIGEST}, "type": "x"}});
        let odd = odd.to_string().into_bytes();
        let err =
            check_payload(&odd, &sign(&signing, &odd), DIGEST, std::slice::from_ref(&trusted)).unwrap_err().to_string();
        assert!(err.contains("type `x`"), "{err}");

        assert!(
            check_payload(&body, "%%%", DIGEST, std::slice::from_ref(&trusted))
                .unwrap_err()
                .to_string()
                .contains("base64")
        );
        assert!(check_payload(&body, "AAAA", DIGEST, &[trusted]).unwrap_err().to_string().contains("no trusted key"));
    }

    #[test]
    fn high_s_signatures_verify_as_go_writes_them() {
        // Go's crypto/ecdsa (cosign) does not normalise s: both forms must verify.
        let (signing, trusted) = key(3);
        let body = payload(DIGEST);
        let signature: Signature = signing.sign(&body);
        let (r, s) = signature.split_scalars();
        let high = Signature::from_scalars(r, -*s).unwrap();
        assert!(trusted.verifies(&body, signature.to_der().as_bytes()));
        assert!(trusted.verifies(&body, high.to_der().as_bytes()));
    }

    #[test]
    fn keys_load_from_pem_files_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (signing, _) = key(5);
        let good = dir.path().join("cosign.pub");
        std::fs::write(&good, signing.verifying_key().to_public_key_pem(p256::pkcs8::LineEnding::LF).unwrap()).unwrap();
        TrustedKey::load(&good).unwrap();
        let bad = dir.path().join("bad.pub");
        std::fs::write(&bad, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap();
        let err = TrustedKey::load(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.pub") && err.contains("P-256"), "{err}");
        assert!(TrustedKey::load(&dir.path().join("missing.pub")).unwrap_err().to_string().contains("missing.pub"));
    }

    #[test]
    fn signature_tags_and_loopback_registries() {
        assert_eq!(signature_tag("sha256:abc"), "sha256-abc.sig");
        for host in ["127.0.0.1:5000", "localhost:5000", "localhost", "[::1]:5000", "127.1.2.3"] {
            assert!(is_loopback_registry(host), "{host}");
        }
        for host in ["docker.io", "ghcr.io:443", "10.0.0.1:5000", "localhost.evil.com"] {
            assert!(!is_loopback_registry(host), "{host}");
        }
    }

    #[test]
    fn logins_come_from_the_config_then_the_docker_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("pw");
        std::fs::write(&password, "s3cret\n").unwrap();
        let docker = dir.path().join("config.json");
        // "bob:hunter2"
        std::fs::write(&docker, r#"{"auths": {"ghcr.io": {"auth": "Ym9iOmh1bnRlcjI="}}}"#).unwrap();
        let mut config = common::config::RegistryConfig::default();
        config.registries.insert(
            "127.0.0.1:5000".into(),
            common::config::RegistrySettings {
                username: Some("ci".into()),
                password_file: Some(password.clone()),
                ..Default::default()
            },
        );
        config.docker_config_file = Some(docker);
        let creds = Credentials::load(&config).unwrap();
        let basic = |u: &str, p: &str| Login::Basic { username: u.into(), password: p.into() };
        assert_eq!(creds.login("127.0.0.1:5000").unwrap(), basic("ci", "s3cret"));
        assert_eq!(creds.login("ghcr.io").unwrap(), basic("bob", "hunter2"));
        assert_eq!(creds.login("quay.io").unwrap(), Login::Anonymous);
        assert!(Login::Anonymous.docker_credentials("quay.io").is_none());

        std::fs::write(&password, "\n").unwrap();
        let err = Credentials::load(&config).unwrap_err().to_string();
        assert!(err.contains("registries.\"127.0.0.1:5000\".password_file") && err.contains("empty"), "{err}");
    }
}
