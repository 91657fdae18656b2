//! Host telemetry through `sysinfo`: static facts once, a sample every interval.

use common::proto::gpu::v1::{DiskSample, HostInfo, HostSample, NetworkSample};
use sysinfo::{Disks, Networks, System};

/// Why sysinfo could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("sysinfo: {0}")]
    System(#[source] sysinfo::Error),
    #[error("sysinfo disks: {0}")]
    Disks(#[source] sysinfo::Error),
    #[error("sysinfo networks: {0}")]
    Networks(#[source] sysinfo::Error),
}

/// Keeps sysinfo's state between samples (CPU usage and network counters are deltas).
#[derive(Debug)]
pub struct HostCollector {
    system: System,
    disks: Disks,
    networks: Networks,
}

impl HostCollector {
    pub fn new() -> Result<Self, HostError> {
        let mut system = System::new().map_err(HostError::System)?;
        system.refresh_cpu_all();
        system.refresh_memory();
        Ok(Self {
            system,
            disks: Disks::new_with_refreshed_list().map_err(HostError::Disks)?,
            networks: Networks::new_with_refreshed_list().map_err(HostError::Networks)?,
        })
    }

    /// Facts that do not change while we run.
    pub fn info(&self) -> HostInfo {
        HostInfo {
            hostname: System::host_name().unwrap_or_default(),
            os: System::long_os_version().unwrap_or_default(),
            kernel: System::kernel_version().unwrap_or_default(),
            cpu_model: self.system.cpus().first().map(|c| c.brand().trim().to_owned()).unwrap_or_default(),
            cpu_cores: self.system.cpus().len() as u32,
            memory_total_bytes: self.system.total_memory(),
        }
    }

    /// A fresh sample; blocking (reads /proc).
    pub fn sample(&mut self) -> HostSample {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        self.networks.refresh(true);
        let load = System::load_average().ok();
        let mut disks: Vec<DiskSample> = self
            .disks
            .iter()
            .map(|d| DiskSample {
                mount_point: d.mount_point().display().to_string(),
                total_bytes: d.total_space(),
                available_bytes: d.available_space(),
            })
            .collect();
        disks.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
        let mut networks: Vec<NetworkSample> = self
            .networks
            .iter()
            .map(|(name, data)| NetworkSample {
                interface: name.to_string_lossy().into_owned(),
                rx_bytes: data.total_received(),
                tx_bytes: data.total_transmitted(),
            })
            .collect();
        networks.sort_by(|a, b| a.interface.cmp(&b.interface));
        HostSample {
            cpu_usage_percent: f64::from(self.system.global_cpu_usage()),
            memory_used_bytes: self.system.used_memory(),
            swap_total_bytes: self.system.total_swap(),
            swap_used_bytes: self.system.used_swap(),
            load_1: load.as_ref().map_or(0.0, |l| l.one),
            load_5: load.as_ref().map_or(0.0, |l| l.five),
            load_15: load.as_ref().map_or(0.0, |l| l.fifteen),
            uptime_seconds: System::uptime().unwrap_or_default(),
            disks,
            networks,
        }
    }
}
