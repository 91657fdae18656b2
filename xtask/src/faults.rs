//! `cargo xtask faults` (`make faults`): the whole node (debug build) is hurt while signed
//! calls keep coming, and must come back whole each time:
//! - every service `kill -9`ed repeatedly: the launcher restarts it, `/health` is 200 again,
//!   and the same containers and grants are there (none lost, none doubled);
//! - the Docker engine restarted the way `scripts/ensure-docker.sh` runs it (systemd, the init
//!   script, or a `dockerd` of its own): the node is healthy again, lists the same containers
//!   (our ids and Docker's) with the same host ports, those that were running run again, a new
//!   container gets a host port none of them holds (the pool lives in the containers' labels),
//!   and no grant is lost;
//! - the grants file torn while validator-access is down: restored from its last good copy;
//! - the data directory full (a small tmpfs filled up): a new grant is refused with an error
//!   and nothing stored is lost; once space is back, grants work again;
//! - throughout, a volume of one container keeps what was written on it before the first kill
//!   (read back after the engine restart, on the volume's own filesystem).
//!
//! Prints counts and recovery times; any broken expectation fails the command. Needs root
//! (tmpfs, Docker). Outside `make test`: it takes a few minutes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::process::{ProcessSpec, send_signal};
use common::proto::access::v1 as access;
use common::proto::runtime::v1 as runtime;
use e2e::{Node, TestConfig, all_serving};
use executor_api::client::ExecutorClient;
use nix::sys::signal::Signal;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl faults";

/// A grant for a fresh validator hotkey, signed as the validator would.
/// A volume of the first container, and what is written on it before the faults.
const VOLUME_BYTES: u64 = 16 << 20;
const MARKER: &str = "faults-volume-marker";

/// `sh -c script` in container `id` through ExecContainer: stdout and stderr.
async fn exec(client: &ExecutorClient, id: &str, script: &str) -> anyhow::Result<String> {
    use common::proto::api::v1::exec_container_output::Output;
    let request = common::proto::api::v1::ExecContainerRequest {
        id: id.to_owned(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        timeout_seconds: 30,
        ..Default::default()
    };
    let mut stream = client.exec_container(request).await?;
    let mut out = Vec::new();
    while let Some(message) = stream.message().await? {
        if let Some(Output::Stdout(bytes) | Output::Stderr(bytes)) = message.output {
            out.extend_from_slice(&bytes);
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn grant(client: &ExecutorClient, seed: u8) -> Result<access::Grant, tonic::Status> {
    let pair = e2e::keys::sr25519(seed);
    let hotkey = e2e::keys::hotkey_of(&pair);
    let request =
        access::ChallengeRequest { validator_hotkey: hotkey.clone(), ssh_public_key: KEY.into(), ttl_seconds: 3600 };
    let challenge = client.request_validator_challenge(request).await?;
    client
        .provision_validator_access(access::ProvisionRequest {
            validator_hotkey: hotkey,
            ssh_public_key: KEY.into(),
            ttl_seconds: 3600,
            challenge_id: challenge.challenge_id,
            signature: e2e::keys::sign(&pair, &challenge.message),
        })
        .await
}

/// Containers (our id and Docker's, so a re-created container shows) and grant ids, sorted.
async fn state(client: &ExecutorClient) -> anyhow::Result<(Vec<(String, String)>, Vec<String>)> {
    let containers = client.list_containers(runtime::ListContainersRequest { all: true, owner: String::new() }).await?;
    let mut ids: Vec<(String, String)> = containers.containers.into_iter().map(|c| (c.id, c.docker_id)).collect();
    ids.sort();
    let grants = client.list_validator_grants(access::ListGrantsRequest {}).await?;
    let mut grant_ids: Vec<String> = grants.grants.into_iter().map(|g| g.grant_id).collect();
    grant_ids.sort();
    Ok((ids, grant_ids))
}

/// Waits until the launcher reports every service SERVING and `/health` says 200.
async fn recovered(node: &Node, health_port: u16) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let serving = node.status().await.is_ok_and(|s| all_serving(&s));
        let healthy = e2e::http_get(health_port, "/health").await.is_ok_and(|(code, _)| code == 200);
        if serving && healthy {
            return Ok(started.elapsed());
        }
        ensure!(started.elapsed() < Duration::from_secs(60), "the node did not recover within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Our ids of the containers the node lists as running.
/// Each container's first host port, by id.
async fn host_ports(client: &ExecutorClient) -> anyhow::Result<std::collections::BTreeMap<String, u32>> {
    let list = client.list_containers(runtime::ListContainersRequest { all: true, owner: String::new() }).await?;
    Ok(list.containers.into_iter().filter_map(|c| Some((c.id, c.ports.first()?.host_port))).collect())
}

async fn running(client: &ExecutorClient) -> anyhow::Result<Vec<String>> {
    let containers = client.list_containers(runtime::ListContainersRequest { all: true, owner: String::new() }).await?;
    let mut ids: Vec<String> = containers
        .containers
        .into_iter()
        .filter(|c| c.state == runtime::ContainerState::Running as i32)
        .map(|c| c.id)
        .collect();
    ids.sort();
    Ok(ids)
}

pub(crate) async fn faults() -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let out = e2e::process::cargo()
        .args(["build", "--quiet", "--workspace", "--bins", "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .output(Duration::from_secs(1800), 1 << 20)
        .await?;
    ensure!(out.status.success(), "cargo build: {}", String::from_utf8_lossy(&out.stderr));
    ensure!(e2e::busybox_image().await, "needs Docker and busybox-static");
    // More kills of one service than the launcher's crash-loop cap (5) would let it restart.
    let config = TestConfig::new(
        "crash_loop_max_restarts = 100\n[logging]\nlevel = \"warn\"\n[validator.access_config.rate_limits]\napi_requests_per_minute = 10000000\n",
    );
    // The data directory on a small filesystem of its own, so it can be filled (room for the
    // volume's image, reserved in full, and 4 MiB more).
    let data = config.dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let size = format!("size={}k,mode=0700", (VOLUME_BYTES >> 10) + 4096);
    crate::run_checked("mount", &["-t", "tmpfs", "-o", &size, "faults", &data.display().to_string()]).await?;
    let result = run(&root, config).await;
    // Whatever happened, leave an engine running for whoever comes next.
    if result.is_err() {
        let _ = crate::run_checked(&root.join("scripts/ensure-docker.sh").display().to_string(), &[]).await;
    }
    let _ = crate::run_checked("umount", &["-l", &data.display().to_string()]).await;
    result
}

async fn run(root: &std::path::Path, config: TestConfig) -> anyhow::Result<()> {
    let (grpc, health) = (config.ports.grpc, config.ports.health);
    let data = config.dir.path().join("data");
    let volume_mount = config.runtime_dir().join("volumes/faults");
    let node = Node::start_from(&root.join("target/debug"), config).await;
    let key = e2e::keys::alice();
    let client = Arc::new(ExecutorClient::connect(&format!("http://127.0.0.1:{grpc}"), None, key).await?);
    let executor_id = client.identity().await?.executor_id;
    let result = hurt(root, &node, &client, &data, health).await;
    // Whatever happened, leave nothing of this executor in Docker.
    let label = format!("label=ai.basilica.executor.executor_id={executor_id}");
    for kind in ["container", "network"] {
        let list = ProcessSpec::new("docker")
            .args([kind, "ls", "-q", "--filter", &label])
            .args(if kind == "container" { &["-a"][..] } else { &[][..] })
            .output(Duration::from_secs(60), 1 << 20)
            .await?;
        for id in String::from_utf8_lossy(&list.stdout).lines() {
            let rm = if kind == "container" { vec!["rm", "-f", id] } else { vec!["network", "rm", id] };
            let _ = ProcessSpec::new("docker").args(rm).output(Duration::from_secs(60), 1 << 12).await;
        }
    }
    // The volume's filesystem is mounted under runtime_dir until it is deleted.
    let _ = ProcessSpec::new("umount").arg(&volume_mount).output(Duration::from_secs(60), 1 << 12).await;
    result
}

async fn hurt(
    root: &std::path::Path,
    node: &Node,
    client: &Arc<ExecutorClient>,
    data: &std::path::Path,
    health: u16,
) -> anyhow::Result<()> {
    // Two running, one only created: an engine restart must bring back exactly the first two.
    // The first has a volume, whose data must outlive the kills and the engine restart.
    client.create_volume(runtime::CreateVolumeRequest { name: "faults".into(), size_bytes: VOLUME_BYTES }).await?;
    let mut with_volume = String::new();
    for n in 0..3 {
        let volumes = match n {
            0 => {
                vec![runtime::VolumeMount { volume: "faults".into(), container_path: "/vol".into(), read_only: false }]
            }
            _ => Vec::new(),
        };
        let created = client
            .create_container(runtime::CreateContainerRequest {
                image: e2e::BUSYBOX_IMAGE.into(),
                command: vec!["sleep".into(), "3600".into()],
                ttl_seconds: 3600,
                ports: vec![runtime::PortMapping {
                    container_port: 8080,
                    protocol: "tcp".into(),
                    ..Default::default()
                }],
                volumes,
                ..Default::default()
            })
            .await?;
        if n == 0 {
            with_volume = created.id.clone();
        }
        if n < 2 {
            client.start_container(runtime::ContainerRef { id: created.id }).await?;
        }
    }
    let wrote = exec(client, &with_volume, &format!("echo {MARKER} > /vol/marker && sync && echo ok")).await?;
    ensure!(wrote.trim() == "ok", "cannot write the volume: {wrote}");
    for seed in 1..=3 {
        grant(client, seed).await?;
    }
    let before = state(client).await?;
    println!("before: {} containers, {} grants", before.0.len(), before.1.len());

    // Load during the faults: signed calls all the time, counting answers and refusals.
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let load = {
        let (client, answered, failed) = (client.clone(), answered.clone(), failed.clone());
        tokio::spawn(async move {
            loop {
                match client.list_containers(runtime::ListContainersRequest { all: true, owner: String::new() }).await {
                    Ok(_) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    // By code and the reason before the message's colon, if any.
                    Err(status) => {
                        let reason = status.message().split_once(':').map_or("", |(r, _)| r);
                        let key = format!("{:?} {}", status.code(), if reason.contains(' ') { "" } else { reason });
                        *failed.lock().unwrap_or_else(|e| e.into_inner()).entry(key.trim().to_owned()).or_default() +=
                            1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // kill -9 of each service, five times each.
    let rounds = 5;
    for service in ["container-runtime", "gpu-monitor", "validator-access", "executor-api"] {
        let mut times = Vec::new();
        for _ in 0..rounds {
            let status = node.status().await?;
            let pid = status.services.iter().find(|s| s.name == service).context("service")?.pid;
            send_signal(pid, Signal::SIGKILL)?;
            // The launcher notices the death before the next check.
            tokio::time::sleep(Duration::from_millis(50)).await;
            times.push(recovered(node, health).await?);
            ensure!(state(client).await? == before, "{service}: containers or grants changed after kill -9");
        }
        times.sort();
        println!(
            "kill -9 {service} x{rounds}: back every time, same containers and grants; recovery median {:?}, worst {:?}",
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }

    // The Docker engine restarted under the node: what an operator does to upgrade it. Tenants
    // expect their containers back as they were: the same ones, running again.
    let was_running = running(client).await?;
    ensure!(was_running.len() == 2, "expected 2 running containers before the engine restart, got {was_running:?}");
    const RULE: [&str; 12] =
        ["-w", "-C", "INPUT", "-i", "bai-+", "-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED", "-j", "DROP"];
    let firewall = || e2e::engine::succeeds("iptables", &RULE);
    let firewall_before = firewall().await;
    let ports_before = host_ports(client).await?;
    ensure!(ports_before.len() == 3, "expected a published port on each container: {ports_before:?}");
    let (how, down) = e2e::engine::restart_docker(root).await.map_err(anyhow::Error::msg)?;
    let engine_back = Instant::now();
    loop {
        let healthy = recovered(node, health).await.is_ok();
        if healthy
            && state(client).await.is_ok_and(|s| s == before)
            && running(client).await.is_ok_and(|r| r == was_running)
        {
            break;
        }
        ensure!(
            engine_back.elapsed() < Duration::from_secs(120),
            "120 s after the Docker engine restart: healthy {healthy}, containers {:?} (before {:?}), running {:?} (before {:?})",
            state(client).await.map(|s| s.0).unwrap_or_default(),
            before.0,
            running(client).await.unwrap_or_default(),
            was_running
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed_in = engine_back.elapsed();
    ensure!(!firewall_before || firewall().await, "the host firewall rule for tenant bridges is gone");
    // The volume's data is there, on the volume's own filesystem (not the directory under it).
    let seen = exec(client, &with_volume, "cat /vol/marker; df -B1 /vol | tail -1").await?;
    let size: u64 = seen.lines().nth(1).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0);
    ensure!(
        seen.starts_with(MARKER) && size > 0 && size <= VOLUME_BYTES,
        "the volume after the engine restart: {seen:?}"
    );
    // The port pool survives too: each container keeps its host port, a new one gets another.
    ensure!(host_ports(client).await? == ports_before, "published ports changed across the engine restart");
    let fresh = client
        .create_container(runtime::CreateContainerRequest {
            image: e2e::BUSYBOX_IMAGE.into(),
            command: vec!["sleep".into(), "60".into()],
            ports: vec![runtime::PortMapping { container_port: 8080, protocol: "tcp".into(), ..Default::default() }],
            ..Default::default()
        })
        .await?;
    let fresh_port = fresh.ports[0].host_port;
    ensure!(
        !ports_before.values().any(|p| *p == fresh_port),
        "host port {fresh_port} given twice after the engine restart"
    );
    client.remove_container(runtime::RemoveContainerRequest { id: fresh.id, force: true }).await?;
    println!(
        "Docker engine restart ({how}): engine back after {down:?}; node healthy, the same {} containers (and host ports) and {} grants, the {} that ran running again {resumed_in:?} after the engine answered, the volume's data there{}",
        before.0.len(),
        before.1.len(),
        was_running.len(),
        if firewall_before { ", host firewall rules in place" } else { "" }
    );

    // The grants file torn while validator-access is down.
    let status = node.status().await?;
    let pid = status.services.iter().find(|s| s.name == "validator-access").context("service")?.pid;
    send_signal(pid, Signal::SIGKILL)?;
    std::fs::write(data.join("validator-grants.json"), "[{\"id\": \"g-")?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let took = recovered(node, health).await?;
    ensure!(state(client).await? == before, "grants lost after a torn grants file");
    let corrupt =
        std::fs::read_dir(data)?.flatten().filter(|e| e.file_name().to_string_lossy().contains(".corrupt-")).count();
    println!(
        "torn grants file: recovered from the last good copy in {took:?}, the torn file kept aside ({corrupt} file)"
    );

    // The data directory full.
    let filler = data.join("filler");
    let _ = ProcessSpec::new("dd")
        .args(["if=/dev/zero", "bs=64k", &format!("of={}", filler.display())])
        .output(Duration::from_secs(60), 1 << 12)
        .await?;
    let refused = grant(client, 9).await;
    ensure!(refused.is_err(), "a grant was stored on a full disk");
    ensure!(state(client).await? == before, "state changed on a full disk");
    std::fs::remove_file(&filler)?;
    let stored = grant(client, 10).await?;
    println!(
        "full data disk: a new grant refused ({}), nothing lost; after freeing space a grant is stored again",
        refused.err().map(|s| format!("{:?}: {}", s.code(), s.message())).unwrap_or_default()
    );
    client.revoke_validator_access(access::RevokeRequest { grant_id: stored.grant_id }).await?;

    load.abort();
    let failed = failed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    println!(
        "signed calls during the faults: {} answered, {} refused or failed (while a service was down), by code: {failed:?}",
        answered.load(Ordering::Relaxed),
        failed.values().sum::<u64>(),
    );
    Ok(())
}
