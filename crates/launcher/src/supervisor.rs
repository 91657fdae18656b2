//! Supervision of one service process: start it, wait for SERVING on its socket, watch its
//! health, restart it with backoff when it dies or stops answering, stop it on shutdown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ServiceName;
use common::config::LauncherConfig;
use common::process::{ProcessError, ProcessSpec, describe_exit, send_signal};
use common::proto::launcher::v1::{ServiceState, ServiceStatus};
use common::telemetry::RotatingFile;
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::restart::{RestartDecision, RestartPolicy};

/// How often a starting service is asked whether it is SERVING yet.
const STARTUP_POLL: Duration = Duration::from_millis(5);
/// How long one health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// One supervised service.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub service: ServiceName,
    pub process: ProcessSpec,
    pub socket: PathBuf,
}

/// What every supervisor publishes for `executor status`.
#[derive(Debug, Default)]
pub struct StatusBoard {
    services: Mutex<BTreeMap<ServiceName, (ServiceStatus, Option<Instant>)>>,
}

impl StatusBoard {
    fn update(&self, service: ServiceName, f: impl FnOnce(&mut ServiceStatus, &mut Option<Instant>)) {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let (status, started) = services
            .entry(service)
            .or_insert_with(|| (ServiceStatus { name: service.as_str().to_owned(), ..ServiceStatus::default() }, None));
        f(status, started);
    }

    fn set_state(&self, service: ServiceName, state: ServiceState) {
        self.update(service, |s, _| s.set_state(state));
        let up = if state == ServiceState::Serving { 1.0 } else { 0.0 };
        metrics::gauge!("executor_launcher_service_up", "service" => service.as_str()).set(up);
    }

    /// Forgets every service: a reload starts them afresh, perhaps fewer of them.
    pub fn clear(&self) {
        self.services.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Every service's status, uptimes computed now, in start order.
    pub fn snapshot(&self) -> Vec<ServiceStatus> {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = services
            .values()
            .map(|(status, started)| {
                let mut status = status.clone();
                status.uptime_seconds = started.map_or(0, |t| t.elapsed().as_secs());
                status
            })
            .collect();
        let order = |name: &str| ServiceName::SUPERVISED.iter().position(|s| s.as_str() == name);
        list.sort_by_key(|s| order(&s.name));
        list
    }
}

/// Where the services' output goes: the launcher's stdout/stderr and, if configured, the log
/// file (of which the launcher is the only writer).
#[derive(Debug, Clone)]
pub struct LogSink {
    pub file: Option<Arc<RotatingFile>>,
}

impl LogSink {
    /// Copies `reader` line by line to stdout (or stderr) and the log file until it closes.
    async fn forward<R: AsyncRead + Unpin>(self, reader: R, to_stderr: bool) {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::with_capacity(512);
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    // Losing a log line is better than stalling a service on a full pipe.
                    let _ = if to_stderr { stderr.write_all(&line).await } else { stdout.write_all(&line).await };
                    if let Some(file) = &self.file {
                        let _ = file.append(&line);
                    }
                }
            }
        }
    }
}

/// Why a service process ended on its own or was killed, or did not start: its `last_exit` in
/// `executor status` and, on the first start, the reason the node does not start.
#[derive(Debug, thiserror::Error)]
pub enum ExitReason {
    #[error(transparent)]
    Spawn(#[from] ProcessError),
    #[error("{}", describe_exit(*.0))]
    Exited(ExitStatus),
    #[error("wait failed: {0}")]
    Wait(#[source] std::io::Error),
    #[error("not SERVING on {} within launcher.ready_timeout ({timeout:?})", socket.display())]
    NotServing { socket: PathBuf, timeout: Duration },
    #[error("{failures} failed health checks in a row; killed")]
    Unhealthy { failures: u32 },
}

/// Shared by all supervisors.
#[derive(Debug, Clone)]
pub struct Supervision {
    pub config: LauncherConfig,
    pub board: Arc<StatusBoard>,
    pub logs: LogSink,
    /// Cancelled to stop every service.
    pub shutdown: CancellationToken,
    /// Cancelled by a supervisor that gave up (crash loop): the node must stop.
    pub failed: CancellationToken,
}

/// Supervises `spec` until shutdown. `ready` gets the outcome of the first start: Ok once the
/// service reports SERVING, or why it did not (then the service is not restarted).
pub async fn supervise(spec: ChildSpec, sup: Supervision, ready: oneshot::Sender<Result<(), ExitReason>>) {
    let service = spec.service;
    let name = service.as_str();
    let channel = common::grpc::unix_channel(&spec.socket);
    let mut policy = RestartPolicy::new(&sup.config);
    let mut ready = Some(ready);
    metrics::describe_gauge!("executor_launcher_service_up", "1 while the service reports SERVING to the launcher.");
    metrics::describe_counter!(
        "executor_launcher_restarts_total",
        "Restarts of the service after it died or failed health checks."
    );
    metrics::counter!("executor_launcher_restarts_total", "service" => name).absolute(0);
    sup.board.update(service, |s, _| s.socket = spec.socket.display().to_string());
    loop {
        sup.board.set_state(service, ServiceState::Starting);
        let started = Instant::now();
        let exit = match spec.process.spawn_supervised() {
            Ok(child) => run_child(&spec, &sup, child, &channel, &mut ready, started).await,
            Err(e) => Exit::Failed(e.into()),
        };
        sup.board.update(service, |s, started| {
            s.pid = 0;
            *started = None;
        });
        let why = match exit {
            Exit::Stopped => {
                sup.board.set_state(service, ServiceState::Stopped);
                return;
            }
            Exit::Failed(why) => why,
        };
        sup.board.update(service, |s, _| s.last_exit = why.to_string());
        if let Some(ready) = ready.take() {
            sup.board.set_state(service, ServiceState::Failed);
            let _ = ready.send(Err(why));
            return;
        }
        match policy.on_exit(Instant::now(), started.elapsed()) {
            RestartDecision::RestartAfter(delay) => {
                tracing::warn!(service = name, reason = %why, delay = ?delay, "service ended; restarting");
                sup.board.set_state(service, ServiceState::Backoff);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = sup.shutdown.cancelled() => {
                        sup.board.set_state(service, ServiceState::Stopped);
                        return;
                    }
                }
                metrics::counter!("executor_launcher_restarts_total", "service" => name).increment(1);
                sup.board.update(service, |s, _| s.restarts += 1);
            }
            RestartDecision::GiveUp { restarts } => {
                tracing::error!(
                    service = name,
                    reason = %why,
                    restarts,
                    window = ?sup.config.crash_loop_window,
                    "service is crash-looping; stopping the node"
                );
                sup.board.set_state(service, ServiceState::Failed);
                sup.failed.cancel();
                return;
            }
        }
    }
}

enum Exit {
    /// Stopped by us on shutdown.
    Stopped,
    /// Ended on its own, or was killed for failing health checks; the reason.
    Failed(ExitReason),
}

/// Runs one process of the service until it exits or shutdown stops it.
async fn run_child(
    spec: &ChildSpec,
    sup: &Supervision,
    mut child: Child,
    channel: &tonic::transport::Channel,
    ready: &mut Option<oneshot::Sender<Result<(), ExitReason>>>,
    started: Instant,
) -> Exit {
    let name = spec.service.as_str();
    let pid = child.id().unwrap_or(0);
    sup.board.update(spec.service, |s, t| {
        s.pid = pid;
        *t = Some(started);
    });
    tracing::info!(service = name, pid, "service started");
    let forwarders = [
        child.stdout.take().map(|out| tokio::spawn(sup.logs.clone().forward(out, false))),
        child.stderr.take().map(|err| tokio::spawn(sup.logs.clone().forward(err, true))),
    ];
    let mut serving = false;
    let mut failures = 0u32;
    let mut next_check = STARTUP_POLL;
    let exit = loop {
        tokio::select! {
            status = child.wait() => {
                break Exit::Failed(match status {
                    Ok(status) => ExitReason::Exited(status),
                    Err(e) => ExitReason::Wait(e),
                });
            }
            () = sup.shutdown.cancelled() => {
                sup.board.set_state(spec.service, ServiceState::Stopping);
                stop(name, &mut child, sup.config.shutdown_timeout).await;
                break Exit::Stopped;
            }
            () = tokio::time::sleep(next_check) => {
                let healthy = matches!(
                    common::grpc::check_health(channel.clone(), "", HEALTH_TIMEOUT).await,
                    Ok(ServingStatus::Serving)
                );
                if healthy {
                    failures = 0;
                    if !serving {
                        serving = true;
                        next_check = sup.config.health_check_interval;
                        sup.board.set_state(spec.service, ServiceState::Serving);
                        tracing::info!(service = name, pid, after = ?started.elapsed(), "service SERVING");
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(Ok(()));
                        }
                    }
                } else if !serving {
                    if started.elapsed() > sup.config.ready_timeout {
                        kill(&mut child).await;
                        break Exit::Failed(ExitReason::NotServing {
                            socket: spec.socket.clone(),
                            timeout: sup.config.ready_timeout,
                        });
                    }
                } else {
                    failures += 1;
                    sup.board.set_state(spec.service, ServiceState::Unhealthy);
                    tracing::warn!(service = name, pid, failures, "health check failed");
                    if failures >= sup.config.unhealthy_threshold {
                        kill(&mut child).await;
                        break Exit::Failed(ExitReason::Unhealthy { failures });
                    }
                }
            }
        }
    };
    // The pipes close when the process is gone; drain what it printed last.
    for task in forwarders.into_iter().flatten() {
        let _ = task.await;
    }
    exit
}

/// SIGTERM, then SIGKILL to the whole process group once `timeout` passes.
async fn stop(name: &str, child: &mut Child, timeout: Duration) {
    let Some(pid) = child.id() else { return };
    if let Err(e) = send_signal(pid, Signal::SIGTERM) {
        tracing::warn!(service = name, pid, error = %e, "SIGTERM failed");
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => tracing::info!(service = name, pid, exit = %describe_exit(status), "service stopped"),
        _ => {
            tracing::warn!(service = name, pid, timeout = ?timeout, "service ignored SIGTERM; killing it");
            kill(child).await;
        }
    }
}

/// SIGKILL to the process group (the service and anything it started), then reap.
async fn kill(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    /// `last_exit` in `executor status` and the start-up failure, as before the reasons were typed.
    #[test]
    fn exit_reasons_print_as_before() {
        let not_serving = ExitReason::NotServing {
            socket: PathBuf::from("/run/executor/gpu-monitor.sock"),
            timeout: Duration::from_secs(30),
        };
        for (reason, text) in [
            (ExitReason::Exited(ExitStatus::from_raw(9)), "signal 9 (SIGKILL)"),
            (not_serving, "not SERVING on /run/executor/gpu-monitor.sock within launcher.ready_timeout (30s)"),
            (ExitReason::Unhealthy { failures: 3 }, "3 failed health checks in a row; killed"),
            (ExitReason::Wait(std::io::Error::other("gone")), "wait failed: gone"),
        ] {
            assert_eq!(reason.to_string(), text);
        }
    }
}
