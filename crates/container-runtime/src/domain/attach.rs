//! Attach, its start: a command, or a login shell, inside a running container of ours, its
//! input and output streamed both ways for as long as it runs ([`super::session`] carries a
//! session to its end). [`Runtime::attach`] checks the request (each refusal naming its
//! field), finds the login shell from the host, creates and starts the exec and sizes its
//! terminal before anything is sent. Each session runs in a task of its own, tracked by the
//! runtime ([`Sessions`]): the service's shutdown ends them all, their processes killed, and
//! waits for them.

use std::time::Duration;

use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ContainerInspectResponse;
use common::proto::runtime::v1 as pb;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cutoff::ExecProcesses;
use super::session::{Attachment, ExecState, poll_exec, resize};
use super::{Runtime, RuntimeError};
use crate::engine::EngineError;
use crate::rootfs::{self, RootError};
use crate::spec::SpecError;

/// The most arguments of `start.command`.
const MAX_ARGS: usize = 1024;
/// The widest and tallest terminal, in characters.
const MAX_TERMINAL_SIDE: u32 = 1000;
/// The login shells looked for, in order, each started with `-l`.
const SHELLS: [&str; 2] = ["/bin/bash", "/bin/sh"];
/// How long the engine may take to say an exec started.
const ENGINE_WAIT: Duration = Duration::from_secs(5);

/// The open sessions (Attach's, and the forwards of `super::forward`): each in a task of its
/// own, tracked, so that the service's shutdown can end them all (their processes killed,
/// their connections closed, their clients told) and wait for them.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    tasks: TaskTracker,
    closing: CancellationToken,
}

impl Sessions {
    /// Cancelled when the service shuts down: a session watches it and ends.
    pub(super) fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }
}

pub(super) fn invalid(field: impl Into<String>, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Invalid(SpecError { field: field.into(), message: message.into() })
}

/// The exec's environment: `start.env` checked (`common::exec_env`), and TERM=xterm for a TTY
/// that names none.
fn environment(env: &[String], tty: bool) -> Result<Vec<String>, RuntimeError> {
    use common::exec_env::{EnvProblem as P, MAX_ENTRIES, MAX_ENTRY_BYTES};
    if let Err(problem) = common::exec_env::check(env, None) {
        let entry = |index: usize, message: String| invalid(format!("start.env[{index}]"), message);
        return Err(match problem {
            P::TooMany(n) => invalid("start.env", format!("{n} entries, at most {MAX_ENTRIES}")),
            P::NotKeyValue { index } => entry(index, "not KEY=VALUE".into()),
            P::BadKey { index } => entry(index, "the key is not a variable name ([A-Za-z_][A-Za-z0-9_]*)".into()),
            // No prefix is forbidden here: executor-api refuses NVIDIA_ keys for its callers.
            P::Forbidden { index, .. } => entry(index, "a forbidden key".into()),
            P::Nul { index, .. } => entry(index, "contains NUL".into()),
            P::TooLong { index, .. } => entry(index, format!("longer than {MAX_ENTRY_BYTES} bytes")),
        });
    }
    let mut env = env.to_vec();
    if tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".to_owned());
    }
    Ok(env)
}

fn check_command(command: &[String]) -> Result<(), RuntimeError> {
    if command.len() > MAX_ARGS {
        return Err(invalid("start.command", format!("{} arguments, at most {MAX_ARGS}", command.len())));
    }
    match command.iter().position(|a| a.contains('\0')) {
        Some(i) => Err(invalid(format!("start.command[{i}]"), "contains NUL")),
        None => Ok(()),
    }
}

/// `(cols, rows)` of a terminal size named `field`, each 1 to [`MAX_TERMINAL_SIDE`]; where
/// `optional`, 0 by 0 means no size.
pub(super) fn terminal_size(
    size: &pb::TerminalSize,
    field: &str,
    optional: bool,
) -> Result<Option<(u32, u32)>, RuntimeError> {
    if optional && size.cols == 0 && size.rows == 0 {
        return Ok(None);
    }
    for (side, value) in [("cols", size.cols), ("rows", size.rows)] {
        if !(1..=MAX_TERMINAL_SIDE).contains(&value) {
            return Err(invalid(
                format!("{field}.{side}"),
                format!("{value} is not between 1 and {MAX_TERMINAL_SIDE}"),
            ));
        }
    }
    Ok(Some((size.cols, size.rows)))
}

/// The host PID of the init of the container `id` (inspected as `inspect`), which must be
/// running.
pub(super) fn running_pid(id: &str, inspect: &ContainerInspectResponse) -> Result<u32, RuntimeError> {
    inspect
        .state
        .as_ref()
        .filter(|s| s.running == Some(true))
        .and_then(|s| s.pid)
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| RuntimeError::NotRunning { id: id.to_owned() })
}

/// Whether `path` is an executable file inside the root of container `id`, whose init is `pid`.
fn is_executable(id: &str, pid: u32, path: &str) -> Result<bool, RuntimeError> {
    rootfs::executable(pid, path).map_err(|e| match e {
        RootError::Gone { .. } => RuntimeError::NotRunning { id: id.to_owned() },
        source => RuntimeError::ContainerRoot { id: id.to_owned(), source },
    })
}

/// The login shell of the container whose init is `pid`, decided from the host: the first of
/// [`SHELLS`] that is an executable file inside the container's root.
fn login_shell(id: &str, pid: u32) -> Result<Vec<String>, RuntimeError> {
    for shell in SHELLS {
        if is_executable(id, pid, shell)? {
            return Ok(vec![shell.to_owned(), "-l".to_owned()]);
        }
    }
    Err(RuntimeError::NoShell { id: id.to_owned() })
}

/// Refuses a command named by an absolute path that is no executable file inside the
/// container's root (as `/bin/sh` in an image without a shell), in words of ours rather than
/// the engine's; a name looked up in `PATH` is left to the engine.
fn check_executable(id: &str, pid: u32, command: &[String]) -> Result<(), RuntimeError> {
    match command.first().filter(|p| p.starts_with('/')) {
        Some(path) if !is_executable(id, pid, path)? => {
            Err(RuntimeError::NotExecutable { id: id.to_owned(), path: path.clone() })
        }
        _ => Ok(()),
    }
}

impl Runtime {
    /// The host PID of the init of `id`, a running container of ours.
    pub async fn pid(&self, id: &str) -> Result<u32, RuntimeError> {
        running_pid(id, &self.ours(id).await?)
    }

    /// Starts `start.command` (or a login shell) in a running container of ours, attached:
    /// checked, created, started and, when a size is given, sized, before anything is sent.
    pub async fn attach(&self, start: pb::AttachStart) -> Result<Attachment, RuntimeError> {
        if self.sessions.closing.is_cancelled() {
            return Err(RuntimeError::ShuttingDown);
        }
        let env = environment(&start.env, start.tty)?;
        check_command(&start.command)?;
        let size = match &start.size {
            Some(size) => terminal_size(size, "start.size", true)?,
            None => None,
        };
        let pid = self.pid(&start.id).await?;
        let id = start.id;
        let command = if start.command.is_empty() {
            login_shell(&id, pid)?
        } else {
            check_executable(&id, pid, &start.command)?;
            start.command
        };
        let docker = self.engine.docker().clone();
        let map = |source| RuntimeError::Engine(EngineError::Docker { id: id.clone(), source });
        let config = bollard::models::ExecConfig {
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(start.tty),
            env: Some(env),
            cmd: Some(command),
            console_size: size.map(|(cols, rows)| vec![rows as usize, cols as usize]),
            ..Default::default()
        };
        let exec = docker.create_exec(&id, config).await.map_err(map)?;
        let mut processes = ExecProcesses::new(docker.clone(), exec.id.clone(), pid);
        let options = StartExecOptions { detach: false, tty: start.tty, output_capacity: None };
        let StartExecResults::Attached { output, input } =
            docker.start_exec(&exec.id, Some(options)).await.map_err(map)?
        else {
            processes.cut_off().await;
            return Err(RuntimeError::NotAttached { id });
        };
        // The engine answers before it starts the process: wait for its PID, so that a
        // cut-off from now on finds it and a resize reaches its terminal.
        poll_exec(&docker, &exec.id, Duration::from_millis(20), ENGINE_WAIT, |s| {
            matches!(s, ExecState::Running(Some(_)) | ExecState::Ended(_) | ExecState::Gone)
        })
        .await;
        if let Some(size) = size {
            resize(&docker, &exec.id, size).await;
        }
        tracing::info!(id, exec_id = exec.id, tty = start.tty, "attach session started");
        let closing = self.sessions.closing.clone();
        Ok(Attachment {
            container: id,
            exec_id: exec.id,
            tty: start.tty,
            docker,
            output,
            stdin: input,
            processes,
            closing,
        })
    }

    /// Runs `session` (an [`Attachment::run`] or a [`super::Forwarding::run`], and what goes
    /// with it) in a task of its own, tracked among the open sessions.
    pub fn spawn_session(&self, session: impl Future<Output = ()> + Send + 'static) {
        self.sessions.tasks.spawn(session);
    }

    /// Ends every open session (their processes killed, their forwards' connections closed,
    /// their clients told the service is shutting down) and refuses new ones; returns when all
    /// have ended, or after `wait`.
    pub async fn close_sessions(&self, wait: Duration) {
        self.sessions.closing.cancel();
        self.sessions.tasks.close();
        if tokio::time::timeout(wait, self.sessions.tasks.wait()).await.is_err() {
            tracing::warn!(open = self.sessions.tasks.len(), "attach sessions or forwards still open at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(e: RuntimeError) -> String {
        match e {
            RuntimeError::Invalid(SpecError { field, .. }) => field,
            other => panic!("not a field error: {other}"),
        }
    }

    #[test]
    fn the_environment_is_checked_entry_by_entry() {
        let env =
            |entries: &[&str], tty| environment(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>(), tty);
        assert_eq!(env(&["A=1", "_b2=x=y", "EMPTY="], false).unwrap(), ["A=1", "_b2=x=y", "EMPTY="]);
        assert_eq!(env(&["A=1"], true).unwrap(), ["A=1", "TERM=xterm"]);
        assert_eq!(env(&["TERM=vt100"], true).unwrap(), ["TERM=vt100"]);
        for (entries, bad) in [
            (&["A=1", "1A=x"][..], "start.env[1]"),
            (&["NOVALUE"], "start.env[0]"),
            (&["=x"], "start.env[0]"),
            (&["A-B=x"], "start.env[0]"),
            (&["A=x\0y"], "start.env[0]"),
            (&["A B=x"], "start.env[0]"),
        ] {
            assert_eq!(field(env(entries, false).unwrap_err()), bad, "{entries:?}");
        }
        let many: Vec<String> = (0..=common::exec_env::MAX_ENTRIES).map(|i| format!("V{i}=x")).collect();
        assert_eq!(field(environment(&many, false).unwrap_err()), "start.env");
        assert!(environment(&many[..common::exec_env::MAX_ENTRIES], false).is_ok());
        let long = vec![format!("A={}", "x".repeat(common::exec_env::MAX_ENTRY_BYTES))];
        assert_eq!(field(environment(&long, false).unwrap_err()), "start.env[0]");
    }

    #[test]
    fn terminal_sizes_are_1_to_1000_and_0_by_0_is_none_only_at_start() {
        let size = |cols, rows| pb::TerminalSize { cols, rows };
        assert_eq!(terminal_size(&size(0, 0), "start.size", true).unwrap(), None);
        assert_eq!(terminal_size(&size(120, 40), "start.size", true).unwrap(), Some((120, 40)));
        assert_eq!(terminal_size(&size(1000, 1), "resize", false).unwrap(), Some((1000, 1)));
        for (s, optional, bad) in [
            (size(0, 0), false, "resize.cols"),
            (size(0, 5), true, "start.size.cols"),
            (size(5, 0), true, "start.size.rows"),
            (size(5000, 5), false, "resize.cols"),
            (size(5, 1001), false, "resize.rows"),
        ] {
            let field_name = if optional { "start.size" } else { "resize" };
            assert_eq!(field(terminal_size(&s, field_name, optional).unwrap_err()), bad, "{s:?}");
        }
    }

    #[test]
    fn commands_are_capped_and_free_of_nul() {
        assert!(check_command(&[]).is_ok());
        assert!(check_command(&["sh".into(), "-c".into(), "echo hi".into()]).is_ok());
        assert_eq!(field(check_command(&["sh".into(), "a\0b".into()]).unwrap_err()), "start.command[1]");
        assert_eq!(field(check_command(&vec!["x".to_owned(); MAX_ARGS + 1]).unwrap_err()), "start.command");
    }
}
