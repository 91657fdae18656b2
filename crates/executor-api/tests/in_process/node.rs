//! One executor-api served in process on a 127.0.0.1 port-0 listener, in front of the fakes on
//! Unix sockets in a temporary `runtime_dir`, and a client signing as //Alice (the toolkit's
//! `e2e::ALICE_SEED`), the miner.
//! `container-runtime check` and `gpu-attestor` are shell scripts in the node's binary
//! directory.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use common::clock::SystemClock;
use common::config::Config;
use common::hotkey::HotkeyPair;
use executor_api::api::Api;
use executor_api::auth::Authenticator;
use executor_api::client::ExecutorClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::fakes::Fakes;

/// `container-runtime check` on a host whose engine answers.
const CHECKS_UP: &str = r#"{"name":"docker","status":"pass","detail":"engine 27.1.1 at unix:///var/run/docker.sock, API 1.46"}
{"name":"docker cgroups","status":"pass","detail":"driver systemd, cgroup v2"}
{"name":"nvidia runtime","status":"skip","detail":"not registered; docker.enable_gpu_passthrough = false"}"#;
/// `container-runtime check` on a host whose engine does not answer.
const CHECKS_DOWN: &str =
    r#"{"name":"docker","status":"fail","detail":"Docker engine at unix:///var/run/docker.sock: connection refused"}"#;
/// A prover that writes its arguments as its report, after `ATTESTOR_SECONDS` (0 unless a
/// test asks for a slow one), and says where the report goes in `<bin>/../report-path`.
const ATTESTOR: &str = r#"#!/bin/sh
args="$*"
while [ $# -gt 0 ]; do
  [ "$1" = --report ] && report="$2"
  shift
done
printf '%s' "$report" > "$(dirname "$0")/../report-path"
sleep ATTESTOR_SECONDS
printf '{"fake":true,"argv":"%s"}' "$args" > "$report"
"#;

/// How a test node differs from the usual one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// `api_requests_per_minute`.
    pub(crate) per_minute: u32,
    /// `[validator] enabled`.
    pub(crate) validator: bool,
    /// Whether gpu-monitor serves at all.
    pub(crate) gpu_monitor: bool,
    /// Whether the Docker engine answers container-runtime's checks.
    pub(crate) docker_up: bool,
    /// `[server] request_timeout`, when not the default.
    pub(crate) request_timeout: Option<std::time::Duration>,
    /// Seconds the fake prover takes.
    pub(crate) attestor_seconds: u32,
    /// Seconds `container-runtime check` (SystemProfile's Docker facts) takes.
    pub(crate) checks_seconds: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            per_minute: 1000,
            validator: true,
            gpu_monitor: true,
            docker_up: true,
            request_timeout: None,
            attestor_seconds: 0,
            checks_seconds: 0,
        }
    }
}

/// A served node; everything stops when it is dropped.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) fakes: Fakes,
    /// Signs as //Alice.
    pub(crate) client: ExecutorClient,
    /// The same connection, for unsigned or hand-signed calls.
    pub(crate) channel: Channel,
    pub(crate) alice: HotkeyPair,
    dir: tempfile::TempDir,
    config: Config,
    shutdown: CancellationToken,
}

impl Node {
    pub(crate) async fn start() -> Node {
        Self::with(Options::default()).await
    }

    pub(crate) async fn with(options: Options) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let checks = if options.docker_up { CHECKS_UP } else { CHECKS_DOWN };
        let pause = options.checks_seconds;
        script(&bin.join("container-runtime"), &format!("#!/bin/sh\nsleep {pause}\ncat <<'EOF'\n{checks}\nEOF\n"));
        script(&bin.join("gpu-attestor"), &ATTESTOR.replace("ATTESTOR_SECONDS", &options.attestor_seconds.to_string()));

        let shutdown = CancellationToken::new();
        let runtime_dir = dir.path().join("run");
        let fakes = Fakes::default();
        fakes.serve(&runtime_dir, options.gpu_monitor, &shutdown).await;

        let alice = HotkeyPair::parse(e2e::ALICE_SEED).unwrap();
        let mut config = Config {
            runtime_dir,
            data_dir: dir.path().join("data"),
            managing_miner_hotkey: Some(alice.hotkey().clone()),
            ..Config::default()
        };
        config.validator.enabled = options.validator;
        if let Some(timeout) = options.request_timeout {
            config.server.request_timeout = timeout;
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        config.server.port = addr.port().into();
        let api = Api::new(
            &config,
            "executor-test".into(),
            [7; 32],
            &bin,
            dir.path().join("identity.key"),
            dir.path().join("executor.toml"),
        );
        let window = config.server.auth_time_window;
        let auth = Authenticator::new(alice.hotkey().clone(), window, options.per_minute, Arc::new(SystemClock));
        let auth = Some(Arc::new(auth.unwrap()));
        let server = config.server.clone();
        let node_config = config.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move { executor_api::serve_public(listener, api, auth, &server, None, stop).await });

        let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let client = ExecutorClient::new(channel.clone(), HotkeyPair::parse(e2e::ALICE_SEED).unwrap());
        Node { fakes, client, channel, alice, dir, config: node_config, shutdown }
    }

    /// The HTTP routes of `health_port` (`/health`, `/livez`, `/readyz`) served for this node
    /// on a 127.0.0.1 port-0 listener; returns the port.
    pub(crate) async fn serve_health(&self) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let probes = executor_api::probes::Probes::new(&self.config);
        let app = executor_api::health_routes(probes, &self.config, "executor-test".into());
        let stop = self.shutdown.clone();
        tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await });
        port
    }

    /// Where the fake prover was told to write its report (the last run's).
    pub(crate) fn report_path(&self) -> std::path::PathBuf {
        std::fs::read_to_string(self.dir.path().join("report-path")).unwrap().into()
    }

    /// A client of the same node signing with `key`.
    pub(crate) fn client_of(&self, key: HotkeyPair) -> ExecutorClient {
        ExecutorClient::new(self.channel.clone(), key)
    }

    /// The generated client, unsigned.
    pub(crate) fn raw(&self) -> common::proto::api::v1::executor_api_client::ExecutorApiClient<Channel> {
        self.client.raw()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An executable shell script at `path`.
fn script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
