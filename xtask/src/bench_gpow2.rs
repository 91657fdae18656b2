//! The CPU side of GPoW-2 (part of `bench-gpow`): the validator's verification work at
//! production size on every code path this CPU has, for one GPU and for eight, and the CPU
//! prover's throughput (tile GEMM, dataset build, walk) against the specification written out
//! plainly. Figures, not asserts: docs/benchmarks.md records them. One-thread figures are CPU
//! time of the thread doing the work; figures over several threads are wall time.

use gpu_attestor::gpow2::phase_a::{self, TileIndex};
use gpu_attestor::gpow2::phase_b::{self, Dataset};
use gpu_attestor::gpow2::{Challenge, GpuKeys, GpuWork, Isa};
use gpu_attestor::philox::philox4x32_10;

use super::report::{Value, figure};
use super::time_median;

/// GPOW.md's production work for an H100 SXM (80 GiB): m = n = 4096, k = 32768, 2560 products,
/// items = ⌊0.9 · memory / 64⌋ rounded down to a multiple of 32.
const H100: GpuWork = GpuWork { m: 4096, n: 4096, k: 32768, count: 2560, items: (80u64 << 30) * 9 / 640 / 32 * 32 };

/// Seconds this thread has run on a CPU (`/proc/thread-self/schedstat`, nanoseconds): on a
/// machine shared with other work a single thread's CPU time stays meaningful where its wall
/// time would not. The kernel adds the running slice to that figure when the thread leaves the
/// CPU; yielding first makes it current.
fn thread_cpu_seconds() -> anyhow::Result<f64> {
    std::thread::yield_now();
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let ns: u64 = text.split_whitespace().next().unwrap_or_default().parse()?;
    Ok(ns as f64 / 1e9)
}

/// Median CPU time of `runs` calls of `f` on this thread (one-thread work runs on the caller's
/// thread), in seconds.
fn cpu_median(runs: usize, mut f: impl FnMut()) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = thread_cpu_seconds()?;
        f();
        times.push(thread_cpu_seconds()? - start);
    }
    Ok(super::median(&mut times))
}

/// `n` distinct tiles and `lanes` distinct lanes of `work`, drawn from Philox with `seed`.
fn sample(work: &GpuWork, seed: u32, n: usize, lanes: usize) -> (Vec<TileIndex>, Vec<u32>) {
    let mut draws = (0u32..).map(|i| philox4x32_10([i, seed, 0, 0], [7, 7]));
    let mut tiles = Vec::new();
    while tiles.len() < n {
        let [a, b, c, _] = draws.next().unwrap_or_default();
        let t = TileIndex { p: a % work.count, ti: b % (work.m / 16), tj: c % (work.n / 16) };
        if !tiles.contains(&t) {
            tiles.push(t);
        }
    }
    let mut picked = Vec::new();
    while picked.len() < lanes {
        let l = (draws.next().unwrap_or_default()[3] as u64 % work.lanes()) as u32;
        if !picked.contains(&l) {
            picked.push(l);
        }
    }
    (tiles, picked)
}

/// A code path as the table names it: the AVX-512 path is taken only with VNNI.
fn path_name(isa: Isa) -> &'static str {
    match isa {
        Isa::Avx512 => "avx512 (VNNI)",
        other => other.name(),
    }
}

/// The validator's recomputation for one GPU: the sampled tiles and lanes.
fn verify_gpu(isa: Isa, keys: &GpuKeys, work: &GpuWork, tiles: &[TileIndex], lanes: &[u32], threads: usize) {
    let walk_key = keys.walk_key(&[9; 32]);
    std::hint::black_box(phase_a::tiles(isa, keys, work, tiles, threads).expect("tiles inside the work"));
    std::hint::black_box(phase_b::replay(isa, keys, work, walk_key, lanes, threads).expect("lanes inside the walk"));
}

pub(crate) fn run(threads: usize) -> anyhow::Result<()> {
    let paths = Isa::all_available();
    let names: Vec<&str> = paths.iter().map(|i| i.name()).collect();
    println!("\nGPoW-2 CPU benchmarks, {threads} hardware threads, code paths on this CPU: {}", names.join(", "));

    // One GPU at production size, 256 tiles and 128 lanes (G = 1), one thread, every path.
    let challenge = Challenge { gpus: vec![H100], ..Challenge::plain(1, 16, 1, 0) };
    let keys = challenge.gpu_keys()[0];
    let (tiles, lanes) = sample(&H100, 1, 256, 128);
    let mut scalar = (0.0, 0.0);
    let mut validator = Vec::new();
    for &isa in &paths {
        let t = cpu_median(3, || verify_gpu(isa, &keys, &H100, &tiles, &[], 1))?;
        let l = cpu_median(3, || verify_gpu(isa, &keys, &H100, &[], &lanes, 1))?;
        if isa == Isa::Scalar {
            scalar = (t, l);
        }
        println!(
            "validator, 1 GPU (256 tiles of 4096x4096x32768, 128 lanes of an 80 GiB dataset), 1 thread, {:>6}: tiles {:.0} ms ({:.3} ms each, {:.1}x scalar) + lanes {:.0} ms ({:.3} ms each, {:.1}x scalar) = {:.0} ms (goal <= 300 ms)",
            isa.name(),
            t * 1e3,
            t * 1e3 / 256.0,
            scalar.0 / t,
            l * 1e3,
            l * 1e3 / 128.0,
            scalar.1 / l,
            (t + l) * 1e3
        );
        validator.push((isa, t + l));
    }
    if let (Some(&(best, b)), Some(&(_, s))) = (validator.last(), validator.first()) {
        figure(
            &format!("GPoW-2 validator, 1 GPU at production size (256 tiles, 128 lanes), 1 thread, {}", best.name()),
            Value(b * 1e3, "ms"),
            Some(("the scalar path", Value(s * 1e3, "ms"))),
            "≤ 300 ms",
        )?;
    }

    // Eight GPUs (128 tiles and 128 lanes each, G > 1), best path, one thread and all.
    let best = Isa::best();
    let eight = Challenge { gpus: vec![H100; 8], ..Challenge::plain(2, 16, 1, 0) };
    let all_keys = eight.gpu_keys();
    let samples: Vec<_> = (0..8).map(|g| sample(&H100, 10 + g, 128, 128)).collect();
    let eight_gpus = |t: usize| {
        for (keys, (tiles, lanes)) in all_keys.iter().zip(&samples) {
            verify_gpu(best, keys, &H100, tiles, lanes, t);
        }
    };
    let cpu = cpu_median(3, || eight_gpus(1))?;
    let wall_one = time_median(3, || eight_gpus(1));
    let wall_all = time_median(3, || eight_gpus(threads));
    println!(
        "validator, 8 GPUs (128 tiles + 128 lanes each), {}: 1 thread {:.0} ms CPU (goal <= 1500 ms) / {:.0} ms wall; {threads} threads {:.0} ms wall",
        best.name(),
        cpu * 1e3,
        wall_one * 1e3,
        wall_all * 1e3
    );
    figure(
        &format!("GPoW-2 validator, 8 GPUs (128 tiles + 128 lanes each), {}, 1 thread, CPU time", best.name()),
        Value(cpu * 1e3, "ms"),
        None,
        "≤ 1500 ms",
    )?;

    // The CPU prover: one 1024^3 product, tiles and leaves, one thread, against the
    // specification written out (tile_reference: Philox a block at a time, the triple loop).
    let work = GpuWork { m: 1024, n: 1024, k: 1024, count: 1, items: 0 };
    let ops = 2.0 * 1024f64.powi(3);
    let mut previous: Option<(Isa, f64)> = None;
    for &isa in &paths {
        let s = cpu_median(3, || {
            std::hint::black_box(phase_a::product_leaves(isa, &keys, &work, 0, 1));
        })?;
        let rate = ops / s / 1e9;
        println!("prover, tile GEMM + leaves of a 1024^3 product, 1 thread, {:>6}: {rate:.2} Gop/s", isa.name());
        // Each path beside the one before it (AVX2 beside scalar, AVX-512 VNNI beside AVX2).
        if let Some((before, before_rate)) = previous {
            figure(
                &format!("int8 GEMM (tiles and leaves of a 1024^3 product), 1 core, {}", path_name(isa)),
                Value(rate, "Gop/s"),
                Some((before.name(), Value(before_rate, "Gop/s"))),
                "",
            )?;
        }
        previous = Some((isa, rate));
    }
    let t = cpu_median(3, || {
        std::hint::black_box(phase_a::tile_reference(&keys, 1024, TileIndex { p: 0, ti: 1, tj: 2 }));
    })?;
    println!(
        "prover, the specification written out (one tile at a time, k = 1024): {:.2} Gop/s",
        2.0 * 256.0 * 1024.0 / t / 1e9
    );

    // Phase B on the prover: build a 64 MiB dataset, walk it; per path, one thread.
    let small = GpuWork { items: 1 << 20, ..work };
    let mut dataset = None;
    for &isa in &paths {
        let started = thread_cpu_seconds()?;
        let d = Dataset::build(isa, &keys, &small, 1)?;
        let build = thread_cpu_seconds()? - started;
        let walk_key = keys.walk_key(&[9; 32]);
        let w = cpu_median(3, || {
            std::hint::black_box(d.walk(isa, walk_key, 1));
        })?;
        println!(
            "prover, dataset of 2^20 items (64 MiB), 1 thread, {:>6}: build {:.0} items/s, walk {:.0} lanes/s ({} lanes)",
            isa.name(),
            (1u64 << 20) as f64 / build,
            small.lanes() as f64 / w,
            small.lanes()
        );
        if let Some(previous) = &dataset {
            anyhow::ensure!(previous == &d, "{} built another dataset than the scalar path", isa.name());
        }
        dataset = Some(d);
    }
    Ok(())
}
