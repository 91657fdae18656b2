//! Facts about the machine a report claims: the GPUs (NVML, loaded at run time) and the host.

use nvml_wrapper::error::NvmlError;
use serde::{Deserialize, Serialize};

/// One GPU as NVML describes it. Claims: they choose the expected time limits; the proof and the
/// validator's clock decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuFacts {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub pci_bus_id: String,
    pub memory_bytes: u64,
    pub compute_capability: String,
    /// CUDA cores as NVML counts them (the SM count comes from the CUDA backend).
    pub cuda_cores: u32,
    pub max_sm_clock_mhz: u32,
    pub max_memory_clock_mhz: u32,
    pub power_limit_mw: u32,
    pub driver_version: String,
    pub cuda_version: String,
    /// "enabled", "disabled", or "unknown" where NVML does not say.
    pub mig_mode: String,
}

/// The host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFacts {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpu_cores: u32,
    pub memory_bytes: u64,
}

/// Why NVML lists no GPUs.
#[derive(Debug, thiserror::Error)]
pub enum GpuFactsError {
    #[error("NVML unavailable: {0}")]
    Unavailable(#[source] NvmlError),
    #[error("NVML device count: {0}")]
    DeviceCount(#[source] NvmlError),
    #[error("GPU {index}: {source}")]
    Device { index: u32, source: NvmlError },
}

/// GPUs through NVML, or why there are none.
pub fn gpus() -> Result<Vec<GpuFacts>, GpuFactsError> {
    let nvml = nvml_wrapper::Nvml::init().map_err(GpuFactsError::Unavailable)?;
    let count = nvml.device_count().map_err(GpuFactsError::DeviceCount)?;
    let driver_version = nvml.sys_driver_version().unwrap_or_default();
    let cuda_version =
        nvml.sys_cuda_driver_version().map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10)).unwrap_or_default();
    (0..count)
        .map(|index| {
            let d = nvml.device_by_index(index).map_err(|source| GpuFactsError::Device { index, source })?;
            let cc = d.cuda_compute_capability().map(|c| format!("{}.{}", c.major, c.minor)).unwrap_or_default();
            use nvml_wrapper::enum_wrappers::device::Clock;
            Ok(GpuFacts {
                index,
                uuid: d.uuid().unwrap_or_default(),
                name: d.name().unwrap_or_default(),
                pci_bus_id: d.pci_info().map(|p| p.bus_id).unwrap_or_default(),
                memory_bytes: d.memory_info().map(|m| m.total).unwrap_or_default(),
                compute_capability: cc,
                cuda_cores: d.num_cores().unwrap_or_default(),
                max_sm_clock_mhz: d.max_clock_info(Clock::SM).unwrap_or_default(),
                max_memory_clock_mhz: d.max_clock_info(Clock::Memory).unwrap_or_default(),
                power_limit_mw: d.enforced_power_limit().unwrap_or_default(),
                driver_version: driver_version.clone(),
                cuda_version: cuda_version.clone(),
                mig_mode: match d.mig_mode() {
                    Ok(mode) if mode.current == 1 => "enabled".into(),
                    Ok(_) => "disabled".into(),
                    Err(_) => "unknown".into(),
                },
            })
        })
        .collect()
}

/// The host, from /proc and uname.
pub fn host() -> HostFacts {
    let uname = nix::sys::utsname::uname().ok();
    let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
        uname.as_ref().map(|u| f(u).to_string_lossy().into_owned()).unwrap_or_default()
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
        .unwrap_or_default();
    HostFacts {
        hostname: field(|u| u.nodename()),
        os,
        kernel: field(|u| u.release()),
        cpu_model,
        cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_bytes: meminfo("MemTotal:").unwrap_or(0),
    }
}

/// A `/proc/meminfo` field in bytes.
pub fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Memory this process may still take: `MemAvailable`, or less when its cgroup's limit (a
/// validator's command runs in one with `validator.command_max_memory_bytes`) leaves less.
pub fn available_memory() -> u64 {
    let host = meminfo("MemAvailable:").unwrap_or(u64::MAX);
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| cgroup_memory_left(&text, |path| std::fs::read_to_string(path).ok()));
    cgroup.map_or(host, |left| host.min(left))
}

/// What this process's memory cgroup leaves (limit minus usage), from the text of
/// `/proc/self/cgroup` and a reader of files, at the usual mount points (`/sys/fs/cgroup` for
/// v2, `/sys/fs/cgroup/memory` for v1); None without a limit.
fn cgroup_memory_left(cgroup: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    let number = |path: String| read(&path).and_then(|t| t.trim().parse::<u64>().ok());
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_end_matches('/');
        let (limit, usage) = if controllers.is_empty() {
            let dir = format!("/sys/fs/cgroup{path}");
            (number(format!("{dir}/memory.max")), number(format!("{dir}/memory.current")))
        } else if controllers.split(',').any(|c| c == "memory") {
            let dir = format!("/sys/fs/cgroup/memory{path}");
            (number(format!("{dir}/memory.limit_in_bytes")), number(format!("{dir}/memory.usage_in_bytes")))
        } else {
            continue;
        };
        // v1 shows "no limit" as a huge number; v2 as `max`, which does not parse.
        if let Some(limit) = limit.filter(|l| *l < 1 << 60) {
            return Some(limit.saturating_sub(usage.unwrap_or(0)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cgroup_bounds_what_is_available() {
        let files = |path: &str| match path {
            "/sys/fs/cgroup/x/y/memory.max" => Some("67108864\n".to_owned()),
            "/sys/fs/cgroup/x/y/memory.current" => Some("1048576\n".to_owned()),
            "/sys/fs/cgroup/memory/a/memory.limit_in_bytes" => Some("2097152\n".to_owned()),
            "/sys/fs/cgroup/memory/a/memory.usage_in_bytes" => Some("1048576\n".to_owned()),
            "/sys/fs/cgroup/memory/b/memory.limit_in_bytes" => Some("9223372036854771712\n".to_owned()),
            "/sys/fs/cgroup/z/memory.max" => Some("max\n".to_owned()),
            _ => None,
        };
        assert_eq!(cgroup_memory_left("0::/x/y\n", files), Some(63 << 20));
        assert_eq!(cgroup_memory_left("5:pids:/p\n4:memory:/a\n0::/\n", files), Some(1 << 20));
        assert_eq!(cgroup_memory_left("4:memory:/b\n", files), None);
        assert_eq!(cgroup_memory_left("0::/z\n", files), None);
        assert!(available_memory() > 0);
    }
}
