//! What an image must pass before a container runs it: the registry allow-list (checked with the
//! request), then, with `[docker.registry] verify_signatures`, its cosign signature in the mode
//! of its registry, then the pull. A verified image runs pinned by the digest that was verified
//! (`repo@sha256:…`), so a tag moved afterwards changes nothing. Every verification decision is
//! a metric and an audit event (`data_dir/audit/container-runtime.jsonl`). Concurrent creates of
//! one image are admitted one at a time: each verifies (a tag may move), one pulls.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use common::audit::Audit;
use common::check::Check;
use common::config::{Config, RegistryConfig, SignatureMode};
use serde_json::json;
use tokio_stream::StreamExt;

use crate::reference::ImageRef;
use crate::signatures::{self, ClientError, Credentials, CredentialsError, KeyError, TrustedKey, Unverified, Verdict};

/// Why the image gate cannot be set up; each names the config key or the file.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{field}: {source}")]
    Key { field: String, source: KeyError },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("audit log: {0}")]
    Audit(#[source] common::telemetry::TelemetryError),
}

/// Why an image may not run; each names the image or its registry. The engine's and the
/// registry client's own text is the `source`, never the message.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("image: no usable credentials for {registry}")]
    Credentials { registry: String, source: Box<CredentialsError> },
    /// Refused by the signature policy (`signature_mode = enforce`).
    #[error("image: `{image}` is refused: {why} (docker.registry.signature_mode = enforce)")]
    Refused { image: String, why: Unverified },
    /// The registry lookup for the signature ran past `pull_timeout`.
    #[error("image: `{image}`: {why}")]
    VerifyTimeout { image: String, why: Unverified },
    #[error("image: cannot pull `{image}`")]
    Pull { image: String, source: bollard::errors::Error },
    #[error("image: pulling `{image}` took longer than docker.registry.pull_timeout = {timeout:?}")]
    PullTimeout { image: String, timeout: Duration },
}

/// An image cleared to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// What the container is created from: pinned by digest when verification resolved one
    /// (enforce and warn), the request's reference otherwise.
    pub image: ImageRef,
    /// What verification found, for `Container.image_signature`; empty when nothing is verified.
    pub signature: String,
    /// Whether this admission pulled it (the engine did not have it).
    pub pulled: bool,
}

/// One step of a pull as the engine reports it (`PullImage`'s progress).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullStep {
    pub status: String,
    pub layer: String,
    pub current: u64,
    pub total: u64,
}

/// Where a pull's steps go; a step the receiver has no room for is left out (progress is
/// advisory: a slow reader never slows the pull).
pub type Progress = tokio::sync::mpsc::Sender<PullStep>;

/// The image gate of the service.
pub struct Admission {
    config: RegistryConfig,
    docker: Docker,
    /// The registry client for signature lookups; only built when signatures are verified (it
    /// loads the system's CA certificates, which a host that never verifies need not have).
    client: Option<crate::registry::RegistryClient>,
    credentials: Credentials,
    /// Trusted keys by registry host, for the registries that are verified.
    keys: BTreeMap<String, Vec<TrustedKey>>,
    audit: Audit,
    /// One lock per image reference being admitted: the second create of an image waits for
    /// the first one's verification and pull, then finds the image there.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission").field("config", &self.config).field("keys", &self.keys).finish_non_exhaustive()
    }
}

/// Loads the trusted keys of every allowed registry; errors name the key and the file.
pub fn load_keys(config: &RegistryConfig) -> Result<BTreeMap<String, Vec<TrustedKey>>, SetupError> {
    let mut keys = BTreeMap::new();
    if !config.verify_signatures {
        return Ok(keys);
    }
    let mut loaded: HashMap<&std::path::Path, TrustedKey> = HashMap::new();
    for host in &config.allowed_registries {
        let field = if config.registries.get(host).is_some_and(|r| r.cosign_public_keys.is_some()) {
            format!("docker.registry.registries.\"{host}\".cosign_public_keys")
        } else {
            "docker.registry.cosign_public_keys".to_owned()
        };
        let mut list = Vec::new();
        for path in config.keys_for(host) {
            let key = match loaded.get(path.as_path()) {
                Some(key) => key.clone(),
                None => TrustedKey::load(path).map_err(|source| SetupError::Key { field: field.clone(), source })?,
            };
            loaded.insert(path, key.clone());
            list.push(key);
        }
        keys.insert(host.clone(), list);
    }
    Ok(keys)
}

/// `executor validate`: the keys and the credentials load.
pub fn checks(config: &RegistryConfig) -> Vec<Check> {
    let mut checks = Vec::new();
    match load_keys(config) {
        Ok(keys) if config.verify_signatures => {
            let mut ids: Vec<&str> = keys.values().flatten().map(|k| k.id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            checks.push(Check::pass("image signatures", format!("cosign keys {}", ids.join(", "))));
        }
        Ok(_) => checks.push(Check::skip("image signatures", "docker.registry.verify_signatures = false")),
        Err(e) => checks.push(Check::fail("image signatures", e.to_string())),
    }
    if let Err(e) = Credentials::load(config) {
        checks.push(Check::fail("registry credentials", e.to_string()));
    }
    checks
}

impl Admission {
    pub fn new(config: &Config, docker: Docker) -> Result<Self, SetupError> {
        let registry = config.docker.registry.clone();
        let keys = load_keys(&registry)?;
        let credentials = Credentials::load(&registry)?;
        let client = match registry.verify_signatures {
            true => Some(signatures::client(&registry.allowed_registries, registry.pull_timeout)?),
            false => None,
        };
        let audit = Audit::open(&config.data_dir, common::ServiceName::ContainerRuntime).map_err(SetupError::Audit)?;
        Ok(Self { config: registry, docker, client, credentials, keys, audit, in_flight: Mutex::new(HashMap::new()) })
    }

    /// Verifies (in the registry's mode) and pulls `image` for `owner`'s create or pull, the
    /// engine's steps sent to `progress`.
    pub async fn admit(
        &self,
        image: &ImageRef,
        owner: &str,
        progress: Option<&Progress>,
    ) -> Result<Admitted, AdmissionError> {
        let key = image.to_string();
        let lock = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            in_flight.entry(key.clone()).or_default().clone()
        };
        let result = {
            let _turn = lock.lock().await;
            self.admit_now(image, owner, progress).await
        };
        let mut in_flight = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The map's copy and ours: nobody else is waiting on this image.
        if Arc::strong_count(&lock) == 2 {
            in_flight.remove(&key);
        }
        result
    }

    async fn admit_now(
        &self,
        image: &ImageRef,
        owner: &str,
        progress: Option<&Progress>,
    ) -> Result<Admitted, AdmissionError> {
        let login = self.credentials.login(&image.registry).map_err(|source| {
            tracing::error!(error = %source, registry = %image.registry, "registry credentials");
            AdmissionError::Credentials { registry: image.registry.clone(), source: Box::new(source) }
        })?;
        let admitted = match (self.config.mode_for(&image.registry), &self.client) {
            (Some(mode), Some(client)) => {
                let keys = self.keys.get(&image.registry).map(Vec::as_slice).unwrap_or_default();
                let timeout = self.config.pull_timeout;
                let verdict =
                    tokio::time::timeout(timeout, signatures::verify(client, &login.registry_auth(), image, keys))
                        .await
                        .unwrap_or(Verdict { digest: None, result: Err(Unverified::Timeout(timeout)) });
                self.decide(image, owner, mode, verdict)?
            }
            _ => Admitted { image: image.clone(), signature: String::new(), pulled: false },
        };
        let pulled = self.pull(&admitted.image, &login, progress).await?;
        Ok(Admitted { pulled, ..admitted })
    }

    /// The mode's decision on a verdict, recorded (log, metric, audit) before it takes effect.
    fn decide(
        &self,
        image: &ImageRef,
        owner: &str,
        mode: SignatureMode,
        verdict: Verdict,
    ) -> Result<Admitted, AdmissionError> {
        let pinned = |digest: &Option<String>| match digest {
            Some(digest) => ImageRef { digest: Some(digest.clone()), tag: None, ..image.clone() },
            None => image.clone(),
        };
        let (result, reason, key) = match &verdict.result {
            Ok(key) => ("verified", String::new(), key.as_str()),
            Err(why) => (why.kind(), why.to_string(), ""),
        };
        let outcome = match (&verdict.result, mode) {
            (Ok(key), _) => Ok(Admitted {
                image: pinned(&verdict.digest),
                signature: format!("verified: {} signed by {key}", verdict.digest.as_deref().unwrap_or("the image")),
                pulled: false,
            }),
            (Err(why), SignatureMode::Enforce) => Err(why.clone()),
            (Err(why), SignatureMode::Warn) => Ok(Admitted {
                image: pinned(&verdict.digest),
                signature: format!("unverified (warn): {why}"),
                pulled: false,
            }),
            (Err(why), SignatureMode::Monitor) => {
                Ok(Admitted { image: image.clone(), signature: format!("unverified (monitor): {why}"), pulled: false })
            }
        };
        let decision = if outcome.is_ok() { "allowed" } else { "refused" };
        let digest = verdict.digest.as_deref().unwrap_or("");
        metrics::counter!(
            "executor_container_runtime_image_verifications_total",
            "registry" => image.registry.clone(),
            "mode" => mode.as_str(),
            "result" => result,
            "decision" => decision,
        )
        .increment(1);
        self.audit.record(
            "image_verification",
            json!({
                "image": image.to_string(), "registry": image.registry, "digest": digest, "mode": mode.as_str(),
                "result": result, "key": key, "reason": reason, "decision": decision, "owner": owner,
            }),
        );
        match (&verdict.result, mode) {
            (Ok(_), _) => tracing::info!(%image, digest, key, "image signature verified"),
            (Err(_), SignatureMode::Monitor) => {
                tracing::info!(%image, digest, reason, "image not verified; runs (signature_mode = monitor)")
            }
            (Err(_), SignatureMode::Warn) => {
                tracing::warn!(%image, digest, reason, owner, "image not verified; runs (signature_mode = warn)")
            }
            (Err(_), SignatureMode::Enforce) => tracing::warn!(%image, digest, reason, owner, "image refused"),
        }
        outcome.map_err(|why| match why {
            Unverified::Timeout(_) => AdmissionError::VerifyTimeout { image: image.to_string(), why },
            why => AdmissionError::Refused { image: image.to_string(), why },
        })
    }

    /// Pulls `image` unless the engine has it already, with the registry's login; true when
    /// it pulled.
    async fn pull(
        &self,
        image: &ImageRef,
        login: &signatures::Login,
        progress: Option<&Progress>,
    ) -> Result<bool, AdmissionError> {
        let name = image.to_string();
        if self.docker.inspect_image(&name).await.is_ok() {
            return Ok(false);
        }
        let started = Instant::now();
        let options =
            bollard::query_parameters::CreateImageOptions { from_image: Some(name.clone()), ..Default::default() };
        let credentials = login.docker_credentials(&image.registry);
        let pull = async {
            let mut steps = self.docker.create_image(Some(options), None, credentials);
            while let Some(step) = steps.next().await {
                let step = step?;
                if let Some(progress) = progress {
                    let detail = step.progress_detail.unwrap_or_default();
                    let _ = progress.try_send(PullStep {
                        status: step.status.unwrap_or_default(),
                        layer: step.id.unwrap_or_default(),
                        current: detail.current.and_then(|c| u64::try_from(c).ok()).unwrap_or(0),
                        total: detail.total.and_then(|t| u64::try_from(t).ok()).unwrap_or(0),
                    });
                }
            }
            Ok::<(), bollard::errors::Error>(())
        };
        let timeout = self.config.pull_timeout;
        let result = match tokio::time::timeout(timeout, pull).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(source)) => Err(AdmissionError::Pull { image: name.clone(), source }),
            Err(_) => Err(AdmissionError::PullTimeout { image: name.clone(), timeout }),
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(AdmissionError::PullTimeout { .. }) => "timeout",
            Err(_) => "error",
        };
        metrics::counter!("executor_container_runtime_image_pulls_total", "result" => label).increment(1);
        metrics::histogram!("executor_container_runtime_image_pull_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => tracing::info!(image = %name, elapsed = ?started.elapsed(), "image pulled"),
            Err(e) => {
                let cause = std::error::Error::source(e).map(ToString::to_string).unwrap_or_default();
                tracing::warn!(image = %name, error = %e, cause, "image pull failed")
            }
        }
        result
    }
}

/// Describes the metrics of this module.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "executor_container_runtime_image_verifications_total",
        "Image signature verifications by registry, mode, result (verified, unsigned, bad_signature, digest_mismatch, registry_error, oversized, timeout) and decision (allowed, refused)."
    );
    metrics::describe_counter!(
        "executor_container_runtime_image_pulls_total",
        "Image pulls by result (ok, error, timeout)."
    );
    metrics::describe_histogram!("executor_container_runtime_image_pull_duration_seconds", "Time an image pull took.");
}
