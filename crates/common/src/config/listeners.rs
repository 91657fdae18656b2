//! The TCP ports the node listens on: `[metrics]` (one Prometheus port per process) and the
//! check that every listening port is a port and no two of them collide.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::Config;
use super::error::Issues;
use super::validator::SshServerKind;
use super::values::{Port, Validate};

/// `[metrics]`: Prometheus text on `GET /metrics`, one port per process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address every metrics port binds to.
    pub host: IpAddr,
    /// Metrics port of executor-api.
    pub executor_api_port: Port,
    /// Metrics port of container-runtime.
    pub container_runtime_port: Port,
    /// Metrics port of gpu-monitor.
    pub gpu_monitor_port: Port,
    /// Metrics port of validator-access (bound only when `[validator] enabled`).
    pub validator_access_port: Port,
    /// Metrics port of the launcher.
    pub launcher_port: Port,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            executor_api_port: Port::new(9090),
            container_runtime_port: Port::new(9091),
            gpu_monitor_port: Port::new(9092),
            validator_access_port: Port::new(9093),
            launcher_port: Port::new(9094),
        }
    }
}

impl Config {
    /// Every TCP port the node listens on, with its key: the public ports, the metrics port of
    /// each process that runs, and the SSH ports of validator and tenant access when enabled.
    pub fn listeners(&self) -> Vec<(&'static str, IpAddr, u16)> {
        let (s, m) = (&self.server, &self.metrics);
        let mut listeners = vec![
            ("server.port", s.host, s.port.get()),
            ("server.health_port", s.host, s.health_port.get()),
            ("metrics.executor_api_port", m.host, m.executor_api_port.get()),
            ("metrics.container_runtime_port", m.host, m.container_runtime_port.get()),
            ("metrics.gpu_monitor_port", m.host, m.gpu_monitor_port.get()),
            ("metrics.launcher_port", m.host, m.launcher_port.get()),
        ];
        if self.validator.enabled || self.tenant_access.enabled {
            listeners.push(("metrics.validator_access_port", m.host, m.validator_access_port.get()));
        }
        if self.validator.enabled && self.validator.ssh_server == SshServerKind::Embedded {
            listeners.push(("validator.ssh_port", s.host, self.validator.ssh_port.get()));
        }
        if self.tenant_access.enabled {
            listeners.push(("tenant_access.ssh_port", s.host, self.tenant_access.ssh_port.get()));
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
        .get()
    }

    /// Each listening port is a port, and no two listeners share one.
    pub(super) fn validate_listeners(&self, v: &mut Issues) {
        let mut ports: BTreeMap<(IpAddr, u16), &str> = BTreeMap::new();
        for (key, host, port) in self.listeners() {
            if let Err(e) = Port::new(port).validate() {
                v.fail(key, e);
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
    }
}
