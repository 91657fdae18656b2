//! What a tenant asks for ([`ContainerSpec`]), checked against the operator's limits, and the
//! Docker create body built from it, hardened always: never privileged, every capability
//! dropped but a short allow-list, `no-new-privileges`, Docker's built-in seccomp profile pinned
//! and AppArmor's `docker-default` where the host has it (`confinement`), an init process, a
//! size-limited `/tmp`, host bind mounts only from the operator's allow-list and only from
//! `nosuid,nodev` mounts, `NVIDIA_VISIBLE_DEVICES=void` without GPUs, memory with no extra swap, CPU, pids and block-I/O limits, and GPUs
//! only by UUID.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, DeviceRequest, HostConfig, Mount, MountBindOptions, MountBindOptionsPropagationEnum,
    MountType, PortBinding, ThrottleDevice,
};
use common::config::{Capability, ResourceLimits};

use crate::labels::{
    LABEL_CREATED, LABEL_DISK, LABEL_EXECUTOR, LABEL_GPU_MEMORY, LABEL_GPUS, LABEL_ID, LABEL_MANAGED, LABEL_NETWORK,
    LABEL_NETWORK_BPS, LABEL_OWNER, LABEL_TTL, LABEL_WATCHTOWER_ENABLE, TENANT_LABEL_PREFIX,
};
use crate::reference::ImageRef;

/// Capabilities a tenant keeps (Docker's default set minus everything that touches the host,
/// the network stack, other processes or other users' files): enough for images that drop root
/// to a user. `[docker] extra_capabilities` adds to them.
pub const CAPABILITIES: [&str; 4] = ["CHOWN", "SETGID", "SETUID", "NET_BIND_SERVICE"];

/// What every container gets from the host beyond its spec: the `security_opt` entries (see
/// `confinement`: `no-new-privileges`, seccomp pinned, AppArmor) and the capabilities kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardening {
    pub security_opt: Vec<String>,
    pub capabilities: Vec<String>,
}

impl Hardening {
    /// [`CAPABILITIES`] and `extra` (the config's allow-listed names).
    pub fn new(security_opt: Vec<String>, extra: &[Capability]) -> Self {
        let mut capabilities: Vec<String> = CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
        for c in extra {
            if !capabilities.iter().any(|have| have == c.as_str()) {
                capabilities.push(c.as_str().to_owned());
            }
        }
        Self { security_opt, capabilities }
    }
}

/// `NVIDIA_VISIBLE_DEVICES` of a container without GPUs. Where the NVIDIA runtime is Docker's
/// default runtime it gives a container whatever this variable names, and images set it
/// (`ENV NVIDIA_VISIBLE_DEVICES=all` in every `nvidia/cuda` image): `void` gives none.
pub const NO_GPUS: &str = "void";
/// Tenant environment keys starting with this are refused: the NVIDIA runtime reads them.
pub const NVIDIA_ENV_PREFIX: &str = "NVIDIA_";

/// The least writable-layer limit a create may ask for.
pub const MIN_DISK_BYTES: u64 = 1 << 20;
/// Processes per container unless the request asks for fewer.
pub const DEFAULT_PIDS: u64 = 4096;
/// `/tmp` inside every container.
pub const TMPFS_TMP: &str = "rw,noexec,nosuid,nodev,size=256m";

/// Resources one container asks for; zero means "the configured limit".
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub memory_bytes: u64,
    pub cpu_cores: f64,
    pub disk_io_bps: u64,
    pub network_bps: u64,
    pub gpu_memory_bytes: u64,
    pub pids: u64,
    /// The writable layer's limit.
    pub disk_bytes: u64,
}

/// A host directory bind-mounted into the container, after the allow-list check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Canonical host path (symlinks resolved).
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

pub use crate::ports::Port;
use crate::volumes::Attached;
use crate::workload::Workload;

/// A container as the tenant asked for it, after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Our id (label `ai.basilica.executor.id`), also the container name.
    pub id: String,
    pub image: ImageRef,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<Port>,
    pub mounts: Vec<BindMount>,
    pub resources: Resources,
    pub gpu_uuids: Vec<String>,
    pub ttl: Option<Duration>,
    pub owner: String,
    /// Unix seconds.
    pub created_at: u64,
    /// `[docker.network_config] dns_servers`.
    pub dns: Vec<std::net::IpAddr>,
    /// The container's own network, when it has one.
    pub network: Option<String>,
    /// `[docker.ports] host_ip`: where the host ports are bound (None: every address).
    pub publish_ip: Option<std::net::IpAddr>,
    /// `/dev/shm`, ulimits, IPC, entrypoint, working directory, user, driver capabilities.
    pub workload: Workload,
    /// Named volumes, each with the host path it is mounted on.
    pub volumes: Vec<(Attached, PathBuf)>,
}

/// A request that cannot be honoured, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

/// A bind mount that cannot be had, naming the field `mounts[i].…`.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Off the allow-list, over the executor's own directories, or not a clean path.
    #[error(transparent)]
    Refused(SpecError),
    /// The host path does not resolve; the OS's words are the `source`.
    #[error("{field}: `{host_path}` does not exist or cannot be read")]
    Unresolvable { field: String, host_path: String, source: std::io::Error },
}

impl From<crate::workload::WorkloadError> for SpecError {
    fn from(e: crate::workload::WorkloadError) -> Self {
        Self { field: e.field, message: e.message }
    }
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), message: message.into() }
}

impl ContainerSpec {
    /// Checks the request against the operator's limits and fills in the limits it left at 0.
    /// `host_cpus` caps CPU: Docker refuses more CPUs than the host has.
    pub fn apply_limits(&mut self, limits: &ResourceLimits, host_cpus: f64) -> Result<(), SpecError> {
        let r = &mut self.resources;
        let over = |field: &str, asked: String, limit: String| {
            field_error(format!("resources.{field}"), format!("{asked} is more than the limit of {limit}"))
        };
        if r.memory_bytes == 0 {
            r.memory_bytes = limits.memory_bytes.get();
        } else if r.memory_bytes > limits.memory_bytes.get() {
            return Err(over("memory_bytes", r.memory_bytes.to_string(), limits.memory_bytes.to_string()));
        } else if r.memory_bytes < 6 << 20 {
            return Err(field_error("resources.memory_bytes", "must be at least 6 MiB (Docker's minimum)"));
        }
        if !r.cpu_cores.is_finite() || r.cpu_cores < 0.0 {
            return Err(field_error("resources.cpu_cores", format!("{} is not a CPU count", r.cpu_cores)));
        } else if r.cpu_cores == 0.0 {
            r.cpu_cores = limits.cpu_cores.min(host_cpus);
        } else if r.cpu_cores > limits.cpu_cores {
            return Err(over("cpu_cores", r.cpu_cores.to_string(), limits.cpu_cores.to_string()));
        } else if r.cpu_cores > host_cpus {
            return Err(field_error(
                "resources.cpu_cores",
                format!("{} is more than this host's {host_cpus} CPUs", r.cpu_cores),
            ));
        } else if r.cpu_cores < 0.01 {
            return Err(field_error("resources.cpu_cores", "must be at least 0.01"));
        }
        for (field, asked, limit) in [
            ("disk_io_bps", &mut r.disk_io_bps, limits.disk_io_bps),
            ("network_bps", &mut r.network_bps, limits.network_bps),
            ("gpu_memory_bytes", &mut r.gpu_memory_bytes, limits.gpu_memory_bytes.get()),
        ] {
            if *asked == 0 {
                *asked = limit;
            } else if *asked > limit {
                return Err(over(field, asked.to_string(), limit.to_string()));
            }
        }
        let disk = limits.writable_layer_bytes.get();
        if r.disk_bytes == 0 {
            r.disk_bytes = disk;
        } else if r.disk_bytes > disk {
            return Err(over("disk_bytes", r.disk_bytes.to_string(), disk.to_string()));
        } else if r.disk_bytes < MIN_DISK_BYTES {
            return Err(field_error("resources.disk_bytes", format!("must be at least {MIN_DISK_BYTES} bytes")));
        }
        if r.pids == 0 {
            r.pids = DEFAULT_PIDS;
        } else if r.pids > DEFAULT_PIDS {
            return Err(over("pids", r.pids.to_string(), DEFAULT_PIDS.to_string()));
        }
        Ok(())
    }

    /// Checks what does not depend on limits: environment, labels, ports, command.
    pub fn validate(&self) -> Result<(), SpecError> {
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(field_error("env", format!("`{key}` is not an environment variable name")));
            }
        }
        if let Some(key) = self.env.keys().find(|k| k.to_ascii_uppercase().starts_with(NVIDIA_ENV_PREFIX)) {
            return Err(field_error(
                "env",
                format!(
                    "`{key}`: {NVIDIA_ENV_PREFIX}* variables are set by the executor (ask for GPUs with gpu_count or gpu_uuids)"
                ),
            ));
        }
        if self.env.values().any(|v| v.contains('\0')) {
            return Err(field_error("env", "values may not contain NUL"));
        }
        for key in self.labels.keys() {
            let name = key.strip_prefix(TENANT_LABEL_PREFIX).unwrap_or_default();
            let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(field_error(
                    "labels",
                    format!(
                        "`{key}`: tenant labels are `{TENANT_LABEL_PREFIX}<name>` (letters, digits, `.`, `_`, `-`); other names belong to tools on the host"
                    ),
                ));
            }
        }
        for p in &self.ports {
            if p.container_port == 0 {
                return Err(field_error("ports.container_port", "must be between 1 and 65535"));
            }
        }
        if self.command.iter().chain(&self.args).any(|a| a.contains('\0')) {
            return Err(field_error("command", "arguments may not contain NUL"));
        }
        for uuid in &self.gpu_uuids {
            let ok = (uuid.starts_with("GPU-") || uuid.starts_with("MIG-"))
                && uuid[4..].chars().all(|c| c.is_ascii_hexdigit() || c == '-');
            if !ok {
                return Err(field_error("gpu_uuids", format!("`{uuid}` is not a GPU UUID")));
            }
        }
        Ok(())
    }

    /// Our labels plus the tenant's.
    pub fn all_labels(&self, executor_id: &str) -> HashMap<String, String> {
        let mut labels: HashMap<String, String> = self.labels.clone().into_iter().collect();
        labels.insert(LABEL_WATCHTOWER_ENABLE.into(), "false".into());
        labels.insert(LABEL_MANAGED.into(), "true".into());
        labels.insert(LABEL_EXECUTOR.into(), executor_id.into());
        labels.insert(LABEL_ID.into(), self.id.clone());
        labels.insert(LABEL_OWNER.into(), self.owner.clone());
        labels.insert(LABEL_CREATED.into(), self.created_at.to_string());
        labels.insert(LABEL_TTL.into(), self.ttl.map_or(0, |t| t.as_secs()).to_string());
        labels.insert(LABEL_GPUS.into(), self.gpu_uuids.join(","));
        labels.insert(LABEL_GPU_MEMORY.into(), self.resources.gpu_memory_bytes.to_string());
        labels.insert(LABEL_NETWORK_BPS.into(), self.resources.network_bps.to_string());
        labels.insert(LABEL_DISK.into(), self.resources.disk_bytes.to_string());
        labels.insert(LABEL_NETWORK.into(), self.network.clone().unwrap_or_default());
        labels.insert(crate::ports::LABEL_PORTS.into(), crate::ports::label(&self.ports));
        if !self.volumes.is_empty() {
            let attached: Vec<Attached> = self.volumes.iter().map(|(a, _)| a.clone()).collect();
            labels.insert(crate::volumes::LABEL_VOLUMES.into(), crate::volumes::label(&attached));
        }
        labels
    }

    /// The create body. `disk_device` is the block device behind Docker's data root (for the
    /// I/O limits); `network` its network mode (its own network, or a holder's, see `holder`),
    /// if any; `hardening` what the host and the config add to every container.
    pub fn create_body(
        &self,
        executor_id: &str,
        disk_device: Option<&str>,
        network: Option<&str>,
        hardening: &Hardening,
    ) -> ContainerCreateBody {
        let r = &self.resources;
        // `validate` refuses tenant NVIDIA_* keys; these two override the image's, always.
        let mut env: Vec<String> = self
            .env
            .iter()
            .filter(|(k, _)| !k.to_ascii_uppercase().starts_with(NVIDIA_ENV_PREFIX))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let visible = if self.gpu_uuids.is_empty() { NO_GPUS.to_owned() } else { self.gpu_uuids.join(",") };
        env.push(format!("NVIDIA_VISIBLE_DEVICES={visible}"));
        env.push(format!("NVIDIA_DRIVER_CAPABILITIES={}", self.workload.driver_capabilities_env()));
        let mut device_requests = None;
        if !self.gpu_uuids.is_empty() {
            device_requests = Some(vec![DeviceRequest {
                driver: Some("nvidia".into()),
                device_ids: Some(self.gpu_uuids.clone()),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..DeviceRequest::default()
            }]);
        }
        let throttle = |rate: u64| {
            disk_device.map(|path| vec![ThrottleDevice { path: Some(path.to_owned()), rate: Some(rate as i64) }])
        };
        let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = self
            .ports
            .iter()
            .map(|p| {
                let host_port = if p.host_port == 0 { String::new() } else { p.host_port.to_string() };
                let host_ip = self.publish_ip.map(|ip| ip.to_string());
                (p.container_side(), Some(vec![PortBinding { host_ip, host_port: Some(host_port) }]))
            })
            .collect();
        let cmd: Vec<String> = self.command.iter().chain(&self.args).cloned().collect();
        // A container that joins a holder's namespace takes its DNS servers and has no ports.
        let joins = crate::holder::joins(network);
        let mut body = ContainerCreateBody {
            image: Some(self.image.to_string()),
            cmd: if cmd.is_empty() { None } else { Some(cmd) },
            env: Some(env),
            labels: Some(self.all_labels(executor_id)),
            exposed_ports: (!joins).then(|| self.ports.iter().map(Port::container_side).collect()),
            host_config: Some(HostConfig {
                privileged: Some(false),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(hardening.capabilities.clone()),
                security_opt: Some(hardening.security_opt.clone()),
                init: Some(true),
                tmpfs: Some(HashMap::from([("/tmp".to_owned(), TMPFS_TMP.to_owned())])),
                binds: Some(Vec::new()),
                mounts: Some(
                    self.mounts
                        .iter()
                        .map(bind_mount)
                        .chain(self.volumes.iter().map(|(v, host_path)| {
                            bind_mount(&BindMount {
                                host_path: host_path.clone(),
                                container_path: v.container_path.clone(),
                                read_only: v.read_only,
                            })
                        }))
                        .collect(),
                ),
                memory: Some(r.memory_bytes as i64),
                memory_swap: Some(r.memory_bytes as i64),
                nano_cpus: Some((r.cpu_cores * 1e9).round() as i64),
                pids_limit: Some(r.pids as i64),
                blkio_device_read_bps: throttle(r.disk_io_bps),
                blkio_device_write_bps: throttle(r.disk_io_bps),
                device_requests,
                network_mode: network.map(str::to_owned),
                dns: (!self.dns.is_empty() && !joins).then(|| self.dns.iter().map(|ip| ip.to_string()).collect()),
                port_bindings: (!joins).then_some(port_bindings),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        self.workload.apply(&mut body);
        body
    }
}

fn bind_mount(m: &BindMount) -> Mount {
    Mount {
        target: Some(m.container_path.clone()),
        source: Some(m.host_path.to_string_lossy().into_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(m.read_only),
        // Mounts made on the host later stay on the host.
        bind_options: Some(MountBindOptions {
            propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
            ..MountBindOptions::default()
        }),
        ..Mount::default()
    }
}

/// Checks one requested bind mount: `host_path` must resolve (symlinks followed) to an existing
/// directory or file inside one of `allowed`, and must not overlap `protected` (the executor's
/// data and runtime directories: keys and sockets); `container_path` must be absolute, without
/// `..`, and not `/`. Errors name the field `mounts[i].…`.
pub fn check_mount(
    index: usize,
    host_path: &str,
    container_path: &str,
    read_only: bool,
    allowed: &[PathBuf],
    protected: &[&Path],
) -> Result<BindMount, MountError> {
    let field = |f: &str| format!("mounts[{index}].{f}");
    let clean = |p: &Path| p.is_absolute() && !p.components().any(|c| matches!(c, Component::ParentDir));
    if !clean(Path::new(container_path)) || container_path == "/" || container_path.contains('\0') {
        return Err(MountError::Refused(field_error(
            field("container_path"),
            format!("`{container_path}` is not an absolute path below /"),
        )));
    }
    if allowed.is_empty() {
        return Err(MountError::Refused(field_error(
            field("host_path"),
            "host bind mounts are off on this executor (docker.allowed_host_paths is empty)",
        )));
    }
    if !clean(Path::new(host_path)) || host_path.contains('\0') {
        return Err(MountError::Refused(field_error(
            field("host_path"),
            format!("`{host_path}` is not an absolute path without `..`"),
        )));
    }
    let real = std::fs::canonicalize(host_path).map_err(|source| MountError::Unresolvable {
        field: field("host_path"),
        host_path: host_path.to_owned(),
        source,
    })?;
    let inside = allowed.iter().any(|a| std::fs::canonicalize(a).is_ok_and(|a| real.starts_with(a)));
    if !inside {
        return Err(MountError::Refused(field_error(
            field("host_path"),
            format!("`{host_path}` (resolved `{}`) is not under docker.allowed_host_paths", real.display()),
        )));
    }
    for p in protected {
        let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if real.starts_with(&p) || p.starts_with(&real) {
            return Err(MountError::Refused(field_error(
                field("host_path"),
                format!("`{host_path}` overlaps the executor's own directory {}", p.display()),
            )));
        }
    }
    Ok(BindMount { host_path: real, container_path: container_path.to_owned(), read_only })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::DOCKER_HUB;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            id: "c-0123456789ab".into(),
            image: ImageRef::parse("nvidia/cuda:12.2-base-ubuntu20.04", DOCKER_HUB).unwrap(),
            command: vec!["python".into()],
            args: vec!["train.py".into()],
            env: BTreeMap::from([("EPOCHS".into(), "3".into())]),
            labels: BTreeMap::from([("ai.basilica.tenant.team".into(), "a".into())]),
            ports: vec![Port { container_port: 8888, host_port: 40001, udp: false }],
            mounts: vec![BindMount {
                host_path: "/srv/datasets/imagenet".into(),
                container_path: "/data".into(),
                read_only: true,
            }],
            resources: Resources { memory_bytes: 1 << 30, cpu_cores: 1.5, ..Resources::default() },
            gpu_uuids: vec!["GPU-8f6d2a1b-0000-1111-2222-333344445555".into()],
            ttl: Some(Duration::from_secs(3600)),
            owner: "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY".into(),
            created_at: 1_800_000_000,
            dns: vec!["8.8.8.8".parse().unwrap()],
            network: Some("basilica-c-0123456789ab".into()),
            publish_ip: None,
            workload: Workload::default(),
            volumes: Vec::new(),
        }
    }

    /// The exact body Docker gets for a GPU container (no GPU here, so this is how the GPU
    /// request is checked).
    #[test]
    fn create_body_snapshot() {
        let mut s = spec();
        s.apply_limits(&ResourceLimits::default(), 64.0).unwrap();
        let hardening = Hardening::new(
            vec!["no-new-privileges:true".into(), "seccomp=builtin".into(), "apparmor=docker-default".into()],
            &[],
        );
        let body = serde_json::to_value(s.create_body(
            "executor-abc",
            Some("/dev/vda"),
            Some("basilica-c-0123456789ab"),
            &hardening,
        ))
        .unwrap();
        let expected = serde_json::json!({
            "Image": "docker.io/nvidia/cuda:12.2-base-ubuntu20.04",
            "Cmd": ["python", "train.py"],
            "Env": [
                "EPOCHS=3",
                "NVIDIA_VISIBLE_DEVICES=GPU-8f6d2a1b-0000-1111-2222-333344445555",
                "NVIDIA_DRIVER_CAPABILITIES=compute,utility"
            ],
            "ExposedPorts": {"8888/tcp": {}},
            "Labels": {
                "ai.basilica.tenant.team": "a",
                "com.centurylinklabs.watchtower.enable": "false",
                "ai.basilica.executor.managed": "true",
                "ai.basilica.executor.executor_id": "executor-abc",
                "ai.basilica.executor.id": "c-0123456789ab",
                "ai.basilica.executor.owner": "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY",
                "ai.basilica.executor.created": "1800000000",
                "ai.basilica.executor.ttl_seconds": "3600",
                "ai.basilica.executor.gpus": "GPU-8f6d2a1b-0000-1111-2222-333344445555",
                "ai.basilica.executor.gpu_memory_bytes": "4294967296",
                "ai.basilica.executor.network_bps": "104857600",
                "ai.basilica.executor.disk_bytes": "21474836480",
                "ai.basilica.executor.network": "basilica-c-0123456789ab",
                "ai.basilica.executor.ports": "8888/tcp=40001"
            },
            "HostConfig": {
                "Privileged": false,
                "CapDrop": ["ALL"],
                "CapAdd": ["CHOWN", "SETGID", "SETUID", "NET_BIND_SERVICE"],
                "SecurityOpt": ["no-new-privileges:true", "seccomp=builtin", "apparmor=docker-default"],
                "Init": true,
                "Tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=256m"},
                "Binds": [],
                "Mounts": [{
                    "Target": "/data",
                    "Source": "/srv/datasets/imagenet",
                    "Type": "bind",
                    "ReadOnly": true,
                    "BindOptions": {"Propagation": "rprivate"}
                }],
                "Memory": 1073741824,
                "MemorySwap": 1073741824,
                "NanoCpus": 1500000000,
                "PidsLimit": 4096,
                "BlkioDeviceReadBps": [{"Path": "/dev/vda", "Rate": 104857600}],
                "BlkioDeviceWriteBps": [{"Path": "/dev/vda", "Rate": 104857600}],
                "DeviceRequests": [{
                    "Driver": "nvidia",
                    "DeviceIDs": ["GPU-8f6d2a1b-0000-1111-2222-333344445555"],
                    "Capabilities": [["gpu"]]
                }],
                "NetworkMode": "basilica-c-0123456789ab",
                "Dns": ["8.8.8.8"],
                "PortBindings": {"8888/tcp": [{"HostPort": "40001"}]},
                "ShmSize": 67108864,
                "IpcMode": "private",
                "Ulimits": [
                    {"Name": "memlock", "Soft": -1, "Hard": -1},
                    {"Name": "nofile", "Soft": 1048576, "Hard": 1048576},
                    {"Name": "stack", "Soft": 67108864, "Hard": 67108864}
                ]
            }
        });
        assert_eq!(body, expected, "\n{}", serde_json::to_string_pretty(&body).unwrap());
    }

    /// Without GPUs the NVIDIA runtime (Docker's default on some hosts) is told `void`, whatever
    /// the image's `ENV` says; the driver capabilities are fixed either way.
    #[test]
    fn a_container_without_gpus_is_told_void() {
        let mut s = spec();
        s.gpu_uuids.clear();
        let body = s.create_body("executor-abc", None, None, &Hardening::new(Vec::new(), &[]));
        assert_eq!(
            body.env.unwrap(),
            ["EPOCHS=3", "NVIDIA_VISIBLE_DEVICES=void", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]
        );
        assert_eq!(body.host_config.unwrap().device_requests, None);
    }

    /// `[docker] extra_capabilities` adds allow-listed capabilities, once each.
    #[test]
    fn extra_capabilities_are_added() {
        let h = Hardening::new(Vec::new(), &[Capability::DacOverride, Capability::Fowner, Capability::DacOverride]);
        assert_eq!(h.capabilities, ["CHOWN", "SETGID", "SETUID", "NET_BIND_SERVICE", "DAC_OVERRIDE", "FOWNER"]);
        let body = spec().create_body("executor-abc", None, None, &h);
        assert_eq!(body.host_config.unwrap().cap_add.unwrap(), h.capabilities);
    }

    #[test]
    fn requests_beyond_the_limits_name_the_field() {
        fn check(change: impl Fn(&mut ContainerSpec), expected: &str) {
            let mut s = spec();
            change(&mut s);
            let err =
                s.validate().and_then(|()| s.apply_limits(&ResourceLimits::default(), 2.0)).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        check(|s| s.resources.memory_bytes = 1 << 40, "resources.memory_bytes: 1099511627776 is more than the limit");
        check(|s| s.resources.memory_bytes = 1, "resources.memory_bytes: must be at least 6 MiB");
        check(|s| s.resources.cpu_cores = -1.0, "resources.cpu_cores: -1 is not a CPU count");
        check(|s| s.resources.cpu_cores = f64::NAN, "resources.cpu_cores");
        check(|s| s.resources.cpu_cores = 64.0, "resources.cpu_cores: 64 is more than the limit of 4");
        check(|s| s.resources.cpu_cores = 3.0, "resources.cpu_cores: 3 is more than this host's 2 CPUs");
        check(|s| s.resources.disk_io_bps = u64::MAX, "resources.disk_io_bps");
        check(|s| s.resources.pids = 1 << 20, "resources.pids");
        check(|s| drop(s.env.insert("A=B".into(), "x".into())), "env: `A=B` is not an environment variable name");
        check(|s| drop(s.env.insert("NVIDIA_VISIBLE_DEVICES".into(), "all".into())), "env: `NVIDIA_VISIBLE_DEVICES`");
        check(|s| drop(s.env.insert("nvidia_driver_capabilities".into(), "all".into())), "env: `nvidia_driver_");
        check(
            |s| drop(s.labels.insert("ai.basilica.executor.id".into(), "x".into())),
            "labels: `ai.basilica.executor.id`",
        );
        for key in [
            "team",
            "com.centurylinklabs.watchtower.enable",
            "com.centurylinklabs.watchtower.scope",
            "traefik.http.routers.x.rule",
            "com.docker.compose.project",
            "ai.basilica.tenant.",
            "ai.basilica.tenant.a b",
            "",
        ] {
            check(|s| drop(s.labels.insert(key.into(), "x".into())), &format!("labels: `{key}`: tenant labels are"));
        }
        check(|s| s.ports[0].container_port = 0, "ports.container_port");
        check(|s| s.gpu_uuids = vec!["0".into()], "gpu_uuids: `0` is not a GPU UUID");
        check(|s| s.resources.gpu_memory_bytes = 5 << 30, "resources.gpu_memory_bytes: 5368709120 is more than");
        check(|s| s.resources.network_bps = 1 << 40, "resources.network_bps");
    }

    #[test]
    fn bind_mounts_only_from_the_allow_list() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("datasets");
        let data_dir = root.path().join("data");
        std::fs::create_dir_all(allowed.join("imagenet")).unwrap();
        std::fs::create_dir_all(&data_dir).unwrap();
        std::os::unix::fs::symlink(&data_dir, allowed.join("sneaky")).unwrap();
        std::os::unix::fs::symlink("/etc", allowed.join("etc")).unwrap();
        let list = vec![allowed.clone()];
        let check = |host: &str, target: &str, list: &[PathBuf]| {
            check_mount(0, host, target, true, list, &[data_dir.as_path()]).map_err(|e| e.to_string())
        };
        let ok = check(allowed.join("imagenet").to_str().unwrap(), "/data", &list).unwrap();
        assert_eq!(ok.host_path, std::fs::canonicalize(allowed.join("imagenet")).unwrap());
        let err = |host: &str, target: &str, list: &[PathBuf]| check(host, target, list).unwrap_err();
        assert!(err("/etc", "/data", &[]).contains("mounts[0].host_path: host bind mounts are off"));
        assert!(err("/etc", "/data", &list).contains("is not under docker.allowed_host_paths"));
        // Symlinks are followed before the check: out of the allowed tree, or into the executor's.
        assert!(err(allowed.join("etc").to_str().unwrap(), "/data", &list).contains("resolved `/etc`"));
        let into_data = allowed.join("sneaky");
        let wide = vec![root.path().to_path_buf()];
        assert!(err(into_data.to_str().unwrap(), "/data", &wide).contains("overlaps the executor's own directory"));
        assert!(err(root.path().to_str().unwrap(), "/data", &wide).contains("overlaps"));
        assert!(err(&format!("{}/../x", allowed.display()), "/data", &list).contains("without `..`"));
        let missing = err(allowed.join("missing").to_str().unwrap(), "/data", &list);
        assert!(
            missing.contains("mounts[0].host_path") && missing.ends_with("does not exist or cannot be read"),
            "{missing}"
        );
        assert!(err(allowed.to_str().unwrap(), "data", &list).contains("mounts[0].container_path"));
        assert!(err(allowed.to_str().unwrap(), "/", &list).contains("mounts[0].container_path"));
    }
}
