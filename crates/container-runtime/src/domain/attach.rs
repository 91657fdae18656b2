//! Attach: a command, or a login shell, inside a running container of ours, its input and
//! output streamed both ways for as long as it runs. [`Runtime::attach`] checks the request
//! and starts the exec; [`Attachment::run`] carries the session to its end: `started`, the
//! output as it comes, the exit code last. Nothing is buffered whole: stdin is written as it
//! is read (the client waits while the command does not read), output waits for room in the
//! caller's bounded queue. Each session runs in a task of its own, tracked by the runtime
//! ([`Sessions`]): the service's shutdown ends them all, their processes killed, and waits
//! for them.
//!
//! The session ends when the command's main process ends (its output drained for a moment,
//! so a background child holding the terminal does not hold the session), when the output
//! ends, or when the client goes: a client whose input broke or who stopped listening takes
//! the exec's processes with it ([`super::cutoff`]). A container that stops ends its execs,
//! and so the session, within a poll of [`EXIT_POLL`].

use std::fmt::Display;
use std::pin::Pin;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::query_parameters::ResizeExecOptions;
use common::proto::runtime::v1 as pb;
use pb::attach_input::Input;
use pb::attach_output::Output;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cutoff::ExecProcesses;
use super::{Runtime, RuntimeError};
use crate::engine::EngineError;
use crate::proctree::HostProcess;
use crate::rootfs::{self, RootError};
use crate::spec::SpecError;

/// The most `start.env` entries, and the longest one.
const MAX_ENV: usize = 64;
const MAX_ENV_BYTES: usize = 32 << 10;
/// The most arguments of `start.command`.
const MAX_ARGS: usize = 1024;
/// The widest and tallest terminal, in characters.
const MAX_TERMINAL_SIDE: u32 = 1000;
/// The login shells looked for, in order, each started with `-l`.
const SHELLS: [&str; 2] = ["/bin/bash", "/bin/sh"];
/// What a terminal sends for end of file: `close_stdin` with a TTY. (Closing a TTY exec's
/// stdin at the engine would close its output and leave the command running.)
const EOT: u8 = 0x04;
/// How often the exec's main process is looked at for its end.
const EXIT_POLL: Duration = Duration::from_millis(200);
/// How long output may still come after the main process ended.
const DRAIN: Duration = Duration::from_millis(500);
/// How long the engine may take to say an exec started, and to record its end.
const ENGINE_WAIT: Duration = Duration::from_secs(5);
const EXIT_CODE_WAIT: Duration = Duration::from_secs(2);

/// The open sessions: each in a task of its own, tracked, so that the service's shutdown can
/// end them all (their processes killed, their clients told) and wait for them.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    tasks: TaskTracker,
    closing: CancellationToken,
}

/// An exec started for a session and attached, not yet run.
pub struct Attachment {
    /// Our id of the container.
    container: String,
    exec_id: String,
    tty: bool,
    docker: Docker,
    output: Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    stdin: Pin<Box<dyn AsyncWrite + Send>>,
    processes: ExecProcesses,
    /// Cancelled when the service shuts down.
    closing: CancellationToken,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("container", &self.container)
            .field("exec_id", &self.exec_id)
            .field("tty", &self.tty)
            .finish_non_exhaustive()
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The command ended; its exit code was sent (-1: the engine could not say).
    Exited(i32),
    /// The client's input broke or it stopped listening; `killed` processes were killed.
    ClientGone { why: String, killed: usize },
    /// The client sent something invalid; the error was sent and `killed` processes killed.
    Refused { why: String, killed: usize },
    /// The service shut down: the client was told, `killed` processes were killed.
    Closed { killed: usize },
}

/// What the engine knows of an exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExecState {
    /// Created, not running yet.
    Starting,
    /// Running as this host process (None: the engine has no PID for it yet).
    Running(Option<HostProcess>),
    /// Ended with this code.
    Ended(i32),
    /// The engine no longer has it (its container went).
    Gone,
}

async fn exec_state(docker: &Docker, exec_id: &str) -> ExecState {
    let Ok(inspect) = docker.inspect_exec(exec_id).await else { return ExecState::Gone };
    match (inspect.running, inspect.exit_code) {
        (Some(true), _) => {
            let pid = inspect.pid.and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0);
            ExecState::Running(pid.and_then(HostProcess::of))
        }
        (_, Some(code)) => ExecState::Ended(i32::try_from(code).unwrap_or(-1)),
        _ => ExecState::Starting,
    }
}

/// Polls the engine every `every` until `done` holds of the exec's state or `wait` passed;
/// the last state seen.
async fn poll_exec(
    docker: &Docker,
    exec_id: &str,
    every: Duration,
    wait: Duration,
    done: impl Fn(&ExecState) -> bool,
) -> ExecState {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let state = exec_state(docker, exec_id).await;
        if done(&state) || tokio::time::Instant::now() >= deadline {
            return state;
        }
        tokio::time::sleep(every).await;
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Invalid(SpecError { field: field.into(), message: message.into() })
}

/// A variable name as shells take it.
fn is_variable_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The exec's environment: `start.env` checked, and TERM=xterm for a TTY that names none.
fn environment(env: &[String], tty: bool) -> Result<Vec<String>, RuntimeError> {
    if env.len() > MAX_ENV {
        return Err(invalid("start.env", format!("{} entries, at most {MAX_ENV}", env.len())));
    }
    for (i, entry) in env.iter().enumerate() {
        let field = format!("start.env[{i}]");
        let Some((key, _)) = entry.split_once('=') else { return Err(invalid(field, "not KEY=VALUE")) };
        if !is_variable_name(key) {
            return Err(invalid(field, "the key is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"));
        }
        if entry.contains('\0') {
            return Err(invalid(field, "contains NUL"));
        }
        if entry.len() > MAX_ENV_BYTES {
            return Err(invalid(field, format!("longer than {MAX_ENV_BYTES} bytes")));
        }
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
fn terminal_size(size: &pb::TerminalSize, field: &str, optional: bool) -> Result<Option<(u32, u32)>, RuntimeError> {
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

/// The login shell of the container whose init is `pid`, decided from the host: the first of
/// [`SHELLS`] that is an executable file inside the container's root.
fn login_shell(id: &str, pid: u32) -> Result<Vec<String>, RuntimeError> {
    for shell in SHELLS {
        match rootfs::executable(pid, shell) {
            Ok(true) => return Ok(vec![shell.to_owned(), "-l".to_owned()]),
            Ok(false) => {}
            Err(RootError::Gone { .. }) => return Err(RuntimeError::NotRunning { id: id.to_owned() }),
            Err(source) => return Err(RuntimeError::ContainerRoot { id: id.to_owned(), source }),
        }
    }
    Err(RuntimeError::NoShell { id: id.to_owned() })
}

/// Sets the exec's terminal size; an exec without a TTY, or one that ended, has none to set.
async fn resize(docker: &Docker, exec_id: &str, (cols, rows): (u32, u32)) {
    let options = ResizeExecOptions { w: cols.try_into().unwrap_or(0), h: rows.try_into().unwrap_or(0) };
    if let Err(e) = docker.resize_exec(exec_id, options).await {
        tracing::debug!(exec_id, error = %e, "cannot resize the exec's terminal");
    }
}

impl Runtime {
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
        let inspect = self.ours(&start.id).await?;
        let id = start.id;
        let pid = inspect
            .state
            .as_ref()
            .filter(|s| s.running == Some(true))
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| RuntimeError::NotRunning { id: id.clone() })?;
        let command = if start.command.is_empty() { login_shell(&id, pid)? } else { start.command };
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

    /// Runs `session` (an [`Attachment::run`] and what goes with it) in a task of its own,
    /// tracked among the open sessions.
    pub fn spawn_session(&self, session: impl Future<Output = ()> + Send + 'static) {
        self.sessions.tasks.spawn(session);
    }

    /// Ends every open session (their processes killed, their clients told the service is
    /// shutting down) and refuses new ones; returns when all have ended, or after `wait`.
    pub async fn close_sessions(&self, wait: Duration) {
        self.sessions.closing.cancel();
        self.sessions.tasks.close();
        if tokio::time::timeout(wait, self.sessions.tasks.wait()).await.is_err() {
            tracing::warn!(open = self.sessions.tasks.len(), "attach sessions still open at shutdown");
        }
    }
}

/// How the client's side of a session ended.
#[derive(Debug)]
enum InputEnd {
    /// The client finished sending (a clean end of its stream).
    Finished,
    /// The client's stream failed.
    Broken(String),
    /// The client sent something invalid.
    Invalid(RuntimeError),
}

/// How the output side ended.
#[derive(Debug, PartialEq, Eq)]
enum OutputEnd {
    /// The engine closed the exec's output.
    Closed,
    /// The client stopped listening.
    ClientGone,
}

impl Attachment {
    /// The engine's id of the exec.
    pub fn exec_id(&self) -> &str {
        &self.exec_id
    }

    /// Runs the session to its end: `input` is what the client sends after `start` (its
    /// failures as `Err`), `out` where the answers go (bounded: a slow client slows the
    /// command's output down). Returns how it ended.
    pub async fn run<E: Display>(
        self,
        input: impl Stream<Item = Result<pb::AttachInput, E>> + Send + Unpin,
        out: mpsc::Sender<Result<pb::AttachOutput, RuntimeError>>,
    ) -> SessionEnd {
        let Self { exec_id, tty, docker, mut output, mut stdin, mut processes, container, closing } = self;
        let message = |output| Ok(pb::AttachOutput { output: Some(output) });
        if out.send(message(Output::Started(pb::AttachStarted { exec_id: exec_id.clone() }))).await.is_err() {
            let killed = processes.cut_off().await;
            return SessionEnd::ClientGone { why: "stopped listening".to_owned(), killed };
        }
        let inbound = feed(&docker, &exec_id, tty, input, &mut stdin);
        let outbound = forward(&mut output, &out);
        let exited = main_process_ended(&docker, &exec_id);
        tokio::pin!(inbound, outbound, exited);
        let mut input_open = true;
        loop {
            tokio::select! {
                end = &mut inbound, if input_open => match end {
                    InputEnd::Finished => input_open = false,
                    InputEnd::Broken(why) => {
                        let killed = processes.cut_off().await;
                        return SessionEnd::ClientGone { why, killed };
                    }
                    InputEnd::Invalid(e) => {
                        let killed = processes.cut_off().await;
                        let why = e.to_string();
                        let _ = out.send(Err(e)).await;
                        return SessionEnd::Refused { why, killed };
                    }
                },
                end = &mut outbound => match end {
                    OutputEnd::Closed => break,
                    OutputEnd::ClientGone => {
                        let killed = processes.cut_off().await;
                        return SessionEnd::ClientGone { why: "stopped listening".to_owned(), killed };
                    }
                },
                () = &mut exited => {
                    if let Ok(OutputEnd::ClientGone) = tokio::time::timeout(DRAIN, &mut outbound).await {
                        let killed = processes.cut_off().await;
                        return SessionEnd::ClientGone { why: "stopped listening".to_owned(), killed };
                    }
                    break;
                }
                () = out.closed() => {
                    let killed = processes.cut_off().await;
                    return SessionEnd::ClientGone { why: "stopped listening".to_owned(), killed };
                }
                () = closing.cancelled() => {
                    let killed = processes.cut_off().await;
                    let _ = out.send(Err(RuntimeError::ShuttingDown)).await;
                    return SessionEnd::Closed { killed };
                }
            }
        }
        let state = poll_exec(&docker, &exec_id, Duration::from_millis(50), EXIT_CODE_WAIT, |s| {
            !matches!(s, ExecState::Running(_))
        })
        .await;
        let code = match state {
            ExecState::Ended(code) => {
                processes.release();
                code
            }
            ExecState::Gone => {
                processes.release();
                -1
            }
            // Its output closed but it runs on (it closed its own stdout and stderr): a
            // session's command does not outlive the session.
            ExecState::Starting | ExecState::Running(_) => {
                let killed = processes.cut_off().await;
                tracing::info!(container, exec_id, killed, "the exec's output closed; what was left of it is killed");
                match exec_state(&docker, &exec_id).await {
                    ExecState::Ended(code) => code,
                    _ => -1,
                }
            }
        };
        let _ = out.send(message(Output::ExitCode(code))).await;
        SessionEnd::Exited(code)
    }
}

/// Feeds the client's messages to the exec: stdin written as it comes (the next message is
/// read only when the command took the last), resizes, end of input. Returns when the client
/// is done or broke, or sent something invalid.
async fn feed<E: Display>(
    docker: &Docker,
    exec_id: &str,
    tty: bool,
    mut input: impl Stream<Item = Result<pb::AttachInput, E>> + Unpin,
    stdin: &mut Pin<Box<dyn AsyncWrite + Send>>,
) -> InputEnd {
    let mut stdin_open = true;
    loop {
        let message = match input.next().await {
            Some(Ok(message)) => message,
            Some(Err(e)) => return InputEnd::Broken(e.to_string()),
            None => {
                // Nothing more can come: the command sees end of file (a terminal is left as
                // it is; its session ends with its shell).
                if stdin_open && !tty {
                    let _ = stdin.shutdown().await;
                }
                return InputEnd::Finished;
            }
        };
        match message.input {
            Some(Input::Stdin(bytes)) if stdin_open => {
                if let Err(e) = write(stdin, &bytes).await {
                    // The command closed its stdin, or ended: what follows has nowhere to go.
                    tracing::debug!(exec_id, error = %e, "the exec's stdin is closed");
                    stdin_open = false;
                }
            }
            Some(Input::CloseStdin(true)) if stdin_open => {
                stdin_open = false;
                let closed = if tty { write(stdin, &[EOT]).await } else { stdin.shutdown().await };
                if let Err(e) = closed {
                    tracing::debug!(exec_id, error = %e, "cannot close the exec's stdin");
                }
            }
            Some(Input::Stdin(_) | Input::CloseStdin(_)) | None => {}
            Some(Input::Resize(size)) => match terminal_size(&size, "resize", false) {
                Ok(Some(size)) => resize(docker, exec_id, size).await,
                Ok(None) => {}
                Err(e) => return InputEnd::Invalid(e),
            },
            Some(Input::Start(_)) => return InputEnd::Invalid(invalid("start", "sent twice; only the first message")),
        }
    }
}

async fn write(stdin: &mut Pin<Box<dyn AsyncWrite + Send>>, bytes: &[u8]) -> std::io::Result<()> {
    stdin.write_all(bytes).await?;
    stdin.flush().await
}

/// Forwards the exec's output to the client as it comes (with a TTY it is all stdout).
async fn forward(
    output: &mut Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    out: &mpsc::Sender<Result<pb::AttachOutput, RuntimeError>>,
) -> OutputEnd {
    while let Some(item) = output.next().await {
        let output = match item {
            Ok(LogOutput::StdErr { message }) => Output::Stderr(message.to_vec()),
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => Output::Stdout(message.to_vec()),
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "the exec's output broke off");
                return OutputEnd::Closed;
            }
        };
        if out.send(Ok(pb::AttachOutput { output: Some(output) })).await.is_err() {
            return OutputEnd::ClientGone;
        }
    }
    OutputEnd::Closed
}

/// Resolves when the exec's main process has ended (or its container went), looked at every
/// [`EXIT_POLL`]: on the host once its PID is known, at the engine until then.
async fn main_process_ended(docker: &Docker, exec_id: &str) {
    let mut process = None;
    let mut tick = tokio::time::interval(EXIT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match process {
            Some(p) if HostProcess::alive(&p) => {}
            Some(_) => return,
            None => match exec_state(docker, exec_id).await {
                ExecState::Running(p) => process = p,
                ExecState::Starting => {}
                ExecState::Ended(_) | ExecState::Gone => return,
            },
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
        let many: Vec<String> = (0..=MAX_ENV).map(|i| format!("V{i}=x")).collect();
        assert_eq!(field(environment(&many, false).unwrap_err()), "start.env");
        assert!(environment(&many[..MAX_ENV], false).is_ok());
        let long = vec![format!("A={}", "x".repeat(MAX_ENV_BYTES))];
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
