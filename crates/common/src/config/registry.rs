//! `[docker.registry]`: where tenant images may come from, how they are pulled, and how their
//! signatures are verified, per registry; with the checks that tie these keys together.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::Issues;
use super::values::{RegistryHost, human_duration, normalise_registry_host};

/// `[docker.registry]`: where images may come from, how they are pulled, and their signatures.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registry host used for image references without one.
    pub url: RegistryHost,
    /// Verify cosign signatures of images before they run (see `signature_mode`); an image that
    /// passes runs pinned by the digest that was verified.
    pub verify_signatures: bool,
    /// Registry hosts images may come from (exact host match, optional `:port`; host names
    /// compare case-insensitively, here and in the keys of `registries`).
    pub allowed_registries: Vec<String>,
    /// With `verify_signatures`: what an image without a valid signature gets. `enforce`
    /// (default): refused. `warn`: runs, pinned by digest, and the caller is told
    /// (`Container.image_signature`) and the log warns. `monitor`: runs by tag as if nothing
    /// were verified; the result is only recorded (audit log, metrics).
    pub signature_mode: Option<SignatureMode>,
    /// With `verify_signatures`: PEM files of cosign public keys (`cosign.pub`, ECDSA P-256). An
    /// image passes when one of them signed its manifest digest.
    pub cosign_public_keys: Vec<PathBuf>,
    /// A Docker client config file (`config.json`) to take registry credentials from (`auths`
    /// and credential helpers), for registries without `username` below.
    pub docker_config_file: Option<PathBuf>,
    /// Longest an image pull, or a registry lookup for a signature, may take.
    #[serde(with = "human_duration")]
    pub pull_timeout: Duration,
    /// Settings of one registry, keyed by a host of `allowed_registries`:
    /// `[docker.registry.registries."ghcr.io"]`.
    pub registries: BTreeMap<String, RegistrySettings>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            url: RegistryHost::new("docker.io".to_owned()),
            verify_signatures: false,
            allowed_registries: vec!["docker.io".to_owned()],
            signature_mode: None,
            cosign_public_keys: Vec::new(),
            docker_config_file: None,
            pull_timeout: Duration::from_secs(600),
            registries: BTreeMap::new(),
        }
    }
}

impl RegistryConfig {
    /// The signature mode for images from `registry`; None when nothing is verified.
    pub fn mode_for(&self, registry: &str) -> Option<SignatureMode> {
        if !self.verify_signatures {
            return None;
        }
        let own = self.registries.get(registry).and_then(|r| r.signature_mode);
        Some(own.or(self.signature_mode).unwrap_or(SignatureMode::Enforce))
    }

    /// The cosign public key files trusted for images from `registry`.
    pub fn keys_for(&self, registry: &str) -> &[PathBuf] {
        match self.registries.get(registry).and_then(|r| r.cosign_public_keys.as_ref()) {
            Some(keys) => keys,
            None => &self.cosign_public_keys,
        }
    }
}

/// `[docker.registry.registries."<host>"]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// This registry's `signature_mode`, instead of `[docker.registry] signature_mode`.
    pub signature_mode: Option<SignatureMode>,
    /// This registry's trusted keys, instead of `[docker.registry] cosign_public_keys`.
    pub cosign_public_keys: Option<Vec<PathBuf>>,
    /// User name for pulls and signature lookups; with `password_file`.
    pub username: Option<String>,
    /// File whose first line is the password or access token of `username` (kept out of the
    /// config so the config can be shown and shared).
    pub password_file: Option<PathBuf>,
}

/// What an image without a valid signature gets (`[docker.registry] signature_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureMode {
    Enforce,
    Warn,
    Monitor,
}

impl SignatureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureMode::Enforce => "enforce",
            SignatureMode::Warn => "warn",
            SignatureMode::Monitor => "monitor",
        }
    }
}

impl RegistryConfig {
    /// Rewrites every registry host of this section (`url`, `allowed_registries`, the keys of
    /// `registries`) in the form images are looked up by ([`normalise_registry_host`]), so that
    /// a host's settings apply however either side spells it. Two `registries` keys naming one
    /// host are an issue: which settings applied would be chance.
    pub(super) fn normalise_hosts(&mut self, v: &mut Issues) {
        self.url = RegistryHost::new(normalise_registry_host(&self.url));
        for host in &mut self.allowed_registries {
            *host = normalise_registry_host(host);
        }
        let mut registries: BTreeMap<String, RegistrySettings> = BTreeMap::new();
        let mut spelled: BTreeMap<String, String> = BTreeMap::new();
        for (host, settings) in std::mem::take(&mut self.registries) {
            let normal = normalise_registry_host(&host);
            match spelled.get(&normal) {
                Some(first) => v.fail(
                    &format!("docker.registry.registries.\"{host}\""),
                    format!("`{first}` and `{host}` name one registry (`{normal}`): keep one"),
                ),
                None => {
                    spelled.insert(normal.clone(), host);
                    registries.insert(normal, settings);
                }
            }
        }
        self.registries = registries;
    }
}

const NO_EFFECT: &str = "has no effect while docker.registry.verify_signatures = false";

impl RegistryConfig {
    /// The hosts, then signatures, credentials and timeouts.
    pub(super) fn validate(&self, v: &mut Issues) {
        v.check("docker.registry.url", &self.url);
        if self.allowed_registries.is_empty() {
            v.fail("docker.registry.allowed_registries", "must list at least one registry host");
        }
        for host in &self.allowed_registries {
            v.check("docker.registry.allowed_registries", &RegistryHost::new(host.clone()));
        }
        if self.pull_timeout < Duration::from_secs(1) || self.pull_timeout > Duration::from_secs(24 * 3600) {
            v.fail("docker.registry.pull_timeout", "must be between 1s and 24h");
        }
        for (host, settings) in &self.registries {
            let key = |name: &str| format!("docker.registry.registries.\"{host}\".{name}");
            if !self.allowed_registries.contains(host) {
                v.fail(
                    &format!("docker.registry.registries.\"{host}\""),
                    format!("`{host}` is not in docker.registry.allowed_registries: images from it are refused anyway"),
                );
            }
            match (&settings.username, &settings.password_file) {
                (Some(_), None) => v.fail(&key("password_file"), "required with username"),
                (None, Some(_)) => v.fail(&key("username"), "required with password_file"),
                _ => {}
            }
            if !self.verify_signatures && settings.signature_mode.is_some() {
                v.fail(&key("signature_mode"), NO_EFFECT);
            }
            if !self.verify_signatures && settings.cosign_public_keys.is_some() {
                v.fail(&key("cosign_public_keys"), NO_EFFECT);
            }
        }
        if !self.verify_signatures {
            if self.signature_mode.is_some() {
                v.fail("docker.registry.signature_mode", NO_EFFECT);
            }
            if !self.cosign_public_keys.is_empty() {
                v.fail("docker.registry.cosign_public_keys", NO_EFFECT);
            }
            return;
        }
        for host in &self.allowed_registries {
            if self.keys_for(host).is_empty() {
                v.fail(
                    "docker.registry.cosign_public_keys",
                    format!("verify_signatures = true needs at least one key to verify images from `{host}` against"),
                );
            }
        }
    }
}
