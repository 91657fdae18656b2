//! `[docker]` and its tables but the registry: the engine socket, tenant container limits,
//! networks and GPUs (container-runtime), with their checks.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::Issues;
use super::images::ImagesConfig;
use super::ports::PortsConfig;
use super::registry::RegistryConfig;
use super::templates::Template;
use super::values::{ByteSize, Fraction, InvalidValue, human_duration};
use super::volumes::VolumesConfig;
use super::workload::{DriverCapability, WorkloadConfig, default_driver_capabilities};

/// `[docker]`: tenant containers (container-runtime).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// Docker engine endpoint: `unix:///path/to/docker.sock`.
    pub socket: String,
    /// `exclusive`: this executor owns the host's GPUs and makes the tenant containers (it
    /// refuses to start where the kubelet runs the NVIDIA device plugin, which would hand the
    /// same GPUs out). `agent-only`: under an orchestrator that places the workloads itself
    /// (Kubernetes with the NVIDIA device plugin): telemetry, health, validator access, GPU
    /// attestation and capacity, but no container is created (creates are FAILED_PRECONDITION).
    pub mode: DockerMode,
    /// Where the kubelet keeps device plugin sockets; in `exclusive` mode a socket of the
    /// NVIDIA plugin here (a name starting `nvidia`), or `nvidia.com/gpu` in the kubelet's
    /// checkpoint file, stops container-runtime from starting.
    pub device_plugins_dir: PathBuf,
    /// Give tenant containers GPUs. Off by default: no GPU leaves the host unless asked.
    pub enable_gpu_passthrough: bool,
    /// Containers running at once; creates past it fail with RESOURCE_EXHAUSTED.
    pub max_concurrent_containers: u32,
    pub resource_limits: ResourceLimits,
    pub network_config: NetworkConfig,
    pub ports: PortsConfig,
    pub workload: WorkloadConfig,
    pub volumes: VolumesConfig,
    pub images: ImagesConfig,
    /// Ready-made creates, `[docker.templates.<name>]`, chosen by `CreateContainerRequest.template`:
    /// `image`, `command`, `env`, `ports` (`"8888"`, `"6006/udp"`), `shm_bytes` and
    /// `volume_paths` fill what the request leaves empty (its `env` is added to, the request
    /// winning on a name; its `volumes[i]` without a path go to `volume_paths[i]`). What comes
    /// from a template is checked like the request's own fields, against the same bounds.
    pub templates: BTreeMap<String, Template>,
    pub gpu_config: GpuConfig,
    pub registry: RegistryConfig,
    /// How often expired containers (TTL) and leftover networks are reaped.
    #[serde(with = "human_duration")]
    pub reap_interval: Duration,
    /// Host directories tenants may bind-mount (each with what lies below it); empty: no host
    /// path is ever mounted. `data_dir` and `runtime_dir` are never mountable. Each source is
    /// opened without following symlinks and bind-mounted, `nosuid,nodev`, onto a staging path
    /// under `runtime_dir` that Docker mounts, so a tenant cannot swap it between check and use.
    pub allowed_host_paths: Vec<PathBuf>,
    /// Largest log file of a container (Docker's `json-file` driver `max-size`), bytes.
    pub log_max_size: ByteSize,
    /// Log files kept per container (`max-file`): a container's logs never take more than
    /// `log_max_size × log_max_files` of the host's disk.
    pub log_max_files: u32,
    /// Capabilities tenant containers get beyond CHOWN, SETGID, SETUID and NET_BIND_SERVICE, from
    /// Docker's default set: `DAC_OVERRIDE` and `FOWNER` (root in the container ignoring file
    /// permissions and owners, which some images expect), `FSETID`, `KILL`, `SYS_CHROOT`.
    pub extra_capabilities: Vec<Capability>,
}

/// `[docker] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DockerMode {
    Exclusive,
    AgentOnly,
}

/// What in `dir` (`[docker] device_plugins_dir`) says the kubelet advertises `nvidia.com/gpu`:
/// a device plugin socket whose name starts `nvidia`, or the resource in the kubelet's
/// checkpoint; None when nothing does (or the directory is not there).
pub fn nvidia_device_plugin(dir: &Path) -> Option<String> {
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.to_ascii_lowercase().starts_with("nvidia") {
            return Some(dir.join(name).display().to_string());
        }
    }
    let checkpoint = dir.join("kubelet_internal_checkpoint");
    let text = std::fs::read_to_string(&checkpoint).ok()?;
    text.contains("nvidia.com/gpu").then(|| format!("{} (nvidia.com/gpu)", checkpoint.display()))
}

/// A capability `[docker] extra_capabilities` may add: only ones of Docker's default set that
/// touch nothing outside the container's own files and processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Capability {
    DacOverride,
    Fowner,
    Fsetid,
    Kill,
    SysChroot,
}

impl Capability {
    /// Docker's name for it (`CAP_` left off).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DacOverride => "DAC_OVERRIDE",
            Self::Fowner => "FOWNER",
            Self::Fsetid => "FSETID",
            Self::Kill => "KILL",
            Self::SysChroot => "SYS_CHROOT",
        }
    }
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            reap_interval: Duration::from_secs(10),
            allowed_host_paths: Vec::new(),
            log_max_size: ByteSize::new(10 << 20),
            log_max_files: 3,
            extra_capabilities: Vec::new(),
            socket: "unix:///var/run/docker.sock".to_owned(),
            mode: DockerMode::Exclusive,
            device_plugins_dir: PathBuf::from("/var/lib/kubelet/device-plugins"),
            enable_gpu_passthrough: false,
            max_concurrent_containers: 10,
            resource_limits: ResourceLimits::default(),
            network_config: NetworkConfig::default(),
            ports: PortsConfig::default(),
            workload: WorkloadConfig::default(),
            volumes: VolumesConfig::default(),
            images: ImagesConfig::default(),
            templates: BTreeMap::new(),
            gpu_config: GpuConfig::default(),
            registry: RegistryConfig::default(),
        }
    }
}

/// `[docker.resource_limits]`: the most any one tenant container gets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceLimits {
    /// Memory (and memory + swap, so no swap) per container, bytes.
    pub memory_bytes: ByteSize,
    /// CPU cores per container (fractions allowed).
    pub cpu_cores: f64,
    /// GPU memory per container, bytes; a container above it is stopped.
    pub gpu_memory_bytes: ByteSize,
    /// Read and write bytes/s on the device behind Docker's data root.
    pub disk_io_bps: u64,
    /// Bytes/s each way on the container's network interface.
    pub network_bps: u64,
    /// The container's writable layer (what it writes outside its volumes and tmpfs), bytes;
    /// measured every `reap_interval`, a container over it is stopped (`disk_quota`). A create
    /// may ask for less (`resources.disk_bytes`).
    pub writable_layer_bytes: ByteSize,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        Self {
            memory_bytes: ByteSize::new(8 << 30),
            cpu_cores: 4.0,
            gpu_memory_bytes: ByteSize::new(4 << 30),
            disk_io_bps: 100 << 20,
            network_bps: 100 << 20,
            writable_layer_bytes: ByteSize::new(20 << 30),
        }
    }
}

/// `[docker.network_config]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Each container on its own bridge network.
    pub enable_isolation: bool,
    /// Egress to the internet (never to private, link-local or other reserved ranges); false:
    /// a tenant opens no connection at all, while its published ports still answer. Needs
    /// `enable_isolation`.
    pub allow_internet: bool,
    /// DNS servers for containers; empty means Docker's default.
    pub dns_servers: Vec<IpAddr>,
    /// With isolation: networks kept made ahead of time, each with a running holder whose
    /// network namespace a create without published ports joins, so a create waits neither for
    /// a network (about 120 ms) nor for a namespace of its own (about 170 ms of its start);
    /// removed on shutdown. 0 makes each create make its own.
    pub spare_networks: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self { enable_isolation: true, allow_internet: false, dns_servers: Vec::new(), spare_networks: 2 }
    }
}

/// `[docker.gpu_config]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuConfig {
    /// GPUs tenants may be given: `"all"`, or a comma-separated list of indices or UUIDs.
    pub visible_devices: String,
    /// Share of each GPU's memory a container may use, in (0, 1].
    pub memory_fraction: Fraction,
    /// NVIDIA driver capabilities (`NVIDIA_DRIVER_CAPABILITIES`) a create may ask for, from
    /// `compute`, `utility`, `video`, `graphics`, `display`, `compat32` (never `all`). A create
    /// that does not ask gets `compute` and `utility`, those of them listed here.
    pub driver_capabilities: Vec<DriverCapability>,
    /// What happens to a running container whose GPU turns unhealthy (a critical Xid, new
    /// uncorrectable ECC errors, a pending row remap, the GPU gone): `stop` it, its
    /// `stop_reason` saying `gpu_error: ...` (the work on it is lost either way), or only `flag`
    /// it (log, metric, the GPU's health in Capacity) and leave it to the miner.
    pub on_gpu_error: OnGpuError,
}

/// `[docker.gpu_config] on_gpu_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnGpuError {
    Stop,
    Flag,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            visible_devices: "all".to_owned(),
            memory_fraction: Fraction::new(1.0),
            driver_capabilities: default_driver_capabilities(),
            on_gpu_error: OnGpuError::Stop,
        }
    }
}

/// Parses `[docker.gpu_config] visible_devices`: `all`, or indices and `GPU-` UUIDs (`MIG-`
/// instances are refused by name: GPUs are rented whole).
pub fn parse_visible_devices(value: &str) -> Result<Option<Vec<String>>, InvalidValue> {
    let value = value.trim();
    if value == "all" {
        return Ok(None);
    }
    let mut devices = Vec::new();
    for item in value.split(',').map(str::trim) {
        if item.starts_with("MIG-") {
            return Err(InvalidValue::new(format!(
                "`{item}` is a MIG instance: this executor rents whole GPUs; turn MIG mode off on \
                 that GPU and name it by its `GPU-` UUID or index, or leave it out"
            )));
        }
        let uuid =
            item.starts_with("GPU-") && item.len() > 4 && item[4..].chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if !(uuid || (!item.is_empty() && item.parse::<u32>().is_ok())) {
            return Err(InvalidValue::new(format!(
                "`{item}` is not a GPU index or UUID (expected `all` or e.g. `0,1` or `GPU-...`)"
            )));
        }
        devices.push(item.to_owned());
    }
    Ok(Some(devices))
}

impl DockerConfig {
    /// `state_dirs`: `data_dir` and `runtime_dir`, which no host path may overlap.
    pub(super) fn validate(&self, state_dirs: [&Path; 2], v: &mut Issues) {
        if !self.socket.starts_with("unix:///") {
            v.fail("docker.socket", format!("`{}` must be a unix:///path URL", self.socket));
        }
        v.range("docker.max_concurrent_containers", self.max_concurrent_containers as f64, 1.0, 10_000.0);
        if self.reap_interval < Duration::from_millis(100) {
            v.fail("docker.reap_interval", "must be at least 100ms");
        }
        v.range("docker.network_config.spare_networks", self.network_config.spare_networks as f64, 0.0, 16.0);
        if self.network_config.allow_internet && !self.network_config.enable_isolation {
            v.fail(
                "docker.network_config.allow_internet",
                "`true` needs docker.network_config.enable_isolation = true: without isolation tenants would sit on \
                 Docker's default bridge, where no host firewall rule keeps them from the host's services, the LAN \
                 and the cloud metadata address",
            );
        }
        for path in &self.allowed_host_paths {
            if !path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                v.fail(
                    "docker.allowed_host_paths",
                    format!("`{}` is not an absolute path without `..`", path.display()),
                );
            } else if path == Path::new("/") {
                v.fail("docker.allowed_host_paths", "`/` would give tenants the whole host");
            } else if state_dirs.iter().any(|p| p.starts_with(path) || path.starts_with(p)) {
                v.fail(
                    "docker.allowed_host_paths",
                    format!("`{}` overlaps data_dir or runtime_dir (the executor's keys and sockets)", path.display()),
                );
            }
        }
        let r = &self.resource_limits;
        // Docker refuses less than 6 MiB of memory for a container.
        v.range("docker.resource_limits.memory_bytes", r.memory_bytes.get() as f64, (6 << 20) as f64, 1e15);
        v.range("docker.resource_limits.cpu_cores", r.cpu_cores, 0.01, 4096.0);
        v.range("docker.resource_limits.gpu_memory_bytes", r.gpu_memory_bytes.get() as f64, 1.0, 1e15);
        v.range("docker.resource_limits.disk_io_bps", r.disk_io_bps as f64, 1024.0, 1e13);
        v.range("docker.resource_limits.network_bps", r.network_bps as f64, 1024.0, 1e13);
        v.range(
            "docker.resource_limits.writable_layer_bytes",
            r.writable_layer_bytes.get() as f64,
            (1 << 20) as f64,
            1e15,
        );
        v.range("docker.log_max_size", self.log_max_size.get() as f64, 4096.0, (1u64 << 40) as f64);
        v.range("docker.log_max_files", f64::from(self.log_max_files), 1.0, 100.0);
        if let Err(e) = parse_visible_devices(&self.gpu_config.visible_devices) {
            v.fail("docker.gpu_config.visible_devices", e);
        }
        v.check("docker.gpu_config.memory_fraction", &self.gpu_config.memory_fraction);
        if self.gpu_config.driver_capabilities.is_empty() {
            v.fail("docker.gpu_config.driver_capabilities", "must list at least one capability (e.g. \"compute\")");
        }
        self.workload.validate(v);
        self.volumes.validate(v);
        self.images.validate(v);
        super::templates::validate(&self.templates, v);
        self.registry.validate(v);
        self.ports.validate(v);
    }
}
