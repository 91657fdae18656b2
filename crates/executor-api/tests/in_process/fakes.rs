//! Fake container-runtime, gpu-monitor and validator-access: the internal protos served on Unix
//! sockets, each recording the calls it receives and answering a canned reply, or the status a
//! test scripts.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use common::proto::access::v1 as access;
use common::proto::access::v1::validator_access_server::{ValidatorAccess, ValidatorAccessServer};
use common::proto::gpu::v1 as gpu;
use common::proto::gpu::v1::gpu_monitor_server::{GpuMonitor, GpuMonitorServer};
use common::proto::runtime::v1 as runtime;
use common::proto::runtime::v1::container_runtime_server::{ContainerRuntime, ContainerRuntimeServer};
use tokio_stream::Stream;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// What one fake has seen, and how it answers.
#[derive(Debug, Default)]
pub(crate) struct Peer {
    /// `Method request-debug` per call received, in order.
    calls: Mutex<Vec<String>>,
    /// When set, every call answers this status.
    fail: Mutex<Option<Status>>,
}

impl Peer {
    /// Every later call answers `status`.
    pub(crate) fn fail_with(&self, status: Status) {
        *self.fail.lock().unwrap() = Some(status);
    }

    /// The calls received so far, emptied.
    pub(crate) fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    /// Records a call; the scripted status if there is one.
    fn call<T: std::fmt::Debug>(&self, method: &str, request: Request<T>) -> Result<T, Status> {
        let request = request.into_inner();
        self.calls.lock().unwrap().push(format!("{method} {request:?}"));
        match &*self.fail.lock().unwrap() {
            Some(status) => Err(status.clone()),
            None => Ok(request),
        }
    }
}

/// The three fakes, serving in `runtime_dir` until `shutdown`.
#[derive(Debug, Default)]
pub(crate) struct Fakes {
    pub(crate) runtime: Arc<Peer>,
    pub(crate) gpu: Arc<Peer>,
    pub(crate) access: Arc<Peer>,
}

impl Fakes {
    /// Serves each fake on its service's socket in `runtime_dir`; `gpu: false` leaves
    /// gpu-monitor's socket absent (a service that is down).
    pub(crate) async fn serve(&self, runtime_dir: &Path, gpu: bool, shutdown: &CancellationToken) {
        use common::ServiceName::*;
        let runtime = ContainerRuntimeServer::new(FakeRuntime(self.runtime.clone()));
        serve(runtime_dir, ContainerRuntime, |r| r.add_service(runtime), shutdown).await;
        if gpu {
            let gpu = GpuMonitorServer::new(FakeGpu(self.gpu.clone()));
            serve(runtime_dir, GpuMonitor, |r| r.add_service(gpu), shutdown).await;
        }
        let access = ValidatorAccessServer::new(FakeAccess(self.access.clone()));
        serve(runtime_dir, ValidatorAccess, |r| r.add_service(access), shutdown).await;
    }
}

/// Serves health and the routes `add` gives on `name`'s socket in `runtime_dir`.
async fn serve(
    runtime_dir: &Path,
    name: common::ServiceName,
    add: impl FnOnce(tonic::service::Routes) -> tonic::service::Routes,
    shutdown: &CancellationToken,
) {
    let listener = common::grpc::bind_unix(&name.socket(runtime_dir)).await.unwrap();
    let (health, routes) = common::grpc::base_routes(&[]).unwrap();
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(add(routes))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.clone().cancelled_owned()),
    );
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A container as the fake runtime reports it.
fn container(id: &str) -> runtime::Container {
    runtime::Container { id: id.to_owned(), docker_id: "fake-docker-id".into(), ..Default::default() }
}

/// A fake's service: each unary method records its call and answers the scripted status, or
/// its reply (from the request `$r`); streaming methods follow as they are.
macro_rules! fake {
    (
        $fake:ident: $service:ident {
            $(fn $name:ident($method:literal, $r:ident: $req:ty) -> $resp:ty $reply:block)*
        }
        $($streams:tt)*
    ) => {
        #[derive(Debug)]
        struct $fake(Arc<Peer>);

        #[tonic::async_trait]
        impl $service for $fake {
            $(
                async fn $name(&self, request: Request<$req>) -> Result<Response<$resp>, Status> {
                    let $r = self.0.call($method, request)?;
                    let reply: $resp = $reply;
                    Ok(Response::new(reply))
                }
            )*
            $($streams)*
        }
    };
}

fake! {
    FakeRuntime: ContainerRuntime {
        fn create("Create", r: runtime::CreateContainerRequest) -> runtime::Container {
            runtime::Container { image: r.image, owner: r.owner, ..container("c-fake") }
        }
        fn start("Start", r: runtime::ContainerRef) -> runtime::Container { container(&r.id) }
        fn stop("Stop", r: runtime::StopContainerRequest) -> runtime::Container { container(&r.id) }
        fn update("Update", r: runtime::UpdateContainerRequest) -> runtime::Container { container(&r.id) }
        fn remove("Remove", _r: runtime::RemoveContainerRequest) -> runtime::RemoveContainerResponse {
            runtime::RemoveContainerResponse {}
        }
        fn get("Get", r: runtime::ContainerRef) -> runtime::Container { container(&r.id) }
        fn list("List", _r: runtime::ListContainersRequest) -> runtime::ListContainersResponse {
            runtime::ListContainersResponse { containers: vec![container("c-fake")] }
        }
        fn stats("Stats", r: runtime::ContainerRef) -> runtime::ContainerStats {
            runtime::ContainerStats { id: r.id, cpu_percent: 12.5, ..Default::default() }
        }
        fn exec("Exec", _r: runtime::ExecRequest) -> runtime::ExecResponse { runtime::ExecResponse::default() }
        fn check_ports("CheckPorts", _r: runtime::CheckPortsRequest) -> runtime::CheckPortsResponse {
            runtime::CheckPortsResponse { host_port: 40000, tcp_reachable: true, pool_size: 1000, ..Default::default() }
        }
        fn create_volume("CreateVolume", r: runtime::CreateVolumeRequest) -> runtime::Volume {
            runtime::Volume { name: r.name, size_bytes: r.size_bytes, ..Default::default() }
        }
        fn list_volumes("ListVolumes", _r: runtime::ListVolumesRequest) -> runtime::ListVolumesResponse {
            runtime::ListVolumesResponse { volumes: vec![runtime::Volume { name: "data".into(), ..Default::default() }] }
        }
        fn delete_volume("DeleteVolume", _r: runtime::DeleteVolumeRequest) -> runtime::DeleteVolumeResponse {
            runtime::DeleteVolumeResponse {}
        }
        fn list_images("ListImages", _r: runtime::ListImagesRequest) -> runtime::ListImagesResponse {
            runtime::ListImagesResponse { cache_bytes: 7, ..Default::default() }
        }
        fn remove_image("RemoveImage", _r: runtime::RemoveImageRequest) -> runtime::RemoveImageResponse {
            runtime::RemoveImageResponse {}
        }
        fn set_drain("SetDrain", r: runtime::SetDrainRequest) -> runtime::DrainState {
            runtime::DrainState { draining: r.draining, reason: r.reason, since: 1 }
        }
        fn capacity("Capacity", _r: runtime::CapacityRequest) -> runtime::CapacityResponse {
            runtime::CapacityResponse { note: "fake".into(), ..Default::default() }
        }
        fn get_drain("GetDrain", _r: runtime::GetDrainRequest) -> runtime::DrainState { runtime::DrainState::default() }
        fn list_templates("ListTemplates", _r: runtime::ListTemplatesRequest) -> runtime::ListTemplatesResponse {
            runtime::ListTemplatesResponse { templates: vec![runtime::Template { name: "lab".into(), ..Default::default() }] }
        }
    }

    type PullImageStream = BoxStream<runtime::PullProgress>;

    /// One step, then the image, named as asked and owned by whoever the request names.
    async fn pull_image(
        &self,
        r: Request<runtime::PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        let request = self.0.call("PullImage", r)?;
        let step = runtime::PullProgress { status: "Downloading".into(), current_bytes: 1, ..Default::default() };
        let image = runtime::Image { reference: request.image, signature: request.owner, ..Default::default() };
        let last = runtime::PullProgress { status: "ready".into(), image: Some(image), ..Default::default() };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(step), Ok(last)]))))
    }

    type EventsStream = BoxStream<runtime::Event>;

    /// The event after the one asked for, for the request's container.
    async fn events(&self, r: Request<runtime::WatchEventsRequest>) -> Result<Response<Self::EventsStream>, Status> {
        let request = self.0.call("Events", r)?;
        let event = runtime::Event {
            seq: request.after_seq + 1,
            kind: runtime::EventKind::Died as i32,
            container_id: request.container_id,
            exit_code: 137,
            ..Default::default()
        };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(event)]))))
    }

    type LogsStream = BoxStream<runtime::LogChunk>;

    /// Two chunks, then the scripted status (if any) as the stream's end: an error after the
    /// stream has started.
    async fn logs(&self, r: Request<runtime::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let request = r.into_inner();
        self.0.calls.lock().unwrap().push(format!("Logs {request:?}"));
        let chunk = |text: &str| Ok(runtime::LogChunk { data: text.as_bytes().to_vec(), ..Default::default() });
        let mut items = vec![chunk("line 1\n"), chunk("line 2\n")];
        if let Some(status) = self.0.fail.lock().unwrap().clone() {
            items.push(Err(status));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    /// executor-api never asks for a container's PID (validator-access does).
    async fn pid(&self, _r: Request<runtime::ContainerRef>) -> Result<Response<runtime::ContainerPid>, Status> {
        Err(Status::unimplemented("Pid"))
    }

    type AttachStream = BoxStream<runtime::AttachOutput>;

    /// ExecContainer's peer, scripted by the command's first word: `echo` writes `out` and
    /// `err` and exits 3; `cat` writes back its stdin; `yes` writes 512-byte chunks, and `sleep`
    /// nothing, until the client goes, which is recorded as `Attach cut off`.
    async fn attach(
        &self,
        r: Request<tonic::Streaming<runtime::AttachInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        use runtime::attach_input::Input;
        use runtime::attach_output::Output;
        let mut input = r.into_inner();
        let Some(runtime::AttachInput { input: Some(Input::Start(start)) }) = input.message().await? else {
            return Err(Status::invalid_argument("start: the first message must be `start`"));
        };
        self.0.call("Attach", Request::new(start.clone()))?;
        let peer = self.0.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let send = |output| tx.send(Ok(runtime::AttachOutput { output: Some(output) }));
            let _ = send(Output::Started(runtime::AttachStarted { exec_id: "fake-exec".into() })).await;
            let mut stdin = Vec::new();
            while let Ok(Some(message)) = input.message().await {
                match message.input {
                    Some(Input::Stdin(bytes)) => stdin.extend(bytes),
                    Some(Input::CloseStdin(true)) => break,
                    _ => {}
                }
            }
            let ended = match start.command[0].as_str() {
                "echo" => {
                    let _ = send(Output::Stdout(b"out\n".to_vec())).await;
                    let _ = send(Output::Stderr(b"err\n".to_vec())).await;
                    send(Output::ExitCode(3)).await.is_ok()
                }
                "cat" => send(Output::Stdout(stdin)).await.is_ok() && send(Output::ExitCode(0)).await.is_ok(),
                "yes" => loop {
                    if send(Output::Stdout(vec![b'y'; 512])).await.is_err() {
                        break false;
                    }
                },
                _ => {
                    tx.closed().await;
                    false
                }
            };
            if !ended {
                peer.calls.lock().unwrap().push("Attach cut off".to_owned());
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    type ForwardStream = BoxStream<runtime::ForwardOutput>;

    /// executor-api does not forward Forward (validator-access does): unimplemented here.
    async fn forward(
        &self,
        _r: Request<tonic::Streaming<runtime::ForwardInput>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        Err(Status::unimplemented("Forward"))
    }
}

fake! {
    FakeGpu: GpuMonitor {
        fn inventory("Inventory", _r: gpu::InventoryRequest) -> gpu::Inventory {
            gpu::Inventory { driver_version: "fake-driver".into(), ..Default::default() }
        }
        fn snapshot("Snapshot", _r: gpu::SnapshotRequest) -> gpu::Snapshot {
            gpu::Snapshot { collected_at_ms: 42, ..Default::default() }
        }
        fn gpu_processes("GpuProcesses", _r: gpu::GpuProcessesRequest) -> gpu::GpuProcessesResponse {
            gpu::GpuProcessesResponse::default()
        }
        fn quarantine_gpu("QuarantineGpu", r: gpu::QuarantineGpuRequest) -> gpu::GpuHealth {
            gpu::GpuHealth { uuid: r.uuid, state: "unhealthy".into(), reason: format!("quarantined: {}", r.reason), quarantined: true, ..Default::default() }
        }
        fn release_gpu("ReleaseGpu", r: gpu::ReleaseGpuRequest) -> gpu::GpuHealth {
            gpu::GpuHealth { uuid: r.uuid, state: "healthy".into(), ..Default::default() }
        }
    }

    type WatchSnapshotsStream = BoxStream<gpu::Snapshot>;

    async fn watch_snapshots(
        &self,
        r: Request<gpu::SnapshotRequest>,
    ) -> Result<Response<Self::WatchSnapshotsStream>, Status> {
        self.0.call("WatchSnapshots", r)?;
        Ok(Response::new(Box::pin(tokio_stream::empty())))
    }
}

fake! {
    FakeAccess: ValidatorAccess {
        fn request_challenge("RequestChallenge", _r: access::ChallengeRequest) -> access::Challenge {
            access::Challenge { challenge_id: "ch-fake".into(), ..Default::default() }
        }
        fn provision("Provision", r: access::ProvisionRequest) -> access::Grant {
            access::Grant { grant_id: "g-fake".into(), validator_hotkey: r.validator_hotkey, ..Default::default() }
        }
        fn revoke("Revoke", _r: access::RevokeRequest) -> access::RevokeResponse {
            access::RevokeResponse { sessions_closed: 3 }
        }
        fn list_grants("ListGrants", _r: access::ListGrantsRequest) -> access::ListGrantsResponse {
            access::ListGrantsResponse { grants: vec![access::Grant { grant_id: "g-fake".into(), ..Default::default() }] }
        }
        fn list_sessions("ListSessions", _r: access::ListSessionsRequest) -> access::ListSessionsResponse {
            access::ListSessionsResponse::default()
        }
    }
}
