//! `cargo xtask <task>`: project automation that is Rust, not shell.
//!
//! - `bench-startup [--runs N]`: release build; cold start of the launcher until every service
//!   is SERVING, beside a baseline that starts the same four services directly and in parallel
//!   (no supervision); then the resident memory of the five idle processes.
//! - `bench-gpow`: the CPU side of GPoW-1 (run it with `--release`, as `make bench-gpow` does):
//!   GEMM throughput beside a naive triple loop, prover time for the guide's example, validator
//!   time to verify it and a 4096-dim product.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::ServiceName;
use common::process::{ProcessSpec, send_signal};
use e2e::{Node, TestConfig, wait_serving};
use nix::sys::signal::Signal;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match args.first().map(String::as_str) {
        Some("bench-gpow") => bench_gpow(),
        Some("bench-startup") => {
            let runs = match args.get(1).map(String::as_str) {
                Some("--runs") => args.get(2).context("--runs N")?.parse()?,
                _ => 10,
            };
            runtime.block_on(bench_startup(runs))
        }
        _ => bail!("usage: cargo xtask bench-startup [--runs N] | cargo xtask --release bench-gpow"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

async fn run_checked(spec: ProcessSpec, timeout: Duration) -> anyhow::Result<()> {
    let out = spec.output(timeout, 1 << 20).await?;
    if !out.status.success() {
        bail!("{} failed:\n{}", spec.program().display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
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

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn bench_startup(runs: usize) -> anyhow::Result<()> {
    let root = workspace_root();
    println!("building release binaries ...");
    run_checked(
        ProcessSpec::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--workspace", "--bins", "--quiet"])
            .arg("--manifest-path")
            .arg(root.join("Cargo.toml")),
        Duration::from_secs(1800),
    )
    .await?;
    let bin = root.join("target/release");
    let (mut launcher_ms, mut baseline_ms, mut rss_mb) = (Vec::new(), Vec::new(), Vec::new());
    let quiet = "\n[logging]\nlevel = \"warn\"\n";
    for _ in 0..runs {
        // Launcher: sequential, health-gated start of the four services.
        let start = Instant::now();
        let mut node = Node::start_from(&bin, TestConfig::new(quiet)).await;
        launcher_ms.push(start.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(500)).await; // settle to idle
        let pid = node.pid();
        let mut total = rss_kib(pid)?;
        let kids = children(pid)?;
        anyhow::ensure!(kids.len() == 4, "expected 4 services, found {kids:?}");
        for kid in kids {
            total += rss_kib(kid)?;
        }
        rss_mb.push(total as f64 / 1024.0);
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
            wait_serving(&service.socket(&config.runtime_dir()), Duration::from_secs(30))
                .await
                .map_err(anyhow::Error::msg)?;
        }
        baseline_ms.push(start.elapsed().as_secs_f64() * 1e3);
        for kid in &mut kids {
            send_signal(kid.id().context("pid")?, Signal::SIGTERM)?;
            kid.wait().await?;
        }
    }
    let (l, b, r) = (median(&mut launcher_ms), median(&mut baseline_ms), median(&mut rss_mb));
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
    Ok(())
}

/// A, B and Bᵀ of a d×d×d product, from Philox.
fn square_inputs(d: usize) -> (Vec<i8>, Vec<i8>, Vec<i8>) {
    use gpu_attestor::gemm;
    let (mut a, mut b, mut bt) = (vec![0i8; d * d], vec![0i8; d * d], vec![0i8; d * d]);
    gemm::generate(d as u32, d as u32, 0, [1, 2], &mut a);
    gemm::generate(d as u32, d as u32, 0, [3, 4], &mut b);
    gemm::transpose(&b, d, d, &mut bt);
    (a, b, bt)
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
    use gpu_attestor::params::Params;
    use gpu_attestor::{gemm, prove, verify};
    if cfg!(debug_assertions) {
        bail!("run it optimised: cargo xtask-release bench-gpow (or make bench-gpow)");
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("GPoW-1 CPU benchmarks, {threads} hardware threads");

    // GEMM alone, one thread, against the naive triple loop over row-major B.
    let d = 256usize;
    let (a, b, bt) = square_inputs(d);
    let mut c = vec![0i32; d * d];
    let ops = 2.0 * (d * d * d) as f64;
    let ours = time_median(9, || gemm::gemm(&a, &bt, d, d, d, 1, &mut c));
    let naive = time_median(3, || {
        for i in 0..d {
            for j in 0..d {
                let mut acc = 0i32;
                for t in 0..d {
                    acc += i32::from(a[i * d + t]) * i32::from(b[t * d + j]);
                }
                c[i * d + j] = std::hint::black_box(acc);
            }
        }
    });
    println!(
        "int8 GEMM 256^3, 1 thread: {:.2} Gop/s (naive triple loop {:.2} Gop/s, ratio {:.1}x)",
        ops / ours / 1e9,
        ops / naive / 1e9,
        naive / ours
    );
    let d = 1024usize;
    let (a, _, bt) = square_inputs(d);
    let mut c = vec![0i32; d * d];
    let ops = 2.0 * (d * d * d) as f64;
    let one = time_median(3, || gemm::gemm(&a, &bt, d, d, d, 1, &mut c));
    let all = time_median(3, || gemm::gemm(&a, &bt, d, d, d, threads, &mut c));
    println!(
        "int8 GEMM 1024^3: 1 thread {:.2} Gop/s per core; {threads} threads {:.2} Gop/s ({:.2} per core)",
        ops / one / 1e9,
        ops / all / 1e9,
        ops / all / 1e9 / threads as f64
    );

    // The guide's example: the whole prover (generation, GEMM, hashing, commitment).
    let params = Params::plain(12345, 256, 1000);
    let start = Instant::now();
    let commitment = prove::commit(&params, threads);
    let prove_s = start.elapsed().as_secs_f64();
    println!(
        "prover, guide example 256 x 1000 ({threads} threads): {:.0} ms, {:.2} Gop/s; checksum {}",
        prove_s * 1e3,
        params.ops() / prove_s / 1e9,
        commitment.checksum()
    );
    let samples = verify::sample(&params, verify::fiat_shamir_seed(&commitment.root, &params.nonce));
    let openings: Vec<_> = samples.iter().map(|s| prove::open(&params, s, threads)).collect();
    let verify_s = time_median(9, || {
        verify::check_openings(&params, &commitment, &samples, &openings).expect("honest proof verifies")
    });
    println!(
        "validator, verify 256 x 1000 ({} products sampled, 1 thread): {:.1} ms (goal <= 50 ms); prover/validator {:.0}x",
        samples.len(),
        verify_s * 1e3,
        prove_s * threads as f64 / verify_s
    );

    // One 4096-dim product.
    let params = Params::plain(1, 4096, 1);
    let start = Instant::now();
    let commitment = prove::commit(&params, threads);
    let prove_s = start.elapsed().as_secs_f64();
    let samples = verify::sample(&params, verify::fiat_shamir_seed(&commitment.root, &params.nonce));
    let openings: Vec<_> = samples.iter().map(|s| prove::open(&params, s, threads)).collect();
    let verify_s = time_median(3, || {
        verify::check_openings(&params, &commitment, &samples, &openings).expect("honest proof verifies")
    });
    println!(
        "4096-dim product: prover {:.0} ms ({threads} threads, {:.2} Gop/s); validator verify {:.0} ms (1 thread, goal <= 200 ms)",
        prove_s * 1e3,
        params.ops() / prove_s / 1e9,
        verify_s * 1e3
    );
    Ok(())
}
