//! `cargo xtask bench-ports` (`make bench-ports`): published ports beside Docker's own (issue
//! 20's figures), release build of container-runtime, as root:
//! - create-to-running of a container publishing 3 ports (2 TCP, 1 UDP) through
//!   container-runtime (host ports from the pool, labels, firewall, shaping) against
//!   `docker run -d -p … -p … -p …/udp` on a network like ours (a bridge `bai-…` without
//!   inter-container traffic), interleaved, median of 30;
//! - throughput into a container through a published port, from a client in another network
//!   namespace (the way a renter's traffic arrives: Docker's DNAT, our conntrack rules), against
//!   the same through a port `docker run -p` published. `network_bps` is set above what the link
//!   carries, so the shaper is in the path but does not limit.

use std::time::{Duration, Instant};

use common::process::ProcessSpec;
use common::proto::runtime::v1 as pb;
use e2e::TestConfig;
use e2e::lan::{self, Lan};

use crate::report::{Value, figure};
use crate::{build_release, median, start_runtime, workspace_root};

const RUNS: usize = 30;
const COPIES: usize = 5;
/// Bytes sent through the published port per copy.
const COPY_BYTES: u64 = 512 << 20;

async fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = ProcessSpec::new("docker").args(args.iter().copied()).output(Duration::from_secs(120), 1 << 16).await?;
    anyhow::ensure!(out.status.success(), "docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Sends `COPY_BYTES` to `host:port` from the namespace and waits for the server to close;
/// milliseconds.
async fn send(lan: &Lan, script: &std::path::Path, port: u16) -> anyhow::Result<f64> {
    let start = Instant::now();
    let child = lan.spawn(&["python3", &script.display().to_string(), lan::HOST_END, &port.to_string()]);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await??;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
    Ok(ms)
}

/// The sender: `COPY_BYTES` in 1 MiB writes, then the write side shut, then wait for the close.
const SENDER: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
chunk = b"\0" * (1 << 20)
for _ in range(int(sys.argv[3]) >> 20):
    s.sendall(chunk)
s.shutdown(socket.SHUT_WR)
while s.recv(65536):
    pass
"#;

pub(crate) async fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    build_release(&root).await?;
    anyhow::ensure!(e2e::busybox_image().await, "needs Docker and busybox-static");
    let config = TestConfig::with_ports(
        "ranges = [\"46000-46999\"]",
        "\n[logging]\nlevel = \"warn\"\n[docker]\nmax_concurrent_containers = 100\n\
         [docker.resource_limits]\nnetwork_bps = 10000000000\n",
    );
    let (mut child, mut client) = start_runtime(&root, &config).await?;
    // A network like each tenant's own, for Docker alone.
    let network = format!("basilica-bench-{}", std::process::id());
    docker(&[
        "network",
        "create",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "-o",
        "com.docker.network.bridge.name=bai-bench",
        &network,
    ])
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ports = || {
        [(8080, "tcp"), (8081, "tcp"), (5353, "udp")]
            .map(|(p, protocol)| pb::PortMapping { container_port: p, protocol: protocol.into(), ..Default::default() })
            .to_vec()
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let idle = Duration::from_secs(1);
    for i in 0..RUNS {
        let start = Instant::now();
        let request = pb::CreateContainerRequest {
            image: e2e::BUSYBOX_IMAGE.into(),
            command: vec!["sleep".into(), "60".into()],
            ports: ports(),
            ..Default::default()
        };
        let c = client.create(request).await?.into_inner();
        client.start(pb::ContainerRef { id: c.id.clone() }).await?;
        ours.push(start.elapsed().as_secs_f64() * 1e3);
        client.remove(pb::RemoveContainerRequest { id: c.id, force: true }).await?;
        tokio::time::sleep(idle).await;

        let base = 47000 + (i as u16) * 3;
        let publish = [format!("{base}:8080"), format!("{}:8081", base + 1), format!("{}:5353/udp", base + 2)];
        let start = Instant::now();
        let id = docker(&[
            "run",
            "-d",
            "--network",
            &network,
            "-p",
            &publish[0],
            "-p",
            &publish[1],
            "-p",
            &publish[2],
            e2e::BUSYBOX_IMAGE,
            "sleep",
            "60",
        ])
        .await?;
        theirs.push(start.elapsed().as_secs_f64() * 1e3);
        docker(&["rm", "-f", &id]).await?;
        tokio::time::sleep(idle).await;
    }
    let (o, t) = (median(&mut ours), median(&mut theirs));
    println!("create-to-running with 3 published ports (2 TCP, 1 UDP), median of {RUNS}, interleaved:");
    println!("  container-runtime API (pool, labels, firewall, shaping): {o:.1} ms");
    println!("  docker run -d -p -p -p on a network like ours:            {t:.1} ms");
    println!("ratio: {:.2}", o / t);
    figure(
        &format!("create-to-running with 3 published ports, median of {RUNS}"),
        Value(o, "ms"),
        Some(("`docker run -d -p -p -p` on a network like ours", Value(t, "ms"))),
        "",
    )?;

    // Throughput through a published port, from another network namespace.
    let lan = Lan::new().await;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("send.py");
    std::fs::write(&script, SENDER.replace("int(sys.argv[3])", &COPY_BYTES.to_string()))?;
    let sink = "while true; do nc -l -p 8080 >/dev/null; done";
    let request = pb::CreateContainerRequest {
        image: e2e::BUSYBOX_IMAGE.into(),
        command: vec!["sh".into(), "-c".into(), sink.into()],
        ports: ports(),
        ..Default::default()
    };
    let c = client.create(request).await?.into_inner();
    client.start(pb::ContainerRef { id: c.id.clone() }).await?;
    let our_port = c.ports[0].host_port as u16;
    let id =
        docker(&["run", "-d", "--network", &network, "-p", "47900:8080", e2e::BUSYBOX_IMAGE, "sh", "-c", sink]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..COPIES {
        ours.push(send(&lan, &script, our_port).await?);
        theirs.push(send(&lan, &script, 47900).await?);
    }
    let (o, t) = (median(&mut ours), median(&mut theirs));
    let mib = (COPY_BYTES >> 20) as f64;
    println!(
        "{mib} MiB into the container through a published port, from another network namespace, median of {COPIES}:"
    );
    println!("  ours:            {o:.0} ms ({:.0} MiB/s)", mib / o * 1e3);
    println!("  docker run -p:   {t:.0} ms ({:.0} MiB/s)", mib / t * 1e3);
    println!("throughput ratio (ours / docker): {:.2}", t / o);
    figure(
        &format!("{mib} MiB through a published port from another netns, median of {COPIES}"),
        Value(mib / o * 1e3, "MiB/s"),
        Some(("`docker run -p`", Value(mib / t * 1e3, "MiB/s"))),
        "",
    )?;
    docker(&["rm", "-f", &id]).await?;
    client.remove(pb::RemoveContainerRequest { id: c.id, force: true }).await?;
    docker(&["network", "rm", &network]).await?;
    lan.remove().await;
    if let Some(pid) = child.id() {
        common::process::send_signal(pid, nix::sys::signal::Signal::SIGTERM)?;
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    Ok(())
}
