//! container-runtime as a process, over its socket, on the real Docker engine: the container
//! lifecycle, logs, exec, stats, bad input naming its field, the concurrency cap under 50
//! parallel creates, foreign containers left alone, and nothing lost across `kill -9`.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::time::Duration;

use common::ServiceName;
use common::process::ProcessSpec;
use common::proto::runtime::v1 as pb;
use e2e::runtime::{docker, inspect, remove_all, request, start_service};
use e2e::{BUSYBOX_IMAGE, TestConfig, busybox_image, wait_serving};
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test]
async fn lifecycle_logs_exec_stats_and_bad_input() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("\n[docker]\nmax_concurrent_containers = 3\n");
    let (_service, mut client) = start_service(&config).await;

    let mut r = request("echo out; echo err >&2; sleep 60");
    let asked =
        vec![pb::PortMapping { container_port: 8080, host_port: 0, protocol: "tcp".into(), ..Default::default() }];
    r.ports = asked.clone();
    let created = client.create(r).await.unwrap().into_inner();
    assert!(created.id.starts_with("c-"), "{created:?}");
    // The host port comes from the node's pool, with the endpoint renters use.
    let host_port = created.ports[0].host_port;
    assert_eq!(u32::from(config.ports.pool), host_port, "{created:?}");
    let external = format!("127.0.0.1:{host_port}");
    assert_eq!(
        created.ports,
        [pb::PortMapping { host_port, external_port: host_port, external_endpoint: external, ..asked[0].clone() }]
    );
    assert_eq!(created.state, pb::ContainerState::Created as i32);
    assert_eq!(created.owner, "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY");
    assert_eq!(created.expires_at - created.created_at, 600);
    let id = created.id.clone();
    let started = client.start(pb::ContainerRef { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(started.state, pb::ContainerState::Running as i32);
    assert_eq!(
        started.ports.iter().map(|p| (p.container_port, p.protocol.as_str())).collect::<Vec<_>>(),
        [(8080, "tcp")]
    );
    // A list for an owner has that owner's rentals only.
    for (owner, expected) in [(e2e::ALICE, vec![id.clone()]), ("5Someone-else", vec![]), ("", vec![id.clone()])] {
        let listed = client.list(pb::ListContainersRequest { all: false, owner: owner.into() }).await.unwrap();
        let ids: Vec<String> = listed.into_inner().containers.into_iter().map(|c| c.id).collect();
        assert_eq!(ids, expected, "owner {owner:?}");
    }

    // Logs: stdout and stderr kept apart, each with Docker's timestamp.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut logs =
        client.logs(pb::LogsRequest { id: id.clone(), follow: false, tail: 0, since: 0 }).await.unwrap().into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = logs.next().await {
        chunks.push(chunk.unwrap());
    }
    let of = |s: pb::LogStream| {
        chunks
            .iter()
            .filter(|c| c.stream == s as i32)
            .map(|c| String::from_utf8_lossy(&c.data).into_owned())
            .collect::<String>()
    };
    assert_eq!(of(pb::LogStream::Stdout), "out\n", "{chunks:?}");
    assert_eq!(of(pb::LogStream::Stderr), "err\n", "{chunks:?}");
    assert!(chunks.iter().all(|c| c.timestamp.contains('T') && c.timestamp.ends_with('Z')), "{chunks:?}");

    // Exec with output cap and timeout.
    let exec = |command: &[&str], timeout: u32, cap: u64| pb::ExecRequest {
        id: id.clone(),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        timeout_seconds: timeout,
        max_output_bytes: cap,
    };
    let out = client.exec(exec(&["sh", "-c", "echo hi; echo oops >&2; exit 3"], 10, 0)).await.unwrap().into_inner();
    assert_eq!((out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code), (&b"hi\n"[..], &b"oops\n"[..], 3));
    let out = client.exec(exec(&["sh", "-c", "yes | head -c 100000"], 10, 100)).await.unwrap().into_inner();
    assert!(out.truncated && out.stdout.len() == 100, "{}", out.stdout.len());
    let out = client.exec(exec(&["sleep", "5"], 1, 0)).await.unwrap().into_inner();
    assert!(out.timed_out);

    let stats = client.stats(pb::ContainerRef { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(stats.memory_limit_bytes, 64 << 20);
    assert!(stats.memory_usage_bytes > 0 && stats.pids >= 1, "{stats:?}");

    // Bad input names the field; nothing is created.
    let bad = |change: &dyn Fn(&mut pb::CreateContainerRequest)| {
        let mut r = request("true");
        change(&mut r);
        r
    };
    for (r, code, field) in [
        (bad(&|r| r.image = "UPPER".into()), Code::InvalidArgument, "image:"),
        (bad(&|r| r.image = "docker.io.evil.com/library/busybox".into()), Code::FailedPrecondition, "image:"),
        (
            bad(&|r| r.image = "quay.io/x/y".into()),
            Code::FailedPrecondition,
            "not in docker.registry.allowed_registries",
        ),
        (
            bad(&|r| r.resources.as_mut().unwrap().memory_bytes = 1 << 50),
            Code::InvalidArgument,
            "resources.memory_bytes",
        ),
        (bad(&|r| r.resources.as_mut().unwrap().cpu_cores = -1.0), Code::InvalidArgument, "resources.cpu_cores"),
        (bad(&|r| r.gpu_count = 1), Code::FailedPrecondition, "gpu_count"),
        (
            bad(&|r| {
                r.ports = vec![pb::PortMapping {
                    container_port: 70000,
                    host_port: 0,
                    protocol: "tcp".into(),
                    ..Default::default()
                }]
            }),
            Code::InvalidArgument,
            "ports.container_port",
        ),
        (
            bad(&|r| drop(r.labels.insert("ai.basilica.executor.id".into(), "x".into()))),
            Code::InvalidArgument,
            "labels",
        ),
    ] {
        let err = client.create(r).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let err = client.get(pb::ContainerRef { id: "c-000000000000".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client.get(pb::ContainerRef { id: "../etc".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let stopped = client
        .stop(pb::StopContainerRequest { id: id.clone(), timeout_seconds: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.state, pb::ContainerState::Exited as i32);
    client.remove(pb::RemoveContainerRequest { id: id.clone(), force: false }).await.unwrap();
    assert_eq!(client.get(pb::ContainerRef { id }).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn the_cap_is_exact_under_parallel_creates_and_state_survives_kill_9() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("\n[docker]\nmax_concurrent_containers = 4\n");
    let (mut service, mut client) = start_service(&config).await;
    // A foreign container is neither counted nor listed nor touchable.
    let foreign = format!("foreign-cap-{}", std::process::id());
    let out = ProcessSpec::new("docker")
        .args(["create", "--name", &foreign, BUSYBOX_IMAGE, "sleep", "30"])
        .output(Duration::from_secs(60), 1 << 16)
        .await
        .unwrap();
    assert!(out.status.success());

    let creates = (0..50).map(|_| {
        let mut c = client.clone();
        tokio::spawn(async move { c.create(request("sleep 60")).await })
    });
    let mut ok = 0;
    for task in creates {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}"),
        }
    }
    assert_eq!(ok, 4);
    let listed = client.list(pb::ListContainersRequest { all: true, owner: String::new() }).await.unwrap().into_inner();
    assert_eq!(listed.containers.len(), 4);
    assert_eq!(client.get(pb::ContainerRef { id: foreign.clone() }).await.unwrap_err().code(), Code::NotFound);
    // Nothing leaked from the 46 refused creates: one network per container.
    let identity =
        common::identity::ExecutorIdentity::load(&config.dir.path().join("data").join(common::identity::IDENTITY_FILE))
            .unwrap();
    let filter = format!("label=ai.basilica.executor.executor_id={}", identity.executor_id());
    let (_, networks) = docker(&["network", "ls", "-q", "--filter", &filter]).await;
    assert_eq!(networks.lines().count(), 4, "{networks}");

    // kill -9 and a new process: Docker is the source of truth, nothing is lost.
    service.start_kill().unwrap();
    service.wait().await.unwrap();
    let (_service, mut client) = start_service(&config).await;
    let after = client.list(pb::ListContainersRequest { all: true, owner: String::new() }).await.unwrap().into_inner();
    let ids = |l: &pb::ListContainersResponse| l.containers.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&listed));
    remove_all(&mut client).await;
    let out =
        ProcessSpec::new("docker").args(["rm", "-f", &foreign]).output(Duration::from_secs(60), 1 << 16).await.unwrap();
    assert!(out.status.success());
}

#[tokio::test]
async fn tenants_are_isolated_and_offline_by_default() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("\n[docker]\nmax_concurrent_containers = 4\n");
    let (_service, mut client) = start_service(&config).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let c = client.create(request("while true; do nc -l -p 8080 -e echo hello; done")).await.unwrap().into_inner();
        client.start(pb::ContainerRef { id: c.id.clone() }).await.unwrap();
        ids.push(c.id);
    }
    let ip_of = |id: &str| {
        let id = id.to_owned();
        async move {
            let out = ProcessSpec::new("docker")
                .args(["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &id])
                .output(Duration::from_secs(30), 1 << 12)
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
    };
    let (ip_a, ip_b) = (ip_of(&ids[0]).await, ip_of(&ids[1]).await);
    assert!(!ip_a.is_empty() && !ip_b.is_empty() && ip_a != ip_b, "{ip_a} {ip_b}");
    let exec = |id: &str, script: String| pb::ExecRequest {
        id: id.to_owned(),
        command: vec!["sh".into(), "-c".into(), script],
        timeout_seconds: 20,
        max_output_bytes: 0,
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The listener works from inside its own container...
    let own = client.exec(exec(&ids[0], "nc -w 2 127.0.0.1 8080 </dev/null".into())).await.unwrap().into_inner();
    assert_eq!(String::from_utf8_lossy(&own.stdout).trim(), "hello", "{own:?}");
    // ...but another tenant cannot reach it.
    let other = client.exec(exec(&ids[1], format!("nc -w 2 {ip_a} 8080 </dev/null"))).await.unwrap().into_inner();
    assert!(String::from_utf8_lossy(&other.stdout).trim().is_empty(), "tenant reached another: {other:?}");
    // The host itself is out of reach too: a listener on 0.0.0.0, tried through the gateway.
    let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = host.local_addr().unwrap().port();
    host.set_nonblocking(true).unwrap();
    let probe =
        format!("gw=$(ip route | awk '/default/ {{print $3}}'); echo gw=$gw; nc -w 2 $gw {port} </dev/null; true");
    let out = client.exec(exec(&ids[1], probe)).await.unwrap().into_inner();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("gw=") && text.lines().count() == 1, "reached the host: {text}");
    assert!(host.accept().is_err(), "the host saw a connection from a tenant");
    let rule = ProcessSpec::new("iptables")
        .args(["-C", "INPUT", "-i", "bai-+", "-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED", "-j", "DROP"])
        .output(Duration::from_secs(20), 1 << 12)
        .await
        .unwrap();
    assert!(rule.status.success(), "host firewall rule missing");
    // Each container has its own network, shaped to network_bps both ways, all removed with it.
    let mut networks = Vec::new();
    for id in &ids {
        let network = inspect(id, "{{index .Config.Labels \"ai.basilica.executor.network\"}}").await;
        assert!(network.starts_with("basilica-n-"), "{network}");
        assert_eq!(inspect(id, "{{.HostConfig.NetworkMode}}").await, network);
        networks.push(network);
        let ifb = e2e::runtime::ifb_name(id);
        let (_, tc) = tc(&["qdisc", "show", "dev", &ifb]).await;
        assert!(tc.contains("tbf") && tc.contains("rate 838860Kbit"), "{tc}");
    }
    assert_ne!(networks[0], networks[1]);
    for (id, network) in ids.iter().zip(&networks) {
        client.remove(pb::RemoveContainerRequest { id: id.clone(), force: true }).await.unwrap();
        assert!(!docker(&["network", "inspect", network]).await.0, "network of {id} left behind");
        let ifb = e2e::runtime::ifb_name(id);
        assert!(!std::path::Path::new("/sys/class/net").join(&ifb).exists(), "{ifb} left behind");
    }
}

#[tokio::test]
async fn the_reaper_removes_expired_containers_and_orphan_networks() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("\n[docker]\nreap_interval = \"300ms\"\n");
    let (_service, mut client) = start_service(&config).await;
    let mut short = request("sleep 60");
    // TTLs count whole seconds from the creation second: 3 s leaves time to start it first.
    short.ttl_seconds = 3;
    let c = client.create(short).await.unwrap().into_inner();
    client.start(pb::ContainerRef { id: c.id.clone() }).await.unwrap();
    let keep = client.create(request("sleep 60")).await.unwrap().into_inner();
    client.start(pb::ContainerRef { id: keep.id.clone() }).await.unwrap();

    // An orphan network: ours by label, created long ago, with no container.
    let identity =
        common::identity::ExecutorIdentity::load(&config.dir.path().join("data").join(common::identity::IDENTITY_FILE))
            .unwrap();
    let orphan = format!("basilica-c-orphan{}", std::process::id());
    let out = ProcessSpec::new("docker")
        .args(["network", "create", "--label", "ai.basilica.executor.managed=true"])
        .arg(format!("--label=ai.basilica.executor.executor_id={}", identity.executor_id()))
        .arg(format!("--label=ai.basilica.executor.id=c-orphan{}", std::process::id()))
        .args(["--label", "ai.basilica.executor.created=1", &orphan])
        .output(Duration::from_secs(30), 1 << 12)
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A shaping device of ours whose container is gone (another executor's would carry its id).
    let device = format!("bif-orph{}", std::process::id() % 10_000_000);
    for args in [
        vec!["link", "add", &device, "type", "ifb"],
        vec!["link", "set", "dev", &device, "alias", &identity.executor_id()],
    ] {
        let out = ProcessSpec::new("ip").args(args).output(Duration::from_secs(20), 1 << 12).await.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let device_gone = !std::path::Path::new("/sys/class/net").join(&device).exists();
        let gone = client.get(pb::ContainerRef { id: c.id.clone() }).await.is_err_and(|e| e.code() == Code::NotFound);
        let net = ProcessSpec::new("docker")
            .args(["network", "inspect", &orphan])
            .output(Duration::from_secs(30), 1 << 16)
            .await
            .unwrap();
        // The counters move just after Docker answers the reaper, and the per-container figures
        // after the round: wait for them too.
        let (_, metrics) = e2e::http_get(config.ports.metrics[1], "/metrics").await.unwrap();
        let per_container = format!("executor_container_runtime_container_memory_bytes{{container=\"{}\"}} ", keep.id);
        let counted = metrics.contains("executor_container_runtime_reaped_total{reason=\"ttl\"} 1")
            && metrics.contains("executor_container_runtime_reaped_total{reason=\"orphan_network\"} 1")
            && metrics.contains(&per_container);
        if gone && !net.status.success() && counted && device_gone {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "expired container, orphan network or device still there");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The container without a TTL stays.
    client.get(pb::ContainerRef { id: keep.id.clone() }).await.unwrap();
    let (_, metrics) = e2e::http_get(config.ports.metrics[1], "/metrics").await.unwrap();
    assert!(metrics.contains("executor_container_runtime_creates_total{result=\"ok\"} 2"), "{metrics}");
    // Per-container figures for the running one.
    let memory = format!("executor_container_runtime_container_memory_bytes{{container=\"{}\"}} ", keep.id);
    let cpu = format!("executor_container_runtime_container_cpu_seconds_total{{container=\"{}\"}} ", keep.id);
    assert!(metrics.contains(&memory) && metrics.contains(&cpu), "{metrics}");
    remove_all(&mut client).await;
    // Issue 17 item 14: a removed container's series leave at the next round (they stayed at
    // their last value until the service restarted).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = e2e::http_get(config.ports.metrics[1], "/metrics").await.unwrap();
        if !metrics.contains(&keep.id) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a removed container's series stayed:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn gpus_are_assigned_by_uuid_once_and_released_on_removal() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::with_system(
        "gpu_backend = \"simulated\"\nsimulated_gpus_file = \"{dir}/gpus.json\"",
        "\n[docker]\nenable_gpu_passthrough = true\n[docker.gpu_config]\nvisible_devices = \"0,GPU-cccccccc-0000-0000-0000-000000000002\"\n",
    );
    let gpu = |i: u32, hex: char| {
        format!(
            r#"{{"uuid":"GPU-{}-0000-0000-0000-00000000000{i}","name":"Simulated H100","pci_bus_id":"00000000:1{i}:00.0","memory_total_bytes":1000}}"#,
            hex.to_string().repeat(8)
        )
    };
    std::fs::write(
        config.dir.path().join("gpus.json"),
        format!(r#"{{"gpus":[{},{},{}]}}"#, gpu(0, 'a'), gpu(1, 'b'), gpu(2, 'c')),
    )
    .unwrap();
    let monitor =
        ProcessSpec::new(e2e::binary("gpu-monitor")).arg("--config").arg(&config.path).spawn_supervised().unwrap();
    wait_serving(&ServiceName::GpuMonitor.socket(&config.runtime_dir()), Duration::from_secs(30)).await.unwrap();
    let (_service, mut client) = start_service(&config).await;
    let (a, c) = ("GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-cccccccc-0000-0000-0000-000000000002");

    // GPU 1 is not visible to tenants: only GPU 0 and the named UUID exist for them.
    let mut r = request("sleep 60");
    r.gpu_count = 3;
    let err = client.create(r).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("gpu_count: 3 requested, 2 free of 2"), "{}", err.message());
    let mut r = request("sleep 60");
    r.gpu_uuids = vec!["GPU-bbbbbbbb-0000-0000-0000-000000000001".into()];
    assert_eq!(client.create(r).await.unwrap_err().code(), Code::InvalidArgument);

    let mut r = request("sleep 60");
    r.gpu_count = 1;
    let first = client.create(r).await.unwrap().into_inner();
    assert_eq!(first.gpu_uuids, vec![a.to_owned()]);
    // The create body carried the NVIDIA device request and the UUID.
    let out = ProcessSpec::new("docker")
        .args(["inspect", "-f", "{{json .HostConfig.DeviceRequests}} {{json .Config.Env}}", &first.id])
        .output(Duration::from_secs(30), 1 << 16)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("\"DeviceIDs\":[\"{a}\"]")) && text.contains(&format!("NVIDIA_VISIBLE_DEVICES={a}")),
        "{text}"
    );
    // Without the NVIDIA runtime (this machine) starting it is a clear precondition failure.
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        let err = client.start(pb::ContainerRef { id: first.id.clone() }).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    }

    // Capacity: the two visible GPUs, one held by the container.
    let capacity = client.capacity(pb::CapacityRequest {}).await.unwrap().into_inner();
    let gpus = capacity.gpus.unwrap();
    assert_eq!((gpus.total, gpus.allocated, gpus.free), (2.0, 1.0, 1.0), "{capacity:?}");
    let holders: Vec<(&str, &str)> =
        capacity.gpu_slots.iter().map(|g| (g.uuid.as_str(), g.container.as_str())).collect();
    assert_eq!(holders, [(a, first.id.as_str()), (c, "")]);
    assert_eq!(capacity.containers.unwrap().allocated, 1.0);

    let mut r = request("sleep 60");
    r.gpu_uuids = vec![a.into()];
    let err = client.create(r).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(&format!("is assigned to container {}", first.id)), "{}", err.message());
    let mut r = request("sleep 60");
    r.gpu_count = 2;
    assert_eq!(client.create(r).await.unwrap_err().code(), Code::ResourceExhausted);

    // Removal releases the GPU.
    client.remove(pb::RemoveContainerRequest { id: first.id, force: true }).await.unwrap();
    let mut r = request("sleep 60");
    r.gpu_count = 2;
    let both = client.create(r).await.unwrap().into_inner();
    assert_eq!(both.gpu_uuids, vec![a.to_owned(), c.to_owned()]);
    remove_all(&mut client).await;
    drop(monitor);
}

async fn tc(args: &[&str]) -> (bool, String) {
    let out = e2e::process::capture(ProcessSpec::new("tc").args(args.iter().copied()), Duration::from_secs(20)).await;
    (out.status.success(), e2e::process::stdout(&out))
}

/// Issue 22 item 2 (the TTL): `Update` extends a container's TTL past the one it was created
/// with, or shortens it, kept across a `kill -9` of the service; 0 takes it away.
#[tokio::test]
async fn a_ttl_update_extends_or_shortens_a_rental_and_survives_a_restart() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("\n[docker]\nreap_interval = \"300ms\"\n");
    let (mut service, mut client) = start_service(&config).await;
    let mut short = request("sleep 600");
    short.ttl_seconds = 3;
    let extended = client.create(short.clone()).await.unwrap().into_inner();
    let shortened = client.create(request("sleep 600")).await.unwrap().into_inner();
    let forever = client.create(short).await.unwrap().into_inner();
    let update = |id: &str, ttl_seconds| pb::UpdateContainerRequest {
        id: id.to_owned(),
        ttl_seconds: Some(ttl_seconds),
        ..Default::default()
    };

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let got = client.update(update(&extended.id, 600)).await.unwrap().into_inner();
    assert!((now + 599..=now + 601).contains(&got.expires_at), "{got:?}");
    let got = client.update(update(&shortened.id, 2)).await.unwrap().into_inner();
    assert!((now + 1..=now + 3).contains(&got.expires_at), "{got:?}");
    assert_eq!(client.update(update(&forever.id, 0)).await.unwrap().into_inner().expires_at, 0);
    let e = client.update(update("c-nope", 10)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = client.update(update(&forever.id, 400_000_000)).await.unwrap_err();
    assert!(e.message().starts_with("ttl_seconds:"), "{}", e.message());
    let nothing = pb::UpdateContainerRequest { id: forever.id.clone(), ..Default::default() };
    let e = client.update(nothing).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "ttl_seconds: nothing to update: give ttl_seconds, add_ports or both");

    // A restart of the service forgets nothing; the reaper goes by the new TTLs.
    service.kill().await.unwrap();
    let (_service, mut client) = start_service(&config).await;
    let get = |id: &str| pb::ContainerRef { id: id.to_owned() };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while client.get(get(&shortened.id)).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "the shortened container was not reaped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Both created with 3 s, now well past it: still there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in [&extended.id, &forever.id] {
        assert!(client.get(get(id)).await.is_ok(), "{id} was reaped by its old TTL");
    }
    assert!((now + 599..=now + 601).contains(&client.get(get(&extended.id)).await.unwrap().into_inner().expires_at));
    remove_all(&mut client).await;
}

/// What a killed test node leaves in Docker (a running container and its network) goes when
/// its `TestConfig` does, so runs of the suite do not use up the engine's address pools.
#[tokio::test]
async fn a_killed_test_nodes_containers_and_networks_go_with_its_config() {
    if !busybox_image().await {
        return;
    }
    assert_eq!(e2e::EXECUTOR_LABEL, container_runtime::labels::LABEL_EXECUTOR);
    let config = TestConfig::new("");
    let (mut service, mut client) = start_service(&config).await;
    let id = client.create(request("sleep 60")).await.unwrap().into_inner().id;
    client.start(pb::ContainerRef { id }).await.unwrap();
    service.kill().await.unwrap();
    let label = config.executor_filter().expect("the service made its identity");
    let left = |what: &'static [&'static str]| {
        let label = label.clone();
        async move {
            let (ok, out) = docker(&[what, &["-q", "--filter", &label]].concat()).await;
            assert!(ok, "docker {what:?}: {out}");
            out.split_whitespace().count()
        }
    };
    assert_eq!((left(&["ps", "-a"]).await, left(&["network", "ls"]).await), (1, 1));
    drop(config);
    assert_eq!((left(&["ps", "-a"]).await, left(&["network", "ls"]).await), (0, 0));
}
