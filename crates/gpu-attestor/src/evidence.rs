//! Evidence (GPOW.md, "Evidence"): facts about how the GPUs are presented to this process, signed
//! in `hello` and the report for validators to adopt shadow-first. None decides a verdict; each is
//! reported as found, with empty strings, `false` and empty lists where a fact is absent.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The kernel's list of NVIDIA GPUs, one directory per PCI address.
const PROC_DRIVER_GPUS: &str = "/proc/driver/nvidia/gpus";
/// Longest text kept from a file read for evidence (`/etc/ld.so.preload`, DMI fields).
const MAX_TEXT: u64 = 4096;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Entries of `/proc/driver/nvidia/gpus`, sorted.
    pub proc_driver_gpus: Vec<String>,
    /// Whether that path is on a real procfs (a bind-mounted fake is not).
    pub proc_driver_is_procfs: bool,
    /// The `libnvidia-ml.so` this process loaded, resolved, and its SHA-256; empty when none.
    pub nvml_library_path: String,
    pub nvml_library_sha256: String,
    /// `LD_PRELOAD` of this process.
    pub ld_preload: String,
    /// `/etc/ld.so.preload`, trimmed.
    pub ld_so_preload: String,
    /// The CPUID hypervisor bit, as the kernel reports it (`hypervisor` in `/proc/cpuinfo`).
    pub cpu_hypervisor: bool,
    pub dmi_sys_vendor: String,
    pub dmi_product_name: String,
    pub gpus: Vec<GpuEvidence>,
    /// Processes on the GPUs, with the container each belongs to (empty: none).
    pub gpu_processes: Vec<GpuProcess>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuEvidence {
    pub index: u32,
    pub serial: String,
    pub board_part_number: String,
    pub vbios_version: String,
    pub default_power_limit_mw: u32,
    pub enforced_power_limit_mw: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuProcess {
    pub gpu_index: u32,
    pub pid: u32,
    pub used_memory_bytes: u64,
    /// The Docker container id from the process's cgroup; empty for a process in no container.
    pub container_id: String,
}

/// At most [`MAX_TEXT`] bytes of a file, trimmed; empty when it cannot be read.
fn read_text(path: impl AsRef<Path>) -> String {
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_TEXT).read_to_string(&mut text);
    }
    text.trim().to_owned()
}

fn sha256_file(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return hex::encode(hasher.finalize()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(_) => return String::new(),
        }
    }
}

/// The mapped `libnvidia-ml` of this process, from `/proc/self/maps`.
fn loaded_nvml(maps: &str) -> Option<String> {
    maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.contains("libnvidia-ml")).map(str::to_owned)
}

/// A 64-hex-digit container id in a `/proc/PID/cgroup` text (`/docker/ID`, `docker-ID.scope`).
pub fn container_of(cgroup: &str) -> String {
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        for part in path.split('/').rev() {
            let id = part.strip_prefix("docker-").unwrap_or(part).trim_end_matches(".scope");
            if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return id.to_owned();
            }
        }
    }
    String::new()
}

/// Collects the evidence of this machine and process. NVML is asked when it loads; its absence
/// leaves the GPU fields empty.
pub fn collect() -> Evidence {
    let mut proc_driver_gpus: Vec<String> = std::fs::read_dir(PROC_DRIVER_GPUS)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    proc_driver_gpus.sort();
    let proc_driver_is_procfs = nix::sys::statfs::statfs(PROC_DRIVER_GPUS)
        .map(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
        .unwrap_or(false);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_hypervisor = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == "hypervisor"));
    let mut evidence = Evidence {
        proc_driver_gpus,
        proc_driver_is_procfs,
        ld_preload: std::env::var("LD_PRELOAD").unwrap_or_default(),
        ld_so_preload: read_text("/etc/ld.so.preload"),
        cpu_hypervisor,
        dmi_sys_vendor: read_text("/sys/class/dmi/id/sys_vendor"),
        dmi_product_name: read_text("/sys/class/dmi/id/product_name"),
        ..Evidence::default()
    };
    let Ok(nvml) = nvml_wrapper::Nvml::init() else { return evidence };
    if let Some(path) = loaded_nvml(&std::fs::read_to_string("/proc/self/maps").unwrap_or_default()) {
        evidence.nvml_library_sha256 = sha256_file(Path::new(&path));
        evidence.nvml_library_path = path;
    }
    for index in 0..nvml.device_count().unwrap_or(0) {
        let Ok(d) = nvml.device_by_index(index) else { continue };
        evidence.gpus.push(GpuEvidence {
            index,
            serial: d.serial().unwrap_or_default(),
            board_part_number: d.board_part_number().unwrap_or_default(),
            vbios_version: d.vbios_version().unwrap_or_default(),
            default_power_limit_mw: d.power_management_limit_default().unwrap_or_default(),
            enforced_power_limit_mw: d.enforced_power_limit().unwrap_or_default(),
        });
        for p in d.running_compute_processes().unwrap_or_default() {
            let used_memory_bytes = match p.used_gpu_memory {
                nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => b,
                nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => 0,
            };
            let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid)).unwrap_or_default();
            evidence.gpu_processes.push(GpuProcess {
                gpu_index: index,
                pid: p.pid,
                used_memory_bytes,
                container_id: container_of(&cgroup),
            });
        }
    }
    evidence
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_are_found_in_v1_and_v2_cgroups() {
        let id = "a".repeat(64);
        assert_eq!(container_of(&format!("0::/system.slice/docker-{id}.scope\n")), id);
        assert_eq!(container_of(&format!("12:memory:/docker/{id}\n0::/\n")), id);
        assert_eq!(container_of("0::/user.slice/user-0.slice/session-1.scope\n"), "");
        assert_eq!(container_of(&format!("0::/docker/{}\n", "g".repeat(64))), "");
    }

    #[test]
    fn the_loaded_nvml_is_read_from_the_maps() {
        let maps = "7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n\
                    7f02-7f03 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54\n";
        assert_eq!(loaded_nvml(maps).as_deref(), Some("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54"));
        assert_eq!(loaded_nvml("7f00-7f01 r-xp 0 08:01 1 [vdso]\n"), None);
    }

    #[test]
    fn this_machine_gives_evidence_without_a_gpu() {
        let e = collect();
        // Without the driver there is no list, and so no procfs entry to vouch for it.
        if !Path::new(PROC_DRIVER_GPUS).exists() {
            assert!(e.proc_driver_gpus.is_empty() && !e.proc_driver_is_procfs);
        }
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Evidence>(&json).unwrap(), e);
    }
}
