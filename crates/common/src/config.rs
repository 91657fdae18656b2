//! The executor's one configuration file, read by every service.
//!
//! Loading order: defaults, then the TOML file, then `EXECUTOR_SECTION__KEY` environment
//! variables. Unknown keys are errors, every value is validated, and every error names the key
//! and where its value came from (the file or the environment variable).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hotkey::Hotkey;

/// Prefix of environment overrides: `EXECUTOR_DOCKER__MAX_CONCURRENT_CONTAINERS=4`.
pub const ENV_PREFIX: &str = "EXECUTOR_";

/// The whole configuration. Field docs are the reference in `docs/configuration.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// SS58 address of the miner hotkey allowed to manage this executor over gRPC. There is no
    /// default: `executor --server` refuses to start without it.
    pub managing_miner_hotkey: Option<Hotkey>,
    /// Persistent state: executor identity key, grants, audit log. Relative paths are taken
    /// from the working directory.
    pub data_dir: PathBuf,
    /// Unix sockets of the internal services (created 0660 in a 0750 directory).
    pub runtime_dir: PathBuf,
    pub server: ServerConfig,
    pub docker: DockerConfig,
    pub system: SystemConfig,
    pub validator: ValidatorConfig,
    pub advertised_endpoint: AdvertisedEndpointConfig,
    pub logging: LoggingConfig,
    pub metrics: MetricsConfig,
    pub launcher: LauncherConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            managing_miner_hotkey: None,
            data_dir: PathBuf::from("/opt/basilica/data"),
            runtime_dir: PathBuf::from("/run/basilica"),
            server: ServerConfig::default(),
            docker: DockerConfig::default(),
            system: SystemConfig::default(),
            validator: ValidatorConfig::default(),
            advertised_endpoint: AdvertisedEndpointConfig::default(),
            logging: LoggingConfig::default(),
            metrics: MetricsConfig::default(),
            launcher: LauncherConfig::default(),
        }
    }
}

/// `[server]`: the public gRPC API and the HTTP health endpoint (executor-api).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the public gRPC API binds to.
    pub host: IpAddr,
    /// Port of the public gRPC API.
    pub port: u16,
    /// Host name or address miners use to reach this executor (defaults to `host`).
    pub advertised_host: Option<String>,
    /// Port miners use (defaults to `port`), e.g. behind a load balancer.
    pub advertised_port: Option<u16>,
    /// Whether the advertised endpoint speaks TLS (e.g. a TLS-terminating load balancer).
    pub advertised_tls: bool,
    /// Hard cap on concurrent connections to the public gRPC API.
    pub max_connections: u32,
    /// Port of the HTTP `GET /health` endpoint, bound on `host`.
    pub health_port: u16,
    /// Longest a unary call (or a streaming call's first response) may take; past it the
    /// caller gets DEADLINE_EXCEEDED.
    #[serde(with = "human_duration")]
    pub request_timeout: Duration,
    /// HTTP/2 keep-alive: ping an idle connection this often.
    #[serde(with = "human_duration")]
    pub keepalive_interval: Duration,
    /// HTTP/2 keep-alive: close the connection when a ping is not answered within this.
    #[serde(with = "human_duration")]
    pub keepalive_timeout: Duration,
    /// PEM certificate chain: serve the public gRPC port over TLS (rustls). Needs
    /// `tls_key_path`; without both the port is plaintext.
    pub tls_cert_path: Option<PathBuf>,
    /// PEM private key of `tls_cert_path`.
    pub tls_key_path: Option<PathBuf>,
    /// Signed requests are accepted only when their timestamp is within this of the
    /// executor's clock (either way); each nonce is remembered this long.
    #[serde(with = "human_duration")]
    pub auth_time_window: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 50051,
            advertised_host: None,
            advertised_port: None,
            advertised_tls: false,
            max_connections: 1000,
            health_port: 50052,
            request_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            tls_cert_path: None,
            tls_key_path: None,
            auth_time_window: Duration::from_secs(60),
        }
    }
}

/// `[docker]`: tenant containers (container-runtime).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// Docker engine endpoint: `unix:///path/to/docker.sock`.
    pub socket: String,
    /// Give tenant containers GPUs. Off by default: no GPU leaves the host unless asked.
    pub enable_gpu_passthrough: bool,
    /// Containers running at once; creates past it fail with RESOURCE_EXHAUSTED.
    pub max_concurrent_containers: u32,
    pub resource_limits: ResourceLimits,
    pub network_config: NetworkConfig,
    pub gpu_config: GpuConfig,
    pub registry: RegistryConfig,
    /// How often expired containers (TTL) and leftover networks are reaped.
    #[serde(with = "human_duration")]
    pub reap_interval: Duration,
    /// Host directories tenants may bind-mount (each with what lies below it); empty: no host
    /// path is ever mounted. `data_dir` and `runtime_dir` are never mountable.
    pub allowed_host_paths: Vec<PathBuf>,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            reap_interval: Duration::from_secs(10),
            allowed_host_paths: Vec::new(),
            socket: "unix:///var/run/docker.sock".to_owned(),
            enable_gpu_passthrough: false,
            max_concurrent_containers: 10,
            resource_limits: ResourceLimits::default(),
            network_config: NetworkConfig::default(),
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
    pub memory_bytes: u64,
    /// CPU cores per container (fractions allowed).
    pub cpu_cores: f64,
    /// GPU memory per container, bytes; a container above it is stopped.
    pub gpu_memory_bytes: u64,
    /// Read and write bytes/s on the device behind Docker's data root.
    pub disk_io_bps: u64,
    /// Bytes/s each way on the container's network interface.
    pub network_bps: u64,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 8 << 30,
            cpu_cores: 4.0,
            gpu_memory_bytes: 4 << 30,
            disk_io_bps: 100 << 20,
            network_bps: 100 << 20,
        }
    }
}

/// `[docker.network_config]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Each container on its own bridge network.
    pub enable_isolation: bool,
    /// Egress to the internet; false makes container networks internal.
    pub allow_internet: bool,
    /// DNS servers for containers; empty means Docker's default.
    pub dns_servers: Vec<IpAddr>,
    /// With isolation: networks kept made ahead of time so a create need not wait for one
    /// (about 120 ms each); removed on shutdown. 0 makes each create make its own.
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
    pub memory_fraction: f64,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self { visible_devices: "all".to_owned(), memory_fraction: 1.0 }
    }
}

/// `[docker.registry]`: where images may come from, how they are pulled, and their signatures.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registry host used for image references without one.
    pub url: String,
    /// Verify cosign signatures of images before they run (see `signature_mode`); an image that
    /// passes runs pinned by the digest that was verified.
    pub verify_signatures: bool,
    /// Registry hosts images may come from (exact host match, optional `:port`).
    pub allowed_registries: Vec<String>,
    /// With `verify_signatures`: what an image without a valid signature gets. `enforce`
    /// (default): refused. `warn`: runs, pinned by digest, and the caller is told
    /// (`Container.image_signature`) and the log warns. `monitor`: runs by tag as if nothing
    /// were verified; the result is only recorded (audit log, metrics).
    pub signature_mode: Option<SignatureMode>,
    /// With `verify_signatures`: PEM files of cosign public keys (`cosign.pub`, ECDSA P-256). An
    /// image passes when one of them signed its manifest digest.
    pub cosign_public_keys: Vec<PathBuf>,
    /// A Docker client config file (`config.json`) to take registry credentials from (`auths`
    /// and credential helpers), for registries without `username` below.
    pub docker_config_file: Option<PathBuf>,
    /// Longest an image pull, or a registry lookup for a signature, may take.
    #[serde(with = "human_duration")]
    pub pull_timeout: Duration,
    /// Settings of one registry, keyed by a host of `allowed_registries`:
    /// `[docker.registry.registries."ghcr.io"]`.
    pub registries: BTreeMap<String, RegistrySettings>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            url: "docker.io".to_owned(),
            verify_signatures: false,
            allowed_registries: vec!["docker.io".to_owned()],
            signature_mode: None,
            cosign_public_keys: Vec::new(),
            docker_config_file: None,
            pull_timeout: Duration::from_secs(600),
            registries: BTreeMap::new(),
        }
    }
}

impl RegistryConfig {
    /// The signature mode for images from `registry`; None when nothing is verified.
    pub fn mode_for(&self, registry: &str) -> Option<SignatureMode> {
        if !self.verify_signatures {
            return None;
        }
        let own = self.registries.get(registry).and_then(|r| r.signature_mode);
        Some(own.or(self.signature_mode).unwrap_or(SignatureMode::Enforce))
    }

    /// The cosign public key files trusted for images from `registry`.
    pub fn keys_for(&self, registry: &str) -> &[PathBuf] {
        match self.registries.get(registry).and_then(|r| r.cosign_public_keys.as_ref()) {
            Some(keys) => keys,
            None => &self.cosign_public_keys,
        }
    }
}

/// `[docker.registry.registries."<host>"]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// This registry's `signature_mode`, instead of `[docker.registry] signature_mode`.
    pub signature_mode: Option<SignatureMode>,
    /// This registry's trusted keys, instead of `[docker.registry] cosign_public_keys`.
    pub cosign_public_keys: Option<Vec<PathBuf>>,
    /// User name for pulls and signature lookups; with `password_file`.
    pub username: Option<String>,
    /// File whose first line is the password or access token of `username` (kept out of the
    /// config so the config can be shown and shared).
    pub password_file: Option<PathBuf>,
}

/// What an image without a valid signature gets (`[docker.registry] signature_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureMode {
    Enforce,
    Warn,
    Monitor,
}

impl SignatureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureMode::Enforce => "enforce",
            SignatureMode::Warn => "warn",
            SignatureMode::Monitor => "monitor",
        }
    }
}

/// `[system]`: telemetry (gpu-monitor).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SystemConfig {
    /// Load NVML and report GPUs. When false NVML is never loaded.
    pub enable_gpu_monitoring: bool,
    /// Alert (log, metric, degraded health) when a GPU's memory use passes this percentage.
    pub max_gpu_memory_usage: f64,
    /// How often telemetry is collected.
    #[serde(with = "human_duration")]
    pub update_interval: Duration,
    /// Longest a collector (NVML, host, kernel, processes) may take before it counts as failed.
    #[serde(with = "human_duration")]
    pub collector_timeout: Duration,
    /// Where GPU figures come from: `nvml` (the driver), or `simulated` (a JSON file of GPU
    /// figures re-read every interval, for tests and demos; never chosen automatically).
    pub gpu_backend: GpuBackendKind,
    /// The JSON file of the `simulated` backend; only with `gpu_backend = "simulated"`.
    pub simulated_gpus_file: Option<PathBuf>,
}

/// Source of GPU figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuBackendKind {
    Nvml,
    Simulated,
}

impl Default for SystemConfig {
    fn default() -> Self {
        Self {
            enable_gpu_monitoring: true,
            max_gpu_memory_usage: 90.0,
            update_interval: Duration::from_secs(5),
            collector_timeout: Duration::from_secs(2),
            gpu_backend: GpuBackendKind::Nvml,
            simulated_gpus_file: None,
        }
    }
}

/// `[validator]`: validator SSH access (validator-access).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidatorConfig {
    /// Run the validator-access service and its SSH server.
    pub enabled: bool,
    /// Allow only allow-listed commands: no shell, PTY or forwarding. On by default.
    pub strict_ssh_restrictions: bool,
    /// Port of the embedded SSH server.
    pub ssh_port: u16,
    /// The unprivileged user validator commands (and, when not strict, shells) run as.
    pub command_user: String,
    /// Longest a validator's command may run before it is killed.
    #[serde(with = "human_duration")]
    pub command_timeout: Duration,
    /// Most output (stdout and stderr each) a command may send; the rest is dropped.
    pub command_max_output_bytes: u64,
    /// Longest grant a miner may provision.
    #[serde(with = "human_duration")]
    pub max_grant_ttl: Duration,
    /// Which SSH server validators reach: `embedded` (ours, on `ssh_port`) or `system` (the
    /// host's OpenSSH, with an `authorized_keys` file validator-access keeps).
    pub ssh_server: SshServerKind,
    /// `system` mode: the user validators log in as through the host's sshd.
    pub system_sshd_user: String,
    /// `system` mode: the `authorized_keys` file validator-access writes (point sshd's
    /// `AuthorizedKeysFile` for `system_sshd_user` at it).
    pub authorized_keys_file: PathBuf,
    /// Source addresses or networks (`10.0.0.0/8`) validators may connect from; empty: any.
    pub allowed_source_addresses: Vec<String>,
    pub access_config: AccessConfig,
}

/// `[validator] ssh_server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SshServerKind {
    Embedded,
    System,
}

/// Parses `ip` or `ip/prefix`; the error says what is wrong.
pub fn parse_network(text: &str) -> Result<(IpAddr, u8), String> {
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (text, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| format!("`{text}` is not an IP address or network"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("`{text}`: bad prefix length"))?,
        None => max,
    };
    Ok((ip, prefix))
}

/// Whether `addr` is inside the network `(net, prefix)` (IPv4-mapped IPv6 counts as IPv4).
pub fn in_network(addr: IpAddr, (net, prefix): (IpAddr, u8)) -> bool {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            strict_ssh_restrictions: true,
            ssh_port: 22,
            command_user: "nobody".to_owned(),
            command_timeout: Duration::from_secs(600),
            command_max_output_bytes: 64 << 20,
            max_grant_ttl: Duration::from_secs(24 * 3600),
            ssh_server: SshServerKind::Embedded,
            system_sshd_user: "basilica-validator".to_owned(),
            authorized_keys_file: PathBuf::from("/etc/basilica/validator_authorized_keys"),
            allowed_source_addresses: Vec::new(),
            access_config: AccessConfig::default(),
        }
    }
}

/// `[validator.access_config]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    pub hotkey_verification: HotkeyVerification,
    pub rate_limits: RateLimits,
}

/// `[validator.access_config.hotkey_verification]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HotkeyVerification {
    /// Validators must sign an executor-issued challenge with their hotkey.
    pub enabled: bool,
    /// Seconds a challenge stays valid.
    pub challenge_timeout_seconds: u64,
    /// Failed signatures before the hotkey is locked out.
    pub max_signature_attempts: u32,
}

impl Default for HotkeyVerification {
    fn default() -> Self {
        Self { enabled: true, challenge_timeout_seconds: 300, max_signature_attempts: 3 }
    }
}

/// `[validator.access_config.rate_limits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// SSH connections and failed authentications per minute, per hotkey and per source IP.
    pub ssh_requests_per_minute: u32,
    /// Public gRPC requests per minute per hotkey.
    pub api_requests_per_minute: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self { ssh_requests_per_minute: 10, api_requests_per_minute: 100 }
    }
}

/// `[advertised_endpoint]`: what identity and health report to miners.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdvertisedEndpointConfig {
    /// `http://` or `https://` URL of the public gRPC API.
    pub grpc_endpoint: Option<String>,
    /// `ssh://host:port` of the validator SSH server.
    pub ssh_endpoint: Option<String>,
    /// `http://` or `https://` URL of `GET /health`.
    pub health_endpoint: Option<String>,
}

/// `[logging]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// `tracing` filter: a level (`info`) or directives (`info,container_runtime=debug`).
    /// `--log-level` overrides it.
    pub level: String,
    /// `pretty` (human) or `json` (one object a line).
    pub format: LogFormat,
    /// Also write logs to this file, rotated by size. The launcher is its only writer.
    pub file: Option<PathBuf>,
    /// Rotate the log file when it reaches this many bytes.
    pub max_file_bytes: u64,
    /// Rotated files kept (`executor.log.1` .. `.N`).
    pub max_files: u32,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Pretty,
            file: None,
            max_file_bytes: 100 << 20,
            max_files: 5,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// `[metrics]`: Prometheus text on `GET /metrics`, one port per process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address every metrics port binds to.
    pub host: IpAddr,
    pub executor_api_port: u16,
    pub container_runtime_port: u16,
    pub gpu_monitor_port: u16,
    pub validator_access_port: u16,
    pub launcher_port: u16,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            executor_api_port: 9090,
            container_runtime_port: 9091,
            gpu_monitor_port: 9092,
            validator_access_port: 9093,
            launcher_port: 9094,
        }
    }
}

/// `[launcher]`: supervision of the services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LauncherConfig {
    /// How long a service may take to report SERVING after it starts.
    #[serde(with = "human_duration")]
    pub ready_timeout: Duration,
    /// First delay before restarting a crashed service; doubles on each crash.
    #[serde(with = "human_duration")]
    pub restart_backoff_initial: Duration,
    /// Longest delay between restarts.
    #[serde(with = "human_duration")]
    pub restart_backoff_max: Duration,
    /// Restarts of one service within `crash_loop_window` after which the launcher gives up
    /// and stops the node (exit code 1, so systemd or Docker can take over).
    pub crash_loop_max_restarts: u32,
    /// Window for counting restarts; a service that stays up this long has its backoff reset.
    #[serde(with = "human_duration")]
    pub crash_loop_window: Duration,
    /// How often each service's gRPC health is checked.
    #[serde(with = "human_duration")]
    pub health_check_interval: Duration,
    /// Consecutive failed health checks after which a running service is killed and restarted.
    pub unhealthy_threshold: u32,
    /// On SIGTERM/SIGINT, how long services get to exit before they are killed.
    #[serde(with = "human_duration")]
    pub shutdown_timeout: Duration,
}

impl Default for LauncherConfig {
    fn default() -> Self {
        Self {
            ready_timeout: Duration::from_secs(30),
            restart_backoff_initial: Duration::from_millis(500),
            restart_backoff_max: Duration::from_secs(30),
            crash_loop_max_restarts: 5,
            crash_loop_window: Duration::from_secs(60),
            health_check_interval: Duration::from_secs(2),
            unhealthy_threshold: 3,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Keys that parse and validate but that no code in this build acts on yet, with the part that
/// will. Setting one is reported (launcher log and `executor validate`) rather than ignored
/// silently; each entry is removed when its part lands.
pub const NOT_YET_ENFORCED: &[(&str, &str)] = &[];

/// One problem with the configuration, naming the key and where its value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key, e.g. `server.port`; empty for problems with the file as a whole.
    pub key: String,
    /// The file or environment variable the value came from.
    pub origin: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: key `{}`: {}", self.origin, self.key, self.message)
        }
    }
}

/// Everything wrong with a configuration, reported together.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "config error: {issue}")?;
        }
        Ok(())
    }
}

/// Exit code for configuration errors (usage errors, like clap's).
pub const CONFIG_ERROR_EXIT_CODE: i32 = 2;

/// A loaded, validated configuration and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    /// Absolute path of the file it was read from.
    pub path: PathBuf,
    figment: Figment,
}

impl LoadedConfig {
    /// Where the value of `key` came from: the file, an environment variable, or the default.
    pub fn origin(&self, key: &str) -> String {
        origin_of(&self.figment, key, &self.path)
    }

    /// Keys set in the file or environment that this build does not act on yet.
    pub fn not_yet_enforced(&self) -> Vec<ConfigIssue> {
        NOT_YET_ENFORCED
            .iter()
            .filter(|(key, _)| {
                self.figment.find_metadata(key).is_some_and(|m| {
                    matches!(m.source, Some(figment::Source::File(_))) || m.name.contains("environment")
                })
            })
            .map(|(key, part)| ConfigIssue {
                key: (*key).to_owned(),
                origin: self.origin(key),
                message: format!("set, but not enforced by this build yet (needs {part}); it has no effect"),
            })
            .collect()
    }

    /// Creates `data_dir` (mode 0700) and `runtime_dir` (mode 0750) if needed and checks that
    /// both are writable directories; a failure names the key and where its value came from.
    pub fn prepare_dirs(&self) -> Result<(), ConfigError> {
        let issues: Vec<ConfigIssue> =
            [("data_dir", &self.config.data_dir, 0o700), ("runtime_dir", &self.config.runtime_dir, 0o750)]
                .into_iter()
                .filter_map(|(key, dir, mode)| {
                    check_writable_dir(dir, mode).err().map(|message| ConfigIssue {
                        key: key.to_owned(),
                        origin: self.origin(key),
                        message,
                    })
                })
                .collect();
        if issues.is_empty() { Ok(()) } else { Err(ConfigError { issues }) }
    }

    /// `--server` mode needs a managing miner hotkey; there is no default.
    pub fn require_miner_hotkey(&self) -> Result<&Hotkey, ConfigError> {
        self.config.managing_miner_hotkey.as_ref().ok_or_else(|| ConfigError {
            issues: vec![ConfigIssue {
                key: "managing_miner_hotkey".to_owned(),
                origin: self.path.display().to_string(),
                message: "missing: set the SS58 address of the miner hotkey that manages this executor".to_owned(),
            }],
        })
    }
}

impl Config {
    /// Reads `path`, applies `EXECUTOR_*` overrides from the process environment, validates.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        Self::load_from(path, true)
    }

    /// As [`Config::load`]; `with_env = false` ignores the environment (unit tests).
    pub fn load_from(path: &Path, with_env: bool) -> Result<LoadedConfig, ConfigError> {
        let file_issue = |message: String| ConfigError {
            issues: vec![ConfigIssue { key: String::new(), origin: path.display().to_string(), message }],
        };
        let path = std::path::absolute(path).map_err(|e| file_issue(format!("bad path: {e}")))?;
        // figment skips a missing file silently; a missing config must be an error.
        if let Err(e) = std::fs::File::open(&path) {
            return Err(file_issue(format!("cannot read config file: {e}")));
        }
        let figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::file(&path));
        let figment = if with_env { figment.merge(Env::prefixed(ENV_PREFIX).split("__")) } else { figment };
        let mut config: Config = figment.extract().map_err(|e| from_figment(e, &path))?;
        let cwd = std::env::current_dir().map_err(|e| file_issue(format!("no working directory: {e}")))?;
        config.absolutize(&cwd);
        let loaded = LoadedConfig { config, path, figment };
        let issues = loaded.config.validate();
        if issues.is_empty() {
            Ok(loaded)
        } else {
            Err(ConfigError {
                issues: issues
                    .into_iter()
                    .map(|(key, message)| ConfigIssue { origin: loaded.origin(&key), key, message })
                    .collect(),
            })
        }
    }

    fn absolutize(&mut self, cwd: &Path) {
        for path in [&mut self.data_dir, &mut self.runtime_dir] {
            if path.is_relative() {
                *path = cwd.join(&*path);
            }
        }
        let registry = &mut self.docker.registry;
        let per_registry = registry
            .registries
            .values_mut()
            .flat_map(|r| r.cosign_public_keys.iter_mut().flatten().chain(r.password_file.iter_mut()));
        for file in registry.cosign_public_keys.iter_mut().chain(per_registry) {
            if file.is_relative() {
                *file = cwd.join(&*file);
            }
        }
        for file in [
            &mut self.logging.file,
            &mut self.system.simulated_gpus_file,
            &mut self.server.tls_cert_path,
            &mut self.server.tls_key_path,
            &mut self.docker.registry.docker_config_file,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = cwd.join(&*file);
            }
        }
    }

    /// Checks values serde cannot: ranges, formats, conflicts. Returns `(key, message)` pairs.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut v = Validator::default();
        for (key, path) in [("data_dir", &self.data_dir), ("runtime_dir", &self.runtime_dir)] {
            if path.as_os_str().is_empty() {
                v.fail(key, "must not be empty");
            }
        }
        // The socket path must fit sun_path (108 bytes) with the longest socket name.
        let longest_socket = self.runtime_dir.join("container-runtime.sock");
        if longest_socket.as_os_str().len() > 107 {
            v.fail("runtime_dir", "too long for Unix socket paths (at most 80 bytes)");
        }

        let s = &self.server;
        let mut ports: BTreeMap<(IpAddr, u16), &str> = BTreeMap::new();
        for (key, host, port) in self.listeners() {
            if port == 0 {
                v.fail(key, "must be between 1 and 65535, not 0");
                continue;
            }
            // Two listeners on one port collide if either is a wildcard or they share a host.
            let clash = ports
                .iter()
                .find(|((h, p), _)| *p == port && (h == &host || h.is_unspecified() || host.is_unspecified()));
            if let Some((_, other)) = clash {
                v.fail(key, format!("port {port} is already used by `{other}`"));
            }
            ports.insert((host, port), key);
        }
        if s.advertised_port == Some(0) {
            v.fail("server.advertised_port", "must be between 1 and 65535, not 0");
        }
        if let Some(host) = &s.advertised_host
            && !is_host_name(host)
            && host.parse::<IpAddr>().is_err()
        {
            v.fail("server.advertised_host", format!("`{host}` is not a host name or IP address"));
        }
        v.range("server.max_connections", s.max_connections as f64, 1.0, 1_000_000.0);
        for (key, value, min, max) in [
            ("server.request_timeout", s.request_timeout, Duration::from_millis(100), Duration::from_secs(3600)),
            ("server.keepalive_interval", s.keepalive_interval, Duration::from_secs(1), Duration::from_secs(86_400)),
            ("server.keepalive_timeout", s.keepalive_timeout, Duration::from_secs(1), Duration::from_secs(3600)),
            ("server.auth_time_window", s.auth_time_window, Duration::from_secs(1), Duration::from_secs(3600)),
        ] {
            if value < min || value > max {
                v.fail(
                    key,
                    format!(
                        "must be between {} and {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                );
            }
        }
        match (&s.tls_cert_path, &s.tls_key_path) {
            (Some(_), None) => v.fail("server.tls_key_path", "required with server.tls_cert_path"),
            (None, Some(_)) => v.fail("server.tls_cert_path", "required with server.tls_key_path"),
            _ => {}
        }

        let d = &self.docker;
        if !d.socket.starts_with("unix:///") {
            v.fail("docker.socket", format!("`{}` must be a unix:///path URL", d.socket));
        }
        v.range("docker.max_concurrent_containers", d.max_concurrent_containers as f64, 1.0, 10_000.0);
        if d.reap_interval < Duration::from_millis(100) {
            v.fail("docker.reap_interval", "must be at least 100ms");
        }
        v.range("docker.network_config.spare_networks", d.network_config.spare_networks as f64, 0.0, 16.0);
        for path in &d.allowed_host_paths {
            if !path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                v.fail(
                    "docker.allowed_host_paths",
                    format!("`{}` is not an absolute path without `..`", path.display()),
                );
            } else if path == Path::new("/") {
                v.fail("docker.allowed_host_paths", "`/` would give tenants the whole host");
            } else if [&self.data_dir, &self.runtime_dir].iter().any(|p| p.starts_with(path) || path.starts_with(p)) {
                v.fail(
                    "docker.allowed_host_paths",
                    format!("`{}` overlaps data_dir or runtime_dir (the executor's keys and sockets)", path.display()),
                );
            }
        }
        let r = &d.resource_limits;
        // Docker refuses less than 6 MiB of memory for a container.
        v.range("docker.resource_limits.memory_bytes", r.memory_bytes as f64, (6 << 20) as f64, 1e15);
        v.range("docker.resource_limits.cpu_cores", r.cpu_cores, 0.01, 4096.0);
        v.range("docker.resource_limits.gpu_memory_bytes", r.gpu_memory_bytes as f64, 1.0, 1e15);
        v.range("docker.resource_limits.disk_io_bps", r.disk_io_bps as f64, 1024.0, 1e13);
        v.range("docker.resource_limits.network_bps", r.network_bps as f64, 1024.0, 1e13);
        if let Err(msg) = parse_visible_devices(&d.gpu_config.visible_devices) {
            v.fail("docker.gpu_config.visible_devices", msg);
        }
        let f = d.gpu_config.memory_fraction;
        if !(f > 0.0 && f <= 1.0) {
            v.fail("docker.gpu_config.memory_fraction", format!("{f} is not in (0, 1]"));
        }
        if !is_registry_host(&d.registry.url) {
            v.fail("docker.registry.url", registry_message(&d.registry.url));
        }
        if d.registry.allowed_registries.is_empty() {
            v.fail("docker.registry.allowed_registries", "must list at least one registry host");
        }
        for host in &d.registry.allowed_registries {
            if !is_registry_host(host) {
                v.fail("docker.registry.allowed_registries", registry_message(host));
            }
        }
        validate_registry(&d.registry, &mut v);

        let sys = &self.system;
        v.range("system.max_gpu_memory_usage", sys.max_gpu_memory_usage, 0.0, 100.0);
        if sys.update_interval < Duration::from_millis(100) {
            v.fail("system.update_interval", "must be at least 100ms");
        }
        if sys.collector_timeout.is_zero() || sys.collector_timeout > sys.update_interval {
            v.fail("system.collector_timeout", "must be longer than 0s and at most system.update_interval");
        }
        match (sys.gpu_backend, &sys.simulated_gpus_file) {
            (GpuBackendKind::Simulated, None) => {
                v.fail("system.simulated_gpus_file", "required with system.gpu_backend = \"simulated\"")
            }
            (GpuBackendKind::Nvml, Some(_)) => {
                v.fail("system.simulated_gpus_file", "only used with system.gpu_backend = \"simulated\"")
            }
            _ => {}
        }

        let va = &self.validator;
        let user_ok = !va.command_user.is_empty()
            && va.command_user.len() <= 32
            && va.command_user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            && va.command_user != "root";
        if !user_ok {
            v.fail("validator.command_user", format!("`{}` is not an unprivileged user name", va.command_user));
        }
        if va.command_timeout < Duration::from_secs(1) || va.command_timeout > Duration::from_secs(86_400) {
            v.fail("validator.command_timeout", "must be between 1s and 24h");
        }
        v.range("validator.command_max_output_bytes", va.command_max_output_bytes as f64, 1024.0, (1u64 << 34) as f64);
        if va.max_grant_ttl < Duration::from_secs(60) || va.max_grant_ttl > Duration::from_secs(30 * 86_400) {
            v.fail("validator.max_grant_ttl", "must be between 1m and 30d");
        }
        for net in &va.allowed_source_addresses {
            if let Err(e) = parse_network(net) {
                v.fail("validator.allowed_source_addresses", e);
            }
        }
        if !va.authorized_keys_file.is_absolute() || va.authorized_keys_file.file_name().is_none() {
            v.fail("validator.authorized_keys_file", "must be an absolute file path");
        }
        let name_ok = |n: &str| {
            !n.is_empty() && n.len() <= 32 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !name_ok(&va.system_sshd_user) || va.system_sshd_user == "root" {
            v.fail("validator.system_sshd_user", format!("`{}` is not an unprivileged user name", va.system_sshd_user));
        }
        let hv = &self.validator.access_config.hotkey_verification;
        let key = "validator.access_config.hotkey_verification";
        v.range(&format!("{key}.challenge_timeout_seconds"), hv.challenge_timeout_seconds as f64, 1.0, 86_400.0);
        v.range(&format!("{key}.max_signature_attempts"), hv.max_signature_attempts as f64, 1.0, 1000.0);
        let rl = &self.validator.access_config.rate_limits;
        let key = "validator.access_config.rate_limits";
        v.range(&format!("{key}.ssh_requests_per_minute"), rl.ssh_requests_per_minute as f64, 1.0, 1e6);
        v.range(&format!("{key}.api_requests_per_minute"), rl.api_requests_per_minute as f64, 1.0, 1e7);

        let e = &self.advertised_endpoint;
        let http = &["http", "https"][..];
        for (key, value, schemes) in [
            ("advertised_endpoint.grpc_endpoint", &e.grpc_endpoint, http),
            ("advertised_endpoint.ssh_endpoint", &e.ssh_endpoint, &["ssh"][..]),
            ("advertised_endpoint.health_endpoint", &e.health_endpoint, http),
        ] {
            if let Some(url) = value
                && let Err(msg) = check_endpoint(url, schemes)
            {
                v.fail(key, msg);
            }
        }

        let l = &self.logging;
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&l.level) {
            v.fail("logging.level", format!("`{}` is not a log filter: {e}", l.level));
        }
        if l.max_file_bytes < 4096 {
            v.fail("logging.max_file_bytes", "must be at least 4096");
        }
        v.range("logging.max_files", l.max_files as f64, 1.0, 1000.0);

        let la = &self.launcher;
        for (key, value) in [
            ("launcher.ready_timeout", la.ready_timeout),
            ("launcher.restart_backoff_initial", la.restart_backoff_initial),
            ("launcher.crash_loop_window", la.crash_loop_window),
            ("launcher.health_check_interval", la.health_check_interval),
            ("launcher.shutdown_timeout", la.shutdown_timeout),
        ] {
            if value.is_zero() {
                v.fail(key, "must be longer than 0s");
            }
        }
        if la.restart_backoff_max < la.restart_backoff_initial {
            v.fail("launcher.restart_backoff_max", "must not be shorter than restart_backoff_initial");
        }
        v.range("launcher.crash_loop_max_restarts", la.crash_loop_max_restarts as f64, 1.0, 1000.0);
        v.range("launcher.unhealthy_threshold", la.unhealthy_threshold as f64, 1.0, 1000.0);
        v.issues
    }

    /// The services this configuration runs, in start order (validator-access only when
    /// `[validator] enabled`).
    pub fn services(&self) -> Vec<crate::ServiceName> {
        crate::ServiceName::SUPERVISED
            .into_iter()
            .filter(|s| *s != crate::ServiceName::ValidatorAccess || self.validator.enabled)
            .collect()
    }

    /// Every TCP port the node listens on, with its key: the public ports, the metrics port of
    /// each process that runs, and the validator SSH port when validator access is enabled.
    pub fn listeners(&self) -> Vec<(&'static str, IpAddr, u16)> {
        let (s, m) = (&self.server, &self.metrics);
        let mut listeners = vec![
            ("server.port", s.host, s.port),
            ("server.health_port", s.host, s.health_port),
            ("metrics.executor_api_port", m.host, m.executor_api_port),
            ("metrics.container_runtime_port", m.host, m.container_runtime_port),
            ("metrics.gpu_monitor_port", m.host, m.gpu_monitor_port),
            ("metrics.launcher_port", m.host, m.launcher_port),
        ];
        if self.validator.enabled {
            listeners.push(("metrics.validator_access_port", m.host, m.validator_access_port));
            if self.validator.ssh_server == SshServerKind::Embedded {
                listeners.push(("validator.ssh_port", s.host, self.validator.ssh_port));
            }
        }
        listeners
    }

    /// The metrics port of a process, by service name.
    pub fn metrics_port(&self, service: crate::ServiceName) -> u16 {
        use crate::ServiceName::*;
        let m = &self.metrics;
        match service {
            ExecutorApi => m.executor_api_port,
            ContainerRuntime => m.container_runtime_port,
            GpuMonitor => m.gpu_monitor_port,
            ValidatorAccess => m.validator_access_port,
            Launcher => m.launcher_port,
        }
    }
}

/// Creates `dir` with `mode` if missing, then proves it writable by creating a file in it.
pub fn check_writable_dir(dir: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// `[docker.registry]` beyond the hosts: signatures, credentials, timeouts.
fn validate_registry(r: &RegistryConfig, v: &mut Validator) {
    if r.pull_timeout < Duration::from_secs(1) || r.pull_timeout > Duration::from_secs(24 * 3600) {
        v.fail("docker.registry.pull_timeout", "must be between 1s and 24h");
    }
    for (host, settings) in &r.registries {
        let key = |name: &str| format!("docker.registry.registries.\"{host}\".{name}");
        if !r.allowed_registries.contains(host) {
            v.fail(
                &format!("docker.registry.registries.\"{host}\""),
                format!("`{host}` is not in docker.registry.allowed_registries: images from it are refused anyway"),
            );
        }
        match (&settings.username, &settings.password_file) {
            (Some(_), None) => v.fail(&key("password_file"), "required with username"),
            (None, Some(_)) => v.fail(&key("username"), "required with password_file"),
            _ => {}
        }
        if !r.verify_signatures && settings.signature_mode.is_some() {
            v.fail(&key("signature_mode"), "has no effect while docker.registry.verify_signatures = false");
        }
        if !r.verify_signatures && settings.cosign_public_keys.is_some() {
            v.fail(&key("cosign_public_keys"), "has no effect while docker.registry.verify_signatures = false");
        }
    }
    if !r.verify_signatures {
        if r.signature_mode.is_some() {
            v.fail("docker.registry.signature_mode", "has no effect while docker.registry.verify_signatures = false");
        }
        if !r.cosign_public_keys.is_empty() {
            v.fail(
                "docker.registry.cosign_public_keys",
                "has no effect while docker.registry.verify_signatures = false",
            );
        }
        return;
    }
    for host in &r.allowed_registries {
        if r.keys_for(host).is_empty() {
            v.fail(
                "docker.registry.cosign_public_keys",
                format!("verify_signatures = true needs at least one key to verify images from `{host}` against"),
            );
        }
    }
}

#[derive(Default)]
struct Validator {
    issues: Vec<(String, String)>,
}

impl Validator {
    fn fail(&mut self, key: &str, message: impl Into<String>) {
        self.issues.push((key.to_owned(), message.into()));
    }

    fn range(&mut self, key: &str, value: f64, min: f64, max: f64) {
        if !(value >= min && value <= max) {
            self.fail(key, format!("{value} is out of range ({min} to {max})"));
        }
    }
}

/// Parses `[docker.gpu_config] visible_devices`: `all`, or indices and `GPU-`/`MIG-` UUIDs.
pub fn parse_visible_devices(value: &str) -> Result<Option<Vec<String>>, String> {
    let value = value.trim();
    if value == "all" {
        return Ok(None);
    }
    let mut devices = Vec::new();
    for item in value.split(',').map(str::trim) {
        let uuid = (item.starts_with("GPU-") || item.starts_with("MIG-"))
            && item.len() > 4
            && item[4..].chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if !(uuid || (!item.is_empty() && item.parse::<u32>().is_ok())) {
            return Err(format!("`{item}` is not a GPU index or UUID (expected `all` or e.g. `0,1` or `GPU-...`)"));
        }
        devices.push(item.to_owned());
    }
    Ok(Some(devices))
}

fn registry_message(host: &str) -> String {
    format!("`{host}` is not a registry host (a host name with an optional :port, no scheme or path)")
}

/// A registry as Docker names it: a host name or IP with an optional port, nothing else.
fn is_registry_host(value: &str) -> bool {
    let (host, port) = match value.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (value, None),
    };
    port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0)) && (is_host_name(host) || host.parse::<IpAddr>().is_ok())
}

/// RFC 1123 host name.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn check_endpoint(url: &str, schemes: &[&str]) -> Result<(), String> {
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let scheme = uri.scheme_str().unwrap_or("");
    if !schemes.contains(&scheme) {
        return Err(format!("`{url}` must use {}://", schemes.join(":// or ")));
    }
    let authority = uri.authority().ok_or_else(|| format!("`{url}` has no host"))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if !is_host_name(host) && host.parse::<IpAddr>().is_err() {
        return Err(format!("`{url}`: `{host}` is not a host name or IP address"));
    }
    if authority.port_u16() == Some(0) {
        return Err(format!("`{url}`: port 0 is not a port"));
    }
    Ok(())
}

fn origin_of(figment: &Figment, key: &str, file: &Path) -> String {
    describe_origin(figment.find_metadata(key), key, file)
}

/// Where a value came from, as an operator names it: the file, or the environment variable
/// that sets `key`; values from defaults are blamed on the file.
fn describe_origin(meta: Option<&figment::Metadata>, key: &str, file: &Path) -> String {
    match meta.and_then(|m| m.source.as_ref()) {
        Some(figment::Source::File(path)) => path.display().to_string(),
        _ if meta.is_some_and(|m| m.name.contains("environment")) => {
            format!("environment variable {ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
        }
        _ => file.display().to_string(),
    }
}

/// Turns figment's errors (unknown key, wrong type, bad value) into issues naming key and origin.
fn from_figment(error: figment::Error, file: &Path) -> ConfigError {
    let issues = error
        .into_iter()
        .map(|e| {
            let mut key = e.path.join(".");
            let message = match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => {
                    if e.path.last() != Some(field) {
                        key = if key.is_empty() { field.clone() } else { format!("{key}.{field}") };
                    }
                    format!("unknown key (expected one of: {})", expected.join(", "))
                }
                kind => kind.to_string(),
            };
            let origin = describe_origin(e.metadata.as_ref(), &key, file);
            ConfigIssue { key, origin, message }
        })
        .collect();
    ConfigError { issues }
}

/// Durations as human strings (`"30s"`, `"1m 30s"`, `"500ms"`).
mod human_duration {
    use super::*;

    pub(super) fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a duration like \"30s\" or \"500ms\": {e}")))
    }
}

#[cfg(test)]
mod network_tests {
    use super::*;

    #[test]
    fn networks_match_like_cidr() {
        let net = parse_network("10.0.0.0/8").unwrap();
        assert!(in_network("10.1.2.3".parse().unwrap(), net));
        assert!(!in_network("11.0.0.1".parse().unwrap(), net));
        assert!(in_network("::ffff:10.9.9.9".parse().unwrap(), net));
        assert!(in_network("127.0.0.1".parse().unwrap(), parse_network("127.0.0.1").unwrap()));
        assert!(in_network("2001:db8::1".parse().unwrap(), parse_network("2001:db8::/32").unwrap()));
        assert!(!in_network("2001:db9::1".parse().unwrap(), parse_network("2001:db8::/32").unwrap()));
        assert!(in_network("8.8.8.8".parse().unwrap(), parse_network("0.0.0.0/0").unwrap()));
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("host.example").is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";

    fn load(toml: &str) -> (tempfile::TempDir, Result<LoadedConfig, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("executor.toml");
        std::fs::write(&path, toml).unwrap();
        let loaded = Config::load_from(&path, false);
        (dir, loaded)
    }

    /// `toml` must fail with one issue whose rendering contains every `expected` fragment.
    fn check_err(toml: &str, expected: &[&str]) {
        let (dir, loaded) = load(toml);
        let err = loaded.expect_err(toml).to_string();
        let file = dir.path().join("executor.toml").display().to_string();
        assert!(err.contains(&file), "error does not name the file:\n{err}");
        for fragment in expected {
            assert!(err.contains(fragment), "expected `{fragment}` in:\n{err}");
        }
    }

    #[test]
    fn bad_values_name_key_and_file() {
        check_err("unknown = 1", &["key `unknown`", "unknown key"]);
        check_err("[server]\nprot = 1", &["key `server.prot`", "unknown key", "port"]);
        check_err("[docker.resource_limits]\nmemroy_bytes = 1", &["key `docker.resource_limits.memroy_bytes`"]);
        check_err("[server]\nport = \"fifty\"", &["key `server.port`", "fifty"]);
        check_err("[server]\nport = 70000", &["key `server.port`", "70000"]);
        check_err("[server]\nport = 0", &["key `server.port`", "not 0"]);
        check_err("[server]\nport = -1", &["key `server.port`"]);
        check_err("[server]\nhost = \"localhost:1\"", &["key `server.host`"]);
        check_err("managing_miner_hotkey = \"5Grw\"", &["key `managing_miner_hotkey`", "decodes to"]);
        check_err("[system]\nmax_gpu_memory_usage = 120.0", &["key `system.max_gpu_memory_usage`", "out of range"]);
        check_err("[system]\nupdate_interval = \"soon\"", &["key `system.update_interval`", "not a duration"]);
        check_err("[docker.gpu_config]\nmemory_fraction = 0.0", &["key `docker.gpu_config.memory_fraction`"]);
        check_err("[docker.gpu_config]\nmemory_fraction = 1.5", &["(0, 1]"]);
        check_err(
            "[docker.gpu_config]\nvisible_devices = \"0,x\"",
            &["key `docker.gpu_config.visible_devices`", "`x`"],
        );
        check_err(
            "[docker.registry]\nallowed_registries = [\"https://docker.io\"]",
            &["key `docker.registry.allowed_registries`", "not a registry host"],
        );
        check_err("[docker.registry]\nallowed_registries = [\"docker.io/library\"]", &["not a registry host"]);
        check_err("[docker.registry]\nallowed_registries = []", &["at least one"]);
        // Signatures: keys needed, nothing set that would have no effect, hosts must be allowed.
        check_err(
            "[docker.registry]\nverify_signatures = true",
            &["key `docker.registry.cosign_public_keys`", "at least one key", "`docker.io`"],
        );
        check_err(
            "[docker.registry]\nsignature_mode = \"warn\"",
            &["key `docker.registry.signature_mode`", "no effect while docker.registry.verify_signatures = false"],
        );
        check_err("[docker.registry]\ncosign_public_keys = [\"k.pub\"]", &["key `docker.registry.cosign_public_keys`"]);
        check_err("[docker.registry]\nsignature_mode = \"block\"", &["signature_mode", "enforce"]);
        check_err(
            "[docker.registry.registries.\"ghcr.io\"]\nusername = \"me\"",
            &["not in docker.registry.allowed_registries", "registries.\"ghcr.io\".password_file`: required"],
        );
        check_err("[docker.registry.registries.\"docker.io\"]\ncolour = 1", &["colour"]);
        check_err("[docker.registry]\npull_timeout = \"0s\"", &["key `docker.registry.pull_timeout`"]);
        check_err(
            "[docker.network_config]\ndns_servers = [\"8.8.8\"]",
            &["key `docker.network_config.dns_servers.0`", "invalid IP"],
        );
        check_err("[docker.resource_limits]\ncpu_cores = -1.0", &["key `docker.resource_limits.cpu_cores`"]);
        check_err("[docker.resource_limits]\nmemory_bytes = 1", &["key `docker.resource_limits.memory_bytes`"]);
        check_err("[docker]\nmax_concurrent_containers = 0", &["key `docker.max_concurrent_containers`"]);
        check_err(
            "[advertised_endpoint]\ngrpc_endpoint = \"ftp://x:1\"",
            &["key `advertised_endpoint.grpc_endpoint`", "http://"],
        );
        check_err("[advertised_endpoint]\nssh_endpoint = \"http://x:22\"", &["ssh://"]);
        check_err("[advertised_endpoint]\nhealth_endpoint = \"http://bad_host:1/health\"", &["not a host name"]);
        check_err("[logging]\nformat = \"xml\"", &["key `logging.format`", "xml"]);
        check_err("[logging]\nlevel = \"info,=[\"", &["key `logging.level`"]);
        check_err(
            "[metrics]\nlauncher_port = 9090",
            &["key `metrics.launcher_port`", "already used by `metrics.executor_api_port`"],
        );
        check_err("[server]\nhealth_port = 50051", &["key `server.health_port`", "`server.port`"]);
        check_err("[validator.access_config.rate_limits]\nssh_requests_per_minute = 0", &["ssh_requests_per_minute"]);
        check_err("[launcher]\nrestart_backoff_max = \"1ms\"", &["key `launcher.restart_backoff_max`"]);
        check_err("not toml [", &["executor.toml"]);
        check_err("[system]\ngpu_backend = \"simulated\"", &["key `system.simulated_gpus_file`: required"]);
        check_err("[system]\nsimulated_gpus_file = \"x.json\"", &["key `system.simulated_gpus_file`: only used"]);
        check_err("[system]\ngpu_backend = \"fake\"", &["key `system.gpu_backend`"]);
        check_err("[system]\ncollector_timeout = \"10s\"", &["key `system.collector_timeout`"]);
        check_err("[server]\nauth_time_window = \"0s\"", &["key `server.auth_time_window`", "between 1s and 1h"]);
        check_err("[server]\nrequest_timeout = \"2h\"", &["key `server.request_timeout`"]);
        check_err("[server]\ntls_cert_path = \"c.pem\"", &["key `server.tls_key_path`: required"]);
        check_err("[server]\ntls_key_path = \"k.pem\"", &["key `server.tls_cert_path`: required"]);
    }

    #[test]
    fn unusable_data_dir_names_the_key() {
        let (dir, loaded) = load("");
        let _ = loaded;
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let (_dir2, loaded) = load(&format!("data_dir = \"{}/sub\"", blocker.display()));
        let err = loaded.unwrap().prepare_dirs().unwrap_err().to_string();
        assert!(err.contains("key `data_dir`: cannot create"), "{err}");
    }

    #[test]
    fn every_issue_is_reported() {
        let (_dir, loaded) = load("[server]\nport = 0\nhealth_port = 0\n");
        assert_eq!(loaded.unwrap_err().issues.len(), 2);
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Config::load_from(Path::new("/nonexistent/executor.toml"), false).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/executor.toml") && err.contains("cannot read"), "{err}");
    }

    #[test]
    fn defaults_are_safe_and_miner_hotkey_is_required() {
        let (_dir, loaded) = load("");
        let loaded = loaded.unwrap();
        let c = &loaded.config;
        assert!(c.managing_miner_hotkey.is_none());
        assert!(
            loaded.require_miner_hotkey().unwrap_err().to_string().contains("key `managing_miner_hotkey`: missing")
        );
        assert!(c.validator.strict_ssh_restrictions && !c.docker.enable_gpu_passthrough);
        assert!(!c.docker.network_config.allow_internet && c.docker.network_config.enable_isolation);
        assert!(c.metrics.host.is_loopback());
        assert!(loaded.not_yet_enforced().is_empty(), "defaults are not operator settings");
    }

    #[test]
    fn parses_the_guide_keys_and_reports_unenforced_ones() {
        let (dir, loaded) = load(&format!(
            r#"managing_miner_hotkey = "{ALICE}"
data_dir = "rel/data"
[server]
host = "0.0.0.0"
port = 50051
advertised_host = "203.0.113.7"
advertised_port = 443
advertised_tls = true
max_connections = 2000
[docker]
enable_gpu_passthrough = true
max_concurrent_containers = 20
[docker.resource_limits]
memory_bytes = 8589934592
cpu_cores = 4.0
gpu_memory_bytes = 4294967296
disk_io_bps = 104857600
network_bps = 104857600
[docker.network_config]
enable_isolation = true
allow_internet = false
dns_servers = ["8.8.8.8", "8.8.4.4"]
[docker.gpu_config]
visible_devices = "0,1,2,3"
memory_fraction = 0.8
[docker.registry]
url = "docker.io"
verify_signatures = true
cosign_public_keys = ["keys/cosign.pub"]
allowed_registries = ["docker.io", "ghcr.io", "quay.io", "127.0.0.1:5000"]
[docker.registry.registries."127.0.0.1:5000"]
signature_mode = "warn"
username = "ci"
password_file = "keys/registry-password"
[system]
enable_gpu_monitoring = true
max_gpu_memory_usage = 90.0
[validator]
enabled = true
strict_ssh_restrictions = false
ssh_port = 22
[validator.access_config.hotkey_verification]
enabled = true
challenge_timeout_seconds = 300
max_signature_attempts = 3
[validator.access_config.rate_limits]
ssh_requests_per_minute = 10
api_requests_per_minute = 100
[advertised_endpoint]
grpc_endpoint = "http://203.0.113.7:50051"
ssh_endpoint = "ssh://203.0.113.7:22"
health_endpoint = "http://203.0.113.7:50052/health"
[launcher]
shutdown_timeout = "1m 30s"
"#
        ));
        let loaded = loaded.unwrap();
        let c = &loaded.config;
        assert_eq!(loaded.require_miner_hotkey().unwrap().as_str(), ALICE);
        assert!(c.data_dir.is_absolute() && c.data_dir.ends_with("rel/data"));
        assert_eq!(c.docker.gpu_config.memory_fraction, 0.8);
        assert_eq!(c.launcher.shutdown_timeout, Duration::from_secs(90));
        assert_eq!(parse_visible_devices(&c.docker.gpu_config.visible_devices).unwrap().unwrap().len(), 4);
        let pending = loaded.not_yet_enforced();
        let file = dir.path().join("executor.toml").display().to_string();
        assert!(pending.iter().all(|p| p.origin == file));
        for enforced in ["server.port", "docker.registry.verify_signatures", "advertised_endpoint.grpc_endpoint"] {
            assert!(!pending.iter().any(|p| p.key == enforced), "{enforced} is enforced");
        }
        let registry = &c.docker.registry;
        assert!(
            registry.cosign_public_keys[0].is_absolute() && registry.cosign_public_keys[0].ends_with("keys/cosign.pub")
        );
        assert_eq!(registry.mode_for("docker.io"), Some(SignatureMode::Enforce));
        assert_eq!(registry.mode_for("127.0.0.1:5000"), Some(SignatureMode::Warn));
        assert_eq!(registry.keys_for("127.0.0.1:5000"), registry.cosign_public_keys.as_slice());
        let local = &registry.registries["127.0.0.1:5000"];
        assert!(local.password_file.as_ref().unwrap().is_absolute());
    }

    #[test]
    fn every_unenforced_key_exists() {
        let value = serde_json::to_value(Config::default()).unwrap();
        for (key, _) in NOT_YET_ENFORCED {
            let found = key.split('.').try_fold(&value, |v, k| v.get(k));
            assert!(found.is_some(), "{key} is not a config key");
        }
    }
}
