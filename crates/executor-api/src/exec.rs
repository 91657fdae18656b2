//! ExecContainer: a command in a running container, run through container-runtime's Attach
//! stream (no TTY). [`ExecPlan::check`] checks the caller's request, each refusal naming its
//! field; [`ExecPlan::input`] is what Attach is sent (`start`, the stdin, `close_stdin`);
//! [`relay`] forwards the output as it comes and ends the call with an `end` message.
//!
//! The command never outlives its call: at its deadline, at the output cap, and when the
//! caller goes away, the relay drops the Attach stream, and container-runtime kills the
//! exec's processes when its client goes (`domain/cutoff` there). The relay runs in a task
//! that the call's response stream owns: it ends when the call does, at the latest at the
//! deadline.

use std::time::Duration;

use common::proto::api::v1 as pb;
use common::proto::runtime::v1 as runtime;
use pb::exec_container_output::Output;
use runtime::attach_input::Input;
use runtime::attach_output::Output as AttachOutput;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

use crate::errors::ApiError;

/// The deadline of a call that names none, and the longest one, in seconds.
pub(crate) const DEFAULT_TIMEOUT_SECONDS: u32 = 60;
pub(crate) const MAX_TIMEOUT_SECONDS: u32 = 3600;
/// The output cap (stdout and stderr together) of a call that names none, and the largest one.
pub(crate) const DEFAULT_MAX_OUTPUT_BYTES: u64 = 16 << 20;
pub(crate) const MAX_OUTPUT_BYTES: u64 = 256 << 20;
/// The most stdin a call may carry. The whole request is also bounded by the layer's
/// [`crate::layer::MAX_REQUEST_BYTES`].
pub(crate) const MAX_STDIN_BYTES: usize = 1 << 20;
/// The most arguments of a command: the bound container-runtime's Attach sets, checked here so
/// that refusals name our fields (the environment's are `common::exec_env`'s, shared with it).
pub(crate) const MAX_ARGS: usize = 1024;
/// Stdin goes to Attach in messages of this size, so that none is large.
const STDIN_CHUNK: usize = 64 << 10;
/// Messages on their way to the caller: output waits for room here, so a caller that reads
/// slowly slows the command down (through Attach's own bounded queue) instead of filling the
/// memory.
pub(crate) const OUTPUT_QUEUE: usize = 16;

/// One item of the call's response stream.
pub(crate) type ExecItem = Result<pb::ExecContainerOutput, Status>;

/// A checked ExecContainer request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecPlan {
    /// Attach's first message: the container, the command, its environment; no TTY.
    start: runtime::AttachStart,
    stdin: Vec<u8>,
    /// How long the command may run, from the call's start.
    pub(crate) timeout: Duration,
    /// Output forwarded at most, stdout and stderr together.
    pub(crate) max_output: u64,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument { field, message: message.into() }
}

/// Checks `env` by the grammar Attach takes (`common::exec_env`). GPUs are the container's own
/// (`NVIDIA_*` at create): an exec may not name others. Values are never echoed, only keys.
fn check_env(env: &[String]) -> Result<(), ApiError> {
    use common::exec_env::{EnvProblem as P, MAX_ENTRIES, MAX_ENTRY_BYTES};
    common::exec_env::check(env, Some("NVIDIA_")).map_err(|problem| {
        let message = match problem {
            P::TooMany(n) => format!("{n} entries, at most {MAX_ENTRIES}"),
            P::NotKeyValue { index } => format!("entry {index} is not KEY=VALUE"),
            P::BadKey { index } => format!("entry {index}: the key is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
            P::Forbidden { index, key } => format!("entry {index}: `{key}`: NVIDIA_ variables are the container's own"),
            P::Nul { index, key } => format!("entry {index} (`{key}`) contains NUL"),
            P::TooLong { index, key } => format!("entry {index} (`{key}`) is longer than {MAX_ENTRY_BYTES} bytes"),
        };
        invalid("env", message)
    })
}

fn check_command(command: &[String]) -> Result<(), ApiError> {
    if command.is_empty() {
        return Err(invalid("command", "must not be empty"));
    }
    if command.len() > MAX_ARGS {
        return Err(invalid("command", format!("{} arguments, at most {MAX_ARGS}", command.len())));
    }
    match command.iter().position(|a| a.contains('\0')) {
        Some(i) => Err(invalid("command", format!("argument {i} contains NUL"))),
        None => Ok(()),
    }
}

impl ExecPlan {
    /// The caller's request, checked field by field in the order of the message.
    pub(crate) fn check(request: pb::ExecContainerRequest) -> Result<Self, ApiError> {
        let pb::ExecContainerRequest { id, command, timeout_seconds, max_output_bytes, stdin, env } = request;
        if id.is_empty() {
            return Err(invalid("id", "required"));
        }
        check_command(&command)?;
        let timeout_seconds = match timeout_seconds {
            0 => DEFAULT_TIMEOUT_SECONDS,
            s if s <= MAX_TIMEOUT_SECONDS => s,
            s => return Err(invalid("timeout_seconds", format!("{s} is more than {MAX_TIMEOUT_SECONDS}"))),
        };
        let max_output = match max_output_bytes {
            0 => DEFAULT_MAX_OUTPUT_BYTES,
            n if n <= MAX_OUTPUT_BYTES => n,
            n => return Err(invalid("max_output_bytes", format!("{n} is more than {MAX_OUTPUT_BYTES}"))),
        };
        if stdin.len() > MAX_STDIN_BYTES {
            return Err(invalid("stdin", format!("{} bytes, at most {MAX_STDIN_BYTES}", stdin.len())));
        }
        check_env(&env)?;
        Ok(Self {
            start: runtime::AttachStart { id, command, tty: false, size: None, env },
            stdin,
            timeout: Duration::from_secs(u64::from(timeout_seconds)),
            max_output,
        })
    }

    /// The container's id.
    pub(crate) fn container(&self) -> &str {
        &self.start.id
    }

    /// What Attach is sent: `start`, the stdin in chunks, `close_stdin`. The stream then ends,
    /// which Attach takes as a client that has finished sending (the command runs on).
    pub(crate) fn input(&self) -> impl Stream<Item = runtime::AttachInput> + Send + 'static {
        let message = |input| runtime::AttachInput { input: Some(input) };
        let mut messages = vec![message(Input::Start(self.start.clone()))];
        messages.extend(self.stdin.chunks(STDIN_CHUNK).map(|chunk| message(Input::Stdin(chunk.to_vec()))));
        messages.push(message(Input::CloseStdin(true)));
        tokio_stream::iter(messages)
    }
}

/// How the relay's part of a call ended.
#[derive(Debug)]
enum Finish {
    /// The command ended, ran past its deadline, or reached the output cap.
    End(pb::ExecContainerEnd),
    /// Attach failed after it started; the status as the caller sees it.
    Failed(Status),
    /// The caller went away.
    CallerGone,
}

fn item(output: Output) -> ExecItem {
    Ok(pb::ExecContainerOutput { output: Some(output) })
}

/// Relays `attach` to the caller through `out` until the command ends, `deadline` passes,
/// `max_output` bytes were forwarded or the caller goes; then drops `attach` (which ends the
/// command's processes, if any are left) and sends the end. `request_id` names the call in
/// the log and in internal errors.
pub(crate) async fn relay(
    mut attach: Streaming<runtime::AttachOutput>,
    out: mpsc::Sender<ExecItem>,
    max_output: u64,
    deadline: Instant,
    request_id: String,
) {
    let mut forwarded = 0;
    let finish = pump(&mut attach, &out, max_output, deadline, &mut forwarded, &request_id).await;
    // Before the end is sent, so that a command killed at its deadline or cap is on its way
    // out when the caller hears of it.
    drop(attach);
    match finish {
        Finish::End(end) => {
            tracing::info!(
                exit_code = end.exit_code,
                timed_out = end.timed_out,
                truncated = end.truncated,
                forwarded,
                "exec ended"
            );
            let _ = out.send(item(Output::End(end))).await;
        }
        Finish::Failed(status) => {
            let _ = out.send(Err(status)).await;
        }
        Finish::CallerGone => tracing::info!(forwarded, "the caller went away; the exec is cut off"),
    }
}

/// The relay's loop: what Attach answers, forwarded within the cap and the deadline.
async fn pump(
    attach: &mut Streaming<runtime::AttachOutput>,
    out: &mpsc::Sender<ExecItem>,
    max_output: u64,
    deadline: Instant,
    forwarded: &mut u64,
    request_id: &str,
) -> Finish {
    let timed_out = || Finish::End(pb::ExecContainerEnd { exit_code: -1, timed_out: true, truncated: false });
    loop {
        let message = tokio::select! {
            // The caller going away wins over anything Attach has to say.
            biased;
            () = out.closed() => return Finish::CallerGone,
            () = tokio::time::sleep_until(deadline) => return timed_out(),
            message = attach.message() => message,
        };
        let (stderr, mut bytes) = match message {
            Ok(Some(runtime::AttachOutput { output: Some(output) })) => match output {
                AttachOutput::Started(_) => continue,
                AttachOutput::Stdout(bytes) => (false, bytes),
                AttachOutput::Stderr(bytes) => (true, bytes),
                AttachOutput::ExitCode(exit_code) => {
                    return Finish::End(pb::ExecContainerEnd { exit_code, timed_out: false, truncated: false });
                }
            },
            // A message of a newer container-runtime: nothing for the caller.
            Ok(Some(runtime::AttachOutput { output: None })) => continue,
            Ok(None) => {
                let error = ApiError::Internal("container-runtime's Attach ended without an exit code".to_owned());
                return Finish::Failed(error.into_status(request_id));
            }
            Err(status) => {
                let service = common::ServiceName::ContainerRuntime;
                return Finish::Failed(ApiError::Downstream { service, status }.into_status(request_id));
            }
        };
        let room = max_output - *forwarded;
        let over = bytes.len() as u64 > room;
        if over {
            bytes.truncate(usize::try_from(room).unwrap_or(usize::MAX));
        }
        if !bytes.is_empty() {
            *forwarded += bytes.len() as u64;
            let output = if stderr { Output::Stderr(bytes) } else { Output::Stdout(bytes) };
            tokio::select! {
                sent = out.send(item(output)) => if sent.is_err() { return Finish::CallerGone },
                () = tokio::time::sleep_until(deadline) => return timed_out(),
            }
        }
        if over {
            return Finish::End(pb::ExecContainerEnd { exit_code: -1, timed_out: false, truncated: true });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(command: &[&str]) -> pb::ExecContainerRequest {
        pb::ExecContainerRequest {
            id: "c-1".into(),
            command: command.iter().map(|a| (*a).to_owned()).collect(),
            ..Default::default()
        }
    }

    /// The field a refusal names, and its message.
    fn refused(request: pb::ExecContainerRequest) -> String {
        match ExecPlan::check(request) {
            Err(e @ ApiError::InvalidArgument { .. }) => e.to_string(),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_bounds() {
        let plan = ExecPlan::check(request(&["true"])).unwrap();
        assert_eq!((plan.timeout, plan.max_output), (Duration::from_secs(60), 16 << 20));
        assert_eq!(plan.container(), "c-1");
        let most = pb::ExecContainerRequest {
            timeout_seconds: 3600,
            max_output_bytes: 256 << 20,
            stdin: vec![b'x'; 1 << 20],
            env: (0..64).map(|i| format!("V{i}=x")).collect(),
            ..request(&["true"])
        };
        let plan = ExecPlan::check(most).unwrap();
        assert_eq!((plan.timeout, plan.max_output), (Duration::from_secs(3600), 256 << 20));
    }

    #[test]
    fn each_bad_field_is_named() {
        let r = || request(&["sh", "-c", "true"]);
        #[rustfmt::skip]
        let cases = [
            (pb::ExecContainerRequest { id: String::new(), ..r() }, "id: required"),
            (request(&[]), "command: must not be empty"),
            (request(&["sh", "a\0b"]), "command: argument 1 contains NUL"),
            (pb::ExecContainerRequest { command: vec!["x".into(); 1025], ..r() }, "command: 1025 arguments, at most 1024"),
            (pb::ExecContainerRequest { timeout_seconds: 3601, ..r() }, "timeout_seconds: 3601 is more than 3600"),
            (pb::ExecContainerRequest { max_output_bytes: (256 << 20) + 1, ..r() }, "max_output_bytes: 268435457 is more"),
            (pb::ExecContainerRequest { stdin: vec![0; (1 << 20) + 1], ..r() }, "stdin: 1048577 bytes, at most 1048576"),
            (pb::ExecContainerRequest { env: (0..65).map(|i| format!("V{i}=x")).collect(), ..r() }, "env: 65 entries"),
            (pb::ExecContainerRequest { env: vec!["A=1".into(), "NOVALUE".into()], ..r() }, "env: entry 1 is not KEY=VALUE"),
            (pb::ExecContainerRequest { env: vec!["1A=x".into()], ..r() }, "env: entry 0: the key is not a variable"),
            (pb::ExecContainerRequest { env: vec!["A-B=x".into()], ..r() }, "env: entry 0: the key is not a variable"),
            (pb::ExecContainerRequest { env: vec!["=x".into()], ..r() }, "env: entry 0: the key is not a variable"),
            (pb::ExecContainerRequest { env: vec!["NVIDIA_VISIBLE_DEVICES=all".into()], ..r() }, "env: entry 0: `NVIDIA_VISIBLE_DEVICES`"),
            (pb::ExecContainerRequest { env: vec!["A=x\0secret".into()], ..r() }, "env: entry 0 (`A`) contains NUL"),
            (pb::ExecContainerRequest { env: vec![format!("A={}", "x".repeat(32 << 10))], ..r() }, "env: entry 0 (`A`) is longer"),
        ];
        for (request, want) in cases {
            let got = refused(request);
            assert!(got.starts_with(want), "{want}: {got}");
            assert!(!got.contains("secret"), "{got}");
        }
    }

    #[tokio::test]
    async fn attach_is_sent_start_stdin_in_chunks_and_close() {
        use tokio_stream::StreamExt;
        let plan = ExecPlan::check(pb::ExecContainerRequest {
            stdin: vec![b'x'; STDIN_CHUNK + 1],
            env: vec!["A=1".into()],
            ..request(&["wc", "-c"])
        })
        .unwrap();
        let sent: Vec<_> = plan.input().map(|m| m.input.unwrap()).collect().await;
        let start = runtime::AttachStart {
            id: "c-1".into(),
            command: vec!["wc".into(), "-c".into()],
            tty: false,
            size: None,
            env: vec!["A=1".into()],
        };
        assert_eq!(
            sent,
            [
                Input::Start(start),
                Input::Stdin(vec![b'x'; STDIN_CHUNK]),
                Input::Stdin(vec![b'x']),
                Input::CloseStdin(true)
            ]
        );
        let empty = ExecPlan::check(request(&["true"])).unwrap();
        let sent: Vec<_> = empty.input().map(|m| m.input.unwrap()).collect().await;
        assert_eq!(sent.len(), 2, "{sent:?}");
    }
}
