//! One executor-api served in process on a 127.0.0.1 port-0 listener, in front of the fakes on
//! Unix sockets in a temporary `runtime_dir`, and a client signing as //Alice (the toolkit's
//! `e2e::ALICE_SEED`), the miner.
//! `container-runtime check` and `gpu-attestor` are shell scripts in the node's binary
//! directory.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::clock::SystemClock;
use common::config::Config;
use common::hotkey::HotkeyPair;
use common::identity::ExecutorIdentity;
use executor_api::api::Api;
use executor_api::auth::{Authenticator, Policy};
use executor_api::client::ExecutorClient;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
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
    /// `[server] max_connections`, when not the default.
    pub(crate) max_connections: Option<u32>,
    /// `[server] max_connections_per_ip`, when not the default.
    pub(crate) max_connections_per_ip: Option<u32>,
    /// `[server] handshake_timeout`, when not the default.
    pub(crate) handshake_timeout: Option<std::time::Duration>,
    /// `[server] max_connection_age`, when not the default.
    pub(crate) max_connection_age: Option<std::time::Duration>,
    /// `[server] auth_failures_per_minute`, when not the default.
    pub(crate) auth_failures_per_minute: Option<u32>,
    /// `[server] max_sessions`, when not the default.
    pub(crate) max_sessions: Option<u32>,
    /// `[server] session_ttl`, when not the default (set directly: shorter than the config
    /// allows, for tests of renewal).
    pub(crate) session_ttl: Option<std::time::Duration>,
    /// The seed of the executor's identity key, which its id derives from.
    pub(crate) identity_seed: [u8; 32],
}

/// The identity seed of a node by default.
pub(crate) const TEST_SEED: [u8; 32] = [7; 32];

/// The id of a node with the default identity.
pub(crate) fn test_id() -> String {
    ExecutorIdentity::from_seed(TEST_SEED).executor_id()
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
            max_connections: None,
            max_connections_per_ip: None,
            handshake_timeout: None,
            max_connection_age: None,
            auth_failures_per_minute: None,
            identity_seed: TEST_SEED,
            max_sessions: None,
            session_ttl: None,
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
    /// Where the public port listens.
    pub(crate) addr: SocketAddr,
    /// Connections `channel` has made.
    connects: Arc<AtomicUsize>,
    pub(crate) executor_id: String,
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
        if let Some(max) = options.max_connections {
            config.server.max_connections = max;
        }
        if let Some(max) = options.max_connections_per_ip {
            config.server.max_connections_per_ip = max;
        }
        if let Some(timeout) = options.handshake_timeout {
            config.server.handshake_timeout = timeout;
        }
        if let Some(age) = options.max_connection_age {
            config.server.max_connection_age = age;
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        config.server.port = addr.port().into();
        let identity = Arc::new(ExecutorIdentity::from_seed(options.identity_seed));
        let executor_id = identity.executor_id();
        let api = Api::new(
            &config,
            executor_id.clone(),
            identity.public_key(),
            &bin,
            dir.path().join("identity.key"),
            dir.path().join("executor.toml"),
        );
        if let Some(max) = options.max_sessions {
            config.server.max_sessions = max;
        }
        if let Some(ttl) = options.session_ttl {
            config.server.session_ttl = ttl;
        }
        if let Some(failures) = options.auth_failures_per_minute {
            config.server.auth_failures_per_minute = failures;
        }
        let policy = Policy { per_minute: options.per_minute, ..Policy::of(alice.hotkey().clone(), identity, &config) };
        let auth = Some(Arc::new(Authenticator::new(policy, Arc::new(SystemClock)).unwrap()));
        let server = config.server.clone();
        let node_config = config.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move { executor_api::serve_public(listener, api, auth, &server, None, stop).await });

        let connects = Arc::new(AtomicUsize::new(0));
        let channel = counted_channel(addr, [127, 0, 0, 1], connects.clone()).await.unwrap();
        let client =
            ExecutorClient::new(channel.clone(), HotkeyPair::parse(e2e::ALICE_SEED).unwrap(), executor_id.as_str());
        Node { fakes, client, channel, alice, addr, connects, executor_id, dir, config: node_config, shutdown }
    }

    /// The HTTP routes of `health_port` (`/health`, `/livez`, `/readyz`) served for this node
    /// on a 127.0.0.1 port-0 listener, as the service serves them; returns the port.
    pub(crate) async fn serve_health(&self) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let probes = executor_api::probes::Probes::new(&self.config);
        let app = executor_api::health_routes(probes, &self.config, self.executor_id.clone());
        let stop = self.shutdown.clone();
        tokio::spawn(common::http::serve(listener, app, "health", common::http::HttpLimits::DEFAULT, stop));
        port
    }

    /// Where the fake prover was told to write its report (the last run's).
    pub(crate) fn report_path(&self) -> std::path::PathBuf {
        std::fs::read_to_string(self.dir.path().join("report-path")).unwrap().into()
    }

    /// A signing client (//Alice) on a connection of its own from the loopback address `source`.
    pub(crate) async fn client_from(&self, source: [u8; 4]) -> Result<ExecutorClient, tonic::transport::Error> {
        let channel = channel_from(self.addr, source).await?;
        Ok(ExecutorClient::new(channel, HotkeyPair::parse(e2e::ALICE_SEED).unwrap(), self.executor_id.as_str()))
    }

    /// How many connections [`Node::channel`] has made so far (1 until the server closes one).
    pub(crate) fn connects(&self) -> usize {
        self.connects.load(Ordering::SeqCst)
    }

    /// A client of the same node signing with `key`.
    pub(crate) fn client_of(&self, key: HotkeyPair) -> ExecutorClient {
        ExecutorClient::new(self.channel.clone(), key, self.executor_id.as_str())
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

/// A TCP connection to `addr` from the loopback address `source` (127.0.0.0/8 is all local,
/// so each address is another peer to the server).
pub(crate) async fn connect_from(addr: SocketAddr, source: [u8; 4]) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(addr).await
}

/// A channel whose connections come from `source`, the first made now.
pub(crate) async fn channel_from(addr: SocketAddr, source: [u8; 4]) -> Result<Channel, tonic::transport::Error> {
    counted_channel(addr, source, Arc::default()).await
}

/// As [`channel_from`], counting the connections made in `connects`.
async fn counted_channel(
    addr: SocketAddr,
    source: [u8; 4],
    connects: Arc<AtomicUsize>,
) -> Result<Channel, tonic::transport::Error> {
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        connects.fetch_add(1, Ordering::SeqCst);
        async move { connect_from(addr, source).await.map(hyper_util::rt::TokioIo::new) }
    });
    Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_with_connector(connector).await
}

/// An executable shell script at `path`.
fn script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
