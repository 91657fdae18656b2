//! Where GPU figures come from: NVML (loaded at run time), or the `simulated` backend that an
//! operator or a test selects explicitly in the config. There is no fallback from one to the
//! other: without NVML there are zero GPUs and a reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::proto::gpu::v1::{GpuInfo, GpuSample};
use nvml_wrapper::error::NvmlError;
use serde::Deserialize;

use crate::kernel::KernelError;

/// Why a backend could not give its figures. The text is what `executor validate`, the
/// inventory's `gpu_unavailable_reason` and the collector logs show.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("NVML unavailable ({0}); no NVIDIA driver on this machine?")]
    Load(#[source] NvmlError),
    #[error("NVML device count: {0}")]
    DeviceCount(#[source] NvmlError),
    #[error("GPU {index}: {source}")]
    Device { index: u32, source: NvmlError },
    #[error("GPU {uuid} processes: {source}")]
    Processes { uuid: String, source: NvmlError },
    #[error("{}: {source}", file.display())]
    SimulatedRead { file: PathBuf, source: std::io::Error },
    #[error("{}: {source}", file.display())]
    SimulatedParse { file: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// A process using GPU memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuProcessUse {
    pub pid: u32,
    pub gpu_uuid: String,
    pub used_memory_bytes: u64,
}

/// Static facts of the GPUs and the driver.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuInventory {
    pub gpus: Vec<GpuInfo>,
    pub driver_version: String,
    pub cuda_version: String,
}

/// A source of GPU figures. Calls may block (NVML can hang on a sick GPU): the collector runs
/// them off the async threads with a timeout.
pub trait GpuBackend: Send + Sync + 'static {
    fn inventory(&self) -> Result<GpuInventory, BackendError>;
    fn samples(&self) -> Result<Vec<GpuSample>, BackendError>;
    fn processes(&self) -> Result<Vec<GpuProcessUse>, BackendError>;
    /// PCI bus ids the kernel driver lists, for the cross-check with what the backend reports.
    fn kernel_pci_bus_ids(&self) -> Result<Vec<String>, BackendError> {
        Ok(crate::kernel::proc_gpu_bus_ids(Path::new(crate::kernel::PROC_NVIDIA_GPUS))?)
    }
}

/// Xid errors kept per GPU (the most recent ones).
const XIDS_KEPT: usize = 32;

/// The real thing. NVML is loaded once per process and kept for its lifetime (leaked), so the
/// Xid watcher thread can hold an event set that borrows it.
pub struct NvmlBackend {
    nvml: &'static nvml_wrapper::Nvml,
    /// Xid errors by GPU UUID, filled by the watcher thread.
    xids: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, XidLog>>>,
}

/// One GPU's Xid errors: the most recent ones and how many there were.
#[derive(Debug, Default)]
struct XidLog {
    recent: Vec<u64>,
    total: u64,
}

impl std::fmt::Debug for NvmlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NvmlBackend")
    }
}

impl NvmlBackend {
    /// Loads `libnvidia-ml.so.1` and starts watching for Xid errors; the error says why it
    /// could not load.
    pub fn load() -> Result<Self, BackendError> {
        let nvml = nvml_wrapper::Nvml::init().map_err(BackendError::Load)?;
        let nvml: &'static nvml_wrapper::Nvml = Box::leak(Box::new(nvml));
        let backend = Self { nvml, xids: Default::default() };
        backend.watch_xids();
        Ok(backend)
    }

    /// A thread that owns an NVML event set for critical Xid errors on every GPU and records
    /// them as they happen (NVML only reports events that occur after registration).
    fn watch_xids(&self) {
        use nvml_wrapper::bitmasks::event::EventTypes;
        use nvml_wrapper::enums::event::XidError;
        let (nvml, xids) = (self.nvml, self.xids.clone());
        let spawned = std::thread::Builder::new().name("xid-watch".into()).spawn(move || {
            let Ok(mut set) = nvml.create_event_set() else {
                tracing::warn!("NVML event set unavailable: Xid errors will not be reported");
                return;
            };
            for i in 0..nvml.device_count().unwrap_or(0) {
                let Ok(device) = nvml.device_by_index(i) else { continue };
                match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                    Ok(registered) => set = registered,
                    Err(e) => {
                        tracing::warn!(gpu = i, error = %e.error, "cannot watch Xid errors");
                        return;
                    }
                }
            }
            loop {
                match set.wait(1000) {
                    Ok(event) => {
                        let xid = match event.event_data {
                            Some(XidError::Value(v)) => v,
                            _ => continue,
                        };
                        let uuid = event.device.uuid().unwrap_or_default();
                        tracing::warn!(uuid = %uuid, xid, "GPU Xid error");
                        let mut xids = xids.lock().unwrap_or_else(|e| e.into_inner());
                        let log = xids.entry(uuid).or_default();
                        log.recent.push(xid);
                        log.total += 1;
                        if log.recent.len() > XIDS_KEPT {
                            log.recent.remove(0);
                        }
                    }
                    Err(nvml_wrapper::error::NvmlError::Timeout) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "Xid watch stopped");
                        return;
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the Xid watcher");
        }
    }

    /// Row remapping (correctable, uncorrectable, pending): `nvml-wrapper` has no binding, so
    /// this calls `nvmlDeviceGetRemappedRows` from its loaded library; None where the driver
    /// or GPU lacks it.
    fn remapped_rows(&self, device: &nvml_wrapper::Device<'_>) -> Option<(u64, u64, bool)> {
        let call = self.nvml.lib().nvmlDeviceGetRemappedRows.as_ref().ok()?;
        let (mut corr, mut unc, mut pending, mut failure) = (0, 0, 0, 0);
        // SAFETY: the symbol was resolved from the loaded libnvidia-ml, the handle belongs to
        // a live device of that library, and the four out-pointers are valid for the call.
        #[allow(unsafe_code)]
        let status = unsafe { call(device.handle(), &mut corr, &mut unc, &mut pending, &mut failure) };
        (status == 0).then_some((u64::from(corr), u64::from(unc), pending != 0))
    }

    fn devices(&self) -> Result<Vec<nvml_wrapper::Device<'_>>, BackendError> {
        let count = self.nvml.device_count().map_err(BackendError::DeviceCount)?;
        (0..count)
            .map(|index| self.nvml.device_by_index(index).map_err(|source| BackendError::Device { index, source }))
            .collect()
    }
}

impl GpuBackend for NvmlBackend {
    fn inventory(&self) -> Result<GpuInventory, BackendError> {
        use nvml_wrapper::enum_wrappers::device::Clock;
        let gpus = self
            .devices()?
            .iter()
            .enumerate()
            .map(|(index, d)| GpuInfo {
                index: index as u32,
                uuid: d.uuid().unwrap_or_default(),
                name: d.name().unwrap_or_default(),
                pci_bus_id: d.pci_info().map(|p| p.bus_id).unwrap_or_default(),
                memory_total_bytes: d.memory_info().map(|m| m.total).unwrap_or_default(),
                compute_capability: d
                    .cuda_compute_capability()
                    .map(|c| format!("{}.{}", c.major, c.minor))
                    .unwrap_or_default(),
                sm_count: 0,
                max_sm_clock_mhz: d.max_clock_info(Clock::SM).unwrap_or_default(),
                max_memory_clock_mhz: d.max_clock_info(Clock::Memory).unwrap_or_default(),
                power_limit_milliwatts: d.enforced_power_limit().unwrap_or_default(),
                mig_enabled: d.mig_mode().is_ok_and(|m| m.current == 1),
                mig_instances: if d.mig_mode().is_ok_and(|m| m.current == 1) {
                    d.mig_device_count().unwrap_or_default()
                } else {
                    0
                },
            })
            .collect();
        let cuda = self.nvml.sys_cuda_driver_version().unwrap_or_default();
        Ok(GpuInventory {
            gpus,
            driver_version: self.nvml.sys_driver_version().unwrap_or_default(),
            cuda_version: if cuda > 0 { format!("{}.{}", cuda / 1000, (cuda % 1000) / 10) } else { String::new() },
        })
    }

    fn samples(&self) -> Result<Vec<GpuSample>, BackendError> {
        use nvml_wrapper::bitmasks::device::ThrottleReasons;
        use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, RetirementCause, TemperatureSensor};
        Ok(self
            .devices()?
            .iter()
            .enumerate()
            .map(|(index, d)| {
                let memory = d.memory_info().ok();
                let util = d.utilization_rates().ok();
                let throttle = d.current_throttle_reasons().unwrap_or(ThrottleReasons::empty());
                let remapped = self.remapped_rows(d);
                let (xid_events, xid_count) = self
                    .xids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&d.uuid().unwrap_or_default())
                    .map_or((Vec::new(), 0), |log| (log.recent.clone(), log.total));
                GpuSample {
                    index: index as u32,
                    uuid: d.uuid().unwrap_or_default(),
                    memory_used_bytes: memory.as_ref().map_or(0, |m| m.used),
                    memory_free_bytes: memory.as_ref().map_or(0, |m| m.free),
                    gpu_utilization_percent: util.as_ref().map_or(0, |u| u.gpu),
                    memory_utilization_percent: util.as_ref().map_or(0, |u| u.memory),
                    temperature_celsius: d.temperature(TemperatureSensor::Gpu).unwrap_or_default(),
                    power_draw_milliwatts: d.power_usage().unwrap_or_default(),
                    sm_clock_mhz: d.clock_info(Clock::SM).unwrap_or_default(),
                    memory_clock_mhz: d.clock_info(Clock::Memory).unwrap_or_default(),
                    throttle_reasons: throttle.iter_names().map(|(name, _)| name.to_lowercase()).collect(),
                    ecc_errors_corrected: d
                        .total_ecc_errors(MemoryError::Corrected, EccCounter::Aggregate)
                        .unwrap_or_default(),
                    ecc_errors_uncorrected: d
                        .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate)
                        .unwrap_or_default(),
                    retired_pages: [RetirementCause::MultipleSingleBitEccErrors, RetirementCause::DoubleBitEccError]
                        .into_iter()
                        .map(|cause| d.retired_pages(cause).map_or(0, |p| p.len() as u64))
                        .sum(),
                    pcie_replay_count: d.pcie_replay_counter().map_or(0, u64::from),
                    xid_events,
                    xid_count,
                    container: String::new(),
                    remapped_rows_correctable: remapped.map_or(0, |r| r.0),
                    remapped_rows_uncorrectable: remapped.map_or(0, |r| r.1),
                    remapping_pending: remapped.is_some_and(|r| r.2),
                }
            })
            .collect())
    }

    fn processes(&self) -> Result<Vec<GpuProcessUse>, BackendError> {
        use nvml_wrapper::enums::device::UsedGpuMemory;
        let mut out = Vec::new();
        for d in self.devices()? {
            let uuid = d.uuid().unwrap_or_default();
            let procs = d
                .running_compute_processes()
                .map_err(|source| BackendError::Processes { uuid: uuid.clone(), source })?;
            for p in procs {
                let used = match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => bytes,
                    UsedGpuMemory::Unavailable => 0,
                };
                out.push(GpuProcessUse { pid: p.pid, gpu_uuid: uuid.clone(), used_memory_bytes: used });
            }
        }
        Ok(out)
    }
}

/// The `simulated` backend: GPU figures from a JSON file, re-read on every call so a test can
/// move them (cross a threshold, add a process, make a collector hang).
#[derive(Debug, Clone)]
pub struct SimulatedBackend {
    file: PathBuf,
}

/// The simulated file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedFile {
    #[serde(default)]
    pub gpus: Vec<SimulatedGpu>,
    #[serde(default)]
    pub processes: Vec<SimulatedProcess>,
    /// What the kernel driver lists; absent means the GPUs' own bus ids (no mismatch).
    #[serde(default)]
    pub kernel_pci_bus_ids: Option<Vec<String>>,
    /// Every call sleeps this long first: a hung driver.
    #[serde(default)]
    pub hang_ms: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatedGpu {
    pub uuid: String,
    pub name: String,
    pub pci_bus_id: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub gpu_utilization_percent: u32,
    pub memory_utilization_percent: u32,
    pub temperature_celsius: u32,
    pub power_draw_milliwatts: u32,
    pub power_limit_milliwatts: u32,
    pub sm_clock_mhz: u32,
    pub max_sm_clock_mhz: u32,
    pub memory_clock_mhz: u32,
    pub max_memory_clock_mhz: u32,
    pub compute_capability: String,
    pub throttle_reasons: Vec<String>,
    pub ecc_errors_corrected: u64,
    pub ecc_errors_uncorrected: u64,
    pub retired_pages: u64,
    pub remapped_rows_correctable: u64,
    pub remapped_rows_uncorrectable: u64,
    pub remapping_pending: bool,
    pub pcie_replay_count: u64,
    pub xid_events: Vec<u64>,
    pub mig_instances: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedProcess {
    pub pid: u32,
    pub gpu_uuid: String,
    pub used_memory_bytes: u64,
}

impl SimulatedBackend {
    pub fn new(file: PathBuf) -> Self {
        Self { file }
    }

    fn read(&self) -> Result<SimulatedFile, BackendError> {
        let text = std::fs::read_to_string(&self.file)
            .map_err(|source| BackendError::SimulatedRead { file: self.file.clone(), source })?;
        let file: SimulatedFile = serde_json::from_str(&text)
            .map_err(|source| BackendError::SimulatedParse { file: self.file.clone(), source })?;
        if file.hang_ms > 0 {
            std::thread::sleep(Duration::from_millis(file.hang_ms));
        }
        Ok(file)
    }
}

impl GpuBackend for SimulatedBackend {
    fn inventory(&self) -> Result<GpuInventory, BackendError> {
        let file = self.read()?;
        let gpus = file
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| GpuInfo {
                index: i as u32,
                uuid: g.uuid.clone(),
                name: g.name.clone(),
                pci_bus_id: g.pci_bus_id.clone(),
                memory_total_bytes: g.memory_total_bytes,
                compute_capability: g.compute_capability.clone(),
                sm_count: 0,
                max_sm_clock_mhz: g.max_sm_clock_mhz,
                max_memory_clock_mhz: g.max_memory_clock_mhz,
                power_limit_milliwatts: g.power_limit_milliwatts,
                mig_enabled: g.mig_instances > 0,
                mig_instances: g.mig_instances,
            })
            .collect();
        Ok(GpuInventory { gpus, driver_version: "simulated".into(), cuda_version: "simulated".into() })
    }

    fn samples(&self) -> Result<Vec<GpuSample>, BackendError> {
        Ok(self
            .read()?
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| GpuSample {
                index: i as u32,
                uuid: g.uuid.clone(),
                memory_used_bytes: g.memory_used_bytes,
                memory_free_bytes: g.memory_total_bytes.saturating_sub(g.memory_used_bytes),
                gpu_utilization_percent: g.gpu_utilization_percent,
                memory_utilization_percent: g.memory_utilization_percent,
                temperature_celsius: g.temperature_celsius,
                power_draw_milliwatts: g.power_draw_milliwatts,
                sm_clock_mhz: g.sm_clock_mhz,
                memory_clock_mhz: g.memory_clock_mhz,
                throttle_reasons: g.throttle_reasons.clone(),
                ecc_errors_corrected: g.ecc_errors_corrected,
                ecc_errors_uncorrected: g.ecc_errors_uncorrected,
                retired_pages: g.retired_pages,
                pcie_replay_count: g.pcie_replay_count,
                xid_events: g.xid_events.clone(),
                xid_count: g.xid_events.len() as u64,
                container: String::new(),
                remapped_rows_correctable: g.remapped_rows_correctable,
                remapped_rows_uncorrectable: g.remapped_rows_uncorrectable,
                remapping_pending: g.remapping_pending,
            })
            .collect())
    }

    fn processes(&self) -> Result<Vec<GpuProcessUse>, BackendError> {
        Ok(self
            .read()?
            .processes
            .into_iter()
            .map(|p| GpuProcessUse { pid: p.pid, gpu_uuid: p.gpu_uuid, used_memory_bytes: p.used_memory_bytes })
            .collect())
    }

    fn kernel_pci_bus_ids(&self) -> Result<Vec<String>, BackendError> {
        let file = self.read()?;
        Ok(file.kernel_pci_bus_ids.unwrap_or_else(|| file.gpus.iter().map(|g| g.pci_bus_id.clone()).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gpus.json");
        let backend = SimulatedBackend::new(file.clone());
        let err = backend.inventory().unwrap_err();
        assert!(matches!(err, BackendError::SimulatedRead { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("{}: No such file or directory (os error 2)", file.display()));
        std::fs::write(&file, "{").unwrap();
        let err = backend.samples().unwrap_err();
        assert!(matches!(err, BackendError::SimulatedParse { .. }), "{err:?}");
        assert!(err.to_string().starts_with(&format!("{}: EOF", file.display())), "{err}");
    }
}
