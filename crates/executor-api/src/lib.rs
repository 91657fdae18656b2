//! executor-api: the one door into the node. Owns the public gRPC port (`[server] host:port`),
//! the HTTP health endpoint (`[server] health_port`) and its metrics port; everything else is
//! reached through it.
//!
//! This build serves `grpc.health.v1` and server reflection on the public port, and
//! `GET /health` with the state of every service. The authenticated API of
//! `proto/executor/executor_api.proto` is not served yet: nothing on the public port can act
//! on the node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use common::ServiceName;
use common::identity::ExecutorIdentity;
use common::service::{BoxError, Service, ServiceContext};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic_health::ServingStatus;

/// How long `GET /health` waits for each service.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// The executor-api service.
#[derive(Debug)]
pub struct ExecutorApi {
    grpc: TcpListener,
    http: TcpListener,
    executor_id: String,
}

async fn bind(addr: SocketAddr, key: &str) -> Result<TcpListener, BoxError> {
    TcpListener::bind(addr).await.map_err(|e| format!("{key} {addr}: {e}").into())
}

impl Service for ExecutorApi {
    const NAME: ServiceName = ServiceName::ExecutorApi;

    async fn build(ctx: &ServiceContext) -> Result<Self, BoxError> {
        ctx.loaded.require_miner_hotkey()?;
        let config = ctx.config();
        let identity = ExecutorIdentity::load_or_create(&config.data_dir)?;
        let grpc = bind(SocketAddr::new(config.server.host, config.server.port), "server.port").await?;
        let http = bind(SocketAddr::new(config.server.host, config.server.health_port), "server.health_port").await?;
        Ok(Self { grpc, http, executor_id: identity.executor_id() })
    }

    async fn run(self, ctx: ServiceContext) -> Result<(), BoxError> {
        let config = ctx.config();
        let (public_health, routes) = common::grpc::base_routes(&[])?;
        public_health.set_service_status("", ServingStatus::Serving).await;
        tracing::info!(
            grpc = %self.grpc.local_addr()?,
            health = %self.http.local_addr()?,
            executor_id = %self.executor_id,
            "public endpoints listening"
        );
        let grpc = tonic::transport::Server::builder().add_routes(routes).serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(self.grpc),
            ctx.shutdown.clone().cancelled_owned(),
        );
        // `GET /health` reports the services this configuration runs.
        let channels: Vec<(ServiceName, Channel)> = config
            .services()
            .into_iter()
            .map(|s| (s, common::grpc::unix_channel(&s.socket(&config.runtime_dir))))
            .collect();
        let state = std::sync::Arc::new(HealthState { channels, executor_id: self.executor_id });
        let app = axum::Router::new().route("/health", get(health)).with_state(state);
        let http = axum::serve(self.http, app).with_graceful_shutdown(ctx.shutdown.clone().cancelled_owned());
        let (grpc, http) = tokio::join!(grpc, http);
        grpc?;
        http?;
        Ok(())
    }
}

#[derive(Debug)]
struct HealthState {
    channels: Vec<(ServiceName, Channel)>,
    executor_id: String,
}

/// `GET /health`: 200 when every service reports SERVING, 503 otherwise; the body says which.
async fn health(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<HealthState>>,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    // Ask every service at once; each answer is bounded by HEALTH_TIMEOUT.
    let tasks: Vec<_> = state
        .channels
        .iter()
        .map(|(name, channel)| {
            let channel = channel.clone();
            let task = tokio::spawn(async move { common::grpc::check_health(channel, "", HEALTH_TIMEOUT).await });
            (name.as_str(), task)
        })
        .collect();
    let mut services = BTreeMap::new();
    for (name, task) in tasks {
        let status = match task.await {
            Ok(Ok(ServingStatus::Serving)) => "SERVING".to_owned(),
            Ok(Ok(other)) => format!("{other:?}").to_uppercase(),
            Ok(Err(e)) => format!("UNREACHABLE: {}", e.message()),
            Err(e) => format!("UNREACHABLE: {e}"),
        };
        services.insert(name, status);
    }
    let healthy = services.values().all(|s| s == "SERVING");
    let body = serde_json::json!({
        "status": if healthy { "serving" } else { "degraded" },
        "version": common::VERSION,
        "executor_id": state.executor_id,
        "services": services,
    });
    (if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, axum::Json(body))
}
