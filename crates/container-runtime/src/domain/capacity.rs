//! Capacity: what the node has for tenants, what the containers of this executor hold (running
//! or stopped, until removed, as creates count them) and what is left, resource by resource.

use bollard::query_parameters::InspectContainerOptions;
use common::proto::runtime::v1 as pb;

use super::{Runtime, RuntimeError};
use crate::labels::LABEL_ID;

fn amount(total: f64, allocated: f64) -> Option<pb::Amount> {
    Some(pb::Amount { total, allocated, free: (total - allocated).max(0.0) })
}

impl Runtime {
    /// The node's capacity; what cannot be counted (gpu-monitor down) is said in `note`.
    pub async fn capacity(&self) -> Result<pb::CapacityResponse, RuntimeError> {
        let ours = self.engine.list_ours().await?;
        let mut notes = Vec::new();
        if self.config.mode == common::config::DockerMode::AgentOnly {
            notes.push(
                "docker.mode = agent-only: the orchestrator places workloads and its device plugin allocates GPUs"
                    .to_owned(),
            );
        }
        let (mut cpu, mut memory, mut disk) = (0.0, 0u64, 0u64);
        let configured_disk = self.config.resource_limits.writable_layer_bytes.get();
        for c in &ours {
            let Some(id) = c.labels.as_ref().and_then(|l| l.get(LABEL_ID)) else { continue };
            let Ok(inspect) = self.engine.docker().inspect_container(id, None::<InspectContainerOptions>).await else {
                continue;
            };
            let host = inspect.host_config.unwrap_or_default();
            cpu += host.nano_cpus.unwrap_or(0) as f64 / 1e9;
            memory += host.memory.and_then(|m| u64::try_from(m).ok()).unwrap_or(0);
            let labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
            disk += crate::labels::disk_limit(&labels).unwrap_or(configured_disk);
        }

        // GPUs: the visible ones of gpu-monitor's inventory, each with the container holding it
        // and its health.
        let mut slots = Vec::new();
        // Unhealthy or in MIG mode: counted, never given.
        let (mut unusable, mut free) = (0, 0);
        if self.config.enable_gpu_passthrough {
            match self.gpu_monitor.inventory().await {
                Ok(inventory) => {
                    let visible = common::config::parse_visible_devices(&self.config.gpu_config.visible_devices)
                        .map_err(RuntimeError::VisibleDevices)?;
                    let tenants = crate::gpus::tenant_gpus(&inventory.gpus, visible.as_deref());
                    let holder = crate::gpus::holders(ours.iter().filter_map(|c| c.labels.as_ref()));
                    let unavailable = crate::gpus::unavailable(&inventory);
                    for g in inventory.gpus.iter().filter(|g| tenants.contains(&g.uuid)) {
                        let health = inventory.health.iter().find(|h| h.uuid == g.uuid);
                        let held = holder.contains_key(&g.uuid);
                        match (unavailable.contains_key(&g.uuid), held) {
                            (true, _) => unusable += 1,
                            (false, false) => free += 1,
                            (false, true) => {}
                        }
                        slots.push(pb::GpuSlot {
                            uuid: g.uuid.clone(),
                            index: g.index,
                            name: g.name.clone(),
                            memory_total_bytes: g.memory_total_bytes,
                            container: holder.get(&g.uuid).cloned().unwrap_or_default(),
                            health: health.map_or("healthy".to_owned(), |h| h.state.clone()),
                            health_reason: unavailable.get(&g.uuid).cloned().unwrap_or_default(),
                        });
                    }
                }
                Err(e) => notes.push(format!("GPUs: {e}")),
            }
        } else {
            notes.push("GPUs: docker.enable_gpu_passthrough = false".to_owned());
        }
        let held = slots.iter().filter(|s| !s.container.is_empty()).count();
        let gpus_healthy = (slots.len() - unusable) as f64;

        let disk_total = match self.engine.data_root().map(nix::sys::statvfs::statvfs) {
            Some(Ok(fs)) => {
                let block = fs.fragment_size() as f64;
                let (total, avail) = (fs.blocks() as f64 * block, fs.blocks_available() as f64 * block);
                Some(pb::Amount { total, allocated: disk as f64, free: avail })
            }
            Some(Err(e)) => {
                notes.push(format!("disk: Docker's data root: {e}"));
                None
            }
            None => {
                notes.push("disk: the engine did not say where its data root is".to_owned());
                None
            }
        };
        let volumes = self.volumes.reserved_bytes();
        let ports = crate::ports::held(ours.iter().filter_map(|c| c.labels.as_ref())).len();
        Ok(pb::CapacityResponse {
            // Free: neither held nor unusable (so total = allocated + free + unusable ones not held).
            gpus: Some(pb::Amount { total: slots.len() as f64, allocated: held as f64, free: f64::from(free) }),
            gpu_slots: slots,
            cpu_cores: amount(self.engine.host_cpus(), cpu),
            memory_bytes: amount(self.engine.host_memory() as f64, memory as f64),
            disk_bytes: disk_total,
            volume_bytes: amount(self.config.volumes.max_total_bytes.get() as f64, volumes as f64),
            ports: amount(self.ports.size() as f64, ports as f64),
            containers: amount(f64::from(self.config.max_concurrent_containers), ours.len() as f64),
            note: notes.join("; "),
            gpus_healthy,
        })
    }
}
