//! `cargo xtask bench-tenant-ssh` (`make bench-tenant-ssh`): a renter's way into their
//! container beside Docker's own (issue 19's figures). A real node (release build, launcher and
//! every service) with a busybox container holding the renter's key and a validator grant:
//! - connect + authenticate + exec `true` inside the container (`ssh -p <tenant port>
//!   <id>@127.0.0.1 true`), against `docker exec <id> true` and against the validator path
//!   (`ssh -p <validator port> validator@127.0.0.1 true`, not strict), interleaved;
//! - `scp` of a 256 MiB file into the container (SFTP, as OpenSSH 9 does) with AES-GCM (what a
//!   stock client takes under the default `[tenant_access] ciphers`), AES-CTR and
//!   ChaCha20-Poly1305, against `docker cp` of the same file, interleaved (into the writable
//!   layer: `/tmp` is a tmpfs, which `docker cp` does not see). Each copy starts after a `sync`
//!   (not timed), so that none pays for writing back what the one before it left in the page
//!   cache.

use std::time::{Duration, Instant};

use common::hotkey::HotkeyPair;
use common::process::ProcessSpec;
use common::proto::access::v1 as access;
use common::proto::runtime::v1 as pb;
use e2e::{Node, TestConfig};
use executor_api::client::ExecutorClient;

use crate::report::{Value, figure};
use crate::{build_release, median, ssh_true, workspace_root};

const RUNS: usize = 30;
const COPIES: usize = 5;
const COPY_BYTES: usize = 256 << 20;

async fn timed(spec: ProcessSpec) -> anyhow::Result<f64> {
    let start = Instant::now();
    let out = spec.output(Duration::from_secs(300), 1 << 16).await?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

pub(crate) async fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    build_release(&root).await?;
    anyhow::ensure!(e2e::busybox_image().await, "needs the busybox test image (docker)");
    // Every cipher offered, so that each can be measured; under the default (AES-GCM only) a
    // stock OpenSSH client takes aes128-gcm (e2e::tenant_ssh checks it).
    let config = TestConfig::with_tenant_access(
        "ssh_requests_per_minute = 100000\nciphers = [\"aes256-gcm@openssh.com\", \"aes128-gcm@openssh.com\", \"aes128-ctr\", \"chacha20-poly1305@openssh.com\"]",
        "[validator.access_config.rate_limits]\nssh_requests_per_minute = 100000\n[logging]\nlevel = \"warn\"\n",
    );
    std::fs::write(
        &config.path,
        std::fs::read_to_string(&config.path)?
            .replace("[validator]\n", "[validator]\nstrict_ssh_restrictions = false\n"),
    )?;
    let node = Node::start_from(&root.join("target/release"), config).await;
    let endpoint = format!("http://127.0.0.1:{}", node.config.ports.grpc);
    let client = ExecutorClient::connect(&endpoint, None, HotkeyPair::parse(e2e::ALICE_SEED)?).await?;
    let dir = node.config.dir.path();
    let key = dir.join("id_ed25519");
    let public = e2e::keys::ssh_keygen(&key, "bench").await;

    let created = client
        .create_container(pb::CreateContainerRequest {
            image: e2e::BUSYBOX_IMAGE.into(),
            command: vec!["sleep".into(), "3600".into()],
            ssh_public_keys: vec![public.clone()],
            ..Default::default()
        })
        .await?;
    let id = created.id.clone();
    client.start_container(pb::ContainerRef { id: id.clone() }).await?;

    // The validator path: a grant for the same key.
    let pair = e2e::keys::sr25519(42);
    let hotkey = e2e::keys::hotkey_of(&pair);
    let challenge = client
        .request_validator_challenge(access::ChallengeRequest {
            validator_hotkey: hotkey.clone(),
            ssh_public_key: public.clone(),
            ttl_seconds: 3600,
        })
        .await?;
    client
        .provision_validator_access(access::ProvisionRequest {
            validator_hotkey: hotkey,
            ssh_public_key: public,
            ttl_seconds: 3600,
            challenge_id: challenge.challenge_id,
            signature: e2e::keys::sign(&pair, &challenge.message),
        })
        .await?;

    let (mut tenant, mut docker, mut validator) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        tenant.push(ssh_true(node.config.ports.tenant_ssh, &key, &id).await?);
        docker.push(timed(ProcessSpec::new("docker").args(["exec", &id, "true"])).await?);
        validator.push(ssh_true(node.config.ports.ssh, &key, "validator").await?);
    }
    let (t, d, v) = (median(&mut tenant), median(&mut docker), median(&mut validator));
    println!("connect + authenticate + exec `true` inside the container, median of {RUNS}, interleaved:");
    println!("  renter ssh (russh, key lookup, container-runtime Attach): {t:.1} ms");
    println!("  docker exec <id> true:                                    {d:.1} ms");
    println!("  validator ssh (setpriv + sh -c true on the host):          {v:.1} ms");
    println!("ratio to docker exec: {:.2}; to the validator path: {:.2}", t / d, t / v);
    let measure = format!("renter ssh `true` into a container (connect, authenticate, exec), median of {RUNS}");
    figure(&measure, Value(t, "ms"), Some(("`docker exec <id> true`", Value(d, "ms"))), "")?;
    figure(&measure, Value(t, "ms"), Some(("validator ssh on the host", Value(v, "ms"))), "")?;

    let file = dir.join("payload");
    let data: Vec<u8> = (0..COPY_BYTES as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::write(&file, &data)?;
    drop(data);
    let scp = |target: &str, cipher: Option<&str>| {
        ProcessSpec::new("scp")
            .args(cipher.map(|c| ["-c", c]).into_iter().flatten())
            .arg("-i")
            .arg(&key)
            .args(["-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "BatchMode=yes", "-P", &node.config.ports.tenant_ssh.to_string()])
            .arg(&file)
            .arg(format!("{id}@127.0.0.1:{target}"))
    };
    // AES-GCM (the default's), then what a client gets when the config adds AES-CTR or
    // ChaCha20-Poly1305, against `docker cp`.
    let ciphers = ["aes128-gcm@openssh.com", "aes128-ctr", "chacha20-poly1305@openssh.com"];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); ciphers.len() + 1];
    let sync = || async { ProcessSpec::new("sync").output(Duration::from_secs(120), 1 << 10).await };
    for _ in 0..COPIES {
        for (i, cipher) in ciphers.iter().enumerate() {
            sync().await?;
            times[i].push(timed(scp(&format!("/payload-{i}"), Some(cipher))).await?);
        }
        sync().await?;
        let cp = ProcessSpec::new("docker").arg("cp").arg(&file).arg(format!("{id}:/payload-cp"));
        times[ciphers.len()].push(timed(cp).await?);
    }
    let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    let cp = medians[ciphers.len()];
    let mib = (COPY_BYTES >> 20) as f64;
    println!("{mib} MiB into the container, median of {COPIES}, interleaved:");
    for (cipher, ms) in ciphers.iter().zip(&medians) {
        println!("  scp -c {cipher:30} {ms:5.0} ms ({:3.0} MiB/s), {:.2} x docker cp", mib / ms * 1e3, ms / cp);
    }
    println!("  docker cp:                         {cp:5.0} ms ({:3.0} MiB/s)", mib / cp * 1e3);
    figure(
        &format!("scp of {mib} MiB into a container, default cipher ({}), median of {COPIES}", ciphers[0]),
        Value(medians[0], "ms"),
        Some(("`docker cp`", Value(cp, "ms"))),
        "≤ 1.5",
    )?;
    check_copy(&id).await?;
    client.remove_container(pb::RemoveContainerRequest { id, force: true }).await?;
    drop(node);
    Ok(())
}

/// Both copies arrived whole.
async fn check_copy(id: &str) -> anyhow::Result<()> {
    let out = ProcessSpec::new("docker")
        .args([
            "exec",
            id,
            "sh",
            "-c",
            "for f in /payload-0 /payload-1 /payload-2; do cmp $f /payload-cp || exit 1; done; echo same",
        ])
        .output(Duration::from_secs(60), 1 << 12)
        .await?;
    anyhow::ensure!(String::from_utf8_lossy(&out.stdout).trim() == "same", "the copies differ");
    Ok(())
}
