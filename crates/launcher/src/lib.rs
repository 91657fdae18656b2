//! The `executor` binary: starts and supervises the node's services (`--server`), checks a
//! machine before it runs them (`validate`), reports on a running node (`status`), and calls
//! its public API with the miner's hotkey (`ctl`).
//!
//! The launcher owns no service logic and links neither Docker nor NVML: the services check
//! their own dependencies in their `check` subcommands.

pub mod ctl;
pub mod restart;
pub mod status;
pub mod supervisor;
pub mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use common::ServiceName;
use common::config::{CONFIG_ERROR_EXIT_CODE, Config, ConfigError, LoadedConfig};
use common::identity::ExecutorIdentity;
use common::metrics::MetricsError;
use common::process::ProcessSpec;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::supervisor::{ChildSpec, LogSink, StatusBoard, Supervision};

/// Where the service binaries are: beside the running `executor`.
pub fn binary_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the executor binary")?;
    Ok(exe.parent().context("executor binary has no directory")?.to_owned())
}

/// The service binaries, or which one is missing.
pub fn service_binaries(dir: &Path, services: &[ServiceName]) -> anyhow::Result<Vec<(ServiceName, PathBuf)>> {
    services
        .iter()
        .map(|s| {
            let path = dir.join(s.as_str());
            if path.is_file() {
                Ok((*s, path))
            } else {
                anyhow::bail!(
                    "service binary `{}` not found at {} (it must be installed beside `executor`)",
                    s,
                    path.display()
                )
            }
        })
        .collect()
}

/// Runs `future` on a single-threaded runtime, for the short-lived commands.
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, ExitCode> {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => Ok(runtime.block_on(future)),
        Err(e) => {
            eprintln!("executor: cannot start the async runtime: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// `executor --server`: returns when the node has stopped. SIGHUP re-reads the config file: a
/// valid one restarts the services with it, an invalid one is reported and changes nothing.
pub fn run_server(config_path: &Path, log_level: Option<&str>) -> ExitCode {
    let loaded = match Config::load(config_path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(CONFIG_ERROR_EXIT_CODE as u8);
        }
    };
    if let Err(e) = loaded.require_miner_hotkey().and_then(|_| loaded.prepare_dirs()) {
        eprintln!("{e}");
        return ExitCode::from(CONFIG_ERROR_EXIT_CODE as u8);
    }
    let file = match common::telemetry::init("executor", &loaded.config.logging, log_level, true) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("executor: {e}");
            return ExitCode::from(CONFIG_ERROR_EXIT_CODE as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("executor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(loaded, log_level, LogSink { file })) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("executor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(loaded: LoadedConfig, log_level: Option<&str>, logs: LogSink) -> anyhow::Result<()> {
    let started = Instant::now();
    let bin_dir = binary_dir()?;
    service_binaries(&bin_dir, &loaded.config.services())?;
    for issue in loaded.not_yet_enforced() {
        tracing::warn!("config: {issue}");
    }
    let identity = ExecutorIdentity::load_or_create(&loaded.config.data_dir)?;
    tracing::info!(executor_id = %identity.executor_id(), config = %loaded.path.display(), version = common::VERSION, "executor starting");

    let metrics = common::metrics::install("executor")?;
    let metrics_listener = common::metrics::bind(launcher_metrics_addr(&loaded.config)).await?;
    let board = Arc::new(StatusBoard::default());
    let shutdown = CancellationToken::new();
    let failed = CancellationToken::new();
    let control = status::serve_control(&loaded, board.clone(), shutdown.clone()).await?;
    let mut metrics_stop = shutdown.child_token();
    let mut metrics_task =
        tokio::spawn(common::metrics::serve(metrics_listener, metrics.clone(), metrics_stop.clone()));
    let signals = tokio::spawn(common::service::wait_for_signal(shutdown.clone()));
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hup) => Some(hup),
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP; config reload is unavailable");
            None
        }
    };

    let mut current = loaded;
    let mut reloads = 0u32;
    let outcome = loop {
        // One generation: the services started with `current`, until shutdown, a crash loop
        // or a valid reload.
        let generation = shutdown.child_token();
        let supervision = Supervision {
            config: current.config.launcher.clone(),
            board: board.clone(),
            logs: logs.clone(),
            shutdown: generation.clone(),
            failed: failed.clone(),
        };
        let (tasks, startup) = start_services(&current, &bin_dir, log_level, &supervision).await;
        let next = match startup {
            Err(e) if reloads == 0 => Next::Stop(Err(e)),
            Err(e) => Next::Stop(Err(e.context(format!("after reloading {}", current.path.display())))),
            Ok(()) if shutdown.is_cancelled() => Next::Stop(Ok(())),
            Ok(()) => {
                tracing::info!(services = tasks.len(), elapsed = ?started.elapsed(), reloads, "all services SERVING");
                control.set_serving().await;
                wait_for_next(&current, &shutdown, &failed, &mut hangups).await
            }
        };
        control.set_not_serving().await;
        generation.cancel();
        for task in tasks {
            let _ = task.await;
        }
        match next {
            Next::Stop(outcome) => break outcome,
            Next::Reload(new, listener) => {
                if let Some(listener) = listener {
                    metrics_stop.cancel();
                    let _ = metrics_task.await;
                    metrics_stop = shutdown.child_token();
                    metrics_task =
                        tokio::spawn(common::metrics::serve(listener, metrics.clone(), metrics_stop.clone()));
                }
                current = *new;
                reloads += 1;
                board.clear();
                tracing::info!(config = %current.path.display(), "SIGHUP: config reloaded; services restarted with it");
            }
        }
    };
    tracing::info!("stopping services");
    shutdown.cancel();
    let _ = metrics_task.await;
    signals.abort();
    control.stop().await;
    tracing::info!(elapsed = ?started.elapsed(), "executor stopped");
    outcome
}

fn launcher_metrics_addr(config: &Config) -> SocketAddr {
    SocketAddr::new(config.metrics.host, config.metrics.launcher_port.get())
}

/// What ends a generation of services.
enum Next {
    /// Stop the node: Ok on SIGTERM/SIGINT, the reason otherwise.
    Stop(anyhow::Result<()>),
    /// Restart the services with this config (and serve the launcher's metrics on this new
    /// listener when its address changed).
    Reload(Box<LoadedConfig>, Option<tokio::net::TcpListener>),
}

/// Starts every service of `loaded` in order, each once the previous one is SERVING.
async fn start_services(
    loaded: &LoadedConfig,
    bin_dir: &Path,
    log_level: Option<&str>,
    supervision: &Supervision,
) -> (Vec<tokio::task::JoinHandle<()>>, anyhow::Result<()>) {
    let config = &loaded.config;
    let mut tasks = Vec::new();
    let binaries = match service_binaries(bin_dir, &config.services()) {
        Ok(binaries) => binaries,
        Err(e) => return (tasks, Err(e)),
    };
    for (service, binary) in binaries {
        let mut process = ProcessSpec::new(&binary).arg("--config").arg(&loaded.path).arg("--supervised");
        if let Some(level) = log_level {
            process = process.arg("--log-level").arg(level);
        }
        let spec = ChildSpec { service, process, socket: service.socket(&config.runtime_dir) };
        let (ready_tx, ready_rx) = oneshot::channel();
        tasks.push(tokio::spawn(supervisor::supervise(spec, supervision.clone(), ready_tx)));
        tokio::select! {
            ready = ready_rx => match ready {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return (tasks, Err(anyhow::anyhow!("{service} did not start: {why}"))),
                Err(_) => return (tasks, Err(anyhow::anyhow!("{service} supervisor ended during start-up"))),
            },
            () = supervision.shutdown.cancelled() => break,
        }
    }
    (tasks, Ok(()))
}

/// Waits while the services run: for shutdown, a crash loop, or a SIGHUP with a valid config.
/// A SIGHUP with an invalid config is logged, key by key, and the services keep running.
async fn wait_for_next(
    current: &LoadedConfig,
    shutdown: &CancellationToken,
    failed: &CancellationToken,
    hangups: &mut Option<tokio::signal::unix::Signal>,
) -> Next {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Next::Stop(Ok(())),
            () = failed.cancelled() => {
                return Next::Stop(Err(anyhow::anyhow!(
                    "a service is crash-looping (see the log above); the node stopped"
                )));
            }
            () = hangup(hangups) => {
                tracing::info!(config = %current.path.display(), "SIGHUP: reloading the config");
                match reload(current).await {
                    Ok(next) => return next,
                    Err(errors) => {
                        for line in errors.to_string().lines() {
                            tracing::error!("SIGHUP: {line}");
                        }
                        tracing::error!("SIGHUP: the config was not reloaded; the services keep running with the previous one");
                    }
                }
            }
        }
    }
}

/// Waits for the next SIGHUP (forever when it cannot be handled).
async fn hangup(hangups: &mut Option<tokio::signal::unix::Signal>) {
    if let Some(hup) = hangups
        && hup.recv().await.is_some()
    {
        return;
    }
    std::future::pending::<()>().await;
}

/// Why a SIGHUP did not reload the config; logged line by line.
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "config error: {origin}: key `runtime_dir`: cannot change while the executor runs (its control socket is there); restart the executor"
    )]
    RuntimeDir { origin: String },
    /// A service binary is missing, or the executor's own directory is unknown: the message
    /// `--server` prints at start (its outermost context).
    #[error("{0}")]
    Binaries(anyhow::Error),
    #[error("config error: {origin}: key `metrics.launcher_port`: {source}")]
    MetricsPort { origin: String, source: MetricsError },
}

/// Re-reads and checks the config file the node was started with: everything `--server`
/// checks at start, plus what cannot change without a full restart.
async fn reload(current: &LoadedConfig) -> Result<Next, ReloadError> {
    let new = Config::load(&current.path)?;
    new.require_miner_hotkey()?;
    if new.config.runtime_dir != current.config.runtime_dir {
        return Err(ReloadError::RuntimeDir { origin: new.origin("runtime_dir") });
    }
    new.prepare_dirs()?;
    service_binaries(&binary_dir().map_err(ReloadError::Binaries)?, &new.config.services())
        .map_err(ReloadError::Binaries)?;
    for issue in new.not_yet_enforced() {
        tracing::warn!("config: {issue}");
    }
    if serde_json::to_value(&new.config.logging).ok() != serde_json::to_value(&current.config.logging).ok() {
        tracing::warn!(
            "SIGHUP: [logging] changed: the services use the new settings; the launcher's own log keeps the old ones until it restarts"
        );
    }
    let (old_addr, new_addr) = (launcher_metrics_addr(&current.config), launcher_metrics_addr(&new.config));
    let listener = if old_addr == new_addr {
        None
    } else {
        let listener = common::metrics::bind(new_addr)
            .await
            .map_err(|source| ReloadError::MetricsPort { origin: new.origin("metrics.launcher_port"), source })?;
        Some(listener)
    };
    Ok(Next::Reload(Box::new(new), listener))
}
