//! The self-test of a GPU: before `hello`, each GPU runs a small challenge with each candidate
//! kernel, the GEMMs of phase A and the walks of phase B, every root compared with the CPU
//! reference. A kernel that disagrees is disabled and named; of those that agree, the fastest
//! GEMM on a product of production shape and the fastest walk on a dataset larger than the L2
//! are kept.
//!
//! A kernel that has never run on real hardware can do worse than disagree: it can fault (an
//! illegal or misaligned address leaves the GPU's context unusable, and only the end of the
//! process clears that) or never finish (a GPU has no watchdog). So in production each GPU's
//! self-test runs in child processes ([`isolated`]): a child runs the steps of a [`Plan`] and
//! stops after the first that fails on the device; the parent gives each step a deadline, kills
//! a child that passes it, disables the kernel that child was running and starts another child
//! for the steps left. Only then does the parent open the GPU, with the kernel chosen. A kernel
//! that faults or hangs on some GPU therefore costs that GPU one kernel, not the GPU.
//!
//! [`self_test`] runs the same steps in this process (the tests, and the emulated device):
//! there a step that fails on the device ends the self-test, since what follows may run on a
//! lost context.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::worker::Worker;
use super::{Device, DeviceError, GemmKernel, WalkKernel};
use crate::gpow2::challenge::{GpuKeys, GpuWork};
use crate::gpow2::{Challenge, Isa, phase_a, phase_b};

/// The self-test's small challenge: shapes that cut the GEMM's blocks short, three products,
/// and a dataset of 64 lanes.
pub fn self_test_work() -> GpuWork {
    GpuWork { m: 80, n: 112, k: 528, count: 3, items: 1024 }
}

/// The timing work of the self-test on a GPU: products of the production shape, and a dataset
/// of 1 GiB (four times an H200's L2, 16 GiB of walk).
pub const TIMING_WORK: GpuWork = GpuWork { m: 4096, n: 4096, k: 32768, count: 2, items: 1 << 24 };

/// How long a child may take over one step (or over opening the GPU, before its first) before
/// it is killed and the step failed: far more than any step takes (the slowest, timing `dp4a`
/// on two production products, is tens of milliseconds on an H100; the driver compiling the PTX
/// for a GPU without a cubin, seconds), and a hung kernel still leaves time for the rest
/// within `executor validate`'s two minutes.
pub const STEP_DEADLINE: Duration = Duration::from_secs(30);

/// The keys of the timing product's challenge (the self-test's, and the warm-up product the
/// proving process runs after it).
pub fn timing_keys(timing: GpuWork) -> GpuKeys {
    Challenge { gpus: vec![timing], ..Challenge::plain(0x71_0e, 16, 1, 0) }.gpu_keys()[0]
}

/// A kernel the self-test checks and times: a GEMM of phase A or a walk of phase B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kernel {
    Gemm(GemmKernel),
    Walk(WalkKernel),
}

impl Kernel {
    /// The GEMM kernels `gemm` (in order of preference on ties) and every walk kernel.
    pub fn candidates(gemm: &[GemmKernel]) -> Vec<Kernel> {
        gemm.iter().map(|&k| Kernel::Gemm(k)).chain(WalkKernel::ALL.map(Kernel::Walk)).collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Gemm(k) => k.name(),
            Kernel::Walk(k) => k.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Kernel> {
        GemmKernel::from_name(name).map(Kernel::Gemm).or_else(|| WalkKernel::from_name(name).map(Kernel::Walk))
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One step of a self-test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// The kernel's roots on the self-test's challenge against the CPU reference.
    Check(Kernel),
    /// The kernel's time on [`TIMING_WORK`] (a kernel that agreed).
    Time(Kernel),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Check(k) => write!(f, "check {k}"),
            Step::Time(k) => write!(f, "time {k}"),
        }
    }
}

impl std::str::FromStr for Step {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let kernel = |name: &str| Kernel::from_name(name).ok_or_else(|| format!("no kernel `{name}`"));
        match s.split_once(' ') {
            Some(("check", k)) => Ok(Step::Check(kernel(k)?)),
            Some(("time", k)) => Ok(Step::Time(kernel(k)?)),
            _ => Err(format!("no self-test step `{s}`")),
        }
    }
}

/// How a step went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// A check: the roots equal the CPU reference's. Timing: it ran.
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// It failed on the device (an error, a fault, a deadline, a process that died), not by a
    /// wrong root: what ran after it in the same process may have run on a lost context.
    #[serde(default)]
    pub device_error: bool,
    /// Timing: milliseconds a product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<f64>,
}

impl Outcome {
    fn agrees(ms: Option<f64>) -> Self {
        Self { ok: true, reason: None, device_error: false, ms }
    }

    fn wrong(reason: &str) -> Self {
        Self { ok: false, reason: Some(reason.to_owned()), device_error: false, ms: None }
    }

    fn device(reason: impl fmt::Display) -> Self {
        Self { ok: false, reason: Some(reason.to_string()), device_error: true, ms: None }
    }
}

/// The steps a self-test (or one child of it) runs: the checks, and the timing of kernels that
/// agreed in an earlier child. A child times the kernels it checks that agree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub check: Vec<Kernel>,
    pub time: Vec<Kernel>,
}

impl Plan {
    /// Everything for these candidate kernels.
    pub fn full(candidates: &[Kernel]) -> Self {
        Self { check: candidates.to_vec(), time: Vec::new() }
    }

    /// What is left of the full plan for `candidates` once `done` is known.
    pub fn left(candidates: &[Kernel], done: &BTreeMap<Step, Outcome>) -> Self {
        let agreed = |k: &Kernel| done.get(&Step::Check(*k)).is_some_and(|o| o.ok);
        Self {
            check: candidates.iter().copied().filter(|k| !done.contains_key(&Step::Check(*k))).collect(),
            time: candidates.iter().copied().filter(|k| agreed(k) && !done.contains_key(&Step::Time(*k))).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.check.is_empty() && self.time.is_empty()
    }

    /// Every step of the plan (a child adds the timing of the kernels it checks that agree).
    pub fn steps(&self) -> Vec<Step> {
        let mut steps: Vec<Step> = self.check.iter().map(|&k| Step::Check(k)).collect();
        steps.extend(self.time.iter().map(|&k| Step::Time(k)));
        steps
    }

    /// The plan as arguments of `gpu-attestor self-test-gpu`.
    pub fn args(&self) -> Vec<String> {
        let names = |ks: &[Kernel]| ks.iter().map(|k| k.name()).collect::<Vec<_>>().join(",");
        let mut args = Vec::new();
        if !self.check.is_empty() {
            args.extend(["--check".to_owned(), names(&self.check)]);
        }
        if !self.time.is_empty() {
            args.extend(["--time".to_owned(), names(&self.time)]);
        }
        args
    }
}

/// How a child says what it does: one line per event on stdout, after this prefix.
pub const LINE_PREFIX: &str = "gpow-self-test ";

/// One event of a child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Line {
    /// The step starts (its deadline runs from here).
    Start {
        step: String,
    },
    Done {
        step: String,
        outcome: Outcome,
    },
}

impl Line {
    /// The line for `step` starting (no outcome yet) or ending.
    pub fn of(step: Step, outcome: Option<&Outcome>) -> Self {
        match outcome {
            None => Line::Start { step: step.to_string() },
            Some(o) => Line::Done { step: step.to_string(), outcome: o.clone() },
        }
    }

    /// The line a child prints.
    pub fn text(&self) -> String {
        format!("{LINE_PREFIX}{}", serde_json::to_string(self).expect("a line serialises"))
    }

    /// A line of a child's stdout: None for anything else it printed.
    pub fn parse(text: &str) -> Option<Result<Line, String>> {
        let json = text.strip_prefix(LINE_PREFIX)?;
        Some(serde_json::from_str(json).map_err(|e| format!("`{text}`: {e}")))
    }
}

/// Runs `plan` on `worker`, telling `on` as each step starts (`None`) and ends. Stops after
/// the first step that fails on the device (false); true when every step ran. The walks read
/// one dataset for their checks and one for their timing, each built in the first step that
/// needs it (so a build that fails costs that walk's step).
pub fn run_plan<D: Device>(
    worker: &mut Worker<D>,
    plan: &Plan,
    timing: GpuWork,
    on: &mut dyn FnMut(Step, Option<&Outcome>),
) -> bool {
    let work = self_test_work();
    let challenge = Challenge { gpus: vec![work], ..Challenge::plain(0x5e1f_7e57, 16, 1, 0) };
    let keys = challenge.gpu_keys()[0];
    let nonce = [0x5e; 32];
    let mut step = |step: Step, run: &mut dyn FnMut() -> Outcome| {
        on(step, None);
        let outcome = run();
        on(step, Some(&outcome));
        outcome
    };
    let mut time = plan.time.clone();
    let (mut want_a, mut want_b) = (None, None);
    let mut built = false;
    for &kernel in &plan.check {
        let outcome = match kernel {
            Kernel::Gemm(k) => {
                let want = want_a.get_or_insert_with(|| phase_a::commit(Isa::best(), &keys, &work, 2).product_roots);
                worker.set_kernel(k);
                step(Step::Check(kernel), &mut || match worker.phase_a(&keys, &work) {
                    Ok(roots) if roots == *want => Outcome::agrees(None),
                    Ok(_) => Outcome::wrong("roots differ from the CPU reference"),
                    Err(e) => Outcome::device(e),
                })
            }
            Kernel::Walk(k) => {
                let want =
                    want_b.get_or_insert_with(|| phase_b::commit(Isa::best(), &keys, &work, &nonce, 2).map(|b| b.root));
                worker.set_walk_kernel(k);
                step(Step::Check(kernel), &mut || {
                    let got = build_once(worker, &mut built, &keys, &work)
                        .and_then(|()| worker.walk(0, keys.walk_key(&nonce)));
                    match (got, want.as_ref()) {
                        (Ok(got), Ok(want)) if got == *want => Outcome::agrees(None),
                        (Ok(_), _) => Outcome::wrong("phase B roots differ from the CPU reference"),
                        (Err(e), _) => Outcome::device(e),
                    }
                })
            }
        };
        if outcome.device_error {
            return false;
        }
        if outcome.ok {
            time.push(kernel);
        }
    }
    worker.release_dataset();
    built = false;
    let timing_keys = timing_keys(timing);
    let walk_key = timing_keys.walk_key(&nonce);
    for kernel in time {
        // Each timed once after a first run (allocations, the module's first launch).
        let outcome = match kernel {
            Kernel::Gemm(k) => {
                worker.set_kernel(k);
                step(Step::Time(kernel), &mut || {
                    let timed = worker.phase_a(&timing_keys, &timing).and_then(|_| {
                        let t = Instant::now();
                        worker.phase_a(&timing_keys, &timing)?;
                        Ok(t.elapsed().as_secs_f64() * 1e3 / f64::from(timing.count))
                    });
                    timed.map_or_else(Outcome::device, |ms| Outcome::agrees(Some(ms)))
                })
            }
            Kernel::Walk(k) => {
                worker.set_walk_kernel(k);
                step(Step::Time(kernel), &mut || {
                    let timed = build_once(worker, &mut built, &timing_keys, &timing).and_then(|()| {
                        worker.walk(0, walk_key)?;
                        let t = Instant::now();
                        worker.walk(0, walk_key)?;
                        Ok(t.elapsed().as_secs_f64() * 1e3)
                    });
                    timed.map_or_else(Outcome::device, |ms| Outcome::agrees(Some(ms)))
                })
            }
        };
        if outcome.device_error {
            return false;
        }
    }
    worker.release_dataset();
    true
}

/// Builds `work`'s dataset on `worker` unless `built` says this part of the plan already has.
fn build_once<D: Device>(
    worker: &mut Worker<D>,
    built: &mut bool,
    keys: &GpuKeys,
    work: &GpuWork,
) -> Result<(), DeviceError> {
    if !*built {
        worker.build(keys, work)?;
        *built = true;
    }
    Ok(())
}

/// How one kernel did in a self-test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelCheck {
    pub kernel: String,
    /// The roots equal the CPU reference's, and it was timed.
    pub agrees: bool,
    /// Why not, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// It failed on the device (an error, a fault, a deadline): never run again in a process
    /// that proves.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub device_error: bool,
    /// Milliseconds for the timing work (kernels that agree): a product of it for a GEMM, a
    /// walk of its dataset for a walk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timed_ms: Option<f64>,
}

impl KernelCheck {
    fn of(kernel: Kernel, outcomes: &BTreeMap<Step, Outcome>) -> Self {
        let not_run = Outcome::device("not run");
        let check = outcomes.get(&Step::Check(kernel)).unwrap_or(&not_run);
        let (outcome, what) = match outcomes.get(&Step::Time(kernel)) {
            _ if !check.ok => (check, ""),
            None => (&not_run, "timing: "),
            Some(time) => (time, "timing: "),
        };
        KernelCheck {
            kernel: kernel.name().into(),
            agrees: outcome.ok,
            reason: outcome.reason.as_ref().map(|r| format!("{what}{r}")),
            device_error: check.device_error || outcome.device_error,
            timed_ms: outcome.ms.filter(|_| outcome.ok),
        }
    }

    /// The fastest of `checks` that agrees (the first of equals).
    fn fastest(checks: &[KernelCheck]) -> Option<String> {
        checks
            .iter()
            .filter(|c| c.agrees)
            .min_by(|a, b| a.timed_ms.unwrap_or(f64::MAX).total_cmp(&b.timed_ms.unwrap_or(f64::MAX)))
            .map(|c| c.kernel.clone())
    }
}

/// One GPU's self-test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SelfTest {
    pub device: String,
    /// The GEMM kernels (phase A).
    pub kernels: Vec<KernelCheck>,
    /// The walk kernels (phase B).
    pub walks: Vec<KernelCheck>,
    /// The GEMM kernel the GPU uses: the fastest that agrees.
    pub chosen: Option<String>,
    /// The walk kernel the GPU uses: the fastest that agrees.
    pub walk: Option<String>,
    pub elapsed_ms: f64,
}

impl SelfTest {
    /// What `outcomes` say of each of `candidates`.
    pub fn from_outcomes(
        device: String,
        candidates: &[Kernel],
        outcomes: &BTreeMap<Step, Outcome>,
        elapsed: Duration,
    ) -> Self {
        let checks = |walk: bool| -> Vec<KernelCheck> {
            candidates
                .iter()
                .filter(|k| matches!(k, Kernel::Walk(_)) == walk)
                .map(|&k| KernelCheck::of(k, outcomes))
                .collect()
        };
        let (kernels, walks) = (checks(false), checks(true));
        Self {
            device,
            chosen: KernelCheck::fastest(&kernels),
            walk: KernelCheck::fastest(&walks),
            kernels,
            walks,
            elapsed_ms: elapsed.as_secs_f64() * 1e3,
        }
    }

    /// `kernel: reason` for each kernel, GEMM or walk, that disagreed.
    pub fn disabled(&self) -> Vec<String> {
        self.kernels
            .iter()
            .chain(&self.walks)
            .filter(|k| !k.agrees)
            .map(|k| format!("{}: {}", k.kernel, k.reason.as_deref().unwrap_or("roots differ from the CPU reference")))
            .collect()
    }

    /// The GPU can prove: a GEMM kernel and a walk kernel agree.
    pub fn usable(&self) -> bool {
        self.chosen.is_some() && self.walk.is_some()
    }

    /// The GEMM kernel chosen.
    pub fn chosen_kernel(&self) -> Option<GemmKernel> {
        self.chosen.as_deref().and_then(GemmKernel::from_name)
    }

    /// The walk kernel chosen.
    pub fn walk_kernel(&self) -> Option<WalkKernel> {
        self.walk.as_deref().and_then(WalkKernel::from_name)
    }
}

/// The self-test in this process: runs every step on `worker` for `candidates` (in order of
/// preference on ties), timing each kernel that agrees on `timing` (a product of production
/// shape and a dataset larger than the L2 on a GPU), and sets the worker's kernels to the
/// fastest. A step that fails on the device ends it: the steps left are failed as not run.
pub fn self_test<D: Device>(worker: &mut Worker<D>, candidates: &[Kernel], timing: GpuWork) -> SelfTest {
    let started = Instant::now();
    let mut outcomes = BTreeMap::new();
    let finished = run_plan(worker, &Plan::full(candidates), timing, &mut |step, outcome| {
        if let Some(o) = outcome {
            outcomes.insert(step, o.clone());
        }
    });
    // The run stopped at its one step that failed on the device.
    let failed = outcomes.iter().find(|(_, o)| o.device_error).map(|(s, o)| (*s, o.reason.clone().unwrap_or_default()));
    if !finished && let Some((failed, why)) = failed {
        for step in Plan::left(candidates, &outcomes).steps() {
            outcomes
                .insert(step, Outcome::device(format!("not run: `{failed}` failed on the device before it ({why})")));
        }
    }
    let test = SelfTest::from_outcomes(worker.device().name(), candidates, &outcomes, started.elapsed());
    if let Some(k) = test.chosen_kernel() {
        worker.set_kernel(k);
    }
    if let Some(k) = test.walk_kernel() {
        worker.set_walk_kernel(k);
    }
    test
}

/// How a child ended, for the parent.
enum Ending {
    /// Its stdout closed (it exited, or is exiting).
    Closed,
    /// No line within the deadline.
    Deadline,
}

/// The self-test of one GPU in child processes: `child(plan)` is the command that runs `plan`
/// on that GPU, printing [`Line`]s. A step that does not end within `deadline` (counted from its
/// start, or for the first from the child's start) is failed and the child killed; a child that
/// dies during a step fails that step; either way another child runs the steps left. A child
/// that ends having run nothing fails every step left, with what it said last on stderr.
pub async fn isolated(
    device: String,
    candidates: &[Kernel],
    child: &(dyn Fn(&Plan) -> common::process::ProcessSpec + Sync),
    deadline: Duration,
) -> SelfTest {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let started = Instant::now();
    let mut outcomes: BTreeMap<Step, Outcome> = BTreeMap::new();
    loop {
        let plan = Plan::left(candidates, &outcomes);
        if plan.is_empty() {
            break;
        }
        let fail_all = |outcomes: &mut BTreeMap<Step, Outcome>, why: &str| {
            for step in plan.steps() {
                outcomes.insert(step, Outcome::device(why));
            }
        };
        let spec = child(&plan);
        let mut process = match spec.spawn_supervised() {
            Ok(p) => p,
            Err(e) => {
                fail_all(&mut outcomes, &format!("the self-test process: {e}"));
                break;
            }
        };
        let (Some(stdout), Some(stderr)) = (process.stdout.take(), process.stderr.take()) else {
            fail_all(&mut outcomes, "the self-test process has no output");
            break;
        };
        // Its stderr reaches the operator as it comes; the last line is kept for the reason.
        let said = tokio::spawn({
            let device = device.clone();
            async move {
                let mut lines = BufReader::new(stderr).lines();
                let mut last = String::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("gpu-attestor: self-test of {device}: {line}");
                    if !line.trim().is_empty() {
                        last = line;
                    }
                }
                last
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let mut current: Option<Step> = None;
        let mut learnt = 0;
        let ending = loop {
            match tokio::time::timeout(deadline, lines.next_line()).await {
                Err(_) => break Ending::Deadline,
                Ok(Ok(Some(text))) => match Line::parse(&text) {
                    None => {}
                    Some(Err(e)) => eprintln!("gpu-attestor: self-test of {device}: a line that does not parse: {e}"),
                    Some(Ok(Line::Start { step })) => current = step.parse().ok(),
                    Some(Ok(Line::Done { step, outcome })) => {
                        if let Ok(step) = step.parse::<Step>() {
                            outcomes.insert(step, outcome);
                            learnt += 1;
                        }
                        current = None;
                    }
                },
                Ok(Ok(None) | Err(_)) => break Ending::Closed,
            }
        };
        if let Ending::Deadline = ending {
            let _ = process.start_kill();
        }
        let status = process.wait().await.map(common::process::describe_exit).unwrap_or_else(|e| e.to_string());
        let last = said.await.unwrap_or_default();
        let last = if last.is_empty() { String::new() } else { format!(": {last}") };
        match (ending, current) {
            (Ending::Deadline, Some(step)) => {
                outcomes.insert(
                    step,
                    Outcome::device(format!("did not finish within {deadline:?} (a kernel that never ends?): killed")),
                );
            }
            (Ending::Closed, Some(step)) => {
                outcomes.insert(
                    step,
                    Outcome::device(format!("the self-test process ended in this step ({status}){last}")),
                );
            }
            (Ending::Deadline, None) if learnt == 0 => {
                fail_all(
                    &mut outcomes,
                    &format!("the self-test process did not start a step within {deadline:?}{last}"),
                );
                break;
            }
            (Ending::Closed, None) if learnt == 0 => {
                fail_all(
                    &mut outcomes,
                    &format!("the self-test process ended without running a step ({status}){last}"),
                );
                break;
            }
            // It ran steps and stopped between two (after a failure on the device, or done).
            (_, None) => {}
        }
    }
    SelfTest::from_outcomes(device, candidates, &outcomes, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::emu::{EmuDevice, Fault};
    use crate::gpu::test_gpus::cuda_workers;
    use crate::gpu::worker::Tuning;

    fn tuning() -> Tuning {
        // Few blocks: the emulator's cost is its barriers between blocks.
        Tuning { max_blocks: 8, ..Tuning::default() }
    }

    const TIMING: GpuWork = GpuWork { m: 64, n: 64, k: 64, count: 1, items: 64 };

    fn all() -> Vec<Kernel> {
        Kernel::candidates(&GemmKernel::ALL)
    }

    /// The self-test passes every kernel that gives the reference roots, and disables one that
    /// does not, by name.
    #[test]
    fn the_self_test_keeps_kernels_that_agree_and_disables_the_others() {
        let mut w = Worker::new(EmuDevice::new(), GemmKernel::Dp4a, tuning());
        let t = self_test(&mut w, &all(), TIMING);
        assert!(t.usable(), "{t:?}");
        assert!(t.chosen.is_some() && t.walk.is_some());
        assert_eq!((t.kernels.len(), t.walks.len()), (4, 2));
        assert!(t.kernels.iter().chain(&t.walks).all(|k| k.agrees && k.timed_ms.is_some()), "{t:?}");
        assert!(t.disabled().is_empty());

        // mma.sync and the walk of eight threads a lane wrong on this GPU: disabled, the faster
        // of the others used.
        let device = EmuDevice::broken("gemm_mma").and_fault("walk_group", Fault::Wrong);
        let mut broken = Worker::new(device, GemmKernel::MmaSync, tuning());
        let t = self_test(&mut broken, &all(), TIMING);
        assert!(t.usable());
        assert!(matches!(t.chosen.as_deref(), Some("dp4a" | "wgmma" | "wgmma-wide")), "{t:?}");
        assert_eq!(broken.kernel().name(), t.chosen.as_deref().unwrap());
        assert_eq!((t.walk.as_deref(), broken.walk_kernel()), (Some("walk-thread"), WalkKernel::Thread));
        assert_eq!(
            t.disabled(),
            vec![
                "mma-sync: roots differ from the CPU reference".to_owned(),
                "walk-group: phase B roots differ from the CPU reference".to_owned()
            ]
        );
        assert!(!t.kernels[1].device_error && !t.walks[0].device_error);

        // The only kernel asked for is wrong: the GPU cannot prove.
        let mut broken = Worker::new(EmuDevice::broken("gemm_mma"), GemmKernel::MmaSync, tuning());
        let t = self_test(&mut broken, &Kernel::candidates(&[GemmKernel::MmaSync]), TIMING);
        assert!(!t.usable());
        assert_eq!(t.chosen, None);
        assert!(t.walk.is_some());

        // No walk agrees: neither can it.
        let device = EmuDevice::broken("walk_group").and_fault("walk", Fault::Wrong);
        let t = self_test(&mut Worker::new(device, GemmKernel::Dp4a, tuning()), &all(), TIMING);
        assert!(!t.usable() && t.chosen.is_some() && t.walk.is_none(), "{t:?}");
    }

    /// In one process, a kernel that faults leaves the context lost (every later call fails, as
    /// on a GPU): the self-test stops there and says so for every step left. This is why the
    /// production self-test runs in child processes.
    #[test]
    fn in_one_process_a_fault_ends_the_self_test() {
        let mut w = Worker::new(EmuDevice::with_fault("gemm_mma", Fault::Illegal), GemmKernel::Dp4a, tuning());
        let t = self_test(&mut w, &all(), TIMING);
        assert!(!t.usable(), "{t:?}");
        assert!(t.kernels.iter().all(|k| !k.agrees && k.device_error), "{t:?}");
        assert!(t.kernels[1].reason.as_deref().unwrap().contains("an illegal memory access was encountered"), "{t:?}");
        let after = "not run: `check mma-sync` failed on the device before it";
        assert!(t.kernels[2].reason.as_deref().unwrap().starts_with(after), "{t:?}");
        // dp4a agreed but its timing, after the fault, never ran.
        assert!(t.kernels[0].reason.as_deref().unwrap().starts_with(&format!("timing: {after}")), "{t:?}");
        assert!(t.walks.iter().all(|k| k.reason.as_deref().unwrap().starts_with(after)), "{t:?}");
    }

    /// `GPOW_SELF_TEST_CHILD` makes this test binary a self-test child (`plan;faults`), as
    /// `gpu-attestor self-test-gpu` is one in production.
    const CHILD: &str = "GPOW_SELF_TEST_CHILD";
    const CHILD_TEST: &str = "gpu::self_test::tests::the_child_prints_each_step_and_stops_after_a_device_error";

    fn child_plan(text: &str) -> (Plan, Vec<(String, Fault)>) {
        let (plan, faults) = text.split_once(';').unwrap();
        let kernels = |s: &str| s.split(',').filter(|s| !s.is_empty()).map(|k| Kernel::from_name(k).unwrap()).collect();
        let (check, time) = plan.split_once('/').unwrap();
        let faults = faults
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|f| {
                let (kernel, how) = f.split_once('=').unwrap();
                (kernel.to_owned(), how.parse().unwrap())
            })
            .collect();
        (Plan { check: kernels(check), time: kernels(time) }, faults)
    }

    fn child_env(plan: &Plan, faults: &str) -> String {
        let names = |ks: &[Kernel]| ks.iter().map(|k| k.name()).collect::<Vec<_>>().join(",");
        format!("{}/{};{faults}", names(&plan.check), names(&plan.time))
    }

    /// As a child (see [`CHILD`]): runs the plan on an emulated GPU with the faults asked for and
    /// prints its lines, then exits (3 after a failure on the device). Otherwise it checks that
    /// a child's lines say each step as it starts and ends, parse back, and stop at the step
    /// that fails on the device.
    #[test]
    fn the_child_prints_each_step_and_stops_after_a_device_error() {
        if let Ok(text) = std::env::var(CHILD) {
            // libtest has printed `test NAME ... ` without its newline: end that line first.
            println!();
            let (plan, faults) = child_plan(&text);
            let device = faults.into_iter().fold(EmuDevice::new(), |d, (k, f)| d.and_fault(&k, f));
            let mut w = Worker::new(device, GemmKernel::Dp4a, tuning());
            let finished =
                run_plan(&mut w, &plan, TIMING, &mut |step, outcome| println!("{}", Line::of(step, outcome).text()));
            std::process::exit(if finished { 0 } else { 3 });
        }
        let mut w = Worker::new(EmuDevice::with_fault("gemm_wgmma", Fault::Illegal), GemmKernel::Dp4a, tuning());
        let mut lines = Vec::new();
        let check = [GemmKernel::Dp4a, GemmKernel::Wgmma, GemmKernel::MmaSync].map(Kernel::Gemm).to_vec();
        let plan = Plan { check, ..Plan::default() };
        let finished = run_plan(&mut w, &plan, TIMING, &mut |step, outcome| lines.push(Line::of(step, outcome).text()));
        assert!(!finished);
        let parsed: Vec<Line> = lines.iter().map(|l| Line::parse(l).unwrap().unwrap()).collect();
        assert_eq!(parsed.len(), 4, "{lines:?}");
        assert_eq!(parsed[0], Line::Start { step: "check dp4a".into() });
        assert_eq!(parsed[1], Line::Done { step: "check dp4a".into(), outcome: Outcome::agrees(None) });
        assert_eq!(parsed[2], Line::Start { step: "check wgmma".into() });
        let Line::Done { step, outcome } = &parsed[3] else { panic!("{lines:?}") };
        assert_eq!(step, "check wgmma");
        assert!(outcome.device_error && outcome.reason.as_deref().unwrap().contains("illegal memory access"));
        assert_eq!(Line::parse("running 1 test"), None);
        assert!(Line::parse("gpow-self-test {").unwrap().is_err());
        for step in [
            Step::Check(Kernel::Gemm(GemmKernel::WgmmaWide)),
            Step::Time(Kernel::Gemm(GemmKernel::MmaSync)),
            Step::Check(Kernel::Walk(WalkKernel::Group)),
            Step::Time(Kernel::Walk(WalkKernel::Thread)),
        ] {
            assert_eq!(step.to_string().parse(), Ok(step));
        }
        assert!("check tensor".parse::<Step>().is_err());
    }

    fn run_isolated(faults: &'static str, deadline: Duration) -> SelfTest {
        let exe = std::env::current_exe().unwrap();
        let child = move |plan: &Plan| {
            common::process::ProcessSpec::new(&exe)
                .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads", "1"])
                .env(CHILD, child_env(plan, faults))
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(isolated("emulated GPU".into(), &all(), &child, deadline))
    }

    /// The attack of a kernel never run on hardware: on one GPU, mma.sync never ends, wgmma
    /// and the walk of eight threads a lane fault and wgmma-wide kills its process. In child
    /// processes each costs its kernel alone: dp4a and the walk of a thread a lane agree, are
    /// timed and chosen.
    #[test]
    fn a_kernel_that_faults_hangs_or_kills_its_process_is_disabled_alone() {
        let faults = "gemm_mma=hang,gemm_wgmma=illegal,gemm_wgmma_wide=abort,walk_group=illegal";
        let t = run_isolated(faults, Duration::from_secs(15));
        assert!(t.usable(), "{t:?}");
        assert_eq!((t.chosen.as_deref(), t.walk.as_deref()), (Some("dp4a"), Some("walk-thread")), "{t:?}");
        assert!(t.kernels[0].agrees && t.kernels[0].timed_ms.is_some(), "{t:?}");
        assert!(t.walks[1].agrees && t.walks[1].timed_ms.is_some(), "{t:?}");
        let reason = |k: &KernelCheck| k.reason.clone().unwrap_or_default();
        assert!(reason(&t.kernels[1]).starts_with("did not finish within 15s"), "{t:?}");
        assert!(reason(&t.kernels[2]).contains("an illegal memory access was encountered"), "{t:?}");
        assert!(reason(&t.kernels[3]).starts_with("the self-test process ended in this step (signal 6 (SIGABRT))"));
        assert!(reason(&t.walks[0]).contains("an illegal memory access was encountered"), "{t:?}");
        assert!(t.kernels[1..].iter().chain(&t.walks[..1]).all(|k| !k.agrees && k.device_error), "{t:?}");

        // Without faults every kernel agrees, in one child.
        let t = run_isolated("", Duration::from_secs(60));
        assert!(t.usable() && t.disabled().is_empty(), "{t:?}");
        assert!(t.kernels.iter().chain(&t.walks).all(|k| k.timed_ms.is_some()), "{t:?}");
    }

    /// A child that cannot start, or ends without running a step, fails every step with why,
    /// once (no endless restarts).
    #[test]
    fn a_child_that_runs_nothing_fails_every_step_once() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let missing = |_: &Plan| common::process::ProcessSpec::new("/nonexistent/gpu-attestor");
        let t = runtime.block_on(isolated("GPU".into(), &all(), &missing, Duration::from_secs(5)));
        assert!(!t.usable());
        assert!(
            t.kernels.iter().chain(&t.walks).all(|k| k
                .reason
                .as_deref()
                .unwrap()
                .contains("/nonexistent/gpu-attestor")),
            "{t:?}"
        );

        let silent = |_: &Plan| {
            common::process::ProcessSpec::new("/bin/sh").args(["-c", "echo 'Error: No NVIDIA GPU found' >&2; exit 1"])
        };
        let t = runtime.block_on(isolated("GPU".into(), &all(), &silent, Duration::from_secs(5)));
        let why = "the self-test process ended without running a step (exit code 1): Error: No NVIDIA GPU found";
        assert!(t.kernels.iter().chain(&t.walks).all(|k| k.reason.as_deref() == Some(why)), "{t:?}");

        let stuck = |_: &Plan| common::process::ProcessSpec::new("/bin/sleep").arg("30");
        let t = runtime.block_on(isolated("GPU".into(), &all(), &stuck, Duration::from_millis(300)));
        let why = "the self-test process did not start a step within";
        assert!(t.kernels.iter().chain(&t.walks).all(|k| k.reason.as_deref().unwrap().starts_with(why)), "{t:?}");
    }

    /// On a GPU the self-test passes every kernel it runs (the first run on real tensor cores
    /// tells whether the fragment layouts and wgmma's descriptors are read right). It prints the
    /// self-test, with its time.
    #[test]
    fn cuda_the_self_test_passes_every_kernel_the_gpu_runs() {
        for (mut w, kernels) in cuda_workers("cuda_the_self_test_passes_every_kernel_the_gpu_runs", Tuning::default()) {
            let t = self_test(&mut w, &Kernel::candidates(&kernels), TIMING_WORK);
            eprintln!("{}", serde_json::to_string(&t).unwrap());
            assert!(t.usable() && t.disabled().is_empty(), "{t:?}");
            assert_eq!((t.kernels.len(), t.walks.len()), (kernels.len(), WalkKernel::ALL.len()));
        }
    }
}
