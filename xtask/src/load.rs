//! `cargo xtask load` (`make load`): the whole node (release build, launcher and every
//! service) under load, reporting what happened and the peak memory of each process:
//! - 100 concurrent container creates through the signed public API against a cap of 10:
//!   exactly 10 succeed, and after removing them nothing of ours is left in Docker;
//! - thousands of concurrent authenticated RPCs: all answered, throughput and latency;
//! - 100 SSH connection attempts in about a second against `ssh_requests_per_minute = 10`:
//!   exactly the burst gets the SSH banner, the rest are closed.
//!
//! Failures of the expectations above make it exit non-zero; it is outside `make test`
//! because it takes minutes and a release build.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::proto::runtime::v1 as runtime;
use e2e::{Node, TestConfig};
use executor_api::client::ExecutorClient;
use tokio::io::AsyncReadExt;

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

async fn our_docker_objects(executor_id: &str) -> anyhow::Result<(usize, usize)> {
    let filter = format!("label=ai.basilica.executor.executor_id={executor_id}");
    let count = |kind: &'static str| {
        let filter = filter.clone();
        async move {
            let mut args = vec![kind, "ls", "-q", "--filter", &filter];
            if kind == "container" {
                args.insert(2, "-a");
            }
            let out =
                common::process::ProcessSpec::new("docker").args(args).output(Duration::from_secs(60), 1 << 20).await?;
            anyhow::Ok(String::from_utf8_lossy(&out.stdout).lines().count())
        }
    };
    Ok((count("container").await?, count("network").await?))
}

pub(crate) async fn load() -> anyhow::Result<()> {
    let root = crate::workspace_root();
    crate::build_release(&root).await?;
    ensure!(e2e::busybox_image().await, "needs Docker and busybox-static");
    let config = TestConfig::new(
        "[logging]\nlevel = \"warn\"\n[docker]\nmax_concurrent_containers = 10\n[validator.access_config.rate_limits]\nssh_requests_per_minute = 10\napi_requests_per_minute = 10000000\n",
    );
    let (grpc, ssh_port, metrics_port) = (config.ports.grpc, config.ports.ssh, config.ports.metrics[3]);
    let node = Node::start_from(&root.join("target/release"), config).await;
    let key = e2e::keys::alice();
    let client = Arc::new(ExecutorClient::connect(&format!("http://127.0.0.1:{grpc}"), None, key).await?);
    let executor_id = client.identity().await?.executor_id;

    // 100 concurrent creates against a cap of 10.
    let started = Instant::now();
    let creates: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .create_container(runtime::CreateContainerRequest {
                        image: e2e::BUSYBOX_IMAGE.into(),
                        command: vec!["sleep".into(), "600".into()],
                        ttl_seconds: 600,
                        ..Default::default()
                    })
                    .await
            })
        })
        .collect();
    let (mut ok, mut exhausted, mut other) = (0, 0, Vec::new());
    for task in creates {
        match task.await? {
            Ok(_) => ok += 1,
            Err(s) if s.code() == tonic::Code::ResourceExhausted => exhausted += 1,
            Err(s) => other.push(s.to_string()),
        }
    }
    let creates_took = started.elapsed();
    let listed = client.list_containers(runtime::ListContainersRequest { all: true, owner: String::new() }).await?;
    for c in &listed.containers {
        client.remove_container(runtime::RemoveContainerRequest { id: c.id.clone(), force: true }).await?;
    }
    let (containers_left, networks_left) = our_docker_objects(&executor_id).await?;
    println!(
        "100 concurrent creates, cap 10: {ok} created, {exhausted} RESOURCE_EXHAUSTED, {} other, in {creates_took:?}; listed {}; after removal {containers_left} containers and {networks_left} networks of ours left",
        other.len(),
        listed.containers.len()
    );
    ensure!(ok == 10 && exhausted == 90 && other.is_empty(), "expected 10 created and 90 refused: {other:?}");
    ensure!(
        listed.containers.len() == 10 && containers_left == 0 && networks_left == 0,
        "containers or networks leaked"
    );

    // Thousands of concurrent authenticated RPCs.
    let (calls, concurrency) = (5000usize, 200usize);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for _ in 0..calls / concurrency {
                    let t = Instant::now();
                    client.identity().await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await??);
    }
    let took = started.elapsed();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{} signed Identity calls from {concurrency} concurrent clients: all answered in {took:?} ({:.0} calls/s), p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        latencies.len() as f64 / took.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );

    // 100 SSH connection attempts in about a second against 10 a minute.
    let started = Instant::now();
    let attempts: Vec<_> = (0..100)
        .map(|i| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 10)).await;
                let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", ssh_port)).await?;
                let mut banner = [0u8; 8];
                let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut banner)).await??;
                anyhow::Ok(banner[..n].starts_with(b"SSH-2.0"))
            })
        })
        .collect();
    let mut greeted = 0;
    for a in attempts {
        greeted += usize::from(a.await?.unwrap_or(false));
    }
    let (_, metrics) = e2e::http_get(metrics_port, "/metrics").await?;
    let limited = metrics
        .lines()
        .find(|l| l.starts_with("executor_validator_access_rate_limited_total{scope=\"ip\"}"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("0")
        .to_owned();
    println!(
        "100 SSH connection attempts in {:?}: {greeted} got the SSH banner, {limited} closed by the rate limit",
        started.elapsed()
    );
    ensure!(greeted == 10, "expected the burst of 10 to be served, got {greeted}");

    // Peak memory of every process of the node.
    let status = e2e::executor_status(&node.config.runtime_dir()).await?;
    let launcher = node.child.id().context("launcher pid")?;
    println!("peak RSS (VmHWM): launcher {} MiB", peak_rss_kib(launcher).unwrap_or(0) / 1024);
    for s in &status.services {
        println!("  {}: {:.1} MiB (restarts {})", s.name, peak_rss_kib(s.pid).unwrap_or(0) as f64 / 1024.0, s.restarts);
        if s.restarts > 0 {
            bail!("{} restarted under load", s.name);
        }
    }
    Ok(())
}
