//! `cargo xtask <task>`: project automation that is Rust, not shell.
//!
//! - `dist [--out DIR]`: release build; the reproducible tarball operators deploy
//!   (`target/dist/executor-<version>-x86_64-linux.tar.gz`, see `dist.rs`).
//! - `config-reference [--check]`: the configuration reference in docs/executor.md, from the
//!   doc comments of `common::config` (see `config_doc.rs`).
//! - `ptx [--check]`: the PTX of the GPU kernels with NVRTC from the pinned wheel, into `ptx/`
//!   (see `ptx.rs`).
//! - `invariants`: the architecture's boundaries (who links Docker, NVML, CUDA; the standalone
//!   attestor; gRPC on the network only in executor-api), checked (see `invariants.rs`).
//! - `bench-startup [--runs N]`: release build; cold start of the launcher until every service
//!   is SERVING, beside a baseline that starts the same four services directly and in parallel
//!   (no supervision); then the resident memory of the five idle processes.
//! - `bench-monitor`: release build; gpu-monitor's CPU cost while collecting at 1 Hz and its
//!   scrape latency (p50, p99), beside the distribution's node_exporter when it is installed.
//! - `bench-containers`: release build; create-to-running latency through container-runtime's
//!   API against `docker run -d` of the same image, median of 30, side by side.
//! - `bench-signatures`: release build; a create with `verify_signatures` (a signed image in a
//!   local registry) beside one without, median of 30, interleaved.
//! - `bench-tenant-ssh`: release build; a renter's ssh `true` into a container beside `docker
//!   exec` and the validator path, and scp of 256 MiB beside `docker cp` (`bench_tenant.rs`).
//! - `bench-ports`: release build of container-runtime; create-to-running with 3 published
//!   ports beside `docker run -d -p`, and throughput through a published port (issue 20).
//! - `bench-volumes`: release build of container-runtime; `dd` onto a volume inside a container
//!   beside the same on the host's disk, and create-to-running with one volume beside none.
//! - `bench-resume`: release build of container-runtime; ten rentals stopped by the engine while
//!   the service is down run again when it starts, beside `docker start` of the same ten.
//! - `bench-events`: (release, as `make bench-events` runs it) a container's death through the
//!   engine's kill call to the `DIED` event at a signed `WatchEvents` client, p50 and p99, beside
//!   the engine's own `die` event at a client of its event stream.
//! - `bench-api`: (release, as `make bench-api` runs it) authenticated unary RPC latency (p50,
//!   p99) and throughput with many concurrent clients, beside the same RPC, same layer and
//!   same process with authentication left out.
//! - `bench-doors`: release build; `executor ctl identity` and a signed call on an open
//!   connection, p50 and p99, with nobody else at the public port and then, in the same run,
//!   while 1000 idle connections and a 2000-call bad-signature flood hit it (see
//!   `bench_doors.rs`).
//! - `bench-gpow`: the CPU side of GPoW-2 (run it with `--release`, as `make bench-gpow` does;
//!   see `bench_gpow2.rs`): validator time at production size per code path, for one GPU and
//!   eight, and the CPU prover's throughput against the specification written out.

mod bench_api;
mod bench_doors;
mod bench_events;
mod bench_gpow2;
mod bench_ports;
mod bench_resume;
mod bench_signatures;
mod bench_tenant;
mod bench_volumes;
mod config_doc;
mod dist;
mod faults;
mod invariants;
mod load;
mod ptx;
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::ServiceName;
use common::process::{ProcessSpec, send_signal};
use e2e::{Node, TestConfig, wait_serving};
use nix::sys::signal::Signal;
use report::{Value, figure};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match args.first().map(String::as_str) {
        Some("dist") => runtime.block_on(dist::run(&args[1..])),
        Some("config-reference") => config_doc::run(&args[1..]),
        Some("ptx") => ptx::run(&args[1..]),
        Some("invariants") => runtime.block_on(invariants::run()),
        Some("bench-table") => report::run(&args[1..]),
        Some("bench-gpow") => bench_gpow(),
        Some("bench-api") => bench_api::run(),
        Some("bench-doors") => bench_doors::run(),
        Some("bench-events") => bench_events::run(),
        Some("bench-monitor") => runtime.block_on(bench_monitor()),
        Some("bench-containers") => runtime.block_on(bench_containers()),
        Some("bench-ssh") => runtime.block_on(bench_ssh()),
        Some("bench-tenant-ssh") => runtime.block_on(bench_tenant::run()),
        Some("bench-ports") => runtime.block_on(bench_ports::run()),
        Some("bench-volumes") => runtime.block_on(bench_volumes::run()),
        Some("bench-resume") => runtime.block_on(bench_resume::run()),
        Some("bench-signatures") => runtime.block_on(bench_signatures::bench_signatures()),
        Some("load") => runtime.block_on(load::load()),
        Some("faults") => runtime.block_on(faults::faults()),
        Some("bench-startup") => {
            let runs = match args.get(1).map(String::as_str) {
                Some("--runs") => args.get(2).context("--runs N")?.parse()?,
                _ => 10,
            };
            runtime.block_on(bench_startup(runs))
        }
        _ => bail!(
            "usage: cargo xtask dist [--out DIR] | config-reference [--check] | invariants | bench-startup [--runs N] | bench-monitor | bench-containers | bench-signatures | bench-ssh | bench-tenant-ssh | bench-ports | bench-volumes | bench-resume | load | faults | bench-doors | cargo xtask-release bench-gpow | bench-api | bench-events"
        ),
    }
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

/// `cargo build --release` of every binary of the workspace at `root`, xtask included: every
/// benchmark measures binaries of this one build, whichever it needs, and `make bench` runs
/// the xtask it built, so the build is done once and is a no-op here. A build of one package
/// alone resolves features apart: it would compile the shared crates again, and the next
/// workspace build again.
///
/// Run through [`e2e::process::cargo`]: without the variables `cargo xtask` gave this process.
pub(crate) async fn build_release(root: &Path) -> anyhow::Result<()> {
    let spec = e2e::process::cargo()
        .args(["build", "--release", "--quiet", "--workspace", "--bins"])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"));
    let out = spec.output(Duration::from_secs(1800), 1 << 20).await?;
    if !out.status.success() {
        bail!("cargo build --release --workspace --bins failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Resident memory of `pid` in KiB: all of it (`VmRSS`) and its anonymous part (`RssAnon`,
/// the process's own heap and stacks; the rest is file pages, mostly its binary's code mapped
/// from the page cache, which the kernel can drop and which other processes of the same
/// binary share).
fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name}"))?;
        Ok(line.split_whitespace().nth(1).with_context(|| format!("{name} value"))?.parse()?)
    };
    Ok((field("VmRSS:")?, field("RssAnon:")?))
}

/// Child processes of `pid`, whichever of its threads started them.
fn children(pid: u32) -> anyhow::Result<Vec<u32>> {
    let mut kids = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let text = std::fs::read_to_string(task?.path().join("children")).unwrap_or_default();
        kids.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    Ok(kids)
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn bench_startup(runs: usize) -> anyhow::Result<()> {
    let root = workspace_root();
    println!("building release binaries ...");
    build_release(&root).await?;
    let bin = root.join("target/release");
    let (mut launcher_ms, mut baseline_ms, mut rss_mb, mut anon_mb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let quiet = "\n[logging]\nlevel = \"warn\"\n";
    for _ in 0..runs {
        // Launcher: sequential, health-gated start of the four services.
        let start = Instant::now();
        let mut node = Node::start_from(&bin, TestConfig::new(quiet)).await;
        launcher_ms.push(start.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(500)).await; // settle to idle
        let pid = node.pid();
        let (mut total, mut anon) = rss_kib(pid)?;
        let kids = children(pid)?;
        anyhow::ensure!(kids.len() == 4, "expected 4 services, found {kids:?}");
        for kid in kids {
            let (rss, a) = rss_kib(kid)?;
            total += rss;
            anon += a;
        }
        rss_mb.push(total as f64 / 1024.0);
        anon_mb.push(anon as f64 / 1024.0);
        let (status, output) = node.stop_with(Signal::SIGTERM, Duration::from_secs(15)).await;
        anyhow::ensure!(status.success(), "launcher failed: {output}");

        // Baseline: the same services started directly, all at once, no supervision.
        let config = TestConfig::new(quiet);
        let start = Instant::now();
        let mut kids = Vec::new();
        for service in ServiceName::SUPERVISED {
            kids.push(
                ProcessSpec::new(bin.join(service.as_str()))
                    .arg("--config")
                    .arg(&config.path)
                    .arg("--supervised")
                    .spawn_supervised()?,
            );
        }
        for service in ServiceName::SUPERVISED {
            wait_serving(&service.socket(&config.runtime_dir()), Duration::from_secs(30)).await?;
        }
        baseline_ms.push(start.elapsed().as_secs_f64() * 1e3);
        for kid in &mut kids {
            send_signal(kid.id().context("pid")?, Signal::SIGTERM)?;
            kid.wait().await?;
        }
    }
    let (l, b, r, a) = (median(&mut launcher_ms), median(&mut baseline_ms), median(&mut rss_mb), median(&mut anon_mb));
    println!("runs: {runs}");
    println!(
        "cold start to all SERVING, launcher (sequential, health-gated): median {l:.1} ms (min {:.1}, max {:.1})",
        launcher_ms[0],
        launcher_ms[runs - 1]
    );
    println!(
        "baseline, 4 services started directly in parallel:              median {b:.1} ms (min {:.1}, max {:.1})",
        baseline_ms[0],
        baseline_ms[runs - 1]
    );
    println!("ratio launcher / baseline: {:.2}", l / b);
    println!(
        "resident memory of the 5 idle processes: median {r:.1} MiB (min {:.1}, max {:.1})",
        rss_mb[0],
        rss_mb[runs - 1]
    );
    figure(
        &format!("cold start to all SERVING, median of {runs}"),
        Value(l, "ms"),
        Some(("the 4 services started directly, in parallel", Value(b, "ms"))),
        "< 1 s",
    )?;
    println!("  of which anonymous (heap and stacks; the rest is mapped file pages): median {a:.1} MiB");
    figure("resident memory (VmRSS) of the 5 idle processes", Value(r, "MiB"), None, "< 60 MiB")?;
    figure("anonymous resident memory (RssAnon) of the 5 idle processes", Value(a, "MiB"), None, "")?;
    Ok(())
}

/// Median wall time of `runs` calls of `f`, in seconds.
fn time_median(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    median(&mut times)
}

fn bench_gpow() -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        bail!("run it optimised: cargo xtask-release bench-gpow (or make bench-gpow)");
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    bench_gpow2::run(threads)
}

/// Reads and drops a child's output so it never blocks on a full pipe.
pub(crate) fn drain(child: &mut tokio::process::Child) {
    if let Some(mut out) = child.stdout.take() {
        tokio::spawn(async move { tokio::io::copy(&mut out, &mut tokio::io::sink()).await });
    }
    if let Some(mut err) = child.stderr.take() {
        tokio::spawn(async move { tokio::io::copy(&mut err, &mut tokio::io::sink()).await });
    }
}

/// CPU time (user + system) of a process, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').context("stat")?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command name.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(ticks / hz)
}

/// p50 and p99 of `n` sequential scrapes of `port`, in ms.
async fn scrape_latency(port: u16, n: usize) -> anyhow::Result<(f64, f64, usize)> {
    let mut times = Vec::with_capacity(n);
    let mut size = 0;
    for _ in 0..n {
        let start = Instant::now();
        let (code, body) = e2e::http_get(port, "/metrics").await?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(code == 200, "scrape returned {code}");
        size = body.len();
    }
    times.sort_by(f64::total_cmp);
    Ok((times[n / 2], times[n * 99 / 100], size))
}

async fn bench_monitor() -> anyhow::Result<()> {
    let root = workspace_root();
    build_release(&root).await?;
    let config = TestConfig::with_system(
        "gpu_backend = \"simulated\"\nsimulated_gpus_file = \"{dir}/gpus.json\"\nupdate_interval = \"1s\"\ncollector_timeout = \"500ms\"",
        "\n[logging]\nlevel = \"warn\"\n",
    );
    let gpus: Vec<String> = (0..8)
        .map(|i| {
            format!(
                r#"{{"uuid":"GPU-0000000{i}-2222-3333-4444-555555555555","name":"Simulated H100","pci_bus_id":"00000000:1{i}:00.0","memory_total_bytes":85899345920,"memory_used_bytes":1073741824,"throttle_reasons":["sw_power_cap"]}}"#
            )
        })
        .collect();
    std::fs::write(config.dir.path().join("gpus.json"), format!(r#"{{"gpus":[{}]}}"#, gpus.join(",")))?;
    let mut child = ProcessSpec::new(root.join("target/release/gpu-monitor"))
        .arg("--config")
        .arg(&config.path)
        .spawn_supervised()?;
    drain(&mut child);
    let pid = child.id().context("pid")?;
    wait_serving(&ServiceName::GpuMonitor.socket(&config.runtime_dir()), Duration::from_secs(30)).await?;
    let window = Duration::from_secs(30);
    let (t0, c0) = (Instant::now(), cpu_seconds(pid)?);
    tokio::time::sleep(window).await;
    let cpu_percent = (cpu_seconds(pid)? - c0) / t0.elapsed().as_secs_f64() * 100.0;
    println!(
        "gpu-monitor (8 simulated GPUs + host, 1 Hz): {cpu_percent:.3} % of one core over {window:?} (goal < 0.5 %)"
    );
    let (p50, p99, size) = scrape_latency(config.ports.metrics[2], 2000).await?;
    println!("gpu-monitor scrape: p50 {p50:.3} ms, p99 {p99:.3} ms over 2000 scrapes, {size} bytes (goal p99 < 5 ms)");
    send_signal(pid, Signal::SIGTERM)?;
    child.wait().await?;

    // Baseline: the distribution's node_exporter, which collects on the scrape path.
    let baseline = match ["/usr/bin/prometheus-node-exporter", "/usr/bin/node_exporter"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    {
        Some(exporter) => Some(node_exporter(exporter).await?),
        None => {
            println!("baseline: node_exporter is not installed (apt-get install prometheus-node-exporter)");
            None
        }
    };
    if let Some((b_cpu, b99)) = baseline {
        println!("ratios gpu-monitor / node_exporter: CPU {:.2}, scrape p99 {:.2}", cpu_percent / b_cpu, p99 / b99);
    }
    let name = "node_exporter scraped at 1 Hz";
    figure(
        "gpu-monitor CPU, 8 simulated GPUs and the host at 1 Hz",
        Value(cpu_percent, "% of a core"),
        baseline.map(|(cpu, _)| (name, Value(cpu, "% of a core"))),
        "< 0.5 %",
    )?;
    figure("gpu-monitor scrape p99", Value(p99, "ms"), baseline.map(|(_, p99)| (name, Value(p99, "ms"))), "< 5 ms")
}

/// node_exporter scraped at 1 Hz for 30 s, then 500 times in a row: its CPU (% of a core)
/// and its scrape p99 (ms).
async fn node_exporter(exporter: &Path) -> anyhow::Result<(f64, f64)> {
    let port = e2e::free_port();
    let mut baseline =
        ProcessSpec::new(exporter).arg(format!("--web.listen-address=127.0.0.1:{port}")).spawn_supervised()?;
    drain(&mut baseline);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bpid = baseline.id().context("pid")?;
    let (t0, c0) = (Instant::now(), cpu_seconds(bpid)?);
    // Prometheus scraping node_exporter at 1 Hz is what costs it CPU: scrape it at 1 Hz too.
    for _ in 0..30 {
        e2e::http_get(port, "/metrics").await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let b_cpu = (cpu_seconds(bpid)? - c0) / t0.elapsed().as_secs_f64() * 100.0;
    let (b50, b99, bsize) = scrape_latency(port, 500).await?;
    println!(
        "baseline node_exporter, scraped at 1 Hz: {b_cpu:.3} % of one core; scrape p50 {b50:.3} ms, p99 {b99:.3} ms, {bsize} bytes"
    );
    send_signal(bpid, Signal::SIGTERM)?;
    baseline.wait().await?;
    Ok((b_cpu, b99))
}

pub(crate) type RuntimeClient =
    common::proto::runtime::v1::container_runtime_client::ContainerRuntimeClient<tonic::transport::Channel>;

/// Starts the release container-runtime on `config` and connects to it.
pub(crate) async fn start_runtime(
    root: &Path,
    config: &TestConfig,
) -> anyhow::Result<(tokio::process::Child, RuntimeClient)> {
    let mut child = ProcessSpec::new(root.join("target/release/container-runtime"))
        .arg("--config")
        .arg(&config.path)
        .spawn_supervised()?;
    drain(&mut child);
    let socket = ServiceName::ContainerRuntime.socket(&config.runtime_dir());
    wait_serving(&socket, Duration::from_secs(30)).await?;
    Ok((child, RuntimeClient::new(common::grpc::unix_channel(&socket))))
}

/// The public API's handlers for a node served in-process by a bench, as the executor
/// `identity`, on `config` (from `test_config`).
pub(crate) fn bench_handlers(
    config: &common::config::Config,
    identity: &common::identity::ExecutorIdentity,
    test_config: &TestConfig,
) -> executor_api::api::Api {
    let dir = test_config.dir.path();
    executor_api::api::Api::new(
        config,
        identity.executor_id(),
        identity.public_key(),
        dir,
        dir.join("key"),
        test_config.path.clone(),
    )
}

/// Milliseconds from the create request to a running container with `volumes`; the container
/// is removed.
pub(crate) async fn create_to_running(
    client: &mut RuntimeClient,
    volumes: Vec<common::proto::runtime::v1::VolumeMount>,
) -> anyhow::Result<f64> {
    use common::proto::runtime::v1 as pb;
    let start = Instant::now();
    let request = pb::CreateContainerRequest {
        image: e2e::BUSYBOX_IMAGE.into(),
        command: vec!["sleep".into(), "60".into()],
        volumes,
        ..Default::default()
    };
    let c = client.create(request).await?.into_inner();
    client.start(pb::ContainerRef { id: c.id.clone() }).await?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    client.remove(pb::RemoveContainerRequest { id: c.id, force: true }).await?;
    Ok(ms)
}

async fn bench_containers() -> anyhow::Result<()> {
    let root = workspace_root();
    build_release(&root).await?;
    anyhow::ensure!(e2e::busybox_image().await, "needs Docker and busybox-static");
    let quiet = "\n[logging]\nlevel = \"warn\"\n[docker]\nmax_concurrent_containers = 100\n";
    let runs = 30;
    let variants = [
        ("own network per container, joining a spare's holder (default)", ""),
        (
            "own network per container, no spares (a namespace of its own)",
            "[docker.network_config]\nspare_networks = 0\n",
        ),
        ("no isolation (none network, nothing to shape)", "[docker.network_config]\nenable_isolation = false\n"),
    ];
    let mut services = Vec::new();
    for (_, extra) in &variants {
        let config = TestConfig::new(&format!("{quiet}{extra}"));
        let (child, client) = start_runtime(&root, &config).await?;
        services.push((config, child, client, Vec::new()));
    }
    // Let the pool fill (networks and their holders) before the first measurement, as it is on
    // a node that has been up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // docker run on a network like each tenant's own (a bridge `bai-…`, no inter-container
    // traffic): what Docker alone costs for the isolation, with none of our work.
    let network = format!("basilica-bench-{}", std::process::id());
    let out = ProcessSpec::new("docker")
        .args(["network", "create", "-o", "com.docker.network.bridge.enable_icc=false"])
        .args(["-o", "com.docker.network.bridge.name=bai-bench", &network])
        .output(Duration::from_secs(60), 1 << 12)
        .await?;
    anyhow::ensure!(out.status.success(), "docker network create: {}", String::from_utf8_lossy(&out.stderr));
    let (mut baseline, mut baseline_isolated) = (Vec::new(), Vec::new());
    // Interleaved, so a slow spell of the machine hits every variant alike, with an idle second
    // after each (as between real tenant creates) in which removals and pool refills finish.
    let idle = Duration::from_secs(1);
    for _ in 0..runs {
        for (_, _, client, times) in &mut services {
            times.push(create_to_running(client, Vec::new()).await?);
            tokio::time::sleep(idle).await;
        }
        // docker run -d of the same image and command, on the default bridge and on a network
        // like ours.
        for (times, net) in [(&mut baseline, "bridge"), (&mut baseline_isolated, network.as_str())] {
            let start = Instant::now();
            let out = ProcessSpec::new("docker")
                .args(["run", "-d", "--network", net, e2e::BUSYBOX_IMAGE, "sleep", "60"])
                .output(Duration::from_secs(60), 1 << 12)
                .await?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(out.status.success(), "docker run failed");
            let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            ProcessSpec::new("docker").args(["rm", "-f", &id]).output(Duration::from_secs(60), 1 << 12).await?;
            tokio::time::sleep(idle).await;
        }
    }
    ProcessSpec::new("docker").args(["network", "rm", &network]).output(Duration::from_secs(60), 1 << 12).await?;
    let b = median(&mut baseline);
    let bi = median(&mut baseline_isolated);
    println!("create-to-running, median of {runs}, interleaved:");
    for (i, ((name, _), (_, child, _, times))) in variants.iter().zip(&mut services).enumerate() {
        let m = median(times);
        let goal = if i == 0 { "≤ 1.15" } else { "" };
        figure(
            &format!("create-to-running through the API, {name}, median of {runs}"),
            Value(m, "ms"),
            Some(("`docker run -d`, default bridge", Value(b, "ms"))),
            goal,
        )?;
        if i == 0 {
            figure(
                &format!("the same, beside Docker on a network like ours, median of {runs}"),
                Value(m, "ms"),
                Some(("`docker run -d` on a bridge without inter-container traffic", Value(bi, "ms"))),
                "",
            )?;
        }
        println!(
            "  container-runtime API, {name}: {m:.1} ms = {:.2} x docker run, {:.2} x docker run on a network like ours",
            m / b,
            m / bi
        );
        // SIGTERM, so the spare networks are removed.
        if let Some(pid) = child.id() {
            common::process::send_signal(pid, nix::sys::signal::Signal::SIGTERM)?;
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    }
    println!("  docker run -d (CLI, default bridge): {b:.1} ms");
    println!("  docker run -d (CLI, a bridge without inter-container traffic, like ours): {bi:.1} ms");
    Ok(())
}

/// Milliseconds for `ssh ... true` to `user@127.0.0.1:port` with `key`: connect, key exchange,
/// public-key authentication, exec, exit status.
async fn ssh_true(port: u16, key: &Path, user: &str) -> anyhow::Result<f64> {
    let start = Instant::now();
    let out = ProcessSpec::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "BatchMode=yes", "-p", &port.to_string(), &format!("{user}@127.0.0.1"), "true"])
        .output(Duration::from_secs(30), 1 << 16)
        .await?;
    anyhow::ensure!(out.status.success(), "ssh to port {port}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

pub(crate) async fn run_checked(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = ProcessSpec::new(program).args(args.iter().copied()).output(Duration::from_secs(60), 1 << 16).await?;
    anyhow::ensure!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// validator-access's SSH server against the distribution's sshd: `ssh host true`, median of
/// 50 each, interleaved.
async fn bench_ssh() -> anyhow::Result<()> {
    use common::proto::access::v1 as pb;
    let root = workspace_root();
    build_release(&root).await?;
    anyhow::ensure!(Path::new("/usr/sbin/sshd").exists(), "needs the distribution's sshd (openssh-server)");
    let config = TestConfig::new(
        "[validator.access_config.rate_limits]\nssh_requests_per_minute = 100000\n[logging]\nlevel = \"warn\"\n",
    );
    let dir = config.dir.path();
    let key = dir.join("id_ed25519");
    let public = e2e::keys::ssh_keygen(&key, "bench").await;

    // Ours: not strict, so `true` runs (as `sh -c true`, the command user, an empty environment).
    let mut ours = ProcessSpec::new(root.join("target/release/validator-access"))
        .arg("--config")
        .arg(&config.path)
        .env("EXECUTOR_VALIDATOR__STRICT_SSH_RESTRICTIONS", "false")
        .spawn_supervised()?;
    drain(&mut ours);
    let socket = ServiceName::ValidatorAccess.socket(&config.runtime_dir());
    wait_serving(&socket, Duration::from_secs(30)).await?;
    let mut client = pb::validator_access_client::ValidatorAccessClient::new(common::grpc::unix_channel(&socket));
    let keypair = e2e::keys::sr25519(42);
    let hotkey = e2e::keys::hotkey_of(&keypair);
    let request =
        pb::ChallengeRequest { validator_hotkey: hotkey.clone(), ssh_public_key: public.clone(), ttl_seconds: 3600 };
    let challenge = client.request_challenge(request).await?.into_inner();
    let signature = e2e::keys::sign(&keypair, &challenge.message);
    client
        .provision(pb::ProvisionRequest {
            validator_hotkey: hotkey,
            ssh_public_key: public.clone(),
            ttl_seconds: 3600,
            challenge_id: challenge.challenge_id,
            signature,
        })
        .await?;

    // The distribution's sshd on another port, the same key authorised for root.
    std::fs::write(dir.join("authorized_keys"), &public)?;
    let sshd = e2e::sshd::Sshd::start(dir, &dir.join("authorized_keys"), "PermitRootLogin prohibit-password").await;
    let sshd_port = sshd.port;

    let runs = 50;
    let (mut ours_ms, mut openssh_ms) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        ours_ms.push(ssh_true(config.ports.ssh, &key, "validator").await?);
        openssh_ms.push(ssh_true(sshd_port, &key, "root").await?);
    }
    let (o, b) = (median(&mut ours_ms), median(&mut openssh_ms));
    println!("ssh connect + authenticate + exec `true`, median of {runs}, interleaved:");
    println!("  validator-access (russh, grant lookup, setpriv + env -i + sh -c true): {o:.1} ms");
    println!("  OpenSSH sshd (root, login shell runs true):                          {b:.1} ms");
    println!("ratio: {:.2}", o / b);
    figure(
        &format!("validator ssh: connect, authenticate, exec `true`, median of {runs}"),
        Value(o, "ms"),
        Some(("OpenSSH sshd", Value(b, "ms"))),
        "≤ 1.5",
    )?;
    drop(ours);
    drop(sshd);
    Ok(())
}
