//! Prometheus exposition: installs the process-wide recorder and serves `GET /metrics`.
//!
//! Series of things that come and go (a container, a throttle reason) are not recorded through
//! the `metrics` macros, which can only ever add a series: they are a [`Family`] whose series are
//! replaced whole each round, so a removed container's series leave the exposition with it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
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
    let app = axum::Router::new().route("/metrics", get(move || std::future::ready(render(&handle))));
    let served = crate::http::serve(listener, app, "metrics", crate::http::HttpLimits::DEFAULT, shutdown).await;
    let _ = upkeep.await;
    served
}

/// The exposition: the recorder's series, then every [`Family`] with series.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    for family in FAMILIES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        family.render(&mut text);
    }
    text
}

/// Families that have been given series at least once, in that order.
static FAMILIES: Mutex<Vec<&'static Family>> = Mutex::new(Vec::new());

/// One series: its labels and value.
pub type Series = (Vec<(&'static str, String)>, f64);

/// A metric family whose series are replaced whole each time ([`Family::replace`]): what is not
/// in the latest set is gone from the exposition. Declared as a `static`.
#[derive(Debug)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    registered: AtomicBool,
    series: Mutex<Vec<Series>>,
}

impl Family {
    pub const fn gauge(name: &'static str, help: &'static str) -> Self {
        Self::new(name, help, "gauge")
    }

    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        Self::new(name, help, "counter")
    }

    const fn new(name: &'static str, help: &'static str, kind: &'static str) -> Self {
        Self { name, help, kind, registered: AtomicBool::new(false), series: Mutex::new(Vec::new()) }
    }

    /// The family's series from now on are exactly `series`.
    pub fn replace(&'static self, series: Vec<Series>) {
        if !self.registered.swap(true, Ordering::AcqRel) {
            FAMILIES.lock().unwrap_or_else(|e| e.into_inner()).push(self);
        }
        *self.series.lock().unwrap_or_else(|e| e.into_inner()) = series;
    }

    fn render(&self, out: &mut String) {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if series.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in series.iter() {
            out.push_str(self.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (key, value)) in labels.iter().enumerate() {
                    let value = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                    let _ = write!(out, "{}{key}=\"{value}\"", if i == 0 { "" } else { "," });
                }
                out.push('}');
            }
            match *value {
                v if v == f64::INFINITY => out.push_str(" +Inf\n"),
                v if v == f64::NEG_INFINITY => out.push_str(" -Inf\n"),
                v => {
                    let _ = writeln!(out, " {v}");
                }
            }
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static WIDGETS: Family = Family::gauge("test_widgets_bytes", "Widgets.");

    #[test]
    fn a_family_shows_only_its_latest_series_escaped() {
        WIDGETS.replace(vec![
            (vec![("container", "a".to_owned())], 1.0),
            (vec![("container", "b\"\\\n".to_owned()), ("uuid", "u".to_owned())], 2.5),
        ]);
        let mut text = String::new();
        WIDGETS.render(&mut text);
        assert_eq!(
            text,
            "# HELP test_widgets_bytes Widgets.\n# TYPE test_widgets_bytes gauge\n\
             test_widgets_bytes{container=\"a\"} 1\ntest_widgets_bytes{container=\"b\\\"\\\\\\n\",uuid=\"u\"} 2.5\n\n"
        );
        WIDGETS.replace(vec![(vec![("container", "b".to_owned())], 3.0)]);
        let mut text = String::new();
        WIDGETS.render(&mut text);
        assert!(
            !text.contains("container=\"a\"") && text.contains("test_widgets_bytes{container=\"b\"} 3\n"),
            "{text}"
        );
        WIDGETS.replace(Vec::new());
        let mut text = String::new();
        WIDGETS.render(&mut text);
        assert_eq!(text, "");
        assert_eq!(FAMILIES.lock().unwrap().iter().filter(|f| f.name == "test_widgets_bytes").count(), 1);
    }
}
