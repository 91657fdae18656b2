//! The host every service binary runs in: command line, config, logging, metrics port, the
//! internal gRPC socket with health and reflection, and shutdown on SIGTERM/SIGINT.
//!
//! A service implements [`Service`]; its `main.rs` is one call to [`main`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::ServiceName;
use crate::check::Check;
use crate::config::{CONFIG_ERROR_EXIT_CODE, Config, LoadedConfig};

/// Errors a service returns from its own work.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The command line every service binary takes.
#[derive(Debug, clap::Parser)]
pub struct ServiceArgs {
    /// The executor config file (TOML).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    /// Log filter, overriding `[logging] level`: `debug`, or `info,container_runtime=trace`.
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Started by the launcher: log to stdout only (the launcher writes the log file).
    #[arg(long, hide = true)]
    pub supervised: bool,
    #[command(subcommand)]
    pub command: Option<ServiceCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Check what this service needs from the machine; prints one JSON object per line.
    Check,
}

impl ServiceArgs {
    /// Parses the process arguments with `service`'s name and the workspace version.
    pub fn parse_for(service: ServiceName) -> Self {
        let command = Self::command().name(service.as_str()).version(crate::VERSION);
        Self::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit())
    }
}

/// What a running service gets from its host.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    pub loaded: LoadedConfig,
    /// Set the status of the service's own gRPC services here.
    pub health: HealthReporter,
    /// Cancelled on SIGTERM/SIGINT; everything the service spawned must end after it.
    pub shutdown: CancellationToken,
}

impl ServiceContext {
    pub fn config(&self) -> &Config {
        &self.loaded.config
    }
}

/// A service binary's own part.
pub trait Service: Send + 'static {
    const NAME: ServiceName;

    /// Full names of the gRPC services in [`Service::add_routes`], advertised by reflection.
    const GRPC_SERVICES: &'static [&'static str] = &[];

    /// Checks of the machine for `executor validate`.
    fn check(loaded: &LoadedConfig) -> impl Future<Output = Vec<Check>> + Send {
        let _ = loaded;
        std::future::ready(Vec::new())
    }

    /// Builds the service from its config before anything is served; errors end the process.
    fn build(ctx: &ServiceContext) -> impl Future<Output = Result<Self, BoxError>> + Send
    where
        Self: Sized;

    /// Adds the service's gRPC services to the internal socket's routes (health and
    /// reflection are already there).
    fn add_routes(&self, routes: Routes) -> Routes {
        routes
    }

    /// The service's own work, running until `ctx.shutdown` is cancelled. The host marks the
    /// process SERVING just before calling it.
    fn run(self, ctx: ServiceContext) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// The whole `main` of a service binary.
pub fn main<S: Service>() -> ExitCode {
    let args = ServiceArgs::parse_for(S::NAME);
    let loaded = match Config::load(&args.config) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(CONFIG_ERROR_EXIT_CODE as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().min(4)))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{}: cannot start the async runtime: {e}", S::NAME);
            return ExitCode::FAILURE;
        }
    };
    if let Some(ServiceCommand::Check) = args.command {
        for check in runtime.block_on(S::check(&loaded)) {
            match serde_json::to_string(&check) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("{}: {e}", S::NAME),
            }
        }
        return ExitCode::SUCCESS;
    }
    if let Err(e) =
        crate::telemetry::init(S::NAME.as_str(), &loaded.config.logging, args.log_level.as_deref(), !args.supervised)
    {
        eprintln!("{}: {e}", S::NAME);
        return ExitCode::from(CONFIG_ERROR_EXIT_CODE as u8);
    }
    match runtime.block_on(serve::<S>(loaded)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{} failed", S::NAME);
            ExitCode::FAILURE
        }
    }
}

/// Runs `S` until SIGTERM/SIGINT: metrics port, internal socket, then the service itself.
pub async fn serve<S: Service>(loaded: LoadedConfig) -> Result<(), BoxError> {
    let config = &loaded.config;
    let metrics = crate::metrics::install(S::NAME.as_str())?;
    let metrics_addr = SocketAddr::new(config.metrics.host, config.metrics_port(S::NAME));
    let metrics_listener = crate::metrics::bind(metrics_addr).await?;
    let socket = S::NAME.socket(&config.runtime_dir);
    let listener = crate::grpc::bind_unix(&socket).await?;
    let (health, routes) = crate::grpc::base_routes(S::GRPC_SERVICES)?;
    let shutdown = CancellationToken::new();
    let ctx = ServiceContext { loaded: loaded.clone(), health: health.clone(), shutdown: shutdown.clone() };
    let service = S::build(&ctx).await?;
    let routes = service.add_routes(routes);
    let signals = tokio::spawn(wait_for_signal(shutdown.clone()));
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.clone().cancelled_owned()),
    );
    let metrics_task = tokio::spawn(crate::metrics::serve(metrics_listener, metrics, shutdown.clone()));
    health.set_service_status("", ServingStatus::Serving).await;
    tracing::info!(socket = %socket.display(), metrics = %metrics_addr, version = crate::VERSION, "{} serving", S::NAME);
    let result = service.run(ctx).await;
    // The service ended on its own (or failed): stop everything else too.
    shutdown.cancel();
    health.set_service_status("", ServingStatus::NotServing).await;
    let grpc = grpc.await;
    let _ = metrics_task.await;
    signals.abort();
    let _ = std::fs::remove_file(&socket);
    result?;
    grpc??;
    tracing::info!("{} stopped", S::NAME);
    Ok(())
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
pub async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        () = shutdown.cancelled() => return,
    }
    shutdown.cancel();
}
