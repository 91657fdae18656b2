//! The embedded SSH server in process, with the distribution's OpenSSH client: what needs a
//! hand on the grants between two requests of one connection (no reaper runs here, so a grant
//! can end while its connection stays open, as it does between two ticks of the reaper).

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ServiceName;
use common::audit::Audit;
use common::config::ValidatorConfig;
use tokio_util::sync::CancellationToken;
use validator_access::access::{Access, AccessSetup, Provision};
use validator_access::cgroup::{Cgroups, Limits};
use validator_access::command::CommandUser;
use validator_access::grants::{GrantStore, parse_key};

/// The OpenSSH client, and root (commands run in cgroups, as `nobody` through `setpriv`).
fn have_tools() -> bool {
    e2e::require_tool("OpenSSH client (ssh, ssh-keygen)", Path::new("/usr/bin/ssh").exists())
        && e2e::require_tool("root, for cgroups and setpriv", e2e::process::is_root())
}

/// The service's domain and its embedded server on a free loopback port, not strict.
struct Server {
    access: Arc<Access>,
    cgroups: Arc<Cgroups>,
    port: u16,
    shutdown: CancellationToken,
}

impl Server {
    async fn start(dir: &Path) -> Self {
        let mut config = ValidatorConfig { strict_ssh_restrictions: false, ..Default::default() };
        config.access_config.hotkey_verification.enabled = false;
        config.access_config.rate_limits.ssh_requests_per_minute = 1000;
        let (grants, _) = GrantStore::open(dir).unwrap();
        let limits = Limits { memory_bytes: 1 << 30, pids: 256, cpus: 1.0 };
        let cgroups = Arc::new(Cgroups::for_this_process(&format!("test-{}", std::process::id()), limits).unwrap());
        let access = Arc::new(Access::new(AccessSetup {
            config,
            executor_id: "executor-test".into(),
            grants,
            audit: Arc::new(Audit::open(dir, ServiceName::ValidatorAccess).unwrap()),
            user: CommandUser::lookup("validator.command_user", "nobody").unwrap(),
            attestor: PathBuf::from("/nonexistent/gpu-attestor"),
            identity_key: dir.join("identity"),
            sources: Vec::new(),
            cgroups: cgroups.clone(),
            // Refusals are not looked at here: their queue is dropped.
            refusals: validator_access::refusals::RefusalLog::new(1).0,
            clock: Arc::new(common::clock::SystemClock),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let host_key = validator_access::front::embedded::host_key(dir).unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(validator_access::front::embedded::serve(access.clone(), listener, host_key, shutdown.clone()));
        Self { access, cgroups, port, shutdown }
    }

    /// A grant of `ttl_seconds` for the key at `key` (hotkey verification is off here).
    async fn grant(&self, key: &Path, ttl_seconds: u64) {
        let line = e2e::keys::ssh_keygen(key, "validator").await;
        let provision = Provision {
            hotkey: e2e::ALICE.parse().unwrap(),
            public_key: parse_key(&line).unwrap(),
            ttl_seconds,
            challenge_id: String::new(),
            signature: Vec::new(),
        };
        self.access.provision(provision).unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = self.cgroups.close();
    }
}

/// The grant is checked again at each exec request: once it has ended, an open connection runs
/// nothing more, even before the reaper closes it.
#[tokio::test]
async fn an_exec_after_the_grant_ended_is_refused_on_an_open_connection() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let key = dir.path().join("validator");
    server.grant(&key, 2).await;
    let mux = e2e::ssh::Multiplexed::connect(server.port, &key, dir.path()).await;
    let first = mux.output("echo ran").await;
    assert_eq!(e2e::process::stdout(&first), "ran\n", "{}", e2e::process::text(&first));

    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.access.live_grants().is_empty() {
        assert!(Instant::now() < deadline, "the grant never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late = mux.output("echo ran").await;
    let (stdout, stderr) = (e2e::process::stdout(&late), e2e::process::stderr(&late));
    assert_eq!(stdout, "", "a command ran after its grant ended: {stdout}{stderr}");
    assert_eq!(late.status.code(), Some(126), "{stderr}");
    assert!(stderr.contains("grant"), "{stderr}");
}
