//! An Attach session, from `started` to its end ([`Attachment::run`]): the output as it
//! comes, the exit code last. Nothing is buffered whole: stdin is written as it is read (the
//! client waits while the command does not read), output waits for room in the caller's
//! bounded queue.
//!
//! The session ends when the command's main process ends (its output drained for a moment,
//! so a background child holding the terminal does not hold the session), when the output
//! ends, when the service shuts down, or when the client goes: a client whose input broke or
//! who stopped listening takes the exec's processes with it ([`super::cutoff`]). A container
//! that stops ends its execs, and so the session, within a poll of [`EXIT_POLL`].

use std::fmt::Display;
use std::pin::Pin;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::ResizeExecOptions;
use common::proto::runtime::v1 as pb;
use pb::attach_input::Input;
use pb::attach_output::Output;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::RuntimeError;
use super::attach::{invalid, terminal_size};
use super::cutoff::ExecProcesses;
use crate::proctree::HostProcess;

/// What a terminal sends for end of file: `close_stdin` with a TTY. (Closing a TTY exec's
/// stdin at the engine would close its output and leave the command running.)
const EOT: u8 = 0x04;
/// How often the exec's main process is looked at for its end.
const EXIT_POLL: Duration = Duration::from_millis(200);
/// How long output may still come after the main process ended.
const DRAIN: Duration = Duration::from_millis(500);
/// How long the engine may take to record the end of an exec whose output closed.
const EXIT_CODE_WAIT: Duration = Duration::from_secs(2);

/// An exec started for a session and attached, not yet run.
pub struct Attachment {
    /// Our id of the container.
    pub(super) container: String,
    pub(super) exec_id: String,
    pub(super) tty: bool,
    pub(super) docker: Docker,
    pub(super) output: Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    pub(super) stdin: Pin<Box<dyn AsyncWrite + Send>>,
    pub(super) processes: ExecProcesses,
    /// Cancelled when the service shuts down.
    pub(super) closing: CancellationToken,
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
pub(super) enum ExecState {
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
pub(super) async fn poll_exec(
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

/// Sets the exec's terminal size; an exec without a TTY, or one that ended, has none to set.
pub(super) async fn resize(docker: &Docker, exec_id: &str, (cols, rows): (u32, u32)) {
    let options = ResizeExecOptions { w: cols.try_into().unwrap_or(0), h: rows.try_into().unwrap_or(0) };
    if let Err(e) = docker.resize_exec(exec_id, options).await {
        tracing::debug!(exec_id, error = %e, "cannot resize the exec's terminal");
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
