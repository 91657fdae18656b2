//! `cargo xtask invariants`: the boundaries of `docs/ARCHITECTURE.md` checked, not just written
//! down (run by `make test`). Each rule names the crates allowed across a boundary; a change
//! that crosses it fails with the rule and the offending crate or file.
//!
//! - Docker (`bollard`) only in container-runtime; NVML (`nvml-wrapper`) only in gpu-monitor and
//!   gpu-attestor; CUDA (`cudarc`) only in gpu-attestor: direct dependencies, from
//!   `cargo metadata` (a crate may use another crate's library, as xtask uses the attestor's).
//! - gpu-attestor is standalone: no gRPC, HTTP server or config loader in its build tree.
//! - A gRPC server on the network only in executor-api: a source file outside it that builds a
//!   tonic server must not name a TCP listener (the services serve on Unix sockets).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

/// Crates that may depend directly on each guarded crate.
const DEPENDENCY_RULES: &[(&str, &[&str], &str)] = &[
    ("bollard", &["container-runtime"], "only container-runtime talks to Docker"),
    ("nvml-wrapper", &["gpu-monitor", "gpu-attestor"], "only gpu-monitor and gpu-attestor read NVML"),
    ("cudarc", &["gpu-attestor"], "only gpu-attestor runs CUDA"),
];

/// Packages the standalone attestor's tree must not contain.
const NOT_IN_ATTESTOR: &[&str] = &["tonic", "axum", "figment", "hyper", "tower", "prost", "metrics"];

/// The crate whose source may serve gRPC on a TCP listener.
const PUBLIC_GRPC_CRATE: &str = "crates/executor-api";

pub(crate) async fn run() -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let mut broken = Vec::new();
    broken.extend(dependency_violations(&cargo(&root, &["metadata", "--format-version", "1", "--no-deps"]).await?)?);
    let tree = cargo(&root, &["tree", "-p", "gpu-attestor", "-e", "normal", "--prefix", "none"]).await?;
    broken.extend(attestor_violations(&tree));
    broken.extend(listener_violations(&root)?);
    if !broken.is_empty() {
        bail!("architecture invariants broken (docs/ARCHITECTURE.md):\n  {}", broken.join("\n  "));
    }
    println!(
        "invariants: bollard, NVML, CUDA, the standalone attestor and public gRPC listeners are where they belong"
    );
    Ok(())
}

async fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let spec = e2e::process::cargo().args(args.iter().copied()).arg("--manifest-path").arg(root.join("Cargo.toml"));
    let out = spec.output(Duration::from_secs(300), 64 << 20).await?;
    if !out.status.success() {
        bail!("cargo {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8(out.stdout).context("cargo output is not UTF-8")
}

/// Workspace members that depend directly on a guarded crate without being allowed to.
fn dependency_violations(metadata: &str) -> anyhow::Result<Vec<String>> {
    let metadata: serde_json::Value = serde_json::from_str(metadata).context("cargo metadata")?;
    let packages = metadata["packages"].as_array().context("cargo metadata: no packages")?;
    let mut broken = Vec::new();
    for package in packages {
        let name = package["name"].as_str().unwrap_or_default();
        for dep in package["dependencies"].as_array().into_iter().flatten() {
            let dep = dep["name"].as_str().unwrap_or_default();
            for (guarded, allowed, why) in DEPENDENCY_RULES {
                if dep == *guarded && !allowed.contains(&name) {
                    broken.push(format!("{name} depends on {guarded}: {why}"));
                }
            }
        }
    }
    Ok(broken)
}

/// Packages of `cargo tree --prefix none` output the attestor must not pull in.
fn attestor_violations(tree: &str) -> Vec<String> {
    let mut found: Vec<&str> =
        tree.lines().filter_map(|l| l.split_whitespace().next()).filter(|p| NOT_IN_ATTESTOR.contains(p)).collect();
    found.sort_unstable();
    found.dedup();
    found.into_iter().map(|p| format!("gpu-attestor's build tree has {p}: the attestor is standalone")).collect()
}

/// Source files outside executor-api that build a tonic server and name a TCP listener.
fn listener_violations(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut broken = Vec::new();
    for file in rust_files(&root.join("crates"))? {
        let relative = file.strip_prefix(root).unwrap_or(&file);
        if relative.starts_with(PUBLIC_GRPC_CRATE) {
            continue;
        }
        let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
        if serves_grpc_on_tcp(&text) {
            broken.push(format!(
                "{}: a gRPC server on a TCP listener; only executor-api serves gRPC on the network",
                relative.display()
            ));
        }
    }
    Ok(broken)
}

fn serves_grpc_on_tcp(source: &str) -> bool {
    let grpc_server = source.contains("transport::Server") || source.contains("Server::builder");
    let tcp = ["TcpListener", "TcpListenerStream", "TcpIncoming"].iter().any(|t| source.contains(t));
    grpc_server && tcp
}

fn rust_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                files.extend(rust_files(&path)?);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(package: &str, dep: &str) -> String {
        serde_json::json!({"packages": [{"name": package, "dependencies": [{"name": dep}]}]}).to_string()
    }

    #[test]
    fn dependency_rules_name_the_crate_and_why() {
        assert!(dependency_violations(&metadata("container-runtime", "bollard")).unwrap().is_empty());
        assert!(dependency_violations(&metadata("gpu-attestor", "nvml-wrapper")).unwrap().is_empty());
        assert_eq!(
            dependency_violations(&metadata("executor-api", "bollard")).unwrap(),
            ["executor-api depends on bollard: only container-runtime talks to Docker"]
        );
        assert_eq!(
            dependency_violations(&metadata("gpu-monitor", "cudarc")).unwrap(),
            ["gpu-monitor depends on cudarc: only gpu-attestor runs CUDA"]
        );
    }

    #[test]
    fn the_attestor_tree_is_checked_by_package_name() {
        let tree = "gpu-attestor v0.1.0\ncommon v0.1.0\ntonic v0.14.2\ntonic-health v0.14.2\ntonic v0.14.2 (*)\n";
        assert_eq!(attestor_violations(tree), ["gpu-attestor's build tree has tonic: the attestor is standalone"]);
        assert!(attestor_violations("gpu-attestor v0.1.0\nsha2 v0.10.9\n").is_empty());
    }

    #[test]
    fn grpc_on_tcp_is_found() {
        assert!(serves_grpc_on_tcp("tonic::transport::Server::builder(); TcpListener::bind(a)"));
        assert!(!serves_grpc_on_tcp("tonic::transport::Server::builder(); UnixListenerStream::new(l)"));
        assert!(!serves_grpc_on_tcp("russh server on tokio::net::TcpListener"));
    }

    #[test]
    fn this_workspace_keeps_its_listeners() {
        assert_eq!(listener_violations(&crate::workspace_root()).unwrap(), Vec::<String>::new());
    }
}
