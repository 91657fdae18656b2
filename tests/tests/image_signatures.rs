//! `[docker.registry] verify_signatures` against a real registry (the distribution's
//! `docker-registry` on 127.0.0.1): images built here are pushed with `docker push`, signed in
//! the test the way cosign stores signatures (a `sha256-<hex>.sig` manifest whose
//! simple-signing layer carries the ECDSA P-256 signature), then created through
//! container-runtime. The same registry is allowed under two names, `127.0.0.1:<port>` in
//! enforce mode and `localhost:<port>` in warn mode; Docker Hub (unreachable here) in monitor.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use common::proto::runtime::v1 as pb;
use e2e::registry::{
    RegistryAuth, SigningKey, digest_as, digest_of, public_key_pem, push, push_as, sign, sign_as, start_registry,
};
use e2e::runtime::{docker, request, start_service};
use e2e::{BUSYBOX_IMAGE, TestConfig, busybox_image, metric_value as counter};
use tonic::Code;

fn create(image: &str) -> pb::CreateContainerRequest {
    pb::CreateContainerRequest { image: image.to_owned(), ..request("sleep 30") }
}

#[tokio::test]
async fn signed_images_run_pinned_and_unsigned_ones_follow_the_mode_of_their_registry() {
    if !busybox_image().await {
        return;
    }
    let Some(registry) = start_registry(None).await else {
        return;
    };
    let port = registry.port;
    let strict = format!("127.0.0.1:{port}");
    let lenient = format!("localhost:{port}");

    // A second image, so that a tag can be moved to another digest.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), format!("FROM {BUSYBOX_IMAGE}\nLABEL moved=yes\n")).unwrap();
    let other_image = "basilica-test/busybox-moved:latest";
    let (ok, out) = docker(&["build", "-q", "-t", other_image, dir.path().to_str().unwrap()]).await;
    assert!(ok, "docker build: {out}");

    let trusted = SigningKey::from_slice(&[7; 32]).unwrap();
    let stranger = SigningKey::from_slice(&[9; 32]).unwrap();
    for repo in ["test/signed", "test/unsigned", "test/stranger", "test/moved", "test/shared"] {
        push(BUSYBOX_IMAGE, &format!("{strict}/{repo}:v1")).await;
    }
    let digest = digest_of(&strict, "test/signed", "v1").await;
    for repo in ["test/signed", "test/moved", "test/shared"] {
        sign(&strict, repo, &digest, &trusted).await;
    }
    sign(&strict, "test/stranger", &digest, &stranger).await;
    // After signing, `moved:v1` is pushed again as another image.
    push(other_image, &format!("{strict}/test/moved:v1")).await;
    let moved = digest_of(&strict, "test/moved", "v1").await;
    assert_ne!(moved, digest);

    let config = TestConfig::new(&format!(
        r#"
[docker]
max_concurrent_containers = 10
[docker.registry]
allowed_registries = ["docker.io", "{strict}", "{lenient}"]
verify_signatures = true
cosign_public_keys = ["{{dir}}/cosign.pub"]
pull_timeout = "30s"
[docker.registry.registries."{lenient}"]
signature_mode = "warn"
[docker.registry.registries."docker.io"]
signature_mode = "monitor"
"#
    ));
    let pem = public_key_pem(&trusted);
    std::fs::write(config.dir.path().join("cosign.pub"), pem).unwrap();
    let (_service, mut client) = start_service(&config).await;

    // Signed: runs, pinned by the verified digest, pulled through the engine.
    let signed = client.create(create(&format!("{strict}/test/signed:v1"))).await.unwrap().into_inner();
    assert_eq!(signed.image, format!("{strict}/test/signed@{digest}"));
    assert!(signed.image_signature.starts_with(&format!("verified: {digest} signed by sha256:")), "{signed:?}");
    let started = client.start(pb::ContainerRef { id: signed.id.clone() }).await.unwrap().into_inner();
    assert_eq!(started.state, pb::ContainerState::Running as i32);
    let listed = client.get(pb::ContainerRef { id: signed.id.clone() }).await.unwrap().into_inner();
    assert_eq!(listed.image_signature, signed.image_signature);

    // Enforce: unsigned, signed by an unknown key, or a tag moved after signing: refused, and
    // nothing is created.
    for (repo, why) in [
        ("test/unsigned:v1", "no cosign signature in the registry"),
        ("test/stranger:v1", "no signature by a trusted key"),
        ("test/moved:v1", "no cosign signature in the registry"),
    ] {
        let err = client.create(create(&format!("{strict}/{repo}"))).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{repo}: {err:?}");
        assert!(err.message().starts_with("image: ") && err.message().contains(why), "{repo}: {}", err.message());
        assert!(err.message().contains("signature_mode = enforce"), "{}", err.message());
    }
    // The digest that was signed still runs when asked for by digest.
    let pinned = client.create(create(&format!("{strict}/test/moved@{digest}"))).await.unwrap().into_inner();
    assert_eq!(pinned.image, format!("{strict}/test/moved@{digest}"));
    let all = client.list(pb::ListContainersRequest { all: true, owner: String::new() }).await.unwrap();
    assert_eq!(all.into_inner().containers.len(), 2);

    // Warn: the unsigned image runs, pinned, and the caller is told why.
    let warned = client.create(create(&format!("{lenient}/test/unsigned:v1"))).await.unwrap().into_inner();
    assert_eq!(warned.image, format!("{lenient}/test/unsigned@{digest}"));
    assert!(warned.image_signature.starts_with("unverified (warn): no cosign signature"), "{warned:?}");
    let warned = client.create(create(&format!("{lenient}/test/stranger:v1"))).await.unwrap().into_inner();
    assert!(warned.image_signature.starts_with("unverified (warn): no signature by a trusted key"), "{warned:?}");

    // Monitor: Docker Hub cannot be reached from here; the local image runs by its tag.
    let monitored = client.create(create(BUSYBOX_IMAGE)).await.unwrap().into_inner();
    assert_eq!(monitored.image, "docker.io/basilica-test/busybox:latest");
    assert!(monitored.image_signature.starts_with("unverified (monitor): registry lookup failed"), "{monitored:?}");

    // Concurrent creates of one image not yet on the engine share one verification and pull.
    let (_, before) = e2e::http_get(config.ports.metrics[1], "/metrics").await.unwrap();
    let creates = (0..4).map(|_| {
        let mut client = client.clone();
        let image = format!("{strict}/test/shared:v1");
        tokio::spawn(async move { client.create(create(&image)).await })
    });
    for created in futures_join(creates).await {
        assert_eq!(created.unwrap().into_inner().image, format!("{strict}/test/shared@{digest}"));
    }
    let (_, metrics) = e2e::http_get(config.ports.metrics[1], "/metrics").await.unwrap();
    let pulls = "executor_container_runtime_image_pulls_total{result=\"ok\"}";
    assert_eq!(counter(&metrics, pulls) - counter(&before, pulls), 1.0, "{metrics}");
    let verified = format!(
        "executor_container_runtime_image_verifications_total{{registry=\"{strict}\",mode=\"enforce\",result=\"verified\",decision=\"allowed\"}}"
    );
    assert_eq!(counter(&metrics, &verified), 6.0, "{metrics}");
    let refused = format!(
        "executor_container_runtime_image_verifications_total{{registry=\"{strict}\",mode=\"enforce\",result=\"unsigned\",decision=\"refused\"}}"
    );
    assert_eq!(counter(&metrics, &refused), 2.0, "{metrics}");

    // Every decision is in the audit log, in order.
    let audit = std::fs::read_to_string(config.dir.path().join("data/audit/container-runtime.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let decisions: Vec<(&str, &str)> =
        events.iter().map(|e| (e["result"].as_str().unwrap(), e["decision"].as_str().unwrap())).collect();
    assert_eq!(
        &decisions[..7],
        &[
            ("verified", "allowed"),
            ("unsigned", "refused"),
            ("bad_signature", "refused"),
            ("unsigned", "refused"),
            ("verified", "allowed"),
            ("unsigned", "allowed"),
            ("bad_signature", "allowed"),
        ]
    );
    assert_eq!(events.len(), 12, "{audit}");
    assert!(events.iter().all(|e| e["event"] == "image_verification" && e["owner"] == e2e::ALICE), "{audit}");
    assert_eq!(events[1]["image"], format!("{strict}/test/unsigned:v1"));
    assert_eq!(events[1]["digest"], digest);
    assert_eq!(events[3]["digest"], moved);

    e2e::runtime::remove_all(&mut client).await;
    // Pulled by digest, the registry's names are repo digests of the local image.
    let (_, names) = docker(&["inspect", "--format", "{{join .RepoDigests \"\\n\"}}", BUSYBOX_IMAGE]).await;
    for name in names.lines().filter(|n| n.starts_with(&strict) || n.starts_with(&lenient)) {
        assert!(docker(&["rmi", name]).await.0, "docker rmi {name}");
    }
    docker(&["rmi", other_image]).await;
}

#[tokio::test]
async fn logins_come_from_the_config_or_a_docker_config_file() {
    if !busybox_image().await {
        return;
    }
    let Some(registry) = start_registry(Some(("ci", "s3cret"))).await else {
        return;
    };
    let host = format!("127.0.0.1:{}", registry.port);
    let image = format!("{host}/test/private:v1");

    // `docker login` into a config directory of the test's own (never root's).
    let logins = tempfile::tempdir().unwrap();
    let dir = logins.path().display().to_string();
    let (ok, out) = docker(&["--config", &dir, "login", "-u", "ci", "-p", "s3cret", &host]).await;
    assert!(ok, "docker login: {out}");
    push_as(BUSYBOX_IMAGE, &image, Some(logins.path())).await;
    let auth = RegistryAuth::Basic("ci".into(), "s3cret".into());
    let digest = digest_as(&host, "test/private", "v1", &auth).await;
    let key = SigningKey::from_slice(&[7; 32]).unwrap();
    sign_as(&host, "test/private", &digest, &key, &auth).await;

    let with = |login: &str| {
        let config = TestConfig::new(&format!(
            r#"
[docker.registry]
allowed_registries = ["docker.io", "{host}"]
verify_signatures = true
cosign_public_keys = ["{{dir}}/cosign.pub"]
{login}
"#
        ));
        let pem = public_key_pem(&key);
        std::fs::write(config.dir.path().join("cosign.pub"), pem).unwrap();
        std::fs::write(config.dir.path().join("password"), "s3cret\n").unwrap();
        config
    };
    let pinned = format!("{host}/test/private@{digest}");
    let from_file = format!("docker_config_file = \"{dir}/config.json\"");
    let from_config =
        format!("[docker.registry.registries.\"{host}\"]\nusername = \"ci\"\npassword_file = \"{{dir}}/password\"");
    for login in [from_config.as_str(), from_file.as_str()] {
        let config = with(login);
        let (_service, mut client) = start_service(&config).await;
        // The pull too needs the login: the engine must not have the image yet.
        docker(&["rmi", &pinned]).await;
        let created = client.create(create(&image)).await.unwrap().into_inner();
        assert_eq!(created.image, pinned, "{login}");
        assert!(created.image_signature.starts_with("verified: "), "{created:?}");
        let (_, metrics) = e2e::http_get(config.ports.metrics[1], "/metrics").await.unwrap();
        assert!(metrics.contains("executor_container_runtime_image_pulls_total{result=\"ok\"} 1"), "{metrics}");
        e2e::runtime::remove_all(&mut client).await;
    }

    // Without a login the registry says no, and enforce refuses.
    let config = with("");
    let (_service, mut client) = start_service(&config).await;
    let err = client.create(create(&image)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("registry lookup failed") && err.message().contains("uthorized"),
        "{}",
        err.message()
    );
    docker(&["rmi", &pinned]).await;
}

/// Issue 18 item 3: the registry host is case-insensitive. An image named `LOCALHOST:<port>/…`
/// passed the allow-list (compared lower-cased) but missed the per-registry signature mode
/// (looked up as typed), so an unsigned image ran under the global `monitor`.
#[tokio::test]
async fn an_upper_case_registry_host_gets_the_mode_and_keys_of_its_registry() {
    if !busybox_image().await {
        return;
    }
    let Some(registry) = start_registry(None).await else {
        return;
    };
    let port = registry.port;
    let host = format!("localhost:{port}");
    push(BUSYBOX_IMAGE, &format!("{host}/test/unsigned:v1")).await;
    push(BUSYBOX_IMAGE, &format!("{host}/test/signed:v1")).await;
    let digest = digest_of(&host, "test/signed", "v1").await;
    let trusted = SigningKey::from_slice(&[7; 32]).unwrap();
    sign(&host, "test/signed", &digest, &trusted).await;

    // The global mode lets anything run and trusts another key; the registry's own mode and
    // key do not.
    let config = TestConfig::new(&format!(
        r#"
[docker.registry]
allowed_registries = ["docker.io", "{host}"]
verify_signatures = true
signature_mode = "monitor"
cosign_public_keys = ["{{dir}}/other.pub"]
pull_timeout = "30s"
[docker.registry.registries."{host}"]
signature_mode = "enforce"
cosign_public_keys = ["{{dir}}/cosign.pub"]
"#
    ));
    std::fs::write(config.dir.path().join("cosign.pub"), public_key_pem(&trusted)).unwrap();
    let other = SigningKey::from_slice(&[9; 32]).unwrap();
    std::fs::write(config.dir.path().join("other.pub"), public_key_pem(&other)).unwrap();
    let (_service, mut client) = start_service(&config).await;

    for name in [format!("LOCALHOST:{port}"), format!("LocalHost:{port}"), host.clone()] {
        let err = client.create(create(&format!("{name}/test/unsigned:v1"))).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{name}: {err:?}");
        assert!(
            err.message().contains("no cosign signature in the registry")
                && err.message().contains("signature_mode = enforce"),
            "{name}: {}",
            err.message()
        );
        // The registry's key, not the global one, verifies its images whatever the case.
        let signed = client.create(create(&format!("{name}/test/signed:v1"))).await.unwrap().into_inner();
        assert_eq!(signed.image, format!("{host}/test/signed@{digest}"), "{name}");
        assert!(signed.image_signature.starts_with("verified: "), "{name}: {signed:?}");
    }
    let all = client.list(pb::ListContainersRequest { all: true, owner: String::new() }).await.unwrap();
    assert_eq!(all.into_inner().containers.len(), 3);

    e2e::runtime::remove_all(&mut client).await;
    docker(&["rmi", &format!("{host}/test/signed@{digest}")]).await;
}

/// Peak resident memory of process `pid` (`VmHWM`), in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap();
    kib.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() << 10
}

/// Issue 18 item 5: a registry that streams more than it declares (or more than a manifest or
/// payload may be) is refused with what it did, and container-runtime stops reading: its memory
/// does not grow with the stream. Before, every manifest and payload was read whole.
#[tokio::test]
async fn a_registry_that_sends_more_than_it_declares_is_refused_and_not_buffered() {
    use e2e::hostile_registry::{DECLARED_PAYLOAD, FLOOD, HostileRegistry};
    if !busybox_image().await {
        return;
    }
    let registry = HostileRegistry::start().await;
    let host = registry.host();
    let key = SigningKey::from_slice(&[7; 32]).unwrap();
    let config = TestConfig::new(&format!(
        r#"
[docker.registry]
allowed_registries = ["docker.io", "{host}"]
verify_signatures = true
cosign_public_keys = ["{{dir}}/cosign.pub"]
pull_timeout = "30s"
"#
    ));
    std::fs::write(config.dir.path().join("cosign.pub"), public_key_pem(&key)).unwrap();
    let (service, mut client) = start_service(&config).await;
    let pid = service.id().unwrap();
    let before = peak_memory(pid);

    let digest = HostileRegistry::image_digest();
    let payload = HostileRegistry::payload_digest();
    let sig = format!("{host}/flood/signature:{}", digest.replacen(':', "-", 1) + ".sig");
    let manifest_cap = format!("the {} bytes a manifest may have", 4 << 20);
    let payload_cap = format!("the {DECLARED_PAYLOAD} bytes the signature manifest declares for it");
    for (repo, expected) in [
        ("flood/manifest", format!("manifest `{host}/flood/manifest:v1`: the registry sent more than {manifest_cap}")),
        (
            "flood/announced",
            format!(
                "manifest `{host}/flood/announced:v1`: the registry announced {} bytes (Content-Length), more than {manifest_cap}",
                1u64 << 30
            ),
        ),
        ("flood/signature", format!("manifest `{sig}`: the registry sent more than {manifest_cap}")),
        ("flood/payload", format!("payload {payload}: the registry sent more than {payload_cap}")),
        (
            "flood/payload-announced",
            format!(
                "payload {payload}: the registry announced {} bytes (Content-Length), more than {payload_cap}",
                10u64 << 20
            ),
        ),
    ] {
        let sent = registry.sent();
        let err = client.create(create(&format!("{host}/{repo}:v1"))).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{repo}: {err:?}");
        assert!(err.message().contains(&expected), "{repo}: expected `{expected}` in: {}", err.message());
        // The client hung up: what the registry got out is the cap and the socket buffers.
        let flooded = registry.sent() - sent;
        eprintln!("{repo}: {} (the registry got {flooded} bytes out)", err.message());
        assert!(flooded < FLOOD / 4, "{repo}: the registry sent {flooded} bytes before the client stopped reading");
    }
    let grown = peak_memory(pid).saturating_sub(before);
    eprintln!("container-runtime's peak memory grew by {} KiB", grown >> 10);
    assert!(grown < 48 << 20, "container-runtime's peak memory grew by {} MiB", grown >> 20);
    let all = client.list(pb::ListContainersRequest { all: true, owner: String::new() }).await.unwrap();
    assert!(all.into_inner().containers.is_empty());
}

/// Awaits every task, in order.
async fn futures_join<T: Send + 'static>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        out.push(task.await.unwrap());
    }
    out
}
