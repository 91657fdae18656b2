//! The one place that starts processes. Every child gets `kill_on_drop`; captured runs get a
//! timeout and an output cap; supervised children also die with their parent (Linux
//! `PR_SET_PDEATHSIG`). `clippy.toml` bans `Command::new` everywhere else.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program}: {source}")]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("{program} did not finish within {timeout:?}")]
    Timeout { program: PathBuf, timeout: Duration },
    #[error("waiting for {program}: {source}")]
    Wait { program: PathBuf, source: std::io::Error },
}

/// What a finished process printed, and how it ended.
#[derive(Debug, Clone)]
pub struct CapturedOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Output beyond the cap was dropped.
    pub truncated: bool,
}

/// A process to run: program, arguments, environment additions, the cgroups it starts in.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    /// Open `cgroup.procs` files the child enters before it execs.
    cgroup_procs: Vec<Arc<OwnedFd>>,
}

impl ProcessSpec {
    pub fn new(program: impl AsRef<Path>) -> Self {
        Self { program: program.as_ref().to_owned(), args: Vec::new(), envs: Vec::new(), cgroup_procs: Vec::new() }
    }

    /// Starts the child inside the cgroups whose `cgroup.procs` files are open in `files` (one
    /// per hierarchy): between fork and exec it writes `0` (itself) to each, so the program and
    /// everything it ever forks live there from their first instruction. A failed write fails
    /// the spawn.
    pub fn in_cgroup(mut self, files: Vec<Arc<OwnedFd>>) -> Self {
        self.cgroup_procs = files;
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    #[allow(clippy::disallowed_methods)] // the one sanctioned place
    fn command(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.program);
        command.args(&self.args).envs(self.envs.iter().map(|(k, v)| (k, v))).kill_on_drop(true);
        if !self.cgroup_procs.is_empty() {
            let files = self.cgroup_procs.clone();
            // SAFETY: the closure runs between fork and exec and only calls write(2), which is
            // async-signal-safe, on descriptors the parent holds open; it allocates nothing
            // and takes no locks.
            #[allow(unsafe_code)]
            unsafe {
                command.pre_exec(move || {
                    for file in &files {
                        nix::unistd::write(file, b"0").map_err(std::io::Error::from)?;
                    }
                    Ok(())
                });
            }
        }
        command
    }

    /// Runs to completion with stdin closed, keeping at most `max_output` bytes of each stream.
    /// The process is killed when `timeout` passes.
    pub async fn output(&self, timeout: Duration, max_output: usize) -> Result<CapturedOutput, ProcessError> {
        self.output_with_input(None, timeout, max_output).await
    }

    /// As [`Self::output`], with `input` written to its stdin (then closed): a batch of
    /// commands for `ip -batch -` or `tc -batch -`.
    pub async fn output_with_input(
        &self,
        input: Option<&[u8]>,
        timeout: Duration,
        max_output: usize,
    ) -> Result<CapturedOutput, ProcessError> {
        use tokio::io::AsyncWriteExt;
        let mut child = self
            .command()
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ProcessError::Spawn { program: self.program.clone(), source })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let run = async {
            let feed = async {
                if let (Some(mut stdin), Some(input)) = (stdin, input) {
                    // A child that exits without reading all of it says why on stderr.
                    let _ = stdin.write_all(input).await;
                }
            };
            let ((), out, err) = tokio::join!(feed, read_capped(stdout, max_output), read_capped(stderr, max_output));
            let status = child.wait().await;
            (status, out, err)
        };
        match tokio::time::timeout(timeout, run).await {
            Ok((status, (stdout, t1), (stderr, t2))) => Ok(CapturedOutput {
                status: status.map_err(|source| ProcessError::Wait { program: self.program.clone(), source })?,
                stdout,
                stderr,
                truncated: t1 || t2,
            }),
            // Dropping `child` kills it (kill_on_drop).
            Err(_) => Err(ProcessError::Timeout { program: self.program.clone(), timeout }),
        }
    }

    /// Starts a child with stdin and stdout piped for a conversation, and stderr inherited so
    /// its diagnostics reach the operator.
    pub fn spawn_piped(&self) -> Result<tokio::process::Child, ProcessError> {
        self.command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| ProcessError::Spawn { program: self.program.clone(), source })
    }

    /// Starts a long-running child with piped stdout and stderr, in its own process group, that
    /// receives SIGTERM if this process dies first.
    pub fn spawn_supervised(&self) -> Result<tokio::process::Child, ProcessError> {
        self.spawn_grouped(Stdio::null())
    }

    /// As [`Self::spawn_supervised`], with stdin piped too: a command a remote user talks to.
    pub fn spawn_interactive(&self) -> Result<tokio::process::Child, ProcessError> {
        self.spawn_grouped(Stdio::piped())
    }

    fn spawn_grouped(&self, stdin: Stdio) -> Result<tokio::process::Child, ProcessError> {
        let mut command = self.command();
        command.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
        // async-signal-safe; it allocates nothing and takes no locks.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        command.spawn().map_err(|source| ProcessError::Spawn { program: self.program.clone(), source })
    }
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(reader: Option<R>, max: usize) -> (Vec<u8>, bool) {
    let Some(mut reader) = reader else { return (Vec::new(), false) };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                // Keep draining so the child never blocks on a full pipe.
                truncated |= n > room;
            }
        }
    }
    (kept, truncated)
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn send_signal(pid: u32, signal: nix::sys::signal::Signal) -> std::io::Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).map_err(std::io::Error::other)?);
    match nix::sys::signal::kill(pid, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sends `signal` to the process group `pgid` (a child started by this module leads its own
/// group, so its pid is the group id); a group that is already gone is not an error.
pub fn signal_group(pgid: u32, signal: nix::sys::signal::Signal) -> std::io::Result<()> {
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(pgid).map_err(std::io::Error::other)?);
    match nix::sys::signal::killpg(pgid, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Describes how a process ended: `exit code 3`, `signal 9 (SIGKILL)`.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => match nix::sys::signal::Signal::try_from(sig) {
            Ok(name) => format!("signal {sig} ({name})"),
            Err(_) => format!("signal {sig}"),
        },
        (None, None) => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn captures_caps_and_times_out() {
        let out = ProcessSpec::new("/bin/sh").args(["-c", "echo hello; echo oops >&2; exit 3"]);
        let out = out.output(Duration::from_secs(5), 1024).await.unwrap();
        assert_eq!(out.stdout, b"hello\n");
        assert_eq!(out.stderr, b"oops\n");
        assert_eq!(describe_exit(out.status), "exit code 3");

        let big = ProcessSpec::new("/bin/sh").args(["-c", "yes | head -c 100000"]);
        let big = big.output(Duration::from_secs(5), 10).await.unwrap();
        assert_eq!(big.stdout.len(), 10);
        assert!(big.truncated && big.status.success());

        let slow = ProcessSpec::new("/bin/sleep").arg("30");
        let err = slow.output(Duration::from_millis(100), 10).await.unwrap_err();
        assert!(matches!(err, ProcessError::Timeout { .. }), "{err}");

        let missing = ProcessSpec::new("/nonexistent/binary").output(Duration::from_secs(1), 10).await;
        assert!(missing.unwrap_err().to_string().contains("/nonexistent/binary"));
    }
}
