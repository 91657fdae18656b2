//! Packaging and deployment: the systemd unit, the release tarball, `deploy.sh` against a real
//! `sshd`, and the monitoring files against a real Prometheus.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::{CapturedOutput, ProcessSpec};
use e2e::process::{capture as run, text, which};
use e2e::sshd::Sshd;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// `systemd-analyze verify` in a root of its own holding the unit, the executor at its
/// installed path and the distribution's system units: no errors and no warnings at all.
#[tokio::test]
async fn systemd_unit_verifies() {
    if !e2e::require_tool("systemd-analyze", which("systemd-analyze")) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for dir in ["opt/basilica/bin", "etc/systemd/system", "usr/bin", "usr/lib/systemd"] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
    std::fs::copy(e2e::binary("executor"), r.join("opt/basilica/bin/executor")).unwrap();
    std::fs::copy("/usr/bin/kill", r.join("usr/bin/kill")).unwrap();
    let units = run(
        ProcessSpec::new("cp").args(["-r", "/usr/lib/systemd/system"]).arg(r.join("usr/lib/systemd")),
        Duration::from_secs(30),
    )
    .await;
    assert!(units.status.success(), "{}", text(&units));
    let unit = repo().join("deploy/systemd/basilica-executor.service");
    std::fs::copy(&unit, r.join("etc/systemd/system/basilica-executor.service")).unwrap();
    let verify = ProcessSpec::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", r.display()))
        .arg("basilica-executor.service");
    let out = run(verify, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).trim(), "", "systemd-analyze verify has something to say");

    // What the launcher handles is what the unit sends.
    let unit = std::fs::read_to_string(&unit).unwrap();
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"), "{unit}");
    assert!(unit.contains("ExecStart=/opt/basilica/bin/executor --server --config /opt/basilica/config/executor.toml"));
    assert!(unit.contains("RuntimeDirectory=basilica"));
    // System-sshd mode writes its authorized_keys file and the gate socket beside it (default
    // under /etc), which ProtectSystem=full makes read-only unless the unit opens that directory
    // (issue 17 item 6).
    let keys = common::config::Config::default().validator.authorized_keys_file;
    let keys_dir = keys.parent().unwrap().display().to_string();
    assert!(unit.lines().any(|l| l == format!("ReadWritePaths={keys_dir}")), "{keys_dir} is read-only:\n{unit}");
    assert!(unit.lines().any(|l| l == format!("ConfigurationDirectory={}", keys_dir.trim_start_matches("/etc/"))));

    // validator-access makes a cgroup per validator command below the unit's, and the unit
    // bounds the whole node (issue 17 items 2 and 3).
    for line in ["Delegate=yes", "MemoryMax=16G", "TasksMax=16384"] {
        assert!(unit.lines().any(|l| l == line), "no {line}:\n{unit}");
    }

    // A mistyped key is caught by the same check (the test would notice a silent verifier).
    let broken = unit.replace("NoNewPrivileges=", "NoNewPrivilege=");
    std::fs::write(r.join("etc/systemd/system/basilica-executor.service"), broken).unwrap();
    let verify = ProcessSpec::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", r.display()))
        .arg("basilica-executor.service");
    let out = run(verify, Duration::from_secs(60)).await;
    assert!(text(&out).contains("Unknown key 'NoNewPrivilege'"), "{}", text(&out));
}

/// `cargo xtask dist --out DIR`: the release tarball (one release build, cached afterwards).
async fn dist(out: &Path) -> PathBuf {
    let spec = e2e::process::cargo()
        .args(["run", "--quiet", "--package", "xtask", "--manifest-path"])
        .arg(repo().join("Cargo.toml"))
        .args(["--", "dist", "--out"])
        .arg(out);
    let out = run(spec, Duration::from_secs(1800)).await;
    assert!(out.status.success(), "cargo xtask dist: {}", text(&out));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

const BINARIES: [&str; 6] =
    ["executor", "executor-api", "container-runtime", "gpu-monitor", "validator-access", "gpu-attestor"];

/// Two builds of the tarball into different directories, seconds apart: the same bytes; the
/// entries are sorted, owned by 0:0, complete, checksummed, and the binaries are stripped.
#[tokio::test]
async fn dist_tarball_is_complete_and_reproducible() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = dist(a.path()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = dist(b.path()).await;
    let name = first.file_name().unwrap().to_str().unwrap().to_owned();
    assert_eq!(name, format!("executor-{}-x86_64-linux.tar.gz", common::VERSION));
    assert_eq!(second.file_name().unwrap().to_str().unwrap(), name);
    let sum = sha256(&first);
    assert_eq!(sum, sha256(&second), "two builds of the same sources differ");
    let sidecar = std::fs::read_to_string(a.path().join(format!("{name}.sha256"))).unwrap();
    assert_eq!(sidecar, format!("{sum}  {name}\n"));

    let list = run(ProcessSpec::new("tar").args(["-tvzf"]).arg(&first), Duration::from_secs(60)).await;
    assert!(list.status.success(), "{}", text(&list));
    let listing = String::from_utf8_lossy(&list.stdout).into_owned();
    let top = name.trim_end_matches(".tar.gz");
    let paths: Vec<&str> = listing.lines().map(|l| l.rsplit(' ').next().unwrap()).collect();
    let mut sorted = paths.clone();
    sorted.sort_unstable();
    assert_eq!(paths, sorted, "entries are not sorted");
    for line in listing.lines() {
        assert!(line.contains(" 0/0 "), "not owned by 0/0: {line}");
    }
    let mut expected: Vec<String> = BINARIES.iter().map(|b| format!("{top}/bin/{b}")).collect();
    for file in [
        "SHA256SUMS",
        "config/executor.correct.toml",
        "deploy.sh",
        "docs/executor.md",
        "systemd/basilica-executor.service",
    ] {
        expected.push(format!("{top}/{file}"));
    }
    for path in &expected {
        assert!(paths.contains(&path.as_str()), "{path} missing from\n{listing}");
    }

    let unpacked = tempfile::tempdir().unwrap();
    let x = ProcessSpec::new("tar").arg("-xzf").arg(&first).arg("-C").arg(unpacked.path());
    assert!(run(x, Duration::from_secs(60)).await.status.success());
    let dir = unpacked.path().join(top);
    let check = ProcessSpec::new("env").arg("--chdir").arg(&dir).args(["sha256sum", "--strict", "-c", "SHA256SUMS"]);
    let out = run(check, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), expected.len() - 1);
    for binary in BINARIES {
        let sections =
            run(ProcessSpec::new("readelf").arg("-S").arg(dir.join("bin").join(binary)), Duration::from_secs(30)).await;
        let sections = text(&sections);
        assert!(sections.contains(".text") && !sections.contains(".symtab"), "{binary} is not stripped");
        // Nor does it depend on where the sources were checked out.
        let bytes = std::fs::read(dir.join("bin").join(binary)).unwrap();
        let checkout = repo().display().to_string();
        assert!(!bytes.windows(checkout.len()).any(|w| w == checkout.as_bytes()), "{binary} contains {checkout}");
    }
    // The executor's attestor is the prover only: the validator's `check` is not in it.
    let check =
        run(ProcessSpec::new(dir.join("bin/gpu-attestor")).args(["check", "--ssh", "true"]), Duration::from_secs(30))
            .await;
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    assert!(text(&check).contains("unrecognized subcommand 'check'"), "{}", text(&check));
    let version = run(ProcessSpec::new(dir.join("bin/executor")).arg("--version"), Duration::from_secs(30)).await;
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("executor {}", common::VERSION));
    eprintln!("dist: {name} {} bytes, sha256 {sum}", std::fs::metadata(&first).unwrap().len());
}

/// A second `sshd` on a free loopback port, with its own host key and one authorized key.
struct TestHost {
    dir: tempfile::TempDir,
    port: u16,
    /// Stopped when the host is dropped.
    _sshd: Sshd,
}

impl TestHost {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for key in ["client_key", "wrong_key"] {
            e2e::keys::ssh_keygen(&d.join(key), key).await;
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let sshd = Sshd::start(d, &d.join("authorized_keys"), "PermitRootLogin prohibit-password").await;
        Self { dir, port: sshd.port, _sshd: sshd }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `deploy.sh -s root@127.0.0.1:<port>` with our key, into this host's own prefix.
    async fn deploy(&self, key: &str, port: u16, args: &[&str]) -> (bool, String) {
        let spec = ProcessSpec::new(repo().join("deploy/deploy.sh"))
            .args(["-s", &format!("root@127.0.0.1:{port}"), "-i"])
            .arg(self.path(key))
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .arg("--prefix")
            .arg(self.path("opt/basilica"))
            .arg("--log-dir")
            .arg(self.path("log"))
            .arg("--no-systemd")
            .args(args.iter().copied());
        let out = run(spec, Duration::from_secs(300)).await;
        (out.status.success(), text(&out))
    }

    fn current(&self) -> String {
        let link = std::fs::read_link(self.path("opt/basilica/current")).unwrap();
        link.file_name().unwrap().to_str().unwrap().to_owned()
    }

    fn launcher_pid(&self) -> u32 {
        std::fs::read_to_string(self.path("opt/basilica/executor.pid")).unwrap().trim().parse().unwrap()
    }
}

impl Drop for TestHost {
    /// A test that fails half-way leaves no node behind: SIGTERM stops it and its services.
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.path("opt/basilica/executor.pid"))
            && let Ok(pid) = pid.trim().parse::<u32>()
        {
            let _ = common::process::send_signal(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// A copy of the release tarball as version `version`; `broken` replaces the launcher with one
/// that exits at once (its SHA256SUMS still match, so only the health check can catch it).
async fn variant(tarball: &Path, out: &Path, version: &str, broken: bool) -> PathBuf {
    let work = tempfile::tempdir().unwrap();
    let x = ProcessSpec::new("tar").arg("-xzf").arg(tarball).arg("-C").arg(work.path());
    assert!(run(x, Duration::from_secs(60)).await.status.success());
    let old = std::fs::read_dir(work.path()).unwrap().next().unwrap().unwrap().path();
    let name = format!("executor-{version}-x86_64-linux");
    let dir = work.path().join(&name);
    std::fs::rename(&old, &dir).unwrap();
    if broken {
        std::fs::write(dir.join("bin/executor"), "#!/bin/sh\necho 'executor: broken build' >&2\nexit 1\n").unwrap();
        let sums = run(
            ProcessSpec::new("env").arg("--chdir").arg(&dir).args([
                "sh",
                "-c",
                "sha256sum bin/* config/* systemd/* docs/* deploy.sh > SHA256SUMS",
            ]),
            Duration::from_secs(60),
        )
        .await;
        assert!(sums.status.success(), "{}", text(&sums));
    }
    let file = out.join(format!("{name}.tar.gz"));
    let tar = ProcessSpec::new("tar").arg("-czf").arg(&file).arg("-C").arg(work.path()).arg(&name);
    assert!(run(tar, Duration::from_secs(120)).await.status.success());
    std::fs::write(out.join(format!("{name}.tar.gz.sha256")), format!("{}  {name}.tar.gz\n", sha256(&file))).unwrap();
    file
}

async fn health(port: u16) -> u16 {
    e2e::http_get(port, "/health").await.map(|(code, _)| code).unwrap_or(0)
}

/// deploy.sh for real against a second sshd: clear errors, a dry run, a first deploy with its
/// health check, an upgrade, and a broken release that fails its health check and is rolled
/// back. The test host has no systemd here, so the launcher runs in the background.
#[tokio::test]
async fn deploy_sh_installs_upgrades_and_rolls_back() {
    if !e2e::require_tool(
        "sshd and ssh (openssh-server, openssh-client)",
        Path::new("/usr/sbin/sshd").exists() && which("ssh"),
    ) || !e2e::require_tool("root (sshd logs in as root)", e2e::process::is_root())
    {
        return;
    }
    let dists = tempfile::tempdir().unwrap();
    let tarball = dist(dists.path()).await;
    let host = TestHost::start().await;
    let config = e2e::TestConfig::new("\n[docker.network_config]\nspare_networks = 0\n");
    let node_config = config.path.to_str().unwrap().to_owned();
    let tar = tarball.to_str().unwrap().to_owned();
    let health_port = config.ports.health.to_string();
    let common_args = ["--tarball", &tar, "--health-port", &health_port];

    // Clear errors: nobody listening, a key the server does not know, a config that is not there.
    let (ok, out) = host.deploy("client_key", e2e::free_port(), &common_args).await;
    assert!(!ok && out.contains("is unreachable") && out.contains("Connection refused"), "{out}");
    let (ok, out) = host.deploy("wrong_key", host.port, &common_args).await;
    assert!(!ok && out.contains("refused our key (Permission denied)"), "{out}");
    let (ok, out) = host
        .deploy("client_key", host.port, &[&common_args[..], &["--config", "/nonexistent/executor.toml"]].concat())
        .await;
    assert!(!ok && out.contains("config file '/nonexistent/executor.toml' not found"), "{out}");
    // First deploy without a config: the server has none.
    let (ok, out) = host.deploy("client_key", host.port, &common_args).await;
    assert!(!ok && out.contains("no config at") && out.contains("pass --config FILE"), "{out}");

    // A dry run connects, says what it would do, changes nothing.
    let with_config =
        [&common_args[..], &["--config", &node_config, "--health-check", "--health-timeout", "60"]].concat();
    let (ok, out) = host.deploy("client_key", host.port, &[&with_config[..], &["--dry-run"]].concat()).await;
    assert!(ok && out.contains("dry run: nothing was changed"), "{out}");
    assert!(!host.path("opt/basilica/current").exists());

    // First deploy, health-checked.
    let started = std::time::Instant::now();
    let (ok, out) = host.deploy("client_key", host.port, &with_config).await;
    assert!(ok, "{out}");
    eprintln!("first deploy: {:?}", started.elapsed());
    assert!(out.contains("checksum verified") && out.contains("health check passed"), "{out}");
    assert_eq!(host.current(), common::VERSION);
    assert_eq!(health(config.ports.health).await, 200);
    for dir in
        ["opt/basilica/bin/executor", "opt/basilica/config/executor.toml", "opt/basilica/data", "log/executor.out"]
    {
        assert!(host.path(dir).exists(), "{dir} missing after deploy");
    }
    let first_pid = host.launcher_pid();

    // Upgrade to a new version: a new launcher, healthy.
    let upgrade = variant(&tarball, dists.path(), "0.1.0+2", false).await;
    let upgrade = upgrade.to_str().unwrap().to_owned();
    let args = ["--tarball", &upgrade, "--health-port", &health_port, "--health-check"];
    let started = std::time::Instant::now();
    let (ok, out) = host.deploy("client_key", host.port, &args).await;
    assert!(ok, "{out}");
    eprintln!("upgrade: {:?}", started.elapsed());
    assert_eq!(host.current(), "0.1.0+2");
    assert_ne!(host.launcher_pid(), first_pid);
    assert!(!e2e::process_alive(first_pid), "the old launcher still runs");
    assert_eq!(health(config.ports.health).await, 200);
    let second_pid = host.launcher_pid();

    // A broken release fails its health check: back to the previous one, healthy again.
    let broken = variant(&tarball, dists.path(), "0.1.0+broken", true).await;
    let broken = broken.to_str().unwrap().to_owned();
    let args = ["--tarball", &broken, "--health-port", &health_port, "--health-check", "--health-timeout", "20"];
    let (ok, out) = host.deploy("client_key", host.port, &args).await;
    assert!(!ok, "{out}");
    assert!(out.contains("health check failed"), "{out}");
    assert!(out.contains("executor: broken build"), "the launcher's last words are shown: {out}");
    assert!(out.contains("rolled back to 0.1.0+2, which is healthy again"), "{out}");
    assert_eq!(host.current(), "0.1.0+2");
    assert_ne!(host.launcher_pid(), second_pid);
    assert_eq!(health(config.ports.health).await, 200);

    // Stop the node the way deploy.sh does, then the test sshd.
    let pid = host.launcher_pid();
    common::process::send_signal(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while e2e::process_alive(pid) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!e2e::process_alive(pid), "launcher did not stop");
    drop(host);
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET over HTTP/1.0, so that Prometheus answers without chunked encoding.
async fn get10(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("HTTP timeout"))??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

async fn prom_json(port: u16, path: &str) -> serde_json::Value {
    let (code, body) = get10(port, path).await.unwrap();
    let value: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {code} not JSON ({e}): {body}"));
    assert_eq!(value["status"], "success", "{path}: {body}");
    value
}

/// Metric names a PromQL expression refers to (`executor_*`), without histogram suffixes.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("executor_") {
        let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[i + name.len()..];
        names.push(name.trim_end_matches("_bucket").to_owned());
    }
    names
}

/// The shipped monitoring files against a running executor: `promtool check config` and
/// `check rules` pass, the distribution's Prometheus scrapes every job of deploy/prometheus.yml
/// (pointed at the node's ports) and finds every target up, loads every alert rule, and every
/// query of the Grafana dashboard and the rules evaluates, on series the node really exports.
#[tokio::test]
async fn prometheus_scrapes_every_service_with_the_shipped_config() {
    if !e2e::require_tool("prometheus and promtool", which("prometheus") && which("promtool")) {
        return;
    }
    let deploy = repo().join("deploy");
    for (what, file) in [("config", "prometheus.yml"), ("rules", "alerts.yml")] {
        let out =
            run(ProcessSpec::new("promtool").args(["check", what]).arg(deploy.join(file)), Duration::from_secs(60))
                .await;
        assert!(out.status.success(), "promtool check {what} {file}: {}", text(&out));
    }

    let gpus = r#"{"gpus": [{"uuid": "GPU-11111111-2222-3333-4444-555555555555", "name": "Simulated H100",
        "pci_bus_id": "00000000:17:00.0", "memory_total_bytes": 85899345920,
        "memory_used_bytes": 12884901888, "temperature_celsius": 55}]}"#;
    let config = e2e::TestConfig::with_system(
        "gpu_backend = \"simulated\"\nsimulated_gpus_file = \"{dir}/gpus.json\"\nupdate_interval = \"500ms\"\ncollector_timeout = \"400ms\"",
        "",
    );
    std::fs::write(config.dir.path().join("gpus.json"), gpus).unwrap();
    let ports = config.ports;
    let mut node = e2e::Node::start(config).await;

    let shipped = std::fs::read_to_string(deploy.join("prometheus.yml")).unwrap();
    let mut local = shipped
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    for (i, port) in ports.metrics.iter().enumerate() {
        local = local.replace(&format!("\"localhost:{}\"", 9090 + i), &format!("\"127.0.0.1:{port}\""));
    }
    assert!(!local.contains("\"localhost:"), "a target of prometheus.yml is not on a known port: {local}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("prometheus.yml"), &local).unwrap();
    std::fs::copy(deploy.join("alerts.yml"), dir.path().join("alerts.yml")).unwrap();
    let prom_port = e2e::free_port();
    let mut prometheus = ProcessSpec::new("prometheus")
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .spawn_supervised()
        .unwrap();

    let jobs = ["container-runtime", "executor-api", "executor-launcher", "gpu-monitor", "validator-access"];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let up = match get10(prom_port, "/api/v1/targets").await {
            Ok((200, body)) => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let targets = v["data"]["activeTargets"].as_array().unwrap().clone();
                let mut healthy: Vec<String> = targets
                    .iter()
                    .filter(|t| t["health"] == "up")
                    .map(|t| t["labels"]["job"].as_str().unwrap().to_owned())
                    .collect();
                healthy.sort();
                if healthy == jobs {
                    break;
                }
                format!("{targets:?}")
            }
            other => format!("{other:?}"),
        };
        assert!(std::time::Instant::now() < deadline, "not every target up within 60 s: {up}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Every alert rule is loaded and evaluates without error.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let rules = loop {
        let rules = prom_json(prom_port, "/api/v1/rules").await;
        let list: Vec<serde_json::Value> = rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        if list.len() == 10 && list.iter().all(|r| r["health"] == "ok") {
            break list;
        }
        assert!(std::time::Instant::now() < deadline, "rules not all healthy: {list:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut exprs: Vec<String> = rules.iter().map(|r| r["query"].as_str().unwrap().to_owned()).collect();

    // Every dashboard query evaluates (with the dashboard's variable set to all nodes).
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy.join("grafana-dashboard.json")).unwrap()).unwrap();
    let mut titles = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        titles.push(panel["title"].as_str().unwrap().to_owned());
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().replace("$instance", ".*"));
        }
    }
    for wanted in [
        "GPU utilisation",
        "GPU memory used",
        "GPU temperature",
        "GPU power",
        "Containers by state",
        "RPC rate by method",
        "RPC latency",
        "SSH sessions",
    ] {
        assert!(titles.iter().any(|t| t == wanted), "dashboard has no panel `{wanted}`: {titles:?}");
    }
    for expr in &exprs {
        prom_json(prom_port, &format!("/api/v1/query?query={}", url_encode(expr))).await;
    }
    // ... on series the node exports. Some appear only with traffic (a first call, a first
    // failed login), or with real GPUs: those the simulated backend does not report.
    let with_traffic = [
        "executor_api_requests_total",
        "executor_api_connections",
        "executor_api_request_duration_seconds",
        "executor_container_runtime_creates_total",
        "executor_container_runtime_image_verifications_total",
        "executor_validator_access_auth_failures_total",
        "executor_gpu_utilization_ratio",
        "executor_gpu_power_watts",
        "executor_gpu_power_limit_watts",
    ];
    let mut exported = String::new();
    for port in ports.metrics {
        exported.push_str(&e2e::http_get(port, "/metrics").await.unwrap().1);
    }
    for name in exprs.iter().flat_map(|e| metric_names(e)) {
        if !with_traffic.contains(&name.as_str()) {
            assert!(exported.contains(&format!("\n{name}")), "`{name}` is queried but not exported");
        }
    }
    // The node's own GPU series arrive through the shipped config.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = prom_json(prom_port, "/api/v1/query?query=executor_gpu_temperature_celsius").await;
        if r["data"]["result"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no GPU series: {r}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let _ = prometheus.start_kill();
    let _ = prometheus.wait().await;
    let (exit, output) = node.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15)).await;
    assert!(exit.success(), "{output}");
}

/// `docker-compose args...` on deploy/compose.prod.yml (and `overlay`, if any) as project
/// `project`, with `env`.
async fn compose(project: &str, overlay: Option<&Path>, env: &[(&str, String)], args: &[&str]) -> CapturedOutput {
    let mut spec =
        ProcessSpec::new("docker-compose").args(["-p", project, "-f"]).arg(repo().join("deploy/compose.prod.yml"));
    if let Some(overlay) = overlay {
        spec = spec.arg("-f").arg(overlay);
    }
    let mut spec = spec.args(args.iter().copied());
    for (k, v) in env {
        spec = spec.env(k, v);
    }
    run(spec, Duration::from_secs(300)).await
}

/// Issue 18 item 6: Watchtower shares the engine with tenant containers; it must watch the
/// executor's container only (a tenant container it recreated would escape shaping and
/// admission), whatever the container is named.
#[tokio::test]
async fn watchtower_watches_only_the_executor() {
    if !e2e::require_tool("docker-compose", which("docker-compose")) {
        return;
    }
    let env = [("BASILICA_CONTAINER_NAME", "node-7".to_owned())];
    let out = compose("watchtower-scope", None, &env, &["config"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let config = e2e::process::stdout(&out);
    let watchtower = &config[config.find("  watchtower:").expect("a watchtower service")..];
    let command: Vec<&str> = watchtower
        .lines()
        .skip_while(|l| l.trim() != "command:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .collect();
    assert_eq!(command.last(), Some(&"node-7"), "watchtower watches more than the executor: {command:?}");
    let scope = command.iter().position(|a| *a == "--scope").map(|i| command[i + 1]);
    assert_eq!(scope, Some("basilica-executor"), "{command:?}");
    assert!(command.contains(&"--label-enable"), "{command:?}");
    let executor = &config[config.find("  executor:").expect("an executor service")..];
    assert!(executor.contains("com.centurylinklabs.watchtower.scope: basilica-executor"), "{executor}");
}

/// The image from the release tarball on a base made offline (debootstrap, cached by date under
/// target/base-image), brought up by the distribution's docker-compose from compose.prod.yml:
/// it runs the server (not the help text), on the mounted config, and `/health` answers 200.
#[tokio::test]
async fn compose_brings_up_a_healthy_executor() {
    if !e2e::require_tool("Docker engine", e2e::docker_available())
        || !e2e::require_tool("docker-compose", which("docker-compose"))
        || !e2e::require_tool(
            "debootstrap (as root)",
            Path::new("/usr/sbin/debootstrap").exists() && e2e::process::is_root(),
        )
    {
        return;
    }
    let base = run(ProcessSpec::new(repo().join("deploy/docker/base-image.sh")), Duration::from_secs(1200)).await;
    assert!(base.status.success(), "base image: {}", text(&base));
    let dists = tempfile::tempdir().unwrap();
    dist(dists.path()).await;
    let image = "basilica/executor:compose-test";
    let build = ProcessSpec::new("docker")
        .args(["build", "-q", "-f"])
        .arg(repo().join("deploy/Dockerfile"))
        .args(["--build-arg", &format!("VERSION={}", common::VERSION), "-t", image])
        .arg(dists.path());
    let out = run(build, Duration::from_secs(600)).await;
    assert!(out.status.success(), "docker build: {}", text(&out));

    let dir = tempfile::tempdir().unwrap();
    for sub in ["data", "logs"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let config = format!(
        r#"managing_miner_hotkey = "{alice}"
[server]
advertised_host = "127.0.0.1"
[docker]
enable_gpu_passthrough = false
[docker.network_config]
enable_isolation = false
spare_networks = 0
[system]
enable_gpu_monitoring = false
[metrics]
host = "0.0.0.0"
[logging]
file = "/var/log/basilica/executor.log"
"#,
        alice = e2e::ALICE
    );
    std::fs::write(dir.path().join("executor.toml"), config).unwrap();
    let ports = e2e::Ports::free();
    let project = format!("basilica-test-{}", ports.health);
    let env = [
        ("BASILICA_IMAGE", image.to_owned()),
        ("BASILICA_CONTAINER_NAME", project.clone()),
        ("BASILICA_GRPC_PORT", ports.grpc.to_string()),
        ("BASILICA_HEALTH_PORT", ports.health.to_string()),
        ("BASILICA_METRICS_PORT", ports.metrics[0].to_string()),
        ("BASILICA_SSH_PORT", ports.ssh.to_string()),
        ("BASILICA_CONFIG", dir.path().join("executor.toml").display().to_string()),
        ("BASILICA_DATA", dir.path().join("data").display().to_string()),
        ("BASILICA_LOGS", dir.path().join("logs").display().to_string()),
    ];
    // Some sandboxes (this project's development containers among them) lack a capability in
    // their bounding set, so no privileged container can start there. Then, and only then, the
    // test runs the same file with `privileged: false` and says so; an unprivileged container
    // cannot make cgroups, without which validator-access refuses to run validators' commands,
    // so validator access is off there.
    let probe = run(
        ProcessSpec::new("docker").args(["run", "--rm", "--privileged", "basilica/debian-base:bookworm", "true"]),
        Duration::from_secs(60),
    )
    .await;
    let overlay = if probe.status.success() {
        None
    } else {
        assert!(text(&probe).contains("unable to apply caps"), "docker run --privileged: {}", text(&probe));
        eprintln!("NOTE: this Docker engine cannot start privileged containers; testing with privileged: false");
        let file = dir.path().join("unprivileged.yml");
        let text = "services:\n  executor:\n    privileged: false\n    environment:\n      EXECUTOR_VALIDATOR__ENABLED: \"false\"\n";
        std::fs::write(&file, text).unwrap();
        Some(file)
    };
    let up = compose(&project, overlay.as_deref(), &env, &["up", "-d", "executor"]).await;
    let mut failure = None;
    if up.status.success() {
        let started = std::time::Instant::now();
        let mut last = String::new();
        let mut healthy = false;
        while started.elapsed() < Duration::from_secs(120) {
            let code = e2e::http_get(ports.health, "/health").await.map(|(c, _)| c).unwrap_or(0);
            let state = run(
                ProcessSpec::new("docker").args(["inspect", "-f", "{{.State.Health.Status}} {{json .Args}}", &project]),
                Duration::from_secs(30),
            )
            .await;
            last = format!("/health {code}; docker: {}", text(&state).trim());
            if code == 200 && last.contains("healthy ") && !last.contains("unhealthy") {
                healthy = true;
                eprintln!("compose: healthy after {:?} ({last})", started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if !healthy {
            let logs = compose(&project, overlay.as_deref(), &env, &["logs", "--no-color", "executor"]).await;
            failure = Some(format!("not healthy within 120 s: {last}\n{}", text(&logs)));
        } else if !last.contains(r#"["--server","--config","/opt/basilica/config/executor.toml"]"#) {
            failure = Some(format!("the container does not run the server on the mounted config: {last}"));
        } else if e2e::http_get(ports.metrics[0], "/metrics").await.map(|(c, _)| c).unwrap_or(0) != 200 {
            failure = Some("executor-api's metrics are not published on the mapped port".to_owned());
        } else if !dir.path().join("logs/executor.log").exists() {
            failure = Some("no executor.log in the mounted log directory".to_owned());
        }
    } else {
        failure = Some(format!("docker-compose up: {}", text(&up)));
    }
    let down = compose(&project, overlay.as_deref(), &env, &["down", "--timeout", "20"]).await;
    let _ = run(ProcessSpec::new("docker").args(["rmi", image]), Duration::from_secs(60)).await;
    assert!(failure.is_none(), "{}", failure.unwrap_or_default());
    assert!(down.status.success(), "docker-compose down: {}", text(&down));
}

/// docs/executor.md's configuration reference is what the config's doc comments generate.
#[tokio::test]
async fn config_reference_in_the_operator_guide_is_current() {
    let spec = e2e::process::cargo()
        .args(["run", "--quiet", "--package", "xtask", "--manifest-path"])
        .arg(repo().join("Cargo.toml"))
        .args(["--", "config-reference", "--check"]);
    let out = run(spec, Duration::from_secs(900)).await;
    assert!(out.status.success(), "{}", text(&out));
}
