//! Every claimed GPU at once: [`GpuProver`] runs each step on one host thread per GPU (claimed
//! GPU `g` is worker `g`); [`CudaBackend::open`] self-tests each GPU in child processes (see
//! [`super::self_test`]) and opens it with the kernel its self-test chose.

use std::path::Path;

use super::self_test::{Kernel, Plan, STEP_DEADLINE, SelfTest, TIMING_WORK, isolated, run_plan};
use super::worker::Worker;
use super::{Device, DeviceError, GemmKernel};
use crate::gpow2::challenge::{GpuKeys, GpuWork};
use crate::gpow2::{Challenge, phase_a};
use crate::merkle::{Hash, Tree};
use crate::prover::{Prover, ProverError};
use crate::sample::GpuSample;
use crate::verify::{GpuCommitment, GpuOpenings};

/// The prover of the CUDA backend (or of the emulated device in tests).
#[derive(Debug)]
pub struct GpuProver<D: Device> {
    workers: Vec<Worker<D>>,
    challenge: Option<Challenge>,
    keys: Vec<GpuKeys>,
    product_roots: Vec<Vec<Hash>>,
    roots_b: Vec<Option<Hash>>,
}

impl<D: Device> GpuProver<D> {
    /// One worker per GPU, in the order of the GPUs the prover claims.
    pub fn new(workers: Vec<Worker<D>>) -> Self {
        Self { workers, challenge: None, keys: Vec::new(), product_roots: Vec::new(), roots_b: Vec::new() }
    }

    pub fn workers(&self) -> &[Worker<D>] {
        &self.workers
    }

    pub fn workers_mut(&mut self) -> &mut [Worker<D>] {
        &mut self.workers
    }

    fn challenge(&self) -> Result<&Challenge, ProverError> {
        self.challenge.as_ref().ok_or_else(|| ProverError::Refused("no challenge has been started".into()))
    }

    /// `f` on every worker at once (one scoped thread each), results in order.
    fn each<T: Send>(
        &mut self,
        f: impl Fn(usize, &mut Worker<D>) -> Result<T, DeviceError> + Sync,
    ) -> Result<Vec<T>, ProverError> {
        let f = &f;
        let results: Vec<(String, Result<T, DeviceError>)> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .workers
                .iter_mut()
                .enumerate()
                .map(|(g, w)| s.spawn(move || (w.device().name(), f(g, w))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        });
        results
            .into_iter()
            .enumerate()
            .map(|(gpu, (device, r))| r.map_err(|source| ProverError::Device { gpu, device, source }))
            .collect()
    }
}

impl<D: Device> Prover for GpuProver<D> {
    fn start(&mut self, challenge: &Challenge) -> Result<(), ProverError> {
        if challenge.gpus.len() != self.workers.len() {
            return Err(ProverError::Refused(format!(
                "the challenge has work for {} GPU(s); this prover claims {}",
                challenge.gpus.len(),
                self.workers.len()
            )));
        }
        for (g, (w, work)) in self.workers.iter_mut().zip(&challenge.gpus).enumerate() {
            // The last challenge's dataset is given back first: it is most of the memory.
            w.release_dataset();
            let (free, total) = w.device().memory().map_err(|source| ProverError::Device {
                gpu: g,
                device: w.device().name(),
                source,
            })?;
            let needed = w.phase_a_bytes(work) + if work.items > 0 { Worker::<D>::dataset_bytes(work) } else { 0 };
            let held = w.held_bytes();
            if needed > free + held {
                return Err(ProverError::Refused(format!(
                    "GPU {g} ({}): the work needs {} MiB of GPU memory; {} MiB of {} MiB are free",
                    w.device().name(),
                    needed >> 20,
                    (free + held) >> 20,
                    total >> 20
                )));
            }
        }
        self.keys = challenge.gpu_keys();
        self.product_roots = vec![Vec::new(); challenge.gpus.len()];
        self.roots_b = vec![None; challenge.gpus.len()];
        self.challenge = Some(challenge.clone());
        Ok(())
    }

    fn phase_a(&mut self) -> Result<(), ProverError> {
        let (keys, gpus) = (self.keys.clone(), self.challenge()?.gpus.clone());
        self.product_roots = self.each(|g, w| w.phase_a(&keys[g], &gpus[g]))?;
        Ok(())
    }

    fn build(&mut self) -> Result<(), ProverError> {
        let (keys, gpus) = (self.keys.clone(), self.challenge()?.gpus.clone());
        self.each(|g, w| if gpus[g].items > 0 { w.build(&keys[g], &gpus[g]) } else { Ok(()) })?;
        Ok(())
    }

    fn walk(&mut self, walk_nonce: &[u8; 32]) -> Result<(), ProverError> {
        let (keys, gpus) = (self.keys.clone(), self.challenge()?.gpus.clone());
        self.roots_b = self.each(|g, w| {
            if gpus[g].items > 0 { w.walk(g as u32, keys[g].walk_key(walk_nonce)).map(Some) } else { Ok(None) }
        })?;
        Ok(())
    }

    fn commitments(&self) -> Vec<GpuCommitment> {
        self.product_roots
            .iter()
            .enumerate()
            .map(|(g, roots)| GpuCommitment {
                root_a: if roots.is_empty() { [0; 32] } else { phase_a::root_of(g as u32, roots) },
                product_roots: roots.clone(),
                root_b: self.roots_b.get(g).copied().flatten(),
            })
            .collect()
    }

    fn open(&mut self, samples: &[GpuSample]) -> Result<Vec<GpuOpenings>, ProverError> {
        let (keys, gpus) = (self.keys.clone(), self.challenge()?.gpus.clone());
        self.each(|g, w| {
            let Some(s) = samples.get(g) else {
                return Ok(GpuOpenings { tile_paths: Vec::new(), lane_paths: Vec::new() });
            };
            let columns = (gpus[g].n / 16) as usize;
            let mut products = std::collections::BTreeMap::new();
            let mut tile_paths = Vec::with_capacity(s.tiles.len());
            for t in &s.tiles {
                if let std::collections::btree_map::Entry::Vacant(e) = products.entry(t.p) {
                    e.insert(Tree::new(w.product_leaves(&keys[g], &gpus[g], t.p)?));
                }
                tile_paths.push(products[&t.p].path(t.ti as usize * columns + t.tj as usize));
            }
            let lane_paths = if gpus[g].items > 0 {
                s.lanes.iter().map(|&l| w.lane_path(u64::from(l))).collect::<Result<_, _>>()?
            } else {
                Vec::new()
            };
            Ok(GpuOpenings { tile_paths, lane_paths })
        })
    }
}

/// `--kernel`: one kernel, or the fastest that agrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelChoice {
    Auto,
    Only(GemmKernel),
}

impl std::str::FromStr for KernelChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(KernelChoice::Auto);
        }
        GemmKernel::from_name(s).map(KernelChoice::Only).ok_or_else(|| {
            let names: Vec<&str> = GemmKernel::ALL.iter().map(|k| k.name()).collect();
            format!("unknown kernel `{s}` (auto, {})", names.join(", "))
        })
    }
}

impl KernelChoice {
    /// The kernels to self-test on a GPU of compute capability `cc`.
    pub fn candidates(self, cc: (u32, u32)) -> Vec<GemmKernel> {
        match self {
            KernelChoice::Auto => GemmKernel::supported(cc),
            KernelChoice::Only(k) => vec![k],
        }
    }
}

/// A GPU backend, opened and self-tested: the prover of the GPUs it claims.
#[derive(Debug)]
pub struct Backend<D: Device> {
    pub prover: GpuProver<D>,
    /// The claimed GPUs' facts, in the prover's order (NVML's where it answers).
    pub gpus: Vec<crate::host::GpuFacts>,
    pub self_tests: Vec<SelfTest>,
    pub driver_version: i32,
}

/// `0000:3b:00.0` and `00000000:3B:00.0` name the same device.
fn same_pci(a: &str, b: &str) -> bool {
    let split = |s: &str| -> Option<(u32, String)> {
        let (domain, rest) = s.split_once(':')?;
        Some((u32::from_str_radix(domain, 16).ok()?, rest.to_ascii_lowercase()))
    };
    matches!((split(a), split(b)), (Some(x), Some(y)) if x == y)
}

/// The CUDA backend.
pub type CudaBackend = Backend<super::cuda::CudaDevice>;

/// Why the CUDA backend did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No driver library, a driver without a function the backend calls, or no device:
    /// nothing to test here.
    #[error(transparent)]
    NoGpu(#[from] super::cuda::CudaError),
    /// There are GPUs, and one cannot be used (named): a failure.
    #[error("{0}")]
    Unusable(String),
}

impl CudaBackend {
    /// Loads the driver, self-tests the GPUs (`devices`: indices into the GPU list, NVML's
    /// order, or all) at once, each in child processes of `attestor` (`gpu-attestor
    /// self-test-gpu`, see [`super::self_test`]), then opens each GPU with the kernel its
    /// self-test chose. A GPU on which nothing agrees with the CPU reference is an error naming
    /// it.
    pub fn open(devices: Option<&[u32]>, kernel: KernelChoice, attestor: &Path) -> Result<Self, OpenError> {
        let driver = super::cuda::Driver::load()?;
        let mut cuda = driver.devices()?;
        cuda.sort_by(|a, b| a.pci_bus_id.cmp(&b.pci_bus_id));
        // NVML's facts where it answers, matched by PCI address; the driver's otherwise.
        let nvml = crate::host::gpus().unwrap_or_default();
        let mut listed: Vec<(super::cuda::CudaDeviceInfo, crate::host::GpuFacts)> = Vec::new();
        for (i, info) in cuda.into_iter().enumerate() {
            let facts = nvml.iter().find(|f| same_pci(&f.pci_bus_id, &info.pci_bus_id)).cloned().unwrap_or_else(|| {
                crate::host::GpuFacts {
                    index: i as u32,
                    uuid: String::new(),
                    name: info.name.clone(),
                    pci_bus_id: info.pci_bus_id.clone(),
                    memory_bytes: info.memory_bytes,
                    compute_capability: format!("{}.{}", info.compute_capability.0, info.compute_capability.1),
                    cuda_cores: 0,
                    max_sm_clock_mhz: 0,
                    max_memory_clock_mhz: 0,
                    power_limit_mw: 0,
                    driver_version: String::new(),
                    cuda_version: format!("{}.{}", driver.version / 1000, (driver.version % 1000) / 10),
                    mig_mode: "unknown".into(),
                }
            });
            listed.push((info, facts));
        }
        listed.sort_by_key(|(_, f)| f.index);
        let chosen: Vec<_> = match devices {
            None => listed,
            Some(wanted) => {
                let mut out = Vec::new();
                for &d in wanted {
                    let found = listed.iter().find(|(_, f)| f.index == d).cloned();
                    out.push(found.ok_or_else(|| {
                        OpenError::Unusable(format!(
                            "--device {d}: no such GPU (the GPUs are {:?})",
                            listed.iter().map(|(_, f)| f.index).collect::<Vec<_>>()
                        ))
                    })?);
                }
                out
            }
        };
        let mut candidates = Vec::new();
        for (info, _) in &chosen {
            let list = kernel.candidates(info.compute_capability);
            if list.is_empty() {
                return Err(OpenError::Unusable(format!(
                    "{}: compute capability {}.{} runs none of the kernels (A100 and later)",
                    info.label(),
                    info.compute_capability.0,
                    info.compute_capability.1
                )));
            }
            candidates.push(Kernel::candidates(&list));
        }
        // Each GPU on its own thread: its self-test in child processes, before this process
        // holds a context on it (a GPU in exclusive-process mode takes one process's), then its
        // context here, while the other GPUs' self-tests go on. The first challenge's phase A is
        // timed: the production shape's buffers are allocated and the kernel run once here, as
        // the self-test did when it ran in this process.
        let warm = GpuWork { count: 1, ..TIMING_WORK };
        let keys = super::self_test::timing_keys(warm);
        let opened: Vec<Result<(SelfTest, Worker<super::cuda::CudaDevice>), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = chosen
                .iter()
                .zip(&candidates)
                .map(|((info, _), list)| {
                    s.spawn(move || {
                        let child = |plan: &Plan| {
                            common::process::ProcessSpec::new(attestor)
                                .args(["self-test-gpu", "--pci", &info.pci_bus_id])
                                .args(plan.args())
                        };
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .map_err(|e| format!("{}: a runtime for the self-test: {e}", info.label()))?;
                        let t = runtime.block_on(isolated(info.label(), list, &child, STEP_DEADLINE));
                        let (Some(kernel), Some(walk)) = (t.chosen_kernel(), t.walk_kernel()) else {
                            return Err(format!("{}: the self-test failed: {}", t.device, t.disabled().join("; ")));
                        };
                        let device = driver.open(info).map_err(|e| format!("{}: {e}", info.label()))?;
                        let mut worker = Worker::new(device, kernel, super::worker::Tuning::default());
                        worker.set_walk_kernel(walk);
                        worker.phase_a(&keys, &warm).map_err(|e| format!("{}: {e}", info.label()))?;
                        Ok((t, worker))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        });
        let (self_tests, workers): (Vec<SelfTest>, Vec<_>) =
            opened.into_iter().collect::<Result<Vec<_>, _>>().map_err(OpenError::Unusable)?.into_iter().unzip();
        Ok(Self {
            prover: GpuProver::new(workers),
            gpus: chosen.into_iter().map(|(_, f)| f).collect(),
            self_tests,
            driver_version: driver.version,
        })
    }
}

/// `gpu-attestor self-test-gpu`: runs `plan` on the GPU at PCI address `pci` in this process,
/// printing each step's [`super::self_test::Line`] on stdout. Ok(false): it stopped after a
/// step that failed on the device (the process should end: its context may be lost).
pub fn self_test_child(pci: &str, plan: &Plan) -> Result<bool, OpenError> {
    use super::self_test::Line;
    let driver = super::cuda::Driver::load()?;
    let devices = driver.devices()?;
    let info = devices
        .iter()
        .find(|d| same_pci(&d.pci_bus_id, pci))
        .ok_or_else(|| OpenError::Unusable(format!("--pci {pci}: no such CUDA device")))?;
    let device = driver.open(info).map_err(|e| OpenError::Unusable(format!("{}: {e}", info.label())))?;
    let mut worker = Worker::new(device, GemmKernel::Dp4a, super::worker::Tuning::default());
    let finished = run_plan(&mut worker, plan, TIMING_WORK, &mut |step, outcome| {
        println!("{}", Line::of(step, outcome).text());
    });
    if !finished {
        // Not released: after a failure on the device its context may be lost, and the process
        // is about to end, which releases everything.
        std::mem::forget(worker);
    }
    Ok(finished)
}

impl<D: Device> Backend<D> {
    /// The kernels in use, `gemm+walk` (one pair, or one per GPU where they differ), and those
    /// disabled.
    pub fn kernels(&self) -> (String, Vec<String>) {
        let used: Vec<String> = self
            .self_tests
            .iter()
            .filter_map(|t| Some(format!("{}+{}", t.chosen.as_deref()?, t.walk.as_deref()?)))
            .collect();
        let kernel = if used.windows(2).all(|pair| pair[0] == pair[1]) {
            used.first().cloned().unwrap_or_default()
        } else {
            used.join(",")
        };
        let disabled = self
            .self_tests
            .iter()
            .enumerate()
            .flat_map(|(g, t)| t.disabled().into_iter().map(move |d| format!("GPU {g}: {d}")))
            .collect();
        (kernel, disabled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpow2::{Isa, prove};
    use crate::gpu::WalkKernel;
    use crate::gpu::emu::EmuDevice;
    use crate::gpu::self_test::KernelCheck;
    use crate::gpu::test_gpus::cuda_workers;
    use crate::gpu::worker::Tuning;
    use crate::prover::CpuProver;
    use crate::sample;

    /// GPU g walks with the g-th walk kernel (round the list).
    fn emulated(gpus: usize) -> GpuProver<EmuDevice> {
        let tuning = Tuning { max_blocks: 8, ..Tuning::default() };
        GpuProver::new(
            (0..gpus)
                .map(|g| {
                    let mut w = Worker::new(EmuDevice::new(), GemmKernel::Dp4a, tuning);
                    w.set_walk_kernel(WalkKernel::ALL[g % WalkKernel::ALL.len()]);
                    w
                })
                .collect(),
        )
    }

    /// Every GPU at once, one in three without phase B and one in three with fewer rows: every
    /// root, and openings that verify, as the CPU prover gives them.
    fn every_gpu_at_once_agrees<D: Device>(gpu: &mut GpuProver<D>) {
        let w = GpuWork { m: 32, n: 48, k: 64, count: 3, items: 64 };
        let works = [w, GpuWork { items: 0, ..w }, GpuWork { m: 16, ..w }];
        let c = Challenge {
            gpus: (0..gpu.workers().len()).map(|g| works[g % 3]).collect(),
            ..Challenge::plain(4, 16, 1, 0)
        };
        let mut cpu = CpuProver::idle(Isa::best(), 2, u64::MAX);
        let nonce = [9; 32];
        for p in [gpu as &mut dyn Prover, &mut cpu] {
            p.start(&c).unwrap();
            p.phase_a().unwrap();
            p.build().unwrap();
            p.walk(&nonce).unwrap();
        }
        assert_eq!(gpu.commitments(), cpu.commitments());
        let reference = prove::prove(&c, &nonce, Isa::Scalar, 1, u64::MAX).unwrap();
        let last = c.gpus.len() - 1;
        assert_eq!(gpu.commitments()[last].root_b, reference.gpus[last].root_b);
        let samples = sample::draw(&c, &[7; 32]);
        assert_eq!(gpu.open(&samples).unwrap(), Prover::open(&mut cpu, &samples).unwrap());
    }

    #[test]
    fn every_gpu_at_once_gives_the_cpu_provers_roots_and_openings() {
        every_gpu_at_once_agrees(&mut emulated(3));
    }

    /// Every GPU of the machine at once, in rounds: round r gives each GPU its r-th kernel (its
    /// last, past the end of its list) and the r-th walk kernel (round the list).
    #[test]
    fn cuda_every_gpu_at_once_gives_the_cpu_provers_roots_and_openings() {
        let test = "cuda_every_gpu_at_once_gives_the_cpu_provers_roots_and_openings";
        let (workers, kernels): (Vec<_>, Vec<_>) = cuda_workers(test, Tuning::default()).into_iter().unzip();
        let mut gpu = GpuProver::new(workers);
        for round in 0..kernels.iter().map(Vec::len).max().unwrap_or(0) {
            for (w, k) in gpu.workers_mut().iter_mut().zip(&kernels) {
                w.set_kernel(k[round.min(k.len() - 1)]);
                w.set_walk_kernel(WalkKernel::ALL[round % WalkKernel::ALL.len()]);
            }
            every_gpu_at_once_agrees(&mut gpu);
        }
    }

    #[test]
    fn kernel_choices_and_pci_addresses_parse() {
        assert_eq!("auto".parse(), Ok(KernelChoice::Auto));
        assert_eq!("dp4a".parse(), Ok(KernelChoice::Only(GemmKernel::Dp4a)));
        assert!("tensor".parse::<KernelChoice>().unwrap_err().starts_with("unknown kernel `tensor` (auto, dp4a"));
        assert_eq!(KernelChoice::Auto.candidates((9, 0)), GemmKernel::ALL);
        assert_eq!(KernelChoice::Auto.candidates((8, 0)), [GemmKernel::Dp4a, GemmKernel::MmaSync]);
        assert_eq!(KernelChoice::Auto.candidates((8, 9)), [GemmKernel::Dp4a, GemmKernel::MmaSync]);
        assert!(KernelChoice::Auto.candidates((7, 5)).is_empty());
        assert_eq!("wgmma".parse(), Ok(KernelChoice::Only(GemmKernel::Wgmma)));
        assert_eq!("wgmma-wide".parse(), Ok(KernelChoice::Only(GemmKernel::WgmmaWide)));
        assert!(same_pci("0000:3b:00.0", "00000000:3B:00.0"));
        assert!(!same_pci("0000:3b:00.0", "00000000:3C:00.0"));
        assert!(!same_pci("", "0000:3b:00.0"));
    }

    #[test]
    fn a_challenge_for_other_gpus_or_more_memory_is_refused() {
        let mut gpu = emulated(2);
        let e = gpu.start(&Challenge::plain(1, 16, 1, 0)).unwrap_err();
        assert_eq!(e.to_string(), "the challenge has work for 1 GPU(s); this prover claims 2");
        let huge = GpuWork { m: 16, n: 16, k: 16, count: 1, items: 1 << 31 };
        let c = Challenge { gpus: vec![huge, huge], ..Challenge::plain(1, 16, 1, 0) };
        let e = gpu.start(&c).unwrap_err().to_string();
        assert_eq!(
            e,
            "GPU 0 (host emulation): the work needs 135432 MiB of GPU memory; 16384 MiB of 16384 MiB are free"
        );
        assert!(matches!(gpu.phase_a(), Err(ProverError::Refused(_))));
    }

    /// One GEMM and walk pair where every GPU kept the same, one per GPU in order where they
    /// differ.
    #[test]
    fn the_kernels_in_use_are_one_pair_or_one_per_gpu() {
        let test = |chosen: Option<&str>, walk: &str, disabled: bool| SelfTest {
            device: "GPU".into(),
            kernels: vec![KernelCheck {
                kernel: "dp4a".into(),
                agrees: !disabled,
                reason: None,
                device_error: false,
                timed_ms: None,
            }],
            walks: Vec::new(),
            chosen: chosen.map(str::to_owned),
            walk: Some(walk.into()),
            elapsed_ms: 1.0,
        };
        let backend = |self_tests| Backend::<EmuDevice> {
            prover: GpuProver::new(Vec::new()),
            gpus: Vec::new(),
            self_tests,
            driver_version: 12080,
        };
        let same = backend(vec![test(Some("wgmma"), "walk-group", false), test(Some("wgmma"), "walk-group", true)]);
        assert_eq!(
            same.kernels(),
            ("wgmma+walk-group".into(), vec!["GPU 1: dp4a: roots differ from the CPU reference".into()])
        );
        let mixed = backend(vec![
            test(Some("wgmma"), "walk-group", false),
            test(Some("wgmma"), "walk-thread", false),
            test(Some("mma-sync"), "walk-group", false),
        ]);
        assert_eq!(mixed.kernels(), ("wgmma+walk-group,wgmma+walk-thread,mma-sync+walk-group".into(), Vec::new()));
    }
}
