//! The tower layer in front of every public RPC: a request id and a span, authentication (for
//! all but health and reflection), and the per-RPC metrics (count by status code, latency).
//! Every answer names the executor (`x-executor-id`), which clients sign. It tells the call's
//! connection ([`Peer`]) that a request arrived (its handshake deadline is met) and that it
//! authenticated (it is never evicted), and charges refused calls to the caller's address,
//! which is refused before anything is read once it has too many.
//!
//! Authentication needs the request bytes, which tonic has not decoded yet at this point: the
//! layer reads the whole request body (a unary or server-streaming call sends exactly one
//! message), takes the message out of its 5-byte gRPC frame, checks the signature over its
//! SHA-256, and hands the same bytes on to the service.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::hotkey::Hotkey;
use common::peers::PeerKey;
use http::{HeaderValue, Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tonic::body::Body;
use tracing::Instrument;

use crate::auth::{self, AuthFailure, Authenticator, Reason};
use crate::connections::Peer;
use crate::errors::ApiError;

/// Largest request body read for authentication: far above any request of the API (a
/// container with its environment and labels), and a bound on what an unauthenticated caller
/// can make the server hold per call.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Response header carrying the request id that the logs name.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The caller's hotkey, put in the request extensions after a successful check.
#[derive(Debug, Clone)]
pub struct Caller(pub Hotkey);

/// The authenticator, in the extensions of an authenticated `OpenSession` call only: its
/// handler opens the session there.
#[derive(Debug, Clone)]
pub struct SessionDoor(pub Arc<Authenticator>);

/// The id of one call, in the request extensions, the span, the response header and any
/// internal-error status message.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The call with a deadline of its own, enforced by its handler.
const ATTESTATION_METHOD: &str = "/executor.api.v1.ExecutorApi/RunAttestation";

/// The public API's methods by path, for the `method` label; anything else is `unknown` so
/// that callers cannot grow the label set.
const KNOWN_METHODS: &[&str] = &[
    "/executor.api.v1.ExecutorApi/Identity",
    "/executor.api.v1.ExecutorApi/DetailedHealth",
    "/executor.api.v1.ExecutorApi/SystemProfile",
    "/executor.api.v1.ExecutorApi/CreateContainer",
    "/executor.api.v1.ExecutorApi/StartContainer",
    "/executor.api.v1.ExecutorApi/StopContainer",
    "/executor.api.v1.ExecutorApi/UpdateContainer",
    "/executor.api.v1.ExecutorApi/RemoveContainer",
    "/executor.api.v1.ExecutorApi/GetContainer",
    "/executor.api.v1.ExecutorApi/ListContainers",
    "/executor.api.v1.ExecutorApi/StreamLogs",
    "/executor.api.v1.ExecutorApi/ContainerStats",
    "/executor.api.v1.ExecutorApi/ExecContainer",
    "/executor.api.v1.ExecutorApi/CheckPorts",
    "/executor.api.v1.ExecutorApi/CreateVolume",
    "/executor.api.v1.ExecutorApi/ListVolumes",
    "/executor.api.v1.ExecutorApi/DeleteVolume",
    "/executor.api.v1.ExecutorApi/PullImage",
    "/executor.api.v1.ExecutorApi/ListImages",
    "/executor.api.v1.ExecutorApi/RemoveImage",
    "/executor.api.v1.ExecutorApi/ListTemplates",
    "/executor.api.v1.ExecutorApi/Drain",
    "/executor.api.v1.ExecutorApi/Undrain",
    "/executor.api.v1.ExecutorApi/Capacity",
    "/executor.api.v1.ExecutorApi/QuarantineGpu",
    "/executor.api.v1.ExecutorApi/ReleaseGpu",
    "/executor.api.v1.ExecutorApi/WatchEvents",
    "/executor.api.v1.ExecutorApi/RequestValidatorChallenge",
    "/executor.api.v1.ExecutorApi/ProvisionValidatorAccess",
    "/executor.api.v1.ExecutorApi/RevokeValidatorAccess",
    "/executor.api.v1.ExecutorApi/ListValidatorGrants",
    "/executor.api.v1.ExecutorApi/AddContainerKey",
    "/executor.api.v1.ExecutorApi/RemoveContainerKey",
    "/executor.api.v1.ExecutorApi/ListContainerKeys",
    "/executor.api.v1.ExecutorApi/RunAttestation",
    "/executor.api.v1.ExecutorApi/OpenSession",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/health.v1.Health/Check",
    "/health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Describes the series this layer writes (once, at start).
pub fn describe_metrics() {
    metrics::describe_counter!(
        "executor_api_requests_total",
        "Public gRPC calls by method and final status code (OK, UNAUTHENTICATED, ...)."
    );
    metrics::describe_histogram!(
        "executor_api_request_duration_seconds",
        metrics::Unit::Seconds,
        "Public gRPC call latency by method, from request headers to the final status."
    );
    metrics::describe_counter!("executor_api_auth_failures_total", "Refused public gRPC calls by reason code.");
    metrics::describe_counter!(
        "executor_api_sessions_opened_total",
        "Signed sessions opened (OpenSession), since executor-api started."
    );
    metrics::counter!("executor_api_sessions_opened_total").absolute(0);
    for reason in Reason::ALL {
        metrics::counter!("executor_api_auth_failures_total", "reason" => reason.as_str()).absolute(0);
    }
}

/// Adds [`ApiService`] around the routes; `auth: None` serves without authentication (the
/// benchmark's baseline only; the service itself always passes an authenticator).
#[derive(Debug, Clone)]
pub struct ApiLayer {
    auth: Option<Arc<Authenticator>>,
    timeout: Duration,
    ids: Arc<RequestIds>,
    executor_id: Option<HeaderValue>,
}

impl ApiLayer {
    /// `timeout` is `[server] request_timeout`: from the request's headers to the response's;
    /// every response names `executor_id` (in `x-executor-id`), which clients sign.
    pub fn new(auth: Option<Arc<Authenticator>>, timeout: Duration, executor_id: &str) -> Self {
        let executor_id = HeaderValue::from_str(executor_id).ok();
        Self { auth, timeout, ids: Arc::new(RequestIds::new()), executor_id }
    }
}

impl<S> tower::Layer<S> for ApiLayer {
    type Service = ApiService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiService {
            inner,
            auth: self.auth.clone(),
            timeout: self.timeout,
            ids: self.ids.clone(),
            executor_id: self.executor_id.clone(),
        }
    }
}

/// Request ids: a random per-process prefix and a counter.
#[derive(Debug)]
struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let mut raw = [0u8; 4];
        let _ = getrandom::fill(&mut raw);
        Self { prefix: hex::encode(raw), next: AtomicU64::new(1) }
    }

    fn next(&self) -> String {
        format!("{}-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

#[derive(Debug, Clone)]
pub struct ApiService<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
    timeout: Duration,
    ids: Arc<RequestIds>,
    executor_id: Option<HeaderValue>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> tower::Service<Request<Body>> for ApiService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<MeteredBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The clone is the ready one, as tower asks; this one stays for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let timeout = self.timeout;
        let request_id = self.ids.next();
        let executor_id = self.executor_id.clone();
        let path = request.uri().path().to_owned();
        let method: &'static str = KNOWN_METHODS.iter().find(|m| **m == path).copied().unwrap_or("unknown");
        let span = tracing::info_span!("rpc", method = %path, request_id = %request_id);
        let started = Instant::now();
        let mut request = request;
        request.extensions_mut().insert(RequestId(request_id.clone()));
        // The connection delivered a request: its handshake deadline is met.
        let peer = Peer::of(&request);
        if let Some(peer) = &peer {
            peer.requested();
            request.extensions_mut().insert(peer.tcp_info());
        }
        let timed_out = move |request_id: &str| {
            tracing::info!(?timeout, "call took longer than server.request_timeout");
            ApiError::RequestTimeout(timeout).into_status(request_id).into_http()
        };
        let id = request_id.clone();
        let call = async move {
            // `request_timeout` covers reading the request and authentication, and the handler
            // up to its response headers (a stream's messages may come later; ExecContainer's
            // stream ends at the caller's `timeout_seconds`, `exec::relay`); RunAttestation's
            // handler has a deadline of its own (`attest::ATTESTATION_TIMEOUT`).
            // One timer for the whole call, authentication and handler.
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            if let Some(auth) = auth.filter(|_| !auth::is_open(&path)) {
                let key = peer.as_ref().map(Peer::key);
                let authenticated = tokio::select! {
                    biased;
                    result = authenticate(&auth, &path, key, request) => Ok(result),
                    () = &mut deadline => Err(()),
                };
                match authenticated {
                    Ok(Ok(admitted)) => {
                        // The miner's connection: never evicted to make room for strangers.
                        if let Some(peer) = &peer {
                            peer.authenticated();
                        }
                        request = admitted;
                        if path == auth::OPEN_SESSION_METHOD {
                            request.extensions_mut().insert(SessionDoor(auth.clone()));
                        }
                    }
                    Ok(Err(failure)) => {
                        if let Some(key) = key.filter(|_| failure.reason.is_failure()) {
                            auth.record_failure(key);
                        }
                        metrics::counter!("executor_api_auth_failures_total", "reason" => failure.reason.as_str())
                            .increment(1);
                        tracing::info!(reason = failure.reason.as_str(), detail = %failure.detail, "call refused");
                        return failure.to_status().into_http();
                    }
                    Err(_) => {
                        // A caller that cannot finish its request in time is refused too.
                        if let Some(key) = key {
                            auth.record_failure(key);
                        }
                        return timed_out(&id);
                    }
                }
            }
            if path == ATTESTATION_METHOD {
                let Ok(response) = inner.call(request).await;
                return response;
            }
            tokio::select! {
                biased;
                Ok(response) = inner.call(request) => response,
                () = &mut deadline => timed_out(&id),
            }
        };
        Box::pin(
            async move {
                let mut response = call.await;
                add_request_id(&mut response, &request_id);
                if let Some(executor_id) = executor_id {
                    response.headers_mut().insert(auth::EXECUTOR_ID_HEADER, executor_id);
                }
                Ok(MeteredBody::wrap(response, method, started))
            }
            .instrument(span),
        )
    }
}

fn add_request_id(response: &mut Response<Body>, id: &str) {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
}

/// Reads the request, checks its signature, and rebuilds it with the same bytes; a caller from
/// an address with too many refused calls (`key`) is refused first.
async fn authenticate(
    auth: &Authenticator,
    path: &str,
    key: Option<PeerKey>,
    request: Request<Body>,
) -> Result<Request<Body>, AuthFailure> {
    let malformed = |detail: String| AuthFailure { reason: Reason::MalformedBody, detail };
    if let Some(key) = key {
        auth.admit_peer(key)?;
    }
    let (mut parts, body) = request.into_parts();
    // Refuse what we can before reading anything.
    let claim = auth.precheck(&parts.headers)?;
    let bytes = read_body(body).await.map_err(|e| malformed(format!("cannot read the request: {e}")))?;
    let message = single_message(&bytes).map_err(malformed)?;
    let hotkey = auth.verify_batched(path, claim, message).await?;
    parts.extensions.insert(Caller(hotkey));
    Ok(Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes))))
}

/// The whole request body, at most [`MAX_REQUEST_BYTES`]: a unary call's single DATA frame as
/// it came, without a copy; more frames are gathered.
async fn read_body(body: Body) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
    let mut body = http_body_util::Limited::new(body, MAX_REQUEST_BYTES);
    let mut first: Option<Bytes> = None;
    let mut gathered: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        match first.take() {
            None if gathered.is_empty() => first = Some(data),
            None => gathered.extend_from_slice(&data),
            Some(earlier) => {
                gathered.extend_from_slice(&earlier);
                gathered.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(gathered)))
}

/// The message of a body holding exactly one uncompressed gRPC frame.
fn single_message(body: &[u8]) -> Result<&[u8], String> {
    if body.len() < 5 {
        return Err("the request is not a gRPC message".to_owned());
    }
    if body[0] != 0 {
        return Err("compressed requests cannot be authenticated; send them uncompressed".to_owned());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return Err("the request must hold exactly one message".to_owned());
    }
    Ok(&body[5..])
}

/// A response body that records the call's status code and latency when the call ends:
/// at the trailers, at the headers of a trailers-only response, or when the client goes away.
#[derive(Debug)]
pub struct MeteredBody {
    inner: Body,
    method: &'static str,
    started: Instant,
    recorded: bool,
}

impl MeteredBody {
    fn wrap(response: Response<Body>, method: &'static str, started: Instant) -> Response<MeteredBody> {
        // A trailers-only response (every error the layer or tonic answers at once) has its
        // status in the headers.
        let code = tonic::Status::from_header_map(response.headers()).map(|s| s.code());
        response.map(|inner| {
            let mut body = MeteredBody { inner, method, started, recorded: false };
            if let Some(code) = code {
                body.record(code);
            }
            body
        })
    }

    fn record(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let code = code_name(code);
        metrics::counter!("executor_api_requests_total", "method" => self.method, "code" => code).increment(1);
        metrics::histogram!("executor_api_request_duration_seconds", "method" => self.method)
            .record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // The stream ended without a status: the client cancelled.
        self.record(tonic::Code::Cancelled);
    }
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = tonic::Status::from_header_map(trailers).map_or(tonic::Code::Ok, |s| s.code());
                    self.record(code);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = status.code();
                self.record(code);
            }
            Poll::Ready(None) => self.record(tonic::Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The gRPC name of a code, as the `code` label.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_exactly_one_uncompressed_frame() {
        assert_eq!(single_message(&[0, 0, 0, 0, 2, 8, 1]).unwrap(), &[8, 1]);
        assert_eq!(single_message(&[0, 0, 0, 0, 0]).unwrap(), &[] as &[u8]);
        for bad in [&[][..], &[0, 0, 0][..], &[1, 0, 0, 0, 0][..], &[0, 0, 0, 0, 1][..], &[0, 0, 0, 0, 0, 0][..]] {
            assert!(single_message(bad).is_err(), "{bad:?}");
        }
    }
}
