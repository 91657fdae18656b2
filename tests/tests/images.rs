//! Issue 21 item 4: images ready before the renter. `PullImage` streams the engine's progress
//! through the allow-list and the signature policy of a create; `ListImages` shows the cache
//! (the images the executor pulled) and the prefetch list; `RemoveImage` refuses an image in
//! use, a prefetch-listed one and the operator's own. `[docker.images] prefetch` pulls from a
//! real `docker-registry` while idle and yields to a create; the collector removes unused
//! images past the high-water mark and keeps used and prefetch-listed ones.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::time::{Duration, Instant};

use common::proto::runtime::v1 as pb;
use e2e::registry::{SigningKey, digest_of, public_key_pem, push, sign, start_registry};
use e2e::runtime::{Client, docker, remove_all, request, start_service};
use e2e::{BUSYBOX_IMAGE, TestConfig, busybox_image, derived_image};
use tokio_stream::StreamExt;
use tonic::Code;

fn create(image: &str) -> pb::CreateContainerRequest {
    pb::CreateContainerRequest { image: image.to_owned(), ..request("sleep 600") }
}

/// PullImage's steps, or the status it ended with.
async fn pull(client: &mut Client, image: &str) -> Result<Vec<pb::PullProgress>, tonic::Status> {
    let request = pb::PullImageRequest { image: image.to_owned(), owner: "test".to_owned() };
    let mut stream = client.pull_image(request).await?.into_inner();
    let mut steps = Vec::new();
    while let Some(step) = stream.next().await {
        steps.push(step?);
    }
    Ok(steps)
}

async fn list(client: &mut Client) -> pb::ListImagesResponse {
    client.list_images(pb::ListImagesRequest {}).await.unwrap().into_inner()
}

async fn remove(client: &mut Client, image: &str) -> Result<(), tonic::Status> {
    client.remove_image(pb::RemoveImageRequest { image: image.to_owned() }).await.map(|_| ())
}

async fn engine_has(image: &str) -> bool {
    docker(&["image", "inspect", image]).await.0
}

fn refused(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, fragment: &str) {
    let e = result.unwrap_err();
    assert_eq!(e.code(), code, "{e:?}");
    assert!(e.message().contains(fragment), "{:?} does not say {fragment:?}", e.message());
}

/// The value of the metric line that starts with `prefix`.
async fn metric(port: u16, prefix: &str) -> f64 {
    let (_, text) = e2e::http_get(port, "/metrics").await.unwrap();
    e2e::metric_value(&text, prefix)
}

#[tokio::test]
async fn pulled_images_are_listed_used_and_removed_through_the_signature_policy() {
    if !busybox_image().await {
        return;
    }
    let Some(registry) = start_registry(None).await else {
        return;
    };
    let host = format!("127.0.0.1:{}", registry.port);
    let key = SigningKey::from_slice(&[7; 32]).unwrap();
    push(BUSYBOX_IMAGE, &format!("{host}/test/signed:v1")).await;
    push(BUSYBOX_IMAGE, &format!("{host}/test/unsigned:v1")).await;
    let digest = digest_of(&host, "test/signed", "v1").await;
    sign(&host, "test/signed", &digest, &key).await;
    let config = TestConfig::new(&format!(
        r#"
[docker.registry]
allowed_registries = ["docker.io", "{host}"]
verify_signatures = true
cosign_public_keys = ["{{dir}}/cosign.pub"]
pull_timeout = "30s"
[docker.registry.registries."docker.io"]
signature_mode = "monitor"
"#
    ));
    std::fs::write(config.dir.path().join("cosign.pub"), public_key_pem(&key)).unwrap();
    let (mut service, mut client) = start_service(&config).await;

    // Bad input and the policy, refused before anything is pulled.
    refused(pull(&mut client, "").await, Code::InvalidArgument, "image: image reference is empty");
    refused(pull(&mut client, "registry.example/x:1").await, Code::FailedPrecondition, "registry.example");
    refused(
        pull(&mut client, &format!("{host}/test/unsigned:v1")).await,
        Code::FailedPrecondition,
        "no cosign signature",
    );
    assert!(list(&mut client).await.images.is_empty());

    // Signed: pulled pinned by the verified digest, the engine's steps first.
    let signed = format!("{host}/test/signed:v1");
    let steps = pull(&mut client, &signed).await.unwrap();
    assert!(steps.len() >= 2, "{steps:?}");
    let (last, progress) = steps.split_last().unwrap();
    assert!(progress.iter().all(|s| s.image.is_none() && !s.status.is_empty()), "{progress:?}");
    let image = last.image.clone().unwrap();
    assert_eq!(image.reference, signed);
    assert_eq!(image.pulled, format!("{host}/test/signed@{digest}"));
    assert_eq!(image.state, "ready");
    assert!(image.signature.starts_with(&format!("verified: {digest}")), "{image:?}");
    assert!(image.size_bytes > 0 && image.id.starts_with("sha256:") && image.pulled_at > 0, "{image:?}");
    assert!(engine_has(&image.pulled).await);
    let listed = list(&mut client).await;
    assert_eq!(listed.images, std::slice::from_ref(&image));
    assert_eq!(listed.cache_bytes, image.size_bytes);
    assert_eq!(listed.high_water_bytes, 200 << 30);
    let gauge = metric(config.ports.metrics[1], "executor_container_runtime_image_cache_bytes").await;
    assert_eq!(gauge, image.size_bytes as f64);

    // An image the engine had before (the operator's own) is never the cache's.
    let own = pull(&mut client, BUSYBOX_IMAGE).await.unwrap();
    assert_eq!(own.last().unwrap().image.as_ref().unwrap().state, "not cached");
    refused(remove(&mut client, BUSYBOX_IMAGE).await, Code::NotFound, "not in the executor's image cache");
    assert!(engine_has(BUSYBOX_IMAGE).await);

    // A container has it: listed with it, not removable; the cache survives a restart.
    let container = client.create(create(&signed)).await.unwrap().into_inner();
    service.kill().await.unwrap();
    let (mut service, mut client) = start_service(&config).await;
    let used = list(&mut client).await.images;
    assert_eq!(used.len(), 1, "{used:?}");
    assert_eq!(used[0].containers, std::slice::from_ref(&container.id));
    assert!(used[0].last_used_at >= image.pulled_at);
    refused(remove(&mut client, &signed).await, Code::FailedPrecondition, &container.id);

    remove_all(&mut client).await;
    remove(&mut client, &signed).await.unwrap();
    assert!(!engine_has(&image.pulled).await, "the engine still has {}", image.pulled);
    assert!(list(&mut client).await.images.is_empty());
    refused(remove(&mut client, &signed).await, Code::NotFound, "not in the executor's image cache");
    service.kill().await.unwrap();
}

#[tokio::test]
async fn prefetch_yields_to_a_create_and_the_collector_keeps_used_and_listed_images() {
    if !busybox_image().await {
        return;
    }
    let Some(registry) = start_registry(None).await else {
        return;
    };
    let host = format!("127.0.0.1:{}", registry.port);
    // A big image whose layers the engine does not have once it is pushed, so that its
    // prefetch takes long enough for a create to arrive meanwhile.
    let big_local = format!("basilica-test/prefetch-big-{}:latest", registry.port);
    derived_image(&big_local, "RUN dd if=/dev/urandom of=/big bs=1M count=160").await;
    let big = format!("{host}/test/big:v1");
    push(&big_local, &big).await;
    assert!(docker(&["rmi", &big_local]).await.0);
    for repo in ["small", "other", "listed"] {
        push(BUSYBOX_IMAGE, &format!("{host}/test/{repo}:v1")).await;
    }
    let (small, other, listed) =
        (format!("{host}/test/small:v1"), format!("{host}/test/other:v1"), format!("{host}/test/listed:v1"));
    let config = TestConfig::new(&format!(
        r#"
[docker]
reap_interval = "300ms"
[docker.registry]
allowed_registries = ["docker.io", "{host}"]
pull_timeout = "120s"
[docker.images]
prefetch = ["{big}", "{listed}"]
gc_high_water_bytes = 1
"#
    ));
    let (mut service, mut client) = start_service(&config).await;

    // The prefetch is under way; a create arrives and is served first.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let images = list(&mut client).await.images;
        let state = images.iter().find(|i| i.reference == big).map(|i| i.state.clone()).unwrap_or_default();
        if state == "pulling" {
            break;
        }
        assert!(state == "waiting" && Instant::now() < deadline, "prefetch of {big}: {images:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let container = client.create(create(&small)).await.unwrap().into_inner();
    let after = list(&mut client).await.images;
    let state = &after.iter().find(|i| i.reference == big).unwrap().state;
    assert!(state == "pulling" || state == "waiting", "the create was not served first: {state} {after:?}");
    let preempted = metric(config.ports.metrics[1], "executor_container_runtime_prefetch_preempted_total").await;
    assert!(preempted >= 1.0, "no prefetch was broken off");

    // Then the prefetch goes on to the end, from the registry.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let images = list(&mut client).await.images;
        let ready = |r: &str| images.iter().any(|i| i.reference == r && i.state == "ready" && i.prefetch);
        if ready(&big) && ready(&listed) {
            break;
        }
        assert!(Instant::now() < deadline, "prefetch did not finish: {images:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(engine_has(&big).await);

    // The collector (high-water mark 1 byte): an unused image goes, a used one and the
    // prefetch-listed ones stay.
    let pulled = pull(&mut client, &other).await.unwrap();
    assert_eq!(pulled.last().unwrap().image.as_ref().unwrap().state, "ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine_has(&other).await {
        assert!(Instant::now() < deadline, "the collector left {other}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kept: Vec<String> = list(&mut client).await.images.into_iter().map(|i| i.reference).collect();
    assert_eq!(kept.len(), 3, "{kept:?}");
    for image in [&small, &big, &listed] {
        assert!(kept.contains(image) && engine_has(image).await, "{image} went: {kept:?}");
    }
    let removed =
        metric(config.ports.metrics[1], "executor_container_runtime_images_removed_total{reason=\"gc\"}").await;
    assert!(removed >= 1.0);
    refused(remove(&mut client, &listed).await, Code::FailedPrecondition, "docker.images.prefetch");

    // Once its container is gone the used image goes too.
    client.remove(pb::RemoveContainerRequest { id: container.id, force: true }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine_has(&small).await {
        assert!(Instant::now() < deadline, "the collector left {small}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    remove_all(&mut client).await;
    service.kill().await.unwrap();
    let _ = docker(&["rmi", &big, &listed]).await;
}
