//! `gpu-attestor gpu-check`: everything a GPU machine is lent for, in one run (`make gpu-check`,
//! `scripts/gpu-check.sh`), as one JSON document.
//!
//! 1. The backend opens and self-tests every GPU (time per GPU).
//! 2. Every kernel against the CPU reference on a ladder of shapes up to the production one (run
//!    last: a kernel that faults on a shape loses this process's context for what follows),
//!    and phase B on a ladder of dataset sizes: every root must agree.
//! 3. The guide's example (`--seed 12345 --matrix-dim 256 --num-matrices 1000`) end to end
//!    after set-up, checksum against the CPU's.
//! 4. Phase A throughput of each kernel at the production shape (TOPS, and the fraction of the
//!    profile's dense int8 peak), phase B at the production dataset size with each walk kernel
//!    (walk GB/s, and the fraction of the profile's memory bandwidth).
//! 5. The time references for `profiles.json`: the median of `runs` runs of the profile's own
//!    work (phase A, build, walk), with the driver version.
//!
//! Any disagreement or failure is listed in `failures`; the command exits 1 when there is one.
//! Each stage's results are also told as it ends ([`check`]'s `progress`; the command prints
//! them on stderr), so a run killed at its time limit keeps what it measured.

use std::time::Instant;

use serde::Serialize;

use super::backend::{Backend, CudaBackend, KernelChoice};
use super::self_test::{KernelCheck, SelfTest};
use super::{Device, GemmKernel, WalkKernel};
use crate::gpow2::challenge::GpuWork;
use crate::gpow2::profiles::{MIN_MEASURED_RUNS, ProfilesFile, TimeReference as ProfileTime, TimeReferences};
use crate::gpow2::{Challenge, Isa, phase_a, phase_b};
use crate::prover::Prover;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runs per time reference (GPOW.md asks for at least 20).
    pub runs: usize,
    /// Phase A shapes whose roots are compared with the CPU's.
    pub ladder: Vec<GpuWork>,
    /// Phase B dataset sizes whose roots are compared with the CPU's.
    pub items_ladder: Vec<u64>,
    /// The throughput measurement's work (the production shape).
    pub throughput: GpuWork,
    /// Phase B's measurement: this many items, or the profile's share of the GPU's memory.
    pub memory_items: Option<u64>,
    /// The time references' work: this, or each GPU's profile's own.
    pub reference_work: Option<GpuWork>,
    /// The guide's example: (seed, dim, products).
    pub guide: (u64, u32, u32),
    /// No time-reference run starts after this much of the check (the run has a hard limit):
    /// fewer runs are reported as such.
    pub budget: std::time::Duration,
    /// CPU threads for the references.
    pub threads: usize,
}

impl Options {
    /// What `gpu-attestor gpu-check` runs on a GPU.
    pub fn production(runs: usize, products: u32, threads: usize) -> Self {
        Self {
            runs,
            ladder: LADDER.to_vec(),
            items_ladder: ITEMS_LADDER.to_vec(),
            throughput: GpuWork { m: 4096, n: 4096, k: 32768, count: products, items: 0 },
            memory_items: None,
            reference_work: None,
            guide: (12345, 256, 1000),
            budget: std::time::Duration::from_secs(330),
            threads,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RootCheck {
    pub gpu: usize,
    pub kernel: String,
    pub work: GpuWork,
    pub agrees: bool,
    pub gpu_ms: f64,
    pub cpu_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Guide {
    pub checksum: String,
    pub cpu_checksum: String,
    pub agrees: bool,
    /// Phase A of the example after set-up, best of five.
    pub ms: f64,
    /// The guide's figure.
    pub guide_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub gpu: usize,
    pub kernel: String,
    pub work: GpuWork,
    pub ms_per_product: f64,
    pub tops: f64,
    pub peak_tops: Option<f64>,
    pub fraction_of_peak: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub gpu: usize,
    /// The walk kernel.
    pub kernel: String,
    pub items: u64,
    pub build_ms: f64,
    pub walk_ms: f64,
    /// Walk traffic (16 x the dataset) per second, 10^9 B/s.
    pub walk_gb_s: f64,
    pub peak_gb_s: Option<f64>,
    pub fraction_of_peak: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimeReference {
    pub profile: String,
    pub gpu_name: String,
    pub work: GpuWork,
    pub runs: usize,
    pub phase_a_ms: f64,
    pub build_ms: f64,
    pub walk_ms: f64,
    pub driver_version: i32,
    /// The profile's `time` as `profiles.json` takes it (`measured`, each median rounded up to
    /// the millisecond, with the date and NVML's driver version), when these runs qualify: the
    /// profile's own work, at least `MIN_MEASURED_RUNS` runs, a driver version to name.
    pub measured: Option<TimeReferences>,
}

/// `profiles.json`'s `measured` references from `runs` medians of the profile's own work.
fn measured(runs: usize, [phase_a, build, walk]: [f64; 3], driver: &str, date: &str) -> Option<TimeReferences> {
    let runs = u32::try_from(runs).ok().filter(|&r| r >= MIN_MEASURED_RUNS)?;
    if driver.trim().is_empty() {
        return None;
    }
    let reference = |ms: f64| ProfileTime::Measured {
        ms: (ms.ceil() as u64).max(1),
        runs,
        date: date.to_owned(),
        driver: driver.to_owned(),
    };
    Some(TimeReferences { phase_a: reference(phase_a), build: reference(build), walk: reference(walk) })
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub gpus: Vec<crate::host::GpuFacts>,
    pub driver_version: i32,
    pub open_ms: f64,
    pub self_tests: Vec<SelfTest>,
    pub phase_a_roots: Vec<RootCheck>,
    pub phase_b_roots: Vec<RootCheck>,
    pub guide: Option<Guide>,
    pub throughput: Vec<Throughput>,
    pub memory: Vec<Memory>,
    pub time_references: Vec<TimeReference>,
    pub failures: Vec<String>,
    pub elapsed_ms: f64,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Whether the device gave `want`; where not, a failure `what: why` (`differs` when it gave
/// other roots).
fn compare<T: PartialEq>(
    got: Result<T, super::DeviceError>,
    want: &T,
    what: impl FnOnce() -> String,
    differs: &str,
    failures: &mut Vec<String>,
) -> bool {
    match got {
        Ok(r) if r == *want => true,
        other => {
            failures.push(format!("{}: {}", what(), other.err().map_or(differs.to_owned(), |e| e.to_string())));
            false
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The shapes of the ladder: small and odd first, the production shape last.
pub const LADDER: [GpuWork; 5] = [
    GpuWork { m: 16, n: 16, k: 16, count: 1, items: 0 },
    GpuWork { m: 80, n: 112, k: 528, count: 3, items: 0 },
    GpuWork { m: 256, n: 256, k: 256, count: 4, items: 0 },
    GpuWork { m: 1040, n: 976, k: 4112, count: 2, items: 0 },
    GpuWork { m: 4096, n: 4096, k: 32768, count: 1, items: 0 },
];

/// Dataset sizes of the ladder.
pub const ITEMS_LADDER: [u64; 3] = [32, 1056, (1 << 20) + 32];

/// Runs the whole check on the machine's GPUs (`attestor`: this binary, for the self-test's
/// child processes).
pub fn run(
    options: &Options,
    attestor: &std::path::Path,
    progress: &mut dyn FnMut(serde_json::Value),
) -> Result<Report, String> {
    let opened = Instant::now();
    let backend = CudaBackend::open(None, KernelChoice::Auto, attestor).map_err(|e| e.to_string())?;
    check(backend, ms(opened), options, progress)
}

/// The check on an opened backend (`open_ms`: what opening and self-testing took). After each
/// stage `progress` gets an object with that stage's fields of the [`Report`] and the failures
/// so far.
pub fn check<D: Device>(
    mut backend: Backend<D>,
    open_ms: f64,
    options: &Options,
    progress: &mut dyn FnMut(serde_json::Value),
) -> Result<Report, String> {
    let started = Instant::now();
    let mut failures = Vec::new();
    progress(serde_json::json!({
        "gpus": &backend.gpus,
        "driver_version": backend.driver_version,
        "open_ms": open_ms,
        "self_tests": &backend.self_tests,
    }));
    let profiles = ProfilesFile::builtin().map_err(|e| e.to_string())?;
    let threads = options.threads.max(1);
    let gpus = backend.gpus.clone();
    let chosen: Vec<(GemmKernel, WalkKernel)> =
        backend.prover.workers().iter().map(|w| (w.kernel(), w.walk_kernel())).collect();
    // The kernels each GPU runs here: those its self-test tried, but for those that failed on
    // the device (a fault would leave this process's context lost for every check after it;
    // the self-test's own failure is reported below). One that gave wrong roots is run, to
    // show on which shapes.
    fn runnable<K>(checks: &[KernelCheck], from_name: fn(&str) -> Option<K>) -> Vec<K> {
        checks.iter().filter(|k| !k.device_error).filter_map(|k| from_name(&k.kernel)).collect()
    }
    let kernels: Vec<Vec<GemmKernel>> =
        backend.self_tests.iter().map(|t| runnable(&t.kernels, GemmKernel::from_name)).collect();
    let walks: Vec<Vec<WalkKernel>> =
        backend.self_tests.iter().map(|t| runnable(&t.walks, WalkKernel::from_name)).collect();
    let restore = |backend: &mut Backend<D>| {
        for (w, &(k, walk)) in backend.prover.workers_mut().iter_mut().zip(&chosen) {
            w.set_kernel(k);
            w.set_walk_kernel(walk);
        }
    };

    // 3. The guide's example on GPU 0, after set-up.
    let example = Challenge::plain(options.guide.0, options.guide.1, options.guide.2, 0);
    let cpu_checksum = crate::gpow2::prove::prove(&example, &[0; 32], Isa::best(), threads, u64::MAX)
        .map_err(|e| e.to_string())?
        .checksum();
    let guide = match backend.prover.workers_mut().first_mut() {
        Some(w) => {
            let keys = example.gpu_keys()[0];
            let mut best = f64::MAX;
            let mut checksum = String::new();
            for _ in 0..5 {
                let t = Instant::now();
                match w.phase_a(&keys, &example.gpus[0]) {
                    Ok(roots) => {
                        best = best.min(ms(t));
                        checksum = hex::encode(phase_a::root_of(0, &roots));
                    }
                    Err(e) => {
                        failures.push(format!("guide example: {e}"));
                        break;
                    }
                }
            }
            if checksum != cpu_checksum {
                failures.push(format!("guide example: checksum {checksum}, the CPU's {cpu_checksum}"));
            }
            Some(Guide { agrees: checksum == cpu_checksum, checksum, cpu_checksum, ms: best, guide_ms: 150.0 })
        }
        None => None,
    };
    progress(serde_json::json!({ "guide": &guide, "failures": &failures }));

    // 4. Throughput at the production shape, every kernel; phase B at the production size.
    let mut throughput = Vec::new();
    let mut memory = Vec::new();
    for (g, w) in backend.prover.workers_mut().iter_mut().enumerate() {
        let profile = profiles.lookup(&gpus[g].name).cloned();
        let work = options.throughput;
        let keys = Challenge { gpus: vec![work], ..Challenge::plain(7, 16, 1, 0) }.gpu_keys()[0];
        for &kernel in &kernels[g] {
            w.set_kernel(kernel);
            if let Err(e) = w.phase_a(&keys, &GpuWork { count: 1, ..work }) {
                failures.push(format!("GPU {g} {kernel} throughput: {e}"));
                continue;
            }
            let t = Instant::now();
            if let Err(e) = w.phase_a(&keys, &work) {
                failures.push(format!("GPU {g} {kernel} throughput: {e}"));
                continue;
            }
            let elapsed = ms(t);
            let tops = work.ops() as f64 / (elapsed / 1e3) / 1e12;
            let peak = profile.as_ref().map(|p| f64::from(p.int8_dense_tops));
            throughput.push(Throughput {
                gpu: g,
                kernel: kernel.name().into(),
                work,
                ms_per_product: elapsed / f64::from(work.count),
                tops,
                peak_tops: peak,
                fraction_of_peak: peak.map(|p| tops / p),
            });
        }
        let items =
            options.memory_items.unwrap_or_else(|| crate::gpow2::profiles::production_items(gpus[g].memory_bytes));
        let work = GpuWork { m: 16, n: 16, k: 16, count: 1, items };
        let keys = Challenge { gpus: vec![work], ..Challenge::plain(8, 16, 1, 0) }.gpu_keys()[0];
        let t = Instant::now();
        match w.build(&keys, &work) {
            Ok(()) => {
                let build_ms = ms(t);
                for &kernel in &walks[g] {
                    w.set_walk_kernel(kernel);
                    let t = Instant::now();
                    match w.walk(0, keys.walk_key(&[1; 32])) {
                        Ok(_) => {
                            let walk_ms = ms(t);
                            let gb_s = (16 * items * 64) as f64 / (walk_ms / 1e3) / 1e9;
                            let peak = profile.as_ref().map(|p| f64::from(p.memory_bandwidth_gb_s));
                            memory.push(Memory {
                                gpu: g,
                                kernel: kernel.name().into(),
                                items,
                                build_ms,
                                walk_ms,
                                walk_gb_s: gb_s,
                                peak_gb_s: peak,
                                fraction_of_peak: peak.map(|p| gb_s / p),
                            });
                        }
                        Err(e) => failures.push(format!("GPU {g} {kernel} of {items} items: {e}")),
                    }
                }
            }
            Err(e) => failures.push(format!("GPU {g} build of {items} items: {e}")),
        }
        w.release_dataset();
    }
    restore(&mut backend);
    progress(serde_json::json!({ "throughput": &throughput, "memory": &memory, "failures": &failures }));

    // 5. Time references: the profile's work on every GPU at once, as the protocol runs it.
    let mut time_references = Vec::new();
    let works: Vec<Option<crate::gpow2::profiles::Profile>> =
        gpus.iter().map(|f| profiles.lookup(&f.name).cloned()).collect();
    if works.iter().all(Option::is_some) && !works.is_empty() {
        let c = Challenge {
            gpus: works.iter().flatten().map(|p| options.reference_work.unwrap_or(p.work)).collect(),
            ..Challenge::plain(0x7e4e, 16, 1, 0)
        };
        let (mut a, mut b, mut wk) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..options.runs {
            if started.elapsed() > options.budget {
                failures.push(format!(
                    "time references: {run} of {} runs within the check's budget of {:?}",
                    options.runs, options.budget
                ));
                break;
            }
            let nonce = [run as u8; 32];
            let step = |r: Result<(), crate::prover::ProverError>| r.map_err(|e| e.to_string());
            let result = (|| -> Result<(), String> {
                step(backend.prover.start(&c))?;
                let t = Instant::now();
                step(backend.prover.phase_a())?;
                a.push(ms(t));
                let t = Instant::now();
                step(backend.prover.build())?;
                b.push(ms(t));
                let t = Instant::now();
                step(backend.prover.walk(&nonce))?;
                wk.push(ms(t));
                Ok(())
            })();
            if let Err(e) = result {
                failures.push(format!("time references, run {run}: {e}"));
                break;
            }
        }
        let today = humantime::format_rfc3339(std::time::SystemTime::now()).to_string();
        if !a.is_empty() && a.len() == b.len() && b.len() == wk.len() {
            // The runs are of every GPU at once: one set of medians for all.
            let medians = [median(a.clone()), median(b.clone()), median(wk.clone())];
            for (g, p) in works.iter().flatten().enumerate() {
                time_references.push(TimeReference {
                    profile: p.id.clone(),
                    gpu_name: gpus[g].name.clone(),
                    work: options.reference_work.unwrap_or(p.work),
                    runs: a.len(),
                    phase_a_ms: medians[0],
                    build_ms: medians[1],
                    walk_ms: medians[2],
                    driver_version: backend.driver_version,
                    measured: options
                        .reference_work
                        .is_none()
                        .then(|| measured(a.len(), medians, &gpus[g].driver_version, &today[..10]))
                        .flatten(),
                });
            }
        }
    } else {
        failures.push(format!(
            "no time references: GPUs without a profile: {:?}",
            gpus.iter().zip(&works).filter(|(_, p)| p.is_none()).map(|(f, _)| f.name.clone()).collect::<Vec<_>>()
        ));
    }
    progress(serde_json::json!({ "time_references": &time_references, "failures": &failures }));
    // 2. Roots on the ladders, every kernel each GPU supports: last, since a kernel that
    //    faults on some shape leaves this process's context lost for every stage after it.
    let mut phase_a_roots = Vec::new();
    for &work in &options.ladder {
        let c = Challenge { gpus: vec![work], ..Challenge::plain(0x01ad_de12, 16, 1, 0) };
        let keys = c.gpu_keys()[0];
        let t = Instant::now();
        let want = phase_a::commit(Isa::best(), &keys, &work, threads).product_roots;
        let cpu_ms = ms(t);
        for (g, w) in backend.prover.workers_mut().iter_mut().enumerate() {
            for &kernel in &kernels[g] {
                w.set_kernel(kernel);
                let t = Instant::now();
                let got = w.phase_a(&keys, &work);
                let gpu_ms = ms(t);
                let agrees =
                    compare(got, &want, || format!("GPU {g} {kernel} {work:?}"), "roots differ", &mut failures);
                phase_a_roots.push(RootCheck { gpu: g, kernel: kernel.name().into(), work, agrees, gpu_ms, cpu_ms });
            }
        }
    }
    progress(serde_json::json!({ "phase_a_roots": &phase_a_roots, "failures": &failures }));
    let mut phase_b_roots = Vec::new();
    for &items in &options.items_ladder {
        let work = GpuWork { m: 16, n: 16, k: 16, count: 1, items };
        let c = Challenge { gpus: vec![work], ..Challenge::plain(0xb1ad_de12, 16, 1, 0) };
        let keys = c.gpu_keys()[0];
        let nonce = [0x42; 32];
        let t = Instant::now();
        let want =
            phase_b::commit(Isa::best(), &keys, &work, &nonce, threads).map(|b| b.root).map_err(|e| e.to_string())?;
        let cpu_ms = ms(t);
        for (g, w) in backend.prover.workers_mut().iter_mut().enumerate() {
            // One dataset, each walk kernel over it; the time is the build's and the walk's.
            let t = Instant::now();
            let built = w.build(&keys, &work);
            let build_ms = ms(t);
            for &kernel in &walks[g] {
                w.set_walk_kernel(kernel);
                let t = Instant::now();
                let got = built.clone().and_then(|()| w.walk(0, keys.walk_key(&nonce)));
                let gpu_ms = build_ms + ms(t);
                let what = || format!("GPU {g} {kernel}, {items} items");
                let agrees = compare(got, &want, what, "root differs", &mut failures);
                phase_b_roots.push(RootCheck { gpu: g, kernel: kernel.name().into(), work, agrees, gpu_ms, cpu_ms });
            }
            w.release_dataset();
        }
    }
    restore(&mut backend);

    for t in &backend.self_tests {
        failures.extend(t.disabled().into_iter().map(|d| format!("{}: self-test disabled {d}", t.device)));
    }
    progress(serde_json::json!({ "phase_b_roots": &phase_b_roots, "failures": &failures }));
    Ok(Report {
        gpus,
        driver_version: backend.driver_version,
        open_ms,
        self_tests: backend.self_tests.clone(),
        phase_a_roots,
        phase_b_roots,
        guide,
        throughput,
        memory,
        time_references,
        failures,
        elapsed_ms: ms(started),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ladders cut blocks short and end at the production shape, which the profiles use.
    #[test]
    fn the_ladders_are_valid_work_ending_at_production_size() {
        for (i, w) in LADDER.iter().enumerate() {
            w.validate(i).unwrap();
        }
        assert_eq!(LADDER[4], GpuWork { count: 1, items: 0, ..ProfilesFile::builtin().unwrap().profiles[0].work });
        assert!(LADDER.iter().any(|w| w.m % 128 != 0 && w.n % 64 != 0));
        for items in ITEMS_LADDER {
            GpuWork { m: 16, n: 16, k: 16, count: 1, items }.validate(0).unwrap();
        }
        // Without a GPU, the check says why instead of passing.
        if super::super::cuda::Driver::load().is_err() {
            let e = run(&Options::production(1, 1, 1), std::path::Path::new("gpu-attestor"), &mut |_| {}).unwrap_err();
            assert!(e.contains("libcuda.so.1"), "{e}");
        }
    }

    /// Time references qualify for `profiles.json` with 20 runs and a driver to name, rounded up,
    /// and load back as a profile's `time`.
    #[test]
    fn time_references_become_measured_profile_times_when_they_qualify() {
        let t = measured(20, [2100.2, 781.0, 0.4], "570.86.15", "2026-12-07").unwrap();
        assert_eq!(
            t.phase_a,
            ProfileTime::Measured { ms: 2101, runs: 20, date: "2026-12-07".into(), driver: "570.86.15".into() }
        );
        assert_eq!((t.build.ms(), t.walk.ms()), (781, 1));
        let mut file = ProfilesFile::builtin().unwrap();
        file.profiles[0].time = t;
        ProfilesFile::parse(&serde_json::to_string(&file).unwrap()).unwrap();
        assert_eq!(measured(19, [1.0; 3], "570.86.15", "2026-12-07"), None);
        assert_eq!(measured(20, [1.0; 3], " ", "2026-12-07"), None);
    }

    /// The whole check on the emulated device with small sizes: everything agrees, every
    /// figure is there, and a kernel that computes wrong is a failure by name.
    #[test]
    fn the_check_runs_whole_on_an_emulated_gpu_names_a_wrong_kernel_and_never_runs_a_faulted_one() {
        use crate::gpu::emu::{EmuDevice, Fault};
        use crate::gpu::worker::{Tuning, Worker};
        let small = GpuWork { m: 48, n: 32, k: 64, count: 2, items: 0 };
        let options = Options {
            runs: 2,
            ladder: vec![small, GpuWork { m: 144, ..small }],
            items_ladder: vec![64],
            throughput: small,
            memory_items: Some(96),
            reference_work: Some(GpuWork { items: 64, ..small }),
            guide: (12345, 32, 3),
            budget: std::time::Duration::from_secs(3600),
            threads: 2,
        };
        let timing = GpuWork { items: 64, ..small };
        let all = super::super::self_test::Kernel::candidates(&GemmKernel::ALL);
        let backend_with = |device: EmuDevice, faulted: Option<GemmKernel>| {
            // Few blocks: the emulator's cost is its barriers between blocks.
            let tuning = Tuning { max_blocks: 8, ..Tuning::default() };
            let mut worker = Worker::new(device, GemmKernel::Dp4a, tuning);
            let test = match faulted {
                None => super::super::self_test::self_test(&mut worker, &all, timing),
                // What a self-test in child processes says of a kernel that faulted (here, on a
                // device of its own: this one would be lost).
                Some(bad) => {
                    let clean = &mut Worker::new(EmuDevice::new(), GemmKernel::Dp4a, tuning);
                    let mut test = super::super::self_test::self_test(clean, &all, timing);
                    let k = test.kernels.iter_mut().find(|k| k.kernel == bad.name()).unwrap();
                    k.agrees = false;
                    k.device_error = true;
                    k.reason = Some("an illegal memory access was encountered".into());
                    worker.set_kernel(GemmKernel::Dp4a);
                    test.chosen = Some("dp4a".into());
                    test
                }
            };
            let facts = crate::host::GpuFacts {
                index: 0,
                uuid: String::new(),
                name: "NVIDIA H100 80GB HBM3".into(),
                pci_bus_id: String::new(),
                memory_bytes: 16 << 30,
                compute_capability: "9.0".into(),
                cuda_cores: 0,
                max_sm_clock_mhz: 0,
                max_memory_clock_mhz: 0,
                power_limit_mw: 0,
                driver_version: String::new(),
                cuda_version: String::new(),
                mig_mode: "disabled".into(),
            };
            Backend {
                prover: super::super::backend::GpuProver::new(vec![worker]),
                gpus: vec![facts],
                self_tests: vec![test],
                driver_version: 0,
            }
        };
        let backend = |device: EmuDevice| backend_with(device, None);
        let mut told = serde_json::Map::new();
        let mut stages = Vec::new();
        let r = check(backend(EmuDevice::new()), 1.0, &options, &mut |stage| {
            let serde_json::Value::Object(fields) = stage else { panic!("{stage}") };
            stages.push(fields.keys().filter(|k| *k != "failures").cloned().collect::<Vec<_>>().join(","));
            told.extend(fields);
        })
        .unwrap();
        assert!(r.failures.is_empty(), "{:?}", r.failures);
        // Stage by stage, the same report: what a run killed at its limit keeps.
        assert_eq!(
            stages,
            [
                "driver_version,gpus,open_ms,self_tests",
                "guide",
                "memory,throughput",
                "time_references",
                "phase_a_roots",
                "phase_b_roots"
            ]
        );
        let whole = serde_json::to_value(&r).unwrap();
        for (key, value) in &told {
            assert_eq!(Some(value), whole.get(key), "{key}");
        }
        assert_eq!(r.phase_a_roots.len(), 2 * GemmKernel::ALL.len());
        assert!(r.phase_a_roots.iter().chain(&r.phase_b_roots).all(|c| c.agrees));
        assert!(r.guide.as_ref().is_some_and(|g| g.agrees && g.checksum == g.cpu_checksum));
        assert_eq!(r.throughput.len(), GemmKernel::ALL.len());
        assert!(r.throughput.iter().all(|t| t.tops > 0.0 && t.peak_tops == Some(1979.0)));
        assert_eq!(r.phase_b_roots.len(), WalkKernel::ALL.len());
        assert_eq!(r.memory.len(), WalkKernel::ALL.len());
        assert!(r.memory.iter().all(|m| m.peak_gb_s == Some(3350.0) && m.walk_gb_s > 0.0));
        assert_eq!(r.memory[1].kernel, "walk-thread");
        assert_eq!(r.time_references.len(), 1);
        assert_eq!(r.time_references[0].profile, "h100-sxm");
        assert!(r.time_references[0].phase_a_ms > 0.0 && r.time_references[0].walk_ms > 0.0);
        // Two runs of other work than the profile's: not a reference for profiles.json.
        assert_eq!(r.time_references[0].measured, None);
        serde_json::to_string(&r).unwrap();

        let r = check(
            backend(EmuDevice::broken("gemm_mma").and_fault("walk_group", Fault::Wrong)),
            1.0,
            &Options { runs: 1, budget: std::time::Duration::ZERO, ..options.clone() },
            &mut |_| {},
        )
        .unwrap();
        assert!(r.failures.iter().any(|f| f.starts_with("time references: 0 of 1 runs within")), "{:?}", r.failures);
        assert!(r.time_references.is_empty());
        assert!(r.failures.iter().any(|f| f.starts_with("GPU 0 mma-sync GpuWork { m: 48")), "{:?}", r.failures);
        assert!(r.failures.iter().any(|f| f.contains("self-test disabled mma-sync")), "{:?}", r.failures);
        assert!(
            r.failures.iter().any(|f| f.starts_with("GPU 0 walk-group, 64 items: root differs")),
            "{:?}",
            r.failures
        );
        assert!(r.failures.iter().any(|f| f.contains("self-test disabled walk-group")), "{:?}", r.failures);

        // A kernel that faulted in the self-test is never run here: it would lose the context
        // for every stage after it. Its self-test failure is the only failure.
        let wgmma = GemmKernel::Wgmma;
        let faulted = backend_with(EmuDevice::with_fault(wgmma.entry(), Fault::Illegal), Some(wgmma));
        let r = check(faulted, 1.0, &options, &mut |_| {}).unwrap();
        assert_eq!(r.failures, ["host emulation: self-test disabled wgmma: an illegal memory access was encountered"]);
        assert!(r.phase_a_roots.iter().all(|c| c.kernel != "wgmma"), "{:?}", r.phase_a_roots);
        assert_eq!(r.phase_a_roots.len(), 2 * (GemmKernel::ALL.len() - 1));
        assert!(r.throughput.iter().all(|t| t.kernel != "wgmma"), "{:?}", r.throughput);
        assert_eq!(r.time_references.len(), 1);
    }
}
