//! Restarting the Docker engine under the node, as an operator upgrading it would: `make
//! faults` and the `engine-tests` step of `make test`, which runs alone so that no other test
//! sees the engine go.

use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{ProcessSpec, send_signal};
use nix::sys::signal::Signal;

/// Whether `program args` exits 0 (false when it cannot run at all).
pub async fn succeeds(program: &str, args: &[&str]) -> bool {
    let out = ProcessSpec::new(program).args(args.iter().copied()).output(Duration::from_secs(120), 1 << 16).await;
    out.is_ok_and(|o| o.status.success())
}

async fn run_checked(program: &str, args: &[&str]) -> Result<(), String> {
    let out = ProcessSpec::new(program)
        .args(args.iter().copied())
        .output(Duration::from_secs(120), 1 << 16)
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("{program}: {}", String::from_utf8_lossy(&out.stderr))),
    }
}

/// Restarts the Docker engine the way `scripts/ensure-docker.sh` starts it (see
/// [`stop_docker`]). Returns how, and how long the engine did not answer.
pub async fn restart_docker(root: &Path) -> Result<(&'static str, Duration), String> {
    let started = Instant::now();
    let how = stop_docker().await?;
    start_docker(root).await?;
    Ok((how, started.elapsed()))
}

/// Stops the Docker engine as a host going down would: through systemd when it runs, else the
/// init script when that one manages the engine, else SIGTERM to the pid in
/// /var/run/docker.pid. Returns once the engine is gone, saying how it was stopped.
pub async fn stop_docker() -> Result<&'static str, String> {
    if succeeds("systemctl", &["is-system-running"]).await {
        run_checked("systemctl", &["stop", "docker"]).await?;
        return Ok("systemctl stop docker");
    }
    if succeeds("service", &["docker", "status"]).await {
        run_checked("service", &["docker", "stop"]).await?;
        return Ok("service docker stop");
    }
    let pid: i32 = std::fs::read_to_string("/var/run/docker.pid")
        .map_err(|e| format!("no systemd, no init script, and no /var/run/docker.pid ({e})"))?
        .trim()
        .parse()
        .map_err(|e| format!("/var/run/docker.pid: {e}"))?;
    send_signal(pid as u32, Signal::SIGTERM).map_err(|e| format!("SIGTERM to dockerd {pid}: {e}"))?;
    // dockerd stops its containers first (up to their stop timeout), then exits.
    let deadline = Instant::now() + Duration::from_secs(90);
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
        if Instant::now() > deadline {
            return Err(format!("dockerd {pid} still running 90 s after SIGTERM"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok("SIGTERM to dockerd")
}

/// Starts the Docker engine with `scripts/ensure-docker.sh` (systemd, the init script, or
/// dockerd on its own, as that script finds the host) and waits until it answers.
pub async fn start_docker(root: &Path) -> Result<(), String> {
    run_checked(&root.join("scripts/ensure-docker.sh").display().to_string(), &[]).await
}

/// The workspace root (this crate is `tests/`).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("/"))
}
