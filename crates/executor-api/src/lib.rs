//! executor-api: the one door into the node. Owns the public gRPC port (`[server] host:port`),
//! the HTTP health endpoint (`[server] health_port`) and its metrics port; everything else is
//! reached through it.
//!
//! - [`layer`]: request ids, authentication of every call but health and reflection
//!   ([`auth`]), per-RPC metrics.
//! - [`api`]: the `executor.api.v1.ExecutorApi` handlers, forwarding to the internal services;
//!   [`probes`] (health, Docker's facts), [`attest`] (the prover) and [`exec`] (a command in
//!   a container, through container-runtime's Attach) behind them.
//! - [`errors`]: the one mapping of errors to status codes.
//! - [`connections`]: who may hold a connection (the caps, the handshake deadline, strangers
//!   making room).
//! - [`client`]: the miner-side client that signs calls (used by `executor ctl` and tests).
//!
//! Modules use only modules below them: `auth`, `connections`, `probes` at the bottom; `errors`
//! and `client` on `auth`; `attest` and `exec` on `errors`; `layer` on `auth` and `errors`;
//! `api` on `attest`, `errors`, `exec`, `layer` and `probes`; this file on all. `invariants` checks it, and that
//! no module but `errors` builds a status.

pub mod api;
pub mod attest;
pub mod auth;
pub mod client;
pub mod connections;
pub mod errors;
pub mod exec;
#[cfg(test)]
mod invariants;
pub mod layer;
pub mod probes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::StatusCode;
use axum::routing::get;
use common::ServiceName;
use common::check::Check;
use common::clock::SystemClock;
use common::config::{Config, ServerConfig};
use common::http::HttpLimits;
use common::identity::{ExecutorIdentity, IDENTITY_FILE};
use common::proto::api::v1::executor_api_server::ExecutorApiServer;
use common::service::{BoxError, Service, ServiceContext};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::transport::ServerTlsConfig;
use tonic_health::ServingStatus;

use crate::api::Api;
use crate::auth::Authenticator;
use crate::probes::{NodeHealth, Probes};

/// The full name of the public API service.
pub const GRPC_SERVICE: &str = "executor.api.v1.ExecutorApi";
/// The executor guide's name for the health service (`health.v1.Health/Check`).
pub const HEALTH_ALIAS: &str = "health.v1.Health";

/// Concurrent calls on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// The executor-api service.
#[derive(Debug)]
pub struct ExecutorApi {
    grpc: TcpListener,
    http: TcpListener,
    api: Api,
    auth: Arc<Authenticator>,
    tls: Option<ServerTlsConfig>,
}

async fn bind(addr: SocketAddr, key: &str) -> Result<TcpListener, BoxError> {
    TcpListener::bind(addr).await.map_err(|e| format!("{key} {addr}: {e}").into())
}

/// The TLS settings of `[server]`, read and checked now so that a bad file stops the start
/// with the key's name rather than failing each handshake later.
pub fn tls_config(server: &ServerConfig) -> Result<Option<ServerTlsConfig>, BoxError> {
    let (Some(cert), Some(key)) = (&server.tls_cert_path, &server.tls_key_path) else { return Ok(None) };
    let read = |path: &PathBuf, name: &str| {
        std::fs::read(path).map_err(|e| format!("key `server.{name}`: cannot read {}: {e}", path.display()))
    };
    let identity = tonic::transport::Identity::from_pem(read(cert, "tls_cert_path")?, read(key, "tls_key_path")?);
    let config = ServerTlsConfig::new().identity(identity);
    // Building a server with it parses both PEM files.
    tonic::transport::Server::builder().tls_config(config.clone()).map_err(|e| {
        format!(
            "key `server.tls_cert_path`/`server.tls_key_path`: {} and {} are not a PEM certificate and its key: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(Some(config))
}

impl Service for ExecutorApi {
    const NAME: ServiceName = ServiceName::ExecutorApi;

    /// `executor validate`: the TLS certificate and key load.
    fn check(loaded: &common::config::LoadedConfig) -> impl std::future::Future<Output = Vec<Check>> + Send {
        let server = &loaded.config.server;
        let check = match (&server.tls_cert_path, tls_config(server)) {
            (None, _) => Check::skip("tls", "public port is plaintext (server.tls_cert_path not set)"),
            (Some(cert), Ok(_)) => Check::pass("tls", format!("certificate {} and its key load", cert.display())),
            (Some(_), Err(e)) => Check::fail("tls", e.to_string()),
        };
        std::future::ready(vec![check])
    }

    async fn build(ctx: &ServiceContext) -> Result<Self, BoxError> {
        let miner = ctx.loaded.require_miner_hotkey()?.clone();
        let config = ctx.config();
        let identity = Arc::new(ExecutorIdentity::load_or_create(&config.data_dir)?);
        let tls = tls_config(&config.server)?;
        let grpc = bind(SocketAddr::new(config.server.host, *config.server.port), "server.port").await?;
        let http = bind(SocketAddr::new(config.server.host, *config.server.health_port), "server.health_port").await?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot locate the executor-api binary: {e}"))?;
        let bin_dir = exe.parent().ok_or("the executor-api binary has no directory")?;
        let api = Api::new(
            config,
            identity.executor_id(),
            identity.public_key(),
            bin_dir,
            config.data_dir.join(IDENTITY_FILE),
            ctx.loaded.path.clone(),
        );
        let policy = auth::Policy::of(miner, identity.clone(), config);
        let auth = Arc::new(Authenticator::new(policy, Arc::new(SystemClock))?);
        Ok(Self { grpc, http, api, auth, tls })
    }

    async fn run(self, ctx: ServiceContext) -> Result<(), BoxError> {
        let config = ctx.config();
        tracing::info!(
            grpc = %self.grpc.local_addr()?,
            health = %self.http.local_addr()?,
            tls = self.tls.is_some(),
            max_connections = config.server.max_connections,
            executor_id = %self.api.executor_id(),
            "public endpoints listening"
        );
        let app = health_routes(self.api.probes().clone(), config, self.api.executor_id().to_owned());
        let grpc = serve_public(self.grpc, self.api, Some(self.auth), &config.server, self.tls, ctx.shutdown.clone());
        let http = common::http::serve(self.http, app, "health", HttpLimits::DEFAULT, ctx.shutdown.clone());
        let (grpc, http) = tokio::join!(grpc, http);
        grpc?;
        http?;
        Ok(())
    }
}

/// Serves the public gRPC API on `listener` until `shutdown`: the ExecutorApi handlers, health
/// under both names, reflection, behind the [`layer::ApiLayer`] (`auth: None` only for the
/// benchmark's unauthenticated baseline), with the `[server]` limits.
pub async fn serve_public(
    listener: TcpListener,
    api: Api,
    auth: Option<Arc<Authenticator>>,
    server: &ServerConfig,
    tls: Option<ServerTlsConfig>,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    layer::describe_metrics();
    let (health, routes) = common::grpc::public_base_routes(&[GRPC_SERVICE, HEALTH_ALIAS])?;
    let alias = HealthAlias(tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(health.clone()),
    ));
    let api_layer = layer::ApiLayer::new(auth, server.request_timeout, api.executor_id());
    let routes = routes.add_service(alias).add_service(ExecutorApiServer::new(api));
    health.set_service_status("", ServingStatus::Serving).await;
    health.set_service_status(GRPC_SERVICE, ServingStatus::Serving).await;
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(server.keepalive_interval))
        .http2_keepalive_timeout(Some(server.keepalive_timeout))
        // With max_connections, bounds the calls (and request bodies) in flight.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        // An old connection gets GOAWAY and closes when its calls in flight have finished. No
        // `max_connection_age_grace`: tonic 0.14 then skips the GOAWAY and cuts the connection
        // at age + grace, calls and all.
        .max_connection_age(server.max_connection_age);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let (incoming, acceptor) = connections::accept(listener, connections::Limits::of(server), shutdown.clone());
    let served = builder
        .layer(api_layer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    acceptor.abort();
    health.set_service_status("", ServingStatus::NotServing).await;
    served?;
    Ok(())
}

/// `grpc.health.v1.Health` served again under the name `health.v1.Health`: the path is
/// rewritten and the same health service answers.
#[derive(Debug, Clone)]
struct HealthAlias<S>(S);

impl<S> NamedService for HealthAlias<S> {
    const NAME: &'static str = HEALTH_ALIAS;
}

impl<S, B> tower::Service<http::Request<B>> for HealthAlias<S>
where
    S: tower::Service<http::Request<B>, Error = Infallible>,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let alias = format!("/{HEALTH_ALIAS}/");
        if let Some(method) = request.uri().path().strip_prefix(&alias)
            && let Ok(path) = format!("/grpc.health.v1.Health/{method}").parse::<http::uri::PathAndQuery>()
        {
            let mut parts = request.uri().clone().into_parts();
            parts.path_and_query = Some(path);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
        self.0.call(request)
    }
}

/// The HTTP routes of `[server] health_port`: `GET /health` (the node's state, JSON), `GET
/// /livez` (the process is up) and `GET /readyz` (every service serves and Docker answers).
pub fn health_routes(probes: Probes, config: &Config, executor_id: String) -> axum::Router {
    let state =
        Arc::new(HealthState { probes, executor_id, config: config.clone(), last: tokio::sync::Mutex::new(None) });
    axum::Router::new()
        .route("/health", get(health))
        .route("/livez", get(|| async { "live\n" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

/// How long one look at the node answers `/health` and `/readyz`: a flood of them costs the
/// services and the Docker engine one probe a second.
const HEALTH_CACHE: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
struct HealthState {
    probes: Probes,
    executor_id: String,
    config: Config,
    /// The last probe and when it started; requests that arrive while one runs wait for it.
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, NodeHealth)>>,
}

impl HealthState {
    async fn probe(&self) -> NodeHealth {
        let mut last = self.last.lock().await;
        if let Some((at, health)) = last.as_ref()
            && at.elapsed() < HEALTH_CACHE
        {
            return health.clone();
        }
        let started = tokio::time::Instant::now();
        let health = self.probes.probe().await;
        *last = Some((started, health.clone()));
        health
    }
}

/// `GET /readyz`: 200 `ready` when the node serves and takes new containers; 503 `draining`
/// while it is drained, `not ready` otherwise.
async fn ready(axum::extract::State(state): axum::extract::State<Arc<HealthState>>) -> (StatusCode, &'static str) {
    let health = state.probe().await;
    match (health.healthy(), health.draining) {
        (true, false) => (StatusCode::OK, "ready\n"),
        (true, true) => (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
    }
}

/// `GET /health`: 200 when every service reports SERVING and Docker answers, 503 otherwise;
/// the body says which.
async fn health(
    axum::extract::State(state): axum::extract::State<Arc<HealthState>>,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let health = state.probe().await;
    let healthy = health.healthy();
    let endpoints = api::advertised(&state.config);
    let body = serde_json::json!({
        "status": if healthy { "serving" } else { "degraded" },
        "version": common::VERSION,
        "executor_id": state.executor_id,
        "services": health.services,
        "docker": health.docker,
        "gpu_count": health.gpu_count,
        "draining": health.draining,
        "endpoints": {
            "grpc": endpoints.grpc_endpoint,
            "ssh": endpoints.ssh_endpoint,
            "health": endpoints.health_endpoint,
            "advertised_host": endpoints.advertised_host,
            "advertised_port": endpoints.advertised_port,
            "advertised_tls": endpoints.advertised_tls,
        },
    });
    (if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, axum::Json(body))
}
