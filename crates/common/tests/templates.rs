//! The shipped config files and the configuration reference stay true to the schema.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::{Path, PathBuf};

use common::config::{Config, NOT_YET_ENFORCED};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// Every leaf key of the schema, dotted (`docker.resource_limits.memory_bytes`).
fn leaf_keys() -> Vec<String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut keys = Vec::new();
    walk("", &serde_json::to_value(Config::default()).unwrap(), &mut keys);
    keys
}

#[test]
fn production_template_sets_every_key_and_refuses_its_placeholders() {
    let template = std::fs::read_to_string(repo("config/executor.correct.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // As shipped, the placeholders are errors naming their keys.
    let path = dir.path().join("as-shipped.toml");
    std::fs::write(&path, &template).unwrap();
    let err = Config::load_from(&path, false).unwrap_err().to_string();
    assert!(err.contains("key `managing_miner_hotkey`"), "{err}");

    // Filled in, it loads, and every key of the schema is set in the file itself.
    let filled = template
        .replace("YOUR_MINER_HOTKEY", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY")
        .replace("YOUR_PUBLIC_IP", "203.0.113.7");
    let path = dir.path().join("executor.toml");
    std::fs::write(&path, filled).unwrap();
    let loaded = Config::load_from(&path, false).unwrap();
    let file = path.display().to_string();
    // Keys that production must not set appear commented out, with their explanation.
    let commented = [
        "system.simulated_gpus_file",
        "server.tls_cert_path",
        "server.tls_key_path",
        "docker.registry.docker_config_file",
        "docker.ports.host_ip",
    ];
    for key in leaf_keys() {
        if commented.contains(&key.as_str()) {
            let name = key.rsplit('.').next().unwrap();
            assert!(template.contains(&format!("# {name} = ")), "`{key}` is not shown in the template");
            continue;
        }
        assert_eq!(loaded.origin(&key), file, "`{key}` is not set in the template");
    }
    assert!(template.contains("\nfile = \"/var/log/basilica/executor.log\""), "the guide's log file");
    // The metrics ports have no authentication: loopback unless the operator opens them (issue
    // 17 item 14).
    assert!(loaded.config.metrics.host.is_loopback(), "metrics on {}", loaded.config.metrics.host);
}

#[test]
fn production_template_placeholders_name_their_keys() {
    let template = std::fs::read_to_string(repo("config/executor.correct.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("executor.toml");
    let hotkey_only = template.replace("YOUR_MINER_HOTKEY", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY");
    std::fs::write(&path, hotkey_only).unwrap();
    let err = Config::load_from(&path, false).unwrap_err().to_string();
    for key in ["server.advertised_host", "advertised_endpoint.grpc_endpoint", "advertised_endpoint.ssh_endpoint"] {
        assert!(err.contains(&format!("key `{key}`")), "{key} placeholder accepted:\n{err}");
    }
}

#[test]
fn dev_config_loads() {
    let loaded = Config::load_from(&repo("config/executor.dev.toml"), false).unwrap();
    loaded.require_miner_hotkey().unwrap();
    assert!(loaded.config.server.host.is_loopback() && loaded.config.metrics.host.is_loopback());
    assert!(!loaded.config.system.enable_gpu_monitoring);
}

#[test]
fn configuration_reference_documents_every_key() {
    let doc = std::fs::read_to_string(repo("docs/configuration.md")).unwrap();
    for key in leaf_keys() {
        assert!(doc.contains(&format!("| `{key}` |")), "docs/configuration.md does not document `{key}`");
    }
    for (key, _) in NOT_YET_ENFORCED {
        let line = doc.lines().find(|l| l.starts_with(&format!("| `{key}` |"))).unwrap();
        assert!(line.contains("not yet"), "docs/configuration.md must say `{key}` is not enforced yet: {line}");
    }
}
