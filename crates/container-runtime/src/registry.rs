//! The registry reads of signature verification: manifests and signature payloads over the
//! distribution API (`/v2/<repository>/manifests/<reference>`, `/v2/<repository>/blobs/<digest>`),
//! every body bounded. A registry *declares* sizes (a layer's `size`, `Content-Length`) and a
//! hostile one sends more: each read stops at its cap, buffers nothing beyond it, and says what
//! the registry did (issue 18 item 5). A manifest may have [`MAX_MANIFEST`] bytes; a payload the
//! size its signature manifest declares, at most [`MAX_PAYLOAD`].
//!
//! Token auth (the `WWW-Authenticate` challenge of `/v2/`) is `oci-client`'s, once per
//! lookup; the reads are reqwest's, with the same transport settings: plain HTTP to loopback
//! registries (as Docker does), HTTPS with the system's trust store everywhere else. Only the
//! registry is reached: a layer's foreign `urls` are never followed.

use std::fmt;
use std::time::Duration;

use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use reqwest::header::{ACCEPT, AUTHORIZATION};

use sha2::{Digest as _, Sha256};

/// The most a manifest (an image's, or a signature's) may have.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// The most a signed payload may have, whatever its manifest declares.
pub const MAX_PAYLOAD: u64 = 64 << 10;

/// How much one read may take, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub bytes: u64,
    pub why: &'static str,
}

impl Limit {
    pub const MANIFEST: Limit = Limit { bytes: MAX_MANIFEST, why: "a manifest may have" };

    /// A payload's: what its signature manifest declares.
    pub fn declared(bytes: u64) -> Limit {
        Limit { bytes, why: "the signature manifest declares for it" }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the {} bytes {}", self.bytes, self.why)
    }
}

/// Why a read failed; each names what was read (`manifest \`host/repo:tag\``, `payload sha256:…`).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The answer's `Content-Length` is over the limit: nothing of the body is read.
    #[error("{what}: the registry announced {announced} bytes (Content-Length), more than {limit}")]
    Announced { what: String, announced: u64, limit: Limit },
    /// The body went past the limit: reading stopped there and the connection was dropped.
    #[error("{what}: the registry sent more than {limit}; stopped reading")]
    Overrun { what: String, limit: Limit },
    #[error("{what}: not in the registry (404)")]
    NotFound { what: String },
    #[error("{what}: the registry answered {status}")]
    Status { what: String, status: reqwest::StatusCode },
    #[error("{what}: the registry sent a blob with digest {actual}")]
    Digest { what: String, actual: String },
    #[error("{what}: {detail}")]
    Transport { what: String, detail: String },
}

impl ReadError {
    /// Whether the registry sent, or announced, more than the read may take.
    pub fn is_oversized(&self) -> bool {
        matches!(self, ReadError::Announced { .. } | ReadError::Overrun { .. })
    }
}

/// The client of signature lookups.
pub struct RegistryClient {
    /// For token auth only.
    oci: Client,
    http: reqwest::Client,
    /// Registries spoken to over plain HTTP: the loopback ones.
    plain: Vec<String>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient").field("plain", &self.plain).finish_non_exhaustive()
    }
}

/// The registry client cannot be set up (the system's CA certificates, TLS).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot set up the registry client: {0}")]
    Oci(#[source] OciDistributionError),
    #[error("cannot set up the registry client: {0}")]
    Http(#[source] reqwest::Error),
}

impl RegistryClient {
    /// A client for `registries` (the allowed hosts); `timeout` bounds each connect and read.
    pub fn new(registries: &[String], timeout: Duration) -> Result<Self, ClientError> {
        // The ring provider is in the tree already (tonic); installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let plain: Vec<String> = registries.iter().filter(|r| is_loopback_registry(r)).cloned().collect();
        let connect_timeout = Duration::from_secs(10).min(timeout);
        let user_agent = concat!("basilica-executor/", env!("CARGO_PKG_VERSION"));
        let config = oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(plain.clone()),
            read_timeout: Some(timeout),
            connect_timeout: Some(connect_timeout),
            user_agent,
            ..Default::default()
        };
        let oci = Client::try_from(config).map_err(ClientError::Oci)?;
        let http = reqwest::Client::builder()
            .read_timeout(timeout)
            .connect_timeout(connect_timeout)
            .user_agent(user_agent)
            .build()
            .map_err(ClientError::Http)?;
        Ok(Self { oci, http, plain })
    }

    /// Authenticates for pulls from `reference`'s repository; the session reads from it.
    pub async fn session(&self, reference: &Reference, auth: &RegistryAuth) -> Result<Session<'_>, ReadError> {
        let host = reference.resolve_registry();
        let scheme = if self.plain.iter().any(|p| p == reference.registry()) { "http" } else { "https" };
        let what = format!("registry {}", reference.registry());
        let token = self.oci.auth(reference, auth, RegistryOperation::Pull).await.map_err(|e| {
            ReadError::Transport { what: what.clone(), detail: format!("authentication failed: {}", describe(&e)) }
        })?;
        let authorization = match (token, auth) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, RegistryAuth::Basic(user, password)) => {
                use base64::Engine as _;
                let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {pair}"))
            }
            (None, _) => None,
        };
        Ok(Session {
            client: self,
            base: format!("{scheme}://{host}/v2/{}", reference.repository()),
            name: format!("{}/{}", reference.registry(), reference.repository()),
            authorization,
        })
    }
}

/// Reads from one repository with one login.
#[derive(Debug)]
pub struct Session<'a> {
    client: &'a RegistryClient,
    /// `scheme://host/v2/repository`.
    base: String,
    /// `host/repository`, as errors name it.
    name: String,
    authorization: Option<String>,
}

impl Session<'_> {
    /// The manifest `reference` (a tag or a digest) names, as served, at most [`MAX_MANIFEST`]
    /// bytes.
    pub async fn manifest(&self, reference: &str, accept: &[&str]) -> Result<Vec<u8>, ReadError> {
        let separator = if reference.contains(':') { "@" } else { ":" };
        let what = format!("manifest `{}{separator}{reference}`", self.name);
        let url = format!("{}/manifests/{reference}", self.base);
        self.get(&url, &accept.join(", "), what, Limit::MANIFEST).await
    }

    /// The blob `digest` (`sha256:…`), which its manifest declares `declared` bytes long, at
    /// most [`MAX_PAYLOAD`] bytes; its digest is checked.
    pub async fn payload(&self, digest: &str, declared: u64) -> Result<Vec<u8>, ReadError> {
        let what = format!("payload {digest}");
        let limit = Limit::declared(declared);
        if declared > MAX_PAYLOAD {
            return Err(ReadError::Announced {
                what,
                announced: declared,
                limit: Limit { bytes: MAX_PAYLOAD, why: "a payload may have" },
            });
        }
        let url = format!("{}/blobs/{digest}", self.base);
        let body = self.get(&url, "*/*", what.clone(), limit).await?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if actual != digest {
            return Err(ReadError::Digest { what, actual });
        }
        Ok(body)
    }

    async fn get(&self, url: &str, accept: &str, what: String, limit: Limit) -> Result<Vec<u8>, ReadError> {
        let mut request = self.client.http.get(url).header(ACCEPT, accept);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        let transport =
            |what: &str, e: reqwest::Error| ReadError::Transport { what: what.to_owned(), detail: describe(&e) };
        let response = request.send().await.map_err(|e| transport(&what, e))?;
        match response.status() {
            reqwest::StatusCode::NOT_FOUND => return Err(ReadError::NotFound { what }),
            status if !status.is_success() => return Err(ReadError::Status { what, status }),
            _ => {}
        }
        read_capped(response, what, limit).await
    }
}

/// The body of `response`, refused when it announces or sends more than `limit`; at most
/// `limit` bytes (and the chunk being read) are ever held.
async fn read_capped(mut response: reqwest::Response, what: String, limit: Limit) -> Result<Vec<u8>, ReadError> {
    if let Some(announced) = response.content_length()
        && announced > limit.bytes
    {
        return Err(ReadError::Announced { what, announced, limit });
    }
    let expected = response.content_length().unwrap_or(0).min(limit.bytes);
    let mut body = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(body),
            Err(e) => return Err(ReadError::Transport { what, detail: describe(&e) }),
        };
        if (body.len() + chunk.len()) as u64 > limit.bytes {
            return Err(ReadError::Overrun { what, limit });
        }
        body.extend_from_slice(&chunk);
    }
}

/// Whether Docker talks plain HTTP to this registry by default: loopback hosts.
pub fn is_loopback_registry(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An error in one line, with its causes (reqwest's outer error says little alone).
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
