//! `executor.api.v1.ExecutorApi`: identity, health and system profile answered here;
//! containers forwarded to container-runtime, validator access to validator-access, both over
//! their Unix sockets; a command in a container through container-runtime's Attach
//! ([`crate::exec`]); attestation by running the bundled `gpu-attestor` ([`crate::attest`]);
//! the node's health from [`crate::probes`].
//!
//! Handlers run after the layer has authenticated the call ([`crate::layer`]); the caller's
//! hotkey and the request id are in the request extensions.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::ServiceName;
use common::config::Config;
use common::process::ProcessSpec;
use common::proto::access::v1 as access;
use common::proto::access::v1::tenant_access_client::TenantAccessClient;
use common::proto::access::v1::validator_access_client::ValidatorAccessClient;
use common::proto::api::v1 as pb;
use common::proto::api::v1::executor_api_server::ExecutorApi as ExecutorApiRpc;
use common::proto::gpu::v1 as gpu;
use common::proto::gpu::v1::gpu_monitor_client::GpuMonitorClient;
use common::proto::runtime::v1 as runtime;
use common::proto::runtime::v1::container_runtime_client::ContainerRuntimeClient;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::attest::Attestor;
use crate::auth::OpenError;
use crate::errors::ApiError;
use crate::exec::{ExecItem, ExecPlan, OUTPUT_QUEUE};
use crate::layer::{Caller, RequestId, SessionDoor};
use crate::probes::{DockerFacts, Probes};

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    identity: pb::IdentityResponse,
    probes: Probes,
    runtime: ContainerRuntimeClient<Channel>,
    gpu: GpuMonitorClient<Channel>,
    /// None with `[validator] enabled = false`.
    access: Option<ValidatorAccessClient<Channel>>,
    /// None with `[tenant_access] enabled = false`.
    tenants: Option<TenantAccessClient<Channel>>,
    attestor: Attestor,
    /// `container-runtime` beside this binary and the config file, for Docker's facts.
    runtime_check: (PathBuf, PathBuf),
    docker_facts: tokio::sync::OnceCell<DockerFacts>,
}

/// What the advertised endpoints are, with defaults from the listeners.
pub fn advertised(config: &Config) -> pb::AdvertisedEndpoints {
    let s = &config.server;
    let host = s.advertised_host.clone().map_or_else(|| s.host.to_string(), String::from);
    let port = s.advertised_port.unwrap_or(s.port);
    let scheme = if s.advertised_tls { "https" } else { "http" };
    // IPv6 literals need brackets in URLs.
    let url_host = if host.contains(':') { format!("[{host}]") } else { host.clone() };
    let e = &config.advertised_endpoint;
    pb::AdvertisedEndpoints {
        grpc_endpoint: e.grpc_endpoint.clone().unwrap_or_else(|| format!("{scheme}://{url_host}:{port}")),
        ssh_endpoint: e.ssh_endpoint.clone().unwrap_or_else(|| {
            if config.validator.enabled {
                format!("ssh://{url_host}:{}", config.validator.ssh_port)
            } else {
                String::new()
            }
        }),
        health_endpoint: e
            .health_endpoint
            .clone()
            .unwrap_or_else(|| format!("http://{url_host}:{}/health", s.health_port)),
        advertised_host: host,
        advertised_port: u32::from(port),
        advertised_tls: s.advertised_tls,
    }
}

impl Api {
    /// `bin_dir` holds `gpu-attestor` and `container-runtime`; `identity_file` is the executor
    /// key reports are signed with; `config_file` the file this node runs on.
    pub fn new(
        config: &Config,
        executor_id: String,
        public_key: [u8; 32],
        bin_dir: &std::path::Path,
        identity_file: PathBuf,
        config_file: PathBuf,
    ) -> Self {
        let socket = |s: ServiceName| common::grpc::unix_channel(&s.socket(&config.runtime_dir));
        let identity = pb::IdentityResponse {
            executor_id,
            public_key: public_key.to_vec(),
            managing_miner_hotkey: config.managing_miner_hotkey.as_ref().map(|h| h.to_string()).unwrap_or_default(),
            endpoints: Some(advertised(config)),
            version: common::VERSION.to_owned(),
        };
        Self {
            inner: Arc::new(Inner {
                identity,
                probes: Probes::new(config),
                runtime: ContainerRuntimeClient::new(socket(ServiceName::ContainerRuntime)),
                gpu: GpuMonitorClient::new(socket(ServiceName::GpuMonitor)),
                access: config
                    .validator
                    .enabled
                    .then(|| ValidatorAccessClient::new(socket(ServiceName::ValidatorAccess))),
                tenants: config
                    .tenant_access
                    .enabled
                    .then(|| TenantAccessClient::new(socket(ServiceName::ValidatorAccess))),
                attestor: Attestor { binary: bin_dir.join("gpu-attestor"), identity_file },
                runtime_check: (bin_dir.join(ServiceName::ContainerRuntime.as_str()), config_file),
                docker_facts: tokio::sync::OnceCell::new(),
            }),
        }
    }

    pub fn probes(&self) -> &Probes {
        &self.inner.probes
    }

    pub fn executor_id(&self) -> &str {
        &self.inner.identity.executor_id
    }
}

fn request_id<T>(request: &Request<T>) -> String {
    request.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default()
}

/// Forwards `call` to `service`, mapping its errors for the caller.
async fn forward<T>(
    service: ServiceName,
    request_id: &str,
    call: impl std::future::Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    match call.await {
        Ok(response) => Ok(Response::new(response.into_inner())),
        Err(status) => Err(ApiError::Downstream { service, status }.into_status(request_id)),
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<runtime::LogChunk, Status>> + Send>>;
/// An `owner` the request left empty becomes the signed caller's hotkey.
fn owner_or_caller(owner: &mut String, caller: Option<String>) {
    if owner.is_empty()
        && let Some(caller) = caller
    {
        *owner = caller;
    }
}

type PullStream = Pin<Box<dyn Stream<Item = Result<runtime::PullProgress, Status>> + Send>>;
type EventStream = Pin<Box<dyn Stream<Item = Result<runtime::Event, Status>> + Send>>;
type ExecStream = Pin<Box<dyn Stream<Item = ExecItem> + Send>>;

#[tonic::async_trait]
impl ExecutorApiRpc for Api {
    async fn identity(&self, _request: Request<pb::IdentityRequest>) -> Result<Response<pb::IdentityResponse>, Status> {
        Ok(Response::new(self.inner.identity.clone()))
    }

    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let id = request_id(&request);
        let (Some(Caller(hotkey)), Some(SessionDoor(auth))) =
            (request.extensions().get::<Caller>(), request.extensions().get::<SessionDoor>())
        else {
            let message = "signed sessions need authentication, which this server does not do".to_owned();
            return Err(ApiError::NotServed(message).into_status(&id));
        };
        auth.open_session(hotkey, &request.get_ref().client_key).map(Response::new).map_err(|e| {
            match e {
                OpenError::ClientKey(message) => ApiError::InvalidArgument { field: "client_key", message },
                OpenError::Random(message) => ApiError::Internal(message),
            }
            .into_status(&id)
        })
    }

    async fn detailed_health(
        &self,
        _request: Request<pb::DetailedHealthRequest>,
    ) -> Result<Response<pb::DetailedHealthResponse>, Status> {
        let health = self.inner.probes.probe().await;
        let mut components: Vec<pb::ComponentHealth> = health
            .services
            .iter()
            .map(|(name, status)| pb::ComponentHealth {
                name: (*name).to_owned(),
                serving: status == "SERVING",
                detail: status.clone(),
            })
            .collect();
        components.push(pb::ComponentHealth {
            name: "docker".to_owned(),
            serving: health.docker == "up",
            detail: health.docker.clone(),
        });
        let endpoints = self.inner.identity.endpoints.clone().unwrap_or_default();
        components.push(pb::ComponentHealth {
            name: "advertised_endpoint".to_owned(),
            serving: true,
            detail: endpoints.grpc_endpoint,
        });
        Ok(Response::new(pb::DetailedHealthResponse {
            healthy: health.healthy(),
            components,
            version: common::VERSION.to_owned(),
            gpu_count: health.gpu_count.unwrap_or(0),
            draining: health.draining,
        }))
    }

    async fn system_profile(
        &self,
        request: Request<pb::SystemProfileRequest>,
    ) -> Result<Response<pb::SystemProfileResponse>, Status> {
        let id = request_id(&request);
        let mut gpu = self.inner.gpu.clone();
        let mut gpu2 = self.inner.gpu.clone();
        let (inventory, snapshot) =
            tokio::join!(gpu.inventory(gpu::InventoryRequest {}), gpu2.snapshot(gpu::SnapshotRequest {}));
        let downstream = |status| ApiError::Downstream { service: ServiceName::GpuMonitor, status }.into_status(&id);
        let inventory = inventory.map_err(downstream)?.into_inner();
        let snapshot = snapshot.map_err(downstream)?.into_inner();
        let docker = self.docker_facts().await.map_err(|e| e.into_status(&id))?;
        Ok(Response::new(pb::SystemProfileResponse {
            inventory: Some(inventory),
            snapshot: Some(snapshot),
            docker_version: docker.version,
            docker_cgroup_driver: docker.cgroup_driver,
            nvidia_runtime: docker.nvidia_runtime,
        }))
    }

    async fn create_container(
        &self,
        request: Request<runtime::CreateContainerRequest>,
    ) -> Result<Response<runtime::Container>, Status> {
        let id = request_id(&request);
        let caller = request.extensions().get::<Caller>().map(|c| c.0.to_string());
        let mut body = request.into_inner();
        // The container belongs to whoever asked unless the miner names an owner itself.
        owner_or_caller(&mut body.owner, caller);
        // Renters' keys go to validator-access: checked before the container exists, stored
        // once it does; a container whose keys cannot be stored is removed again.
        let keys = std::mem::take(&mut body.ssh_public_keys);
        if keys.is_empty() {
            return forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().create(body)).await;
        }
        let mut tenants = self.tenants(&id)?;
        let check = access::AddContainerKeyRequest { container_id: String::new(), ssh_public_keys: keys.clone() };
        forward(ServiceName::ValidatorAccess, &id, tenants.check_container_keys(check)).await?;
        let container =
            forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().create(body)).await?.into_inner();
        let add = access::AddContainerKeyRequest { container_id: container.id.clone(), ssh_public_keys: keys };
        if let Err(status) = forward(ServiceName::ValidatorAccess, &id, tenants.add_container_key(add)).await {
            let remove = runtime::RemoveContainerRequest { id: container.id.clone(), force: true };
            if let Err(e) = self.inner.runtime.clone().remove(remove).await {
                tracing::error!(container = %container.id, error = %e, "cannot remove a container whose keys were not stored");
            }
            return Err(status);
        }
        Ok(Response::new(container))
    }

    async fn start_container(
        &self,
        request: Request<runtime::ContainerRef>,
    ) -> Result<Response<runtime::Container>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().start(request.into_inner())).await
    }

    async fn update_container(
        &self,
        request: Request<runtime::UpdateContainerRequest>,
    ) -> Result<Response<runtime::Container>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().update(request.into_inner())).await
    }

    async fn stop_container(
        &self,
        request: Request<runtime::StopContainerRequest>,
    ) -> Result<Response<runtime::Container>, Status> {
        let id = request_id(&request);
        let caller = request.extensions().get::<Caller>().map(|c| c.0.to_string()).unwrap_or_default();
        let request = runtime::StopContainerRequest { requested_by: caller, ..request.into_inner() };
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().stop(request)).await
    }

    async fn remove_container(
        &self,
        request: Request<runtime::RemoveContainerRequest>,
    ) -> Result<Response<runtime::RemoveContainerResponse>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().remove(request.into_inner())).await
    }

    async fn get_container(
        &self,
        request: Request<runtime::ContainerRef>,
    ) -> Result<Response<runtime::Container>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().get(request.into_inner())).await
    }

    async fn list_containers(
        &self,
        request: Request<runtime::ListContainersRequest>,
    ) -> Result<Response<runtime::ListContainersResponse>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().list(request.into_inner())).await
    }

    type StreamLogsStream = LogStream;

    async fn stream_logs(
        &self,
        request: Request<runtime::LogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let id = request_id(&request);
        let service = ServiceName::ContainerRuntime;
        let stream = forward(service, &id, self.inner.runtime.clone().logs(request.into_inner())).await?.into_inner();
        let mapped =
            stream.map(move |item| item.map_err(|status| ApiError::Downstream { service, status }.into_status(&id)));
        Ok(Response::new(Box::pin(mapped)))
    }

    async fn container_stats(
        &self,
        request: Request<runtime::ContainerRef>,
    ) -> Result<Response<runtime::ContainerStats>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().stats(request.into_inner())).await
    }

    async fn check_ports(
        &self,
        request: Request<runtime::CheckPortsRequest>,
    ) -> Result<Response<runtime::CheckPortsResponse>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().check_ports(request.into_inner())).await
    }

    async fn create_volume(
        &self,
        request: Request<runtime::CreateVolumeRequest>,
    ) -> Result<Response<runtime::Volume>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().create_volume(request.into_inner()))
            .await
    }

    async fn list_volumes(
        &self,
        request: Request<runtime::ListVolumesRequest>,
    ) -> Result<Response<runtime::ListVolumesResponse>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().list_volumes(request.into_inner())).await
    }

    async fn delete_volume(
        &self,
        request: Request<runtime::DeleteVolumeRequest>,
    ) -> Result<Response<runtime::DeleteVolumeResponse>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().delete_volume(request.into_inner()))
            .await
    }

    type PullImageStream = PullStream;

    async fn pull_image(
        &self,
        request: Request<runtime::PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        let id = request_id(&request);
        let caller = request.extensions().get::<Caller>().map(|c| c.0.to_string());
        let mut body = request.into_inner();
        // As for a create: the signature decision is recorded for whoever asked.
        owner_or_caller(&mut body.owner, caller);
        let service = ServiceName::ContainerRuntime;
        let stream = forward(service, &id, self.inner.runtime.clone().pull_image(body)).await?.into_inner();
        let mapped =
            stream.map(move |item| item.map_err(|status| ApiError::Downstream { service, status }.into_status(&id)));
        Ok(Response::new(Box::pin(mapped)))
    }

    async fn list_images(
        &self,
        request: Request<runtime::ListImagesRequest>,
    ) -> Result<Response<runtime::ListImagesResponse>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().list_images(request.into_inner())).await
    }

    async fn remove_image(
        &self,
        request: Request<runtime::RemoveImageRequest>,
    ) -> Result<Response<runtime::RemoveImageResponse>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().remove_image(request.into_inner())).await
    }

    async fn drain(&self, request: Request<pb::DrainRequest>) -> Result<Response<runtime::DrainState>, Status> {
        let id = request_id(&request);
        let set = runtime::SetDrainRequest { draining: true, reason: request.into_inner().reason };
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().set_drain(set)).await
    }

    async fn undrain(&self, request: Request<pb::UndrainRequest>) -> Result<Response<runtime::DrainState>, Status> {
        let id = request_id(&request);
        let set = runtime::SetDrainRequest { draining: false, reason: String::new() };
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().set_drain(set)).await
    }

    async fn capacity(
        &self,
        request: Request<runtime::CapacityRequest>,
    ) -> Result<Response<runtime::CapacityResponse>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().capacity(request.into_inner())).await
    }

    async fn quarantine_gpu(
        &self,
        request: Request<gpu::QuarantineGpuRequest>,
    ) -> Result<Response<gpu::GpuHealth>, Status> {
        let id = request_id(&request);
        forward(ServiceName::GpuMonitor, &id, self.inner.gpu.clone().quarantine_gpu(request.into_inner())).await
    }

    async fn release_gpu(&self, request: Request<gpu::ReleaseGpuRequest>) -> Result<Response<gpu::GpuHealth>, Status> {
        let id = request_id(&request);
        forward(ServiceName::GpuMonitor, &id, self.inner.gpu.clone().release_gpu(request.into_inner())).await
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<runtime::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let id = request_id(&request);
        let service = ServiceName::ContainerRuntime;
        let stream = forward(service, &id, self.inner.runtime.clone().events(request.into_inner())).await?.into_inner();
        let mapped =
            stream.map(move |item| item.map_err(|status| ApiError::Downstream { service, status }.into_status(&id)));
        Ok(Response::new(Box::pin(mapped)))
    }

    async fn list_templates(
        &self,
        request: Request<runtime::ListTemplatesRequest>,
    ) -> Result<Response<runtime::ListTemplatesResponse>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ContainerRuntime, &id, self.inner.runtime.clone().list_templates(request.into_inner()))
            .await
    }

    type ExecContainerStream = ExecStream;

    /// Checks the request, starts the command through Attach (its refusals, an unknown or
    /// stopped container among them, come back as the call's status), then streams: the
    /// relay task belongs to the response stream and ends with it. The deadline counts from
    /// here; `[server] request_timeout` bounds the call only up to the response's headers.
    async fn exec_container(
        &self,
        request: Request<pb::ExecContainerRequest>,
    ) -> Result<Response<Self::ExecContainerStream>, Status> {
        let id = request_id(&request);
        let plan = ExecPlan::check(request.into_inner()).map_err(|e| e.into_status(&id))?;
        let deadline = tokio::time::Instant::now() + plan.timeout;
        let mut runtime = self.inner.runtime.clone();
        let attach = forward(ServiceName::ContainerRuntime, &id, runtime.attach(plan.input())).await?.into_inner();
        tracing::info!(container = plan.container(), timeout = ?plan.timeout, max_output = plan.max_output, "exec started");
        let (tx, rx) = tokio::sync::mpsc::channel(OUTPUT_QUEUE);
        let relay = crate::exec::relay(attach, tx, plan.max_output, deadline, id);
        tokio::spawn(relay.in_current_span());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn request_validator_challenge(
        &self,
        request: Request<access::ChallengeRequest>,
    ) -> Result<Response<access::Challenge>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ValidatorAccess, &id, self.access(&id)?.request_challenge(request.into_inner())).await
    }

    async fn provision_validator_access(
        &self,
        request: Request<access::ProvisionRequest>,
    ) -> Result<Response<access::Grant>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ValidatorAccess, &id, self.access(&id)?.provision(request.into_inner())).await
    }

    async fn revoke_validator_access(
        &self,
        request: Request<access::RevokeRequest>,
    ) -> Result<Response<access::RevokeResponse>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ValidatorAccess, &id, self.access(&id)?.revoke(request.into_inner())).await
    }

    async fn list_validator_grants(
        &self,
        request: Request<access::ListGrantsRequest>,
    ) -> Result<Response<access::ListGrantsResponse>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ValidatorAccess, &id, self.access(&id)?.list_grants(request.into_inner())).await
    }

    async fn add_container_key(
        &self,
        request: Request<access::AddContainerKeyRequest>,
    ) -> Result<Response<access::ContainerKeys>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ValidatorAccess, &id, self.tenants(&id)?.add_container_key(request.into_inner())).await
    }

    async fn remove_container_key(
        &self,
        request: Request<access::RemoveContainerKeyRequest>,
    ) -> Result<Response<access::ContainerKeys>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ValidatorAccess, &id, self.tenants(&id)?.remove_container_key(request.into_inner())).await
    }

    async fn list_container_keys(
        &self,
        request: Request<access::ListContainerKeysRequest>,
    ) -> Result<Response<access::ContainerKeys>, Status> {
        let id = request_id(&request);
        forward(ServiceName::ValidatorAccess, &id, self.tenants(&id)?.list_container_keys(request.into_inner())).await
    }

    async fn run_attestation(
        &self,
        request: Request<pb::AttestationRequest>,
    ) -> Result<Response<pb::AttestationResponse>, Status> {
        let id = request_id(&request);
        let gpus = self.inner.probes.gpu_count().await.unwrap_or(0);
        let report = self.inner.attestor.run(request.into_inner(), gpus).await;
        let report_json = report.map_err(|e| e.into_status(&id))?;
        Ok(Response::new(pb::AttestationResponse { report_json }))
    }
}

impl Api {
    /// Docker's facts from `container-runtime check`, once they have been read successfully.
    async fn docker_facts(&self) -> Result<DockerFacts, ApiError> {
        self.inner
            .docker_facts
            .get_or_try_init(|| async {
                let (binary, config) = &self.inner.runtime_check;
                let output = ProcessSpec::new(binary)
                    .arg("--config")
                    .arg(config)
                    .arg("check")
                    .output(Duration::from_secs(10), 1 << 16)
                    .await
                    .map_err(|e| ApiError::Internal(format!("container-runtime check: {e}")))?;
                let text = String::from_utf8_lossy(&output.stdout);
                DockerFacts::from_checks(&text).ok_or_else(|| ApiError::DockerUnavailable {
                    detail: text.lines().next().unwrap_or("no output").to_owned(),
                })
            })
            .await
            .cloned()
    }

    /// Validator grants exist only with `[validator] enabled = true`.
    fn access(&self, request_id: &str) -> Result<ValidatorAccessClient<Channel>, Status> {
        self.inner.access.clone().ok_or_else(|| ApiError::ValidatorAccessDisabled.into_status(request_id))
    }

    /// Renters' keys exist only with `[tenant_access] enabled = true`.
    fn tenants(&self, request_id: &str) -> Result<TenantAccessClient<Channel>, Status> {
        self.inner.tenants.clone().ok_or_else(|| ApiError::TenantAccessDisabled.into_status(request_id))
    }
}
