//! gpu-monitor: GPU telemetry from NVML and host telemetry. With gpu-attestor, the only crate
//! that touches NVML, which it loads at run time so the binary runs on machines without a GPU.
//!
//! This build serves health, reflection and metrics, reports how many GPUs NVML sees
//! (`executor_gpu_monitor_gpus`, zero plus the reason without NVML), and checks NVML for
//! `executor validate`. The telemetry API of `proto/executor/gpu_monitor.proto` is not served
//! yet.

use common::ServiceName;
use common::check::Check;
use common::config::LoadedConfig;
use common::service::{BoxError, Service, ServiceContext};

/// What NVML says about this machine's GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuPresence {
    /// `[system] enable_gpu_monitoring = false`: NVML was not loaded.
    Disabled,
    /// NVML could not be loaded or initialised, with the reason.
    Unavailable(String),
    Present {
        count: u32,
        driver_version: String,
    },
}

/// Loads NVML (only when monitoring is enabled) and counts GPUs.
pub fn probe(enable_gpu_monitoring: bool) -> GpuPresence {
    if !enable_gpu_monitoring {
        return GpuPresence::Disabled;
    }
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(nvml) => nvml,
        Err(e) => {
            return GpuPresence::Unavailable(format!("NVML unavailable ({e}); no NVIDIA driver on this machine?"));
        }
    };
    match nvml.device_count() {
        Ok(count) => GpuPresence::Present { count, driver_version: nvml.sys_driver_version().unwrap_or_default() },
        Err(e) => GpuPresence::Unavailable(format!("NVML device count: {e}")),
    }
}

/// The NVML line of `executor validate`.
pub fn nvml_check(presence: &GpuPresence) -> Check {
    match presence {
        GpuPresence::Disabled => Check::skip("nvml", "system.enable_gpu_monitoring = false"),
        GpuPresence::Unavailable(reason) => Check::fail("nvml", reason.clone()),
        GpuPresence::Present { count: 0, .. } => Check::fail("nvml", "NVML loaded but reports no GPUs"),
        GpuPresence::Present { count, driver_version } => {
            Check::pass("nvml", format!("{count} GPU(s), driver {driver_version}"))
        }
    }
}

/// The gpu-monitor service.
#[derive(Debug)]
pub struct GpuMonitor {
    presence: GpuPresence,
}

impl Service for GpuMonitor {
    const NAME: ServiceName = ServiceName::GpuMonitor;

    async fn check(loaded: &LoadedConfig) -> Vec<Check> {
        vec![nvml_check(&probe(loaded.config.system.enable_gpu_monitoring))]
    }

    async fn build(ctx: &ServiceContext) -> Result<Self, BoxError> {
        let presence = probe(ctx.config().system.enable_gpu_monitoring);
        match &presence {
            GpuPresence::Disabled => tracing::info!("GPU monitoring disabled; NVML not loaded"),
            GpuPresence::Unavailable(reason) => tracing::warn!(reason = %reason, "no GPUs: reporting zero"),
            GpuPresence::Present { count, driver_version } => {
                tracing::info!(count, driver_version = %driver_version, "GPUs found")
            }
        }
        Ok(Self { presence })
    }

    async fn run(self, ctx: ServiceContext) -> Result<(), BoxError> {
        metrics::describe_gauge!(
            "executor_gpu_monitor_gpus",
            "GPUs NVML reports; 0 when NVML is unavailable or disabled."
        );
        let count = match self.presence {
            GpuPresence::Present { count, .. } => count,
            _ => 0,
        };
        metrics::gauge!("executor_gpu_monitor_gpus").set(f64::from(count));
        ctx.shutdown.cancelled().await;
        Ok(())
    }
}
