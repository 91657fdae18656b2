//! The OpenSSH client as tests drive it against our SSH servers: the options every test uses, and
//! a multiplexing master whose connection later `ssh -S` clients share (a channel each).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::process::{CapturedOutput, ProcessSpec};

/// `-i KEY`, no agent keys, no host key checks, no prompts, `-p PORT validator@127.0.0.1`.
pub fn client_args(port: u16, key: &Path) -> Vec<String> {
    client_args_as(port, key, "validator")
}

/// As [`client_args`], logging in as `user` (a renter: the container id).
pub fn client_args_as(port: u16, key: &Path, user: &str) -> Vec<String> {
    let mut args = vec!["-i".to_owned(), key.display().to_string()];
    for option in ["IdentitiesOnly=yes", "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "BatchMode=yes"] {
        args.extend(["-o".to_owned(), option.to_owned()]);
    }
    args.extend(["-p".to_owned(), port.to_string(), format!("{user}@127.0.0.1")]);
    args
}

/// An OpenSSH connection that later `ssh -S` clients share: the master.
#[derive(Debug)]
pub struct Multiplexed {
    key: PathBuf,
    control: PathBuf,
    _master: tokio::process::Child,
}

impl Multiplexed {
    /// Connects to `port` with `key`; the control socket goes in `dir`. Panics when the master
    /// has not connected within 20 s.
    pub async fn connect(port: u16, key: &Path, dir: &Path) -> Self {
        Self::connect_as(port, key, "validator", dir).await
    }

    /// As [`Self::connect`], logging in as `user` (a renter: the container id).
    pub async fn connect_as(port: u16, key: &Path, user: &str, dir: &Path) -> Self {
        let control = dir.join(format!("mux-{}", crate::free_port()));
        let master = ProcessSpec::new("ssh")
            .args(["-M", "-N", "-S"])
            .arg(&control)
            .args(client_args_as(port, key, user))
            .spawn_supervised()
            .expect("start the ssh master");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !control.exists() {
            assert!(Instant::now() < deadline, "the multiplexing master never connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { key: key.to_owned(), control, _master: master }
    }

    fn spec(&self, command: &str) -> ProcessSpec {
        // A refused channel makes ssh fall back to a connection of its own: it is pointed at
        // port 1, where nothing answers, so a refusal stays one.
        ProcessSpec::new("ssh")
            .args(["-o", "ControlMaster=no", "-S"])
            .arg(&self.control)
            .args(client_args(1, &self.key))
            .arg(command)
    }

    /// Runs `command` on a new channel of the master's connection, left running.
    pub fn channel(&self, command: &str) -> tokio::process::Child {
        self.spec(command).spawn_supervised().expect("start an ssh channel")
    }

    /// Runs `command` on a new channel whose output nobody reads, then, once the client's window
    /// is full and the server holds output for it, kills that channel's client: the master
    /// closes the channel with output waiting. Then runs `next` on another channel and returns
    /// what it gave.
    pub async fn abandon_unread_then(&self, command: &str, next: &str) -> CapturedOutput {
        let mut unread = self.channel(command);
        tokio::time::sleep(Duration::from_secs(2)).await;
        unread.kill().await.expect("kill the unread channel's client");
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.output(next).await
    }

    /// Runs `command` on a new channel and waits for it (at most 30 s).
    pub async fn output(&self, command: &str) -> CapturedOutput {
        self.spec(command).output(Duration::from_secs(30), 1 << 16).await.expect("run an ssh channel")
    }
}
