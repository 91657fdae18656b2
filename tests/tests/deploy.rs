//! Packaging and deployment: the systemd unit, the release tarball, `deploy.sh` against a real
//! `sshd`, and the monitoring files against a real Prometheus.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::{CapturedOutput, ProcessSpec};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

async fn run(spec: ProcessSpec, timeout: Duration) -> CapturedOutput {
    spec.output(timeout, 4 << 20).await.unwrap()
}

fn text(out: &CapturedOutput) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// `systemd-analyze verify` in a root of its own holding the unit, the executor at its
/// installed path and the distribution's system units: no errors and no warnings at all.
#[tokio::test]
async fn systemd_unit_verifies() {
    if !e2e::require_tool("systemd-analyze", which("systemd-analyze")) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for dir in ["opt/basilica/bin", "etc/systemd/system", "usr/bin", "usr/lib/systemd"] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
    std::fs::copy(e2e::binary("executor"), r.join("opt/basilica/bin/executor")).unwrap();
    std::fs::copy("/usr/bin/kill", r.join("usr/bin/kill")).unwrap();
    let units = run(
        ProcessSpec::new("cp").args(["-r", "/usr/lib/systemd/system"]).arg(r.join("usr/lib/systemd")),
        Duration::from_secs(30),
    )
    .await;
    assert!(units.status.success(), "{}", text(&units));
    let unit = repo().join("deploy/systemd/basilica-executor.service");
    std::fs::copy(&unit, r.join("etc/systemd/system/basilica-executor.service")).unwrap();
    let verify = ProcessSpec::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", r.display()))
        .arg("basilica-executor.service");
    let out = run(verify, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).trim(), "", "systemd-analyze verify has something to say");

    // What the launcher handles is what the unit sends.
    let unit = std::fs::read_to_string(&unit).unwrap();
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"), "{unit}");
    assert!(unit.contains("ExecStart=/opt/basilica/bin/executor --server --config /opt/basilica/config/executor.toml"));
    assert!(unit.contains("RuntimeDirectory=basilica"));

    // A mistyped key is caught by the same check (the test would notice a silent verifier).
    let broken = unit.replace("NoNewPrivileges=", "NoNewPrivilege=");
    std::fs::write(r.join("etc/systemd/system/basilica-executor.service"), broken).unwrap();
    let verify = ProcessSpec::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", r.display()))
        .arg("basilica-executor.service");
    let out = run(verify, Duration::from_secs(60)).await;
    assert!(text(&out).contains("Unknown key 'NoNewPrivilege'"), "{}", text(&out));
}
