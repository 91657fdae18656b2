//! What the kernel knows, independent of NVML: the GPUs the driver registered
//! (`/proc/driver/nvidia/gpus/<pci bus id>`), and which container a process belongs to (its
//! cgroup). A shimmed `libnvidia-ml` can claim any GPU; it cannot change these.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub const PROC_NVIDIA_GPUS: &str = "/proc/driver/nvidia/gpus";

/// Why the kernel driver's GPU list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{}: {source}", dir.display())]
    ReadDir { dir: PathBuf, source: std::io::Error },
}

/// The PCI bus ids listed by the NVIDIA kernel driver; none when the driver is not loaded.
pub fn proc_gpu_bus_ids(dir: &Path) -> Result<Vec<String>, KernelError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            Ok(entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(KernelError::ReadDir { dir: dir.to_owned(), source }),
    }
}

/// `00000000:17:00.0` (NVML) and `0000:17:00.0` (kernel) are the same device: compare the
/// last four domain digits, lower case.
pub fn normalize_bus_id(id: &str) -> String {
    let id = id.trim().to_lowercase();
    match id.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 => format!("{}:{rest}", &domain[domain.len() - 4..]),
        _ => id,
    }
}

/// Whether the kernel's list holds `bus_id`.
pub fn lists(kernel: &[String], bus_id: &str) -> bool {
    let wanted = normalize_bus_id(bus_id);
    kernel.iter().any(|k| normalize_bus_id(k) == wanted)
}

/// Whether the backend's GPUs and the kernel's disagree.
pub fn mismatch(backend: &[String], kernel: &[String]) -> bool {
    let a: BTreeSet<String> = backend.iter().map(|s| normalize_bus_id(s)).collect();
    let b: BTreeSet<String> = kernel.iter().map(|s| normalize_bus_id(s)).collect();
    a != b
}

/// The Docker container id (first 12 hex digits) a process runs in, from `/proc/<pid>/cgroup`:
/// cgroup v2 `.../docker-<id>.scope` (systemd driver) or `/docker/<id>` (cgroupfs driver).
pub fn container_of(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        let path = line.rsplit(':').next().unwrap_or_default();
        for part in path.split('/') {
            let id = part.strip_prefix("docker-").and_then(|p| p.strip_suffix(".scope")).unwrap_or(part);
            if id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()) {
                return Some(id[..12].to_owned());
            }
        }
    }
    None
}

/// [`container_of`] for a running process; None when it is not in a container or is gone.
pub fn container_of_pid(pid: u32) -> Option<String> {
    container_of(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_compare_across_formats() {
        assert!(!mismatch(&["00000000:17:00.0".into()], &["0000:17:00.0".into()]));
        assert!(mismatch(&["00000000:17:00.0".into()], &[]));
        assert!(mismatch(&[], &["0000:17:00.0".into()]));
        assert!(!mismatch(&[], &[]));
    }

    #[test]
    fn finds_the_container_of_a_cgroup() {
        let id = "a".repeat(64);
        assert_eq!(container_of(&format!("0::/system.slice/docker-{id}.scope\n")), Some("a".repeat(12)));
        assert_eq!(container_of(&format!("12:memory:/docker/{id}\n0::/\n")), Some("a".repeat(12)));
        assert_eq!(container_of("0::/user.slice/user-0.slice/session-1.scope\n"), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("0000:17:00.0")).unwrap();
        assert_eq!(proc_gpu_bus_ids(dir.path()).unwrap(), vec!["0000:17:00.0".to_owned()]);
        assert!(proc_gpu_bus_ids(&dir.path().join("missing")).unwrap().is_empty());
    }
}
