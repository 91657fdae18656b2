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
use common::config::{CONFIG_ERROR_EXIT_CODE, Config, LoadedConfig};
use common::identity::ExecutorIdentity;
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

/// `executor --server`: returns when the node has stopped.
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
    let config = &loaded.config;
    let started = Instant::now();
    let services = config.services();
    let binaries = service_binaries(&binary_dir()?, &services)?;
    for issue in loaded.not_yet_enforced() {
        tracing::warn!("config: {issue}");
    }
    let identity = ExecutorIdentity::load_or_create(&config.data_dir)?;
    tracing::info!(executor_id = %identity.executor_id(), config = %loaded.path.display(), version = common::VERSION, "executor starting");

    let metrics = common::metrics::install("executor")?;
    let metrics_listener =
        common::metrics::bind(SocketAddr::new(config.metrics.host, config.metrics.launcher_port)).await?;
    let board = Arc::new(StatusBoard::default());
    let shutdown = CancellationToken::new();
    let failed = CancellationToken::new();
    let control = status::serve_control(&loaded, board.clone(), shutdown.clone()).await?;
    let metrics_task = tokio::spawn(common::metrics::serve(metrics_listener, metrics, shutdown.clone()));
    let signals = tokio::spawn(common::service::wait_for_signal(shutdown.clone()));
    let hangups = tokio::spawn(log_hangups());

    let supervision = Supervision {
        config: config.launcher.clone(),
        board: board.clone(),
        logs,
        shutdown: shutdown.clone(),
        failed: failed.clone(),
    };
    let mut tasks = Vec::new();
    let mut startup: anyhow::Result<()> = Ok(());
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
                Ok(Err(why)) => {
                    startup = Err(anyhow::anyhow!("{service} did not start: {why}"));
                    break;
                }
                Err(_) => {
                    startup = Err(anyhow::anyhow!("{service} supervisor ended during start-up"));
                    break;
                }
            },
            () = shutdown.cancelled() => break,
        }
    }
    if startup.is_ok() && !shutdown.is_cancelled() {
        tracing::info!(services = tasks.len(), elapsed = ?started.elapsed(), "all services SERVING");
        control.set_serving().await;
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = failed.cancelled() => {
                startup = Err(anyhow::anyhow!("a service is crash-looping (see the log above); the node stopped"));
            }
        }
    }
    tracing::info!("stopping services");
    shutdown.cancel();
    control.set_not_serving().await;
    for task in tasks {
        let _ = task.await;
    }
    let _ = metrics_task.await;
    signals.abort();
    hangups.abort();
    control.stop().await;
    tracing::info!(elapsed = ?started.elapsed(), "executor stopped");
    startup
}

/// SIGHUP would end the process by default; this build does not reload its config, so it says
/// so instead of dying or pretending.
async fn log_hangups() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        tracing::warn!("SIGHUP: this build does not reload its config; restart the executor to apply changes");
    }
}
