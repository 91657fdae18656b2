//! The monitor against scripted GPUs (the `simulated` backend) and the real host.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gpu_monitor::backend::SimulatedBackend;
use gpu_monitor::collector::{GpuSource, Monitor, MonitorSettings};
use gpu_monitor::health::Health;
use metrics_exporter_prometheus::PrometheusBuilder;

fn write_gpus(path: &Path, used: u64, extra: &str) {
    let gib = 1u64 << 30;
    let text = format!(
        r#"{{"gpus":[
  {{"uuid":"GPU-11111111-2222-3333-4444-555555555555","name":"Simulated H100","pci_bus_id":"00000000:17:00.0",
   "memory_total_bytes":{total},"memory_used_bytes":{used},"gpu_utilization_percent":87,"memory_utilization_percent":40,
   "temperature_celsius":61,"power_draw_milliwatts":350000,"power_limit_milliwatts":700000,"sm_clock_mhz":1755,
   "max_sm_clock_mhz":1980,"memory_clock_mhz":2619,"max_memory_clock_mhz":2619,"compute_capability":"9.0",
   "throttle_reasons":["sw_power_cap"],"ecc_errors_corrected":3,"remapped_rows_correctable":2,"remapping_pending":true,"pcie_replay_count":1,"xid_events":[79]}},
  {{"uuid":"GPU-66666666-7777-8888-9999-000000000000","name":"Simulated H100","pci_bus_id":"00000000:18:00.0",
   "memory_total_bytes":{total},"memory_used_bytes":0}}
]{extra}}}"#,
        total = 80 * gib,
    );
    std::fs::write(path, text).unwrap();
}

fn monitor(file: &Path, timeout: Duration) -> Arc<Monitor> {
    let settings = MonitorSettings { interval: Duration::from_secs(1), timeout, max_gpu_memory_usage: 90.0 };
    let health = Health::open(file.parent().unwrap(), &common::config::system::DEFAULT_IGNORED_XIDS).unwrap();
    Monitor::new(GpuSource::Backend(Arc::new(SimulatedBackend::new(file.to_owned()))), settings, health).unwrap()
}

#[tokio::test]
async fn prometheus_text_for_simulated_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gpus.json");
    write_gpus(&file, 40 << 30, "");
    let m = monitor(&file, Duration::from_secs(2));
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let (snapshot, _) = m.collect_once().await;
    metrics::with_local_recorder(&recorder, || {
        gpu_monitor::exporter::describe();
        gpu_monitor::exporter::export(&m.inventory(), &snapshot, &m.processes(), &[]);
    });
    let text = common::metrics::render(&handle);
    // Every series has help text (promtool insists; a real Prometheus test checks it too).
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name = line.split(['{', ' ']).next().unwrap();
        let name = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no help text");
    }
    // GPU series are deterministic here; host series depend on the machine.
    let gpu0: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("executor_gpu") && (l.contains("gpu=\"0\"") || !l.contains("gpu=\"")))
        .collect();
    let expected = r#"executor_gpus 2
executor_gpu_kernel_mismatch 0
executor_gpu_monitor_degraded 1
executor_gpu_health{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",state="healthy"} 0
executor_gpu_health{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",state="degraded"} 0
executor_gpu_health{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",state="unhealthy"} 1
executor_gpu_memory_total_bytes{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 85899345920
executor_gpu_memory_used_bytes{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 42949672960
executor_gpu_memory_free_bytes{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 42949672960
executor_gpu_utilization_ratio{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 0.87
executor_gpu_memory_utilization_ratio{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 0.4
executor_gpu_temperature_celsius{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 61
executor_gpu_power_watts{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 350
executor_gpu_power_limit_watts{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 700
executor_gpu_sm_clock_max_hertz{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 1980000000
executor_gpu_memory_clock_max_hertz{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 2619000000
executor_gpu_sm_clock_hertz{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 1755000000
executor_gpu_memory_clock_hertz{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 2619000000
executor_gpu_ecc_errors_corrected_total{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 3
executor_gpu_ecc_errors_uncorrected_total{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 0
executor_gpu_retired_pages{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 0
executor_gpu_remapped_rows{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100",kind="correctable"} 2
executor_gpu_remapped_rows{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100",kind="uncorrectable"} 0
executor_gpu_remapping_pending{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 1
executor_gpu_mig_instances{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 0
executor_gpu_pcie_replays_total{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 1
executor_gpu_xid_events_total{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 1
executor_gpu_throttled{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100",reason="sw_power_cap"} 1
executor_gpu_memory_alert{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 0"#;
    let mut got = gpu0.clone();
    let mut want: Vec<&str> = expected.lines().collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "\n{}", gpu0.join("\n"));
    assert!(text.contains("executor_host_memory_used_bytes "), "{text}");
    assert!(text.contains("executor_host_disk_total_bytes{mount=\"/\"}"), "{text}");
}

/// Issue 17 item 14: the series of a container that has let go of its GPU (removed), and of a
/// throttle reason that has ended, leave the exposition at the next round; before, they stayed
/// at their last value until the service restarted.
#[tokio::test]
async fn series_of_a_removed_container_and_an_ended_throttle_go() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gpus.json");
    write_gpus(&file, 40 << 30, "");
    let m = monitor(&file, Duration::from_secs(2));
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let (snapshot, _) = m.collect_once().await;
    let mut rented = (*snapshot).clone();
    rented.gpus[0].container = "c-gone".to_owned();
    let process = common::proto::gpu::v1::GpuProcess {
        pid: 42,
        gpu_uuid: rented.gpus[0].uuid.clone(),
        used_memory_bytes: 1 << 30,
        container: "c-gone".to_owned(),
    };
    metrics::with_local_recorder(&recorder, || {
        gpu_monitor::exporter::export(&m.inventory(), &rented, &[process], &[]);
    });
    let text = common::metrics::render(&handle);
    assert!(text.contains(r#"executor_gpu_container_memory_used_bytes{container="c-gone",uuid="GPU-11111111-2222-3333-4444-555555555555"} 1073741824"#), "{text}");
    assert!(text.contains(r#"model="Simulated H100",container="c-gone"} 42949672960"#), "{text}");
    // The container is removed and the GPU no longer throttles.
    let mut freed = (*snapshot).clone();
    freed.gpus[0].throttle_reasons.clear();
    metrics::with_local_recorder(&recorder, || {
        gpu_monitor::exporter::export(&m.inventory(), &freed, &[], &[]);
    });
    let text = common::metrics::render(&handle);
    assert!(!text.contains("c-gone"), "{text}");
    assert!(!text.contains("executor_gpu_throttled"), "{text}");
    assert!(text.contains(r#"executor_gpu_memory_used_bytes{gpu="0",uuid="GPU-11111111-2222-3333-4444-555555555555",model="Simulated H100"} 42949672960"#), "{text}");
}

#[tokio::test]
async fn crossing_the_memory_threshold_raises_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gpus.json");
    write_gpus(&file, 40 << 30, "");
    let m = monitor(&file, Duration::from_secs(2));
    // GPU 0 of the fixture has had Xid 79 and waits for a row remap: unhealthy, an alert too.
    let sick = "gpu 0 (GPU-11111111-2222-3333-4444-555555555555) unhealthy: Xid 79".to_owned();
    let (s, _) = m.collect_once().await;
    assert_eq!(s.alerts, std::slice::from_ref(&sick));
    write_gpus(&file, 78 << 30, "");
    let (s, _) = m.collect_once().await;
    assert_eq!(
        s.alerts,
        vec!["gpu 0 (GPU-11111111-2222-3333-4444-555555555555) memory 97.5% > 90.0%".to_owned(), sick.clone()]
    );
    write_gpus(&file, 1 << 30, "");
    let (s, _) = m.collect_once().await;
    assert_eq!(s.alerts, [sick]);
}

#[tokio::test]
async fn a_hung_collector_fails_and_the_others_keep_going() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gpus.json");
    write_gpus(&file, 1 << 30, r#","hang_ms":1500"#);
    let m = monitor(&file, Duration::from_millis(200));
    let started = std::time::Instant::now();
    let (s, runs) = m.collect_once().await;
    let by_name = |n: &str| runs.iter().find(|r| r.name == n).unwrap().clone();
    assert!(!by_name("gpu").success && by_name("gpu").error.unwrap().contains("timed out after 200ms"));
    assert!(by_name("host").success, "{runs:?}");
    assert!(s.host.is_some() && s.gpus.is_empty());
    assert!(s.gpu_unavailable_reason.contains("timed out"), "{}", s.gpu_unavailable_reason);
    assert!(started.elapsed() < Duration::from_millis(1500), "collection waited for the hung call");
    // The stuck call is not started a second time.
    let (_, runs) = m.collect_once().await;
    let gpu = runs.iter().find(|r| r.name == "gpu").unwrap();
    assert!(gpu.error.as_deref().unwrap().contains("has not returned yet"), "{runs:?}");
}

#[tokio::test]
async fn a_kernel_list_that_disagrees_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gpus.json");
    write_gpus(&file, 0, r#","kernel_pci_bus_ids":["0000:17:00.0"]"#);
    let (s, _) = monitor(&file, Duration::from_secs(2)).collect_once().await;
    assert!(s.kernel_gpu_mismatch);
    write_gpus(&file, 0, r#","kernel_pci_bus_ids":["0000:17:00.0","0000:18:00.0"]"#);
    let (s, _) = monitor(&file, Duration::from_secs(2)).collect_once().await;
    assert!(!s.kernel_gpu_mismatch);
}

#[tokio::test]
async fn no_nvml_means_zero_gpus_and_a_reason() {
    let m = Monitor::new(
        GpuSource::Unavailable("NVML unavailable (test)".into()),
        MonitorSettings {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            max_gpu_memory_usage: 90.0,
        },
        Health::open(tempfile::tempdir().unwrap().path(), &[]).unwrap(),
    )
    .unwrap();
    let (s, runs) = m.collect_once().await;
    assert!(s.gpus.is_empty() && s.gpu_unavailable_reason == "NVML unavailable (test)");
    assert_eq!(m.inventory().gpu_unavailable_reason, "NVML unavailable (test)");
    assert_eq!(runs.iter().map(|r| r.name).collect::<Vec<_>>(), ["host"]);
}

#[tokio::test]
async fn host_figures_move_with_memory_and_cpu_use() {
    let mut host = gpu_monitor::host::HostCollector::new().unwrap();
    let before = host.sample();
    // Fill 1 GiB so it is resident, and keep every core busy while the next sample is taken.
    let block = std::hint::black_box(vec![1u8; 1 << 30]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let burners: Vec<_> = (0..std::thread::available_parallelism().map_or(2, |n| n.get()))
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(600));
    let after = host.sample();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in burners {
        b.join().unwrap();
    }
    // Other processes move too: ask for a quarter of what was touched.
    assert!(after.memory_used_bytes > before.memory_used_bytes + (256 << 20), "{before:?} {after:?}");
    assert!(after.cpu_usage_percent > 50.0, "cpu {}", after.cpu_usage_percent);
    assert!(std::hint::black_box(block[4096]) == 1);
    assert!(after.uptime_seconds > 0 && !after.disks.is_empty() && !after.networks.is_empty());
}
