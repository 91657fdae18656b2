//! `cargo xtask bench-volumes` (`make bench-volumes`): volumes beside the host's own disk
//! (issue 21's figures), release build of container-runtime, as root:
//! - sequential write throughput inside a container onto its volume (`dd bs=1M conv=fsync`,
//!   the volume an ext4 image on `data_dir`'s disk) against the same `dd` on the host into a
//!   file on that disk, interleaved, median of 5;
//! - create-to-running of a container with one volume against one without, both through
//!   container-runtime, interleaved, median of 20.

use std::time::{Duration, Instant};

use common::process::ProcessSpec;
use common::proto::runtime::v1 as pb;
use e2e::TestConfig;

use crate::report::{Value, figure};
use crate::{RuntimeClient, build_release, create_to_running, median, start_runtime, workspace_root};

const WRITES: usize = 5;
const WRITE_MIB: u64 = 512;
const CREATES: usize = 20;

/// Milliseconds `dd` takes to write `WRITE_MIB` MiB, synced, with `sh -c` run by `run`.
fn dd_script(path: &str) -> String {
    format!("dd if=/dev/zero of={path} bs=1M count={WRITE_MIB} conv=fsync 2>/dev/null && rm -f {path} && sync")
}

async fn in_container(client: &mut RuntimeClient, id: &str) -> anyhow::Result<f64> {
    let start = Instant::now();
    let request = pb::ExecRequest {
        id: id.to_owned(),
        command: vec!["sh".into(), "-c".into(), dd_script("/vol/f")],
        timeout_seconds: 300,
        max_output_bytes: 0,
    };
    let out = client.exec(request).await?.into_inner();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(out.exit_code == 0, "dd in the container: {}", String::from_utf8_lossy(&out.stderr));
    Ok(ms)
}

async fn on_host(dir: &std::path::Path) -> anyhow::Result<f64> {
    let start = Instant::now();
    let script = dd_script(&dir.join("f").display().to_string());
    let out = ProcessSpec::new("sh").args(["-c", &script]).output(Duration::from_secs(300), 1 << 16).await?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(out.status.success(), "dd on the host: {}", String::from_utf8_lossy(&out.stderr));
    Ok(ms)
}

pub(crate) async fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    build_release(&root).await?;
    anyhow::ensure!(e2e::busybox_image().await, "needs Docker and busybox-static");
    let config = TestConfig::new(
        "\n[logging]\nlevel = \"warn\"\n[docker.resource_limits]\ndisk_io_bps = 10000000000000\n\
         [docker.network_config]\nenable_isolation = false\n",
    );
    let (mut child, mut client) = start_runtime(&root, &config).await?;
    let size = 2 * (WRITE_MIB << 20);
    client.create_volume(pb::CreateVolumeRequest { name: "bench".into(), size_bytes: size }).await?;
    let mount = || vec![pb::VolumeMount { volume: "bench".into(), container_path: "/vol".into(), read_only: false }];

    // Write throughput: the volume inside a container against a file on the same disk.
    let request = pb::CreateContainerRequest {
        image: e2e::BUSYBOX_IMAGE.into(),
        command: vec!["sleep".into(), "3600".into()],
        volumes: mount(),
        ..Default::default()
    };
    let c = client.create(request).await?.into_inner();
    client.start(pb::ContainerRef { id: c.id.clone() }).await?;
    let host_dir = config.dir.path().join("data");
    let (mut ours, mut host) = (Vec::new(), Vec::new());
    for _ in 0..WRITES {
        ours.push(in_container(&mut client, &c.id).await?);
        host.push(on_host(&host_dir).await?);
    }
    client.remove(pb::RemoveContainerRequest { id: c.id, force: true }).await?;
    let (o, h) = (median(&mut ours), median(&mut host));
    let mib = WRITE_MIB as f64;
    println!("{WRITE_MIB} MiB written with dd bs=1M conv=fsync, median of {WRITES}, interleaved:");
    println!("  inside a container, onto its volume: {o:.0} ms ({:.0} MiB/s)", mib / o * 1e3);
    println!("  on the host, a file on the same disk: {h:.0} ms ({:.0} MiB/s)", mib / h * 1e3);
    println!("throughput ratio (volume / host): {:.2}", h / o);
    figure(
        &format!("{WRITE_MIB} MiB dd onto a volume inside a container, median of {WRITES}"),
        Value(mib / o * 1e3, "MiB/s"),
        Some(("the same on the host's disk", Value(mib / h * 1e3, "MiB/s"))),
        "",
    )?;

    // Create-to-running with one volume against none.
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..CREATES {
        with.push(create_to_running(&mut client, mount()).await?);
        without.push(create_to_running(&mut client, Vec::new()).await?);
    }
    let (w, n) = (median(&mut with), median(&mut without));
    println!("create-to-running through container-runtime, median of {CREATES}, interleaved:");
    println!("  with one volume: {w:.1} ms");
    println!("  without:         {n:.1} ms");
    println!("ratio: {:.2}", w / n);
    figure(
        &format!("create-to-running with one volume, median of {CREATES}"),
        Value(w, "ms"),
        Some(("the same without a volume", Value(n, "ms"))),
        "",
    )?;

    client.delete_volume(pb::DeleteVolumeRequest { name: "bench".into() }).await?;
    if let Some(pid) = child.id() {
        common::process::send_signal(pid, nix::sys::signal::Signal::SIGTERM)?;
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    Ok(())
}
