//! The distribution's OpenSSH server on a free loopback port, with its own host key: the
//! baseline of `bench-ssh`, the host `deploy.sh` deploys to, and the sshd of system-sshd mode.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::process::ProcessSpec;

/// A running `sshd -D` that is killed when dropped; its log goes to `sshd.log` in its directory.
#[derive(Debug)]
pub struct Sshd {
    pub port: u16,
    pub config: PathBuf,
    child: tokio::process::Child,
}

impl Sshd {
    /// Starts sshd in `dir` with `authorized_keys` for its users and `extra` lines appended to
    /// its config (e.g. `AllowUsers nobody`, `PermitRootLogin prohibit-password`); returns once
    /// it accepts connections.
    pub async fn start(dir: &Path, authorized_keys: &Path, extra: &str) -> Self {
        let host_key = dir.join("sshd_host_key");
        crate::keys::ssh_keygen(&host_key, "sshd host key").await;
        std::fs::create_dir_all("/run/sshd").expect("sshd privilege separation directory");
        let port = crate::free_port();
        let config = dir.join("sshd_config");
        let text = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\nUsePAM no\n\
             StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n{extra}\n",
            host_key.display(),
            authorized_keys.display(),
            dir.join("sshd.pid").display()
        );
        std::fs::write(&config, text).expect("sshd_config");
        let mut child = ProcessSpec::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .spawn_supervised()
            .expect("start /usr/sbin/sshd");
        // Drained, so a chatty sshd never blocks on a full pipe.
        let log = tokio::fs::File::create(dir.join("sshd.log")).await.expect("sshd.log");
        if let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) {
            let mut log_out = log.try_clone().await.expect("sshd.log");
            let mut log_err = log;
            tokio::spawn(async move { tokio::io::copy(&mut out, &mut log_out).await });
            tokio::spawn(async move { tokio::io::copy(&mut err, &mut log_err).await });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { port, config, child }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
