//! The executor's one configuration file, read by every service.
//!
//! Loading order: defaults, then the TOML file, then `EXECUTOR_SECTION__KEY` environment
//! variables. Unknown keys are errors, every value is validated, and every error names the key
//! and where its value came from (the file or the environment variable).
//!
//! This module owns the top level ([`Config`]) and the order of the checks; each section lives
//! in its own module with its checks ([`server`], [`docker`], [`registry`], [`system`],
//! [`validator`], [`endpoints`], [`logging`], [`launcher`], and [`listeners`] for `[metrics]`
//! and the listening ports); the typed values whose checks come with their type are in
//! [`values`]; reading the file and the environment is [`load`]; the errors are [`error`].
//! A new key is one field with its doc comment (the reference in `docs/executor.md` is
//! generated from these files) and its default; a typed value brings its own check.

pub mod docker;
pub mod endpoints;
pub mod error;
pub mod images;
pub mod launcher;
pub mod listeners;
pub mod load;
pub mod logging;
pub mod ports;
pub mod registry;
pub mod server;
pub mod system;
pub mod templates;
pub mod tenant;
pub mod validator;
pub mod values;
pub mod volumes;
pub mod workload;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use docker::{
    Capability, DockerConfig, DockerMode, GpuConfig, NetworkConfig, OnGpuError, ResourceLimits, nvidia_device_plugin,
    parse_visible_devices,
};
pub use endpoints::AdvertisedEndpointConfig;
pub use error::{CONFIG_ERROR_EXIT_CODE, ConfigError, ConfigIssue};
pub use images::ImagesConfig;
pub use launcher::LauncherConfig;
pub use listeners::MetricsConfig;
pub use load::{LoadedConfig, check_writable_dir};
pub use logging::{LogFormat, LoggingConfig};
pub use ports::{NatMapping, PortRange, PortsConfig};
pub use registry::{RegistryConfig, RegistrySettings, SignatureMode};
pub use server::ServerConfig;
pub use system::{GpuBackendKind, SystemConfig};
pub use templates::Template;
pub use tenant::{SshCipher, TenantAccessConfig};
pub use validator::{
    AccessConfig, AccessLimits, HotkeyVerification, RateLimits, SshServerKind, ValidatorConfig, in_network,
    parse_network,
};
pub use values::{
    ByteSize, Fraction, HostName, Hotkey, InvalidValue, Percent, Port, RegistryHost, Validate, normalise_registry_host,
};
pub use volumes::VolumesConfig;
pub use workload::{DriverCapability, IpcMode, WorkloadConfig};

use error::Issues;

/// Prefix of environment overrides: `EXECUTOR_DOCKER__MAX_CONCURRENT_CONTAINERS=4`.
pub const ENV_PREFIX: &str = "EXECUTOR_";

/// Keys that parse and validate but that no code in this build acts on yet, with the part that
/// will. Setting one is reported (launcher log and `executor validate`) rather than ignored
/// silently; each entry is removed when its part lands.
pub const NOT_YET_ENFORCED: &[(&str, &str)] = &[];

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
    pub tenant_access: TenantAccessConfig,
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
            tenant_access: TenantAccessConfig::default(),
            advertised_endpoint: AdvertisedEndpointConfig::default(),
            logging: LoggingConfig::default(),
            metrics: MetricsConfig::default(),
            launcher: LauncherConfig::default(),
        }
    }
}

impl Config {
    /// Checks values serde cannot: ranges, formats, conflicts, section by section. Returns
    /// `(key, message)` pairs; the loader adds where each value came from.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut v = Issues::default();
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
        self.validate_listeners(&mut v);
        self.server.validate(&mut v);
        self.docker.validate([&self.data_dir, &self.runtime_dir], &mut v);
        self.system.validate(&mut v);
        self.validator.validate(&mut v);
        self.tenant_access.validate(&mut v);
        self.advertised_endpoint.validate(&mut v);
        self.logging.validate(&mut v);
        self.launcher.validate(&mut v);
        v.0
    }

    /// The services this configuration runs, in start order (validator-access only when
    /// `[validator] enabled` or `[tenant_access] enabled`).
    pub fn services(&self) -> Vec<crate::ServiceName> {
        crate::ServiceName::SUPERVISED
            .into_iter()
            .filter(|s| {
                *s != crate::ServiceName::ValidatorAccess || self.validator.enabled || self.tenant_access.enabled
            })
            .collect()
    }
}
