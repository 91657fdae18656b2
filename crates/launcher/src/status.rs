//! The launcher's control socket (`<runtime_dir>/launcher.sock`: Launcher.Status, health,
//! reflection) and `executor status`, its client.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ServiceName;
use common::config::{CONFIG_ERROR_EXIT_CODE, Config, LoadedConfig};
use common::proto::launcher::v1::launcher_client::LauncherClient;
use common::proto::launcher::v1::launcher_server::{Launcher, LauncherServer};
use common::proto::launcher::v1::{ServiceState, StatusRequest, StatusResponse};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::supervisor::StatusBoard;

/// Exit code of `executor status` when no launcher answers.
pub const NOT_RUNNING_EXIT_CODE: u8 = 3;

const LAUNCHER_SERVICE: &str = "executor.launcher.v1.Launcher";

#[derive(Debug)]
struct LauncherService {
    board: Arc<StatusBoard>,
    started: Instant,
}

#[tonic::async_trait]
impl Launcher for LauncherService {
    async fn status(
        &self,
        _request: tonic::Request<StatusRequest>,
    ) -> Result<tonic::Response<StatusResponse>, tonic::Status> {
        Ok(tonic::Response::new(StatusResponse {
            version: common::VERSION.to_owned(),
            launcher_pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs(),
            services: self.board.snapshot(),
        }))
    }
}

/// The running control socket.
#[derive(Debug)]
pub struct Control {
    health: HealthReporter,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    socket: std::path::PathBuf,
}

impl Control {
    /// The launcher reports SERVING once every service does.
    pub async fn set_serving(&self) {
        self.health.set_service_status("", ServingStatus::Serving).await;
    }

    pub async fn set_not_serving(&self) {
        self.health.set_service_status("", ServingStatus::NotServing).await;
    }

    /// Waits for the server (stopped by the shutdown token) and removes the socket.
    pub async fn stop(self) {
        let _ = self.task.await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Binds the control socket and serves it until `shutdown`.
pub async fn serve_control(
    loaded: &LoadedConfig,
    board: Arc<StatusBoard>,
    shutdown: CancellationToken,
) -> anyhow::Result<Control> {
    let socket = ServiceName::Launcher.socket(&loaded.config.runtime_dir);
    let listener = common::grpc::bind_unix(&socket).await?;
    let (health, routes) = common::grpc::base_routes(&[LAUNCHER_SERVICE])?;
    health.set_service_status("", ServingStatus::NotServing).await;
    let routes = routes.add_service(LauncherServer::new(LauncherService { board, started: Instant::now() }));
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.cancelled_owned()),
    );
    Ok(Control { health, task, socket })
}

/// Why no launcher answered on the control socket.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no answer on {}: {}", socket.display(), status.message())]
    Status {
        socket: PathBuf,
        #[source]
        status: tonic::Status,
    },
    #[error("no answer on {} within {timeout:?}", socket.display())]
    Timeout { socket: PathBuf, timeout: Duration },
}

/// Asks the launcher for its status over the control socket.
pub async fn fetch(runtime_dir: &Path, timeout: Duration) -> Result<StatusResponse, FetchError> {
    let socket = ServiceName::Launcher.socket(runtime_dir);
    let mut client = LauncherClient::new(common::grpc::unix_channel(&socket));
    match tokio::time::timeout(timeout, client.status(StatusRequest {})).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(FetchError::Status { socket, status }),
        Err(_) => Err(FetchError::Timeout { socket, timeout }),
    }
}

/// `executor status`: a table of the services; exit 0 when all are SERVING, 1 when not, 3
/// when the launcher does not answer.
pub fn status_command(config_path: &Path) -> ExitCode {
    let loaded = match Config::load(config_path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(CONFIG_ERROR_EXIT_CODE as u8);
        }
    };
    let fetched = match crate::block_on(fetch(&loaded.config.runtime_dir, Duration::from_secs(5))) {
        Ok(fetched) => fetched,
        Err(code) => return code,
    };
    match fetched {
        Ok(status) => {
            print!("{}", render(&status));
            let all_serving =
                !status.services.is_empty() && status.services.iter().all(|s| s.state() == ServiceState::Serving);
            if all_serving { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("executor is not running ({e})");
            ExitCode::from(NOT_RUNNING_EXIT_CODE)
        }
    }
}

/// The `executor status` table.
pub fn render(status: &StatusResponse) -> String {
    let mut out = format!(
        "executor {} (pid {}), up {}\n{:<18} {:<10} {:>7} {:>8} {:>9}  {}\n",
        status.version,
        status.launcher_pid,
        human(status.uptime_seconds),
        "SERVICE",
        "STATE",
        "PID",
        "RESTARTS",
        "UPTIME",
        "LAST EXIT"
    );
    for s in &status.services {
        let state = s.state().as_str_name().trim_start_matches("SERVICE_STATE_").to_lowercase();
        let pid = if s.pid == 0 { "-".to_owned() } else { s.pid.to_string() };
        let last = if s.last_exit.is_empty() { "-" } else { &s.last_exit };
        out.push_str(&format!(
            "{:<18} {:<10} {:>7} {:>8} {:>9}  {}\n",
            s.name,
            state,
            pid,
            s.restarts,
            human(s.uptime_seconds),
            last
        ));
    }
    out
}

fn human(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::proto::launcher::v1::ServiceStatus;

    #[test]
    fn fetch_errors_name_the_socket() {
        let socket = PathBuf::from("/run/executor/launcher.sock");
        let timeout = FetchError::Timeout { socket: socket.clone(), timeout: Duration::from_secs(5) };
        assert_eq!(timeout.to_string(), "no answer on /run/executor/launcher.sock within 5s");
        let status = FetchError::Status { socket, status: tonic::Status::unavailable("connection refused") };
        assert_eq!(status.to_string(), "no answer on /run/executor/launcher.sock: connection refused");
    }

    #[test]
    fn renders_the_status_table() {
        let mut crashed = ServiceStatus {
            name: "gpu-monitor".into(),
            pid: 0,
            restarts: 2,
            last_exit: "signal 9 (SIGKILL)".into(),
            ..Default::default()
        };
        crashed.set_state(ServiceState::Backoff);
        let mut ok =
            ServiceStatus { name: "container-runtime".into(), pid: 41, uptime_seconds: 3725, ..Default::default() };
        ok.set_state(ServiceState::Serving);
        let status = StatusResponse {
            version: "0.1.0".into(),
            launcher_pid: 40,
            uptime_seconds: 75,
            services: vec![ok, crashed],
        };
        assert_eq!(
            render(&status),
            "executor 0.1.0 (pid 40), up 1m15s
SERVICE            STATE          PID RESTARTS    UPTIME  LAST EXIT
container-runtime  serving         41        0      1h2m  -
gpu-monitor        backoff          -        2        0s  signal 9 (SIGKILL)
"
        );
    }
}
