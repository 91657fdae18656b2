//! How a planned command runs for a session: as `command_user` through `setpriv` (or, for the
//! signing attestor, as root without capabilities), with an empty environment, in a cgroup of
//! its own (the limits of `[validator]`) registered with its session so that teardown kills
//! it whole, within the session's and the grant's concurrent commands, `command_timeout`,
//! `command_max_output_bytes`, and one audit line when it ends. Whatever it started is killed
//! with it when it ends, however it ends. Where output goes is the front's business
//! ([`Output`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::audit::Audit;
use common::process::ProcessSpec;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::cgroup::Cgroups;
use crate::grammar::Planned;
use crate::principal::{Principal, with_principal};
use crate::sessions::{Busy, Sessions, kill_all};

/// PATH of validator commands (their environment is otherwise empty).
const COMMAND_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The user commands run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Why a configured user cannot run commands; names the config key.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{key}: cannot look up `{name}`: {source}")]
    Lookup { key: String, name: String, source: nix::Error },
    #[error("{key}: no user `{name}` on this host")]
    Missing { key: String, name: String },
    #[error("{key}: `{name}` is root")]
    Root { key: String, name: String },
}

impl CommandUser {
    /// Looks `name` up; the error names `key`, the config key it came from.
    pub fn lookup(key: &str, name: &str) -> Result<Self, UserError> {
        let (key, name) = (key.to_owned(), name.to_owned());
        let user = match nix::unistd::User::from_name(&name) {
            Ok(Some(user)) => user,
            Ok(None) => return Err(UserError::Missing { key, name }),
            Err(source) => return Err(UserError::Lookup { key, name, source }),
        };
        if user.uid.is_root() {
            return Err(UserError::Root { key, name });
        }
        Ok(Self { name, uid: user.uid.as_raw(), gid: user.gid.as_raw() })
    }
}

/// Which of a command's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout = 0,
    Stderr = 1,
}

/// Where a command's output and exit status go: the SSH channel or the gate's relay.
pub trait Output: Send + Sync {
    /// Some output.
    fn out(&self, stream: Stream, data: Vec<u8>) -> impl Future<Output = ()> + Send;
    /// The exit status, and the end of the output.
    fn finish(&self, code: u32) -> impl Future<Output = ()> + Send;
}

/// One command of a session, ready to run.
#[derive(Debug)]
pub struct Job {
    pub session_id: String,
    pub principal: Option<Principal>,
    /// The line as the validator sent it, for the audit log.
    pub line: String,
    pub spec: ProcessSpec,
}

/// Runs the commands of every session.
#[derive(Debug)]
pub struct Runner {
    user: CommandUser,
    timeout: Duration,
    max_output: u64,
    cgroups: Arc<Cgroups>,
    /// Numbers the commands' cgroups.
    started: AtomicU64,
    audit: Arc<Audit>,
}

impl Runner {
    pub fn new(
        user: CommandUser,
        timeout: Duration,
        max_output: u64,
        cgroups: Arc<Cgroups>,
        audit: Arc<Audit>,
    ) -> Self {
        Self { user, timeout, max_output, cgroups, started: AtomicU64::new(1), audit }
    }

    /// The process that runs `planned`: `setpriv` to the command user (or, for the signing
    /// attestor, root without capabilities), an empty environment.
    pub fn spec(&self, planned: Planned) -> ProcessSpec {
        let user = &self.user;
        let mut spec = ProcessSpec::new("setpriv");
        spec = if planned.signs {
            spec.args(["--inh-caps=-all", "--bounding-set=-all"])
        } else {
            spec.arg(format!("--reuid={}", user.uid)).arg(format!("--regid={}", user.gid)).arg("--clear-groups")
        };
        spec.args(["--no-new-privs", "--", "env", "-i"])
            .arg(format!("PATH={COMMAND_PATH}"))
            .arg(format!("USER={}", user.name))
            .args(["HOME=/", "LANG=C.UTF-8"])
            .args(planned.argv)
    }

    /// Runs `job` to its end, its stdin fed from `stdin_rx`, and reports it to `output` and in
    /// the audit log. Refused (exit status 126) when the session or its grant runs as many
    /// commands as allowed already.
    pub async fn run(&self, sessions: &Sessions, job: Job, output: impl Output, mut stdin_rx: mpsc::Receiver<Vec<u8>>) {
        let Job { session_id, principal, line, spec } = job;
        let started = Instant::now();
        let cap = self.max_output;
        let name = format!("{session_id}-{}", self.started.fetch_add(1, Ordering::Relaxed));
        let cgroup = match self.cgroups.create(&name) {
            Ok(cgroup) => Arc::new(cgroup),
            Err(e) => {
                tracing::error!(error = %e, session = %session_id, "cannot make the cgroup of a validator command");
                output
                    .out(Stream::Stderr, b"executor: cannot start the command; see the executor log\n".to_vec())
                    .await;
                output.finish(127).await;
                return;
            }
        };
        if let Err(busy) = sessions.begin_command(&session_id, cgroup.clone()) {
            self.refuse(&session_id, principal.as_ref(), &line, &busy, output).await;
            return;
        }
        let (code, sent, truncated, timed_out) = match spec.in_cgroup(cgroup.procs_files()).spawn_interactive() {
            Err(e) => {
                output.out(Stream::Stderr, format!("executor: cannot start the command: {e}\n").into_bytes()).await;
                (127u32, [0u64; 2], false, false)
            }
            Ok(mut child) => {
                let mut stdin = child.stdin.take();
                let mut stdout = child.stdout.take();
                let mut stderr = child.stderr.take();
                let mut capped = Capped { output: &output, cap, sent: [0; 2] };
                let mut truncated = false;
                let (mut out_buf, mut err_buf) = (vec![0u8; 32 << 10], vec![0u8; 32 << 10]);
                let mut exited = None;
                let io = async {
                    loop {
                        // `send` is true once the output cap is reached: the command is killed.
                        tokio::select! {
                            // The command is over when its process is: what it left running
                            // (holding the output open, say) goes, the output is read to its end.
                            status = child.wait(), if exited.is_none() => {
                                exited = Some(status);
                                kill_all(vec![cgroup.clone()]).await;
                            },
                            n = read_some(&mut stdout, &mut out_buf) => match n {
                                Some(n) => truncated = capped.send(Stream::Stdout, &out_buf[..n]).await,
                                None => stdout = None,
                            },
                            n = read_some(&mut stderr, &mut err_buf) => match n {
                                Some(n) => truncated = capped.send(Stream::Stderr, &err_buf[..n]).await,
                                None => stderr = None,
                            },
                            data = stdin_rx.recv(), if stdin.is_some() => match (data, stdin.as_mut()) {
                                (Some(data), Some(pipe)) => { let _ = pipe.write_all(&data).await; }
                                _ => stdin = None,
                            },
                        }
                        if truncated || (stdout.is_none() && stderr.is_none()) {
                            break;
                        }
                    }
                };
                let timed_out = tokio::time::timeout(self.timeout, io).await.is_err();
                if timed_out || truncated {
                    kill_all(vec![cgroup.clone()]).await;
                }
                let status = match exited {
                    Some(status) => Ok(status),
                    None => tokio::time::timeout(Duration::from_secs(10), child.wait()).await,
                };
                let code = match status {
                    _ if timed_out => 124,
                    Ok(Ok(status)) => status.code().map_or(128 + 9, |c| c as u32),
                    _ => 1,
                };
                if timed_out {
                    output.out(Stream::Stderr, b"executor: command timed out\n".to_vec()).await;
                }
                (code, capped.sent, truncated, timed_out)
            }
        };
        // Whatever the command left running (detached, double-forked) ends with it.
        kill_all(vec![cgroup.clone()]).await;
        sessions.end_command(&session_id, &cgroup);
        output.finish(code).await;
        metrics::counter!("executor_validator_access_commands_total").increment(1);
        self.audit.record(
            "command",
            with_principal(
                principal.as_ref(),
                json!({"session": session_id, "command": line, "exit_code": code,
                       "stdout_bytes": sent[0], "stderr_bytes": sent[1], "truncated": truncated,
                       "timed_out": timed_out, "duration_ms": started.elapsed().as_millis() as u64}),
            ),
        );
    }

    /// Refuses a command that may not start now: the reason on stderr, exit status 126.
    async fn refuse(&self, session: &str, principal: Option<&Principal>, line: &str, busy: &Busy, output: impl Output) {
        metrics::counter!("executor_validator_access_refused_total", "what" => "concurrent_commands").increment(1);
        self.audit.record(
            "refused",
            with_principal(principal, json!({"session": session, "what": "concurrent_commands", "command": line})),
        );
        output.out(Stream::Stderr, format!("executor: {busy}\n").into_bytes()).await;
        output.finish(126).await;
    }
}

async fn read_some<R: tokio::io::AsyncRead + Unpin>(reader: &mut Option<R>, buf: &mut [u8]) -> Option<usize> {
    match reader {
        Some(r) => match r.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

/// Output within `command_max_output_bytes` per stream.
struct Capped<'a, O> {
    output: &'a O,
    cap: u64,
    /// Bytes sent on stdout and stderr.
    sent: [u64; 2],
}

impl<O: Output> Capped<'_, O> {
    /// Sends what fits under the cap; true when the cap is reached.
    async fn send(&mut self, stream: Stream, bytes: &[u8]) -> bool {
        let sent = &mut self.sent[stream as usize];
        let room = self.cap.saturating_sub(*sent) as usize;
        let part = bytes[..bytes.len().min(room)].to_vec();
        *sent += part.len() as u64;
        if !part.is_empty() {
            self.output.out(stream, part).await;
        }
        bytes.len() > room
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use common::ServiceName;

    use super::*;

    /// What a command sent: (stdout, stderr, exit status).
    #[derive(Default)]
    struct Collected(Mutex<(Vec<u8>, Vec<u8>, Option<u32>)>);

    impl Output for &Collected {
        async fn out(&self, stream: Stream, data: Vec<u8>) {
            let mut c = self.0.lock().unwrap();
            match stream {
                Stream::Stdout => c.0.extend(data),
                Stream::Stderr => c.1.extend(data),
            }
        }

        async fn finish(&self, code: u32) {
            self.0.lock().unwrap().2 = Some(code);
        }
    }

    async fn run(script: &str, stdin: &[u8]) -> (Vec<u8>, Vec<u8>, Option<u32>, String) {
        let cgroups = crate::cgroup::testing::cgroups().expect("root, checked by the caller");
        let dir = tempfile::tempdir().unwrap();
        let audit = Arc::new(Audit::open(dir.path(), ServiceName::ValidatorAccess).unwrap());
        let user = CommandUser { name: "nobody".into(), uid: 65534, gid: 65534 };
        let runner = Runner::new(user, Duration::from_secs(2), 1000, cgroups.0.clone(), audit.clone());
        let limits = crate::sessions::CommandLimits { per_session: 2, per_grant: 2 };
        let sessions = Sessions::new(limits, audit);
        let principal = Principal::Validator(crate::grants::GrantRecord {
            id: "g-1".into(),
            hotkey: "5Grw".into(),
            public_key: String::new(),
            fingerprint: String::new(),
            created_at: 0,
            expires_at: 100,
        });
        let closer = crate::sessions::Closer::Cancel(tokio_util::sync::CancellationToken::new());
        sessions.insert("s-1".into(), crate::sessions::Session::new(principal, "peer".into(), 0, closer));
        let job = Job {
            session_id: "s-1".into(),
            principal: None,
            line: script.into(),
            spec: ProcessSpec::new("sh").args(["-c", script]),
        };
        let (tx, rx) = mpsc::channel(4);
        if !stdin.is_empty() {
            tx.send(stdin.to_vec()).await.unwrap();
        }
        drop(tx);
        let collected = Collected::default();
        runner.run(&sessions, job, &collected, rx).await;
        let (out, err, code) = collected.0.into_inner().unwrap();
        let log = std::fs::read_to_string(dir.path().join("audit/validator-access.jsonl")).unwrap();
        (out, err, code, log)
    }

    #[tokio::test]
    async fn commands_get_stdin_and_their_status_within_the_output_cap_and_time_limit() {
        if crate::cgroup::testing::cgroups().is_none() {
            return;
        }
        let (out, err, code, log) = run("cat; echo oops >&2; exit 3", b"hello").await;
        assert_eq!((out.as_slice(), err.as_slice(), code), (&b"hello"[..], &b"oops\n"[..], Some(3)));
        assert!(log.contains("\"exit_code\":3") && log.contains("\"grant_id\":null"), "{log}");

        let (out, _, code, log) = run("yes", b"").await;
        assert_eq!(out.len(), 1000);
        assert_eq!(code, Some(128 + 9), "killed at the cap");
        assert!(log.contains("\"truncated\":true") && log.contains("\"stdout_bytes\":1000"), "{log}");

        let (_, err, code, log) = run("sleep 30", b"").await;
        assert_eq!(code, Some(124));
        assert_eq!(err, b"executor: command timed out\n");
        assert!(log.contains("\"timed_out\":true"), "{log}");
    }
}
