//! `[system]`: telemetry (gpu-monitor): whether and how GPUs are read, how often, and when
//! their memory use raises an alert; with its checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::Issues;
use super::values::{Percent, human_duration};

/// `[system]`: telemetry (gpu-monitor).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SystemConfig {
    /// Load NVML and report GPUs. When false NVML is never loaded.
    pub enable_gpu_monitoring: bool,
    /// Alert (log, metric, degraded health) when a GPU's memory use passes this percentage.
    pub max_gpu_memory_usage: Percent,
    /// How often telemetry is collected.
    #[serde(with = "human_duration")]
    pub update_interval: Duration,
    /// Longest a collector (NVML, host, kernel, processes) may take before it counts as failed.
    #[serde(with = "human_duration")]
    pub collector_timeout: Duration,
    /// Where GPU figures come from: `nvml` (the driver), or `simulated` (a JSON file of GPU
    /// figures re-read every interval, for tests and demos; never chosen automatically).
    pub gpu_backend: GpuBackendKind,
    /// The JSON file of the `simulated` backend; only with `gpu_backend = "simulated"`.
    pub simulated_gpus_file: Option<PathBuf>,
    /// Xid errors that do not make a GPU unhealthy: those a tenant's own program causes (13
    /// graphics engine exception, 31 memory page fault, 43 stopped channel, 45 preemptive
    /// cleanup, 68 video processor exception, 109 context switch timeout). Any other Xid takes
    /// the GPU out of rentals until the miner releases it.
    pub ignored_xids: Vec<u64>,
}

/// Source of GPU figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuBackendKind {
    Nvml,
    Simulated,
}

/// The application Xids: what a tenant's own program causes, not the GPU's failure.
pub const DEFAULT_IGNORED_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];

impl Default for SystemConfig {
    fn default() -> Self {
        Self {
            enable_gpu_monitoring: true,
            max_gpu_memory_usage: Percent::new(90.0),
            update_interval: Duration::from_secs(5),
            collector_timeout: Duration::from_secs(2),
            gpu_backend: GpuBackendKind::Nvml,
            simulated_gpus_file: None,
            ignored_xids: DEFAULT_IGNORED_XIDS.to_vec(),
        }
    }
}

impl SystemConfig {
    pub(super) fn validate(&self, v: &mut Issues) {
        v.check("system.max_gpu_memory_usage", &self.max_gpu_memory_usage);
        if self.update_interval < Duration::from_millis(100) {
            v.fail("system.update_interval", "must be at least 100ms");
        }
        if self.collector_timeout.is_zero() || self.collector_timeout > self.update_interval {
            v.fail("system.collector_timeout", "must be longer than 0s and at most system.update_interval");
        }
        for (i, xid) in self.ignored_xids.iter().enumerate() {
            if *xid == 0 || *xid > 999 {
                v.fail(&format!("system.ignored_xids[{i}]"), format!("{xid} is not an Xid (1 to 999)"));
            } else if self.ignored_xids[..i].contains(xid) {
                v.fail(&format!("system.ignored_xids[{i}]"), format!("{xid} is listed twice"));
            }
        }
        match (self.gpu_backend, &self.simulated_gpus_file) {
            (GpuBackendKind::Simulated, None) => {
                v.fail("system.simulated_gpus_file", "required with system.gpu_backend = \"simulated\"")
            }
            (GpuBackendKind::Nvml, Some(_)) => {
                v.fail("system.simulated_gpus_file", "only used with system.gpu_backend = \"simulated\"")
            }
            _ => {}
        }
    }
}
