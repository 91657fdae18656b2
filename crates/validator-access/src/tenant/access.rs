//! The renters' side of the service, shared by the SSH front and the gRPC API: their keys per
//! container, their live sessions, and the container facts both need, asked of
//! container-runtime over its socket (this crate never talks to Docker). The reaper
//! ([`Tenants::reap`], every 500 ms) closes the sessions of containers that stopped, went, or
//! passed their TTL, and drops the keys of containers that are gone.

use std::sync::Arc;

use common::audit::Audit;
use common::config::TenantAccessConfig;
use common::proto::runtime::v1 as runtime;
use common::proto::runtime::v1::container_runtime_client::ContainerRuntimeClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::grants::{KeyError, fingerprint, parse_key};
use crate::tenant::keys::{AddError, TenantKey, TenantKeyStore, parse_keys};
use crate::tenant::sessions::TenantSessions;
use crate::time::now;
use common::durable::StoreError;

/// Why a call about renters' keys is refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("container_id: required")]
    NoContainerId,
    #[error("container_id: no container `{0}`")]
    NoContainer(String),
    #[error("container-runtime did not answer: {0}")]
    Runtime(tonic::Status),
    #[error(transparent)]
    Add(#[from] AddError),
    #[error("ssh_public_key: {0}")]
    Key(KeyError),
    #[error("ssh_public_key: container `{container}` has no key {key}")]
    NoKey { container: String, key: String },
    #[error("the key is removed and its sessions closed, but the removal cannot be stored: {0}")]
    StoreRemoval(StoreError),
}

/// The renters' side.
#[derive(Debug)]
pub struct Tenants {
    keys: TenantKeyStore,
    sessions: TenantSessions,
    runtime: ContainerRuntimeClient<Channel>,
    audit: Arc<Audit>,
    config: TenantAccessConfig,
    /// The host renters connect to, for the `ssh` command line reported with keys.
    ssh_host: String,
}

/// Whether a container in this state can be logged into.
fn is_running(c: &runtime::Container) -> bool {
    c.state == runtime::ContainerState::Running as i32
}

impl Tenants {
    pub fn new(
        keys: TenantKeyStore,
        runtime: ContainerRuntimeClient<Channel>,
        audit: Arc<Audit>,
        config: TenantAccessConfig,
        ssh_host: String,
    ) -> Self {
        let sessions = TenantSessions::new(config.max_sessions_per_container, config.max_sessions_per_key);
        Self { keys, sessions, runtime, audit, config, ssh_host }
    }

    pub fn config(&self) -> &TenantAccessConfig {
        &self.config
    }

    pub fn keys(&self) -> &TenantKeyStore {
        &self.keys
    }

    pub fn sessions(&self) -> &TenantSessions {
        &self.sessions
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// A client of container-runtime, for execs.
    pub fn runtime(&self) -> ContainerRuntimeClient<Channel> {
        self.runtime.clone()
    }

    /// What a renter types to reach `container`.
    pub fn ssh_command(&self, container: &str) -> String {
        let host = if self.ssh_host.contains(':') { format!("[{}]", self.ssh_host) } else { self.ssh_host.clone() };
        format!("ssh -p {} {container}@{host}", self.config.ssh_port)
    }

    /// The container `id`, one of ours, as container-runtime reports it now.
    pub async fn container(&self, id: &str) -> Result<runtime::Container, TenantError> {
        if id.is_empty() {
            return Err(TenantError::NoContainerId);
        }
        match self.runtime.clone().get(runtime::ContainerRef { id: id.to_owned() }).await {
            Ok(c) => Ok(c.into_inner()),
            Err(s) if s.code() == tonic::Code::NotFound || s.code() == tonic::Code::InvalidArgument => {
                Err(TenantError::NoContainer(id.to_owned()))
            }
            Err(s) => Err(TenantError::Runtime(s)),
        }
    }

    /// Whether `container` is running now.
    pub async fn is_running(&self, container: &str) -> bool {
        self.container(container).await.is_ok_and(|c| is_running(&c))
    }

    /// Checks key lines as an add would, storing nothing.
    pub fn check(&self, lines: &[String]) -> Result<Vec<TenantKey>, TenantError> {
        let keys = parse_keys(lines, now())?;
        let max = self.keys.max_per_container();
        let distinct = {
            let mut f: Vec<&str> = keys.iter().map(|k| k.fingerprint.as_str()).collect();
            f.sort_unstable();
            f.dedup();
            f.len()
        };
        if distinct > max as usize {
            return Err(AddError::TooMany { container: "(new)".into(), would: distinct, max }.into());
        }
        Ok(keys)
    }

    /// Adds keys to a container of ours; returns its keys now.
    pub async fn add(&self, container: &str, lines: &[String]) -> Result<Vec<TenantKey>, TenantError> {
        let keys = parse_keys(lines, now())?;
        self.container(container).await?;
        let added: Vec<&str> = keys.iter().map(|k| k.fingerprint.as_str()).collect();
        self.audit.record("tenant_keys_added", json!({"container": container, "fingerprints": added}));
        let all = self.keys.add(container, keys.clone())?;
        metrics::gauge!("executor_validator_access_tenant_keys").set(self.keys.len() as f64);
        Ok(all)
    }

    /// Removes a key (by fingerprint or OpenSSH line) and closes its sessions; returns the
    /// container's keys now and how many sessions closed.
    pub fn remove(&self, container: &str, key: &str) -> Result<(Vec<TenantKey>, u32), TenantError> {
        if container.is_empty() {
            return Err(TenantError::NoContainerId);
        }
        let fp = if key.trim_start().starts_with("SHA256:") {
            key.trim().to_owned()
        } else {
            fingerprint(&parse_key(key).map_err(TenantError::Key)?)
        };
        let no_key = || TenantError::NoKey { container: container.to_owned(), key: fp.clone() };
        // Sessions close whatever the disk says: a removed key never keeps a renter in.
        let stored = self.keys.remove(container, &fp);
        if matches!(stored, Ok(None)) {
            return Err(no_key());
        }
        let closed = self.sessions.close_where(|s| s.container == container && s.fingerprint == fp, "key removed");
        for (id, _) in &closed {
            self.audit.record(
                "tenant_session_closed",
                json!({"session": id, "container": container, "fingerprint": fp, "reason": "key_removed"}),
            );
        }
        self.audit.record(
            "tenant_key_removed",
            json!({"container": container, "fingerprint": fp, "sessions_closed": closed.len()}),
        );
        metrics::gauge!("executor_validator_access_tenant_keys").set(self.keys.len() as f64);
        stored.map_err(TenantError::StoreRemoval)?;
        Ok((self.keys.of(container), closed.len() as u32))
    }

    /// The keys of a container of ours.
    pub async fn list(&self, container: &str) -> Result<Vec<TenantKey>, TenantError> {
        let keys = self.keys.of(container);
        if keys.is_empty() {
            self.container(container).await?;
        }
        Ok(keys)
    }

    /// Closes the sessions of containers that are not running or passed their TTL, and drops
    /// the keys of containers that are gone. Does nothing when container-runtime does not
    /// answer (it is restarting: nothing is known to be gone).
    pub async fn reap(&self) {
        if self.sessions.is_empty() && self.keys.is_empty() {
            return;
        }
        let asked_at = now();
        let Ok(listed) =
            self.runtime.clone().list(runtime::ListContainersRequest { all: true, owner: String::new() }).await
        else {
            return;
        };
        let containers = listed.into_inner().containers;
        let find = |id: &str| containers.iter().find(|c| c.id == id);
        let now = now();
        let ended = |id: &str| match find(id) {
            None => Some("container_removed"),
            Some(c) if !is_running(c) => Some("container_stopped"),
            Some(c) if c.expires_at != 0 && c.expires_at <= now => Some("ttl_ended"),
            Some(_) => None,
        };
        for container in self.sessions.containers() {
            if let Some(reason) = ended(&container) {
                for (id, s) in self.sessions.close_where(|s| s.container == container, reason) {
                    self.audit.record(
                        "tenant_session_closed",
                        json!({"session": id, "container": container, "fingerprint": s.fingerprint, "reason": reason}),
                    );
                }
            }
        }
        // Keys added after the list was asked for belong to containers it may not show yet.
        let gone =
            self.keys.retain_containers(|c, keys| find(c).is_some() || keys.iter().any(|k| k.added_at >= asked_at));
        match gone {
            Ok(gone) => {
                for container in gone {
                    self.audit
                        .record("tenant_keys_dropped", json!({"container": container, "reason": "container_removed"}));
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot store the keys of removed containers as dropped"),
        }
        metrics::gauge!("executor_validator_access_tenant_keys").set(self.keys.len() as f64);
    }
}
