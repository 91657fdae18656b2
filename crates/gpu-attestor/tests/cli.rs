//! The `gpu-attestor` binary end to end: the guide's mode, reports, and the interactive
//! protocol between `check` and `challenge` processes over pipes.

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
async fn guide_mode_prints_model_time_and_checksum() {
    let out = run(&["--seed", "12345", "--matrix-dim", "16", "--num-matrices", "3", "--backend", "cpu"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(out.status.success(), "{}", text(&out));
    assert!(lines[0].starts_with("GPU Model: CPU reference ("), "{stdout}");
    assert!(lines[1].starts_with("Challenge completed in ") && lines[1].ends_with(" ms"), "{stdout}");
    assert_eq!(lines[2], "Checksum: f07eb69d98ffbe726c5137a0e86a5fb674b1e340e3094a369590982f3739ff25");

    let out =
        run(&["--seed", "12345", "--matrix-dim", "16", "--num-matrices", "3", "--backend", "cpu", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["checksum"], "f07eb69d98ffbe726c5137a0e86a5fb674b1e340e3094a369590982f3739ff25");
    assert_eq!(v["backend"]["kind"], "cpu");
}

#[tokio::test]
async fn no_gpu_and_bad_parameters_are_clear_errors() {
    if !Path::new("/dev/nvidiactl").exists() {
        for backend in ["auto", "cuda"] {
            let out = run(&["--seed", "1", "--matrix-dim", "16", "--num-matrices", "1", "--backend", backend]).await;
            assert_eq!(out.status.code(), Some(1));
            assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "Error: No NVIDIA GPU found");
        }
    } else {
        eprintln!("SKIPPED the no-GPU check: this machine has an NVIDIA GPU");
    }
    for (args, expected) in [
        (["--matrix-dim", "17", "--num-matrices", "1"], "m = 17: matrix dimensions must be multiples of 16"),
        (["--matrix-dim", "16", "--num-matrices", "0"], "num-matrices = 0"),
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
async fn reports_verify_and_tampered_reports_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let key = identity(dir.path());
    let report = dir.path().join("report.json");
    let report_s = report.display().to_string();
    let out = run(&[
        "--seed",
        "7",
        "--matrix-dim",
        "32",
        "--num-matrices",
        "20",
        "--backend",
        "cpu",
        "--identity",
        &key,
        "--report",
        &report_s,
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["verify", &report_s]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).starts_with("OK: report of executor-"), "{}", text(&out));

    let original: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let tampered = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = original.clone();
        f(&mut v);
        std::fs::write(&report, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    for (change, expected) in [
        (
            &(|v: &mut serde_json::Value| v["host"]["cpu_model"] = "Fake CPU".into())
                as &dyn Fn(&mut serde_json::Value),
            "bad signature",
        ),
        (&|v: &mut serde_json::Value| v["timings"]["compute_ms"] = 1.into(), "bad signature"),
        (&|v: &mut serde_json::Value| v["openings"][0]["y"][0] = 0.into(), "bad signature"),
        (&|v: &mut serde_json::Value| v["executor_public_key"] = "00".repeat(32).into(), "executor id"),
    ] {
        tampered(change);
        let out = run(&["verify", &report_s]).await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(expected), "{expected}: {}", text(&out));
    }
    std::fs::write(&report, b"{\"schema_version\":1}").unwrap();
    let out = run(&["verify", &report_s]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("not a report"), "{}", text(&out));
}

#[tokio::test]
async fn check_drives_challenge_over_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let key = identity(dir.path());
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
        "64",
        "--num-matrices",
        "30",
        "--hotkey",
        e2e::ALICE,
    ])
    .await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("Verdict: PASS"), "{t}");
    assert!(t.contains("Products checked: 16"), "{t}");
    assert!(t.contains("note: CPU backend, no time limit applies"), "{t}");

    let out = run(&[
        "check",
        "--ssh",
        "exec",
        "--remote-command",
        &remote,
        "--matrix-dim",
        "16",
        "--num-matrices",
        "2",
        "--json",
    ])
    .await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passed"], true, "{}", text(&out));

    // A prover that is not there, or that is not a prover.
    let out =
        run(&["check", "--ssh", "exec", "--remote-command", "/bin/false", "--matrix-dim", "16", "--num-matrices", "1"])
            .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("closed the stream before `hello`"), "{}", text(&out));
    let out =
        run(&["check", "--ssh", "exec", "--remote-command", "echo hi", "--matrix-dim", "16", "--num-matrices", "1"])
            .await;
    assert!(text(&out).contains("malformed message"), "{}", text(&out));
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
    let cases: [(&[u8], bool, &str, &str); 6] = [
        (b"this is not json\n", true, "10s", "malformed message"),
        (b"{\"type\":\"open\",\"samples\":[]}\n", true, "10s", "expected `challenge`, got `open`"),
        (b"{\"type\":\"ping\",\"id\":1", true, "10s", "truncated message"),
        (b"", true, "10s", ""),
        (b"", false, "300ms", "no `challenge` within 300ms"),
        (
            b"{\"type\":\"challenge\",\"validator_hotkey\":\"\",\"params\":{\"seed\":\"00\",\"m\":16,\"n\":16,\"k\":16,\"count\":1}}\n",
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
        "{{\"type\":\"challenge\",\"validator_hotkey\":\"\",\"params\":{{\"seed\":\"{zero}\",\"m\":16,\"n\":16,\"k\":16,\"count\":1,\"nonce\":\"{zero}\",\"executor_key\":\"{other}\",\"validator_key\":\"{zero}\"}}}}\n"
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
