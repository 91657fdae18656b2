//! executor-api in process, in milliseconds and without Docker: the real server, layer and
//! handlers on a loopback port in front of fake container-runtime, gpu-monitor and
//! validator-access servers on temporary Unix sockets ([`fakes`], [`node`]).
//!
//! This file: every public handler reaches its peer and brings its answer back. [`auth`]: the
//! signature layer. [`errors`]: what a caller sees of each downstream reason. [`exec`]:
//! ExecContainer's relay of the fake Attach.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

mod auth;
mod doors;
mod errors;
mod exec;
mod fakes;
mod node;

use std::time::Duration;

use common::proto::access::v1 as access;
use common::proto::api::v1 as api;
use common::proto::gpu::v1 as gpu;
use common::proto::runtime::v1 as runtime;
use tokio_stream::StreamExt;

use crate::node::{Node, Options};

#[tokio::test]
async fn identity_health_and_profile() {
    let node = Node::start().await;
    let identity = node.client.identity().await.unwrap();
    assert_eq!(identity.executor_id, node.executor_id);
    let key = common::identity::ExecutorIdentity::from_seed(node::TEST_SEED).public_key();
    assert_eq!(identity.public_key, key.to_vec());
    assert_eq!(identity.managing_miner_hotkey, node.alice.hotkey().to_string());
    assert_eq!(identity.version, common::VERSION);

    // Every service through its health service, Docker through a listing.
    let health = node.client.detailed_health().await.unwrap();
    assert!(health.healthy, "{health:?}");
    for name in ["container-runtime", "gpu-monitor", "validator-access", "executor-api", "docker"] {
        assert!(health.components.iter().any(|c| c.name == name && c.serving), "{name}: {health:?}");
    }
    assert!(node.fakes.runtime.take_calls().iter().any(|c| c.starts_with("List ")));

    // gpu-monitor's inventory and snapshot; Docker's facts from `container-runtime check`.
    node.fakes.gpu.take_calls();
    let profile = node.client.system_profile().await.unwrap();
    assert_eq!(profile.inventory.unwrap().driver_version, "fake-driver");
    assert_eq!(profile.snapshot.unwrap().collected_at_ms, 42);
    assert_eq!((profile.docker_version.as_str(), profile.docker_cgroup_driver.as_str()), ("27.1.1", "systemd"));
    assert!(!profile.nvidia_runtime);
    let mut calls = node.fakes.gpu.take_calls();
    calls.sort();
    assert_eq!(calls, ["Inventory InventoryRequest", "Snapshot SnapshotRequest"]);

    // Quarantine and release reach gpu-monitor as sent.
    let q = gpu::QuarantineGpuRequest { uuid: "GPU-a".into(), reason: "fan".into() };
    let health = node.client.quarantine_gpu(q).await.unwrap();
    assert_eq!((health.state.as_str(), health.reason.as_str()), ("unhealthy", "quarantined: fan"));
    assert_eq!(
        node.client.release_gpu(gpu::ReleaseGpuRequest { uuid: "GPU-a".into() }).await.unwrap().state,
        "healthy"
    );
    assert_eq!(
        node.fakes.gpu.take_calls(),
        [
            r#"QuarantineGpu QuarantineGpuRequest { uuid: "GPU-a", reason: "fan" }"#,
            r#"ReleaseGpu ReleaseGpuRequest { uuid: "GPU-a" }"#
        ]
    );
}

#[tokio::test]
async fn container_calls_reach_container_runtime() {
    let node = Node::start().await;
    let (client, runtime) = (&node.client, &node.fakes.runtime);
    let alice = node.alice.hotkey().to_string();

    // The owner defaults to the caller; a miner may name another.
    let request = runtime::CreateContainerRequest { image: "busybox:1".into(), ..Default::default() };
    let created = client.create_container(request.clone()).await.unwrap();
    assert_eq!((created.id.as_str(), created.image.as_str(), created.owner.as_str()), ("c-fake", "busybox:1", &*alice));
    let named = client.create_container(runtime::CreateContainerRequest { owner: "renter-1".into(), ..request });
    assert_eq!(named.await.unwrap().owner, "renter-1");
    let calls = runtime.take_calls();
    assert!(calls[0].starts_with("Create ") && calls[0].contains(&format!("owner: \"{alice}\"")), "{calls:?}");
    assert!(calls[1].contains("owner: \"renter-1\""), "{calls:?}");

    let c1 = || runtime::ContainerRef { id: "c-1".into() };
    assert_eq!(client.start_container(c1()).await.unwrap().id, "c-1");
    // Who stops is the signed caller, whatever the request says.
    let stop = runtime::StopContainerRequest { id: "c-1".into(), timeout_seconds: 3, requested_by: "mallory".into() };
    assert_eq!(client.stop_container(stop).await.unwrap().id, "c-1");
    let update = runtime::UpdateContainerRequest { id: "c-1".into(), ttl_seconds: Some(3600), ..Default::default() };
    assert_eq!(client.update_container(update).await.unwrap().id, "c-1");
    client.remove_container(runtime::RemoveContainerRequest { id: "c-1".into(), force: true }).await.unwrap();
    assert_eq!(client.get_container(c1()).await.unwrap().docker_id, "fake-docker-id");
    let list = client.list_containers(runtime::ListContainersRequest { all: true, ..Default::default() });
    assert_eq!(list.await.unwrap().containers.len(), 1);
    assert_eq!(client.container_stats(c1()).await.unwrap().cpu_percent, 12.5);
    let logs = client.stream_logs(runtime::LogsRequest { id: "c-1".into(), tail: 5, ..Default::default() });
    let chunks: Vec<_> = logs.await.unwrap().map(|c| c.unwrap().data).collect().await;
    assert_eq!(chunks, [b"line 1\n".to_vec(), b"line 2\n".to_vec()]);
    let watch = runtime::WatchEventsRequest { after_seq: 41, container_id: "c-1".into(), ..Default::default() };
    let events: Vec<_> = client.watch_events(watch).await.unwrap().map(|e| e.unwrap()).collect().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].seq, events[0].container_id.as_str(), events[0].exit_code), (42, "c-1", 137));
    let check = client.check_ports(runtime::CheckPortsRequest {}).await.unwrap();
    assert_eq!((check.host_port, check.tcp_reachable, check.pool_size), (40000, true, 1000));
    let volume = runtime::CreateVolumeRequest { name: "data".into(), size_bytes: 1 << 30 };
    assert_eq!(client.create_volume(volume).await.unwrap().size_bytes, 1 << 30);
    assert_eq!(client.list_volumes(runtime::ListVolumesRequest {}).await.unwrap().volumes[0].name, "data");
    client.delete_volume(runtime::DeleteVolumeRequest { name: "data".into() }).await.unwrap();
    let pull = client.pull_image(runtime::PullImageRequest { image: "busybox:1".into(), ..Default::default() });
    let steps: Vec<_> = pull.await.unwrap().map(|p| p.unwrap()).collect().await;
    assert_eq!(steps.iter().map(|s| s.status.as_str()).collect::<Vec<_>>(), ["Downloading", "ready"]);
    // The owner of a pull, as of a create, defaults to the caller.
    let pulled = steps[1].image.as_ref().unwrap();
    assert_eq!((pulled.reference.as_str(), pulled.signature.as_str()), ("busybox:1", &*alice));
    assert_eq!(client.list_images(runtime::ListImagesRequest {}).await.unwrap().cache_bytes, 7);
    client.remove_image(runtime::RemoveImageRequest { image: "busybox:1".into() }).await.unwrap();
    assert_eq!(client.list_templates(runtime::ListTemplatesRequest {}).await.unwrap().templates[0].name, "lab");
    let drained = client.drain(api::DrainRequest { reason: "maintenance".into() }).await.unwrap();
    assert_eq!((drained.draining, drained.reason.as_str()), (true, "maintenance"));
    assert!(!client.undrain(api::UndrainRequest {}).await.unwrap().draining);
    assert_eq!(client.capacity(runtime::CapacityRequest {}).await.unwrap().note, "fake");
    assert_eq!(
        runtime.take_calls(),
        [
            r#"Start ContainerRef { id: "c-1" }"#,
            format!(r#"Stop StopContainerRequest {{ id: "c-1", timeout_seconds: 3, requested_by: "{alice}" }}"#)
                .as_str(),
            r#"Update UpdateContainerRequest { id: "c-1", ttl_seconds: Some(3600), add_ports: [] }"#,
            r#"Remove RemoveContainerRequest { id: "c-1", force: true }"#,
            r#"Get ContainerRef { id: "c-1" }"#,
            r#"List ListContainersRequest { all: true, owner: "" }"#,
            r#"Stats ContainerRef { id: "c-1" }"#,
            r#"Logs LogsRequest { id: "c-1", follow: false, tail: 5, since: 0 }"#,
            r#"Events WatchEventsRequest { after_seq: 41, only_new: false, container_id: "c-1" }"#,
            r#"CheckPorts CheckPortsRequest"#,
            r#"CreateVolume CreateVolumeRequest { name: "data", size_bytes: 1073741824 }"#,
            r#"ListVolumes ListVolumesRequest"#,
            r#"DeleteVolume DeleteVolumeRequest { name: "data" }"#,
            format!(r#"PullImage PullImageRequest {{ image: "busybox:1", owner: "{alice}" }}"#).as_str(),
            r#"ListImages ListImagesRequest"#,
            r#"RemoveImage RemoveImageRequest { image: "busybox:1" }"#,
            r#"ListTemplates ListTemplatesRequest"#,
            r#"SetDrain SetDrainRequest { draining: true, reason: "maintenance" }"#,
            r#"SetDrain SetDrainRequest { draining: false, reason: "" }"#,
            r#"Capacity CapacityRequest"#,
        ]
    );
}

#[tokio::test]
async fn validator_calls_reach_validator_access() {
    let node = Node::start().await;
    let client = &node.client;
    let challenge = client
        .request_validator_challenge(access::ChallengeRequest { validator_hotkey: "v".into(), ..Default::default() });
    assert_eq!(challenge.await.unwrap().challenge_id, "ch-fake");
    let provision = access::ProvisionRequest { validator_hotkey: "v".into(), ttl_seconds: 60, ..Default::default() };
    assert_eq!(client.provision_validator_access(provision).await.unwrap().validator_hotkey, "v");
    let revoked = client.revoke_validator_access(access::RevokeRequest { grant_id: "g-1".into() }).await.unwrap();
    assert_eq!(revoked.sessions_closed, 3);
    assert_eq!(client.list_validator_grants(access::ListGrantsRequest {}).await.unwrap().grants.len(), 1);
    let calls = node.fakes.access.take_calls();
    let methods: Vec<_> = calls.iter().map(|c| c.split(' ').next().unwrap()).collect();
    assert_eq!(methods, ["RequestChallenge", "Provision", "Revoke", "ListGrants"]);
    assert!(calls[1].contains("ttl_seconds: 60") && calls[2].contains("\"g-1\""), "{calls:?}");
}

/// Issue 17 item 11: `GET /health` answers from a probe cached for about a second, so a flood
/// of it costs the Docker engine one list, not one per request; `/livez` says the process is
/// up, `/readyz` whether the node serves.
#[tokio::test]
async fn health_is_cached_and_livez_readyz_answer() {
    let node = Node::start().await;
    let port = node.serve_health().await;
    node.fakes.runtime.take_calls();
    // As many at once as one address may send (`HttpLimits::DEFAULT`).
    let flood: Vec<_> = (0..16).map(|_| tokio::spawn(e2e::http_get(port, "/health"))).collect();
    for request in flood {
        let (code, body) = request.await.unwrap().unwrap();
        assert_eq!(code, 200, "{body}");
    }
    let lists = node.fakes.runtime.take_calls().iter().filter(|c| c.starts_with("List")).count();
    assert_eq!(lists, 1, "16 requests for /health listed containers {lists} times");
    assert_eq!(e2e::http_get(port, "/livez").await.unwrap().0, 200);
    let (code, body) = e2e::http_get(port, "/readyz").await.unwrap();
    assert_eq!((code, body.trim()), (200, "ready"));
}

/// Every other call is bounded by `request_timeout`: DEADLINE_EXCEEDED naming the key.
#[tokio::test]
async fn a_call_past_request_timeout_is_deadline_exceeded() {
    let options =
        Options { request_timeout: Some(Duration::from_millis(300)), checks_seconds: 2, ..Options::default() };
    let node = Node::with(options).await;
    let started = std::time::Instant::now();
    let err = node.client.system_profile().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("server.request_timeout (0.3s)"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

/// Issue 17 item 15: RunAttestation has its own deadline, not `request_timeout`, and its
/// temporary directory goes whether the run ends, fails or its caller goes away.
#[tokio::test]
async fn attestation_outlives_request_timeout_and_leaves_no_directory() {
    let options =
        Options { request_timeout: Some(Duration::from_millis(300)), attestor_seconds: 1, ..Options::default() };
    let node = Node::with(options).await;
    let report = node.client.run_attestation(api::AttestationRequest::default()).await.unwrap().report_json;
    assert!(report.contains("\"fake\":true"), "{report}");
    let dir = node.report_path().parent().unwrap().to_owned();
    assert!(!dir.exists(), "{} left behind", dir.display());
    // A caller that goes away half-way: the prover is stopped and the directory removed.
    let call = node.client.run_attestation(api::AttestationRequest::default());
    assert!(tokio::time::timeout(Duration::from_millis(500), call).await.is_err());
    let dir = node.report_path().parent().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while dir.exists() {
        assert!(std::time::Instant::now() < deadline, "{} left behind by a cancelled call", dir.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn attestation_runs_the_bundled_prover() {
    let node = Node::start().await;
    // No GPU in gpu-monitor's inventory: the CPU reference, with the defaults.
    let report = node.client.run_attestation(api::AttestationRequest::default()).await.unwrap().report_json;
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let argv = report["argv"].as_str().unwrap();
    for arg in ["--seed 0", "--matrix-dim 256", "--num-matrices 16", "--dataset-items 4096", "--backend cpu", "--json"]
    {
        assert!(argv.contains(arg), "{arg}: {argv}");
    }
    // A fresh random nonce for each call without one; the caller's when given.
    let nonce = |argv: &str| argv.split("--nonce ").nth(1).unwrap().split(' ').next().unwrap().to_owned();
    assert_eq!(nonce(argv).len(), 64);
    let again = node.client.run_attestation(api::AttestationRequest::default()).await.unwrap().report_json;
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_ne!(nonce(again["argv"].as_str().unwrap()), nonce(argv));
    let mine = api::AttestationRequest { nonce: vec![0xab; 32], ..Default::default() };
    let report = node.client.run_attestation(mine).await.unwrap().report_json;
    assert!(report.contains(&format!("--nonce {}", "ab".repeat(32))), "{report}");
    assert!(node.fakes.gpu.take_calls().iter().any(|c| c.starts_with("Inventory")));
    // Bad sizes are refused before anything runs.
    let bad = node.client.run_attestation(api::AttestationRequest { matrix_dim: 17, ..Default::default() });
    let err = bad.await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("matrix_dim: must be a multiple of 16"), "{err:?}");
    for (bad, field) in [
        (api::AttestationRequest { nonce: vec![0; 32], ..Default::default() }, "nonce: must not be all zero"),
        (api::AttestationRequest { nonce: vec![1; 31], ..Default::default() }, "nonce: must be 32 bytes"),
        (
            api::AttestationRequest { dataset_items: 48, ..Default::default() },
            "dataset_items: must be a multiple of 32",
        ),
    ] {
        let err = node.client.run_attestation(bad).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with(field), "{field}: {err:?}");
    }
}
