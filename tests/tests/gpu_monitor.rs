//! gpu-monitor as a process: its gRPC API over the socket, health that turns degraded when a
//! threshold is crossed, and its metrics port, with scripted (simulated) GPUs.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::Path;
use std::time::{Duration, Instant};

use common::ServiceName;
use common::process::ProcessSpec;
use common::proto::gpu::v1::gpu_monitor_client::GpuMonitorClient;
use common::proto::gpu::v1::{GpuProcessesRequest, InventoryRequest, SnapshotRequest};
use e2e::{TestConfig, http_get, wait_serving};
use tokio_stream::StreamExt;
use tonic_health::ServingStatus;

const UUID: &str = "GPU-11111111-2222-3333-4444-555555555555";

fn write_gpus(path: &Path, used_gib: u64) {
    let gib = 1u64 << 30;
    let text = format!(
        r#"{{"gpus":[{{"uuid":"{UUID}","name":"Simulated H100","pci_bus_id":"00000000:17:00.0",
        "memory_total_bytes":{},"memory_used_bytes":{}}}],
        "processes":[{{"pid":{},"gpu_uuid":"{UUID}","used_memory_bytes":1048576}}]}}"#,
        80 * gib,
        used_gib * gib,
        std::process::id()
    );
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn serves_telemetry_and_turns_degraded_past_the_threshold() {
    let config = TestConfig::with_system(
        "gpu_backend = \"simulated\"\nsimulated_gpus_file = \"{dir}/gpus.json\"\nupdate_interval = \"200ms\"\ncollector_timeout = \"150ms\"",
        "",
    );
    let gpus = config.dir.path().join("gpus.json");
    write_gpus(&gpus, 10);
    let spec = ProcessSpec::new(e2e::binary("gpu-monitor")).arg("--config").arg(&config.path);
    let _child = spec.spawn_supervised().unwrap();
    let socket = ServiceName::GpuMonitor.socket(&config.runtime_dir());
    wait_serving(&socket, Duration::from_secs(20)).await.unwrap();
    let channel = common::grpc::unix_channel(&socket);
    let mut client = GpuMonitorClient::new(channel.clone());

    let inventory = client.inventory(InventoryRequest {}).await.unwrap().into_inner();
    assert_eq!(inventory.gpus.len(), 1);
    assert_eq!(inventory.gpus[0].name, "Simulated H100");
    assert!(inventory.host.unwrap().cpu_cores >= 1);
    let snapshot = client.snapshot(SnapshotRequest {}).await.unwrap().into_inner();
    assert_eq!(snapshot.gpus[0].memory_used_bytes, 10 << 30);
    assert!(snapshot.host.is_some() && snapshot.alerts.is_empty());
    let processes = client.gpu_processes(GpuProcessesRequest {}).await.unwrap().into_inner().processes;
    assert_eq!(processes.len(), 1);
    assert_eq!((processes[0].pid, processes[0].container.as_str()), (std::process::id(), ""));

    // The stream delivers fresh snapshots every interval.
    let mut stream = client.watch_snapshots(SnapshotRequest {}).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let second = stream.next().await.unwrap().unwrap();
    assert!(second.collected_at_ms > first.collected_at_ms);

    let health = |service: &'static str| {
        let channel = channel.clone();
        async move { common::grpc::check_health(channel, service, Duration::from_secs(2)).await.unwrap() }
    };
    assert_eq!(health("executor.gpu.v1.GpuMonitor").await, ServingStatus::Serving);
    write_gpus(&gpus, 76);
    let deadline = Instant::now() + Duration::from_secs(10);
    while health("executor.gpu.v1.GpuMonitor").await != ServingStatus::NotServing {
        assert!(Instant::now() < deadline, "never turned degraded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The process itself still serves (the launcher must not restart it for an alert).
    assert_eq!(health("").await, ServingStatus::Serving);
    let snapshot = client.snapshot(SnapshotRequest {}).await.unwrap().into_inner();
    assert_eq!(snapshot.alerts, vec![format!("gpu 0 ({UUID}) memory 95.0% > 90.0%")]);
    let (code, metrics) = http_get(config.ports.metrics[2], "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("executor_gpu_monitor_degraded 1"), "{metrics}");
    assert!(
        metrics.contains(&format!("executor_gpu_memory_alert{{gpu=\"0\",uuid=\"{UUID}\",model=\"Simulated H100\"}} 1")),
        "{metrics}"
    );
    assert!(metrics.contains("executor_gpu_monitor_alerts_total{kind=\"gpu_memory\"} 1"), "{metrics}");
    assert!(metrics.contains("executor_gpu_monitor_collector_success{collector=\"gpu\"} 1"), "{metrics}");

    write_gpus(&gpus, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while health("executor.gpu.v1.GpuMonitor").await != ServingStatus::Serving {
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
