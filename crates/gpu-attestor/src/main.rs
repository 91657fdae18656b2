//! `gpu-attestor`: run the GPoW-1 proof of work, prove it to a validator over SSH, check a
//! prover as a validator, verify a report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use common::identity::ExecutorIdentity;
#[cfg(feature = "validator")]
use common::process::ProcessSpec;
#[cfg(feature = "validator")]
use gpu_attestor::check::{ValidatorSetup, Verdict, run_validator};
use gpu_attestor::host;
use gpu_attestor::params::Params;
use gpu_attestor::protocol::{ProverSetup, run_prover};
use gpu_attestor::prove;
use gpu_attestor::report::{BackendInfo, Report, SampleMode, Timings};
use gpu_attestor::verify;

const DEFAULT_IDENTITY: &str = "/opt/basilica/data/executor_identity.key";
/// Reports are read whole; a report of a million products is about 70 MB.
const MAX_REPORT_BYTES: u64 = 256 << 20;

/// GPoW-1 GPU proof of work: prove, check, verify.
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
    /// The CPU reference implementation.
    Cpu,
}

#[derive(Debug, Args)]
struct Work {
    /// `--backend auto|cuda|cpu`.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// Worker threads (default: every core; never more than the cores there are).
    #[arg(long)]
    threads: Option<usize>,
}

/// The size of a challenge.
#[derive(Debug, Clone, Copy, Args)]
struct Shape {
    /// Challenge seed: N as u64 little-endian, zero-padded to 32 bytes (`check`: random if absent).
    #[arg(long)]
    seed: Option<u64>,
    /// m = n = k: a multiple of 16 from 16 to 32768.
    #[arg(long, default_value_t = 256)]
    matrix_dim: u32,
    /// Number of products.
    #[arg(long, default_value_t = 1000)]
    num_matrices: u32,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    shape: Shape,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    work: Work,
    /// Also write a signed report with a Fiat-Shamir sample to FILE (needs --identity).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// The executor's ed25519 identity key.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_IDENTITY)]
    identity: PathBuf,
}

#[derive(Debug, Args)]
struct Gpow2Args {
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

#[derive(Debug, Subcommand)]
enum Command {
    /// GPU facts (NVML) and host facts, as JSON.
    Info {
        /// JSON (the only format; accepted so scripts can say so).
        #[arg(long)]
        json: bool,
    },
    /// The prover side of the interactive protocol on stdin/stdout (validators run this over SSH).
    Challenge {
        #[command(flatten)]
        work: Work,
        #[arg(long, value_name = "FILE", default_value = DEFAULT_IDENTITY)]
        identity: PathBuf,
        /// Longest wait for each validator message.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// GPoW-2's CPU reference on a plain-mode or JSON challenge: every key and root, as JSON.
    /// Hidden: it serves the independent reference tests until `challenge`, `check` and the
    /// guide's mode switch to GPoW-2.
    #[command(name = "gpow2-reference", hide = true)]
    Gpow2Reference(Gpow2Args),
    /// Verify a report: signature, key bindings and the proof.
    Verify {
        #[arg(value_name = "REPORT")]
        report: PathBuf,
    },
    /// The validator side: run `gpu-attestor challenge` through SSH, time it, verify it. Only
    /// in validators' builds (the default `validator` feature): the executor's package leaves it
    /// out, since it hands `--ssh` to a shell.
    #[cfg(feature = "validator")]
    Check {
        /// How to reach the prover, e.g. "ssh -p 2222 validator@host"; the remote command is appended.
        #[arg(long, value_name = "COMMAND")]
        ssh: String,
        /// The command run at the far end.
        #[arg(long, default_value = "gpu-attestor challenge")]
        remote_command: String,
        #[command(flatten)]
        shape: Shape,
        /// The validator's hotkey (SS58), bound into the challenge.
        #[arg(long)]
        hotkey: Option<String>,
        /// Longest wait for each prover message, the commitment included.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Info { json: _ }) => info(),
        Some(Command::Challenge { work, identity, timeout }) => challenge(&work, &identity, timeout),
        Some(Command::Verify { report }) => verify_report(&report),
        Some(Command::Gpow2Reference(args)) => gpow2_reference(&args),
        #[cfg(feature = "validator")]
        Some(Command::Check { ssh, remote_command, shape, hotkey, timeout, json }) => {
            check(&ssh, &remote_command, shape, hotkey.as_deref(), timeout, json)
        }
        None if cli.run.shape.seed.is_some() => run(&cli.run),
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

/// The backend to run, or why there is none.
fn select_backend(work: &Work) -> anyhow::Result<BackendInfo> {
    // More threads than cores only adds memory and scheduling: clamped, so no caller can size
    // a prover past the machine.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = work.threads.unwrap_or(cores).clamp(1, cores);
    match work.backend {
        BackendArg::Cpu => Ok(BackendInfo { kind: "cpu".into(), kernel: cpu_kernel().into(), threads: threads as u32 }),
        BackendArg::Auto | BackendArg::Cuda => match host::gpus() {
            Ok(gpus) if !gpus.is_empty() => {
                bail!("this build has no CUDA backend yet; run with --backend cpu")
            }
            _ => bail!("No NVIDIA GPU found"),
        },
    }
}

fn cpu_kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return "cpu-avx2";
    }
    "cpu-portable"
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn available_memory() -> u64 {
    host::available_memory()
}

/// The guide's mode: compute, print the model, the time and the checksum.
fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let backend = select_backend(&args.work)?;
    let shape = args.shape;
    let seed = shape.seed.context("--seed is required")?;
    let mut params = Params::plain(seed, shape.matrix_dim, shape.num_matrices);
    params.validate()?;
    params.check_memory(backend.threads as usize, available_memory())?;
    let identity = match &args.report {
        Some(_) => Some(ExecutorIdentity::load(&args.identity).context("--report needs the executor identity")?),
        None => None,
    };
    if let Some(identity) = &identity {
        params.executor_key = identity.public_key();
    }
    let host_facts = host::host();
    let model = format!("CPU reference ({}, {} threads)", host_facts.cpu_model, backend.threads);
    let started = Instant::now();
    let commitment = prove::commit(&params, backend.threads as usize);
    let elapsed = started.elapsed();
    if let (Some(path), Some(identity)) = (&args.report, &identity) {
        let started = Instant::now();
        let samples = verify::sample(&params, verify::fiat_shamir_seed(&commitment.root, &params.nonce));
        let openings = samples.iter().map(|s| prove::open(&params, s, backend.threads as usize)).collect();
        let mut report = Report {
            schema_version: gpu_attestor::report::SCHEMA_VERSION,
            executor_id: String::new(),
            executor_public_key: [0; 32],
            validator_hotkey: String::new(),
            sample_mode: SampleMode::FiatShamir,
            params: params.clone(),
            commitment: commitment.clone(),
            samples,
            openings,
            gpus: Vec::new(),
            host: host_facts,
            binary_version: common::VERSION.into(),
            timings: Timings { compute_ms: elapsed.as_millis() as u64, open_ms: started.elapsed().as_millis() as u64 },
            backend: backend.clone(),
            signature: String::new(),
        };
        report.sign(identity);
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let ms = elapsed.as_millis();
    if args.json {
        let out = serde_json::json!({
            "gpu_model": model,
            "backend": backend,
            "params": params,
            "elapsed_ms": elapsed.as_secs_f64() * 1e3,
            "checksum": commitment.checksum(),
        });
        println!("{out}");
    } else {
        println!("GPU Model: {model}");
        println!("Challenge completed in {ms} ms");
        println!("Checksum: {}", commitment.checksum());
    }
    Ok(ExitCode::SUCCESS)
}

fn info() -> anyhow::Result<ExitCode> {
    let out = match host::gpus() {
        Ok(gpus) => serde_json::json!({ "gpus": gpus, "host": host::host() }),
        Err(reason) => {
            serde_json::json!({ "gpus": [], "gpu_unavailable_reason": reason.to_string(), "host": host::host() })
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

fn challenge(work: &Work, identity: &Path, timeout: Duration) -> anyhow::Result<ExitCode> {
    let backend = select_backend(work)?;
    let identity = ExecutorIdentity::load(identity)?;
    let setup = ProverSetup {
        identity,
        threads: backend.threads as usize,
        step_timeout: timeout,
        backend,
        gpus: Vec::new(),
        host: host::host(),
        available_memory: available_memory(),
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

/// A challenge file is a few hundred bytes per GPU.
const MAX_CHALLENGE_BYTES: u64 = 1 << 20;

fn gpow2_reference(args: &Gpow2Args) -> anyhow::Result<ExitCode> {
    use gpu_attestor::gpow2::{self, Challenge, Isa};
    let challenge = match (&args.challenge, args.seed) {
        (Some(path), _) => {
            let size = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?.len();
            if size > MAX_CHALLENGE_BYTES {
                bail!("{}: {size} bytes is larger than any challenge", path.display());
            }
            let text = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
            serde_json::from_slice::<Challenge>(&text)
                .with_context(|| format!("{}: not a challenge", path.display()))?
        }
        (None, Some(seed)) => Challenge::plain(seed, args.matrix_dim, args.num_matrices, args.dataset_items),
        (None, None) => bail!("--seed or --challenge is required"),
    };
    let mut walk_nonce = [0u8; 32];
    if let Some(text) = &args.walk_nonce {
        hex::decode_to_slice(text, &mut walk_nonce).context("--walk-nonce: expected 64 hex digits")?;
    }
    let isa = Isa::parse(&args.isa).context("--isa")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores).clamp(1, cores);
    let proof = gpow2::prove::prove(&challenge, &walk_nonce, isa, threads, available_memory())?;
    let mut out = serde_json::to_value(&proof)?;
    out["isa"] = serde_json::json!(isa.name());
    out["checksum"] = serde_json::json!(proof.checksum());
    out["memory_checksum"] = serde_json::json!(proof.memory_checksum());
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn verify_report(path: &Path) -> anyhow::Result<ExitCode> {
    let size = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?.len();
    if size > MAX_REPORT_BYTES {
        bail!("{}: {size} bytes is larger than any report", path.display());
    }
    let text = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let report: Report = serde_json::from_slice(&text).with_context(|| format!("{}: not a report", path.display()))?;
    match report.verify() {
        Ok(()) => {
            println!(
                "OK: report of {} verified: signature, key bindings, {} of {} products checked, checksum {}",
                report.executor_id,
                report.samples.len(),
                report.params.count,
                report.commitment.checksum()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("FAIL: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(feature = "validator")]
fn check(
    ssh: &str,
    remote_command: &str,
    shape: Shape,
    hotkey: Option<&str>,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (hotkey, hotkey_public) = match hotkey {
        Some(text) => {
            let key: common::hotkey::Hotkey = text.parse().context("--hotkey")?;
            (key.to_string(), *key.public_key())
        }
        None => (String::new(), [0; 32]),
    };
    let (dim, count) = (shape.matrix_dim, shape.num_matrices);
    let seed = match shape.seed {
        Some(s) => Params::plain(s, dim, count).seed,
        None => {
            let mut s = [0u8; 32];
            getrandom::fill(&mut s).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            s
        }
    };
    let setup = ValidatorSetup { seed, dim, count, hotkey, hotkey_public, step_timeout: timeout };
    Params { seed, m: dim, n: dim, k: dim, count, nonce: [0; 32], executor_key: [0; 32], validator_key: [0; 32] }
        .validate()?;
    let command = format!("{ssh} {remote_command}");
    let verdict: Verdict = runtime()?.block_on(async {
        let mut child = ProcessSpec::new("/bin/sh").args(["-c", &command]).spawn_piped()?;
        let stdin = child.stdin.take().context("prover stdin")?;
        let stdout = child.stdout.take().context("prover stdout")?;
        let verdict = run_validator(tokio::io::BufReader::new(stdout), stdin, &setup).await;
        // The prover ends after its report; give it a moment, then it is killed on drop.
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        anyhow::Ok(verdict.with_context(|| format!("conversation with `{command}`"))?)
    })?;
    if json {
        let mut v = verdict.clone();
        v.report = None;
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("Verdict: {}", if verdict.passed { "PASS" } else { "FAIL" });
        println!("Executor: {}", verdict.executor_id);
        println!("GPU Model: {}", verdict.gpu_model);
        println!("Backend: {}", verdict.backend);
        println!(
            "Challenge completed in {:.1} ms (validator clock, {:.2} ms round trip subtracted)",
            verdict.elapsed_ms, verdict.round_trip_ms
        );
        match verdict.limit_ms {
            Some(limit) => println!("Limit: {limit:.1} ms"),
            None => println!("Limit: none"),
        }
        println!("Products checked: {}", verdict.products_checked);
        println!("Checksum: {}", verdict.checksum);
        for reason in &verdict.reasons {
            println!("{reason}");
        }
    }
    Ok(if verdict.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
