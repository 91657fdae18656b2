//! A registry that lies about sizes, hand-written on a loopback port (plain HTTP/1.1 over
//! tokio): it answers the distribution API's `GET /v2/`, manifests and blobs, and on each
//! repository below streams more than it declares, for the bounded reads of signature
//! verification (issue 18 item 5). It counts what it managed to send, so a test can tell a
//! client that stopped reading from one that buffered everything.
//!
//! | repository | what it does |
//! |---|---|
//! | `flood/manifest` | the image manifest has no length and never ends (up to [`FLOOD`]) |
//! | `flood/announced` | the image manifest announces `Content-Length: 1 GiB` and streams it |
//! | `flood/signature` | a small image manifest; its `.sig` manifest never ends |
//! | `flood/payload` | small manifests; the signature layer is declared 200 bytes, its blob never ends |
//! | `flood/payload-announced` | as `flood/payload`, the blob announcing `Content-Length: 10 MiB` |

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The most one response of a flood sends (a client that reads it all holds this much).
pub const FLOOD: u64 = 256 << 20;
/// The size the signature manifest declares for its payload.
pub const DECLARED_PAYLOAD: u64 = 200;
/// The repositories, one per way of sending too much.
pub const REPOSITORIES: [&str; 5] =
    ["flood/manifest", "flood/announced", "flood/signature", "flood/payload", "flood/payload-announced"];

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The registry; dropping it stops it.
#[derive(Debug)]
pub struct HostileRegistry {
    pub port: u16,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HostileRegistry {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, counter.clone()));
            }
        });
        Self { port, sent, task }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Bytes of response bodies sent so far, over every connection.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The digest of the (small) image manifest every repository but the first two serves.
    pub fn image_digest() -> String {
        digest(&image_manifest())
    }

    /// The digest the signature manifest gives its payload.
    pub fn payload_digest() -> String {
        digest(&payload())
    }
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn image_manifest() -> Vec<u8> {
    let config = format!("sha256:{}", "0".repeat(64));
    serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [],
    })
    .to_string()
    .into_bytes()
}

/// The payload the signature manifest declares: [`DECLARED_PAYLOAD`] bytes.
fn payload() -> Vec<u8> {
    vec![b' '; DECLARED_PAYLOAD as usize]
}

fn signature_manifest() -> Vec<u8> {
    let config = format!("sha256:{}", "0".repeat(64));
    serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "digest": digest(&payload()),
            "size": DECLARED_PAYLOAD,
            "annotations": {"dev.cosignproject.cosign/signature": "AAAA"},
        }],
    })
    .to_string()
    .into_bytes()
}

/// What one request gets.
enum Answer {
    Body(&'static str, Vec<u8>),
    /// `Content-Length: announced` (or none, the body ending at close), then [`FLOOD`] bytes.
    Flood {
        announced: Option<u64>,
    },
    NotFound,
}

fn answer(path: &str) -> Answer {
    if path == "/v2/" || path == "/v2" {
        return Answer::Body("application/json", b"{}".to_vec());
    }
    let Some(rest) = path.strip_prefix("/v2/") else { return Answer::NotFound };
    let repo = REPOSITORIES.iter().find(|r| rest.starts_with(&format!("{r}/")));
    let Some(repo) = repo else { return Answer::NotFound };
    let rest = &rest[repo.len() + 1..];
    let signature = rest.starts_with("manifests/") && rest.ends_with(".sig");
    let manifest = rest.starts_with("manifests/") && !signature;
    let blob = rest.starts_with("blobs/");
    match (*repo, manifest, signature, blob) {
        ("flood/manifest", true, _, _) => Answer::Flood { announced: None },
        ("flood/announced", true, _, _) => Answer::Flood { announced: Some(1 << 30) },
        (_, true, _, _) => Answer::Body(OCI_MANIFEST, image_manifest()),
        ("flood/signature", _, true, _) => Answer::Flood { announced: None },
        (_, _, true, _) => Answer::Body(OCI_MANIFEST, signature_manifest()),
        ("flood/payload", _, _, true) => Answer::Flood { announced: None },
        ("flood/payload-announced", _, _, true) => Answer::Flood { announced: Some(10 << 20) },
        _ => Answer::NotFound,
    }
}

/// One connection, one request (`Connection: close`): a body without a length ends there.
async fn serve(mut stream: TcpStream, sent: Arc<AtomicU64>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 << 10 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, length, body) = match answer(path) {
        Answer::Body(content_type, body) => ("200 OK", content_type, Some(body.len() as u64), Some(body)),
        Answer::Flood { announced } => ("200 OK", OCI_MANIFEST, announced, None),
        Answer::NotFound => ("404 Not Found", "application/json", Some(0), Some(Vec::new())),
    };
    let mut response = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nConnection: close\r\n");
    if let Some(length) = length {
        response.push_str(&format!("Content-Length: {length}\r\n"));
    }
    response.push_str("\r\n");
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    if method == "HEAD" {
        return;
    }
    match body {
        Some(body) => {
            if stream.write_all(&body).await.is_ok() {
                sent.fetch_add(body.len() as u64, Ordering::Relaxed);
            }
        }
        None => {
            let chunk = vec![b' '; 64 << 10];
            let mut total = 0;
            while total < FLOOD {
                if stream.write_all(&chunk).await.is_err() {
                    break;
                }
                total += chunk.len() as u64;
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    }
    let _ = stream.shutdown().await;
}
