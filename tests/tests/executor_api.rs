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
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio_stream::StreamExt;
use tonic::Code;

async fn client(node: &Node, seed: &str) -> ExecutorClient {
    let endpoint = format!("http://127.0.0.1:{}", node.config.ports.grpc);
    ExecutorClient::connect(&endpoint, None, HotkeyPair::parse(seed).unwrap()).await.unwrap()
}

/// SIGKILLs the node's `service` and waits until the launcher has it serving again.
async fn kill_and_wait_restarted(node: &Node, service: &str) {
    let status = node.status().await.unwrap();
    let victim = status.services.iter().find(|s| s.name == service).unwrap().pid;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    node.wait_until(Duration::from_secs(20), |s| {
        let now = s.services.iter().find(|x| x.name == service).unwrap();
        now.pid != victim && e2e::all_serving(s)
    })
    .await;
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
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{}\nstdout: {stdout}\nstderr: {stderr}", out.status);
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
        "--shm-bytes",
        "33554432",
        "--ulimit",
        "nofile=2048",
        "--ulimit",
        "stack=8388608",
        "--ipc",
        "shareable",
        "--workdir",
        "/var",
        "--user",
        "65534",
        "--driver-capability",
        "compute",
        "--entrypoint",
        "/bin/sh",
        "--start",
        "--",
        "-c",
        "echo from ctl; sleep 60",
    ];
    let created = json(&ctl(&node, &key, &create).await);
    assert_eq!(created["state"], "running", "{created}");
    // The workload options went through the public API to the engine and back.
    let workload = &created["workload"];
    assert_eq!(workload["shm_bytes"], 33554432, "{created}");
    assert_eq!((workload["nofile"].as_u64(), workload["stack"].as_i64()), (Some(2048), Some(8388608)), "{created}");
    assert_eq!(
        (&workload["ipc"], &workload["working_dir"], &workload["user"]),
        (&json!("shareable"), &json!("/var"), &json!("65534"))
    );
    assert_eq!((&workload["entrypoint"], &workload["driver_capabilities"]), (&json!(["/bin/sh"]), &json!(["compute"])));
    let out = ctl(&node, &key, &["containers", "create", "--image", BUSYBOX_IMAGE, "--ulimit", "nproc=5"]).await;
    assert_eq!(out.status.code(), Some(2), "a bad --ulimit is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ulimit"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ctl(&node, &key, &["containers", "create", "--image", BUSYBOX_IMAGE, "--ipc", "host"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("workload.ipc"), "{}", String::from_utf8_lossy(&out.stderr));
    let id = created["id"].as_str().unwrap();
    let mut logs = String::new();
    for _ in 0..50 {
        let out = ctl(&node, &key, &["containers", "logs", id]).await;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{}\nstdout: {stdout}\nstderr: {stderr}", out.status);
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

    // Volumes through ctl and the public API (mounting one takes root).
    if e2e::process::is_root() {
        let made = json(&ctl(&node, &key, &["volumes", "create", "scratch", "--size-bytes", "33554432"]).await);
        assert_eq!((&made["name"], &made["size_bytes"]), (&json!("scratch"), &json!(33554432)), "{made}");
        let with = ["containers", "create", "--image", BUSYBOX_IMAGE, "--volume", "scratch:/scratch:ro", "--start"];
        let user = json(&ctl(&node, &key, &[&with[..], &["--", "sleep", "60"]].concat()).await);
        assert_eq!(user["volumes"], json!([{"volume": "scratch", "container_path": "/scratch", "read_only": true}]));
        let listed = json(&ctl(&node, &key, &["volumes", "list"]).await);
        assert_eq!(listed["containers"], json!([user["id"]]), "{listed}");
        let out = ctl(&node, &key, &["volumes", "delete", "scratch"]).await;
        assert_eq!(out.status.code(), Some(1), "a volume in use was deleted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("is in use by"));
        json(&ctl(&node, &key, &["containers", "remove", "--force", user["id"].as_str().unwrap()]).await);
        assert_eq!(json(&ctl(&node, &key, &["volumes", "delete", "scratch"]).await)["deleted"], "scratch");
        let out =
            ctl(&node, &key, &["containers", "create", "--image", BUSYBOX_IMAGE, "--volume", "scratch:data"]).await;
        assert_eq!(out.status.code(), Some(2), "a bad --volume is a usage error");
    }

    // Images through ctl and the public API: the operator's own image is never the cache's.
    let pulled = json(&ctl(&node, &key, &["images", "pull", BUSYBOX_IMAGE]).await);
    assert_eq!(
        (&pulled["reference"], &pulled["state"]),
        (&json!(format!("docker.io/{BUSYBOX_IMAGE}")), &json!("not cached"))
    );
    let listed = json(&ctl(&node, &key, &["images", "list"]).await);
    assert_eq!(listed, json!({"cache_bytes": 0, "high_water_bytes": 200u64 << 30}));
    let out = ctl(&node, &key, &["images", "remove", BUSYBOX_IMAGE]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the executor's image cache"));
    let out = ctl(&node, &key, &["images", "pull", "registry.example/x:1"]).await;
    assert_eq!(out.status.code(), Some(1), "an image off the allow-list was pulled");
    // Templates: none here, and a create naming one is refused by name.
    let listed = ctl(&node, &key, &["templates", "list"]).await;
    assert!(listed.status.success() && listed.stdout.is_empty(), "{listed:?}");
    let out = ctl(&node, &key, &["containers", "create", "--template", "lab"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("template: `lab` is not a template of this executor (templates: none)"), "{stderr}");

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

/// Collects what one ExecContainer call streamed: stdout, stderr, and its end.
async fn exec(
    client: &ExecutorClient,
    request: api::ExecContainerRequest,
) -> Result<(Vec<u8>, Vec<u8>, api::ExecContainerEnd), tonic::Status> {
    use api::exec_container_output::Output;
    let mut stream = client.exec_container(request).await?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    while let Some(message) = stream.next().await {
        match message?.output.unwrap() {
            Output::Stdout(bytes) => stdout.extend(bytes),
            Output::Stderr(bytes) => stderr.extend(bytes),
            Output::End(end) => return Ok((stdout, stderr, end)),
        }
    }
    panic!("the stream ended without an end");
}

/// A running busybox container `sleep 600` of the node's, through the public API.
async fn running_busybox(client: &ExecutorClient) -> pb::Container {
    let request = pb::CreateContainerRequest {
        image: BUSYBOX_IMAGE.into(),
        command: vec!["sleep".into(), "600".into()],
        resources: Some(pb::ResourceRequest { memory_bytes: 64 << 20, cpu_cores: 0.5, ..Default::default() }),
        ttl_seconds: 600,
        ..Default::default()
    };
    let created = client.create_container(request).await.unwrap();
    client.start_container(pb::ContainerRef { id: created.id }).await.unwrap()
}

/// Issue 19 item 6: ExecContainer on the real engine: output and exit code, stdin, the
/// deadline and the output cap (the command killed at each), bad fields, an unknown container.
#[tokio::test]
async fn exec_container_through_the_public_api_on_the_real_engine() {
    if !busybox_image().await {
        return;
    }
    let node = Node::start(TestConfig::new("")).await;
    let client = client(&node, e2e::ALICE_SEED).await;
    let c = running_busybox(&client).await;
    let request = |command: &str| api::ExecContainerRequest {
        id: c.id.clone(),
        command: vec!["sh".into(), "-c".into(), command.into()],
        ..Default::default()
    };

    let (stdout, stderr, end) = exec(&client, request("echo out; echo err >&2; exit 3")).await.unwrap();
    assert_eq!((stdout.as_slice(), stderr.as_slice()), (&b"out\n"[..], &b"err\n"[..]));
    assert_eq!(end, api::ExecContainerEnd { exit_code: 3, timed_out: false, truncated: false });
    let env = api::ExecContainerRequest { env: vec!["GREETING=hi there".into()], ..request("echo \"$GREETING\"") };
    assert_eq!(exec(&client, env).await.unwrap().0, b"hi there\n");
    let stdin = api::ExecContainerRequest { stdin: vec![b'x'; 100_000], ..request("wc -c") };
    let (stdout, _, end) = exec(&client, stdin).await.unwrap();
    assert_eq!((String::from_utf8_lossy(&stdout).trim(), end.exit_code), ("100000", 0));

    // The deadline: the call ends about then, and the command is killed.
    let started = std::time::Instant::now();
    let sleeper = api::ExecContainerRequest { timeout_seconds: 1, ..request("sleep 100") };
    let (_, _, end) = exec(&client, sleeper).await.unwrap();
    assert_eq!(end, api::ExecContainerEnd { exit_code: -1, timed_out: true, truncated: false });
    assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());
    gone_within_2s(&c.docker_id, "sleep 100").await;

    // The output cap: exactly that much is forwarded, and the command is killed.
    let yes = api::ExecContainerRequest { max_output_bytes: 1000, ..request("yes") };
    let (stdout, stderr, end) = exec(&client, yes).await.unwrap();
    assert_eq!(stdout.len() + stderr.len(), 1000);
    assert!(stdout.chunks(2).all(|c| c == b"y\n"), "{}", String::from_utf8_lossy(&stdout));
    assert_eq!(end, api::ExecContainerEnd { exit_code: -1, timed_out: false, truncated: true });
    gone_within_2s(&c.docker_id, "yes").await;

    // A caller that goes away takes its command along.
    let stream = client.exec_container(request("sleep 101")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(runs_in(&c.docker_id, "sleep 101").await);
    drop(stream);
    gone_within_2s(&c.docker_id, "sleep 101").await;

    for (bad, field) in [
        (api::ExecContainerRequest { command: Vec::new(), ..request("") }, "command: "),
        (api::ExecContainerRequest { timeout_seconds: 3601, ..request("true") }, "timeout_seconds: "),
        (api::ExecContainerRequest { max_output_bytes: 1 << 30, ..request("true") }, "max_output_bytes: "),
        (api::ExecContainerRequest { env: vec!["NVIDIA_VISIBLE_DEVICES=all".into()], ..request("true") }, "env: "),
        (api::ExecContainerRequest { env: vec!["1X=y".into()], ..request("true") }, "env: "),
        (api::ExecContainerRequest { id: String::new(), ..request("true") }, "id: "),
    ] {
        let err = exec(&client, bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{field}: {err:?}");
    }
    let unknown = api::ExecContainerRequest { id: "c-000000000000".into(), ..request("true") };
    assert_eq!(exec(&client, unknown).await.unwrap_err().code(), Code::NotFound);
    client
        .stop_container(pb::StopContainerRequest { id: c.id.clone(), timeout_seconds: 0, ..Default::default() })
        .await
        .unwrap();
    let err = exec(&client, request("true")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    let text = metrics(&node).await;
    let line = r#"executor_api_requests_total{method="/executor.api.v1.ExecutorApi/ExecContainer",code="OK"}"#;
    assert!(text.lines().any(|l| l.starts_with(line)), "{text}");
    client.remove_container(pb::RemoveContainerRequest { id: c.id, force: true }).await.unwrap();
}

/// Whether a process whose command line is `args` runs in the Docker container `docker_id`.
async fn runs_in(docker_id: &str, args: &str) -> bool {
    // `docker top` needs the PID column; the command line follows it.
    let (ok, top) = e2e::runtime::docker(&["top", docker_id, "-o", "pid,args"]).await;
    assert!(ok, "docker top {docker_id}");
    top.lines().skip(1).any(|l| l.trim().split_once(char::is_whitespace).is_some_and(|(_, a)| a.trim() == args))
}

/// Waits up to 2 s for `args` to be gone from the Docker container `docker_id`.
async fn gone_within_2s(docker_id: &str, args: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while runs_in(docker_id, args).await {
        assert!(std::time::Instant::now() < deadline, "`{args}` still runs in {docker_id} after 2 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `executor ctl containers exec`: output to the terminal's stdout and stderr, the command's
/// exit code, 124 past the timeout.
#[tokio::test]
async fn executor_ctl_containers_exec() {
    if !busybox_image().await {
        return;
    }
    let node = Node::start(TestConfig::new("")).await;
    let key = node.config.dir.path().join("miner.seed");
    std::fs::write(&key, format!("{}\n", e2e::ALICE_SEED)).unwrap();
    let c = running_busybox(&client(&node, e2e::ALICE_SEED).await).await;

    let out =
        ctl(&node, &key, &["containers", "exec", &c.id, "--", "sh", "-c", "echo out; echo err >&2; exit 3"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((out.stdout.as_slice(), out.stderr.as_slice()), (&b"out\n"[..], &b"err\n"[..]));
    let out = ctl(&node, &key, &["containers", "exec", "--timeout-seconds", "1", &c.id, "--", "sleep", "100"]).await;
    assert_eq!(out.status.code(), Some(124), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ctl(&node, &key, &["containers", "exec", "--timeout-seconds", "0", &c.id, "--", "true"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ctl(&node, &key, &["containers", "exec", "c-000000000000", "--", "true"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Issue 22 items 5 and 6: the capacity adds up; a drained node refuses new creates (UNAVAILABLE `draining`), leaves the
/// running container alone, answers 503 on `/readyz`, stays drained across a `kill -9` of
/// container-runtime, and takes creates again once undrained.
#[tokio::test]
async fn a_drained_node_takes_no_new_containers_until_undrained() {
    if !busybox_image().await {
        return;
    }
    let node = Node::start(TestConfig::new("")).await;
    let key = node.config.dir.path().join("miner.seed");
    std::fs::write(&key, format!("{}\n", e2e::ALICE_SEED)).unwrap();
    let create = ["containers", "create", "--image", BUSYBOX_IMAGE, "--start", "--", "sleep", "600"];
    let running = json(&ctl(&node, &key, &create).await);
    let ready = || http_get(node.config.ports.health, "/readyz");
    assert_eq!(ready().await.unwrap(), (200, "ready\n".to_owned()));

    // Issue 22 item 5: the capacity adds up, with the one container holding its share.
    let capacity = json(&ctl(&node, &key, &["capacity"]).await);
    for resource in ["cpu_cores", "memory_bytes", "volume_bytes", "ports", "containers", "gpus"] {
        let a = &capacity[resource];
        let (total, allocated, free) =
            (a["total"].as_f64().unwrap(), a["allocated"].as_f64().unwrap(), a["free"].as_f64().unwrap());
        assert_eq!(total, allocated + free, "{resource}: {capacity}");
    }
    assert_eq!(capacity["containers"]["allocated"], 1.0, "{capacity}");
    assert_eq!(
        capacity["cpu_cores"]["total"].as_f64(),
        Some(std::thread::available_parallelism().unwrap().get() as f64)
    );
    let memory = &capacity["memory_bytes"];
    assert!(memory["allocated"].as_f64().unwrap() > 0.0 && memory["total"].as_f64().unwrap() > 0.0, "{capacity}");
    let disk = &capacity["disk_bytes"];
    assert!(disk["total"].as_f64().unwrap() >= disk["free"].as_f64().unwrap(), "{capacity}");
    assert_eq!(disk["allocated"].as_f64(), Some((20u64 << 30) as f64), "{capacity}");
    assert!(capacity["note"].as_str().unwrap().contains("enable_gpu_passthrough = false"), "{capacity}");
    // Issue 22 item 4 through ctl: a GPU this node has never seen cannot be quarantined.
    let out = ctl(&node, &key, &["gpus", "quarantine", "GPU-0000", "--reason", "fan"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("uuid: `GPU-0000` is not a GPU of this node"), "{stderr}");

    let drained = json(&ctl(&node, &key, &["drain", "--reason", "disk swap"]).await);
    assert_eq!((&drained["draining"], &drained["reason"]), (&json!(true), &json!("disk swap")), "{drained}");
    let out = ctl(&node, &key, &create).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Unavailable") && stderr.contains("draining: this executor takes no new containers"),
        "{stderr}"
    );
    assert!(stderr.contains("disk swap"), "{stderr}");
    // /readyz is probed at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ready().await.unwrap(), (503, "draining\n".to_owned()));
    let (code, health) = http_get(node.config.ports.health, "/health").await.unwrap();
    assert!(code == 200 && health.contains(r#""draining":true"#), "{code} {health}");
    let id = running["id"].as_str().unwrap();
    assert_eq!(json(&ctl(&node, &key, &["containers", "get", id]).await)["state"], "running");
    // A rental extended through ctl while drained: running ones are the miner's to manage.
    let updated = json(&ctl(&node, &key, &["containers", "update", id, "--ttl-seconds", "7200"]).await);
    assert!(updated["expires_at"].as_i64().unwrap() > updated["created_at"].as_i64().unwrap() + 7000, "{updated}");
    let metrics = http_get(node.config.ports.metrics[1], "/metrics").await.unwrap().1;
    assert_eq!(e2e::metric_value(&metrics, "executor_container_runtime_draining"), 1.0, "{metrics}");

    // container-runtime killed and restarted by the launcher: still drained.
    kill_and_wait_restarted(&node, "container-runtime").await;
    // The launcher sees the new container-runtime serve before executor-api's probe does: ctl
    // health exits 1 until that probe answers, and only then reads the drain from it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let health = loop {
        let out = ctl(&node, &key, &["health"]).await;
        if out.status.success() || std::time::Instant::now() > deadline {
            break json(&out);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health["draining"], true, "{health}");
    assert_eq!(ctl(&node, &key, &create).await.status.code(), Some(1), "a create went through while drained");

    let undrained = json(&ctl(&node, &key, &["undrain"]).await);
    assert_eq!(undrained["draining"], false);
    let fresh = json(&ctl(&node, &key, &create).await);
    assert_eq!(fresh["state"], "running", "{fresh}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ready().await.unwrap().0, 200);
    for id in [id, fresh["id"].as_str().unwrap()] {
        json(&ctl(&node, &key, &["containers", "remove", "--force", id]).await);
    }

    // Issue 22 item 3 through the signed public call: `executor ctl events` from the start has
    // it all, in order, across the restart of container-runtime.
    let config = node.config.path.display().to_string();
    let key_file = key.display().to_string();
    let mut watch = common::process::ProcessSpec::new(e2e::binary("executor"))
        .args(["ctl", "--config", &config, "--key-file", &key_file, "events", "--after", "0"])
        .spawn_supervised()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut events = Vec::new();
    while events.last().is_none_or(|e: &serde_json::Value| e["kind"] != "removed" || e["container_id"] != fresh["id"]) {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
        let line = line.expect("an event within 10 s").unwrap().expect("ctl events goes on");
        events.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
    }
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{events:?}");
    let drains: Vec<(&serde_json::Value, &serde_json::Value)> =
        events.iter().filter(|e| e["kind"] == "drain").map(|e| (&e["draining"], &e["reason"])).collect();
    assert_eq!(drains, [(&json!(true), &json!("disk swap")), (&json!(false), &serde_json::Value::Null)], "{events:?}");
    let of = |id: &str| -> Vec<String> {
        events.iter().filter(|e| e["container_id"] == id).map(|e| e["kind"].as_str().unwrap().to_owned()).collect()
    };
    // Removed while running: its end comes from the engine, beside the removal.
    let mut its = of(id);
    its[2..].sort();
    assert_eq!(its, ["created", "started", "died", "removed"], "{events:?}");
    let _ = watch.kill().await;
}

/// Issue 25 item 1: a miner's client keeps working across a restart of executor-api, which
/// ends every session: its next call is refused `unknown_session` by the new process, and the
/// client opens a new session and sends the call again by itself. Counted by the executor:
/// two sessions opened in all.
#[tokio::test]
async fn the_client_reopens_its_session_after_executor_api_restarts() {
    let node = Node::start(TestConfig::new("")).await;
    let alice = client(&node, e2e::ALICE_SEED).await;
    alice.identity().await.unwrap();
    let opened = |text: &str| e2e::metric_value(text, "executor_api_sessions_opened_total");
    assert_eq!(opened(&metrics(&node).await), 1.0);
    // The same session for the next calls.
    alice.detailed_health().await.unwrap();
    let stale = alice.authorized("Identity", api::IdentityRequest {}).await.unwrap().metadata().clone();
    kill_and_wait_restarted(&node, "executor-api").await;
    // Across the restart: a call of the old session is refused as such ...
    let err = loop {
        let mut request = tonic::Request::new(api::IdentityRequest {});
        *request.metadata_mut() = stale.clone();
        match alice.raw().identity(request).await {
            Err(e) if e.code() == Code::Unavailable => tokio::time::sleep(Duration::from_millis(100)).await,
            other => break other.unwrap_err(),
        }
    };
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().starts_with("unknown_session: "), "{err:?}");
    // ... and the client's own call goes through in a new one.
    let identity = alice.identity().await.unwrap();
    assert_eq!(identity.managing_miner_hotkey, ALICE);
    assert_eq!(opened(&metrics(&node).await), 1.0, "the new process opened one session");
}

/// Issue 24 item 6: where gpu-monitor sees GPUs (simulated here) the attestation runs the CUDA
/// backend, which cannot run on this machine: UNAVAILABLE with gpu-attestor's words for why,
/// not an internal error and not a silent CPU run. gpu-monitor reports the same state (its
/// self-test at start) in its metrics.
#[tokio::test]
async fn attestation_on_gpus_the_cuda_backend_cannot_use_says_why() {
    if std::path::Path::new("/dev/nvidiactl").exists() {
        eprintln!("SKIPPED: this machine has an NVIDIA GPU, the CUDA backend can run");
        return;
    }
    let config = TestConfig::with_system(
        "gpu_backend = \"simulated\"\nsimulated_gpus_file = \"{dir}/gpus.json\"",
        "\n[docker]\nenable_gpu_passthrough = true\n",
    );
    std::fs::write(
        config.dir.path().join("gpus.json"),
        r#"{"gpus":[{"uuid":"GPU-aaaaaaaa-0000-0000-0000-000000000000","name":"Simulated H100","pci_bus_id":"00000000:10:00.0","memory_total_bytes":1000,"xid_events":[],"mig_instances":0}]}"#,
    )
    .unwrap();
    let node = Node::start(config).await;
    let alice = client(&node, e2e::ALICE_SEED).await;
    let err = alice
        .run_attestation(api::AttestationRequest { matrix_dim: 16, num_matrices: 1, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(
        err.message(),
        "the GPU backend cannot run: No NVIDIA GPU found: the CUDA driver library (libcuda.so.1, installed with the NVIDIA driver) could not be loaded",
        "{err:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let info = r#"executor_gpu_attestation_backend_info{backend="none",kernel="",reason="the CUDA driver library (libcuda.so.1, installed with the NVIDIA driver) could not be loaded"} 1"#;
    loop {
        let text = http_get(node.config.ports.metrics[2], "/metrics").await.unwrap().1;
        if text.contains(info) {
            assert!(text.lines().any(|l| l == "executor_gpu_attestation_ready 0"), "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no attestation state in gpu-monitor's metrics:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
