//! The test toolkit every test uses (the crate's tests, the other crates' integration tests,
//! xtask): a config in a temporary directory with free ports, the real `executor` launcher from
//! `target/<profile>/` driven the way operators do (control socket, HTTP health, metrics,
//! signals); `keys` (the well-known test keys), `process` (run and capture, output as text),
//! `sshd` (the distribution's sshd as a fixture), `ssh` (the OpenSSH client's options and a
//! multiplexing master), `runtime` and `registry` (Docker helpers).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use common::ServiceName;
use common::process::{CapturedOutput, ProcessSpec, send_signal};
use common::proto::launcher::v1::{ServiceState, StatusResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `target/<profile>`, where cargo put the binaries of the workspace.
pub fn bin_dir() -> PathBuf {
    // This test binary is target/<profile>/deps/<name>-<hash>.
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_owned()
}

/// Path of a workspace binary, which must have been built (`cargo build --workspace`).
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.is_file(), "{} missing: run `cargo build --workspace` first", path.display());
    path
}

/// A port nobody listens on right now.
/// The first of `n` (at most 100) consecutive ports for a test of its own to publish on, from
/// 10000 to 19999 (below the nodes' blocks, see [`Ports::free`]), chosen by process id.
pub fn free_block(n: u16) -> u16 {
    assert!(n <= 100);
    10000 + (std::process::id() % 100) as u16 * 100
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// The ports one node listens on.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub grpc: u16,
    pub health: u16,
    pub ssh: u16,
    /// `[tenant_access] ssh_port`.
    pub tenant_ssh: u16,
    pub metrics: [u16; 5],
    /// The first of the node's [`POOL_PORTS`] published ports (`[docker.ports] ranges`).
    pub pool: u16,
}

/// Host ports each test node's containers may publish: nodes of tests running at once share
/// one Docker engine, so each gets its own block, chosen by process id (nextest runs each test
/// in a process of its own) and a counter.
pub const POOL_PORTS: u16 = 16;

impl Ports {
    /// Nine distinct free ports: all are held until all are chosen, so none repeats.
    pub fn free() -> Self {
        let held: Vec<TcpListener> = (0..9).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
        let p: Vec<u16> = held.iter().map(|l| l.local_addr().expect("addr").port()).collect();
        static NODES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NODES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // 750 blocks from 20000 up, below the kernel's ephemeral ports (32768 on), where the
        // listeners of tests take theirs.
        let block = (std::process::id().wrapping_mul(7).wrapping_add(n)) % 750;
        let pool = 20000 + (block as u16) * POOL_PORTS;
        Self { grpc: p[0], health: p[1], ssh: p[2], tenant_ssh: p[8], metrics: [p[3], p[4], p[5], p[6], p[7]], pool }
    }

    pub fn launcher_metrics(&self) -> u16 {
        self.metrics[4]
    }
}

/// A config file in a fresh directory: loopback, free ports, no GPU, fast restarts.
/// `launcher_extra` is appended after the `[launcher]` keys (`{dir}` stands for the directory);
/// it may add `[launcher]` keys not written here, or new tables.
#[derive(Debug)]
pub struct TestConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub ports: Ports,
}

pub use keys::{ALICE, ALICE_SEED};

impl TestConfig {
    pub fn new(launcher_extra: &str) -> Self {
        Self::with_system("enable_gpu_monitoring = false", launcher_extra)
    }

    /// As [`TestConfig::new`] with `system` as the body of `[system]` (`{dir}` stands for the
    /// directory there too).
    pub fn with_system(system: &str, launcher_extra: &str) -> Self {
        Self::build(system, "", launcher_extra)
    }

    /// As [`TestConfig::new`] with `tenant_access` added to the body of `[tenant_access]`.
    pub fn with_tenant_access(tenant_access: &str, launcher_extra: &str) -> Self {
        Self::build("enable_gpu_monitoring = false", tenant_access, launcher_extra)
    }

    /// As [`TestConfig::new`] with `ports` as the body of `[docker.ports]`; where it has no
    /// `ranges` the node's own block of host ports is added, and `external_host = "127.0.0.1"`
    /// where it names none.
    pub fn with_ports(ports: &str, launcher_extra: &str) -> Self {
        Self::build_with("enable_gpu_monitoring = false", "", ports, launcher_extra)
    }

    fn build(system: &str, tenant_access: &str, launcher_extra: &str) -> Self {
        Self::build_with(system, tenant_access, "", launcher_extra)
    }

    fn build_with(system: &str, tenant_access: &str, docker_ports: &str, launcher_extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = Ports::free();
        let p = ports;
        let text = format!(
            r#"managing_miner_hotkey = "{ALICE}"
data_dir = "{data}"
runtime_dir = "{run}"

[server]
host = "127.0.0.1"
port = {grpc}
health_port = {health}

[system]
{system}

[validator]
ssh_port = {ssh}

[tenant_access]
ssh_port = {tenant_ssh}
{tenant_access}

[docker.ports]
{docker_ports}

[metrics]
host = "127.0.0.1"
executor_api_port = {m0}
container_runtime_port = {m1}
gpu_monitor_port = {m2}
validator_access_port = {m3}
launcher_port = {m4}

[launcher]
restart_backoff_initial = "100ms"
restart_backoff_max = "1s"
health_check_interval = "500ms"
shutdown_timeout = "5s"
{launcher_extra}
"#,
            data = dir.path().join("data").display(),
            run = dir.path().join("run").display(),
            grpc = p.grpc,
            health = p.health,
            ssh = p.ssh,
            tenant_ssh = p.tenant_ssh,
            // The defaults first: `docker_ports` may end in a table of its own (`[[docker.ports.nat]]`).
            docker_ports = {
                let mut body = String::new();
                if !docker_ports.contains("ranges") {
                    body.push_str(&format!("ranges = [\"{}-{}\"]\n", p.pool, p.pool + POOL_PORTS - 1));
                }
                if !docker_ports.contains("external_host") {
                    body.push_str("external_host = \"127.0.0.1\"\n");
                }
                body + docker_ports
            },
            m0 = p.metrics[0],
            m1 = p.metrics[1],
            m2 = p.metrics[2],
            m3 = p.metrics[3],
            m4 = p.metrics[4],
            system = system.replace("{dir}", &dir.path().display().to_string()),
            launcher_extra = launcher_extra.replace("{dir}", &dir.path().display().to_string()),
        );
        let path = dir.path().join("executor.toml");
        std::fs::write(&path, text).expect("write config");
        Self { dir, path, ports }
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The `docker --filter` that picks the containers and networks of the node this config
    /// made, once the node has made its identity.
    pub fn executor_filter(&self) -> Option<String> {
        self.executor_id().map(|id| filter(EXECUTOR_LABEL, &id))
    }

    /// The `docker --filter` that picks the network holders of the node this config made
    /// (`container_runtime::holder::LABEL_HOLDER_OF`).
    pub fn holder_filter(&self) -> Option<String> {
        self.executor_id().map(|id| filter(HOLDER_LABEL, &id))
    }

    /// The executor id of the node this config made, once it has made its identity.
    fn executor_id(&self) -> Option<String> {
        let key = self.dir.path().join("data").join(common::identity::IDENTITY_FILE);
        Some(common::identity::ExecutorIdentity::load(&key).ok()?.executor_id())
    }
}

/// The `docker --filter` for the things whose label `key` is `executor_id`.
fn filter(key: &str, executor_id: &str) -> String {
    format!("label={key}={executor_id}")
}

/// The label a network holder carries its node's executor id in.
pub const HOLDER_LABEL: &str = "ai.basilica.executor.holder_of";

/// The label the node's containers and networks carry its executor id in
/// (`container_runtime::labels::LABEL_EXECUTOR`, which this crate does not link).
pub const EXECUTOR_LABEL: &str = "ai.basilica.executor.executor_id";

impl Drop for TestConfig {
    /// Removes the Docker containers and networks of the node this config made, if it made
    /// one: once its directory (its identity and records) is gone no node adopts or reaps
    /// them, and networks left by nodes a test killed would use up the engine's address pools
    /// run after run on a developer's machine. Waited for (on a thread of its own, as a drop
    /// cannot await), so a test's process does not end before they are removed.
    fn drop(&mut self) {
        let Some(id) = self.executor_id() else { return };
        let (label, holders) = (filter(EXECUTOR_LABEL, &id), filter(HOLDER_LABEL, &id));
        let script = "docker ps -aq --filter \"$1\" | xargs -r docker rm -f; \
                      docker ps -aq --filter \"$2\" | xargs -r docker rm -f; \
                      docker network ls -q --filter \"$1\" | xargs -r docker network rm";
        let remove = ProcessSpec::new("sh").args(["-c", script, "sh", &label, &holders]);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(remove.output(Duration::from_secs(60), 1 << 16)).map_err(std::io::Error::other)
        })
        .join();
    }
}

/// Tests run container-runtime without spare networks (a config override from the
/// environment): a test that fails half-way, or a service killed with SIGKILL, would leave
/// them behind, and a host has room for only a few dozen bridge networks. The pool has a test
/// of its own that stops the service properly.
pub const NO_SPARE_NETWORKS: (&str, &str) = ("EXECUTOR_DOCKER__NETWORK_CONFIG__SPARE_NETWORKS", "0");

/// A running `executor --server`.
#[derive(Debug)]
pub struct Node {
    pub config: TestConfig,
    pub child: tokio::process::Child,
    output: tokio::task::JoinHandle<Vec<u8>>,
}

impl Node {
    /// Starts the launcher and waits until it and every service report SERVING.
    pub async fn start(config: TestConfig) -> Self {
        Self::start_from(&bin_dir(), config).await
    }

    /// As [`Node::start`], with the binaries in `bin` (e.g. `target/release`).
    pub async fn start_from(bin: &Path, config: TestConfig) -> Self {
        let spec = ProcessSpec::new(bin.join("executor"))
            .arg("--server")
            .arg("--config")
            .arg(&config.path)
            .env(NO_SPARE_NETWORKS.0, NO_SPARE_NETWORKS.1);
        let mut child = spec.spawn_supervised().expect("start executor");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let output = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            out.extend_from_slice(&err);
            out
        });
        let mut node = Self { config, child, output };
        // The launcher itself reports SERVING only once every service does.
        let socket = ServiceName::Launcher.socket(&node.config.runtime_dir());
        if let Err(e) = wait_serving(&socket, Duration::from_secs(30)).await {
            let _ = node.child.start_kill();
            let (_, output) = node.wait(Duration::from_secs(10)).await;
            panic!("{e}\n{output}");
        }
        node
    }

    /// The launcher's status, or why there is none.
    pub async fn status(&self) -> Result<StatusResponse, NotServing> {
        executor_status(&self.config.runtime_dir()).await
    }

    /// Polls the status until `pred` holds; panics with the last status after `timeout`.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&StatusResponse) -> bool) -> StatusResponse {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status().await;
            if let Ok(s) = &status
                && pred(s)
            {
                return s.clone();
            }
            assert!(Instant::now() < deadline, "condition not reached within {timeout:?}; last status: {status:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("launcher running")
    }

    /// Sends `signal` to the launcher and returns its exit status and everything it printed.
    pub async fn stop_with(&mut self, signal: nix::sys::signal::Signal, timeout: Duration) -> (ExitStatus, String) {
        send_signal(self.pid(), signal).expect("signal launcher");
        self.wait(timeout).await
    }

    /// Waits for the launcher to exit on its own.
    pub async fn wait(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("launcher did not exit within {timeout:?}"))
            .expect("wait launcher");
        let output = (&mut self.output).await.expect("output");
        (status, String::from_utf8_lossy(&output).into_owned())
    }
}

/// Why a server or the launcher did not answer as a test expected.
#[derive(Debug, thiserror::Error)]
pub enum NotServing {
    #[error("{socket} not SERVING within {timeout:?}: {last}")]
    Health { socket: PathBuf, timeout: Duration, last: String },
    #[error("launcher status: {0}")]
    Status(String),
    #[error("launcher status: no answer within 2 s")]
    Timeout,
}

/// Polls the server on `socket` every 2 ms until it reports SERVING.
pub async fn wait_serving(socket: &Path, timeout: Duration) -> Result<(), NotServing> {
    let channel = common::grpc::unix_channel(socket);
    let deadline = Instant::now() + timeout;
    loop {
        let status = common::grpc::check_health(channel.clone(), "", Duration::from_secs(1)).await;
        if let Ok(tonic_health::ServingStatus::Serving) = status {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(NotServing::Health { socket: socket.to_owned(), timeout, last: format!("{status:?}") });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub fn all_serving(status: &StatusResponse) -> bool {
    !status.services.is_empty() && status.services.iter().all(|s| s.state() == ServiceState::Serving)
}

/// The launcher's status over its control socket.
pub async fn executor_status(runtime_dir: &Path) -> Result<StatusResponse, NotServing> {
    use common::proto::launcher::v1::StatusRequest;
    use common::proto::launcher::v1::launcher_client::LauncherClient;
    let channel = common::grpc::unix_channel(&ServiceName::Launcher.socket(runtime_dir));
    let mut client = LauncherClient::new(channel);
    let call = client.status(StatusRequest {});
    match tokio::time::timeout(Duration::from_secs(2), call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(NotServing::Status(status.message().to_owned())),
        Err(_) => Err(NotServing::Timeout),
    }
}

/// Runs a workspace binary to completion.
pub async fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> CapturedOutput {
    let mut spec = ProcessSpec::new(binary(name)).args(args.iter().copied());
    for (k, v) in env {
        spec = spec.env(k, v);
    }
    spec.output(Duration::from_secs(60), 1 << 20).await.expect("run binary")
}

/// The value of the first line of a Prometheus text page that starts with `prefix` (a metric
/// name, with its labels where they tell series apart); 0 when there is none.
pub fn metric_value(text: &str, prefix: &str) -> f64 {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

/// A minimal HTTP/1.1 GET: status code and body.
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("HTTP timeout"))??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((code, body))
}

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Skips a test that needs `tool` when it is missing, unless `REQUIRE_TEST_TOOLS` (set by
/// `make test`) says everything must be there; then a missing tool fails the test.
pub fn require_tool(tool: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if std::env::var_os("REQUIRE_TEST_TOOLS").is_some() {
        panic!("{tool} is required (REQUIRE_TEST_TOOLS is set) but not available");
    }
    eprintln!("SKIPPED: {tool} is not available on this machine; `make test` installs it");
    false
}

/// The Docker engine answers on its default socket.
pub fn docker_available() -> bool {
    std::os::unix::net::UnixStream::connect("/var/run/docker.sock").is_ok()
}

/// The test image, built from the distribution's busybox-static (nothing can be pulled here).
pub const BUSYBOX_IMAGE: &str = "basilica-test/busybox:latest";

/// Builds [`BUSYBOX_IMAGE`]; false (with a printed reason) when Docker or busybox-static is
/// missing and `make test` is not running, which would make it a failure.
pub async fn busybox_image() -> bool {
    let busybox = Path::new("/bin/busybox");
    if !require_tool("Docker engine and busybox-static", docker_available() && busybox.exists()) {
        return false;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(busybox, dir.path().join("busybox")).expect("copy busybox");
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"/bin/sh\"]\n",
    )
    .expect("Dockerfile");
    let out = ProcessSpec::new("docker")
        .args(["build", "-q", "-t", BUSYBOX_IMAGE])
        .arg(dir.path())
        .output(Duration::from_secs(300), 1 << 20)
        .await
        .expect("docker build");
    assert!(out.status.success(), "docker build: {}", String::from_utf8_lossy(&out.stderr));
    true
}

/// Builds `tag` from [`BUSYBOX_IMAGE`] and `dockerfile` (instructions after its `FROM`): an
/// image that sets what a tenant's image could (`ENV`, `LABEL`). Call after [`busybox_image`].
pub async fn derived_image(tag: &str, dockerfile: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("Dockerfile"), format!("FROM {BUSYBOX_IMAGE}\n{dockerfile}\n")).expect("Dockerfile");
    let out = ProcessSpec::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(dir.path())
        .output(Duration::from_secs(300), 1 << 20)
        .await
        .expect("docker build");
    assert!(out.status.success(), "docker build: {}", String::from_utf8_lossy(&out.stderr));
}

pub mod engine;
pub mod hostile_registry;
pub mod keys;
pub mod lan;
pub mod process;
pub mod registry;
pub mod ssh;
pub mod sshd;

/// Helpers for tests of container-runtime as a process on its socket.
pub mod runtime {
    use std::time::Duration;

    use common::ServiceName;
    use common::process::ProcessSpec;
    use common::proto::runtime::v1 as pb;
    use common::proto::runtime::v1::container_runtime_client::ContainerRuntimeClient;
    use tonic::transport::Channel;

    use crate::{BUSYBOX_IMAGE, TestConfig, wait_serving};

    pub type Client = ContainerRuntimeClient<Channel>;

    /// Starts the container-runtime binary on `config` and waits until it is SERVING.
    pub async fn start_service(config: &TestConfig) -> (tokio::process::Child, Client) {
        let child = ProcessSpec::new(crate::binary("container-runtime"))
            .arg("--config")
            .arg(&config.path)
            .env(crate::NO_SPARE_NETWORKS.0, crate::NO_SPARE_NETWORKS.1)
            .spawn_supervised()
            .expect("start container-runtime");
        let socket = ServiceName::ContainerRuntime.socket(&config.runtime_dir());
        wait_serving(&socket, Duration::from_secs(30)).await.expect("container-runtime serving");
        (child, ContainerRuntimeClient::new(common::grpc::unix_channel(&socket)))
    }

    /// A create request for the test image running `sh -c command`, small limits, a TTL.
    pub fn request(command: &str) -> pb::CreateContainerRequest {
        pb::CreateContainerRequest {
            image: BUSYBOX_IMAGE.into(),
            command: vec!["sh".into(), "-c".into(), command.into()],
            resources: Some(pb::ResourceRequest { memory_bytes: 64 << 20, cpu_cores: 0.5, ..Default::default() }),
            owner: crate::ALICE.into(),
            ttl_seconds: 600,
            ..Default::default()
        }
    }

    /// Waits until container `id` is in `want`, `within` at most (then panics naming it).
    pub async fn wait_state(client: &mut Client, id: &str, want: pb::ContainerState, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let state = client.get(pb::ContainerRef { id: id.into() }).await.map(|r| r.into_inner().state);
            if state.as_ref().is_ok_and(|s| *s == want as i32) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{id} not {want:?} within {within:?}: {state:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates and starts `request`.
    pub async fn run(client: &mut Client, request: pb::CreateContainerRequest) -> pb::Container {
        let created = client.create(request).await.expect("create").into_inner();
        client.start(pb::ContainerRef { id: created.id.clone() }).await.expect("start").into_inner()
    }

    /// `sh -c script` inside container `id` (20 s at most).
    pub async fn exec(client: &mut Client, id: &str, script: &str) -> pb::ExecResponse {
        let request = pb::ExecRequest {
            id: id.to_owned(),
            command: vec!["sh".into(), "-c".into(), script.to_owned()],
            timeout_seconds: 20,
            max_output_bytes: 0,
        };
        client.exec(request).await.expect("exec").into_inner()
    }

    /// Removes every container of this service.
    pub async fn remove_all(client: &mut Client) {
        let all = client.list(pb::ListContainersRequest { all: true, owner: String::new() }).await.expect("list");
        for c in all.into_inner().containers {
            client.remove(pb::RemoveContainerRequest { id: c.id, force: true }).await.expect("remove");
        }
    }

    /// Runs `docker args...`: (success, stdout trimmed).
    pub async fn docker(args: &[&str]) -> (bool, String) {
        let out = ProcessSpec::new("docker")
            .args(args.iter().copied())
            .output(Duration::from_secs(120), 1 << 20)
            .await
            .expect("docker");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// What a TCP client on this host reads from `port`, asked until it says something (10 s
    /// at most: a container just started may not listen yet).
    pub async fn greeting(port: u32) -> String {
        use tokio::io::AsyncReadExt;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let read = async {
                let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port as u16)).await?;
                let mut text = String::new();
                stream.read_to_string(&mut text).await?;
                Ok::<_, std::io::Error>(text.trim().to_owned())
            };
            let answer = tokio::time::timeout(Duration::from_secs(3), read).await;
            match answer {
                Ok(Ok(text)) if !text.is_empty() => return text,
                _ if std::time::Instant::now() > deadline => return format!("nothing within 10 s: {answer:?}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The IFB device that carries a container's upload shaping (`bif-` + the id's last 11).
    pub fn ifb_name(id: &str) -> String {
        format!("bif-{}", &id[id.len().saturating_sub(11)..])
    }

    /// `docker inspect -f format id`.
    pub async fn inspect(id: &str, format: &str) -> String {
        docker(&["inspect", "-f", format, id]).await.1
    }
}
