//! Prometheus exposition: installs the process-wide recorder and serves `GET /metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot install the metrics recorder: {0}")]
    Install(String),
    #[error("metrics port {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Buckets of `executor_api_request_duration_seconds`, a histogram (the others are summaries):
/// from a cached answer (sub-millisecond) to a container create pulling an image.
const API_LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Installs the recorder for this process and sets `executor_build_info{service, version} 1`.
pub fn install(service: &str) -> Result<PrometheusHandle, MetricsError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("executor_api_request_duration_seconds".to_owned()), API_LATENCY_BUCKETS)
        .map_err(|e| MetricsError::Install(e.to_string()))?
        .install_recorder()
        .map_err(|e| MetricsError::Install(e.to_string()))?;
    metrics::describe_gauge!("executor_build_info", "Build of this executor process; always 1.");
    metrics::gauge!("executor_build_info", "service" => service.to_owned(), "version" => crate::VERSION).set(1.0);
    Ok(handle)
}

/// Binds the metrics port.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `GET /metrics` until `shutdown`; runs the recorder's upkeep in the background so
/// rendering stays cheap.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let upkeep = {
        let handle = handle.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => handle.run_upkeep(),
                    () = shutdown.cancelled() => break,
                }
            }
        })
    };
    let app = axum::Router::new().route("/metrics", get(move || std::future::ready(handle.render())));
    let served = crate::http::serve(listener, app, "metrics", crate::http::HttpLimits::DEFAULT, shutdown).await;
    let _ = upkeep.await;
    served
}
