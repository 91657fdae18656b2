//! The cut-off of an exec: when the one who started it goes away (an Attach client that broke
//! or hung up, a unary Exec past its deadline or cancelled) before it ended, its processes
//! die. The engine has no call for that (killing an exec's process is left to the caller), so
//! its host PID comes from `inspect_exec` and the tree under it is killed from the host
//! ([`crate::proctree`]).

use std::time::Duration;

use bollard::Docker;

use crate::proctree::{self, HostProcess};

/// An exec that is killed unless it is let go: [`Self::cut_off`] kills it at once, and
/// dropping it armed (the caller's future was dropped half-way) kills it from a task of its
/// own.
#[derive(Debug)]
pub(super) struct ExecProcesses {
    docker: Docker,
    exec_id: String,
    /// Host PID of the container's init: only processes in its PID namespace are killed.
    container_pid: u32,
    armed: bool,
}

impl ExecProcesses {
    /// The exec `exec_id` of the container whose init is `container_pid`, armed.
    pub(super) fn new(docker: Docker, exec_id: String, container_pid: u32) -> Self {
        Self { docker, exec_id, container_pid, armed: true }
    }

    /// The exec ended on its own (or is being watched to its end): nothing to kill.
    pub(super) fn release(&mut self) {
        self.armed = false;
    }

    /// Kills the exec's processes now; returns how many were signalled.
    pub(super) async fn cut_off(&mut self) -> usize {
        self.armed = false;
        kill(&self.docker, &self.exec_id, self.container_pid).await
    }
}

impl Drop for ExecProcesses {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (docker, exec_id, container_pid) = (self.docker.clone(), self.exec_id.clone(), self.container_pid);
            runtime.spawn(async move { kill(&docker, &exec_id, container_pid).await });
        }
    }
}

/// How long a cut-off waits for an exec the engine has not started yet (the engine answers a
/// start before it starts the process).
const START_WAIT: Duration = Duration::from_secs(2);

/// Kills the processes of exec `exec_id` if it still runs, logging what it did.
async fn kill(docker: &Docker, exec_id: &str, container_pid: u32) -> usize {
    let deadline = tokio::time::Instant::now() + START_WAIT;
    let root = loop {
        let inspect = match docker.inspect_exec(exec_id).await {
            Ok(inspect) => inspect,
            // The exec, or its container, is gone: so are its processes.
            Err(e) => {
                tracing::debug!(exec_id, error = %e, "no exec to cut off");
                return 0;
            }
        };
        let pid = inspect.pid.and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0);
        match (inspect.running, pid) {
            (Some(true), Some(pid)) => break HostProcess::of(pid),
            // Ended: nothing to kill.
            _ if inspect.exit_code.is_some() => return 0,
            _ if tokio::time::Instant::now() >= deadline => return 0,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let Some(root) = root else { return 0 };
    let killed = tokio::task::spawn_blocking(move || proctree::kill_tree(root, container_pid)).await.unwrap_or(0);
    tracing::info!(exec_id, pid = root.pid, killed, "exec cut off: its processes were killed");
    killed
}
