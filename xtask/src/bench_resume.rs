//! `cargo xtask bench-resume` (`make bench-resume`): rentals back after a reboot (issue 22's
//! figure), release build of container-runtime, as root. Ten rentals (each on its own tenant
//! network, shaped) are stopped by the engine while container-runtime is down, as a host going
//! down leaves them; then, interleaved, median of 5:
//! - ours: from spawning container-runtime to all ten running again (its start, the reconcile,
//!   the resume with volumes mounted and networks shaped);
//! - the baseline: `docker start` of the same ten (one CLI call), until it returns.

use std::time::{Duration, Instant};

use common::process::ProcessSpec;
use common::proto::runtime::v1 as pb;
use e2e::TestConfig;

use crate::report::{Value, figure};
use crate::{RuntimeClient, build_release, median, start_runtime, workspace_root};

const RENTALS: usize = 10;
const ROUNDS: usize = 5;

/// `docker args...`, which must succeed.
async fn docker(args: &[&str]) -> anyhow::Result<()> {
    let out = ProcessSpec::new("docker").args(args.iter().copied()).output(Duration::from_secs(120), 1 << 16).await?;
    anyhow::ensure!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Stops container-runtime with SIGTERM and waits for it.
async fn stop_runtime(child: &mut tokio::process::Child) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        common::process::send_signal(pid, nix::sys::signal::Signal::SIGTERM)?;
    }
    tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    Ok(())
}

/// How many of this executor's containers run, as container-runtime lists them.
async fn running(client: &mut RuntimeClient) -> usize {
    let request = pb::ListContainersRequest { all: false, owner: String::new() };
    client.list(request).await.map_or(0, |r| r.into_inner().containers.len())
}

pub(crate) async fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    build_release(&root).await?;
    anyhow::ensure!(e2e::busybox_image().await, "needs Docker and busybox-static");
    let config = TestConfig::new("\n[logging]\nlevel = \"warn\"\n");
    let (mut child, mut client) = start_runtime(&root, &config).await?;
    let mut docker_ids = Vec::new();
    for _ in 0..RENTALS {
        let request = pb::CreateContainerRequest {
            image: e2e::BUSYBOX_IMAGE.into(),
            command: vec!["sleep".into(), "3600".into()],
            ..Default::default()
        };
        let c = client.create(request).await?.into_inner();
        client.start(pb::ContainerRef { id: c.id.clone() }).await?;
        docker_ids.push(c.docker_id);
    }
    stop_runtime(&mut child).await?;
    drop(client);
    let ids: Vec<&str> = docker_ids.iter().map(String::as_str).collect();
    let stop_all = || {
        let mut args = vec!["stop", "-t", "0"];
        args.extend(&ids);
        args
    };
    let (mut ours, mut baseline) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        docker(&stop_all()).await?;
        let mut args = vec!["start"];
        args.extend(&ids);
        let start = Instant::now();
        docker(&args).await?;
        baseline.push(start.elapsed().as_secs_f64() * 1e3);

        docker(&stop_all()).await?;
        let start = Instant::now();
        let (next, mut next_client) = start_runtime(&root, &config).await?;
        child = next;
        while running(&mut next_client).await < RENTALS {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "not all running again within 60 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ours.push(start.elapsed().as_secs_f64() * 1e3);
        stop_runtime(&mut child).await?;
    }
    let (o, b) = (median(&mut ours), median(&mut baseline));
    println!("{RENTALS} rentals stopped by the engine with the node down, median of {ROUNDS}, interleaved:");
    println!("  container-runtime started until all {RENTALS} run again: {o:.0} ms");
    println!("  docker start of the same {RENTALS}:                       {b:.0} ms");
    println!("ratio (ours / docker start): {:.2}", o / b);
    figure(
        &format!("{RENTALS} rentals stopped while the node was down: start until all run, median of {ROUNDS}"),
        Value(o, "ms"),
        Some((&format!("`docker start` of the {RENTALS}"), Value(b, "ms"))),
        "",
    )?;

    let (mut child, mut client) = start_runtime(&root, &config).await?;
    e2e::runtime::remove_all(&mut client).await;
    stop_runtime(&mut child).await
}
