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

#[derive(Debug)]
struct FakeRuntime(Arc<Peer>);

#[tonic::async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn create(
        &self,
        r: Request<runtime::CreateContainerRequest>,
    ) -> Result<Response<runtime::Container>, Status> {
        let r = self.0.call("Create", r)?;
        Ok(Response::new(runtime::Container { image: r.image, owner: r.owner, ..container("c-fake") }))
    }

    async fn start(&self, r: Request<runtime::ContainerRef>) -> Result<Response<runtime::Container>, Status> {
        Ok(Response::new(container(&self.0.call("Start", r)?.id)))
    }

    async fn stop(&self, r: Request<runtime::StopContainerRequest>) -> Result<Response<runtime::Container>, Status> {
        Ok(Response::new(container(&self.0.call("Stop", r)?.id)))
    }

    async fn remove(
        &self,
        r: Request<runtime::RemoveContainerRequest>,
    ) -> Result<Response<runtime::RemoveContainerResponse>, Status> {
        self.0.call("Remove", r)?;
        Ok(Response::new(runtime::RemoveContainerResponse {}))
    }

    async fn get(&self, r: Request<runtime::ContainerRef>) -> Result<Response<runtime::Container>, Status> {
        Ok(Response::new(container(&self.0.call("Get", r)?.id)))
    }

    async fn list(
        &self,
        r: Request<runtime::ListContainersRequest>,
    ) -> Result<Response<runtime::ListContainersResponse>, Status> {
        self.0.call("List", r)?;
        Ok(Response::new(runtime::ListContainersResponse { containers: vec![container("c-fake")] }))
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

    async fn stats(&self, r: Request<runtime::ContainerRef>) -> Result<Response<runtime::ContainerStats>, Status> {
        let r = self.0.call("Stats", r)?;
        Ok(Response::new(runtime::ContainerStats { id: r.id, cpu_percent: 12.5, ..Default::default() }))
    }

    async fn exec(&self, r: Request<runtime::ExecRequest>) -> Result<Response<runtime::ExecResponse>, Status> {
        self.0.call("Exec", r)?;
        Ok(Response::new(runtime::ExecResponse::default()))
    }
}

#[derive(Debug)]
struct FakeGpu(Arc<Peer>);

#[tonic::async_trait]
impl GpuMonitor for FakeGpu {
    async fn inventory(&self, r: Request<gpu::InventoryRequest>) -> Result<Response<gpu::Inventory>, Status> {
        self.0.call("Inventory", r)?;
        Ok(Response::new(gpu::Inventory { driver_version: "fake-driver".into(), ..Default::default() }))
    }

    async fn snapshot(&self, r: Request<gpu::SnapshotRequest>) -> Result<Response<gpu::Snapshot>, Status> {
        self.0.call("Snapshot", r)?;
        Ok(Response::new(gpu::Snapshot { collected_at_ms: 42, ..Default::default() }))
    }

    type WatchSnapshotsStream = BoxStream<gpu::Snapshot>;

    async fn watch_snapshots(
        &self,
        r: Request<gpu::SnapshotRequest>,
    ) -> Result<Response<Self::WatchSnapshotsStream>, Status> {
        self.0.call("WatchSnapshots", r)?;
        Ok(Response::new(Box::pin(tokio_stream::empty())))
    }

    async fn gpu_processes(
        &self,
        r: Request<gpu::GpuProcessesRequest>,
    ) -> Result<Response<gpu::GpuProcessesResponse>, Status> {
        self.0.call("GpuProcesses", r)?;
        Ok(Response::new(gpu::GpuProcessesResponse::default()))
    }
}

#[derive(Debug)]
struct FakeAccess(Arc<Peer>);

#[tonic::async_trait]
impl ValidatorAccess for FakeAccess {
    async fn request_challenge(
        &self,
        r: Request<access::ChallengeRequest>,
    ) -> Result<Response<access::Challenge>, Status> {
        self.0.call("RequestChallenge", r)?;
        Ok(Response::new(access::Challenge { challenge_id: "ch-fake".into(), ..Default::default() }))
    }

    async fn provision(&self, r: Request<access::ProvisionRequest>) -> Result<Response<access::Grant>, Status> {
        let r = self.0.call("Provision", r)?;
        Ok(Response::new(access::Grant {
            grant_id: "g-fake".into(),
            validator_hotkey: r.validator_hotkey,
            ..Default::default()
        }))
    }

    async fn revoke(&self, r: Request<access::RevokeRequest>) -> Result<Response<access::RevokeResponse>, Status> {
        self.0.call("Revoke", r)?;
        Ok(Response::new(access::RevokeResponse { sessions_closed: 3 }))
    }

    async fn list_grants(
        &self,
        r: Request<access::ListGrantsRequest>,
    ) -> Result<Response<access::ListGrantsResponse>, Status> {
        self.0.call("ListGrants", r)?;
        let grant = access::Grant { grant_id: "g-fake".into(), ..Default::default() };
        Ok(Response::new(access::ListGrantsResponse { grants: vec![grant] }))
    }

    async fn list_sessions(
        &self,
        r: Request<access::ListSessionsRequest>,
    ) -> Result<Response<access::ListSessionsResponse>, Status> {
        self.0.call("ListSessions", r)?;
        Ok(Response::new(access::ListSessionsResponse::default()))
    }
}
