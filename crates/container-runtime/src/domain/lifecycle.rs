//! A container's life after create: start (shaped before it counts as started), stop, remove
//! with everything that goes with it, list; and the service's own rounds: reconcile at start,
//! resume after an engine restart, reap, and GPU memory enforcement.

use std::collections::HashSet;
use std::time::Duration;

use bollard::models::ContainerSummaryStateEnum;
use common::proto::gpu::v1::Inventory;
use common::proto::runtime::v1 as pb;

use super::{Runtime, RuntimeError};
use crate::engine::EngineError;
use crate::gpu_memory::{Tenant, violations};
use crate::labels::{LABEL_GPU_MEMORY, LABEL_ID, LABEL_NETWORK, LABEL_OWNER};
use crate::reaper::{self, Reaped};
use crate::stops::Intent;
use crate::teardown::remove_everything;

/// The longest stop timeout a caller may ask for, in seconds.
const MAX_STOP_TIMEOUT: u32 = 600;

/// How many containers [`Runtime::resume`] starts at once: the engine serialises much of a
/// start, so more would only queue there.
const RESUME_PARALLELISM: usize = 4;

impl Runtime {
    /// Starts a container of ours and shapes it; one that cannot be shaped is stopped again:
    /// never left running unshaped.
    pub async fn start(&self, id: &str) -> Result<pb::Container, RuntimeError> {
        let inspect = self.ours(id).await?;
        self.volumes.mount_for(&labels_of(&inspect)).await?;
        // Recorded first, so that the end of a container that ends at once (recorded from the
        // engine's events) comes after it.
        self.intend(id, &Intent::Running);
        // The IFB device needs no container: made while the engine starts it.
        let (started, prepared) = tokio::join!(self.start_engine(id, &inspect), self.prepare_shaping(&inspect));
        if let Err(e) = started {
            self.intend(id, &Intent::Stopped(format!("its start failed: {e}")));
            return Err(e.into());
        }
        self.stops.forget(id);
        let inspect = self.ours(id).await?;
        if let Err(source) = self.shape_with(&inspect, prepared).await {
            if self.ended_meanwhile(id).await {
                // Ended already (before or while it was shaped): its end is its own.
                return self.describe(id).await;
            }
            tracing::error!(id, error = %source, "cannot shape the container; stopping it");
            self.intend(id, &Intent::Stopped(format!("cannot shape its network: {source}")));
            let _ = self.engine.stop(id, 0).await;
            return Err(RuntimeError::Shaping { id: Some(id.to_owned()), source });
        }
        Ok(self.described(id, &inspect))
    }

    /// Has the engine start `id` (`inspect`: as it is now). One that joins a holder the engine
    /// has stopped (or a reboot did) gets the holder started first: it cannot start without.
    async fn start_engine(
        &self,
        id: &str,
        inspect: &bollard::models::ContainerInspectResponse,
    ) -> Result<(), EngineError> {
        let started = self.engine.start(id).await;
        let network = labels_of(inspect).get(LABEL_NETWORK).cloned().unwrap_or_default();
        let docker = self.engine.docker();
        if started.is_err()
            && crate::holder::joined(inspect)
            && crate::holder::state(docker, &network).await == Some(false)
        {
            tracing::info!(id, network, "starting the network holder the container joins");
            crate::holder::restart(docker, &network).await?;
            return self.engine.start(id).await;
        }
        started
    }

    /// Whether container `id`, which could not be shaped, has ended meanwhile: a process on its
    /// way out loses its network before the engine sees it end, so the engine is asked for a
    /// little while.
    async fn ended_meanwhile(&self, id: &str) -> bool {
        for _ in 0..10 {
            match self.ours(id).await {
                Ok(i) if i.state.as_ref().and_then(|s| s.running) == Some(true) => {}
                _ => return true,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Stops a container of ours: SIGTERM, SIGKILL after `timeout_seconds` (at most 600).
    /// Stopping a stopped container is fine: stop is idempotent. `by` (the caller's hotkey) is
    /// recorded: the container stays stopped across restarts of the node and the host.
    pub async fn stop(&self, id: &str, timeout_seconds: u32, by: &str) -> Result<pb::Container, RuntimeError> {
        let inspect = self.ours(id).await?;
        const REQUEST: &str = "a stop request";
        let who = if by.is_empty() { REQUEST.to_owned() } else { format!("by {by}") };
        self.intend(id, &Intent::Stopped(who));
        if inspect.state.as_ref().and_then(|s| s.running) == Some(true) {
            self.container_event(pb::EventKind::Stopped, id, &labels_of(&inspect), |e| {
                e.by = if by.is_empty() { REQUEST } else { by }.to_owned();
                e.reason = REQUEST.to_owned();
            })
            .await;
        }
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
        remove_everything(&self.engine, &self.records(), &self.staging, id, &network).await?;
        tracing::info!(id, "container removed");
        self.container_event(pb::EventKind::Removed, id, &labels_of(&inspect), |_| {}).await;
        Ok(())
    }

    /// Our containers ordered by id: running ones, or all with `all`; only `owner`'s when it
    /// is not empty. A container that goes away while listing is left out.
    pub async fn list(&self, all: bool, owner: &str) -> Result<Vec<pb::Container>, RuntimeError> {
        let mut containers = Vec::new();
        let mut listed = HashSet::new();
        for summary in self.engine.list_ours().await? {
            let Some(labels) = summary.labels.as_ref() else { continue };
            let Some(id) = labels.get(LABEL_ID).cloned() else { continue };
            // Another owner's rental is left out uninspected: a container's owner label never
            // changes. One listed already: a recreate's old and new container, for a moment
            // both there, are one rental.
            let others = !owner.is_empty() && labels.get(LABEL_OWNER).map(String::as_str) != Some(owner);
            if others || listed.contains(&id) {
                continue;
            }
            let inspect = match self.ours(&id).await {
                Ok(inspect) => inspect,
                // Between a recreate's rename and its create, only the container it replaces,
                // renamed aside, carries the id: it stands for the rental, which is not gone
                // (validator-access drops the renters' keys of containers a list leaves out).
                Err(_) => {
                    let Some(engine_id) = summary.id.as_deref() else { continue };
                    let Ok(inspect) = self.ours_as(engine_id, &id).await else { continue };
                    inspect
                }
            };
            let c = self.described(&id, &inspect);
            listed.insert(id);
            if all || c.state == pb::ContainerState::Running as i32 {
                containers.push(c);
            }
        }
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(containers)
    }

    /// At start: adopt the spare networks a previous run left, and shape the running containers
    /// again (shaping is idempotent). A running container without a recorded intent (made by
    /// a version that kept none) is recorded as meant to run.
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
            if self.intent(&id).is_none() {
                self.intend(&id, &Intent::Running);
            }
            if let Ok(inspect) = self.ours(&id).await
                && let Err(e) = self.shape(&inspect).await
            {
                tracing::error!(id, error = %e, "cannot shape a running container again; stopping it");
                self.intend(&id, &Intent::Stopped(format!("cannot shape its network: {e}")));
                let _ = self.engine.stop(&id, 10).await;
            }
        }
        tracing::info!(spare_networks = self.pool.as_ref().map_or(0, |p| p.held().len()), "reconciled with Docker");
        Ok(())
    }

    /// When the node starts and after an engine restart: starts again every container of ours
    /// that is stopped although the executor meant it to run ([`Intent::Running`]: it went
    /// down with the host, the engine, or while the node was away), at most
    /// `RESUME_PARALLELISM` at a time, each with its volumes mounted and its network shaped
    /// (ports, GPUs and the network come with the container). Those the tenant, the miner, the
    /// executor or their own end stopped stay stopped. Returns the ids started.
    pub async fn resume(&self) -> Vec<String> {
        let ours = match self.engine.list_ours().await {
            Ok(ours) => ours,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the containers to resume");
                return Vec::new();
            }
        };
        let stopped = ours
            .iter()
            .filter(|c| c.state != Some(ContainerSummaryStateEnum::RUNNING))
            .filter_map(|c| c.labels.as_ref()?.get(LABEL_ID).cloned())
            .filter(|id| self.intent(id) == Some(Intent::Running));
        // GPUs gpu-monitor judges unhealthy (when it answers): work on them is not started again.
        let unhealthy: std::collections::BTreeMap<String, String> = match self.config.enable_gpu_passthrough {
            true => self.gpu_monitor.inventory().await.map(|i| crate::gpus::unavailable(&i)).unwrap_or_default(),
            false => Default::default(),
        };
        let unhealthy = std::sync::Arc::new(unhealthy);
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(RESUME_PARALLELISM));
        let mut starts = tokio::task::JoinSet::new();
        for id in stopped {
            let (runtime, permits, unhealthy) =
                (self.clone(), std::sync::Arc::clone(&permits), std::sync::Arc::clone(&unhealthy));
            starts.spawn(async move {
                let _permit = permits.acquire_owned().await;
                runtime.resume_one(&id, &unhealthy).await.then_some(id)
            });
        }
        let mut resumed: Vec<String> = starts.join_all().await.into_iter().flatten().collect();
        resumed.sort();
        resumed
    }

    /// Starts `id` again for [`Runtime::resume`]; false when it stays stopped (and why is logged,
    /// and recorded when it is for good: it died of memory, or cannot be shaped).
    async fn resume_one(&self, id: &str, unhealthy: &std::collections::BTreeMap<String, String>) -> bool {
        let Ok(inspect) = self.ours(id).await else { return false };
        let state = inspect.state.as_ref();
        if state.and_then(|s| s.running).unwrap_or(false) {
            return false;
        }
        if state.and_then(|s| s.oom_killed).unwrap_or(false) {
            self.intend(id, &Intent::Stopped("out of memory".to_owned()));
            return false;
        }
        let labels = labels_of(&inspect);
        if let Some(reason) = gpu_error(&labels, unhealthy) {
            tracing::warn!(id, reason, "not resuming a container whose GPU cannot be given");
            let _ = self.stops.record(id, &reason);
            self.intend(id, &Intent::Stopped(reason));
            return false;
        }
        if let Err(e) = self.volumes.mount_for(&labels).await {
            tracing::error!(id, error = %e, "cannot mount a volume of a container to resume; left stopped");
            return false;
        }
        if let Err(e) = self.start_engine(id, &inspect).await {
            tracing::error!(id, error = %e, "cannot start a container to resume; left stopped");
            return false;
        }
        if let Ok(inspect) = self.ours(id).await
            && let Err(e) = self.shape(&inspect).await
        {
            tracing::error!(id, error = %e, "cannot shape a resumed container; stopping it");
            self.intend(id, &Intent::Stopped(format!("cannot shape its network: {e}")));
            let _ = self.engine.stop(id, 10).await;
            return false;
        }
        tracing::info!(id, "container resumed");
        true
    }

    /// One round of the reaper (see `reaper`): expired containers and orphans removed.
    pub async fn reap(&self) -> Result<Reaped, RuntimeError> {
        let round =
            reaper::reap_once(&self.engine, self.pool.as_ref(), &self.records(), &self.expiries, &self.staging).await?;
        for (id, labels) in &round.expired {
            self.container_event(pb::EventKind::Reaped, id, labels, |e| e.reason = "its TTL ran out".to_owned()).await;
        }
        Ok(round)
    }

    /// Why container `id` ended when the executor stopped it: the reason it recorded (a GPU
    /// error, a limit), or who asked.
    pub fn stopped_because(&self, id: &str) -> String {
        if let Some(reason) = self.stops.get(id).filter(|r| !r.is_empty()) {
            return reason;
        }
        match self.intent(id) {
            Some(Intent::Stopped(why)) if why.starts_with("by ") || why == "a stop request" => format!("stopped {why}"),
            Some(Intent::Stopped(why)) => why,
            _ => "stopped by the executor".to_owned(),
        }
    }

    /// Stops container `id` for `reason` (its stop reason, and what the executor means for
    /// it: stay stopped), counted in `executor_container_runtime_stops_total{reason = kind}`;
    /// false when the engine could not stop it.
    async fn stop_for(&self, id: &str, reason: &str, kind: &'static str) -> bool {
        if let Err(e) = self.stops.record(id, reason) {
            tracing::error!(id, error = %e, "cannot record the stop reason");
        }
        self.intend(id, &Intent::Stopped(reason.to_owned()));
        let labels = self.ours(id).await.map(|i| labels_of(&i)).unwrap_or_default();
        self.container_event(pb::EventKind::Stopped, id, &labels, |e| {
            e.by = "executor".to_owned();
            e.reason = reason.to_owned();
        })
        .await;
        match self.engine.stop(id, 10).await {
            Ok(()) => {
                metrics::counter!("executor_container_runtime_stops_total", "reason" => kind).increment(1);
                true
            }
            Err(e) => {
                tracing::error!(id, reason, error = %e, "cannot stop the container");
                false
            }
        }
    }

    /// One round of GPU enforcement, on one reading of gpu-monitor's inventory: work on
    /// unhealthy GPUs, then GPU memory limits. Returns the ids stopped.
    pub async fn enforce_gpus(&self) -> Result<Vec<String>, RuntimeError> {
        let inventory = self.gpu_monitor.inventory().await.map_err(RuntimeError::GpuUsage)?;
        self.gpu_health_events(&inventory).await;
        let mut stopped = self.enforce_gpu_health(&inventory).await?;
        stopped.extend(self.enforce_gpu_memory(&inventory).await?);
        Ok(stopped)
    }

    /// A `GPU_HEALTH` event for each GPU whose state or reason differs from the last one told
    /// (a GPU first seen healthy is not news).
    async fn gpu_health_events(&self, inventory: &Inventory) {
        let changed: Vec<pb::Event> = {
            let mut last = self.gpu_health.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            inventory
                .health
                .iter()
                .filter_map(|h| {
                    let now = (h.state.clone(), h.reason.clone());
                    let before = last.insert(h.uuid.clone(), now.clone());
                    let before = before.unwrap_or_else(|| ("healthy".to_owned(), String::new()));
                    (before != now).then(|| pb::Event {
                        kind: pb::EventKind::GpuHealth as i32,
                        gpu_uuid: h.uuid.clone(),
                        gpu_state: now.0,
                        reason: now.1,
                        ..Default::default()
                    })
                })
                .collect()
        };
        for event in changed {
            tracing::info!(uuid = event.gpu_uuid, state = event.gpu_state, reason = event.reason, "GPU health changed");
            self.events.record(event).await;
        }
    }

    /// One round of GPU memory enforcement (see `gpu_memory`): stops each container of ours
    /// over its limit, recording why. Returns the ids stopped.
    async fn enforce_gpu_memory(&self, inventory: &Inventory) -> Result<Vec<String>, RuntimeError> {
        let processes = self.gpu_monitor.processes().await.map_err(RuntimeError::GpuUsage)?;
        if processes.is_empty() {
            return Ok(Vec::new());
        }
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
            if self.stop_for(&v.id, &v.reason, "gpu_memory").await {
                stopped.push(v.id);
            }
        }
        Ok(stopped)
    }

    /// One round of GPU health: each running container of ours holding a GPU that gpu-monitor
    /// judges unhealthy is stopped, its stop reason `gpu_error: GPU <uuid> unhealthy: <why>`
    /// (`[docker.gpu_config] on_gpu_error = "stop"`), or only flagged in the log and
    /// `executor_container_runtime_gpu_errors_total` (`"flag"`). Returns the ids stopped.
    async fn enforce_gpu_health(&self, inventory: &Inventory) -> Result<Vec<String>, RuntimeError> {
        let unhealthy = crate::gpus::unavailable(inventory);
        if unhealthy.is_empty() {
            return Ok(Vec::new());
        }
        let stop = self.config.gpu_config.on_gpu_error == common::config::OnGpuError::Stop;
        let mut stopped = Vec::new();
        for c in self.engine.list_ours().await? {
            if c.state != Some(ContainerSummaryStateEnum::RUNNING) {
                continue;
            }
            let labels = c.labels.unwrap_or_default();
            let Some(id) = labels.get(LABEL_ID) else { continue };
            let Some(reason) = gpu_error(&labels, &unhealthy) else { continue };
            if !stop {
                if self.stops.get(id).as_deref() != Some(reason.as_str()) {
                    tracing::warn!(
                        id,
                        reason,
                        "a running container's GPU is unhealthy (on_gpu_error = flag: left running)"
                    );
                    metrics::counter!("executor_container_runtime_gpu_errors_total", "action" => "flag").increment(1);
                    let _ = self.stops.record(id, &reason);
                }
                continue;
            }
            tracing::warn!(id, reason, "stopping a container whose GPU is unhealthy");
            if self.stop_for(id, &reason, "gpu_error").await {
                metrics::counter!("executor_container_runtime_gpu_errors_total", "action" => "stop").increment(1);
                stopped.push(id.clone());
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
            if self.stop_for(id, &reason, "disk_quota").await {
                stopped.push(id.clone());
            }
        }
        stopped
    }
}

/// Why a container with `labels` cannot run on its GPUs (`gpu_error: GPU <uuid> unhealthy:
/// <why>`), given the GPUs nobody may have and why (`gpus::unavailable`); None when it can.
fn gpu_error(
    labels: &std::collections::HashMap<String, String>,
    unavailable: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    let (uuid, why) = crate::labels::gpus(labels).find_map(|u| unavailable.get_key_value(u))?;
    Some(format!("gpu_error: GPU {uuid} {why}"))
}

/// A container's labels.
pub(super) fn labels_of(
    inspect: &bollard::models::ContainerInspectResponse,
) -> std::collections::HashMap<String, String> {
    inspect.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    #[test]
    fn work_on_an_unhealthy_gpu_is_named_with_the_gpu_and_why() {
        let unavailable = BTreeMap::from([("GPU-b".to_owned(), "unhealthy: Xid 79".to_owned())]);
        let labels = |gpus: &str| HashMap::from([(crate::labels::LABEL_GPUS.to_owned(), gpus.to_owned())]);
        assert_eq!(
            super::gpu_error(&labels("GPU-a,GPU-b"), &unavailable).as_deref(),
            Some("gpu_error: GPU GPU-b unhealthy: Xid 79")
        );
        assert_eq!(super::gpu_error(&labels("GPU-a"), &unavailable), None);
        assert_eq!(super::gpu_error(&HashMap::new(), &unavailable), None);
    }
}
