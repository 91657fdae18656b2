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
}

/// Source of GPU figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuBackendKind {
    Nvml,
    Simulated,
}

impl Default for SystemConfig {
    fn default() -> Self {
        Self {
            enable_gpu_monitoring: true,
            max_gpu_memory_usage: Percent::new(90.0),
            update_interval: Duration::from_secs(5),
            collector_timeout: Duration::from_secs(2),
            gpu_backend: GpuBackendKind::Nvml,
            simulated_gpus_file: None,
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
