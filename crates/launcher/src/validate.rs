//! `executor validate`: a pass/fail checklist of the config and the machine, run before the
//! node starts (ports in use by a running node count as failures).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use common::ServiceName;
use common::check::{Check, CheckStatus};
use common::config::{CONFIG_ERROR_EXIT_CODE, Config, LoadedConfig, check_writable_dir};
use common::gpu_self_test::SelfTest;
use common::identity::{ExecutorIdentity, IDENTITY_FILE};
use common::process::ProcessSpec;

/// How long a service's `check` subcommand may take (Docker may be slow to answer).
const SERVICE_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs every check; prints the checklist; exit 0 if nothing failed, 1 if something did, 2 if
/// the config itself is invalid.
pub fn validate_command(config_path: &Path) -> ExitCode {
    let loaded = match Config::load(config_path) {
        Ok(loaded) => loaded,
        Err(e) => {
            let checks: Vec<Check> = e.issues.iter().map(|i| Check::fail("config", i.to_string())).collect();
            print!("{}", render(config_path, &checks));
            return ExitCode::from(CONFIG_ERROR_EXIT_CODE as u8);
        }
    };
    let checks = match crate::block_on(checks(&loaded)) {
        Ok(checks) => checks,
        Err(code) => return code,
    };
    print!("{}", render(&loaded.path, &checks));
    if checks.iter().any(|c| c.status == CheckStatus::Fail) { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// The checklist for a loaded config.
pub async fn checks(loaded: &LoadedConfig) -> Vec<Check> {
    let config = &loaded.config;
    let mut checks = vec![Check::pass("config", format!("{}: every key valid", loaded.path.display()))];
    checks.push(match loaded.require_miner_hotkey() {
        Ok(hotkey) => Check::pass("miner hotkey", hotkey.to_string()),
        Err(e) => Check::fail("miner hotkey", e.issues[0].to_string()),
    });
    checks.extend(loaded.not_yet_enforced().into_iter().map(|i| Check::warn("config", i.to_string())));
    for (key, dir, mode) in [("data_dir", &config.data_dir, 0o700), ("runtime_dir", &config.runtime_dir, 0o750)] {
        checks.push(match check_writable_dir(dir, mode) {
            Ok(()) => Check::pass(key, format!("{} writable", dir.display())),
            Err(e) => Check::fail(key, format!("key `{key}` ({}): {e}", loaded.origin(key))),
        });
    }
    let identity = config.data_dir.join(IDENTITY_FILE);
    checks.push(match ExecutorIdentity::load(&identity) {
        Ok(id) => Check::pass("identity", format!("executor id {}", id.executor_id())),
        Err(common::identity::IdentityError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Check::pass("identity", format!("{} will be created on first start", identity.display()))
        }
        Err(e) => Check::fail("identity", e.to_string()),
    });
    checks.extend(port_checks(config));

    let services = config.services();
    let dir = match crate::binary_dir() {
        Ok(dir) => dir,
        Err(e) => {
            checks.push(Check::fail("binaries", e.to_string()));
            return checks;
        }
    };
    for service in &services {
        let path = dir.join(service.as_str());
        checks.push(if path.is_file() {
            Check::pass("binaries", path.display().to_string())
        } else {
            Check::fail("binaries", format!("{} not found (it must be installed beside `executor`)", path.display()))
        });
    }
    for service in [ServiceName::ExecutorApi, ServiceName::ContainerRuntime, ServiceName::GpuMonitor] {
        let path = dir.join(service.as_str());
        if path.is_file() {
            checks.extend(service_checks(service, &path, &loaded.path).await);
        }
    }
    let attestor = dir.join("gpu-attestor");
    if attestor.is_file() {
        checks.extend(gpu_self_test(&attestor).await);
    }
    checks
}

/// `gpu-attestor self-test --json`: each GPU's GEMM and walk kernels against the CPU reference
/// (GPOW.md, Kernels). No GPU: a skip. A kernel disabled: a warning. A GPU that cannot prove:
/// a failure.
async fn gpu_self_test(attestor: &Path) -> Vec<Check> {
    const NAME: &str = "gpu self-test";
    match SelfTest::run(attestor).await {
        SelfTest::NoGpu { reason } => {
            vec![Check::skip(NAME, format!("no NVIDIA GPU ({reason}): attestation runs the CPU reference"))]
        }
        SelfTest::Failed { reason } => vec![Check::fail(NAME, reason)],
        SelfTest::Ready { disabled, gpus, .. } => {
            let passed = gpus.into_iter().map(|g| {
                let (kernel, walk) = (g.chosen.unwrap_or_default(), g.walk.unwrap_or_default());
                Check::pass(
                    NAME,
                    format!(
                        "{}: kernels {kernel} and {walk} agree with the CPU reference ({:.0} ms)",
                        g.device, g.elapsed_ms
                    ),
                )
            });
            passed.chain(disabled.into_iter().map(|d| Check::warn(NAME, format!("disabled {d}")))).collect()
        }
    }
}

/// Every configured listener's port can be bound now.
fn port_checks(config: &Config) -> Vec<Check> {
    config
        .listeners()
        .into_iter()
        .map(|(key, host, port)| {
            let addr = SocketAddr::new(host, port);
            match TcpListener::bind(addr) {
                Ok(_) => Check::pass("port", format!("{key} {addr} free")),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Check::fail(
                    "port",
                    format!("{key} {addr}: {e} (ports below 1024 need root or CAP_NET_BIND_SERVICE)"),
                ),
                Err(e) => Check::fail("port", format!("{key} {addr}: {e}")),
            }
        })
        .collect()
}

/// Runs `<service> check --config F` and reads its JSON lines.
async fn service_checks(service: ServiceName, binary: &Path, config: &Path) -> Vec<Check> {
    let spec = ProcessSpec::new(binary).arg("--config").arg(config).arg("check");
    let output = match spec.output(SERVICE_CHECK_TIMEOUT, 1 << 20).await {
        Ok(output) => output,
        Err(e) => return vec![Check::fail(service.as_str(), e.to_string())],
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let parsed: Result<Vec<Check>, _> = text.lines().map(serde_json::from_str).collect();
    match parsed {
        Ok(checks) if output.status.success() && !checks.is_empty() => checks,
        Ok(_) | Err(_) => vec![Check::fail(
            service.as_str(),
            format!(
                "`{} check` failed ({}): {}",
                service,
                common::process::describe_exit(output.status),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        )],
    }
}

/// The checklist as printed.
pub fn render(config: &Path, checks: &[Check]) -> String {
    let mut out = format!("executor validate: {}\n", config.display());
    for c in checks {
        let mark = match c.status {
            CheckStatus::Pass => "PASS",
            CheckStatus::Warn => "WARN",
            CheckStatus::Fail => "FAIL",
            CheckStatus::Skip => "SKIP",
        };
        out.push_str(&format!("  {mark}  {:<16} {}\n", c.name, c.detail));
    }
    let count = |s: CheckStatus| checks.iter().filter(|c| c.status == s).count();
    out.push_str(&format!(
        "summary: {} pass, {} fail, {} warn, {} skip\n",
        count(CheckStatus::Pass),
        count(CheckStatus::Fail),
        count(CheckStatus::Warn),
        count(CheckStatus::Skip)
    ));
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A self-test that passed: a PASS per GPU naming the GEMM and walk kernels it kept, a WARN
    /// per kernel disabled (a stand-in attestor prints what a GPU machine's would).
    #[test]
    fn a_passed_gpu_self_test_names_the_kernels_kept_and_warns_of_those_disabled() {
        let dir = tempfile::tempdir().unwrap();
        let attestor = dir.path().join("gpu-attestor");
        let json = r#"{"backend":"cuda","kernel":"wgmma+walk-group","disabled":["GPU 0: walk-thread: phase B roots differ"],
            "self_tests":[{"device":"GPU 0 (H100)","chosen":"wgmma","walk":"walk-group","elapsed_ms":812.4}]}"#;
        std::fs::write(&attestor, format!("#!/bin/sh\ncat <<'JSON'\n{json}\nJSON\n")).unwrap();
        std::fs::set_permissions(&attestor, std::fs::Permissions::from_mode(0o755)).unwrap();
        let checks = crate::block_on(gpu_self_test(&attestor)).unwrap();
        assert_eq!(
            checks,
            [
                Check::pass(
                    "gpu self-test",
                    "GPU 0 (H100): kernels wgmma and walk-group agree with the CPU reference (812 ms)"
                ),
                Check::warn("gpu self-test", "disabled GPU 0: walk-thread: phase B roots differ"),
            ]
        );
    }
}
