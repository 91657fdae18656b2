//! Pieces every executor process shares and no service logic: the configuration, generated
//! protobuf types, the executor identity, hotkey verification, logging, metrics, Unix-socket
//! gRPC helpers, the HTTP listeners, per-peer connection limits, process spawning, time, and
//! the host that runs a service binary.
//!
//! Without the default `service` feature only the identity, hotkeys, processes and time are
//! built: what the standalone `gpu-attestor` needs.

#[cfg(feature = "service")]
pub mod audit;
#[cfg(feature = "service")]
pub mod check;
pub mod clock;
#[cfg(feature = "service")]
pub mod config;
pub mod durable;
pub mod exec_env;
pub mod gpu_self_test;
#[cfg(feature = "service")]
pub mod grpc;
pub mod hotkey;
#[cfg(feature = "service")]
pub mod http;
pub mod identity;
#[cfg(feature = "service")]
pub mod metrics;
#[cfg(feature = "service")]
pub mod peers;
pub mod process;
#[cfg(feature = "service")]
pub mod proto;
#[cfg(feature = "service")]
pub mod ratelimit;
#[cfg(feature = "service")]
pub mod reason;
#[cfg(feature = "service")]
pub mod service;
#[cfg(feature = "service")]
pub mod telemetry;

use std::path::{Path, PathBuf};

/// Version of every binary in this workspace.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The processes of an executor node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceName {
    ExecutorApi,
    ContainerRuntime,
    GpuMonitor,
    ValidatorAccess,
    Launcher,
}

impl ServiceName {
    /// The services the launcher supervises, in start order: executor-api fronts the others,
    /// so it starts last.
    pub const SUPERVISED: [ServiceName; 4] = [
        ServiceName::ContainerRuntime,
        ServiceName::GpuMonitor,
        ServiceName::ValidatorAccess,
        ServiceName::ExecutorApi,
    ];

    /// Binary name, also used in logs, metrics labels and socket names.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::ExecutorApi => "executor-api",
            ServiceName::ContainerRuntime => "container-runtime",
            ServiceName::GpuMonitor => "gpu-monitor",
            ServiceName::ValidatorAccess => "validator-access",
            ServiceName::Launcher => "executor",
        }
    }

    /// `<runtime_dir>/<name>.sock`, where the process serves its internal gRPC.
    pub fn socket(self, runtime_dir: &Path) -> PathBuf {
        let name = if self == ServiceName::Launcher { "launcher" } else { self.as_str() };
        runtime_dir.join(format!("{name}.sock"))
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
