//! Snapshot → Prometheus series. Runs after each collection, so a scrape only renders what is
//! already there. GPU series carry `gpu`, `uuid`, `model`, and `container` when a container
//! holds the GPU. The mapping to dcgm-exporter and node_exporter names is in
//! `docs/gpu-monitor.md`.

use common::metrics::{Family, Series};
use common::proto::gpu::v1::{GpuHealth, GpuProcess, Inventory, Snapshot};
use metrics::{counter, gauge};

use crate::collector_run::CollectorRun;

/// Declares the per-GPU families and the list of them all.
macro_rules! families {
    ($($ident:ident: $kind:ident $name:literal, $help:literal;)*) => {
        $(static $ident: Family = Family::$kind($name, $help);)*
        /// Every family of per-GPU series: replaced whole each round, so the series of a GPU
        /// gone from the bus, of a container that has let go of its GPU, or of a throttle
        /// reason no longer active leave the exposition.
        static GPU_FAMILIES: &[&Family] = &[$(&$ident),*];
    };
}

families! {
    REMAPPED_ROWS: gauge "executor_gpu_remapped_rows", "Rows remapped after correctable or uncorrectable errors (DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS / _UNCORRECTABLE_).";
    REMAPPING_PENDING: gauge "executor_gpu_remapping_pending", "1 when a row remapping waits for a GPU reset (DCGM_FI_DEV_ROW_REMAP_PENDING).";
    MIG_INSTANCES: gauge "executor_gpu_mig_instances", "MIG instances on the GPU; 0 when MIG is off.";
    MEMORY_TOTAL_BYTES: gauge "executor_gpu_memory_total_bytes", "GPU memory size (DCGM_FI_DEV_FB_TOTAL).";
    MEMORY_USED_BYTES: gauge "executor_gpu_memory_used_bytes", "GPU memory in use (DCGM_FI_DEV_FB_USED).";
    MEMORY_FREE_BYTES: gauge "executor_gpu_memory_free_bytes", "GPU memory free (DCGM_FI_DEV_FB_FREE).";
    UTILIZATION_RATIO: gauge "executor_gpu_utilization_ratio", "Share of time a kernel ran, 0-1 (DCGM_FI_DEV_GPU_UTIL / 100).";
    MEMORY_UTILIZATION_RATIO: gauge "executor_gpu_memory_utilization_ratio", "Share of time memory was read or written, 0-1 (DCGM_FI_DEV_MEM_COPY_UTIL / 100).";
    TEMPERATURE_CELSIUS: gauge "executor_gpu_temperature_celsius", "GPU temperature (DCGM_FI_DEV_GPU_TEMP).";
    POWER_WATTS: gauge "executor_gpu_power_watts", "Power draw (DCGM_FI_DEV_POWER_USAGE).";
    POWER_LIMIT_WATTS: gauge "executor_gpu_power_limit_watts", "Enforced power limit (DCGM_FI_DEV_ENFORCED_POWER_LIMIT).";
    SM_CLOCK_MAX_HERTZ: gauge "executor_gpu_sm_clock_max_hertz", "Maximum SM clock.";
    MEMORY_CLOCK_MAX_HERTZ: gauge "executor_gpu_memory_clock_max_hertz", "Maximum memory clock.";
    SM_CLOCK_HERTZ: gauge "executor_gpu_sm_clock_hertz", "SM clock (DCGM_FI_DEV_SM_CLOCK, in MHz there).";
    MEMORY_CLOCK_HERTZ: gauge "executor_gpu_memory_clock_hertz", "Memory clock (DCGM_FI_DEV_MEM_CLOCK, in MHz there).";
    ECC_ERRORS_CORRECTED_TOTAL: counter "executor_gpu_ecc_errors_corrected_total", "Corrected ECC errors, aggregate (DCGM_FI_DEV_ECC_SBE_AGG_TOTAL).";
    ECC_ERRORS_UNCORRECTED_TOTAL: counter "executor_gpu_ecc_errors_uncorrected_total", "Uncorrected ECC errors, aggregate (DCGM_FI_DEV_ECC_DBE_AGG_TOTAL).";
    RETIRED_PAGES: gauge "executor_gpu_retired_pages", "Retired memory pages, single- and double-bit causes (DCGM_FI_DEV_RETIRED_SBE + _DBE).";
    PCIE_REPLAYS_TOTAL: counter "executor_gpu_pcie_replays_total", "PCIe replays (DCGM_FI_DEV_PCIE_REPLAY_COUNTER).";
    XID_EVENTS_TOTAL: counter "executor_gpu_xid_events_total", "Xid events seen (DCGM_FI_DEV_XID_ERRORS is the last one).";
    THROTTLED: gauge "executor_gpu_throttled", "1 for each clock throttle reason now active (DCGM_FI_DEV_CLOCK_THROTTLE_REASONS bits).";
    MEMORY_ALERT: gauge "executor_gpu_memory_alert", "1 while the GPU's memory use is above system.max_gpu_memory_usage.";
    CONTAINER_MEMORY_USED_BYTES: gauge "executor_gpu_container_memory_used_bytes", "GPU memory used by a container's processes, per GPU.";
}

/// One series per GPU and state, 1 for the state it is in: every GPU this node has seen, a GPU
/// gone from the bus included (it is unhealthy).
static HEALTH: Family = Family::gauge(
    "executor_gpu_health",
    "1 for the GPU's health state (healthy, degraded, unhealthy), 0 for the others; see executor ctl capacity for why.",
);

/// [`HEALTH`] from each GPU's health.
pub fn export_health(health: &[GpuHealth]) {
    let mut series = Vec::new();
    for h in health {
        for state in [crate::health::HEALTHY, crate::health::DEGRADED, crate::health::UNHEALTHY] {
            let labels = vec![("gpu", h.index.to_string()), ("uuid", h.uuid.clone()), ("state", state.to_owned())];
            series.push((labels, if h.state == state { 1.0 } else { 0.0 }));
        }
    }
    HEALTH.replace(series);
}

/// The per-GPU series of one round, published together.
#[derive(Default)]
struct Round(Vec<(&'static Family, Series)>);

impl Round {
    fn set(&mut self, family: &'static Family, labels: Vec<(&'static str, String)>, value: f64) {
        self.0.push((family, (labels, value)));
    }

    fn publish(self) {
        for family in GPU_FAMILIES {
            let series = self.0.iter().filter(|(f, _)| std::ptr::eq(*f, *family)).map(|(_, s)| s.clone()).collect();
            family.replace(series);
        }
    }
}

/// Registers the help text of every series (call once, with the recorder installed). The
/// DCGM and node_exporter names in parentheses are the nearest equivalents.
pub fn describe() {
    metrics::describe_gauge!(
        "executor_gpu_monitor_collector_success",
        "1 when the collector's last run succeeded, 0 when it failed or timed out."
    );
    metrics::describe_gauge!(
        "executor_gpu_monitor_collector_duration_seconds",
        "How long the collector's last run took."
    );
    metrics::describe_gauge!("executor_gpus", "GPUs reported by the backend (0 without NVML).");
    metrics::describe_gauge!(
        "executor_gpu_kernel_mismatch",
        "1 when the kernel driver's GPU list disagrees with NVML's (a shimmed NVML?)."
    );
    metrics::describe_gauge!(
        "executor_gpu_monitor_degraded",
        "1 while a threshold alert is active or a GPU is unhealthy."
    );
    metrics::describe_gauge!("executor_host_cpu_usage_ratio", "Host CPU busy share, 0-1.");
    metrics::describe_gauge!("executor_host_cpu_cores", "Logical CPUs.");
    metrics::describe_gauge!("executor_host_memory_total_bytes", "Host memory (node_memory_MemTotal_bytes).");
    metrics::describe_gauge!("executor_host_memory_used_bytes", "Host memory in use: total minus available.");
    metrics::describe_gauge!("executor_host_swap_total_bytes", "Swap size.");
    metrics::describe_gauge!("executor_host_swap_used_bytes", "Swap in use.");
    metrics::describe_gauge!("executor_host_load1", "1-minute load average (node_load1).");
    metrics::describe_gauge!("executor_host_load5", "5-minute load average (node_load5).");
    metrics::describe_gauge!("executor_host_load15", "15-minute load average (node_load15).");
    metrics::describe_gauge!("executor_host_uptime_seconds", "Seconds since the host booted.");
    metrics::describe_gauge!(
        "executor_host_disk_total_bytes",
        "Filesystem size per mount (node_filesystem_size_bytes)."
    );
    metrics::describe_gauge!(
        "executor_host_disk_available_bytes",
        "Filesystem space available per mount (node_filesystem_avail_bytes)."
    );
    metrics::describe_counter!(
        "executor_host_network_receive_bytes_total",
        "Bytes received per interface (node_network_receive_bytes_total)."
    );
    metrics::describe_counter!(
        "executor_host_network_transmit_bytes_total",
        "Bytes sent per interface (node_network_transmit_bytes_total)."
    );
    metrics::describe_counter!("executor_gpu_monitor_alerts_total", "Threshold alerts raised, by kind.");
}

/// Sets every series from one collection round.
pub fn export(inventory: &Inventory, snapshot: &Snapshot, processes: &[GpuProcess], runs: &[CollectorRun]) {
    for run in runs {
        gauge!("executor_gpu_monitor_collector_success", "collector" => run.name).set(if run.success {
            1.0
        } else {
            0.0
        });
        gauge!("executor_gpu_monitor_collector_duration_seconds", "collector" => run.name)
            .set(run.duration.as_secs_f64());
    }
    gauge!("executor_gpus").set(snapshot.gpus.len() as f64);
    gauge!("executor_gpu_kernel_mismatch").set(if snapshot.kernel_gpu_mismatch { 1.0 } else { 0.0 });
    gauge!("executor_gpu_monitor_degraded").set(if snapshot.alerts.is_empty() { 0.0 } else { 1.0 });

    let mut round = Round::default();
    for g in &snapshot.gpus {
        let info = inventory.gpus.iter().find(|i| i.uuid == g.uuid);
        let model = info.map(|i| i.name.clone()).unwrap_or_default();
        let mut labels = vec![("gpu", g.index.to_string()), ("uuid", g.uuid.clone()), ("model", model)];
        if !g.container.is_empty() {
            labels.push(("container", g.container.clone()));
        }
        let l = |extra: &[(&'static str, String)]| {
            let mut all: Vec<(&'static str, String)> = labels.clone();
            all.extend_from_slice(extra);
            all
        };
        let total = info.map_or(g.memory_used_bytes + g.memory_free_bytes, |i| i.memory_total_bytes);
        round.set(&MEMORY_TOTAL_BYTES, l(&[]), total as f64);
        round.set(&MEMORY_USED_BYTES, l(&[]), g.memory_used_bytes as f64);
        round.set(&MEMORY_FREE_BYTES, l(&[]), g.memory_free_bytes as f64);
        round.set(&UTILIZATION_RATIO, l(&[]), f64::from(g.gpu_utilization_percent) / 100.0);
        round.set(&MEMORY_UTILIZATION_RATIO, l(&[]), f64::from(g.memory_utilization_percent) / 100.0);
        round.set(&TEMPERATURE_CELSIUS, l(&[]), f64::from(g.temperature_celsius));
        round.set(&POWER_WATTS, l(&[]), f64::from(g.power_draw_milliwatts) / 1000.0);
        if let Some(i) = info {
            round.set(&MIG_INSTANCES, l(&[]), f64::from(i.mig_instances));
            round.set(&POWER_LIMIT_WATTS, l(&[]), f64::from(i.power_limit_milliwatts) / 1000.0);
            round.set(&SM_CLOCK_MAX_HERTZ, l(&[]), f64::from(i.max_sm_clock_mhz) * 1e6);
            round.set(&MEMORY_CLOCK_MAX_HERTZ, l(&[]), f64::from(i.max_memory_clock_mhz) * 1e6);
        }
        round.set(&SM_CLOCK_HERTZ, l(&[]), f64::from(g.sm_clock_mhz) * 1e6);
        round.set(&MEMORY_CLOCK_HERTZ, l(&[]), f64::from(g.memory_clock_mhz) * 1e6);
        round.set(&ECC_ERRORS_CORRECTED_TOTAL, l(&[]), g.ecc_errors_corrected as f64);
        round.set(&ECC_ERRORS_UNCORRECTED_TOTAL, l(&[]), g.ecc_errors_uncorrected as f64);
        round.set(&RETIRED_PAGES, l(&[]), g.retired_pages as f64);
        round.set(&REMAPPED_ROWS, l(&[("kind", "correctable".into())]), g.remapped_rows_correctable as f64);
        round.set(&REMAPPED_ROWS, l(&[("kind", "uncorrectable".into())]), g.remapped_rows_uncorrectable as f64);
        round.set(&REMAPPING_PENDING, l(&[]), if g.remapping_pending { 1.0 } else { 0.0 });
        round.set(&PCIE_REPLAYS_TOTAL, l(&[]), g.pcie_replay_count as f64);
        round.set(&XID_EVENTS_TOTAL, l(&[]), g.xid_count as f64);
        for reason in &g.throttle_reasons {
            round.set(&THROTTLED, l(&[("reason", reason.clone())]), 1.0);
        }
        let alerting = snapshot.alerts.iter().any(|a| a.contains(&format!("({}) memory ", g.uuid)));
        round.set(&MEMORY_ALERT, l(&[]), if alerting { 1.0 } else { 0.0 });
    }
    for p in processes.iter().filter(|p| !p.container.is_empty()) {
        let labels = vec![("container", p.container.clone()), ("uuid", p.gpu_uuid.clone())];
        round.set(&CONTAINER_MEMORY_USED_BYTES, labels, p.used_memory_bytes as f64);
    }
    round.publish();

    if let Some(h) = &snapshot.host {
        gauge!("executor_host_cpu_usage_ratio").set(h.cpu_usage_percent / 100.0);
        if let Some(info) = &inventory.host {
            gauge!("executor_host_cpu_cores").set(f64::from(info.cpu_cores));
            gauge!("executor_host_memory_total_bytes").set(info.memory_total_bytes as f64);
        }
        gauge!("executor_host_memory_used_bytes").set(h.memory_used_bytes as f64);
        gauge!("executor_host_swap_total_bytes").set(h.swap_total_bytes as f64);
        gauge!("executor_host_swap_used_bytes").set(h.swap_used_bytes as f64);
        gauge!("executor_host_load1").set(h.load_1);
        gauge!("executor_host_load5").set(h.load_5);
        gauge!("executor_host_load15").set(h.load_15);
        gauge!("executor_host_uptime_seconds").set(h.uptime_seconds as f64);
        for d in &h.disks {
            gauge!("executor_host_disk_total_bytes", "mount" => d.mount_point.clone()).set(d.total_bytes as f64);
            gauge!("executor_host_disk_available_bytes", "mount" => d.mount_point.clone())
                .set(d.available_bytes as f64);
        }
        for n in &h.networks {
            counter!("executor_host_network_receive_bytes_total", "interface" => n.interface.clone())
                .absolute(n.rx_bytes);
            counter!("executor_host_network_transmit_bytes_total", "interface" => n.interface.clone())
                .absolute(n.tx_bytes);
        }
    }
}
