//! The `gpu-attestor` binary end to end: the guide's mode, reports, and protocol 2 between
//! `check` and `challenge` processes over pipes.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::Path;
use std::time::Duration;

use common::identity::ExecutorIdentity;
use common::process::{CapturedOutput, ProcessSpec};
use e2e::process::text;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_gpu-attestor");

async fn run(args: &[&str]) -> CapturedOutput {
    e2e::process::capture(ProcessSpec::new(BIN).args(args.iter().copied()), Duration::from_secs(120)).await
}

fn identity(dir: &Path) -> String {
    ExecutorIdentity::load_or_create(dir).unwrap();
    dir.join(common::identity::IDENTITY_FILE).display().to_string()
}

#[tokio::test]
async fn guide_mode_prints_model_time_and_checksums() {
    let out = run(&["--seed", "12345", "--matrix-dim", "16", "--num-matrices", "3", "--backend", "cpu"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(out.status.success(), "{}", text(&out));
    assert!(lines[0].starts_with("GPU Model: CPU reference ("), "{stdout}");
    assert!(lines[1].starts_with("Challenge completed in ") && lines[1].ends_with(" ms"), "{stdout}");
    assert_eq!(lines[2], format!("Checksum: {CHECKSUM_16_3}"));
    assert_eq!(lines.len(), 3, "no phase B, no memory checksum: {stdout}");

    let args =
        ["--seed", "12345", "--matrix-dim", "16", "--num-matrices", "3", "--dataset-items", "64", "--backend", "cpu"];
    let out = run(&args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().nth(2), Some(format!("Checksum: {CHECKSUM_16_3_64}").as_str()), "{stdout}");
    assert_eq!(stdout.lines().nth(3), Some(format!("Memory checksum: {MEMORY_CHECKSUM_64}").as_str()), "{stdout}");

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = run(&json_args).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["checksum"], CHECKSUM_16_3_64);
    assert_eq!(v["memory_checksum"], MEMORY_CHECKSUM_64);
    assert_eq!(v["backend"]["kind"], "cpu");
}

/// `hex(R_A,0)` of `--seed 12345 --matrix-dim 16 --num-matrices 3`, without and with
/// `--dataset-items 64` (the items enter the master key), and `hex(R_B,0)` with them: what
/// `tests/python/gpow2_reference.py` computes (test_gpow2.py compares many more).
const CHECKSUM_16_3: &str = "41ba8e07e064392fc57895821f449a3df2054c9c703e38eec32f08323dde044e";
const CHECKSUM_16_3_64: &str = "c01b4c74cb393d1f305caecaae7fa32dfb4f4377d96fffe8efe73e784afa71f6";
const MEMORY_CHECKSUM_64: &str = "8463d816747ff62c8eefb9f7f7819898fa750ac5fa3a16cf94f13bb3bea7705f";

#[tokio::test]
async fn no_gpu_and_bad_parameters_are_clear_errors() {
    if !Path::new("/dev/nvidiactl").exists() {
        // `cuda` names what is missing and exits 1; `auto` says it and runs the CPU reference.
        let out = run(&["--seed", "1", "--matrix-dim", "16", "--num-matrices", "1", "--backend", "cuda"]).await;
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            "Error: No NVIDIA GPU found: the CUDA driver library (libcuda.so.1, installed with the NVIDIA driver) could not be loaded"
        );
        let out = run(&["--seed", "1", "--matrix-dim", "16", "--num-matrices", "1", "--backend", "auto"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .starts_with("gpu-attestor: No NVIDIA GPU found (the CUDA driver library"),
            "{}",
            text(&out)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("GPU Model: CPU reference ("), "{}", text(&out));
        for extra in [["--device", "0"], ["--kernel", "dp4a"]] {
            let mut args = vec!["--seed", "1", "--matrix-dim", "16", "--num-matrices", "1", "--backend", "auto"];
            args.extend(extra);
            let out = run(&args).await;
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(text(&out).contains("--device and --kernel are for the CUDA backend, which cannot run here"));
        }
    } else {
        eprintln!("SKIPPED the no-GPU check: this machine has an NVIDIA GPU");
    }
    let out =
        run(&["--seed", "1", "--matrix-dim", "16", "--num-matrices", "1", "--backend", "cpu", "--kernel", "mma"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("unknown kernel `mma` (auto, dp4a"), "{}", text(&out));
    for (args, expected) in [
        (["--matrix-dim", "17", "--num-matrices", "1"], "gpus[0].m = 17: must be a multiple of 16"),
        (["--matrix-dim", "16", "--num-matrices", "0"], "gpus[0].count = 0"),
    ] {
        let mut all = vec!["--seed", "1", "--backend", "cpu"];
        all.extend(args);
        let started = std::time::Instant::now();
        let out = run(&all).await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(expected), "{}", text(&out));
        assert!(started.elapsed() < Duration::from_secs(5), "refused before any work");
    }
    let out = run(&[]).await;
    assert_eq!(out.status.code(), Some(2));
    // `--threads` never sizes a prover past the machine (issue 17 item 1): clamped to the cores,
    // so the memory check sees the threads that will really run (its refusal is a unit test).
    let out = run(&[
        "--seed",
        "1",
        "--backend",
        "cpu",
        "--matrix-dim",
        "16",
        "--num-matrices",
        "1",
        "--threads",
        "100000",
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(json["backend"]["threads"], cores, "{json}");
}

#[tokio::test]
async fn fiat_shamir_reports_verify_say_they_are_weak_and_tampered_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let key = identity(dir.path());
    let report = dir.path().join("report.json");
    let report_s = report.display().to_string();
    let nonce = "5a".repeat(32);
    let mut args = vec![
        "--seed",
        "7",
        "--matrix-dim",
        "32",
        "--num-matrices",
        "20",
        "--dataset-items",
        "4096",
        "--backend",
        "cpu",
    ];
    args.extend(["--identity", &key, "--report", &report_s]);
    // A report needs the requester's nonce, not zero.
    let out = run(&args).await;
    assert!(text(&out).contains("--report needs --nonce"), "{}", text(&out));
    let zero = "00".repeat(32);
    let out = run(&[&args[..], &["--nonce", &zero]].concat()).await;
    assert!(text(&out).contains("non-zero nonce"), "{}", text(&out));
    let out = run(&[&args[..], &["--nonce", &nonce]].concat()).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["verify", &report_s]).await;
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.starts_with("OK: report of executor-") && t.contains("80 tiles and 128 lanes checked"), "{t}");
    assert!(t.contains("weak: a Fiat-Shamir sample"), "{t}");

    let original: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let tampered = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = original.clone();
        f(&mut v);
        std::fs::write(&report, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    type Change = dyn Fn(&mut serde_json::Value);
    for (change, expected) in [
        (&(|v: &mut serde_json::Value| v["host"]["cpu_model"] = "Fake CPU".into()) as &Change, "bad signature"),
        (&|v: &mut serde_json::Value| v["prover_timings"]["phase_a_ms"] = 1.into(), "bad signature"),
        (&|v: &mut serde_json::Value| v["evidence"]["ld_preload"] = "/x.so".into(), "bad signature"),
        (&|v: &mut serde_json::Value| v["executor_public_key"] = "00".repeat(32).into(), "executor id"),
        (&|v: &mut serde_json::Value| v["sample_mode"] = "interactive".into(), "bad signature"),
    ] {
        tampered(change);
        let out = run(&["verify", &report_s]).await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(expected), "{expected}: {}", text(&out));
    }
    std::fs::write(&report, b"{\"schema_version\":2}").unwrap();
    let out = run(&["verify", &report_s]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("not a report"), "{}", text(&out));
}

#[tokio::test]
async fn check_drives_challenge_over_pipes_untimed_and_co_signed() {
    let dir = tempfile::tempdir().unwrap();
    let key = identity(dir.path());
    let secret = dir.path().join("hotkey");
    std::fs::write(&secret, format!("0x{}", "11".repeat(32))).unwrap();
    let report = dir.path().join("report.json");
    let remote = format!("{BIN} challenge --backend cpu --identity {key}");
    let out = run(&[
        "check",
        "--ssh",
        "exec",
        "--remote-command",
        &remote,
        "--seed",
        "12345",
        "--matrix-dim",
        "32",
        "--num-matrices",
        "20",
        "--dataset-items",
        "4096",
        "--hotkey-secret-file",
        &secret.display().to_string(),
        "--report",
        &report.display().to_string(),
    ])
    .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(t.contains("Verdict: UNTIMED"), "{t}");
    assert!(t.contains("Checked: 80 tiles, 128 lanes"), "{t}");
    assert!(t.contains("note: CPU backend: the proof holds, but proves work, not a GPU"), "{t}");
    // The co-signed report verifies offline; without the co-signature its sample is the
    // executor's word alone.
    let out = run(&["verify", &report.display().to_string()]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("weak"), "{}", text(&out));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    v["validator_signature"] = "".into();
    std::fs::write(&report, serde_json::to_vec(&v).unwrap()).unwrap();
    let out = run(&["verify", &report.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("samples not authenticated"), "{}", text(&out));

    // No sizes: a CPU prover gets the CPU default, still UNTIMED; --json is one object.
    let out = run(&["check", "--ssh", "exec", "--remote-command", &remote, "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "UNTIMED", "{}", text(&out));
    assert!(v["notes"][0].as_str().unwrap().contains("CPU backend"), "{v}");
    assert_eq!(out.status.code(), Some(3));

    // A prover that is not there, or that is not a prover.
    let out = run(&["check", "--ssh", "exec", "--remote-command", "/bin/false"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("closed the stream before `hello`"), "{}", text(&out));
    let out = run(&["check", "--ssh", "exec", "--remote-command", "echo hi"]).await;
    assert!(text(&out).contains("FAIL: protocol: malformed message"), "{}", text(&out));
}

/// Sends `input` to `gpu-attestor challenge` after its hello and returns what it printed, its
/// exit status, and how long it took.
async fn converse(key: &str, input: &[u8], close: bool, timeout: &str) -> (String, Option<i32>) {
    let spec = ProcessSpec::new(BIN).args(["challenge", "--backend", "cpu", "--identity", key, "--timeout", timeout]);
    let mut child = spec.spawn_piped().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(input).await.unwrap();
    if close {
        drop(stdin);
    } else {
        std::mem::forget(stdin);
    }
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(20), stdout.read_to_string(&mut out)).await.unwrap().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.unwrap().unwrap();
    (out, status.code())
}

#[tokio::test]
async fn the_prover_refuses_bad_conversations_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let key = identity(dir.path());
    let cases: [(&[u8], bool, &str, &str); 7] = [
        (b"this is not json\n", true, "10s", "malformed message"),
        (b"{\"type\":\"walk\",\"walk_nonce\":\"00\"}\n", true, "10s", "malformed message"),
        (b"{\"type\":\"built\",\"elapsed_ms\":1}\n", true, "10s", "expected `challenge`, got `built`"),
        (b"{\"type\":\"ping\",\"id\":1", true, "10s", "truncated message"),
        (b"", true, "10s", ""),
        (b"", false, "300ms", "no `challenge` within 300ms"),
        (
            b"{\"type\":\"challenge\",\"validator_hotkey\":\"\",\"challenge\":{\"seed\":\"00\",\"gpus\":[]}}\n",
            true,
            "10s",
            "malformed message",
        ),
    ];
    for (input, close, timeout, expected) in cases {
        let (out, code) = converse(&key, input, close, timeout).await;
        let mut lines = out.lines();
        assert!(lines.next().unwrap_or_default().contains("\"type\":\"hello\""), "{out}");
        assert_ne!(code, Some(0), "{out}");
        if !expected.is_empty() {
            let last = lines.last().unwrap_or_default();
            assert!(last.contains("\"type\":\"error\"") && last.contains(expected), "{expected}: {out}");
        }
    }
    // A challenge for another executor's key is refused before any work.
    let other = "11".repeat(32);
    let zero = "00".repeat(32);
    let challenge = format!(
        "{{\"type\":\"challenge\",\"validator_hotkey\":\"\",\"challenge\":{{\"seed\":\"{zero}\",\"nonce\":\"{zero}\",\"executor_key\":\"{other}\",\"validator_key\":\"{zero}\",\"gpus\":[{{\"m\":16,\"n\":16,\"k\":16,\"count\":1,\"items\":0}}]}}}}\n"
    );
    let (out, code) = converse(&key, challenge.as_bytes(), true, "10s").await;
    assert_eq!(code, Some(1));
    assert!(out.contains("executor_key is not this executor's public key"), "{out}");
}

#[tokio::test]
async fn info_reports_host_facts_and_why_there_is_no_gpu() {
    let out = run(&["info"]).await;
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["host"]["cpu_cores"].as_u64().unwrap() >= 1);
    assert!(v["host"]["memory_bytes"].as_u64().unwrap() > 0);
    if !Path::new("/dev/nvidiactl").exists() {
        assert!(v["gpu_unavailable_reason"].as_str().unwrap().contains("NVML"), "{v}");
    }
}
