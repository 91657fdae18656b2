//! Collection in the background, never on the scrape path: every `[system] update_interval`
//! each collector (gpu, processes, kernel, host) runs on a blocking thread under
//! `collector_timeout`; one that hangs is reported failed and is not started again until it
//! returns, while the others keep going. The GPU inventory is read again every round, so a GPU
//! that leaves the bus is noticed. The result is one published [`Snapshot`], its metrics,
//! threshold alerts, and each GPU's health ([`crate::health`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use common::proto::gpu::v1::{GpuProcess, GpuSample, Inventory, Snapshot};
use tokio::sync::watch;

use crate::backend::{BackendError, GpuBackend, GpuInventory};
use crate::collector_run::{COLLECTORS, CollectorRun};
use crate::health::{Health, Round};
use crate::host::{HostCollector, HostError};

/// Why a collector has no result this round.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("the previous collection has not returned yet")]
    StillRunning,
    #[error("collector panicked: {0}")]
    Panicked(#[source] tokio::task::JoinError),
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
}

/// Settings from `[system]`.
#[derive(Debug, Clone, Copy)]
pub struct MonitorSettings {
    pub interval: Duration,
    pub timeout: Duration,
    pub max_gpu_memory_usage: f64,
}

/// The GPU source: a backend, or why there is none.
pub enum GpuSource {
    Backend(Arc<dyn GpuBackend>),
    Unavailable(String),
}

impl std::fmt::Debug for GpuSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuSource::Backend(_) => f.write_str("Backend"),
            GpuSource::Unavailable(why) => write!(f, "Unavailable({why})"),
        }
    }
}

/// The monitor's state, shared with the gRPC service.
#[derive(Debug)]
pub struct Monitor {
    source: GpuSource,
    settings: MonitorSettings,
    host: Arc<Mutex<HostCollector>>,
    inventory: RwLock<Inventory>,
    processes: RwLock<Vec<GpuProcess>>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    in_flight: [Arc<AtomicBool>; 4],
    active_alerts: Mutex<BTreeSet<String>>,
    health: Health,
}

impl Monitor {
    pub fn new(source: GpuSource, settings: MonitorSettings, health: Health) -> Result<Arc<Self>, HostError> {
        let host = HostCollector::new()?;
        let inventory = Inventory {
            host: Some(host.info()),
            gpu_unavailable_reason: match &source {
                GpuSource::Unavailable(why) => why.clone(),
                GpuSource::Backend(_) => String::new(),
            },
            ..Inventory::default()
        };
        let (snapshots, _) = watch::channel(Arc::new(Snapshot::default()));
        Ok(Arc::new(Self {
            source,
            settings,
            host: Arc::new(Mutex::new(host)),
            inventory: RwLock::new(inventory),
            processes: RwLock::new(Vec::new()),
            snapshots,
            in_flight: Default::default(),
            active_alerts: Mutex::new(BTreeSet::new()),
            health,
        }))
    }

    /// The GPUs, the host, and every GPU's health.
    pub fn inventory(&self) -> Inventory {
        let mut inventory = self.inventory.read().unwrap_or_else(|e| e.into_inner()).clone();
        inventory.health = self.health.current();
        inventory
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.subscribe()
    }

    pub fn processes(&self) -> Vec<GpuProcess> {
        self.processes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `work` on a blocking thread with the collector timeout, unless the previous run
    /// of the same collector is still stuck.
    async fn run<T: Send + 'static>(
        &self,
        slot: usize,
        work: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
    ) -> (Result<T, CollectorError>, CollectorRun) {
        let name = COLLECTORS[slot];
        let started = Instant::now();
        let flag = self.in_flight[slot].clone();
        let result = if flag.swap(true, Ordering::AcqRel) {
            Err(CollectorError::StillRunning)
        } else {
            let task = tokio::task::spawn_blocking(move || {
                let r = work();
                flag.store(false, Ordering::Release);
                r
            });
            match tokio::time::timeout(self.settings.timeout, task).await {
                Ok(Ok(r)) => r.map_err(CollectorError::Backend),
                Ok(Err(e)) => Err(CollectorError::Panicked(e)),
                Err(_) => Err(CollectorError::TimedOut(self.settings.timeout)),
            }
        };
        let run = CollectorRun {
            name,
            success: result.is_ok(),
            duration: started.elapsed(),
            error: result.as_ref().err().map(ToString::to_string),
        };
        (result, run)
    }

    /// One round of collection: returns the published snapshot and how each collector did.
    pub async fn collect_once(self: &Arc<Self>) -> (Arc<Snapshot>, Vec<CollectorRun>) {
        let mut runs = Vec::new();
        let mut snapshot = Snapshot {
            collected_at_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            ..Snapshot::default()
        };
        if let GpuSource::Backend(backend) = &self.source {
            // The inventory (every round: a GPU may leave the bus), then the figures: one
            // blocking call.
            let b = backend.clone();
            let (gpu, run) = self.run(0, move || Ok((b.inventory()?, b.samples()?))).await;
            runs.push(run);
            let mut listed = None;
            let mut error = None;
            match gpu {
                Ok((inventory, samples)) => {
                    listed = Some(inventory.gpus.clone());
                    self.set_inventory(inventory);
                    snapshot.gpus = samples;
                }
                Err(e) => {
                    snapshot.gpu_unavailable_reason = format!("GPU collection failed: {e}");
                    error = Some(e.to_string());
                }
            }
            let b = backend.clone();
            let (procs, run) = self.run(1, move || b.processes()).await;
            runs.push(run);
            let procs: Vec<GpuProcess> = procs
                .unwrap_or_default()
                .into_iter()
                .map(|p| GpuProcess {
                    container: crate::kernel::container_of_pid(p.pid).unwrap_or_default(),
                    pid: p.pid,
                    gpu_uuid: p.gpu_uuid,
                    used_memory_bytes: p.used_memory_bytes,
                })
                .collect();
            assign_containers(&mut snapshot.gpus, &procs);
            *self.processes.write().unwrap_or_else(|e| e.into_inner()) = procs;
            let b = backend.clone();
            let (kernel, run) = self.run(2, move || b.kernel_pci_bus_ids()).await;
            runs.push(run);
            if let Ok(kernel) = &kernel {
                let ours: Vec<String> = self.inventory().gpus.iter().map(|g| g.pci_bus_id.clone()).collect();
                snapshot.kernel_gpu_mismatch = crate::kernel::mismatch(&ours, kernel);
            }
            let round = Round {
                inventory: listed.as_deref(),
                samples: &snapshot.gpus,
                kernel_bus_ids: kernel.as_deref().ok(),
                error: error.as_deref(),
                now: (snapshot.collected_at_ms / 1000),
            };
            match self.health.judge(round) {
                Ok(changes) => {
                    for c in changes {
                        tracing::warn!(uuid = %c.uuid, from = %c.from, to = %c.to.state, reason = %c.to.reason, "GPU health changed");
                        metrics::counter!("executor_gpu_monitor_health_changes_total", "state" => c.to.state.clone())
                            .increment(1);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot keep the GPUs' health in data_dir"),
            }
        } else {
            snapshot.gpu_unavailable_reason = self.inventory().gpu_unavailable_reason;
        }
        let host = self.host.clone();
        let (sample, run) = self.run(3, move || Ok(host.lock().unwrap_or_else(|e| e.into_inner()).sample())).await;
        runs.push(run);
        snapshot.host = sample.ok();
        snapshot.alerts = alerts(&self.inventory(), &snapshot.gpus, self.settings.max_gpu_memory_usage);
        self.log_alert_changes(&snapshot.alerts);
        let health = self.health.current();
        crate::exporter::export_health(&health);
        snapshot.alerts.extend(
            health
                .iter()
                .filter(|h| h.state == crate::health::UNHEALTHY)
                .map(|h| format!("gpu {} ({}) unhealthy: {}", h.index, h.uuid, h.reason)),
        );
        let snapshot = Arc::new(snapshot);
        crate::exporter::export(&self.inventory(), &snapshot, &self.processes(), &runs);
        self.snapshots.send_replace(snapshot.clone());
        (snapshot, runs)
    }

    fn set_inventory(&self, inv: GpuInventory) {
        let mut inventory = self.inventory.write().unwrap_or_else(|e| e.into_inner());
        inventory.gpus = inv.gpus;
        inventory.driver_version = inv.driver_version;
        inventory.cuda_version = inv.cuda_version;
    }

    /// One event logs and counts together: an alert that starts or ends.
    fn log_alert_changes(&self, alerts: &[String]) {
        let mut active = self.active_alerts.lock().unwrap_or_else(|e| e.into_inner());
        let now: BTreeSet<String> = alerts.iter().map(|a| alert_key(a)).collect();
        for alert in alerts {
            if !active.contains(&alert_key(alert)) {
                tracing::warn!(alert = %alert, "threshold crossed");
                metrics::counter!("executor_gpu_monitor_alerts_total", "kind" => "gpu_memory").increment(1);
            }
        }
        for gone in active.difference(&now) {
            tracing::info!(alert = %gone, "threshold no longer crossed");
        }
        *active = now;
    }

    /// Collects every interval until `shutdown`; marks `grpc_service` degraded (NOT_SERVING)
    /// while alerts are active.
    pub async fn run_forever(
        self: Arc<Self>,
        health: tonic_health::server::HealthReporter,
        grpc_service: &'static str,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut degraded = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let (snapshot, runs) = self.collect_once().await;
            for run in runs.iter().filter(|r| !r.success) {
                tracing::warn!(collector = run.name, error = run.error.as_deref().unwrap_or(""), "collector failed");
            }
            let now = !snapshot.alerts.is_empty();
            if degraded != Some(now) {
                let status =
                    if now { tonic_health::ServingStatus::NotServing } else { tonic_health::ServingStatus::Serving };
                health.set_service_status(grpc_service, status).await;
                degraded = Some(now);
            }
        }
    }
}

/// The alert key (the part before the figures), so a moving percentage is one alert.
fn alert_key(alert: &str) -> String {
    alert.split(" memory ").next().unwrap_or(alert).to_owned()
}

/// The container holding each GPU: the first container with a process on it.
fn assign_containers(gpus: &mut [GpuSample], procs: &[GpuProcess]) {
    let mut by_gpu: BTreeMap<&str, &str> = BTreeMap::new();
    for p in procs.iter().filter(|p| !p.container.is_empty()) {
        by_gpu.entry(&p.gpu_uuid).or_insert(&p.container);
    }
    for g in gpus {
        g.container = by_gpu.get(g.uuid.as_str()).map(|c| (*c).to_owned()).unwrap_or_default();
    }
}

/// GPUs using more than `max_percent` of their memory.
pub fn alerts(inventory: &Inventory, gpus: &[GpuSample], max_percent: f64) -> Vec<String> {
    gpus.iter()
        .filter_map(|g| {
            let total = inventory
                .gpus
                .iter()
                .find(|i| i.uuid == g.uuid)
                .map_or(g.memory_used_bytes + g.memory_free_bytes, |i| i.memory_total_bytes);
            let percent = if total == 0 { 0.0 } else { g.memory_used_bytes as f64 * 100.0 / total as f64 };
            (percent > max_percent)
                .then(|| format!("gpu {} ({}) memory {percent:.1}% > {max_percent:.1}%", g.index, g.uuid))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::proto::gpu::v1::GpuInfo;

    #[test]
    fn memory_alerts_use_the_total_and_the_threshold() {
        let inventory = Inventory {
            gpus: vec![GpuInfo { uuid: "GPU-a".into(), memory_total_bytes: 1000, ..GpuInfo::default() }],
            ..Inventory::default()
        };
        let sample = |used| GpuSample { uuid: "GPU-a".into(), memory_used_bytes: used, ..GpuSample::default() };
        assert!(alerts(&inventory, &[sample(900)], 90.0).is_empty());
        assert_eq!(alerts(&inventory, &[sample(901)], 90.0), vec!["gpu 0 (GPU-a) memory 90.1% > 90.0%".to_owned()]);
        assert_eq!(alert_key("gpu 0 (GPU-a) memory 90.1% > 90.0%"), "gpu 0 (GPU-a)");
    }

    #[test]
    fn containers_are_assigned_by_gpu() {
        let mut gpus = vec![
            GpuSample { uuid: "GPU-a".into(), ..GpuSample::default() },
            GpuSample { uuid: "GPU-b".into(), ..GpuSample::default() },
        ];
        let procs = vec![
            GpuProcess { pid: 1, gpu_uuid: "GPU-b".into(), used_memory_bytes: 5, container: String::new() },
            GpuProcess { pid: 2, gpu_uuid: "GPU-b".into(), used_memory_bytes: 5, container: "abc".into() },
        ];
        assign_containers(&mut gpus, &procs);
        assert_eq!((gpus[0].container.as_str(), gpus[1].container.as_str()), ("", "abc"));
    }
}
