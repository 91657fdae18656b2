//! Bad configuration reaches the operator as one precise line and exit code 2, from the real
//! binaries.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use e2e::{TestConfig, run};

/// Runs `executor --server` on `toml` (written over a fresh test config) with `env`, and checks
/// exit code 2 and a stderr line containing every fragment.
async fn check(toml: Option<&str>, env: &[(&str, &str)], expected: &[&str]) {
    let config = TestConfig::new("");
    if let Some(toml) = toml {
        std::fs::write(&config.path, toml.replace("DIR", config.dir.path().to_str().unwrap())).unwrap();
    }
    let path = config.path.to_str().unwrap();
    let out = run("executor", &["--server", "--config", path], env).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{toml:?} {env:?}: {stderr}");
    let line = stderr.lines().next().unwrap_or_default();
    for fragment in expected {
        let fragment = fragment.replace("FILE", path);
        assert!(line.contains(&fragment), "expected `{fragment}` in the first line of:\n{stderr}");
    }
}

const HOTKEY: &str = "managing_miner_hotkey = \"5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY\"\n";

#[tokio::test]
async fn config_errors_exit_2_naming_key_and_file() {
    check(Some(&format!("{HOTKEY}[server]\nprot = 1\n")), &[], &["FILE: key `server.prot`: unknown key"]).await;
    check(Some(&format!("{HOTKEY}[server]\nport = \"x\"\n")), &[], &["FILE: key `server.port`"]).await;
    check(
        Some(&format!("{HOTKEY}[server]\nport = 0\n")),
        &[],
        &["FILE: key `server.port`: must be between 1 and 65535"],
    )
    .await;
    check(Some(&format!("{HOTKEY}[server]\nport = 70000\n")), &[], &["FILE: key `server.port`", "70000"]).await;
    check(
        Some("managing_miner_hotkey = \"5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQZ\"\n"),
        &[],
        &["FILE: key `managing_miner_hotkey`", "checksum"],
    )
    .await;
    check(Some("[server]\nport = 50051\n"), &[], &["FILE: key `managing_miner_hotkey`: missing"]).await;
    check(Some(&format!("{HOTKEY}data_dir = \"DIR/executor.toml/sub\"\n")), &[], &["key `data_dir`: cannot create"])
        .await;
    check(Some("this is not toml"), &[], &["FILE"]).await;
    // A value from the environment is blamed on its variable.
    check(None, &[("EXECUTOR_SERVER__PORT", "0")], &["environment variable EXECUTOR_SERVER__PORT: key `server.port`"])
        .await;
    check(None, &[("EXECUTOR_SERVER__NOPE", "1")], &["key `server.nope`: unknown key"]).await;
}

#[tokio::test]
async fn a_missing_config_file_is_an_error() {
    let out = run("executor", &["--server", "--config", "/nonexistent/executor.toml"], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("/nonexistent/executor.toml: cannot read config file"), "{stderr}");
}

#[tokio::test]
async fn services_reject_bad_config_alone_too() {
    for service in ["container-runtime", "gpu-monitor", "validator-access", "executor-api"] {
        let out = run(service, &["--config", "/nonexistent/executor.toml"], &[]).await;
        assert_eq!(out.status.code(), Some(2), "{service}");
        let version = run(service, &["--version"], &[]).await;
        assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("{service} {}", common::VERSION));
    }
}

#[tokio::test]
async fn environment_overrides_apply() {
    // The file says 127.0.0.1 for metrics; the environment moves the launcher's metrics port,
    // and validate reports the overridden port.
    let config = TestConfig::new("");
    let port = e2e::free_port().to_string();
    let path = config.path.to_str().unwrap();
    let out = run("executor", &["validate", "--config", path], &[("EXECUTOR_METRICS__LAUNCHER_PORT", &port)]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("metrics.launcher_port 127.0.0.1:{port} free")), "{text}");
}
