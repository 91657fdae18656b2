//! The miner-side client of the public API: every call signed with the miner's hotkey for one
//! executor, as [`crate::auth`] describes. `executor ctl` and the end-to-end tests use it; a
//! miner written in Rust can too.
//!
//! Signatures name the executor, so the client needs its id: [`ExecutorClient::connect`]
//! learns it from the `x-executor-id` header of a health check, and
//! [`ExecutorClient::connect_pinned`] checks it against the id the miner already knows (which
//! is safer on an untrusted network: a signature made for the pinned executor is useless to
//! any other).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use common::hotkey::HotkeyPair;
//! use executor_api::client::ExecutorClient;
//! let key = HotkeyPair::parse(&std::fs::read_to_string("miner.seed")?)?;
//! let client = ExecutorClient::connect("http://203.0.113.7:50051", None, key).await?;
//! println!("{}", client.identity().await?.executor_id);
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use common::hotkey::HotkeyPair;
use common::proto::access::v1 as access;
use common::proto::api::v1 as pb;
use common::proto::api::v1::executor_api_client::ExecutorApiClient;
use common::proto::gpu::v1 as gpu;
use common::proto::runtime::v1 as runtime;
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status, Streaming};

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{endpoint}` is not an endpoint URL: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("{endpoint} did not name its executor id: {reason}")]
    Discover { endpoint: String, reason: String },
    #[error("{endpoint} is {found}, not the executor {pinned}")]
    OtherExecutor { endpoint: String, pinned: String, found: String },
}

/// A signing client of one executor.
#[derive(Debug, Clone)]
pub struct ExecutorClient {
    api: ExecutorApiClient<Channel>,
    key: Arc<HotkeyPair>,
    executor_id: Arc<str>,
}

const PREFIX: &str = "/executor.api.v1.ExecutorApi/";

macro_rules! unary {
    ($(#[$doc:meta])* $name:ident, $method:literal, $req:ty => $resp:ty) => {
        $(#[$doc])*
        pub async fn $name(&self, request: $req) -> Result<$resp, Status> {
            let request = self.signed($method, request);
            Ok(self.api.clone().$name(request).await?.into_inner())
        }
    };
}

impl ExecutorClient {
    /// Connects to `endpoint` (`http://host:port`, or `https://` with the server's CA
    /// certificate in PEM, or the system's roots when `ca_pem` is `None`) and learns the
    /// executor's id.
    pub async fn connect(endpoint: &str, ca_pem: Option<Vec<u8>>, key: HotkeyPair) -> Result<Self, ClientError> {
        Self::connect_pinned(endpoint, ca_pem, key, None).await
    }

    /// As [`ExecutorClient::connect`]; with `executor_id`, the endpoint must be that executor.
    pub async fn connect_pinned(
        endpoint: &str,
        ca_pem: Option<Vec<u8>>,
        key: HotkeyPair,
        executor_id: Option<&str>,
    ) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::Endpoint { endpoint: endpoint.to_owned(), reason };
        let mut builder = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(5));
        if endpoint.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(pem) = ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            builder = builder.tls_config(tls).map_err(|e| bad(e.to_string()))?;
        }
        let channel = builder.connect().await.map_err(|e| ClientError::Connect {
            endpoint: endpoint.to_owned(),
            reason: std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string()),
        })?;
        let found = discover_id(channel.clone())
            .await
            .map_err(|reason| ClientError::Discover { endpoint: endpoint.to_owned(), reason })?;
        if let Some(pinned) = executor_id
            && pinned != found
        {
            return Err(ClientError::OtherExecutor { endpoint: endpoint.to_owned(), pinned: pinned.to_owned(), found });
        }
        Ok(Self::new(channel, key, found))
    }

    /// A client over an existing channel, signing for the executor `executor_id`.
    pub fn new(channel: Channel, key: HotkeyPair, executor_id: impl Into<Arc<str>>) -> Self {
        Self { api: ExecutorApiClient::new(channel), key: Arc::new(key), executor_id: executor_id.into() }
    }

    /// A client over an existing channel, for the executor that answers on it.
    pub async fn discover(channel: Channel, key: HotkeyPair) -> Result<Self, String> {
        let executor_id = discover_id(channel.clone()).await?;
        Ok(Self::new(channel, key, executor_id))
    }

    /// The executor this client signs for.
    pub fn executor_id(&self) -> &str {
        &self.executor_id
    }

    /// The generated client, for calls built with [`ExecutorClient::signed`].
    pub fn raw(&self) -> ExecutorApiClient<Channel> {
        self.api.clone()
    }

    /// `message` as a request to `method` (the RPC name, e.g. `Identity`) with signature
    /// metadata for now.
    pub fn signed<T: Message>(&self, method: &str, message: T) -> Request<T> {
        let timestamp = std::time::SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let path = format!("{PREFIX}{method}");
        let headers = crate::auth::sign(&self.key, &self.executor_id, &path, &message.encode_to_vec(), timestamp);
        let mut request = Request::new(message);
        for (name, value) in headers {
            if let Ok(value) = MetadataValue::try_from(value.as_str()) {
                request.metadata_mut().insert(name, value);
            }
        }
        request
    }

    pub async fn identity(&self) -> Result<pb::IdentityResponse, Status> {
        let request = self.signed("Identity", pb::IdentityRequest {});
        Ok(self.api.clone().identity(request).await?.into_inner())
    }

    pub async fn detailed_health(&self) -> Result<pb::DetailedHealthResponse, Status> {
        let request = self.signed("DetailedHealth", pb::DetailedHealthRequest {});
        Ok(self.api.clone().detailed_health(request).await?.into_inner())
    }

    pub async fn system_profile(&self) -> Result<pb::SystemProfileResponse, Status> {
        let request = self.signed("SystemProfile", pb::SystemProfileRequest {});
        Ok(self.api.clone().system_profile(request).await?.into_inner())
    }

    unary!(create_container, "CreateContainer", runtime::CreateContainerRequest => runtime::Container);
    unary!(start_container, "StartContainer", runtime::ContainerRef => runtime::Container);
    unary!(stop_container, "StopContainer", runtime::StopContainerRequest => runtime::Container);
    unary!(update_container, "UpdateContainer", runtime::UpdateContainerRequest => runtime::Container);
    unary!(remove_container, "RemoveContainer", runtime::RemoveContainerRequest => runtime::RemoveContainerResponse);
    unary!(get_container, "GetContainer", runtime::ContainerRef => runtime::Container);
    unary!(list_containers, "ListContainers", runtime::ListContainersRequest => runtime::ListContainersResponse);
    unary!(container_stats, "ContainerStats", runtime::ContainerRef => runtime::ContainerStats);
    unary!(check_ports, "CheckPorts", runtime::CheckPortsRequest => runtime::CheckPortsResponse);
    unary!(create_volume, "CreateVolume", runtime::CreateVolumeRequest => runtime::Volume);
    unary!(list_volumes, "ListVolumes", runtime::ListVolumesRequest => runtime::ListVolumesResponse);
    unary!(delete_volume, "DeleteVolume", runtime::DeleteVolumeRequest => runtime::DeleteVolumeResponse);
    unary!(list_images, "ListImages", runtime::ListImagesRequest => runtime::ListImagesResponse);
    unary!(remove_image, "RemoveImage", runtime::RemoveImageRequest => runtime::RemoveImageResponse);
    unary!(list_templates, "ListTemplates", runtime::ListTemplatesRequest => runtime::ListTemplatesResponse);
    unary!(drain, "Drain", pb::DrainRequest => runtime::DrainState);
    unary!(undrain, "Undrain", pb::UndrainRequest => runtime::DrainState);
    unary!(capacity, "Capacity", runtime::CapacityRequest => runtime::CapacityResponse);
    unary!(quarantine_gpu, "QuarantineGpu", gpu::QuarantineGpuRequest => gpu::GpuHealth);
    unary!(release_gpu, "ReleaseGpu", gpu::ReleaseGpuRequest => gpu::GpuHealth);
    unary!(request_validator_challenge, "RequestValidatorChallenge", access::ChallengeRequest => access::Challenge);
    unary!(provision_validator_access, "ProvisionValidatorAccess", access::ProvisionRequest => access::Grant);
    unary!(revoke_validator_access, "RevokeValidatorAccess", access::RevokeRequest => access::RevokeResponse);
    unary!(list_validator_grants, "ListValidatorGrants", access::ListGrantsRequest => access::ListGrantsResponse);
    unary!(add_container_key, "AddContainerKey", access::AddContainerKeyRequest => access::ContainerKeys);
    unary!(remove_container_key, "RemoveContainerKey", access::RemoveContainerKeyRequest => access::ContainerKeys);
    unary!(list_container_keys, "ListContainerKeys", access::ListContainerKeysRequest => access::ContainerKeys);
    unary!(run_attestation, "RunAttestation", pb::AttestationRequest => pb::AttestationResponse);

    /// A command in a running container: its output as it comes, its end last.
    pub async fn exec_container(
        &self,
        request: pb::ExecContainerRequest,
    ) -> Result<Streaming<pb::ExecContainerOutput>, Status> {
        let request = self.signed("ExecContainer", request);
        Ok(self.api.clone().exec_container(request).await?.into_inner())
    }

    /// A container's logs, streamed.
    pub async fn pull_image(
        &self,
        request: runtime::PullImageRequest,
    ) -> Result<Streaming<runtime::PullProgress>, Status> {
        let request = self.signed("PullImage", request);
        Ok(self.api.clone().pull_image(request).await?.into_inner())
    }

    /// The node's events after `request.after_seq` (or only new ones), then each as it happens.
    pub async fn watch_events(
        &self,
        request: runtime::WatchEventsRequest,
    ) -> Result<Streaming<runtime::Event>, Status> {
        let request = self.signed("WatchEvents", request);
        Ok(self.api.clone().watch_events(request).await?.into_inner())
    }

    pub async fn stream_logs(&self, request: runtime::LogsRequest) -> Result<Streaming<runtime::LogChunk>, Status> {
        let request = self.signed("StreamLogs", request);
        Ok(self.api.clone().stream_logs(request).await?.into_inner())
    }
}

/// The executor id in the `x-executor-id` header of a health check's answer (health is open).
async fn discover_id(channel: Channel) -> Result<String, String> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
    let answer = answer.map_err(|status| format!("health check: {}: {}", status.code(), status.message()))?;
    let id = answer.metadata().get(crate::auth::EXECUTOR_ID_HEADER).and_then(|v| v.to_str().ok());
    id.map(str::to_owned).ok_or_else(|| {
        format!("its answer has no `{}` header (an executor older than this client?)", crate::auth::EXECUTOR_ID_HEADER)
    })
}
