//! `executor validate` against the real machine: ports, directories, Docker, NVML.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use e2e::{TestConfig, docker_available, require_tool, run};

#[tokio::test]
async fn validate_prints_a_checklist_and_fails_on_a_busy_port() {
    let config = TestConfig::new("");
    let path = config.path.to_str().unwrap();
    let out = run("executor", &["validate", "--config", path], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("PASS  config"), "{text}");
    assert!(text.contains("PASS  miner hotkey     5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"), "{text}");
    assert!(text.contains("PASS  data_dir"), "{text}");
    assert!(text.contains("will be created on first start"), "{text}");
    assert!(text.contains("SKIP  nvml             system.enable_gpu_monitoring = false"), "{text}");
    assert_eq!(text.matches("PASS  binaries").count(), 4, "{text}");
    // The GPU self-test of gpu-attestor (beside the binaries): skipped, saying why, without a GPU.
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        assert!(
            text.contains("SKIP  gpu self-test    no NVIDIA GPU (the CUDA driver library (libcuda.so.1, installed with the NVIDIA driver) could not be loaded): attestation runs the CPU reference"),
            "{text}"
        );
    } else {
        assert!(text.contains("PASS  gpu self-test"), "{text}");
    }
    if require_tool("Docker engine", docker_available()) {
        assert!(text.contains("PASS  docker ") && text.contains("PASS  docker cgroups"), "{text}");
        let pool = format!("PASS  ports            16 ports; 127.0.0.1:{} reached over TCP and UDP", config.ports.pool);
        assert!(text.contains(&pool), "{text}");
        assert!(out.status.success(), "{text}");
        assert!(text.contains("summary: ") && text.contains(" 0 fail"), "{text}");
    }

    // A busy port fails the check and the exit code.
    let _busy = std::net::TcpListener::bind(("127.0.0.1", config.ports.grpc)).unwrap();
    let out = run("executor", &["validate", "--config", path], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("FAIL  port             server.port 127.0.0.1:{}", config.ports.grpc)), "{text}");
}

/// Issue 18 item 9: a runtime directory others can write fails `validate`, and the node does not
/// start on it.
#[tokio::test]
async fn validate_fails_a_state_directory_others_can_write() {
    use std::os::unix::fs::PermissionsExt;
    let config = TestConfig::new("");
    let path = config.path.to_str().unwrap();
    std::fs::create_dir_all(config.runtime_dir()).unwrap();
    std::fs::set_permissions(config.runtime_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run("executor", &["validate", "--config", path], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  runtime_dir") && text.contains("is writable by group and others (mode 777)"),
        "{text}"
    );
    let out = run("executor", &["--server", "--config", path], &[]).await;
    let text = e2e::process::text(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("key `runtime_dir`") && text.contains("chmod go-w"), "{text}");
}

#[tokio::test]
async fn validate_fails_without_nvml_when_gpu_monitoring_is_on() {
    let config = TestConfig::new("");
    let text = std::fs::read_to_string(&config.path)
        .unwrap()
        .replace("enable_gpu_monitoring = false", "enable_gpu_monitoring = true");
    std::fs::write(&config.path, text).unwrap();
    let out = run("executor", &["validate", "--config", config.path.to_str().unwrap()], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    if std::path::Path::new("/dev/nvidiactl").exists() {
        assert!(text.contains("PASS  nvml"), "{text}");
    } else {
        assert!(text.contains("FAIL  nvml             NVML unavailable"), "{text}");
        assert_eq!(out.status.code(), Some(1));
    }
}

#[tokio::test]
async fn validate_reports_an_invalid_config_with_exit_2() {
    let config = TestConfig::new("");
    std::fs::write(&config.path, "[server]\nport = 0\n").unwrap();
    let out = run("executor", &["validate", "--config", config.path.to_str().unwrap()], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("FAIL  config") && text.contains("key `server.port`"), "{text}");
}

#[tokio::test]
async fn validate_checks_the_signature_keys() {
    let config = TestConfig::new("");
    let base = std::fs::read_to_string(&config.path).unwrap();
    let key = config.dir.path().join("cosign.pub");
    let with = |extra: &str| {
        std::fs::write(&config.path, format!("{base}\n[docker.registry]\nverify_signatures = true\n{extra}")).unwrap();
    };
    let path = config.path.to_str().unwrap().to_owned();
    let args = ["validate", "--config", path.as_str()];
    let validate = || run("executor", &args, &[]);

    // No key at all: a config error naming the key.
    with("");
    let out = validate().await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("key `docker.registry.cosign_public_keys`") && text.contains("at least one key"), "{text}");

    // A file that is not a key: the check fails naming the key and the file.
    std::fs::write(&key, "not a key\n").unwrap();
    with(&format!("cosign_public_keys = [\"{}\"]\n", key.display()));
    let out = validate().await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL  image signatures")
            && text.contains("docker.registry.cosign_public_keys: ")
            && text.contains("cosign.pub"),
        "{text}"
    );
    assert!(!text.contains("not enforced"), "{text}");
}

#[tokio::test]
async fn validate_warns_when_gpus_are_simulated() {
    let config = TestConfig::with_system("gpu_backend = \"simulated\"\nsimulated_gpus_file = \"{dir}/gpus.json\"", "");
    let out = run("executor", &["validate", "--config", config.path.to_str().unwrap()], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("WARN  nvml             system.gpu_backend = \"simulated\""), "{text}");
}
