//! gpu-monitor: GPU telemetry from NVML and host telemetry. With gpu-attestor, the only crate
//! that touches NVML, which it loads at run time so the binary runs on machines without a GPU
//! (zero GPUs and the reason). `[system] enable_gpu_monitoring = false` never loads it; the
//! `simulated` backend is used only when the config names it.
//!
//! Collection runs in the background ([`collector`]); the gRPC API (inventory, snapshot, a
//! stream of snapshots, per-process GPU memory) and the Prometheus series read its results.

pub mod attestation;
pub mod backend;
pub mod collector;
pub mod collector_run;
pub mod exporter;
pub mod health;
pub mod host;
pub mod kernel;

use std::pin::Pin;
use std::sync::Arc;

use common::ServiceName;
use common::check::Check;
use common::config::{GpuBackendKind, LoadedConfig, SystemConfig};
use common::proto::gpu::v1::gpu_monitor_server::{GpuMonitor as GpuMonitorApi, GpuMonitorServer};
use common::proto::gpu::v1::{
    GpuHealth, GpuProcessesRequest, GpuProcessesResponse, Inventory, InventoryRequest, QuarantineGpuRequest,
    ReleaseGpuRequest, Snapshot, SnapshotRequest,
};
use common::service::{BoxError, Service, ServiceContext};
use tokio_stream::StreamExt;
use tonic::service::Routes;

use crate::backend::{NvmlBackend, SimulatedBackend};
use crate::collector::{GpuSource, Monitor, MonitorSettings};

/// The gRPC service name; its health is NOT_SERVING while a threshold alert is active.
pub const GRPC_SERVICE: &str = "executor.gpu.v1.GpuMonitor";

/// The GPU source the config asks for. NVML is never loaded when monitoring is disabled, and
/// a missing NVML is a reason, never a fallback to the simulation.
pub fn source(config: &SystemConfig) -> GpuSource {
    if !config.enable_gpu_monitoring {
        return GpuSource::Unavailable("GPU monitoring disabled (system.enable_gpu_monitoring = false)".into());
    }
    match (config.gpu_backend, &config.simulated_gpus_file) {
        (GpuBackendKind::Simulated, Some(file)) => GpuSource::Backend(Arc::new(SimulatedBackend::new(file.clone()))),
        (GpuBackendKind::Simulated, None) => GpuSource::Unavailable("simulated backend without a file".into()),
        (GpuBackendKind::Nvml, _) => match NvmlBackend::load() {
            Ok(nvml) => GpuSource::Backend(Arc::new(nvml)),
            Err(why) => GpuSource::Unavailable(why.to_string()),
        },
    }
}

/// The NVML line of `executor validate`.
pub fn nvml_check(config: &SystemConfig) -> Check {
    if !config.enable_gpu_monitoring {
        return Check::skip("nvml", "system.enable_gpu_monitoring = false");
    }
    if config.gpu_backend == GpuBackendKind::Simulated {
        return Check::warn("nvml", "system.gpu_backend = \"simulated\": GPU figures are simulated, not read");
    }
    match NvmlBackend::load().and_then(|nvml| backend::GpuBackend::inventory(&nvml)) {
        Err(reason) => Check::fail("nvml", reason.to_string()),
        Ok(inv) if inv.gpus.is_empty() => Check::fail("nvml", "NVML loaded but reports no GPUs"),
        Ok(inv) => Check::pass("nvml", format!("{} GPU(s), driver {}", inv.gpus.len(), inv.driver_version)),
    }
}

/// The gpu-monitor service.
#[derive(Debug)]
pub struct GpuMonitor {
    monitor: Arc<Monitor>,
}

type SnapshotStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Snapshot, tonic::Status>> + Send>>;

#[derive(Debug)]
struct Api {
    monitor: Arc<Monitor>,
}

#[tonic::async_trait]
impl GpuMonitorApi for Api {
    async fn inventory(
        &self,
        _: tonic::Request<InventoryRequest>,
    ) -> Result<tonic::Response<Inventory>, tonic::Status> {
        Ok(tonic::Response::new(self.monitor.inventory()))
    }

    async fn snapshot(&self, _: tonic::Request<SnapshotRequest>) -> Result<tonic::Response<Snapshot>, tonic::Status> {
        Ok(tonic::Response::new((*self.monitor.snapshot()).clone()))
    }

    type WatchSnapshotsStream = SnapshotStream;

    async fn watch_snapshots(
        &self,
        _: tonic::Request<SnapshotRequest>,
    ) -> Result<tonic::Response<Self::WatchSnapshotsStream>, tonic::Status> {
        let stream = tokio_stream::wrappers::WatchStream::from_changes(self.monitor.subscribe())
            .map(|snapshot| Ok((*snapshot).clone()));
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn gpu_processes(
        &self,
        _: tonic::Request<GpuProcessesRequest>,
    ) -> Result<tonic::Response<GpuProcessesResponse>, tonic::Status> {
        Ok(tonic::Response::new(GpuProcessesResponse { processes: self.monitor.processes() }))
    }

    async fn quarantine_gpu(
        &self,
        request: tonic::Request<QuarantineGpuRequest>,
    ) -> Result<tonic::Response<GpuHealth>, tonic::Status> {
        let r = request.into_inner();
        let now = common::clock::unix_seconds();
        self.monitor.health().quarantine(&r.uuid, &r.reason, now).map(tonic::Response::new).map_err(health_status)
    }

    async fn release_gpu(
        &self,
        request: tonic::Request<ReleaseGpuRequest>,
    ) -> Result<tonic::Response<GpuHealth>, tonic::Status> {
        self.monitor.health().release(&request.into_inner().uuid).map(tonic::Response::new).map_err(health_status)
    }
}

/// A refused quarantine or release, by its field.
fn health_status(e: health::HealthError) -> tonic::Status {
    match &e {
        health::HealthError::Unknown(_) => tonic::Status::not_found(e.to_string()),
        health::HealthError::ReasonTooLong => tonic::Status::invalid_argument(e.to_string()),
        health::HealthError::Store(_) => tonic::Status::internal(e.to_string()),
    }
}

impl Service for GpuMonitor {
    const NAME: ServiceName = ServiceName::GpuMonitor;
    const GRPC_SERVICES: &'static [&'static str] = &[GRPC_SERVICE];

    async fn check(loaded: &LoadedConfig) -> Vec<Check> {
        vec![nvml_check(&loaded.config.system)]
    }

    async fn build(ctx: &ServiceContext) -> Result<Self, BoxError> {
        let system = &ctx.config().system;
        let source = source(system);
        match &source {
            GpuSource::Unavailable(reason) => tracing::warn!(reason = %reason, "no GPUs: reporting zero"),
            GpuSource::Backend(_) => tracing::info!(backend = ?system.gpu_backend, "GPU backend loaded"),
        }
        let settings = MonitorSettings {
            interval: system.update_interval,
            timeout: system.collector_timeout,
            max_gpu_memory_usage: system.max_gpu_memory_usage.get(),
        };
        crate::exporter::describe();
        crate::attestation::describe();
        let health = health::Health::open(&ctx.config().data_dir, &system.ignored_xids)?;
        let monitor = Monitor::new(source, settings, health)?;
        // The first snapshot is there before the service reports SERVING.
        monitor.collect_once().await;
        Ok(Self { monitor })
    }

    fn add_routes(&self, routes: Routes) -> Routes {
        routes.add_service(GpuMonitorServer::new(Api { monitor: self.monitor.clone() }))
    }

    async fn run(self, ctx: ServiceContext) -> Result<(), BoxError> {
        ctx.health.set_service_status(GRPC_SERVICE, tonic_health::ServingStatus::Serving).await;
        // With GPUs, the attestation backend's state once, in the background.
        if !self.monitor.inventory().gpus.is_empty() {
            match std::env::current_exe().map(|exe| exe.with_file_name("gpu-attestor")) {
                Ok(binary) if binary.is_file() => {
                    tokio::spawn(async move { crate::attestation::self_test(&binary).await });
                }
                _ => tracing::warn!("no gpu-attestor beside gpu-monitor: the attestation backend is not reported"),
            }
        }
        self.monitor.run_forever(ctx.health.clone(), GRPC_SERVICE, ctx.shutdown.clone()).await;
        Ok(())
    }
}
