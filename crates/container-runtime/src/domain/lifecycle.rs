//! A container's life after create: start (shaped before it counts as started), stop, remove
//! with everything that goes with it, list; and the service's own rounds: reconcile at start,
//! resume after an engine restart, reap, and GPU memory enforcement.

use std::collections::HashSet;
use std::time::Duration;

use bollard::models::ContainerSummaryStateEnum;
use common::proto::runtime::v1 as pb;

use super::{Runtime, RuntimeError};
use crate::engine::EngineError;
use crate::gpu_memory::{Tenant, violations};
use crate::labels::{LABEL_GPU_MEMORY, LABEL_ID, LABEL_NETWORK};
use crate::reaper::{self, Reaped};
use crate::teardown::remove_everything;

/// The longest stop timeout a caller may ask for, in seconds.
const MAX_STOP_TIMEOUT: u32 = 600;

impl Runtime {
    /// Starts a container of ours and shapes it; one that cannot be shaped is stopped again:
    /// never left running unshaped.
    pub async fn start(&self, id: &str) -> Result<pb::Container, RuntimeError> {
        let inspect = self.ours(id).await?;
        self.volumes.mount_for(&labels_of(&inspect)).await?;
        self.engine.start(id).await?;
        self.stops.forget(id);
        if let Err(source) = self.shape(&self.ours(id).await?).await {
            tracing::error!(id, error = %source, "cannot shape the container; stopping it");
            let _ = self.engine.stop(id, 0).await;
            return Err(RuntimeError::Shaping { id: Some(id.to_owned()), source });
        }
        self.describe(id).await
    }

    /// Gives a container of ours a new TTL, `ttl_seconds` from now (0: never reaped); it
    /// outlives restarts (see `stops`) and wins over the TTL it was created with.
    pub async fn update(&self, id: &str, ttl_seconds: u64) -> Result<pb::Container, RuntimeError> {
        self.ours(id).await?;
        if ttl_seconds > MAX_TTL_SECONDS {
            return Err(RuntimeError::Invalid(crate::spec::SpecError {
                field: "ttl_seconds".to_owned(),
                message: format!("{ttl_seconds} is more than {MAX_TTL_SECONDS} (10 years)"),
            }));
        }
        let expires = if ttl_seconds == 0 { 0 } else { crate::labels::now_secs() + ttl_seconds };
        self.expiries
            .record(id, &expires.to_string())
            .map_err(|source| RuntimeError::Record { id: id.to_owned(), source })?;
        tracing::info!(id, ttl_seconds, expires, "container TTL updated");
        self.describe(id).await
    }

    /// Stops a container of ours: SIGTERM, SIGKILL after `timeout_seconds` (at most 600).
    /// Stopping a stopped container is fine: stop is idempotent.
    pub async fn stop(&self, id: &str, timeout_seconds: u32) -> Result<pb::Container, RuntimeError> {
        self.ours(id).await?;
        let timeout = i32::try_from(timeout_seconds.min(MAX_STOP_TIMEOUT)).unwrap_or(600);
        match self.engine.stop(id, timeout).await {
            Ok(()) => {}
            Err(EngineError::Docker {
                source: bollard::errors::Error::DockerResponseServerError { status_code: 304, .. },
                ..
            }) => {}
            Err(e) => return Err(e.into()),
        }
        self.describe(id).await
    }

    /// Removes a container of ours with its network, shaping device and stop reason; a
    /// running one only when `force`.
    pub async fn remove(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let inspect = self.ours(id).await?;
        let network = inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_NETWORK).cloned())
            .unwrap_or_default();
        let running = inspect.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if running && !force {
            return Err(RuntimeError::Running { id: id.to_owned() });
        }
        remove_everything(&self.engine, &self.stops, &self.staging, id, &network).await?;
        tracing::info!(id, "container removed");
        Ok(())
    }

    /// Our containers ordered by id: running ones, or all with `all`; only `owner`'s when it
    /// is not empty. A container that goes away while listing is left out.
    pub async fn list(&self, all: bool, owner: &str) -> Result<Vec<pb::Container>, RuntimeError> {
        let mut containers = Vec::new();
        for summary in self.engine.list_ours().await? {
            let Some(id) = summary.labels.as_ref().and_then(|l| l.get(LABEL_ID)).cloned() else { continue };
            let Ok(c) = self.describe(&id).await else { continue };
            let running = c.state == pb::ContainerState::Running as i32;
            if (all || running) && (owner.is_empty() || owner == c.owner) {
                containers.push(c);
            }
        }
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(containers)
    }

    /// At start: adopt the spare networks a previous run left, and shape the running containers
    /// again (shaping is idempotent).
    pub async fn reconcile(&self) -> Result<(), RuntimeError> {
        let containers = self.engine.list_ours().await?;
        if let Some(pool) = &self.pool {
            let in_use = containers
                .iter()
                .filter_map(|c| c.labels.as_ref()?.get(LABEL_NETWORK).cloned())
                .collect::<HashSet<_>>();
            pool.adopt(&in_use).await?;
            pool.refill_in_background(Duration::ZERO);
        }
        for c in containers {
            let Some(id) = c.labels.as_ref().and_then(|l| l.get(LABEL_ID)).cloned() else { continue };
            if c.state != Some(ContainerSummaryStateEnum::RUNNING) {
                continue;
            }
            if let Ok(inspect) = self.ours(&id).await
                && let Err(e) = self.shape(&inspect).await
            {
                tracing::error!(id, error = %e, "cannot shape a running container again; stopping it");
                let _ = self.engine.stop(&id, 10).await;
            }
        }
        tracing::info!(spare_networks = self.pool.as_ref().map_or(0, |p| p.held().len()), "reconciled with Docker");
        Ok(())
    }

    /// After an engine restart: starts again the containers of ours in `stopped` (those the
    /// engine signalled on its way down) unless this process stopped them itself or they died
    /// of memory, and shapes them again. Returns the ids started.
    pub async fn resume(&self, stopped: &[String]) -> Vec<String> {
        let mut resumed = Vec::new();
        for id in stopped {
            if self.engine.stopped_by_us(id) {
                continue;
            }
            let Ok(inspect) = self.ours(id).await else { continue };
            let state = inspect.state.as_ref();
            let running = state.and_then(|s| s.running).unwrap_or(false);
            if running || state.and_then(|s| s.oom_killed).unwrap_or(false) {
                continue;
            }
            if let Err(e) = self.volumes.mount_for(&labels_of(&inspect)).await {
                tracing::error!(id, error = %e, "cannot mount a volume of a container after the engine restart; left stopped");
                continue;
            }
            if let Err(e) = self.engine.start(id).await {
                tracing::error!(id, error = %e, "cannot start a container again after the engine restart");
                continue;
            }
            if let Ok(inspect) = self.ours(id).await
                && let Err(e) = self.shape(&inspect).await
            {
                tracing::error!(id, error = %e, "cannot shape a resumed container; stopping it");
                let _ = self.engine.stop(id, 10).await;
                continue;
            }
            resumed.push(id.clone());
        }
        resumed
    }

    /// One round of the reaper (see `reaper`): expired containers and orphans removed.
    pub async fn reap(&self) -> Result<Reaped, RuntimeError> {
        Ok(reaper::reap_once(&self.engine, self.pool.as_ref(), &self.stops, &self.expiries, &self.staging).await?)
    }

    /// One round of GPU memory enforcement (see `gpu_memory`): stops each container of ours
    /// over its limit, recording why. Returns the ids stopped.
    pub async fn enforce_gpu_memory(&self) -> Result<Vec<String>, RuntimeError> {
        let processes = self.gpu_monitor.processes().await.map_err(RuntimeError::GpuUsage)?;
        if processes.is_empty() {
            return Ok(Vec::new());
        }
        let inventory = self.gpu_monitor.inventory().await.map_err(RuntimeError::GpuUsage)?;
        let tenants: Vec<Tenant> = self
            .engine
            .list_ours()
            .await?
            .into_iter()
            .filter(|c| c.state == Some(ContainerSummaryStateEnum::RUNNING))
            .filter_map(|c| {
                let labels = c.labels?;
                Some(Tenant {
                    id: labels.get(LABEL_ID)?.clone(),
                    docker_id: c.id?,
                    limit_bytes: labels
                        .get(LABEL_GPU_MEMORY)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(self.config.resource_limits.gpu_memory_bytes.get()),
                })
            })
            .collect();
        let mut stopped = Vec::new();
        let fraction = self.config.gpu_config.memory_fraction.get();
        for v in violations(&tenants, &processes, &inventory.gpus, fraction) {
            tracing::warn!(id = %v.id, reason = %v.reason, "stopping a container over its GPU memory limit");
            if let Err(e) = self.stops.record(&v.id, &v.reason) {
                tracing::error!(id = %v.id, error = %e, "cannot record the stop reason");
            }
            match self.engine.stop(&v.id, 10).await {
                Ok(()) => {
                    metrics::counter!("executor_container_runtime_stops_total", "reason" => "gpu_memory").increment(1);
                    stopped.push(v.id);
                }
                Err(e) => tracing::error!(id = %v.id, error = %e, "cannot stop a container over its GPU memory limit"),
            }
        }
        Ok(stopped)
    }

    /// One round of the writable-layer limit (each container's `resources.disk_bytes`, by
    /// default `[docker.resource_limits] writable_layer_bytes`): stops each of `running` whose
    /// layer is over its limit, recording why (`disk_quota`). Docker's
    /// `storage_opt size` would be exact but exists only on some storage drivers; measuring works
    /// on all of them. Returns the ids stopped.
    pub async fn enforce_disk(&self, running: &[String]) -> Vec<String> {
        let configured = self.config.resource_limits.writable_layer_bytes.get();
        let mut stopped = Vec::new();
        for id in running {
            let (used, limit) = match self.engine.writable_layer(id).await {
                Ok((Some(used), limit)) => (used, limit.unwrap_or(configured)),
                Ok((None, _)) => continue,
                Err(e) => {
                    tracing::debug!(id, error = %e, "cannot measure a container's writable layer");
                    continue;
                }
            };
            if used <= limit {
                continue;
            }
            let reason = format!("disk_quota: the writable layer holds {used} bytes, over the limit of {limit}");
            tracing::warn!(id, used, limit, "stopping a container over its writable-layer limit");
            if let Err(e) = self.stops.record(id, &reason) {
                tracing::error!(id, error = %e, "cannot record the stop reason");
            }
            match self.engine.stop(id, 10).await {
                Ok(()) => {
                    metrics::counter!("executor_container_runtime_stops_total", "reason" => "disk_quota").increment(1);
                    stopped.push(id.clone());
                }
                Err(e) => tracing::error!(id, error = %e, "cannot stop a container over its writable-layer limit"),
            }
        }
        stopped
    }
}

/// The longest TTL an update may give.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// A container's labels.
fn labels_of(inspect: &bollard::models::ContainerInspectResponse) -> std::collections::HashMap<String, String> {
    inspect.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default()
}
