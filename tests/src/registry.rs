//! A real image registry for tests and benchmarks: the distribution's `docker-registry` on a
//! loopback port, images pushed with `docker push`, and cosign signatures stored the way
//! `cosign sign --key` stores them (written here independently of container-runtime's reader).

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use common::process::ProcessSpec;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
pub use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use p256::ecdsa::Signature;
pub use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer as _;
use sha2::Digest as _;

use crate::runtime::docker;
use crate::{free_port, require_tool};

/// A `docker-registry` on a free loopback port, its storage in a temporary directory.
#[derive(Debug)]
pub struct Registry {
    child: tokio::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A registry; with `login`, only that user (and password) may pull or push.
pub async fn start_registry(login: Option<(&str, &str)>) -> Option<Registry> {
    let binary = Path::new("/usr/bin/docker-registry");
    if !require_tool("docker-registry (the distribution's registry)", binary.exists()) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.yml");
    let mut text = format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.path().join("data").display()
    );
    if let Some((user, password)) = login {
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, format!("{user}:{}\n", bcrypt::hash(password, 5).unwrap())).unwrap();
        text.push_str(&format!("auth:\n  htpasswd:\n    realm: test\n    path: {}\n", htpasswd.display()));
    }
    std::fs::write(&config, text).unwrap();
    let child = ProcessSpec::new(binary).arg("serve").arg(&config).spawn_supervised().unwrap();
    let registry = Registry { child, port, _dir: dir };
    for _ in 0..100 {
        if matches!(crate::http_get(port, "/v2/").await, Ok((200 | 401, _))) {
            return Some(registry);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("docker-registry did not answer on 127.0.0.1:{port}");
}

/// Tags `local` as `name` and pushes it; the local tag is removed again so that a create has
/// to pull it through the engine.
pub async fn push(local: &str, name: &str) {
    push_as(local, name, None).await;
}

/// As [`push`], with the Docker client config (logins) in `config_dir`.
pub async fn push_as(local: &str, name: &str, config_dir: Option<&Path>) {
    assert!(docker(&["tag", local, name]).await.0, "docker tag {name}");
    let dir = config_dir.map(|d| d.display().to_string());
    let args: Vec<&str> = match &dir {
        Some(dir) => vec!["--config", dir, "push", name],
        None => vec!["push", name],
    };
    let (ok, out) = docker(&args).await;
    assert!(ok, "docker push {name}: {out}");
    assert!(docker(&["rmi", name]).await.0, "docker rmi {name}");
}

pub fn oci() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig { protocol: ClientProtocol::Http, ..Default::default() })
}

/// The manifest digest `repo:tag` resolves to, computed from the bytes the registry serves.
pub async fn digest_of(registry: &str, repo: &str, tag: &str) -> String {
    digest_as(registry, repo, tag, &RegistryAuth::Anonymous).await
}

pub async fn digest_as(registry: &str, repo: &str, tag: &str, auth: &RegistryAuth) -> String {
    let reference = Reference::with_tag(registry.into(), repo.into(), tag.into());
    let accept = ["application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json"];
    let (bytes, _) = oci().pull_manifest_raw(&reference, auth, &accept).await.unwrap();
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)))
}

/// Stores a cosign signature of `digest` by `key` in `registry/repo`, as `cosign sign --key`
/// does: tag `sha256-<hex>.sig`, one simple-signing layer, the signature in its annotation.
pub async fn sign(registry: &str, repo: &str, digest: &str, key: &SigningKey) {
    sign_as(registry, repo, digest, key, &RegistryAuth::Anonymous).await;
}

pub async fn sign_as(registry: &str, repo: &str, digest: &str, key: &SigningKey, auth: &RegistryAuth) {
    let payload = serde_json::json!({
        "critical": {
            "identity": {"docker-reference": format!("{registry}/{repo}")},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": null,
    })
    .to_string();
    let signature: Signature = key.sign(payload.as_bytes());
    let annotation = base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes());
    let layer = ImageLayer::new(
        payload.into_bytes(),
        "application/vnd.dev.cosign.simplesigning.v1+json".into(),
        Some(BTreeMap::from([("dev.cosignproject.cosign/signature".to_owned(), annotation)])),
    );
    let config = Config::new(b"{}".to_vec(), "application/vnd.oci.image.config.v1+json".into(), None);
    let tag = format!("{}.sig", digest.replace(':', "-"));
    let reference = Reference::with_tag(registry.into(), repo.into(), tag);
    oci().push(&reference, &[layer], config, auth, None).await.unwrap();
}

/// `key`'s public half as `cosign.pub` holds it (SPKI PEM).
pub fn public_key_pem(key: &SigningKey) -> String {
    use p256::pkcs8::EncodePublicKey as _;
    key.verifying_key().to_public_key_pem(p256::pkcs8::LineEnding::LF).unwrap()
}
