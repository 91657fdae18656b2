//! The domain's one error type: every way a call on [`super::Runtime`] fails, each variant
//! naming what it is about (the container, the field, the limit) and carrying the engine's or
//! a peer's own error as its `source`. The gRPC layer picks the reason for each (`grpc::refusal`).

use crate::admission::AdmissionError;
use crate::engine::EngineError;
use crate::gpu_monitor::GpuMonitorError;
use crate::gpus::GpuError;
use crate::images::ImageError;
use crate::labels::NameError;
use crate::ports::PortError;
use crate::reference::{NotAllowed, ReferenceError};
use crate::rootfs::RootError;
use crate::shaping::ShapingError;
use crate::spec::{MountError, SpecError};
use crate::volumes::VolumeError;

/// Why a call on the runtime failed. The `Display` of the variants the caller caused is worded
/// for the caller; the engine's text is only ever in a `source`.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A request field is malformed or beyond the limits; the error names the field.
    #[error(transparent)]
    Invalid(#[from] SpecError),
    #[error("image: {0}")]
    BadImage(#[source] ReferenceError),
    #[error("image: {0}")]
    ImageNotAllowed(#[source] NotAllowed),
    #[error("id: `{id}` is not a container id")]
    BadId { id: String },
    /// No container of ours has this id (or the engine has none by that name).
    #[error("container {id} not found")]
    NotFound { id: String },
    #[error("container {id} is running; stop it or use force")]
    Running { id: String },
    /// A call that needs the container running (attach).
    #[error("container {id} is not running")]
    NotRunning { id: String },
    /// A login shell was asked for and the container's image has none.
    #[error("container {id}: the image has no shell (/bin/bash or /bin/sh)")]
    NoShell { id: String },
    /// A command named by its absolute path where the container has no executable file.
    #[error("container {id}: {path} is not an executable file in the container")]
    NotExecutable { id: String, path: String },
    /// The container's root could not be looked into from the host.
    #[error("container {id}: cannot look for a shell or command in it")]
    ContainerRoot { id: String, source: RootError },
    /// The service is shutting down: no new sessions, and the open ones end.
    #[error("container-runtime is shutting down")]
    ShuttingDown,
    /// A forward to anything but the container's own loopback.
    #[error("start.host: only the container's own loopback (localhost, 127.0.0.1, ::1) can be forwarded to")]
    ForwardTarget { host: String },
    /// The container shares this service's network namespace (the host's): its loopback is
    /// not its own.
    #[error("container {id} uses the host's network: its loopback is the host's and is not forwarded to")]
    SharesHostNetwork { id: String },
    /// A forward found nothing listening at its target inside the container.
    #[error("nothing listens on {address} in the container")]
    NothingListens { id: String, address: std::net::SocketAddr },
    /// A forward's target inside the container did not accept within the connect timeout.
    #[error("{address} in the container did not accept the connection within {} s", super::CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { id: String, address: std::net::SocketAddr },
    /// A forward's target inside the container cannot be reached (no IPv6 in it, say).
    #[error("cannot connect to {address} in the container")]
    Connect { id: String, address: std::net::SocketAddr, source: std::io::Error },
    /// The container's network namespace could not be entered from the host.
    #[error("container {id}: cannot enter its network namespace")]
    Namespace { id: String, source: std::io::Error },
    /// The engine started an attached exec without attaching it.
    #[error("container {id}: the engine did not attach the command")]
    NotAttached { id: String },
    #[error("gpu_count/gpu_uuids: docker.enable_gpu_passthrough = false on this executor")]
    GpuPassthroughOff,
    /// `[docker] mode = "agent-only"`: the orchestrator places the workloads, not this executor.
    #[error("docker.mode: this executor runs agent-only and creates no containers (the orchestrator places workloads)")]
    AgentOnly,
    /// A bind mount outside `docker.allowed_host_paths` or over the executor's own directories.
    #[error(transparent)]
    Mount(MountError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error("docker.gpu_config.visible_devices: {0}")]
    VisibleDevices(common::config::InvalidValue),
    /// gpu-monitor, which says which GPUs there are, did not answer a create that wants GPUs.
    #[error("gpu_count/gpu_uuids: {0}")]
    GpuInventory(#[source] GpuMonitorError),
    /// gpu-monitor did not answer a round of GPU memory enforcement.
    #[error("GPU memory limits: {0}")]
    GpuUsage(#[source] GpuMonitorError),
    /// Published ports the pool cannot give (outside it, reserved, in use, none left).
    #[error(transparent)]
    Ports(#[from] PortError),
    /// The same for `UpdateContainer.add_ports` (the field named so).
    #[error("add_{0}")]
    AddPorts(PortError),
    #[error("docker.max_concurrent_containers = {cap} containers exist already; remove one first")]
    TooMany { cap: usize },
    /// `network_bps` cannot be enforced on this host (`id` None: for any container).
    #[error("resources.network_bps: cannot shape the traffic of {}", .id.as_deref().unwrap_or("containers on this host"))]
    Shaping { id: Option<String>, source: ShapingError },
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    #[error("since: out of range")]
    SinceOutOfRange,
    #[error("command: empty")]
    EmptyCommand,
    #[error("no stats from the engine")]
    NoStats { id: String },
    /// The engine failed or refused; what the caller hears depends on how (see `grpc`).
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot name a new container")]
    Name(#[source] NameError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The node is drained: no new containers until it is undrained.
    #[error("draining: this executor takes no new containers (drained at {since}{})", if .reason.is_empty() { String::new() } else { format!(": {}", .reason) })]
    Draining { reason: String, since: i64 },
    #[error("drain state: {0}")]
    DrainStore(#[source] common::durable::StoreError),
    /// What is kept of a container in `data_dir` could not be written.
    #[error("container {id}: cannot record the change")]
    Record { id: String, source: std::io::Error },
}
