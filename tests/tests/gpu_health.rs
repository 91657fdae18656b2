//! Issue 22 item 4: GPU health with simulated GPUs, gpu-monitor and container-runtime as
//! processes. A critical Xid makes a GPU unhealthy (an application Xid does not), the next
//! create gets another GPU and naming the sick one is refused with why; a GPU in MIG mode is
//! refused by name; the miner's quarantine survives a restart of gpu-monitor and ends with a
//! release; a GPU gone from the inventory is unhealthy and never assigned; capacity and the
//! metric say it all; each change of a GPU's health is an event. Work running on a GPU that
//! turns unhealthy is stopped with `gpu_error: ...`, and its watchers hear it (a container made
//! with this executor's labels stands in for a GPU rental, which cannot start without the
//! NVIDIA runtime).

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::Path;
use std::time::{Duration, Instant};

use common::ServiceName;
use common::process::ProcessSpec;
use common::proto::gpu::v1 as gpu;
use common::proto::gpu::v1::gpu_monitor_client::GpuMonitorClient;
use common::proto::runtime::v1 as pb;
use e2e::runtime::{Client, remove_all, request, start_service};
use e2e::{TestConfig, busybox_image, http_get, wait_serving};
use tonic::Code;
use tonic::transport::Channel;

fn uuid(hex: char) -> String {
    format!("GPU-{}-0000-0000-0000-000000000000", hex.to_string().repeat(8))
}

/// Writes the simulated GPUs: `(uuid letter, bus, xids, mig instances)`.
fn write_gpus(path: &Path, gpus: &[(char, u32, &[u64], u32)]) {
    let list: Vec<String> = gpus
        .iter()
        .map(|(hex, bus, xids, mig)| {
            format!(
                r#"{{"uuid":"{}","name":"Simulated H100","pci_bus_id":"00000000:{bus}:00.0","memory_total_bytes":1000,"xid_events":{xids:?},"mig_instances":{mig}}}"#,
                uuid(*hex)
            )
        })
        .collect();
    // Written aside and renamed: gpu-monitor must never read half a file (it would judge the
    // GPUs degraded by an NVML error, and say so in an event).
    let aside = path.with_extension("new");
    std::fs::write(&aside, format!(r#"{{"gpus":[{}]}}"#, list.join(","))).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

async fn start_monitor(config: &TestConfig) -> (tokio::process::Child, GpuMonitorClient<Channel>) {
    let spec = ProcessSpec::new(e2e::binary("gpu-monitor")).arg("--config").arg(&config.path);
    let child = spec.spawn_supervised().unwrap();
    let socket = ServiceName::GpuMonitor.socket(&config.runtime_dir());
    wait_serving(&socket, Duration::from_secs(20)).await.unwrap();
    (child, GpuMonitorClient::new(common::grpc::unix_channel(&socket)))
}

/// Waits up to 10 s until gpu-monitor says GPU `hex` is in `state`; returns its reason.
async fn wait_health(monitor: &mut GpuMonitorClient<Channel>, hex: char, state: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let inventory = monitor.inventory(gpu::InventoryRequest {}).await.unwrap().into_inner();
        if let Some(h) = inventory.health.iter().find(|h| h.uuid == uuid(hex) && h.state == state) {
            return h.reason.clone();
        }
        assert!(Instant::now() < deadline, "GPU {hex} not {state} within 10 s: {:?}", inventory.health);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next GPU health event on `events` (5 s at most; container events are passed over).
async fn next_gpu_event(events: &mut tonic::Streaming<pb::Event>) -> pb::Event {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.message()).await;
        let event = event.expect("a GPU health event within 5 s").unwrap().unwrap();
        if event.kind() == pb::EventKind::GpuHealth {
            return event;
        }
    }
}

/// A config with simulated GPUs (collected every 200 ms) and GPU passthrough, and the file the
/// GPUs are read from.
fn simulated_node() -> (TestConfig, std::path::PathBuf) {
    let config = TestConfig::with_system(
        "gpu_backend = \"simulated\"\nsimulated_gpus_file = \"{dir}/gpus.json\"\nupdate_interval = \"200ms\"\ncollector_timeout = \"150ms\"",
        "\n[docker]\nenable_gpu_passthrough = true\n",
    );
    let file = config.dir.path().join("gpus.json");
    (config, file)
}

async fn create_with(client: &mut Client, count: u32, uuids: &[String]) -> Result<pb::Container, tonic::Status> {
    let mut r = request("sleep 60");
    r.gpu_count = count;
    r.gpu_uuids = uuids.to_vec();
    client.create(r).await.map(|c| c.into_inner())
}

#[tokio::test]
async fn unhealthy_quarantined_missing_and_mig_gpus_are_never_given() {
    if !busybox_image().await {
        return;
    }
    let (config, file) = simulated_node();
    let fine: &[u64] = &[];
    write_gpus(&file, &[('a', 10, fine, 0), ('b', 11, fine, 0), ('c', 12, fine, 0), ('d', 13, fine, 2)]);
    let (mut monitor_process, mut monitor) = start_monitor(&config).await;
    let (_service, mut client) = start_service(&config).await;
    let watch = pb::WatchEventsRequest { only_new: true, ..Default::default() };
    let mut events = client.events(watch).await.unwrap().into_inner();

    // An application Xid leaves GPU a healthy; Xid 79 (fell off the bus) does not.
    write_gpus(&file, &[('a', 10, &[13], 0), ('b', 11, fine, 0), ('c', 12, fine, 0), ('d', 13, fine, 2)]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(wait_health(&mut monitor, 'a', "healthy").await, "");
    write_gpus(&file, &[('a', 10, &[13, 79], 0), ('b', 11, fine, 0), ('c', 12, fine, 0), ('d', 13, fine, 2)]);
    assert_eq!(wait_health(&mut monitor, 'a', "unhealthy").await, "Xid 79");
    // The change is an event (the application Xid was none).
    let event = next_gpu_event(&mut events).await;
    assert_eq!(
        (event.gpu_uuid.as_str(), event.gpu_state.as_str(), event.reason.as_str()),
        (uuid('a').as_str(), "unhealthy", "Xid 79")
    );

    // The next create gets another GPU; naming the sick one or the MIG one is refused with why.
    let first = create_with(&mut client, 1, &[]).await.unwrap();
    assert_eq!(first.gpu_uuids, [uuid('b')]);
    // Issue 22 item 2: a port added makes it again with the same GPU (not started: it was not).
    let port = pb::PortMapping { container_port: 8888, ..Default::default() };
    let add = pb::UpdateContainerRequest { id: first.id.clone(), add_ports: vec![port], ..Default::default() };
    let again = client.update(add).await.unwrap().into_inner();
    assert_eq!((again.gpu_uuids.as_slice(), again.state), (first.gpu_uuids.as_slice(), first.state));
    assert!(again.recreated_at > 0 && again.docker_id != first.docker_id, "{again:?}");
    let err = create_with(&mut client, 0, &[uuid('a')]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let why = format!("gpu_uuids: `{}` cannot be given to a container: unhealthy: Xid 79", uuid('a'));
    assert_eq!(err.message(), why);
    let err = create_with(&mut client, 0, &[uuid('d')]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("in MIG mode (this executor rents whole GPUs"), "{}", err.message());

    // The miner quarantines c: nothing is left to give, and capacity says why.
    let q = gpu::QuarantineGpuRequest { uuid: uuid('c'), reason: "fan noise".into() };
    let health = monitor.quarantine_gpu(q).await.unwrap().into_inner();
    assert_eq!((health.state.as_str(), health.reason.as_str()), ("unhealthy", "quarantined: fan noise"));
    let event = next_gpu_event(&mut events).await;
    assert_eq!(
        (event.gpu_uuid, event.gpu_state, event.reason),
        (uuid('c'), "unhealthy".into(), "quarantined: fan noise".into())
    );
    let err = create_with(&mut client, 1, &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(err.message(), "gpu_count: 1 requested, 0 free of 4 (3 unhealthy or in MIG mode)");
    let capacity = client.capacity(pb::CapacityRequest {}).await.unwrap().into_inner();
    let gpus = capacity.gpus.unwrap();
    assert_eq!((gpus.total, gpus.allocated, gpus.free, capacity.gpus_healthy), (4.0, 1.0, 0.0, 1.0));
    let slots: Vec<(&str, &str)> =
        capacity.gpu_slots.iter().map(|s| (s.health.as_str(), s.health_reason.as_str())).collect();
    assert_eq!(slots[0], ("unhealthy", "unhealthy: Xid 79"));
    assert_eq!(slots[1], ("healthy", ""));
    assert_eq!(slots[2], ("unhealthy", "unhealthy: quarantined: fan noise"));
    assert_eq!(slots[3].0, "healthy");
    assert!(slots[3].1.starts_with("in MIG mode"), "{slots:?}");
    let metrics = http_get(config.ports.metrics[2], "/metrics").await.unwrap().1;
    let series = |hex: char, state: &str| {
        format!("executor_gpu_health{{gpu=\"{}\",uuid=\"{}\",state=\"{state}\"}}", "abcd".find(hex).unwrap(), uuid(hex))
    };
    assert_eq!(e2e::metric_value(&metrics, &series('a', "unhealthy")), 1.0, "{metrics}");
    assert_eq!(e2e::metric_value(&metrics, &series('b', "healthy")), 1.0, "{metrics}");

    // A restart of gpu-monitor forgets neither the quarantine nor the Xid (the file no longer
    // lists it: a real driver's event list starts empty after a restart).
    write_gpus(&file, &[('a', 10, fine, 0), ('b', 11, fine, 0), ('c', 12, fine, 0), ('d', 13, fine, 2)]);
    let _ = monitor_process.start_kill();
    let _ = monitor_process.wait().await;
    let (_monitor_process, mut monitor) = start_monitor(&config).await;
    assert_eq!(wait_health(&mut monitor, 'a', "unhealthy").await, "Xid 79");
    assert_eq!(wait_health(&mut monitor, 'c', "unhealthy").await, "quarantined: fan noise");
    let released = monitor.release_gpu(gpu::ReleaseGpuRequest { uuid: uuid('c') }).await.unwrap().into_inner();
    assert_eq!(released.state, "healthy");
    assert_eq!(create_with(&mut client, 1, &[]).await.unwrap().gpu_uuids, [uuid('c')]);
    let err = monitor.release_gpu(gpu::ReleaseGpuRequest { uuid: "GPU-nope".into() }).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::NotFound, "uuid: `GPU-nope` is not a GPU of this node"));

    // GPU b leaves the bus: unhealthy, and never given again (a remove frees it, yet it is gone).
    remove_all(&mut client).await;
    write_gpus(&file, &[('a', 10, fine, 0), ('c', 12, fine, 0), ('d', 13, fine, 2)]);
    assert_eq!(wait_health(&mut monitor, 'b', "unhealthy").await, "missing from NVML's GPU list");
    let err = create_with(&mut client, 0, &[uuid('b')]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(create_with(&mut client, 1, &[]).await.unwrap().gpu_uuids, [uuid('c')]);
    remove_all(&mut client).await;
}

/// Running work on a GPU that turns unhealthy is stopped with the reason, and the watchers hear
/// it. Without the NVIDIA runtime no container with a GPU starts here, so the running "rental"
/// is a busybox container made with `docker run` and this executor's labels naming GPU b: the
/// executor goes by those labels, as it does for the containers it makes.
#[tokio::test]
async fn work_on_a_gpu_that_turns_unhealthy_is_stopped_and_told() {
    if !busybox_image().await {
        return;
    }
    let (config, file) = simulated_node();
    let fine: &[u64] = &[];
    write_gpus(&file, &[('a', 10, fine, 0), ('b', 11, fine, 0)]);
    let (_monitor_process, mut monitor) = start_monitor(&config).await;
    let (_service, mut client) = start_service(&config).await;
    // The executor's id, from a container it made.
    let made = create_with(&mut client, 0, &[]).await.unwrap();
    let (_, executor_id) = e2e::runtime::docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"ai.basilica.executor.executor_id\"}}",
        &made.id,
    ])
    .await;
    // A name of our form no other run uses (the engine is shared).
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let id = format!("c-{:012x}", nanos & 0xffff_ffff_ffff);
    let id = id.as_str();
    let label = |k: &str, v: &str| format!("--label=ai.basilica.executor.{k}={v}");
    let (ok, out) = e2e::runtime::docker(&[
        "run",
        "-d",
        "--name",
        id,
        &label("managed", "true"),
        &label("executor_id", &executor_id),
        &label("id", id),
        &label("owner", e2e::ALICE),
        &label("gpus", &uuid('b')),
        e2e::BUSYBOX_IMAGE,
        "sleep",
        "600",
    ])
    .await;
    assert!(ok, "{out}");
    let watch = pb::WatchEventsRequest { only_new: true, ..Default::default() };
    let mut events = client.events(watch).await.unwrap().into_inner();

    write_gpus(&file, &[('a', 10, fine, 0), ('b', 11, &[79], 0)]);
    assert_eq!(wait_health(&mut monitor, 'b', "unhealthy").await, "Xid 79");
    let why = format!("gpu_error: GPU {} unhealthy: Xid 79", uuid('b'));
    let mut seen = Vec::new();
    while seen.last().is_none_or(|e: &pb::Event| e.kind() != pb::EventKind::Died) {
        let event = tokio::time::timeout(Duration::from_secs(20), events.message()).await;
        let event = event.expect("events within 20 s").unwrap().unwrap();
        // The container's own start reaches the runtime from the engine's events, possibly
        // after the watch began: not what this test is about.
        if event.kind() != pb::EventKind::Started {
            seen.push(event);
        }
    }
    let kinds: Vec<(pb::EventKind, &str, &str)> =
        seen.iter().map(|e| (e.kind(), e.reason.as_str(), e.by.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (pb::EventKind::GpuHealth, "Xid 79", ""),
            (pb::EventKind::Stopped, why.as_str(), "executor"),
            (pb::EventKind::Died, why.as_str(), ""),
        ],
        "{seen:?}"
    );
    assert_eq!((seen[1].container_id.as_str(), seen[1].owner.as_str()), (id, e2e::ALICE));
    let stopped = client.get(pb::ContainerRef { id: id.into() }).await.unwrap().into_inner();
    assert_eq!(stopped.state, pb::ContainerState::Exited as i32, "{stopped:?}");
    assert_eq!(stopped.stop_reason, why);
    remove_all(&mut client).await;
}
