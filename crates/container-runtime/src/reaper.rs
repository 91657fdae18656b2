//! The reaper: Docker is the source of truth, so every round looks at what carries our labels
//! and removes what should not be there any more. Containers past their TTL are stopped and
//! removed (one log line and a count per container); networks of ours whose container is gone
//! (a create that failed half-way, a container removed by hand) are removed after a grace
//! period; so are the shaping devices of containers that are gone. Unlabelled containers and
//! other executors' are never touched. It also keeps the per-state container gauges.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::engine::{Engine, EngineError};
use crate::labels::{LABEL_CREATED, LABEL_ID, LABEL_NETWORK, LABEL_TTL, now_secs};
use crate::mounts::Staging;
use crate::netpool::NetworkPool;
use crate::stops::{Expiries, PerContainer};
use crate::teardown::remove_everything;

/// A network without its container is left alone this long (its container may be being
/// created right now).
pub const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// Removed for their TTL: our id and the container's labels.
    pub expired: Vec<(String, HashMap<String, String>)>,
    pub orphan_networks: Vec<String>,
    pub orphan_devices: Vec<String>,
    /// Containers whose staged bind mounts were left behind.
    pub orphan_mounts: Vec<String>,
    /// Our ids of the containers the round found running (and left running).
    pub running: Vec<String>,
}

/// One round over `engine`'s containers and networks of ours; `pool` holds networks that are
/// never orphans, `records` the files kept per container (stop reasons, expiries, intents) and
/// `staging` the bind mounts, removed with their containers; `expiries` the TTLs changed after
/// create (which win over the labels').
pub async fn reap_once(
    engine: &Engine,
    pool: Option<&NetworkPool>,
    records: &[&PerContainer],
    expiries: &Expiries,
    staging: &Staging,
) -> Result<Reaped, EngineError> {
    let mut reaped = Reaped::default();
    let now = now_secs();
    let containers = engine.list_ours().await?;
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    // Networks that live containers name, and those the pool holds: never orphans.
    let mut in_use: HashSet<String> = pool.map(|p| p.held()).unwrap_or_default();
    let mut live: HashSet<String> = HashSet::new();
    let mut ports = 0;
    for c in &containers {
        let labels = c.labels.clone().unwrap_or_default();
        let Some(id) = labels.get(LABEL_ID).cloned() else { continue };
        let created: u64 = labels.get(LABEL_CREATED).and_then(|v| v.parse().ok()).unwrap_or(0);
        let ttl: u64 = labels.get(LABEL_TTL).and_then(|v| v.parse().ok()).unwrap_or(0);
        let network = labels.get(LABEL_NETWORK).cloned().unwrap_or_default();
        let expires = match expiries.get(&id).and_then(|e| e.trim().parse::<u64>().ok()) {
            Some(updated) => updated,
            None if ttl > 0 => created + ttl,
            None => 0,
        };
        if expires > 0 && expires <= now {
            tracing::info!(id = %id, ttl, "container reached its TTL; removing it");
            let _ = engine.stop(&id, 10).await;
            match remove_everything(engine, records, staging, &id, &network).await {
                Ok(()) => {
                    metrics::counter!("executor_container_runtime_reaped_total", "reason" => "ttl").increment(1);
                    reaped.expired.push((id, labels));
                }
                Err(e) => tracing::warn!(id = %id, error = %e, "cannot remove an expired container"),
            }
            continue;
        }
        in_use.insert(network);
        ports += labels.get(crate::ports::LABEL_PORTS).map_or(0, |l| crate::ports::parse_label(l).len());
        if c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING) {
            reaped.running.push(id.clone());
        }
        live.insert(id);
        let state = c.state.map(|s| s.to_string()).unwrap_or_else(|| "unknown".into());
        *by_state.entry(state).or_default() += 1;
    }
    for state in ["created", "running", "exited", "paused", "restarting", "dead"] {
        let n = by_state.get(state).copied().unwrap_or(0);
        metrics::gauge!("executor_container_runtime_containers", "state" => state).set(n as f64);
    }
    metrics::gauge!("executor_container_runtime_ports_allocated").set(ports as f64);
    for network in engine.our_networks().await? {
        // Without a creation label the network is not ours to judge: leave it.
        let old_enough = network.created.is_some_and(|t| t.elapsed().unwrap_or_default() >= ORPHAN_GRACE);
        if !in_use.contains(&network.name) && old_enough {
            tracing::info!(network = %network.name, "network without its container; removing it");
            if engine.remove_network(&network.name).await.is_ok() {
                metrics::counter!("executor_container_runtime_reaped_total", "reason" => "orphan_network").increment(1);
                reaped.orphan_networks.push(network.name);
            }
        }
    }
    // Shaping devices of ours whose container is gone (removed behind our back, or a crash).
    for device in crate::shaping::orphans(engine.executor_id(), &live, std::path::Path::new("/sys/class/net")) {
        tracing::info!(device = %device, "shaping device without its container; removing it");
        if crate::shaping::remove_device(&device).await.is_ok() {
            reaped.orphan_devices.push(device);
        }
    }
    // Staged bind mounts whose container is gone.
    reaped.orphan_mounts = staging.release_orphans(&live, ORPHAN_GRACE);
    // Files of containers that are gone (written a while ago: not of one made meanwhile).
    for record in records {
        record.forget_orphans(&live, ORPHAN_GRACE);
    }
    Ok(reaped)
}

/// CPU time of each running container of ours, replaced whole every round.
static CONTAINER_CPU: common::metrics::Family = common::metrics::Family::counter(
    "executor_container_runtime_container_cpu_seconds_total",
    "CPU time a running container has used (every reap_interval).",
);
/// Memory of each running container of ours, replaced whole every round.
static CONTAINER_MEMORY: common::metrics::Family = common::metrics::Family::gauge(
    "executor_container_runtime_container_memory_bytes",
    "Memory a running container uses (every reap_interval).",
);

/// Per-container CPU and memory for Prometheus: one one-shot stats call per running container
/// of ours (`running`, from the reaper's round, so Docker is listed once a round)
/// (`executor_container_runtime_container_cpu_seconds_total`,
/// `executor_container_runtime_container_memory_bytes`, label `container` = our id). The
/// series are exactly this round's: a removed or stopped container's leave the exposition.
pub async fn container_metrics(engine: &Engine, running: &[String]) -> usize {
    use tokio_stream::StreamExt;
    let (mut cpu, mut memory) = (Vec::new(), Vec::new());
    for id in running {
        let options = bollard::query_parameters::StatsOptions { stream: false, one_shot: true };
        let Some(Ok(stats)) = engine.docker().stats(id, Some(options)).next().await else { continue };
        let cpu_ns = stats.cpu_stats.as_ref().and_then(|c| c.cpu_usage.as_ref()).and_then(|u| u.total_usage);
        if let Some(ns) = cpu_ns {
            cpu.push((vec![("container", id.clone())], ns as f64 / 1e9));
        }
        if let Some(bytes) = stats.memory_stats.as_ref().and_then(|m| m.usage) {
            memory.push((vec![("container", id.clone())], bytes as f64));
        }
    }
    let n = cpu.len().max(memory.len());
    CONTAINER_CPU.replace(cpu);
    CONTAINER_MEMORY.replace(memory);
    n
}
