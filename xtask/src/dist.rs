//! `cargo xtask dist [--out DIR]`: the release tarball operators install with `deploy.sh`.
//!
//! `target/dist/executor-<version>-x86_64-linux.tar.gz` holds, under
//! `executor-<version>-x86_64-linux/`: `bin/` (the launcher, the four services and
//! `gpu-attestor`, release builds, stripped), `config/executor.correct.toml` (the template),
//! `systemd/basilica-executor.service`, `deploy.sh`, `docs/executor.md` and `SHA256SUMS` of
//! all of them. `<tarball>.sha256` beside it is the tarball's own checksum, which `deploy.sh`
//! verifies on the server.
//!
//! `DIST_PROFILE` (default `release`) names the cargo profile: `make test` packs the `dist-test`
//! profile (unoptimised, no LTO), which tests the packaging and deployment in a third of the
//! build time; what operators get is always `release`.
//!
//! Reproducible: the same sources give the same bytes, wherever they are checked out (see
//! [`build`]). Entries are sorted, every file has the
//! time of `SOURCE_DATE_EPOCH` (default: the last commit's), owner and group 0, fixed modes,
//! and gzip stores no name or time.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use common::process::ProcessSpec;

use crate::workspace_root;

/// Binaries in `bin/`: the launcher first, then what it supervises, then the attestor.
pub(crate) const BINARIES: &[&str] =
    &["executor", "executor-api", "container-runtime", "gpu-monitor", "validator-access", "gpu-attestor"];
const PACKAGES: &[&str] =
    &["executor", "executor-api", "container-runtime", "gpu-monitor", "validator-access", "gpu-attestor"];

pub(crate) async fn run(args: &[String]) -> anyhow::Result<()> {
    let root = workspace_root();
    let out = match args.first().map(String::as_str) {
        None => root.join("target/dist"),
        Some("--out") => PathBuf::from(args.get(1).context("--out DIR")?),
        Some(other) => bail!("cargo xtask dist: unknown argument `{other}` (usage: cargo xtask dist [--out DIR])"),
    };
    // No default features for the packaged crates: gpu-attestor then leaves out `check`, the
    // validator's side, which hands `--ssh` to a shell (the other packages have no features).
    let mut what = vec!["--bins", "--no-default-features"];
    for package in PACKAGES {
        what.extend(["-p", package]);
    }
    let profile = std::env::var("DIST_PROFILE").unwrap_or_else(|_| "release".to_owned());
    eprintln!("dist: {profile} build of {}", PACKAGES.join(", "));
    let target = root.join("target/dist-build");
    build(&root, &target, &profile, &what).await?;
    let tarball = package(&root, &target.join(&profile), &out).await?;
    println!("{}", tarball.display());
    Ok(())
}

/// `cargo build --profile <profile>` into a target directory of its own, with the checkout's and the
/// Cargo home's paths (which panic locations carry) mapped to fixed ones: the binaries do not
/// depend on where the sources are checked out. Its own directory, because other flags would
/// make every later build of `target/release` start over.
async fn build(root: &Path, target: &Path, profile: &str, what: &[&str]) -> anyhow::Result<()> {
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|_| PathBuf::from("/root/.cargo"));
    let flags = format!(
        "--remap-path-prefix={}=/build/executor --remap-path-prefix={}=/cargo",
        root.display(),
        cargo_home.display()
    );
    let spec = e2e::process::cargo()
        .args(["build", "--profile", profile, "--quiet", "--locked"])
        .args(what.iter().copied())
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target)
        .env("RUSTFLAGS", flags);
    let out = spec.output(Duration::from_secs(3600), 1 << 20).await?;
    if !out.status.success() {
        bail!("cargo build --profile {profile} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Stages and packs the binaries in `bin` with the deploy files of `root`; returns the tarball.
pub(crate) async fn package(root: &Path, bin: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let name = format!("executor-{}-x86_64-linux", common::VERSION);
    let stage_root = out.join("stage");
    let stage = stage_root.join(&name);
    if stage_root.exists() {
        std::fs::remove_dir_all(&stage_root).with_context(|| format!("cannot clear {}", stage_root.display()))?;
    }
    let mut files: Vec<(String, PathBuf, u32)> =
        BINARIES.iter().map(|b| (format!("bin/{b}"), bin.join(b), 0o755)).collect();
    files.extend([
        ("config/executor.correct.toml".to_owned(), root.join("config/executor.correct.toml"), 0o644),
        ("systemd/basilica-executor.service".to_owned(), root.join("deploy/systemd/basilica-executor.service"), 0o644),
        ("deploy.sh".to_owned(), root.join("deploy/deploy.sh"), 0o755),
        ("docs/executor.md".to_owned(), root.join("docs/executor.md"), 0o644),
    ]);
    for (rel, src, mode) in &files {
        let dst = stage.join(rel);
        std::fs::create_dir_all(dst.parent().context("staged file has a directory")?)?;
        std::fs::copy(src, &dst).with_context(|| format!("cannot copy {} (build it first?)", src.display()))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(*mode))?;
        if rel.starts_with("bin/") {
            run_tool(ProcessSpec::new("strip").args(["--strip-all"]).arg(&dst)).await?;
        }
    }
    for dir in ["", "bin", "config", "systemd", "docs"] {
        std::fs::set_permissions(stage.join(dir), std::fs::Permissions::from_mode(0o755))?;
    }
    let mut rels: Vec<&str> = files.iter().map(|(rel, _, _)| rel.as_str()).collect();
    rels.sort_unstable();
    let sums = run_tool(in_dir(&stage, "sha256sum").args(rels.iter().copied())).await?;
    std::fs::write(stage.join("SHA256SUMS"), sums)?;
    std::fs::set_permissions(stage.join("SHA256SUMS"), std::fs::Permissions::from_mode(0o644))?;

    let epoch = source_date_epoch(root).await;
    let tar_path = out.join(format!("{name}.tar"));
    let gz_path = out.join(format!("{name}.tar.gz"));
    let _ = std::fs::remove_file(&gz_path);
    run_tool(
        ProcessSpec::new("tar")
            .args(["--sort=name", "--format=gnu", "--owner=0", "--group=0", "--numeric-owner"])
            .arg(format!("--mtime=@{epoch}"))
            .arg("-C")
            .arg(&stage_root)
            .arg("-cf")
            .arg(&tar_path)
            .arg(&name),
    )
    .await?;
    run_tool(ProcessSpec::new("gzip").args(["-n", "-9", "-f"]).arg(&tar_path)).await?;
    let sum = run_tool(in_dir(out, "sha256sum").arg(format!("{name}.tar.gz"))).await?;
    std::fs::write(out.join(format!("{name}.tar.gz.sha256")), sum)?;
    std::fs::remove_dir_all(&stage_root)?;
    Ok(gz_path)
}

/// `SOURCE_DATE_EPOCH` if set, else the time of the last commit, else 0.
async fn source_date_epoch(root: &Path) -> u64 {
    if let Some(epoch) = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.parse().ok()) {
        return epoch;
    }
    let git = ProcessSpec::new("git").arg("-C").arg(root).args(["log", "-1", "--format=%ct"]);
    match run_tool(git).await {
        Ok(out) => String::from_utf8_lossy(&out).trim().parse().unwrap_or(0),
        Err(_) => 0,
    }
}

/// `program` run in `dir` (coreutils' `env --chdir`), so that it prints relative paths.
fn in_dir(dir: &Path, program: &str) -> ProcessSpec {
    ProcessSpec::new("env").arg("--chdir").arg(dir).arg(program)
}

/// Runs a tool to completion; its stdout, or an error with its stderr.
async fn run_tool(spec: ProcessSpec) -> anyhow::Result<Vec<u8>> {
    let out = spec
        .output(Duration::from_secs(600), 1 << 20)
        .await
        .with_context(|| format!("cannot run {}", spec.program().display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", spec.program().display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}
