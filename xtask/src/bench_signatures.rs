//! `cargo xtask bench-signatures`: what `verify_signatures` adds to a create. Two
//! container-runtime services side by side, one verifying (enforce, the image signed in a local
//! `docker-registry`), one not (the same image by its local tag); both without networks, so
//! only the image admission differs. The image is on the engine for both: this is the cost of
//! the registry round trips and the signature check, not of a pull.

use std::time::{Duration, Instant};

use common::proto::runtime::v1 as pb;
use e2e::TestConfig;
use e2e::registry::{SigningKey, digest_of, public_key_pem, push, sign, start_registry};

use crate::report::{Value, figure};
use crate::{median, start_runtime, workspace_root};

pub(crate) async fn bench_signatures() -> anyhow::Result<()> {
    let root = workspace_root();
    crate::build_release(&root).await?;
    anyhow::ensure!(e2e::busybox_image().await, "needs Docker and busybox-static");
    let registry = start_registry(None).await.ok_or_else(|| anyhow::anyhow!("needs docker-registry"))?;
    let host = format!("127.0.0.1:{}", registry.port);
    let signed = format!("{host}/bench/signed:v1");
    push(e2e::BUSYBOX_IMAGE, &signed).await;
    let digest = digest_of(&host, "bench/signed", "v1").await;
    let key = SigningKey::from_slice(&[7; 32])?;
    sign(&host, "bench/signed", &digest, &key).await;

    let base = "\n[logging]\nlevel = \"warn\"\n[docker]\nmax_concurrent_containers = 100\n[docker.network_config]\nenable_isolation = false\n";
    let plain = TestConfig::new(base);
    let verifying = TestConfig::new(&format!(
        "{base}[docker.registry]\nallowed_registries = [\"docker.io\", \"{host}\"]\nverify_signatures = true\ncosign_public_keys = [\"{{dir}}/cosign.pub\"]\n[docker.registry.registries.\"docker.io\"]\nsignature_mode = \"monitor\"\n"
    ));
    std::fs::write(verifying.dir.path().join("cosign.pub"), public_key_pem(&key))?;
    let (_plain_child, mut plain_client) = start_runtime(&root, &plain).await?;
    let (_verifying_child, mut verifying_client) = start_runtime(&root, &verifying).await?;

    let runs = 30;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    // The first verified create pulls (by digest); it is not counted.
    create(&mut verifying_client, &signed).await?;
    for _ in 0..runs {
        without.push(create(&mut plain_client, e2e::BUSYBOX_IMAGE).await?);
        with.push(create(&mut verifying_client, &signed).await?);
    }
    let (a, b) = (median(&mut without), median(&mut with));
    println!("create RPC (no network, image on the engine), median of {runs}, interleaved:");
    println!("  verify_signatures = false, local tag: {a:.1} ms");
    println!(
        "  verify_signatures = true (enforce), signed image in a loopback registry: {b:.1} ms = {:.2} x, +{:.1} ms",
        b / a,
        b - a
    );
    figure(
        &format!("create RPC of a signed image, verify_signatures on, median of {runs}"),
        Value(b, "ms"),
        Some(("a create with verify_signatures off", Value(a, "ms"))),
        "",
    )?;
    let pinned = format!("{host}/bench/signed@{digest}");
    e2e::runtime::docker(&["rmi", &pinned]).await;
    Ok(())
}

/// Milliseconds for one create RPC; the container is removed afterwards.
async fn create(client: &mut crate::RuntimeClient, image: &str) -> anyhow::Result<f64> {
    let request = pb::CreateContainerRequest {
        image: image.to_owned(),
        command: vec!["sleep".into(), "60".into()],
        ..Default::default()
    };
    let start = Instant::now();
    let c = client.create(request).await?.into_inner();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    client.remove(pb::RemoveContainerRequest { id: c.id, force: true }).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(ms)
}
