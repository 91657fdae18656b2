//! The client side of gpu-monitor, on its internal socket: the GPU inventory (which GPUs there
//! are) and the GPU memory each process uses. Every call has a deadline; the gRPC types stay in
//! here, so the domain sees a typed error.

use std::time::Duration;

use common::proto::gpu::v1::gpu_monitor_client::GpuMonitorClient;
use common::proto::gpu::v1::{GpuProcess, GpuProcessesRequest, Inventory, InventoryRequest};
use tonic::transport::Channel;

/// How long gpu-monitor has to answer one call.
const DEADLINE: Duration = Duration::from_secs(5);

/// gpu-monitor did not answer, or answered with an error.
#[derive(Debug, thiserror::Error)]
pub enum GpuMonitorError {
    #[error("gpu-monitor did not answer")]
    Timeout,
    #[error("gpu-monitor: {}", .0.message())]
    Failed(#[source] tonic::Status),
}

/// gpu-monitor, reached on its socket.
#[derive(Debug, Clone)]
pub struct GpuMonitor {
    channel: Channel,
}

impl GpuMonitor {
    /// gpu-monitor on its socket under `runtime_dir`; connects on first use.
    pub fn new(runtime_dir: &std::path::Path) -> Self {
        Self { channel: common::grpc::unix_channel(&common::ServiceName::GpuMonitor.socket(runtime_dir)) }
    }

    pub async fn inventory(&self) -> Result<Inventory, GpuMonitorError> {
        let mut client = GpuMonitorClient::new(self.channel.clone());
        let answer = tokio::time::timeout(DEADLINE, client.inventory(InventoryRequest {})).await;
        Ok(answer.map_err(|_| GpuMonitorError::Timeout)?.map_err(GpuMonitorError::Failed)?.into_inner())
    }

    pub async fn processes(&self) -> Result<Vec<GpuProcess>, GpuMonitorError> {
        let mut client = GpuMonitorClient::new(self.channel.clone());
        let answer = tokio::time::timeout(DEADLINE, client.gpu_processes(GpuProcessesRequest {})).await;
        Ok(answer.map_err(|_| GpuMonitorError::Timeout)?.map_err(GpuMonitorError::Failed)?.into_inner().processes)
    }
}
