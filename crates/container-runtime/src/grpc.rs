//! The `executor.runtime.v1.ContainerRuntime` gRPC service on the internal socket, thin: each
//! call takes its request apart, calls the domain ([`Runtime`]) and maps a [`RuntimeError`] to
//! a [`Refusal`] in one place ([`refusal`]): a stable reason, a message worded for the caller,
//! and the engine's or the OS's own text only as the internal cause (and in the log).

use common::proto::runtime::v1 as pb;
use common::proto::runtime::v1::container_runtime_server::ContainerRuntime as RuntimeApi;
use common::reason::{Reason, Refusal};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::admission::AdmissionError;
use crate::domain::{ForwardEnd, LogChunks, Runtime, RuntimeError};
use crate::engine::EngineError;
use crate::gpu_monitor::GpuMonitorError;
use crate::gpus::GpuError;
use crate::images::ImageError;
use crate::ports::PortError;
use crate::spec::MountError;
use crate::volumes::VolumeError;

/// The gRPC face of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeGrpc {
    runtime: Runtime,
}

impl RuntimeGrpc {
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime }
    }
}

/// The one mapping of domain errors to what the caller hears. Internal codes stay those the
/// service has always returned (each reason's `internal_code`).
pub fn refusal(e: &RuntimeError) -> Refusal {
    use RuntimeError as E;
    let caller = |reason| Refusal::new(reason, e.to_string());
    let refusal = match e {
        // Malformed or out-of-bounds request fields, named in the message.
        E::Invalid(_) | E::BadImage(_) | E::BadId { .. } | E::SinceOutOfRange | E::EmptyCommand => {
            caller(Reason::InvalidField)
        }
        // The registry allow-list: the request is well-formed, this node does not run it.
        E::ImageNotAllowed(_) => caller(Reason::ImageRefused),
        E::NotFound { .. } => caller(Reason::NotFound),
        // Running and not forced.
        E::Running { .. } => caller(Reason::WrongState),
        // Attach needs the container running, and a login shell or a command its file there.
        E::NotRunning { .. } | E::NoShell { .. } | E::NotExecutable { .. } => caller(Reason::WrongState),
        // /proc or openat2 failed on this host: the OS's words are the cause.
        E::ContainerRoot { source, .. } => Refusal::new(Reason::Internal, e.to_string()).with_cause(source),
        E::NotAttached { .. } => Refusal::new(Reason::Engine, e.to_string()),
        // A forward off the container's loopback is never allowed, whoever asks.
        E::ForwardTarget { .. } | E::SharesHostNetwork { .. } => caller(Reason::NotPermitted),
        // Nothing listens there, or the container cannot reach it (no IPv6): the container's
        // state, which its renter changes; the OS's words are the cause.
        E::NothingListens { .. } => caller(Reason::WrongState),
        E::Connect { source, .. } => caller(Reason::WrongState).with_cause(source),
        E::ConnectTimeout { .. } => caller(Reason::Timeout),
        // setns or /proc failed on this host: the OS's words are the cause.
        E::Namespace { source, .. } => Refusal::new(Reason::Internal, e.to_string()).with_cause(source),
        // Going away: the caller may try again once the service is back.
        E::ShuttingDown => caller(Reason::PeerUnavailable),
        // What this host's configuration does not allow: no GPU passthrough, a host path off
        // the allow-list, a device list that does not parse.
        E::GpuPassthroughOff | E::VisibleDevices(_) | E::AgentOnly => caller(Reason::HostUnsupported),
        // A host path that does not resolve: the OS's words are the cause.
        E::Mount(MountError::Unresolvable { source, .. }) => caller(Reason::HostUnsupported).with_cause(source),
        E::Mount(MountError::Refused(_)) => caller(Reason::HostUnsupported),
        E::Gpu(g) => match g {
            GpuError::Busy { .. } => caller(Reason::GpuBusy),
            // Fewer free GPUs than asked: a limit of the node, retry later.
            GpuError::NotEnough { .. } => caller(Reason::LimitReached),
            GpuError::Unknown(_) | GpuError::Both | GpuError::Duplicate(_) => caller(Reason::InvalidField),
            // Unhealthy or in MIG mode: this node cannot give that GPU now.
            GpuError::Unavailable { .. } => caller(Reason::HostUnsupported),
        },
        // gpu-monitor's own message is its business: the caller hears that it did not answer.
        E::GpuInventory(m) | E::GpuUsage(m) => {
            let what = if matches!(e, E::GpuInventory(_)) { "gpu_count/gpu_uuids" } else { "GPU memory limits" };
            let message = match m {
                GpuMonitorError::Timeout => format!("{what}: gpu-monitor did not answer"),
                GpuMonitorError::Failed(_) => format!("{what}: gpu-monitor failed"),
            };
            Refusal::new(Reason::PeerUnavailable, message).with_cause(m)
        }
        E::TooMany { .. } => caller(Reason::LimitReached),
        E::Ports(p) | E::AddPorts(p) => match p {
            PortError::OutsidePool { .. } | PortError::Reserved { .. } | PortError::Twice { .. } => {
                caller(Reason::InvalidField)
            }
            PortError::InUse { .. } => caller(Reason::AlreadyExists),
            // The pool is empty: a limit of the node, retry once a container is removed.
            PortError::Exhausted { .. } => caller(Reason::LimitReached),
            PortError::NoPool | PortError::NoNetwork | PortError::Check(_) => caller(Reason::HostUnsupported),
        },
        // `network_bps` cannot be enforced here; `tc`'s and `ip`'s words are the cause.
        E::Shaping { source, .. } => caller(Reason::HostUnsupported).with_cause(source),
        E::Admission(a) => admission(a),
        // The engine had no sample: like a peer that did not answer, retry.
        E::NoStats { .. } => caller(Reason::PeerUnavailable),
        E::Engine(engine) => self::engine(engine),
        E::Name(source) => Refusal::new(Reason::Internal, e.to_string()).with_cause(source),
        E::Volume(v) => match v {
            VolumeError::Invalid { .. } => caller(Reason::InvalidField),
            VolumeError::NotFound { .. } => caller(Reason::NotFound),
            VolumeError::Exists(_) => caller(Reason::AlreadyExists),
            VolumeError::OverTotal { .. } | VolumeError::NoRoom { .. } => caller(Reason::LimitReached),
            VolumeError::InUse { .. } | VolumeError::Shared { .. } => caller(Reason::WrongState),
            VolumeError::Host { .. } => Refusal::new(Reason::Storage, e.to_string()),
        },
        E::Draining { .. } => caller(Reason::Draining),
        E::DrainStore(source) => Refusal::new(Reason::Storage, e.to_string()).with_cause(source),
        E::Record { source, .. } => Refusal::new(Reason::Storage, e.to_string()).with_cause(source),
        E::Image(i) => match i {
            ImageError::NotCached { .. } => caller(Reason::NotFound),
            ImageError::Prefetched { .. } | ImageError::InUse { .. } => caller(Reason::WrongState),
            ImageError::Conflict { source, .. } => caller(Reason::WrongState).with_cause(source),
            ImageError::Engine { source, .. } => Refusal::new(Reason::Engine, e.to_string()).with_cause(source),
            ImageError::Store(source) => Refusal::new(Reason::Storage, e.to_string()).with_cause(source),
        },
    };
    match refusal.reason {
        Reason::Engine | Reason::Internal => tracing::error!(refusal = %refusal, "container runtime failed"),
        _ if refusal.cause.is_some() => tracing::warn!(refusal = %refusal, "container runtime refused"),
        _ => {}
    }
    refusal
}

fn admission(e: &AdmissionError) -> Refusal {
    let message = e.to_string();
    match e {
        // No login for the image's registry: it cannot be pulled; the file error is the cause.
        AdmissionError::Credentials { source, .. } => {
            Refusal::new(Reason::ImageUnavailable, message).with_cause(source)
        }
        // The signature policy said no; why (unsigned, wrong key, the registry's answer) is
        // part of the decision the caller is told.
        AdmissionError::Refused { .. } => Refusal::new(Reason::ImageRefused, message),
        AdmissionError::VerifyTimeout { .. } | AdmissionError::PullTimeout { .. } => {
            Refusal::new(Reason::Timeout, message)
        }
        // The engine's pull error (registry text, DNS) is the cause, not the message.
        AdmissionError::Pull { source, .. } => Refusal::new(Reason::ImageUnavailable, message).with_cause(source),
    }
}

/// Engine errors by the engine's status: what the caller did or the host lacks gets its
/// reason, anything else is the engine's failure.
fn engine(e: &EngineError) -> Refusal {
    use bollard::errors::Error as B;
    let refusal = match e {
        EngineError::Docker { source: B::DockerResponseServerError { status_code: 404, .. }, id } => {
            Refusal::new(Reason::NotFound, format!("container {id} not found"))
        }
        // A conflict with the container's state (removal in progress, not running).
        EngineError::Docker { source: B::DockerResponseServerError { status_code: 409, .. }, id } => {
            Refusal::new(Reason::WrongState, format!("container {id}: not possible in its current state"))
        }
        // A GPU container on a host without the NVIDIA container runtime.
        EngineError::Docker { source: B::DockerResponseServerError { status_code: 500, message }, id }
            if message.contains("device driver") =>
        {
            Refusal::new(Reason::HostUnsupported, format!("container {id}: no NVIDIA container runtime on this host"))
        }
        // The engine refused a parameter: the request (or the host) cannot have it.
        EngineError::Docker { source: B::DockerResponseServerError { status_code: 400, .. }, id } => {
            Refusal::new(Reason::HostUnsupported, format!("container {id}: the engine refused it on this host"))
        }
        EngineError::Docker { source: B::DockerResponseServerError { status_code: 304, .. }, id } => {
            Refusal::new(Reason::WrongState, format!("container {id} is already in that state"))
        }
        // Randomness for a network name: our own failure.
        EngineError::Name(_) => Refusal::new(Reason::Internal, "cannot name a new network"),
        _ => Refusal::new(Reason::Engine, "the container engine failed; see the executor log"),
    };
    refusal.with_cause(e)
}

fn status(e: RuntimeError) -> Status {
    refusal(&e).into_status()
}

#[tonic::async_trait]
impl RuntimeApi for RuntimeGrpc {
    async fn create(&self, request: Request<pb::CreateContainerRequest>) -> Result<Response<pb::Container>, Status> {
        let started = std::time::Instant::now();
        let result = self.runtime.create(request.into_inner()).await.map_err(status);
        let outcome = match &result {
            Ok(_) => {
                metrics::histogram!("executor_container_runtime_create_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                "ok".to_owned()
            }
            Err(status) => format!("{:?}", status.code()).to_lowercase(),
        };
        metrics::counter!("executor_container_runtime_creates_total", "result" => outcome).increment(1);
        result.map(Response::new)
    }

    async fn start(&self, request: Request<pb::ContainerRef>) -> Result<Response<pb::Container>, Status> {
        self.runtime.start(&request.into_inner().id).await.map(Response::new).map_err(status)
    }

    async fn update(&self, request: Request<pb::UpdateContainerRequest>) -> Result<Response<pb::Container>, Status> {
        let r = request.into_inner();
        self.runtime.update(&r.id, r.ttl_seconds, &r.add_ports).await.map(Response::new).map_err(status)
    }

    async fn stop(&self, request: Request<pb::StopContainerRequest>) -> Result<Response<pb::Container>, Status> {
        let r = request.into_inner();
        self.runtime.stop(&r.id, r.timeout_seconds, &r.requested_by).await.map(Response::new).map_err(status)
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveContainerRequest>,
    ) -> Result<Response<pb::RemoveContainerResponse>, Status> {
        let r = request.into_inner();
        self.runtime.remove(&r.id, r.force).await.map_err(status)?;
        Ok(Response::new(pb::RemoveContainerResponse {}))
    }

    async fn get(&self, request: Request<pb::ContainerRef>) -> Result<Response<pb::Container>, Status> {
        self.runtime.describe(&request.into_inner().id).await.map(Response::new).map_err(status)
    }

    async fn list(
        &self,
        request: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let r = request.into_inner();
        let containers = self.runtime.list(r.all, &r.owner).await.map_err(status)?;
        Ok(Response::new(pb::ListContainersResponse { containers }))
    }

    type LogsStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

    async fn logs(&self, request: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let chunks: LogChunks = self.runtime.logs(request.into_inner()).await.map_err(status)?;
        Ok(Response::new(Box::pin(chunks.map(|item| item.map_err(status)))))
    }

    async fn stats(&self, request: Request<pb::ContainerRef>) -> Result<Response<pb::ContainerStats>, Status> {
        self.runtime.stats(&request.into_inner().id).await.map(Response::new).map_err(status)
    }

    async fn exec(&self, request: Request<pb::ExecRequest>) -> Result<Response<pb::ExecResponse>, Status> {
        self.runtime.exec(request.into_inner()).await.map(Response::new).map_err(status)
    }

    async fn create_volume(&self, request: Request<pb::CreateVolumeRequest>) -> Result<Response<pb::Volume>, Status> {
        let r = request.into_inner();
        self.runtime.create_volume(&r.name, r.size_bytes).await.map(Response::new).map_err(status)
    }

    async fn list_volumes(
        &self,
        _request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let volumes = self.runtime.list_volumes().await.map_err(status)?;
        Ok(Response::new(pb::ListVolumesResponse { volumes }))
    }

    async fn delete_volume(
        &self,
        request: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        self.runtime.delete_volume(&request.into_inner().name).await.map_err(status)?;
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    type PullImageStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::PullProgress, Status>> + Send>>;

    async fn pull_image(
        &self,
        request: Request<pb::PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        let steps = self.runtime.pull_image(request.into_inner()).await.map_err(status)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(steps).map(|item| item.map_err(status)))))
    }

    async fn list_images(
        &self,
        _request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        self.runtime.list_images().await.map(Response::new).map_err(status)
    }

    async fn remove_image(
        &self,
        request: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        self.runtime.remove_image(&request.into_inner().image).await.map_err(status)?;
        Ok(Response::new(pb::RemoveImageResponse {}))
    }

    async fn set_drain(&self, request: Request<pb::SetDrainRequest>) -> Result<Response<pb::DrainState>, Status> {
        let r = request.into_inner();
        self.runtime.set_drain(r.draining, &r.reason).await.map(Response::new).map_err(status)
    }

    type EventsStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Event, Status>> + Send>>;

    async fn events(&self, request: Request<pb::WatchEventsRequest>) -> Result<Response<Self::EventsStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(EVENTS_QUEUE);
        let watch = self
            .runtime
            .events()
            .watch(&request.into_inner(), tx)
            .map_err(|e| Refusal::new(Reason::EventsGone, e.to_string()).into_status())?;
        tokio::spawn(watch);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }

    async fn get_drain(&self, _request: Request<pb::GetDrainRequest>) -> Result<Response<pb::DrainState>, Status> {
        Ok(Response::new(self.runtime.drain_state()))
    }

    async fn capacity(&self, _request: Request<pb::CapacityRequest>) -> Result<Response<pb::CapacityResponse>, Status> {
        self.runtime.capacity().await.map(Response::new).map_err(status)
    }

    async fn list_templates(
        &self,
        _request: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        Ok(Response::new(pb::ListTemplatesResponse { templates: self.runtime.list_templates() }))
    }

    async fn check_ports(
        &self,
        _request: Request<pb::CheckPortsRequest>,
    ) -> Result<Response<pb::CheckPortsResponse>, Status> {
        self.runtime.check_ports().await.map(Response::new).map_err(status)
    }

    async fn pid(&self, request: Request<pb::ContainerRef>) -> Result<Response<pb::ContainerPid>, Status> {
        let pid = self.runtime.pid(&request.into_inner().id).await.map_err(status)?;
        Ok(Response::new(pb::ContainerPid { pid }))
    }

    type AttachStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::AttachOutput, Status>> + Send>>;

    /// The first message must be `start` (within 10 s); the session then runs in a task of its
    /// own (tracked by the runtime) that owns the stream's sender, so it ends when the command
    /// does, when the client goes or when the service shuts down, never with the handler.
    async fn attach(
        &self,
        request: Request<tonic::Streaming<pb::AttachInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut input = request.into_inner();
        let start = match tokio::time::timeout(START_TIMEOUT, input.message()).await {
            Ok(Ok(Some(pb::AttachInput { input: Some(pb::attach_input::Input::Start(start)) }))) => Ok(start),
            Ok(Ok(_)) => Err(not_started("the first message must be `start`")),
            // The client broke off before it said anything: nothing to refuse.
            Ok(Err(status)) => return Err(status),
            Err(_) => Err(not_started("no `start` within 10 s")),
        };
        let attachment = match start {
            Ok(start) => self.runtime.attach(start).await,
            Err(e) => Err(e),
        };
        let attachment = attachment.map_err(|e| {
            attach_event(AttachEvent::Refused);
            status(e)
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(ATTACH_QUEUE);
        self.runtime.spawn_session(async move {
            let _open = OpenSession::new();
            let exec_id = attachment.exec_id().to_owned();
            let end = attachment.run(input, tx).await;
            tracing::info!(exec_id, ?end, "attach session ended");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(|item| item.map_err(status)))))
    }

    type ForwardStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ForwardOutput, Status>> + Send>>;

    /// The first message must be `start` (within 10 s); the connection is made before the
    /// answer (an error status when it cannot be), then carried in a task of its own (tracked
    /// by the runtime, with the Attach sessions) that owns the stream's sender and the socket.
    async fn forward(
        &self,
        request: Request<tonic::Streaming<pb::ForwardInput>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let mut input = request.into_inner();
        let start = match tokio::time::timeout(START_TIMEOUT, input.message()).await {
            Ok(Ok(Some(pb::ForwardInput { input: Some(pb::forward_input::Input::Start(start)) }))) => Ok(start),
            Ok(Ok(_)) => Err(not_started("the first message must be `start`")),
            // The client broke off before it said anything: nothing to refuse.
            Ok(Err(status)) => return Err(status),
            Err(_) => Err(not_started("no `start` within 10 s")),
        };
        let forwarding = match start {
            Ok(start) => self.runtime.forward(start).await,
            Err(e) => Err(e),
        };
        let forwarding = forwarding.map_err(|e| {
            let refusal = refusal(&e);
            forward_event(ForwardEvent::Refused(refusal.reason));
            refusal.into_status()
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(FORWARD_QUEUE);
        self.runtime.spawn_session(async move {
            let _open = OpenForward::new();
            let address = forwarding.address();
            let end: ForwardEnd = forwarding.run(input, tx).await;
            tracing::info!(%address, ?end, "forward ended");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(|item| item.map_err(status)))))
    }
}

/// Data on its way to a Forward client, each at most 16 KiB: the container's side is read
/// only when there is room, so a slow client slows it down.
const FORWARD_QUEUE: usize = 16;

/// Events a watcher's stream holds before the watch waits for it (it reads on from the events
/// kept when it falls further behind).
const EVENTS_QUEUE: usize = 64;

/// What happened to a Forward request, logged and counted together.
#[derive(Debug, Clone, Copy)]
enum ForwardEvent {
    Connected,
    /// Refused or failed, for this reason.
    Refused(Reason),
}

/// Counts a Forward request by its result (`executor_container_runtime_forwards_total`:
/// `connected`, or the reason it was not); the refusal itself is logged where it is mapped
/// ([`refusal`]).
fn forward_event(event: ForwardEvent) {
    let result = match event {
        ForwardEvent::Connected => "connected",
        ForwardEvent::Refused(reason) => reason.as_str(),
    };
    tracing::debug!(result, "forward");
    metrics::counter!("executor_container_runtime_forwards_total", "result" => result).increment(1);
}

/// An open forward, counted in `executor_container_runtime_forwards` while it lives.
#[derive(Debug)]
struct OpenForward;

impl OpenForward {
    fn new() -> Self {
        forward_event(ForwardEvent::Connected);
        metrics::gauge!("executor_container_runtime_forwards").increment(1.0);
        Self
    }
}

impl Drop for OpenForward {
    fn drop(&mut self) {
        metrics::gauge!("executor_container_runtime_forwards").decrement(1.0);
    }
}

/// How long an Attach client has to send its `start`.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Answers on their way to an Attach client: output waits for room here, so a client that
/// reads slowly slows the command's output down rather than filling the memory.
const ATTACH_QUEUE: usize = 16;

fn not_started(message: &str) -> RuntimeError {
    RuntimeError::Invalid(crate::spec::SpecError { field: "start".to_owned(), message: message.to_owned() })
}

/// What happened to an Attach request, logged and counted together.
#[derive(Debug, Clone, Copy)]
enum AttachEvent {
    Started,
    Refused,
}

/// Counts an Attach request by its result (`executor_container_runtime_attach_total`); the
/// refusal itself is logged where it is mapped ([`refusal`]).
fn attach_event(event: AttachEvent) {
    let result = match event {
        AttachEvent::Started => "started",
        AttachEvent::Refused => "refused",
    };
    tracing::debug!(result, "attach");
    metrics::counter!("executor_container_runtime_attach_total", "result" => result).increment(1);
}

/// An open Attach session, counted in `executor_container_runtime_attach_sessions` while it
/// lives.
#[derive(Debug)]
struct OpenSession;

impl OpenSession {
    fn new() -> Self {
        attach_event(AttachEvent::Started);
        metrics::gauge!("executor_container_runtime_attach_sessions").increment(1.0);
        Self
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        metrics::gauge!("executor_container_runtime_attach_sessions").decrement(1.0);
    }
}

/// Describes the metrics of Attach and Forward.
pub fn describe_metrics() {
    metrics::describe_gauge!("executor_container_runtime_forwards", "Forwards into containers open now.");
    metrics::describe_counter!(
        "executor_container_runtime_forwards_total",
        "Forward requests by result (connected, or the reason: not_permitted, wrong_state, ...)."
    );
    metrics::describe_gauge!("executor_container_runtime_attach_sessions", "Attach sessions open now.");
    metrics::describe_counter!(
        "executor_container_runtime_attach_total",
        "Attach requests by result (started, refused)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::ImageRef;
    use crate::shaping::ShapingError;
    use crate::signatures::Unverified;
    use crate::spec::SpecError;

    fn docker(status_code: u16, message: &str) -> RuntimeError {
        let source = bollard::errors::Error::DockerResponseServerError { status_code, message: message.into() };
        RuntimeError::Engine(EngineError::Docker { id: "c-1".into(), source })
    }

    /// Each error: its reason, the internal code the service has always returned for it, and
    /// words of the message; engine and OS text (`SECRET`) never reaches the message.
    #[test]
    fn every_error_gets_its_reason_and_keeps_its_code() {
        use tonic::Code;
        let spec = |field: &str| SpecError { field: field.into(), message: "no".into() };
        let cases: Vec<(RuntimeError, Reason, Code, &str)> = vec![
            (
                RuntimeError::Invalid(spec("resources.pids")),
                Reason::InvalidField,
                Code::InvalidArgument,
                "resources.pids",
            ),
            (
                RuntimeError::BadImage(ImageRef::parse("UPPER", "docker.io").unwrap_err()),
                Reason::InvalidField,
                Code::InvalidArgument,
                "image:",
            ),
            (RuntimeError::BadId { id: "../x".into() }, Reason::InvalidField, Code::InvalidArgument, "id: `../x`"),
            (RuntimeError::EmptyCommand, Reason::InvalidField, Code::InvalidArgument, "command"),
            (not_started("the first message must be `start`"), Reason::InvalidField, Code::InvalidArgument, "start:"),
            (
                RuntimeError::NotRunning { id: "c-1".into() },
                Reason::WrongState,
                Code::FailedPrecondition,
                "container c-1 is not running",
            ),
            (
                RuntimeError::NoShell { id: "c-1".into() },
                Reason::WrongState,
                Code::FailedPrecondition,
                "the image has no shell (/bin/bash or /bin/sh)",
            ),
            (
                RuntimeError::NotExecutable { id: "c-1".into(), path: "/bin/sh".into() },
                Reason::WrongState,
                Code::FailedPrecondition,
                "container c-1: /bin/sh is not an executable file in the container",
            ),
            (
                RuntimeError::ContainerRoot {
                    id: "c-1".into(),
                    source: crate::rootfs::RootError::Resolve {
                        root: "/proc/1/root".into(),
                        path: "/bin/sh".into(),
                        source: std::io::Error::other("SECRET"),
                    },
                },
                Reason::Internal,
                Code::Internal,
                "cannot look for a shell",
            ),
            (RuntimeError::NotAttached { id: "c-1".into() }, Reason::Engine, Code::Internal, "did not attach"),
            (
                RuntimeError::ForwardTarget { host: "172.17.0.1".into() },
                Reason::NotPermitted,
                Code::PermissionDenied,
                "start.host: only the container's own loopback (localhost, 127.0.0.1, ::1) can be forwarded to",
            ),
            (
                RuntimeError::SharesHostNetwork { id: "c-1".into() },
                Reason::NotPermitted,
                Code::PermissionDenied,
                "uses the host's network",
            ),
            (
                RuntimeError::NothingListens { id: "c-1".into(), address: "127.0.0.1:8888".parse().unwrap() },
                Reason::WrongState,
                Code::FailedPrecondition,
                "nothing listens on 127.0.0.1:8888 in the container",
            ),
            (
                RuntimeError::ConnectTimeout { id: "c-1".into(), address: "127.0.0.1:8888".parse().unwrap() },
                Reason::Timeout,
                Code::DeadlineExceeded,
                "did not accept the connection",
            ),
            (
                RuntimeError::Connect {
                    id: "c-1".into(),
                    address: "[::1]:8888".parse().unwrap(),
                    source: std::io::Error::other("SECRET"),
                },
                Reason::WrongState,
                Code::FailedPrecondition,
                "cannot connect to [::1]:8888 in the container",
            ),
            (
                RuntimeError::Namespace { id: "c-1".into(), source: std::io::Error::other("SECRET") },
                Reason::Internal,
                Code::Internal,
                "cannot enter its network namespace",
            ),
            (RuntimeError::ShuttingDown, Reason::PeerUnavailable, Code::Unavailable, "shutting down"),
            (RuntimeError::SinceOutOfRange, Reason::InvalidField, Code::InvalidArgument, "since"),
            (RuntimeError::NotFound { id: "c-1".into() }, Reason::NotFound, Code::NotFound, "container c-1 not found"),
            (RuntimeError::Running { id: "c-1".into() }, Reason::WrongState, Code::FailedPrecondition, "use force"),
            (RuntimeError::GpuPassthroughOff, Reason::HostUnsupported, Code::FailedPrecondition, "gpu_count"),
            (
                RuntimeError::AgentOnly,
                Reason::HostUnsupported,
                Code::FailedPrecondition,
                "docker.mode: this executor runs agent-only",
            ),
            (
                RuntimeError::Mount(MountError::Refused(spec("mounts[0].host_path"))),
                Reason::HostUnsupported,
                Code::FailedPrecondition,
                "mounts[0]",
            ),
            (
                RuntimeError::Mount(MountError::Unresolvable {
                    field: "mounts[0].host_path".into(),
                    host_path: "/srv/x".into(),
                    source: std::io::Error::other("SECRET"),
                }),
                Reason::HostUnsupported,
                Code::FailedPrecondition,
                "mounts[0].host_path: `/srv/x` does not exist",
            ),
            (
                RuntimeError::VisibleDevices("x".into()),
                Reason::HostUnsupported,
                Code::FailedPrecondition,
                "visible_devices",
            ),
            (
                RuntimeError::Gpu(GpuError::Busy { uuid: "GPU-a".into(), container: "c-2".into() }),
                Reason::GpuBusy,
                Code::FailedPrecondition,
                "is assigned to container c-2",
            ),
            (
                RuntimeError::Gpu(GpuError::NotEnough { asked: 3, free: 2, total: 2, unusable: 0 }),
                Reason::LimitReached,
                Code::ResourceExhausted,
                "gpu_count: 3 requested, 2 free of 2",
            ),
            (RuntimeError::Gpu(GpuError::Both), Reason::InvalidField, Code::InvalidArgument, "gpu_count and gpu_uuids"),
            (
                RuntimeError::Gpu(GpuError::Unavailable { uuid: "GPU-a".into(), why: "unhealthy: Xid 79".into() }),
                Reason::HostUnsupported,
                Code::FailedPrecondition,
                "gpu_uuids: `GPU-a` cannot be given to a container: unhealthy: Xid 79",
            ),
            (
                RuntimeError::GpuInventory(GpuMonitorError::Failed(Status::internal("SECRET"))),
                Reason::PeerUnavailable,
                Code::Unavailable,
                "gpu_count/gpu_uuids: gpu-monitor failed",
            ),
            (
                RuntimeError::GpuInventory(GpuMonitorError::Timeout),
                Reason::PeerUnavailable,
                Code::Unavailable,
                "gpu-monitor did not answer",
            ),
            (
                RuntimeError::TooMany { cap: 3 },
                Reason::LimitReached,
                Code::ResourceExhausted,
                "max_concurrent_containers = 3",
            ),
            (
                RuntimeError::Shaping { id: Some("c-1".into()), source: ShapingError("tc: SECRET".into()) },
                Reason::HostUnsupported,
                Code::FailedPrecondition,
                "resources.network_bps: cannot shape the traffic of c-1",
            ),
            (
                RuntimeError::Admission(AdmissionError::Refused {
                    image: "r/x:1".into(),
                    why: Unverified::Unsigned("sha256-x.sig".into()),
                }),
                Reason::ImageRefused,
                Code::FailedPrecondition,
                "no cosign signature in the registry",
            ),
            (
                RuntimeError::Admission(AdmissionError::Pull {
                    image: "r/x:1".into(),
                    source: bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        message: "SECRET".into(),
                    },
                }),
                Reason::ImageUnavailable,
                Code::FailedPrecondition,
                "image: cannot pull `r/x:1`",
            ),
            (
                RuntimeError::Admission(AdmissionError::PullTimeout {
                    image: "r/x:1".into(),
                    timeout: std::time::Duration::from_secs(1),
                }),
                Reason::Timeout,
                Code::DeadlineExceeded,
                "docker.registry.pull_timeout",
            ),
            (RuntimeError::NoStats { id: "c-1".into() }, Reason::PeerUnavailable, Code::Unavailable, "no stats"),
            (docker(404, "SECRET"), Reason::NotFound, Code::NotFound, "container c-1 not found"),
            (docker(409, "SECRET"), Reason::WrongState, Code::FailedPrecondition, "container c-1"),
            (
                docker(500, "could not select device driver SECRET"),
                Reason::HostUnsupported,
                Code::FailedPrecondition,
                "no NVIDIA container runtime",
            ),
            (docker(400, "SECRET"), Reason::HostUnsupported, Code::FailedPrecondition, "the engine refused it"),
            (docker(304, "SECRET"), Reason::WrongState, Code::FailedPrecondition, "already in that state"),
            (docker(500, "SECRET"), Reason::Engine, Code::Internal, "the container engine failed"),
        ];
        for (error, reason, code, words) in cases {
            let status = status(error);
            let refusal = Refusal::from_status(&status).expect("a reason");
            assert_eq!((refusal.reason, status.code()), (reason, code), "{}", status.message());
            assert!(status.message().contains(words), "{words}: {}", status.message());
            assert!(!status.message().contains("SECRET"), "{}", status.message());
        }
    }
}
