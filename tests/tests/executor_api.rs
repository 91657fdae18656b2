//! The public API end to end: the real launcher and every service, the real Docker engine,
//! and the signing client of `executor_api::client` as a miner would use it.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::time::Duration;

use common::hotkey::HotkeyPair;
use common::proto::access::v1 as access;
use common::proto::api::v1 as api;
use common::proto::runtime::v1 as pb;
use e2e::{ALICE, BUSYBOX_IMAGE, Node, TestConfig, busybox_image, http_get};
use executor_api::client::ExecutorClient;
use tokio_stream::StreamExt;
use tonic::Code;

async fn client(node: &Node, seed: &str) -> ExecutorClient {
    let endpoint = format!("http://127.0.0.1:{}", node.config.ports.grpc);
    ExecutorClient::connect(&endpoint, None, HotkeyPair::parse(seed).unwrap()).await.unwrap()
}

async fn metrics(node: &Node) -> String {
    http_get(node.config.ports.metrics[0], "/metrics").await.unwrap().1
}

#[tokio::test]
async fn a_container_through_the_public_api_on_the_real_engine() {
    if !busybox_image().await {
        return;
    }
    let node =
        Node::start(TestConfig::new("\n[advertised_endpoint]\ngrpc_endpoint = \"https://executor.example.net:443\"\n"))
            .await;
    let client = client(&node, e2e::ALICE_SEED).await;

    let identity = client.identity().await.unwrap();
    assert_eq!(identity.managing_miner_hotkey, ALICE);
    assert_eq!(identity.public_key.len(), 32);
    assert_eq!(identity.version, common::VERSION);
    let endpoints = identity.endpoints.unwrap();
    assert_eq!(endpoints.grpc_endpoint, "https://executor.example.net:443");
    assert_eq!(endpoints.advertised_port, u32::from(node.config.ports.grpc));
    assert_eq!(endpoints.health_endpoint, format!("http://127.0.0.1:{}/health", node.config.ports.health));
    let health = client.detailed_health().await.unwrap();
    assert!(health.healthy, "{health:?}");
    assert!(health.components.iter().any(|c| c.name == "docker" && c.serving), "{health:?}");
    // Docker's facts come from container-runtime's checklist; no GPU in this config.
    let profile = client.system_profile().await.unwrap();
    assert!(!profile.docker_version.is_empty() && !profile.docker_cgroup_driver.is_empty(), "{profile:?}");
    assert!(profile.inventory.unwrap().gpus.is_empty());

    let created = client
        .create_container(pb::CreateContainerRequest {
            image: BUSYBOX_IMAGE.into(),
            command: vec!["sh".into(), "-c".into(), "echo hello from the tenant; sleep 60".into()],
            resources: Some(pb::ResourceRequest { memory_bytes: 64 << 20, cpu_cores: 0.5, ..Default::default() }),
            ttl_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap();
    // The owner is the authenticated caller.
    assert_eq!(created.owner, ALICE);
    let id = created.id.clone();
    let started = client.start_container(pb::ContainerRef { id: id.clone() }).await.unwrap();
    assert_eq!(started.state(), pb::ContainerState::Running);
    let got = client.get_container(pb::ContainerRef { id: id.clone() }).await.unwrap();
    assert_eq!(got.state(), pb::ContainerState::Running);
    let listed = client.list_containers(pb::ListContainersRequest::default()).await.unwrap();
    assert!(listed.containers.iter().any(|c| c.id == id), "{listed:?}");

    // Follow the logs until the line shows up.
    let mut logs =
        client.stream_logs(pb::LogsRequest { id: id.clone(), follow: true, tail: 0, since: 0 }).await.unwrap();
    let mut text = String::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = logs.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap().data));
            if text.contains("hello from the tenant") {
                break;
            }
        }
    });
    read.await.unwrap();
    drop(logs);
    assert!(text.contains("hello from the tenant\n"), "{text}");
    let stats = client.container_stats(pb::ContainerRef { id: id.clone() }).await.unwrap();
    assert_eq!(stats.memory_limit_bytes, 64 << 20);

    // Domain errors pass through with their field; an unknown id is NOT_FOUND.
    let err = client
        .create_container(pb::CreateContainerRequest { image: "UPPER".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("image"), "{err:?}");

    client.remove_container(pb::RemoveContainerRequest { id: id.clone(), force: true }).await.unwrap();
    let err = client.get_container(pb::ContainerRef { id }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Validator access, forwarded to validator-access: a challenge signed by the validator's
    // hotkey, a grant, listed, revoked.
    let validator =
        schnorrkel::MiniSecretKey::from_bytes(&[5; 32]).unwrap().expand_to_keypair(schnorrkel::ExpansionMode::Ed25519);
    let hotkey = common::hotkey::Hotkey::from_public(validator.public.to_bytes()).as_str().to_owned();
    let ssh_public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl v";
    let challenge = client
        .request_validator_challenge(access::ChallengeRequest {
            validator_hotkey: hotkey.clone(),
            ssh_public_key: ssh_public_key.into(),
            ttl_seconds: 600,
        })
        .await
        .unwrap();
    let grant = client
        .provision_validator_access(access::ProvisionRequest {
            validator_hotkey: hotkey.clone(),
            ssh_public_key: ssh_public_key.into(),
            ttl_seconds: 600,
            challenge_id: challenge.challenge_id.clone(),
            signature: validator.sign_simple(b"substrate", &challenge.message).to_bytes().to_vec(),
        })
        .await
        .unwrap();
    assert_eq!(grant.validator_hotkey, hotkey);
    let grants = client.list_validator_grants(Default::default()).await.unwrap();
    assert_eq!(grants.grants.len(), 1, "{grants:?}");
    let revoked = client.revoke_validator_access(access::RevokeRequest { grant_id: grant.grant_id }).await.unwrap();
    assert_eq!(revoked.sessions_closed, 0);
    let err = client
        .provision_validator_access(access::ProvisionRequest { validator_hotkey: "nope".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("validator_hotkey"), "{err:?}");

    // A signed attestation report, on the CPU (no GPU in the test config).
    let report = client
        .run_attestation(api::AttestationRequest { matrix_dim: 16, num_matrices: 4, ..Default::default() })
        .await
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&report.report_json).unwrap();
    assert_eq!(report["executor_id"], identity.executor_id, "{report}");

    let text = metrics(&node).await;
    for line in [
        r#"executor_api_requests_total{method="/executor.api.v1.ExecutorApi/CreateContainer",code="OK"} 1"#,
        r#"executor_api_requests_total{method="/executor.api.v1.ExecutorApi/CreateContainer",code="INVALID_ARGUMENT"} 1"#,
        r#"executor_api_requests_total{method="/executor.api.v1.ExecutorApi/StreamLogs",code="#,
        r#"executor_api_request_duration_seconds_bucket{method="/executor.api.v1.ExecutorApi/Identity",le="#,
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
}

#[tokio::test]
async fn refusals_timeouts_and_the_guides_health_name() {
    let config = TestConfig::new("");
    let text = std::fs::read_to_string(&config.path).unwrap().replacen(
        "[server]\n",
        "[server]\nrequest_timeout = \"2s\"\n",
        1,
    );
    std::fs::write(&config.path, text).unwrap();
    let node = Node::start(config).await;
    let endpoint = format!("http://127.0.0.1:{}", node.config.ports.grpc);
    let channel = tonic::transport::Endpoint::from_shared(endpoint).unwrap().connect().await.unwrap();

    // `grpcurl -plaintext localhost:50051 health.v1.Health/Check`, as the guide writes it.
    use common::proto::health_alias::v1 as alias;
    let mut health = alias::health_client::HealthClient::new(channel.clone());
    let reply = health.check(alias::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(reply.status(), alias::health_check_response::ServingStatus::Serving);
    let reply =
        health.check(alias::HealthCheckRequest { service: "executor.api.v1.ExecutorApi".into() }).await.unwrap();
    assert_eq!(reply.into_inner().status(), alias::health_check_response::ServingStatus::Serving);

    // Unsigned calls, unary and streaming, are refused before anything runs.
    let mut raw = common::proto::api::v1::executor_api_client::ExecutorApiClient::new(channel);
    let err = raw.identity(api::IdentityRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().starts_with("missing_signature:"), "{err:?}");
    let err = raw.stream_logs(pb::LogsRequest { id: "c-000000000000".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // Another hotkey's valid signature: PERMISSION_DENIED.
    let bob = client(&node, "0x398f0c28f98885e046333d4a41c19cee4c37368a9832c6502f6cfd182e2aef89").await;
    let err = bob.identity().await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // A body other than the one signed.
    let alice = client(&node, e2e::ALICE_SEED).await;
    let mut request = alice.signed("GetContainer", pb::ContainerRef { id: "c-000000000001".into() });
    request.get_mut().id = "c-000000000002".into();
    let err = alice.raw().get_container(request).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().starts_with("bad_signature:"), "{err:?}");

    // RunAttestation is not cut at `[server] request_timeout` (2 s here; issue 17 item 15): a
    // large run is still going at 3 s. When its caller goes away the prover is stopped.
    let big = api::AttestationRequest { matrix_dim: 2048, num_matrices: 1000, ..Default::default() };
    let call = alice.run_attestation(big);
    assert!(tokio::time::timeout(Duration::from_secs(3), call).await.is_err(), "answered within 3 s");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while prover_running("--matrix-dim 2048").await {
        assert!(std::time::Instant::now() < deadline, "the prover outlived its cancelled call");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let text = metrics(&node).await;
    for reason in ["missing_signature", "hotkey_not_allowed", "bad_signature"] {
        let line = format!("executor_api_auth_failures_total{{reason=\"{reason}\"}}");
        assert!(text.lines().any(|l| l.starts_with(&line) && !l.ends_with(" 0")), "{reason}:\n{text}");
    }
}

/// `executor ctl --config CONFIG --key-file KEY ARGS...`.
async fn ctl(node: &Node, key_file: &std::path::Path, args: &[&str]) -> common::process::CapturedOutput {
    let config = node.config.path.display().to_string();
    let key_file = key_file.display().to_string();
    let mut all = vec!["ctl", "--config", &config, "--key-file", &key_file];
    all.extend_from_slice(args);
    e2e::run("executor", &all, &[]).await
}

fn json(out: &common::process::CapturedOutput) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn executor_ctl_for_operators() {
    if !busybox_image().await {
        return;
    }
    let node = Node::start(TestConfig::new("")).await;
    let key = node.config.dir.path().join("miner.seed");
    std::fs::write(&key, format!("{}\n", e2e::ALICE_SEED)).unwrap();

    let identity = json(&ctl(&node, &key, &["identity"]).await);
    assert_eq!(identity["managing_miner_hotkey"], ALICE);
    // The secret from the environment instead of a file, and the endpoint given explicitly.
    let endpoint = format!("http://127.0.0.1:{}", node.config.ports.grpc);
    let out =
        e2e::run("executor", &["ctl", "--endpoint", &endpoint, "health"], &[("MINER_HOTKEY_SECRET", e2e::ALICE_SEED)])
            .await;
    assert_eq!(json(&out)["healthy"], true);

    let create = [
        "containers",
        "create",
        "--image",
        BUSYBOX_IMAGE,
        "--memory-bytes",
        "67108864",
        "--cpu-cores",
        "0.5",
        "--ttl-seconds",
        "600",
        "--start",
        "--",
        "sh",
        "-c",
        "echo from ctl; sleep 60",
    ];
    let created = json(&ctl(&node, &key, &create).await);
    assert_eq!(created["state"], "running", "{created}");
    let id = created["id"].as_str().unwrap();
    let mut logs = String::new();
    for _ in 0..50 {
        let out = ctl(&node, &key, &["containers", "logs", id]).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        logs = String::from_utf8_lossy(&out.stdout).into_owned();
        if logs.contains("from ctl") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(logs, "from ctl\n");
    let list = ctl(&node, &key, &["containers", "list"]).await;
    assert!(String::from_utf8_lossy(&list.stdout).contains(id));
    json(&ctl(&node, &key, &["containers", "remove", "--force", id]).await);

    // Errors: the code and message of the status (exit 1); no key at all (exit 2).
    let out = ctl(&node, &key, &["containers", "get", id]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"), "{}", String::from_utf8_lossy(&out.stderr));
    let config = node.config.path.display().to_string();
    let out = e2e::run("executor", &["ctl", "--config", &config, "identity"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MINER_HOTKEY_SECRET"));
}

#[tokio::test]
async fn validate_checks_the_tls_files() {
    let config = TestConfig::new("");
    let path = config.path.to_str().unwrap();
    let out = e2e::run("executor", &["validate", "--config", path], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SKIP  tls              public port is plaintext"), "{text}");

    let (cert, key) = (config.dir.path().join("cert.pem"), config.dir.path().join("key.pem"));
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let text = std::fs::read_to_string(&config.path).unwrap().replacen(
        "[server]\n",
        &format!("[server]\ntls_cert_path = \"{}\"\ntls_key_path = \"{}\"\n", cert.display(), key.display()),
        1,
    );
    std::fs::write(&config.path, text).unwrap();
    let out = e2e::run("executor", &["validate", "--config", path], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  tls              key `server.tls_cert_path`/`server.tls_key_path`"), "{text}");
}

/// Whether a `gpu-attestor` process with `args` in its command line runs.
async fn prover_running(args: &str) -> bool {
    let (_, out) = e2e::process::sh("ps", &["-eo", "args"]).await;
    out.lines().any(|l| l.contains("gpu-attestor") && l.contains(args))
}
