//! The miner-side client of the public API: calls authenticated for one executor, as
//! [`crate::auth`] describes. `executor ctl` and the end-to-end tests use it; a miner written in
//! Rust can too.
//!
//! By default the client opens a signed session (scheme v3) with its first call and puts its
//! calls in it: one sr25519 signature for `OpenSession`, then an HMAC per call. It checks the
//! executor's answer against the executor id (the id derives from the ed25519 key that signs
//! the answer), opens a new session when the old one is about to expire, and, when the
//! executor says it no longer knows the session (it restarted), opens a new one and sends the
//! call again: the executor refused it before doing anything. [`ExecutorClient::per_call`]
//! signs every call instead (scheme v2).
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

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
use tonic::{Code, Request, Status, Streaming};

use crate::errors::client_side;

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
    /// The signed session calls go in; `None`: every call signed on its own.
    sessions: Option<Arc<tokio::sync::Mutex<Option<Arc<ClientSession>>>>>,
}

/// A session this client opened.
#[derive(Debug)]
struct ClientSession {
    id: String,
    key: [u8; 32],
    /// The last counter used.
    counter: AtomicU64,
    /// When a new session is opened for new calls: a little before this one ends, on this
    /// machine's monotonic clock (its wall clock may differ from the executor's).
    renew_at: std::time::Instant,
}

/// A session is renewed this long before it ends, or a quarter of its life if that is less.
const SESSION_MARGIN: Duration = Duration::from_secs(60);

const PREFIX: &str = "/executor.api.v1.ExecutorApi/";

macro_rules! unary {
    ($(#[$doc:meta])* $name:ident, $method:literal, $req:ty => $resp:ty) => {
        $(#[$doc])*
        pub async fn $name(&self, request: $req) -> Result<$resp, Status> {
            self.call($method, request, |mut api, r| async move { api.$name(r).await }).await
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

    /// A client over an existing channel, for the executor `executor_id`, its calls in a
    /// signed session.
    pub fn new(channel: Channel, key: HotkeyPair, executor_id: impl Into<Arc<str>>) -> Self {
        Self {
            api: ExecutorApiClient::new(channel),
            key: Arc::new(key),
            executor_id: executor_id.into(),
            sessions: Some(Arc::default()),
        }
    }

    /// This client with every call signed on its own (scheme v2) rather than in a session.
    pub fn per_call(mut self) -> Self {
        self.sessions = None;
        self
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
        with_metadata(Request::new(message), headers)
    }

    /// `message` as a request to `method` in this client's session (opened or renewed first
    /// if need be), or signed on its own for a per-call client; with the session's id.
    pub async fn authorized<T: Message>(&self, method: &str, message: T) -> Result<Request<T>, Status> {
        Ok(self.authorize(method, message, None).await?.0)
    }

    async fn authorize<T: Message>(
        &self,
        method: &str,
        message: T,
        stale: Option<&str>,
    ) -> Result<(Request<T>, Option<String>), Status> {
        let Some(slot) = &self.sessions else {
            return Ok((self.signed(method, message), None));
        };
        let session = {
            let mut current = slot.lock().await;
            let now = std::time::Instant::now();
            match current.as_ref() {
                Some(s) if Some(s.id.as_str()) != stale && now < s.renew_at => s.clone(),
                _ => {
                    let opened = Arc::new(self.open_session().await?);
                    *current = Some(opened.clone());
                    opened
                }
            }
        };
        let counter = session.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let path = format!("{PREFIX}{method}");
        let headers = crate::auth::signing::session_headers(
            &session.key,
            &self.executor_id,
            &session.id,
            &path,
            counter,
            &message.encode_to_vec(),
        );
        Ok((with_metadata(Request::new(message), headers), Some(session.id.clone())))
    }

    /// `OpenSession`, signed on its own; the answer checked against this executor's id.
    async fn open_session(&self) -> Result<ClientSession, Status> {
        use crate::auth::signing;
        let (secret, client_key) = signing::session_keypair()
            .map_err(|e| client_side(Code::Internal, format!("no randomness for a session key: {e}")))?;
        let request = self.signed("OpenSession", pb::OpenSessionRequest { client_key: client_key.to_vec() });
        let sent = std::time::Instant::now();
        let answer = self.api.clone().open_session(request).await?.into_inner();
        let life = Duration::from_secs(answer.ttl_seconds);
        let renew_at = sent + life - SESSION_MARGIN.min(life / 4);
        let bad = |why: String| client_side(Code::Unauthenticated, format!("the executor's OpenSession answer: {why}"));
        let public_key: [u8; 32] =
            answer.public_key.as_slice().try_into().map_err(|_| bad("public_key is not 32 bytes".into()))?;
        let found = common::identity::executor_id_of(&public_key);
        if found != *self.executor_id {
            return Err(bad(format!("signed by {found}, not {}", self.executor_id)));
        }
        let executor_key: [u8; 32] =
            answer.executor_key.as_slice().try_into().map_err(|_| bad("executor_key is not 32 bytes".into()))?;
        if answer.session_id.len() != 32 || !answer.session_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("session_id is not 32 hex digits".into()));
        }
        let hotkey = self.key.hotkey().to_string();
        let transcript = signing::session_transcript(
            &self.executor_id,
            &hotkey,
            &answer.session_id,
            &client_key,
            &executor_key,
            answer.expires_at,
        );
        let verifying = ed25519_dalek::VerifyingKey::from_bytes(&public_key).map_err(|e| bad(e.to_string()))?;
        let signature = ed25519_dalek::Signature::from_slice(&answer.signature).map_err(|e| bad(e.to_string()))?;
        verifying
            .verify_strict(transcript.as_bytes(), &signature)
            .map_err(|_| bad("the signature does not verify".into()))?;
        let key = signing::session_key(
            &secret,
            &executor_key,
            &client_key,
            &executor_key,
            &self.executor_id,
            &hotkey,
            &answer.session_id,
        )
        .map_err(|e| bad(e.to_string()))?;
        Ok(ClientSession { id: answer.session_id, key, counter: AtomicU64::new(0), renew_at })
    }

    /// Sends `message` to `method` with `send`; a call refused because the executor no longer
    /// knows the session (it restarted) is sent again in a new one.
    async fn call<T, R, F, Fut>(&self, method: &str, message: T, send: F) -> Result<R, Status>
    where
        T: Message + Clone,
        F: Fn(ExecutorApiClient<Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let (request, session) = self.authorize(method, message.clone(), None).await?;
        match send(self.api.clone(), request).await {
            Err(status) if session.is_some() && session_gone(&status) => {
                let (request, _) = self.authorize(method, message, session.as_deref()).await?;
                Ok(send(self.api.clone(), request).await?.into_inner())
            }
            answer => Ok(answer?.into_inner()),
        }
    }

    pub async fn identity(&self) -> Result<pb::IdentityResponse, Status> {
        self.call("Identity", pb::IdentityRequest {}, |mut api, r| async move { api.identity(r).await }).await
    }

    pub async fn detailed_health(&self) -> Result<pb::DetailedHealthResponse, Status> {
        self.call(
            "DetailedHealth",
            pb::DetailedHealthRequest {},
            |mut api, r| async move { api.detailed_health(r).await },
        )
        .await
    }

    pub async fn system_profile(&self) -> Result<pb::SystemProfileResponse, Status> {
        self.call("SystemProfile", pb::SystemProfileRequest {}, |mut api, r| async move { api.system_profile(r).await })
            .await
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
        self.call("ExecContainer", request, |mut api, r| async move { api.exec_container(r).await }).await
    }

    /// A container's logs, streamed.
    pub async fn pull_image(
        &self,
        request: runtime::PullImageRequest,
    ) -> Result<Streaming<runtime::PullProgress>, Status> {
        self.call("PullImage", request, |mut api, r| async move { api.pull_image(r).await }).await
    }

    /// The node's events after `request.after_seq` (or only new ones), then each as it happens.
    pub async fn watch_events(
        &self,
        request: runtime::WatchEventsRequest,
    ) -> Result<Streaming<runtime::Event>, Status> {
        self.call("WatchEvents", request, |mut api, r| async move { api.watch_events(r).await }).await
    }

    pub async fn stream_logs(&self, request: runtime::LogsRequest) -> Result<Streaming<runtime::LogChunk>, Status> {
        self.call("StreamLogs", request, |mut api, r| async move { api.stream_logs(r).await }).await
    }
}

fn with_metadata<T, const N: usize>(mut request: Request<T>, headers: [(&'static str, String); N]) -> Request<T> {
    for (name, value) in headers {
        if let Ok(value) = MetadataValue::try_from(value.as_str()) {
            request.metadata_mut().insert(name, value);
        }
    }
    request
}

/// Whether the executor refused a call because it does not know its session (any more).
fn session_gone(status: &Status) -> bool {
    status.code() == tonic::Code::Unauthenticated && status.message().starts_with("unknown_session:")
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
