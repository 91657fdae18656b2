//! `[docker.workload]`: what GPU jobs need beyond CPU, memory and GPUs (`/dev/shm`, ulimits,
//! IPC), each the value a create gets when it does not ask and the bound of what it may ask;
//! and the NVIDIA driver capabilities a create may ask for (`[docker.gpu_config]`).

use serde::{Deserialize, Serialize};

use super::error::Issues;
use super::values::Fraction;

/// RLIMIT_NOFILE can go no higher than the kernel's `fs.nr_open`, 1048576 unless raised.
pub const MAX_NOFILE: u64 = 1 << 20;
/// The least RLIMIT_MEMLOCK and RLIMIT_STACK a config or a request may set, bytes.
pub const MIN_RLIMIT_BYTES: i64 = 64 << 10;
/// The least RLIMIT_NOFILE a config or a request may set: below it shells and runtimes break.
pub const MIN_NOFILE: u64 = 64;

/// `[docker.workload]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadConfig {
    /// `/dev/shm` of a container that does not ask for a size, as a share of its memory, in
    /// (0, 1]. It is a tmpfs, so what is written there counts against the container's memory,
    /// and a request may ask for up to all of it (PyTorch's DataLoader workers and NCCL need
    /// far more than Docker's 64 MiB).
    pub shm_fraction: Fraction,
    /// RLIMIT_MEMLOCK (soft and hard), bytes, or -1 for unlimited (pinned host memory for CUDA
    /// copies, NCCL and RDMA): what a container gets unless it asks for less, and the most it
    /// may ask for.
    pub memlock: i64,
    /// RLIMIT_NOFILE, 64 to 1048576 (the kernel's default `fs.nr_open`): the default and the
    /// most a container may ask for.
    pub nofile: u64,
    /// RLIMIT_STACK, bytes, or -1 for unlimited: the default and the most a container may ask
    /// for (NVIDIA's containers ask for 64 MiB).
    pub stack: i64,
    /// IPC namespaces a create may ask for: `private` (what a create gets when it does not ask)
    /// and `shareable` (another container could join it; the executor never makes one that
    /// does). Must list `private`.
    pub ipc_modes: Vec<IpcMode>,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            shm_fraction: Fraction::new(0.5),
            memlock: -1,
            nofile: MAX_NOFILE,
            stack: 64 << 20,
            ipc_modes: vec![IpcMode::Private, IpcMode::Shareable],
        }
    }
}

/// An IPC mode a tenant container may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpcMode {
    Private,
    Shareable,
}

impl IpcMode {
    /// Docker's name for it (`HostConfig.IpcMode`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Shareable => "shareable",
        }
    }

    /// The mode Docker names `name`, if it is one of ours.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Private, Self::Shareable].into_iter().find(|m| m.as_str() == name)
    }
}

/// A capability of the NVIDIA driver a container may be given (`NVIDIA_DRIVER_CAPABILITIES`);
/// `all` is never one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverCapability {
    /// CUDA and OpenCL.
    Compute,
    /// `nvidia-smi` and NVML.
    Utility,
    /// The video engines (NVENC, NVDEC).
    Video,
    /// OpenGL and Vulkan.
    Graphics,
    /// X11 display.
    Display,
    /// 32-bit libraries.
    Compat32,
}

impl DriverCapability {
    pub const ALL: [Self; 6] =
        [Self::Compute, Self::Utility, Self::Video, Self::Graphics, Self::Display, Self::Compat32];

    /// The NVIDIA container toolkit's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compute => "compute",
            Self::Utility => "utility",
            Self::Video => "video",
            Self::Graphics => "graphics",
            Self::Display => "display",
            Self::Compat32 => "compat32",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// `[docker.gpu_config] driver_capabilities` unless set: CUDA and `nvidia-smi`, nothing that
/// reaches the display, the video engines or 32-bit libraries.
pub fn default_driver_capabilities() -> Vec<DriverCapability> {
    vec![DriverCapability::Compute, DriverCapability::Utility]
}

/// An rlimit in bytes: -1 (unlimited) or at least [`MIN_RLIMIT_BYTES`].
pub fn rlimit_bytes_ok(value: i64) -> bool {
    value == -1 || value >= MIN_RLIMIT_BYTES
}

impl WorkloadConfig {
    pub(super) fn validate(&self, v: &mut Issues) {
        v.check("docker.workload.shm_fraction", &self.shm_fraction);
        for (key, value) in [("docker.workload.memlock", self.memlock), ("docker.workload.stack", self.stack)] {
            if !rlimit_bytes_ok(value) {
                v.fail(key, format!("{value} is neither -1 (unlimited) nor at least {MIN_RLIMIT_BYTES} bytes"));
            }
        }
        v.range("docker.workload.nofile", self.nofile as f64, MIN_NOFILE as f64, MAX_NOFILE as f64);
        if !self.ipc_modes.contains(&IpcMode::Private) {
            v.fail("docker.workload.ipc_modes", "must list \"private\", what a create gets when it does not ask");
        }
    }
}
