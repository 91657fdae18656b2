//! Hardened containers on the real Docker engine: the limits and restrictions are read back
//! from inside the container (cgroup files, /proc/self/status), not from what we asked.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::collections::BTreeMap;
use std::time::Duration;

use bollard::query_parameters::{LogsOptions, WaitContainerOptions};
use common::config::{DockerConfig, ResourceLimits};
use container_runtime::engine::Engine;
use container_runtime::reference::{DOCKER_HUB, ImageRef};
use container_runtime::spec::{ContainerSpec, Resources};
use tokio_stream::StreamExt;

const IMAGE: &str = e2e::BUSYBOX_IMAGE;

fn spec(id: &str, command: &str) -> ContainerSpec {
    ContainerSpec {
        id: id.to_owned(),
        image: ImageRef::parse(IMAGE, DOCKER_HUB).unwrap(),
        command: vec!["sh".into(), "-c".into(), command.into()],
        args: Vec::new(),
        env: BTreeMap::new(),
        labels: BTreeMap::from([("test".into(), "engine".into())]),
        ports: Vec::new(),
        mounts: Vec::new(),
        resources: Resources { memory_bytes: 64 << 20, cpu_cores: 0.5, pids: 100, ..Resources::default() },
        gpu_uuids: Vec::new(),
        ttl: None,
        owner: "test".into(),
        created_at: 0,
        dns: Vec::new(),
        network: None,
        publish_ip: None,
        // What a create resolves with the default config on this host (whose hard rlimits may
        // be all a container can get).
        workload: container_runtime::workload::Workload::resolve(
            &Default::default(),
            64 << 20,
            &Default::default(),
            &container_runtime::workload::HostLimits::probe(),
            &[],
        )
        .unwrap(),
        volumes: Vec::new(),
    }
}

/// Runs `spec` to completion and returns its output.
async fn run_to_end(engine: &Engine, spec: &ContainerSpec) -> String {
    let docker = engine.docker();
    engine.create(spec, None).await.unwrap();
    engine.start(&spec.id).await.unwrap();
    let mut wait = docker.wait_container(&spec.id, None::<WaitContainerOptions>);
    while let Some(r) = tokio::time::timeout(Duration::from_secs(60), wait.next()).await.unwrap() {
        r.unwrap();
    }
    let options = LogsOptions { stdout: true, stderr: true, ..LogsOptions::default() };
    let mut logs = docker.logs(&spec.id, Some(options));
    let mut out = String::new();
    while let Some(chunk) = logs.next().await {
        out.push_str(&chunk.unwrap().to_string());
    }
    out
}

#[tokio::test]
async fn limits_and_restrictions_hold_inside_the_container() {
    if !e2e::busybox_image().await {
        return;
    }
    let executor = format!("executor-test-{}", std::process::id());
    let engine = Engine::connect(&DockerConfig::default(), &executor).await.unwrap();
    let mut s = spec(
        &format!("limits-{}", std::process::id()),
        "for f in memory/memory.limit_in_bytes memory/memory.memsw.limit_in_bytes pids/pids.max cpu/cpu.cfs_quota_us \
         memory.max memory.swap.max pids.max cpu.max blkio/blkio.throttle.read_bps_device \
         blkio/blkio.throttle.write_bps_device io.max; do \
         [ -e /sys/fs/cgroup/$f ] && echo \"$f=$(cat /sys/fs/cgroup/$f | tr '\\n' ' ')\"; done; \
         grep -E 'NoNewPrivs|CapEff' /proc/self/status; echo pid1=$(cat /proc/1/comm); \
         touch /tmp/x && echo tmp=writable; mount | grep ' /tmp ' | grep -q noexec && echo tmp=noexec",
    );
    s.apply_limits(&ResourceLimits::default(), engine.host_cpus()).unwrap();
    let out = run_to_end(&engine, &s).await;
    let get = |key: &str| {
        out.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).map(str::trim).unwrap_or_default().to_owned()
    };
    if !get("memory/memory.limit_in_bytes").is_empty() {
        // cgroup v1
        assert_eq!(get("memory/memory.limit_in_bytes"), (64u64 << 20).to_string(), "{out}");
        assert_eq!(get("memory/memory.memsw.limit_in_bytes"), (64u64 << 20).to_string(), "swap = memory: {out}");
        assert_eq!(get("pids/pids.max"), "100", "{out}");
        assert_eq!(get("cpu/cpu.cfs_quota_us"), "50000", "{out}");
        if let Some(device) = engine.disk_device() {
            let rate = (100u64 << 20).to_string();
            assert!(get("blkio/blkio.throttle.read_bps_device").ends_with(&rate), "{device}: {out}");
            assert!(get("blkio/blkio.throttle.write_bps_device").ends_with(&rate), "{device}: {out}");
        }
    } else {
        // cgroup v2
        assert_eq!(get("memory.max"), (64u64 << 20).to_string(), "{out}");
        assert_eq!(get("memory.swap.max"), "0", "{out}");
        assert_eq!(get("pids.max"), "100", "{out}");
        assert_eq!(get("cpu.max"), "50000 100000", "{out}");
    }
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    // CHOWN, SETGID, SETUID, NET_BIND_SERVICE: bits 0, 6, 7, 10 (DAC_OVERRIDE and FOWNER only
    // with `[docker] extra_capabilities`, issue 18 item 8).
    assert!(out.contains("CapEff:\t00000000000004c1"), "{out}");
    assert_eq!(get("pid1"), "docker-init", "an init process is PID 1: {out}");
    assert!(out.contains("tmp=writable") && out.contains("tmp=noexec"), "{out}");

    let inspect = engine.docker().inspect_container(&s.id, None).await.unwrap();
    let host = inspect.host_config.unwrap();
    assert_eq!(host.privileged, Some(false));
    assert!(host.security_opt.unwrap_or_default().iter().all(|o| !o.contains("unconfined")));
    engine.remove(&s.id, true).await.unwrap();
}

#[tokio::test]
async fn only_our_labelled_containers_are_listed() {
    if !e2e::busybox_image().await {
        return;
    }
    let executor = format!("executor-list-{}", std::process::id());
    let engine = Engine::connect(&DockerConfig::default(), &executor).await.unwrap();
    let ours = spec(&format!("ours-{}", std::process::id()), "sleep 30");
    engine.create(&ours, None).await.unwrap();
    // A foreign container, created without our labels, and one of another executor.
    let foreign = format!("foreign-{}", std::process::id());
    let (created, out) = e2e::runtime::docker(&["create", "--name", &foreign, IMAGE, "sleep", "30"]).await;
    assert!(created, "{out}");
    let other = Engine::connect(&DockerConfig::default(), "executor-someone-else").await.unwrap();
    let theirs = spec(&format!("theirs-{}", std::process::id()), "sleep 30");
    other.create(&theirs, None).await.unwrap();

    let listed: Vec<String> =
        engine.list_ours().await.unwrap().into_iter().flat_map(|c| c.names.unwrap_or_default()).collect();
    assert_eq!(listed, vec![format!("/{}", ours.id)]);
    engine.remove(&ours.id, true).await.unwrap();
    other.remove(&theirs.id, true).await.unwrap();
    engine.remove(&foreign, true).await.unwrap();
}
