//! GPU memory limits. Docker cannot limit GPU memory, so container-runtime watches the
//! per-process GPU memory gpu-monitor reports (NVML's running compute processes, mapped to
//! containers by cgroup) and stops a container of ours that uses more than it may: more than
//! its `gpu_memory_bytes` over all its GPUs together, or more than `memory_fraction` of any
//! one GPU's memory. The reason is recorded (see `stops`), logged and counted.

use std::collections::BTreeMap;

use common::proto::gpu::v1::{GpuInfo, GpuProcess};

/// A container of ours as the check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Our id.
    pub id: String,
    /// Docker's full id (gpu-monitor names containers by its first 12 hex digits).
    pub docker_id: String,
    /// `resources.gpu_memory_bytes` in effect.
    pub limit_bytes: u64,
}

/// A container over a limit, and the reason to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub id: String,
    pub reason: String,
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// The containers over a limit, each once, in the order of `tenants`.
pub fn violations(tenants: &[Tenant], processes: &[GpuProcess], gpus: &[GpuInfo], fraction: f64) -> Vec<Violation> {
    let mut out = Vec::new();
    for t in tenants {
        let short = &t.docker_id[..t.docker_id.len().min(12)];
        if short.is_empty() {
            continue;
        }
        let mut per_gpu: BTreeMap<&str, u64> = BTreeMap::new();
        for p in processes.iter().filter(|p| p.container == short) {
            *per_gpu.entry(p.gpu_uuid.as_str()).or_default() += p.used_memory_bytes;
        }
        let total: u64 = per_gpu.values().sum();
        if total > t.limit_bytes {
            out.push(Violation {
                id: t.id.clone(),
                reason: format!(
                    "GPU memory {} is over the container's limit of {} (resources.gpu_memory_bytes)",
                    gib(total),
                    gib(t.limit_bytes)
                ),
            });
            continue;
        }
        let over_share = per_gpu.iter().find_map(|(uuid, used)| {
            let gpu = gpus.iter().find(|g| g.uuid == *uuid)?;
            let allowed = (gpu.memory_total_bytes as f64 * fraction) as u64;
            (*used > allowed).then(|| (uuid.to_string(), *used, allowed))
        });
        if let Some((uuid, used, allowed)) = over_share {
            out.push(Violation {
                id: t.id.clone(),
                reason: format!(
                    "GPU memory {} on {uuid} is over {} ({fraction} of the GPU, docker.gpu_config.memory_fraction)",
                    gib(used),
                    gib(allowed)
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(container: &str, gpu: &str, bytes: u64) -> GpuProcess {
        GpuProcess { pid: 1, gpu_uuid: gpu.into(), used_memory_bytes: bytes, container: container.into() }
    }

    #[test]
    fn totals_and_shares_are_both_limits() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let tenants = [
            Tenant { id: "c-a".into(), docker_id: a.clone(), limit_bytes: 3 << 30 },
            Tenant { id: "c-b".into(), docker_id: b.clone(), limit_bytes: 100 << 30 },
        ];
        let gpus = [
            GpuInfo { uuid: "GPU-0".into(), memory_total_bytes: 10 << 30, ..GpuInfo::default() },
            GpuInfo { uuid: "GPU-1".into(), memory_total_bytes: 10 << 30, ..GpuInfo::default() },
        ];
        // Within both limits.
        let ok = [process(&a[..12], "GPU-0", 1 << 30), process(&a[..12], "GPU-1", 1 << 30)];
        assert!(violations(&tenants, &ok, &gpus, 0.5).is_empty());
        // Two processes on two GPUs add up past the total.
        let total = [process(&a[..12], "GPU-0", 2 << 30), process(&a[..12], "GPU-1", 2 << 30)];
        let v = violations(&tenants, &total, &gpus, 1.0);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].id, "c-a");
        assert!(v[0].reason.contains("4.00 GiB is over the container's limit of 3.00 GiB"), "{}", v[0].reason);
        // One GPU past its share, though the total is fine.
        let share = [process(&b[..12], "GPU-1", 6 << 30), process("", "GPU-0", 9 << 30)];
        let v = violations(&tenants, &share, &gpus, 0.5);
        assert_eq!(
            v,
            vec![Violation {
                id: "c-b".into(),
                reason:
                    "GPU memory 6.00 GiB on GPU-1 is over 5.00 GiB (0.5 of the GPU, docker.gpu_config.memory_fraction)"
                        .into()
            }]
        );
    }
}
