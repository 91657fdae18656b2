//! `gpu-attestor`: run the GPoW-2 proof of work, prove it to a validator over SSH, check a prover
//! as a validator, verify a report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use common::identity::ExecutorIdentity;
#[cfg(feature = "validator")]
use common::process::ProcessSpec;
#[cfg(feature = "validator")]
use gpu_attestor::check::{CustomWork, ValidatorSetup, Verdict, run_validator};
use gpu_attestor::gpow2::{self, Challenge, Isa};
use gpu_attestor::gpu::backend::{CudaBackend, KernelChoice, OpenError};
use gpu_attestor::gpu::self_test::Kernel;
use gpu_attestor::host::GpuFacts;
use gpu_attestor::merkle::Hash;
use gpu_attestor::protocol::{ProverSetup, run_prover};
use gpu_attestor::prover::{CpuProver, Prover};
use gpu_attestor::report::{self, BackendInfo, ProverTimings, Report, SampleMode};
use gpu_attestor::{evidence, host, sample};

const DEFAULT_IDENTITY: &str = "/opt/basilica/data/executor_identity.key";
/// Reports are read whole; a production report of 8 GPUs is a few megabytes.
const MAX_REPORT_BYTES: u64 = 64 << 20;
/// A challenge file is a few hundred bytes per GPU.
const MAX_CHALLENGE_BYTES: u64 = 1 << 20;
/// A hotkey secret file is a hex seed or a small JSON document.
const MAX_SECRET_BYTES: u64 = 64 << 10;

/// GPoW-2 GPU proof of work: prove, check, verify.
#[derive(Debug, Parser)]
#[command(name = "gpu-attestor", version = common::VERSION, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// CUDA when an NVIDIA GPU is present.
    Auto,
    Cuda,
    /// The CPU reference implementation (claims no GPU).
    Cpu,
}

#[derive(Debug, Args)]
struct Work {
    /// `--backend auto|cuda|cpu`: auto is CUDA when it can run, else the CPU reference (saying
    /// why on stderr).
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// The GPUs to claim, as indices in `gpu-attestor info`'s list (default: every GPU).
    #[arg(long, value_delimiter = ',', value_name = "INDEX,...")]
    device: Option<Vec<u32>>,
    /// The GEMM kernel: `auto` (the fastest that agrees with the CPU reference in the
    /// self-test) or one by name (dp4a, mma-sync, wgmma, wgmma-wide).
    #[arg(long, default_value = "auto")]
    kernel: KernelChoice,
    /// Worker threads (default: every core; never more than the cores there are).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Challenge seed: N as u64 little-endian, zero-padded to 32 bytes.
    #[arg(long)]
    seed: Option<u64>,
    /// m = n = k: a multiple of 16 from 16 to 32768.
    #[arg(long, default_value_t = 256)]
    matrix_dim: u32,
    /// Number of products.
    #[arg(long, default_value_t = 1000)]
    num_matrices: u32,
    /// Phase B dataset items (0 = no phase B; else a multiple of 32).
    #[arg(long, default_value_t = 0)]
    dataset_items: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    work: Work,
    /// Also write a signed report with a Fiat-Shamir sample to FILE (needs --identity and --nonce).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// The requester's nonce for --report: 64 hex digits, not all zero.
    #[arg(long, value_name = "HEX")]
    nonce: Option<String>,
    /// The executor's ed25519 identity key.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_IDENTITY)]
    identity: PathBuf,
}

#[derive(Debug, Args)]
struct RootsArgs {
    /// Plain mode: seed N (u64 little-endian, zero-padded), one GPU, zero nonce and keys.
    #[arg(long, required_unless_present = "challenge")]
    seed: Option<u64>,
    /// Plain mode: m = n = k.
    #[arg(long, default_value_t = 256)]
    matrix_dim: u32,
    /// Plain mode: products.
    #[arg(long, default_value_t = 1000)]
    num_matrices: u32,
    /// Plain mode: phase B dataset items (0 = no phase B).
    #[arg(long, default_value_t = 0)]
    dataset_items: u64,
    /// A challenge as JSON (seed, nonce, executor_key, validator_key as hex; gpus as
    /// {m, n, k, count, items}) instead of plain mode.
    #[arg(long, value_name = "FILE", conflicts_with = "seed")]
    challenge: Option<PathBuf>,
    /// The walk nonce, 64 hex digits (default zeros, as in plain mode).
    #[arg(long, value_name = "HEX")]
    walk_nonce: Option<String>,
    /// Code path: auto, scalar, avx2 or avx512.
    #[arg(long, default_value = "auto")]
    isa: String,
    /// Worker threads (default: every core; never more than the cores there are).
    #[arg(long)]
    threads: Option<usize>,
}

#[cfg(feature = "validator")]
#[derive(Debug, Args)]
struct CheckArgs {
    /// How to reach the prover, e.g. "ssh -p 2222 validator@host"; the remote command is appended.
    #[arg(long, value_name = "COMMAND")]
    ssh: String,
    /// The command run at the far end.
    #[arg(long, default_value = "gpu-attestor challenge")]
    remote_command: String,
    /// GPU profiles (default: the built-in table).
    #[arg(long, value_name = "FILE")]
    profiles: Option<PathBuf>,
    /// Fail unless the prover is this executor (its id or its public key in hex).
    #[arg(long, value_name = "KEY_OR_ID")]
    expect_executor: Option<String>,
    /// The validator's hotkey (SS58), bound into the challenge.
    #[arg(long, conflicts_with = "hotkey_secret_file")]
    hotkey: Option<String>,
    /// The validator hotkey's secret (hex seed, or a Bittensor hotkey file): binds the hotkey and
    /// co-signs the report, so `verify` can trust its sample.
    #[arg(long, value_name = "FILE")]
    hotkey_secret_file: Option<PathBuf>,
    /// Challenge seed N (u64, zero-padded); random when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Custom sizes instead of the profiles' (the verdict is then UNTIMED): m = n = k.
    #[arg(long)]
    matrix_dim: Option<u32>,
    /// Custom sizes: products per GPU.
    #[arg(long)]
    num_matrices: Option<u32>,
    /// Custom sizes: dataset items per GPU.
    #[arg(long)]
    dataset_items: Option<u64>,
    /// Longest wait for each prover message, the timed phases included.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Write the report (co-signed with --hotkey-secret-file) to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Verification threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// GPU facts (NVML), evidence and host facts, as JSON.
    Info {
        /// JSON (the only format; accepted so scripts can say so).
        #[arg(long)]
        json: bool,
    },
    /// The prover side of protocol 2 on stdin/stdout (validators run this over SSH).
    Challenge {
        #[command(flatten)]
        work: Work,
        #[arg(long, value_name = "FILE", default_value = DEFAULT_IDENTITY)]
        identity: PathBuf,
        /// Longest wait for each validator message.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Every key and root of a plain-mode or JSON challenge, as JSON (the CPU reference).
    Roots(RootsArgs),
    /// Verify a report offline: signatures, who drew the sample, and the proof.
    Verify {
        #[arg(value_name = "REPORT")]
        report: PathBuf,
        /// Verification threads (default: every core).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Opens the CUDA backend and self-tests every GPU (each GEMM and walk kernel against the CPU
    /// reference), as JSON: `executor validate` runs it. Exit 0 when every GPU can prove or
    /// there is no GPU (`"backend": "none"` and why), 1 when a GPU cannot.
    SelfTest {
        /// JSON (the only format; accepted so scripts can say so).
        #[arg(long)]
        json: bool,
        /// The GPUs to test, as indices in `info`'s list (default: every GPU).
        #[arg(long, value_delimiter = ',', value_name = "INDEX,...")]
        device: Option<Vec<u32>>,
    },
    /// One GPU's self-test steps, each said on stdout as it starts and ends: the child
    /// processes of `self-test` and of every command that opens the CUDA backend (a kernel that
    /// faults or hangs takes down its child, not the GPU). Exit 3 after a step that failed on
    /// the device.
    #[command(hide = true)]
    SelfTestGpu {
        /// The GPU's PCI address.
        #[arg(long)]
        pci: String,
        /// Kernels (GEMM or walk) to check against the CPU reference (and time, where they
        /// agree).
        #[arg(long, value_delimiter = ',', value_parser = self_test_kernel)]
        check: Vec<Kernel>,
        /// Kernels to time (they agreed in an earlier child).
        #[arg(long, value_delimiter = ',', value_parser = self_test_kernel)]
        time: Vec<Kernel>,
    },
    /// Everything a GPU machine is lent for, as JSON on stdout (`make gpu-check`): roots of every
    /// kernel against the CPU, the guide's example, throughput, time references. Exit 1 on any
    /// failure.
    #[command(hide = true)]
    GpuCheck {
        /// Runs per time reference.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Products per throughput measurement (production shape).
        #[arg(long, default_value_t = 64)]
        products: u32,
    },
    /// The validator side: run `gpu-attestor challenge` through SSH, time it, verify it. Exit 0
    /// PASS, 1 FAIL, 3 UNTIMED. Only in validators' builds (the default `validator` feature): the
    /// executor's package leaves it out, since it hands `--ssh` to a shell.
    #[cfg(feature = "validator")]
    Check(Box<CheckArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Info { json: _ }) => info(),
        Some(Command::Challenge { work, identity, timeout }) => challenge(&work, &identity, timeout),
        Some(Command::Verify { report, threads }) => verify_report(&report, threads),
        Some(Command::Roots(args)) => roots(&args),
        Some(Command::GpuCheck { runs, products }) => gpu_check(runs, products),
        Some(Command::SelfTest { json: _, device }) => self_test(device.as_deref()),
        Some(Command::SelfTestGpu { pci, check, time }) => {
            self_test_gpu(&pci, &gpu_attestor::gpu::self_test::Plan { check, time })
        }
        #[cfg(feature = "validator")]
        Some(Command::Check(args)) => check(&args),
        None if cli.run.seed.is_some() => run(&cli.run),
        None => {
            let _ = <Cli as clap::CommandFactory>::command().print_help();
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn self_test_kernel(name: &str) -> Result<Kernel, String> {
    Kernel::from_name(name).ok_or_else(|| format!("unknown kernel `{name}`"))
}

/// This binary: the self-test runs in child processes of it.
fn attestor() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("the path of this binary (for the self-test's processes)")
}

fn threads(asked: Option<usize>) -> usize {
    // More threads than cores only adds memory and scheduling: clamped, so no caller can size
    // a prover past the machine.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    asked.unwrap_or(cores).clamp(1, cores)
}

/// The backend chosen: what it is, its prover, the GPUs it claims, the model line.
struct Selected {
    info: BackendInfo,
    prover: Box<dyn Prover>,
    gpus: Vec<GpuFacts>,
    model: String,
}

fn cpu_backend(work: &Work) -> Selected {
    let threads = threads(work.threads);
    Selected {
        info: BackendInfo {
            kind: "cpu".into(),
            kernel: format!("cpu-{}", Isa::best().name()),
            threads: threads as u32,
            disabled: Vec::new(),
        },
        prover: Box::new(CpuProver::idle(Isa::best(), threads, host::available_memory())),
        gpus: Vec::new(),
        model: format!("CPU reference ({}, {threads} threads)", host::host().cpu_model),
    }
}

/// The backend to run, or why there is none: `cuda` without a usable GPU is an error naming
/// what is missing; `auto` says it on stderr and runs the CPU reference. `one_gpu`: the guide's
/// mode, which proves one GPU: the first unless `--device` names another.
fn select_backend(work: &Work, one_gpu: bool) -> anyhow::Result<Selected> {
    if work.backend == BackendArg::Cpu {
        if work.device.is_some() || work.kernel != KernelChoice::Auto {
            bail!("--device and --kernel are for the CUDA backend");
        }
        return Ok(cpu_backend(work));
    }
    let devices = match (&work.device, one_gpu) {
        (Some(d), _) => Some(d.clone()),
        (None, true) => Some(vec![0]),
        (None, false) => None,
    };
    match CudaBackend::open(devices.as_deref(), work.kernel, &attestor()?) {
        Ok(cuda) => {
            let (kernel, disabled) = cuda.kernels();
            for d in &disabled {
                eprintln!("gpu-attestor: self-test disabled {d}");
            }
            let mut names: Vec<&str> = cuda.gpus.iter().map(|g| g.name.as_str()).collect();
            names.dedup();
            Ok(Selected {
                info: BackendInfo { kind: "cuda".into(), kernel, threads: cuda.gpus.len() as u32, disabled },
                model: format!("{} x{}", names.join(", "), cuda.gpus.len()),
                gpus: cuda.gpus,
                prover: Box::new(cuda.prover),
            })
        }
        Err(why) if work.backend == BackendArg::Cuda => bail!("No NVIDIA GPU found: {why}"),
        Err(why) => {
            eprintln!("gpu-attestor: No NVIDIA GPU found ({why}): running the CPU reference");
            if work.device.is_some() || work.kernel != KernelChoice::Auto {
                bail!("--device and --kernel are for the CUDA backend, which cannot run here");
            }
            Ok(cpu_backend(work))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn hex32_arg(name: &str, text: &str) -> anyhow::Result<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).with_context(|| format!("{name}: expected 64 hex digits"))?;
    Ok(out)
}

/// The guide's mode: compute, print the model, the time and the checksums.
fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.context("--seed is required")?;
    let mut challenge = Challenge::plain(seed, args.matrix_dim, args.num_matrices, args.dataset_items);
    challenge.validate()?;
    let identity = match &args.report {
        Some(_) => {
            let text = args.nonce.as_deref().context("--report needs --nonce (64 hex digits, not all zero)")?;
            challenge.nonce = hex32_arg("--nonce", text)?;
            if challenge.nonce == [0; 32] {
                bail!("--nonce: a Fiat-Shamir report needs a non-zero nonce");
            }
            let identity = ExecutorIdentity::load(&args.identity).context("--report needs the executor identity")?;
            challenge.executor_key = identity.public_key();
            Some(identity)
        }
        None if args.nonce.is_some() => bail!("--nonce is only for --report"),
        None => None,
    };
    let Selected { info: backend, mut prover, gpus, model } = select_backend(&args.work, true)?;
    if gpus.len() > 1 {
        // The guide's mode is one GPU's work; more would be a challenge, not a plain run.
        bail!("--device: the guide's mode proves one GPU; name one ({} named)", gpus.len());
    }
    prover.start(&challenge)?;
    let host_facts = host::host();
    let mut timings = ProverTimings::default();
    let started = Instant::now();
    prover.phase_a()?;
    timings.phase_a_ms = started.elapsed().as_millis() as u64;
    // Plain mode walks after a zero nonce; a report's walk nonce is bound to its roots.
    let roots_a: Vec<Hash> = prover.commitments().iter().map(|c| c.root_a).collect();
    let walk_nonce =
        if identity.is_some() { report::fiat_shamir_walk_nonce(&challenge.nonce, &roots_a) } else { [0; 32] };
    let build = Instant::now();
    prover.build()?;
    timings.build_ms = build.elapsed().as_millis() as u64;
    let walk = Instant::now();
    prover.walk(&walk_nonce)?;
    timings.walk_ms = walk.elapsed().as_millis() as u64;
    let elapsed = started.elapsed();
    let commitments = prover.commitments();
    let checksum = hex::encode(commitments[0].root_a);
    let memory_checksum = commitments[0].root_b.map(hex::encode);

    if let (Some(path), Some(identity)) = (&args.report, &identity) {
        let open = Instant::now();
        let samples = sample::draw(&challenge, &report::fiat_shamir_sample_seed(&challenge.nonce, &commitments));
        let openings = prover.open(&samples)?;
        timings.open_ms = open.elapsed().as_millis() as u64;
        let mut report = Report {
            schema_version: report::SCHEMA_VERSION,
            executor_id: String::new(),
            executor_public_key: [0; 32],
            validator_hotkey: String::new(),
            sample_mode: SampleMode::FiatShamir,
            challenge: challenge.clone(),
            walk_nonce,
            commitments,
            samples,
            openings,
            gpus,
            host: host_facts,
            evidence: evidence::collect(),
            prover_timings: timings,
            validator_times: None,
            binary_version: common::VERSION.into(),
            backend: backend.clone(),
            signature: String::new(),
            validator_signature: String::new(),
        };
        report.sign(identity);
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        let out = serde_json::json!({
            "gpu_model": model,
            "backend": backend,
            "challenge": challenge,
            "elapsed_ms": elapsed.as_secs_f64() * 1e3,
            "checksum": checksum,
            "memory_checksum": memory_checksum,
        });
        println!("{out}");
    } else {
        println!("GPU Model: {model}");
        println!("Challenge completed in {} ms", elapsed.as_millis());
        println!("Checksum: {checksum}");
        if let Some(m) = memory_checksum {
            println!("Memory checksum: {m}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn info() -> anyhow::Result<ExitCode> {
    let mut out = match host::gpus() {
        Ok(gpus) => serde_json::json!({ "gpus": gpus, "host": host::host() }),
        Err(reason) => {
            serde_json::json!({ "gpus": [], "gpu_unavailable_reason": reason.to_string(), "host": host::host() })
        }
    };
    out["evidence"] = serde_json::to_value(evidence::collect())?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

fn challenge(work: &Work, identity: &Path, timeout: Duration) -> anyhow::Result<ExitCode> {
    let identity = ExecutorIdentity::load(identity)?;
    // Driver, module, buffers and self-test before `hello`: none of it is timed.
    let Selected { info, prover, gpus, model: _ } = select_backend(work, false)?;
    let setup = ProverSetup {
        identity,
        prover,
        step_timeout: timeout,
        backend: info,
        // The CPU backend claims no GPU.
        gpus,
        host: host::host(),
        evidence: evidence::collect(),
    };
    let runtime = runtime()?;
    let result = runtime.block_on(async {
        let input = tokio::io::BufReader::new(tokio::io::stdin());
        run_prover(input, tokio::io::stdout(), setup).await
    });
    // A read of stdin may still be blocked in its thread (a silent validator): do not wait
    // for it, or the deadline would not end the process.
    runtime.shutdown_background();
    result?;
    Ok(ExitCode::SUCCESS)
}

fn self_test(devices: Option<&[u32]>) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    match CudaBackend::open(devices, KernelChoice::Auto, &attestor()?) {
        Ok(cuda) => {
            let (kernel, disabled) = cuda.kernels();
            let out = serde_json::json!({
                "backend": "cuda",
                "kernel": kernel,
                "disabled": disabled,
                "gpus": cuda.gpus,
                "self_tests": cuda.self_tests,
                "elapsed_ms": started.elapsed().as_secs_f64() * 1e3,
            });
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Err(OpenError::NoGpu(_)) if devices.is_some() => bail!("--device: no NVIDIA GPU found"),
        Err(why) => {
            // No driver or no device: nothing to test. A GPU that fails its self-test: a failure.
            let none = matches!(why, OpenError::NoGpu(_));
            let reason = why.to_string();
            println!("{}", serde_json::json!({ "backend": if none { "none" } else { "cuda" }, "reason": reason }));
            Ok(if none { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

fn self_test_gpu(pci: &str, plan: &gpu_attestor::gpu::self_test::Plan) -> anyhow::Result<ExitCode> {
    let finished = gpu_attestor::gpu::backend::self_test_child(pci, plan)?;
    Ok(if finished { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// The prefix of `gpu-check`'s stage lines on stderr (scripts/gpu-check.sh reads them when the
/// run was killed before its report).
const STAGE_PREFIX: &str = "gpu-check stage: ";

fn gpu_check(runs: usize, products: u32) -> anyhow::Result<ExitCode> {
    let options = gpu_attestor::gpu::gpu_check::Options::production(runs, products, threads(None));
    // Each stage on stderr as it ends: a run killed at its time limit keeps what it measured.
    let report = gpu_attestor::gpu::gpu_check::run(&options, &attestor()?, &mut |stage| {
        eprintln!("{STAGE_PREFIX}{stage}");
    })
    .map_err(|e| anyhow::anyhow!("No NVIDIA GPU found: {e}"))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    for f in &report.failures {
        eprintln!("FAIL: {f}");
    }
    Ok(if report.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn read_capped(path: &Path, limit: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    let size = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?.len();
    if size > limit {
        bail!("{}: {size} bytes is larger than any {what}", path.display());
    }
    std::fs::read(path).with_context(|| format!("{}", path.display()))
}

fn roots(args: &RootsArgs) -> anyhow::Result<ExitCode> {
    let challenge = match (&args.challenge, args.seed) {
        (Some(path), _) => serde_json::from_slice::<Challenge>(&read_capped(path, MAX_CHALLENGE_BYTES, "challenge")?)
            .with_context(|| format!("{}: not a challenge", path.display()))?,
        (None, Some(seed)) => Challenge::plain(seed, args.matrix_dim, args.num_matrices, args.dataset_items),
        (None, None) => bail!("--seed or --challenge is required"),
    };
    let walk_nonce = match &args.walk_nonce {
        Some(text) => hex32_arg("--walk-nonce", text)?,
        None => [0; 32],
    };
    let isa = Isa::parse(&args.isa).context("--isa")?;
    let proof = gpow2::prove::prove(&challenge, &walk_nonce, isa, threads(args.threads), host::available_memory())?;
    let mut out = serde_json::to_value(&proof)?;
    out["isa"] = serde_json::json!(isa.name());
    out["checksum"] = serde_json::json!(proof.checksum());
    out["memory_checksum"] = serde_json::json!(proof.memory_checksum());
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn verify_report(path: &Path, threads_asked: Option<usize>) -> anyhow::Result<ExitCode> {
    let text = read_capped(path, MAX_REPORT_BYTES, "report")?;
    let report: Report = serde_json::from_slice(&text).with_context(|| format!("{}: not a report", path.display()))?;
    match report.verify(Isa::best(), threads(threads_asked)) {
        Ok(v) => {
            println!(
                "OK: report of {} verified: signatures, {} tiles and {} lanes checked over {} GPU(s), checksum {}",
                report.executor_id,
                v.tiles,
                v.lanes,
                report.challenge.gpus.len(),
                hex::encode(report.commitments[0].root_a)
            );
            if v.weak {
                println!(
                    "weak: a Fiat-Shamir sample, which a prover can grind; it proves work, not who chose the sample"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("FAIL: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(feature = "validator")]
fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    use common::hotkey::{Hotkey, HotkeyPair};
    use gpu_attestor::gpow2::profiles::ProfilesFile;
    let profiles = match &args.profiles {
        Some(path) => ProfilesFile::load(path)?,
        None => ProfilesFile::builtin()?,
    };
    let (hotkey, hotkey_secret) = match (&args.hotkey, &args.hotkey_secret_file) {
        (Some(text), _) => (Some(text.parse::<Hotkey>().context("--hotkey")?), None),
        (None, Some(path)) => {
            let text = String::from_utf8(read_capped(path, MAX_SECRET_BYTES, "hotkey secret")?)
                .context("--hotkey-secret-file: not text")?;
            let pair = HotkeyPair::parse(&text).map_err(|e| anyhow::anyhow!("--hotkey-secret-file: {e}"))?;
            (Some(pair.hotkey().clone()), Some(pair))
        }
        (None, None) => (None, None),
    };
    let custom = match (args.matrix_dim, args.num_matrices, args.dataset_items) {
        (None, None, None) => None,
        (dim, count, items) => Some(CustomWork {
            dim: dim.unwrap_or(CustomWork::CPU_DEFAULT.dim),
            count: count.unwrap_or(CustomWork::CPU_DEFAULT.count),
            items: items.unwrap_or(0),
        }),
    };
    if let Some(c) = custom {
        Challenge::plain(0, c.dim, c.count, c.items).validate()?;
    }
    let setup = ValidatorSetup {
        profiles,
        custom,
        seed: args.seed.map(|s| Challenge::plain(s, 16, 1, 0).seed),
        hotkey,
        hotkey_secret,
        expect_executor: args.expect_executor.clone(),
        step_timeout: args.timeout,
        isa: Isa::best(),
        threads: threads(args.threads),
    };
    let command = format!("{} {}", args.ssh, args.remote_command);
    let verdict: Verdict = runtime()?.block_on(async {
        let mut child = ProcessSpec::new("/bin/sh").args(["-c", &command]).spawn_piped()?;
        let stdin = child.stdin.take().context("prover stdin")?;
        let stdout = child.stdout.take().context("prover stdout")?;
        let verdict = run_validator(tokio::io::BufReader::new(stdout), stdin, &setup).await;
        // The prover ends after its report; give it a moment, then it is killed on drop.
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        anyhow::Ok(verdict)
    })?;
    if let (Some(path), Some(report)) = (&args.report, &verdict.report) {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&verdict)?);
    } else {
        print_verdict(&verdict);
    }
    Ok(ExitCode::from(verdict.verdict.exit_code()))
}

#[cfg(feature = "validator")]
fn print_verdict(v: &Verdict) {
    println!("Verdict: {}", v.verdict.as_str());
    println!("Executor: {}", v.executor_id);
    println!("Backend: {}", v.backend);
    for g in &v.gpus {
        println!("GPU {}: {} (profile: {})", g.index, g.name, g.profile.as_deref().unwrap_or("none"));
    }
    if let Some(t) = &v.times {
        println!(
            "Times (validator clock, {:.2} ms of a {:.2} ms round trip subtracted): phase A {:.1} ms, build {:.1} ms, walk {:.1} ms",
            t.subtracted_ms, t.rtt_ms, t.phase_a_ms, t.build_ms, t.walk_ms
        );
    }
    if let Some(l) = &v.limits {
        println!(
            "Limits ({}): phase A {:.1} ms, build and walk {:.1} ms, walk {:.1} ms",
            if l.measured { "measured" } else { "estimated" },
            l.phase_a_ms,
            l.build_and_walk_ms,
            l.walk_ms
        );
    }
    println!("Checked: {} tiles, {} lanes", v.tiles_checked, v.lanes_checked);
    if !v.checksum.is_empty() {
        println!("Checksum: {}", v.checksum);
    }
    for r in &v.reasons {
        println!("FAIL: {r}");
    }
    for n in &v.notes {
        println!("note: {n}");
    }
}
