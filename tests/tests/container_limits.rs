//! container-runtime's limits that Docker does not provide, on the real engine: network rate
//! shaping both ways (`tc`), GPU memory limits (gpu-monitor's simulated GPUs, real container
//! processes), host bind mounts from the allow-list only, egress with `allow_internet = true`
//! (public addresses yes, private and metadata ranges no, through a network namespace standing
//! in for the LAN), pulls from a real local registry, and the spare-network pool.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::time::{Duration, Instant};

use common::ServiceName;
use common::process::ProcessSpec;
use common::proto::runtime::v1 as pb;
use e2e::lan::{self, Lan};
use e2e::process::{is_root, sh, which};
use e2e::runtime::{docker, exec, ifb_name, inspect, remove_all, request, run, start_service};
use e2e::{TestConfig, busybox_image, require_tool, wait_serving};
use tokio::io::AsyncReadExt;
use tonic::Code;

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn network_bps_shapes_both_directions() {
    if !busybox_image().await || !require_tool("root (ip netns)", is_root()) {
        return;
    }
    // An online tenant and the stand-in internet: the host itself is out of a tenant's reach.
    let lan = Lan::new().await;
    let config = TestConfig::new("\n[docker.network_config]\nallow_internet = true\n");
    let (_service, mut client) = start_service(&config).await;
    let mut r = request("sleep 600");
    r.resources.as_mut().unwrap().network_bps = MIB;
    let c = run(&mut client, r).await;
    let ifb = ifb_name(&c.id);
    let (_, tc) = sh("tc", &["qdisc", "show", "dev", &ifb]).await;
    assert!(tc.contains("tbf") && tc.contains("rate 8388Kbit"), "{tc}");
    const SIZE: usize = 3 << 20;
    let blocks = (SIZE / 4096).to_string();

    // To the container: 3 MiB at 1 MiB/s take close to 3 s (unshaped: milliseconds).
    let count = format!("count={blocks}");
    let mut sender =
        lan.spawn(&["busybox", "nc", "-l", "-p", "5002", "-e", "busybox", "dd", "if=/dev/zero", "bs=4096", &count]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let out = exec(&mut client, &c.id, &format!("nc -w 10 {} 5002 </dev/null | wc -c", lan::PUBLIC)).await;
    let down = started.elapsed();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), SIZE.to_string(), "{out:?}");
    let _ = sender.start_kill();

    // From the container: the same through the IFB device, timed where the bytes arrive.
    let mut receiver = lan.spawn(&["busybox", "nc", "-l", "-p", "5003"]);
    let mut received = receiver.stdout.take().unwrap();
    let receive = tokio::spawn(async move {
        let mut first = [0u8; 1];
        received.read_exact(&mut first).await.unwrap();
        let started = Instant::now();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 1;
        while total < SIZE {
            let n = received.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed after {total} bytes");
            total += n;
        }
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let script = format!("dd if=/dev/zero bs=4096 count={blocks} 2>/dev/null | nc {} 5003", lan::PUBLIC);
    let out = exec(&mut client, &c.id, &script).await;
    let up = tokio::time::timeout(Duration::from_secs(30), receive).await.unwrap().unwrap();
    let _ = receiver.start_kill();
    println!("3 MiB at network_bps = 1 MiB/s: to the container {down:?}, from it {up:?} ({out:?})");
    // Lower bounds only: shaping can only make a transfer slower, a slow machine never faster.
    assert!(down >= Duration::from_secs(2), "to the container in {down:?}: not shaped");
    assert!(up >= Duration::from_secs(2), "from the container in {up:?}: not shaped");
    let (_, stats) = sh("tc", &["-s", "qdisc", "show", "dev", &ifb]).await;
    assert!(stats.contains("Sent "), "{stats}");
    remove_all(&mut client).await;
    assert!(!std::path::Path::new("/sys/class/net").join(&ifb).exists(), "{ifb} left behind");
    lan.remove().await;
}

#[tokio::test]
async fn a_container_over_its_gpu_memory_is_stopped_with_the_reason() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::with_system(
        "gpu_backend = \"simulated\"\nsimulated_gpus_file = \"{dir}/gpus.json\"\nupdate_interval = \"200ms\"\ncollector_timeout = \"150ms\"",
        "\n[docker]\nenable_gpu_passthrough = true\n[docker.gpu_config]\nmemory_fraction = 0.5\n",
    );
    let gpus = config.dir.path().join("gpus.json");
    let gpu = r#"{"uuid":"GPU-aaaaaaaa-0000-0000-0000-000000000000","name":"Simulated H100","pci_bus_id":"00000000:10:00.0","memory_total_bytes":4294967296}"#;
    std::fs::write(&gpus, format!(r#"{{"gpus":[{gpu}]}}"#)).unwrap();
    let _monitor =
        ProcessSpec::new(e2e::binary("gpu-monitor")).arg("--config").arg(&config.path).spawn_supervised().unwrap();
    wait_serving(&ServiceName::GpuMonitor.socket(&config.runtime_dir()), Duration::from_secs(30)).await.unwrap();
    let (mut service, mut client) = start_service(&config).await;

    // a: 1 GiB allowed in all; b: the default 4 GiB, but at most half of the 4 GiB GPU; c: fine.
    let mut ra = request("sleep 600");
    ra.resources.as_mut().unwrap().gpu_memory_bytes = 1 << 30;
    let a = run(&mut client, ra).await;
    let b = run(&mut client, request("sleep 600")).await;
    let c = run(&mut client, request("sleep 600")).await;
    // Asking for more than the configured limit is refused up front.
    let mut too_much = request("sleep 600");
    too_much.resources.as_mut().unwrap().gpu_memory_bytes = 5 << 30;
    let err = client.create(too_much).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("resources.gpu_memory_bytes"), "{}", err.message());

    // The GPU processes gpu-monitor reports: the containers' real init processes.
    let mut processes = Vec::new();
    for (container, bytes) in [(&a, 2u64 << 30), (&b, 3 << 30), (&c, 1 << 29)] {
        let pid = inspect(&container.id, "{{.State.Pid}}").await;
        processes.push(format!(
            r#"{{"pid":{pid},"gpu_uuid":"GPU-aaaaaaaa-0000-0000-0000-000000000000","used_memory_bytes":{bytes}}}"#
        ));
    }
    std::fs::write(&gpus, format!(r#"{{"gpus":[{gpu}],"processes":[{}]}}"#, processes.join(","))).unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let (a_now, b_now) = loop {
        let a_now = client.get(pb::ContainerRef { id: a.id.clone() }).await.unwrap().into_inner();
        let b_now = client.get(pb::ContainerRef { id: b.id.clone() }).await.unwrap().into_inner();
        let exited = |c: &pb::Container| c.state == pb::ContainerState::Exited as i32 && !c.stop_reason.is_empty();
        if exited(&a_now) && exited(&b_now) {
            break (a_now, b_now);
        }
        assert!(Instant::now() < deadline, "not stopped: {a_now:?} {b_now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(a_now.stop_reason.contains("2.00 GiB is over the container's limit of 1.00 GiB"), "{a_now:?}");
    assert!(
        b_now
            .stop_reason
            .contains("3.00 GiB on GPU-aaaaaaaa-0000-0000-0000-000000000000 is over 2.00 GiB (0.5 of the GPU"),
        "{b_now:?}"
    );
    let c_now = client.get(pb::ContainerRef { id: c.id.clone() }).await.unwrap().into_inner();
    assert_eq!(c_now.state, pb::ContainerState::Running as i32, "{c_now:?}");
    let (_, metrics) = e2e::http_get(config.ports.metrics[1], "/metrics").await.unwrap();
    assert!(metrics.contains("executor_container_runtime_stops_total{reason=\"gpu_memory\"} 2"), "{metrics}");

    // The reason survives the service being killed.
    service.start_kill().unwrap();
    service.wait().await.unwrap();
    let (_service, mut client) = start_service(&config).await;
    let again = client.get(pb::ContainerRef { id: a.id.clone() }).await.unwrap().into_inner();
    assert_eq!(again.stop_reason, a_now.stop_reason);
    remove_all(&mut client).await;
}

#[tokio::test]
async fn host_paths_are_mounted_only_from_the_allow_list() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("\n[docker]\nallowed_host_paths = [\"{dir}/shared\"]\n");
    let shared = config.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello"), "from the host\n").unwrap();
    std::os::unix::fs::symlink("/etc", shared.join("etc")).unwrap();
    let (_service, mut client) = start_service(&config).await;
    let mount = |host: &std::path::Path, target: &str| pb::Mount {
        host_path: host.display().to_string(),
        container_path: target.into(),
        read_only: true,
    };
    let mut r = request("sleep 600");
    r.mounts = vec![mount(&shared, "/data")];
    let c = run(&mut client, r).await;
    let read = exec(&mut client, &c.id, "cat /data/hello").await;
    assert_eq!(String::from_utf8_lossy(&read.stdout), "from the host\n");
    let write = exec(&mut client, &c.id, "touch /data/new").await;
    assert_ne!(write.exit_code, 0, "wrote to a read-only mount");
    assert!(!shared.join("new").exists());

    for (host, target, expected) in [
        (std::path::PathBuf::from("/etc"), "/data", "mounts[0].host_path: `/etc` (resolved `/etc`) is not under"),
        (shared.join("etc"), "/data", "resolved `/etc`"),
        (config.runtime_dir(), "/run/executor", "is not under docker.allowed_host_paths"),
        (shared.join("../shared"), "/data", "without `..`"),
        (shared.clone(), "relative", "mounts[0].container_path"),
    ] {
        let mut r = request("sleep 600");
        r.mounts = vec![mount(&host, target)];
        let err = client.create(r).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{host:?}: {err:?}");
        assert!(err.message().contains(expected), "{host:?}: {}", err.message());
    }
    remove_all(&mut client).await;

    // Without an allow-list no host path is mounted at all.
    let config = TestConfig::new("");
    let (_service, mut client) = start_service(&config).await;
    let mut r = request("sleep 600");
    r.mounts = vec![mount(&shared, "/data")];
    let err = client.create(r).await.unwrap_err();
    assert!(err.message().contains("host bind mounts are off"), "{}", err.message());
}

#[tokio::test]
async fn images_are_pulled_from_an_allowed_local_registry() {
    if !busybox_image().await || !require_tool("docker-registry", which("docker-registry")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = e2e::free_port();
    let registry_config = dir.path().join("registry.yml");
    std::fs::write(
        &registry_config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let _registry = ProcessSpec::new("docker-registry").arg("serve").arg(&registry_config).spawn_supervised().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while e2e::http_get(port, "/v2/").await.map(|(code, _)| code).ok() != Some(200) {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let host = format!("127.0.0.1:{port}");
    let pushed = format!("{host}/tenant/busybox:1");
    assert!(docker(&["tag", e2e::BUSYBOX_IMAGE, &pushed]).await.0);
    let (ok, out) = docker(&["push", &pushed]).await;
    assert!(ok, "docker push: {out}");
    assert!(docker(&["rmi", &pushed]).await.0);

    // `url` names the registry for references without one; the allow-list has only it.
    let config =
        TestConfig::new(&format!("\n[docker.registry]\nurl = \"{host}\"\nallowed_registries = [\"{host}\"]\n"));
    let (_service, mut client) = start_service(&config).await;
    let mut r = request("echo pulled; sleep 600");
    r.image = "tenant/busybox:1".into();
    let c = run(&mut client, r).await;
    assert_eq!(c.image, pushed);
    assert!(docker(&["image", "inspect", &pushed]).await.0, "not pulled");

    for (image, code, expected) in [
        ("docker.io/library/busybox:latest", Code::FailedPrecondition, "registry `docker.io`, which is not in"),
        ("ghcr.io/tenant/busybox:1", Code::FailedPrecondition, "which is not in docker.registry.allowed_registries"),
        (&format!("{host}/tenant/missing:1"), Code::FailedPrecondition, "cannot pull"),
        ("Tenant/UPPER", Code::InvalidArgument, "image:"),
    ] {
        let mut r = request("true");
        r.image = image.to_owned();
        let err = client.create(r).await.unwrap_err();
        assert_eq!(err.code(), code, "{image}: {err:?}");
        assert!(err.message().contains(expected), "{image}: {}", err.message());
    }
    remove_all(&mut client).await;
    docker(&["rmi", &pushed]).await;
}

async fn pool_networks(executor_id: &str) -> Vec<String> {
    let (_, out) = docker(&[
        "network",
        "ls",
        "--filter",
        "label=ai.basilica.executor.pool=true",
        "--filter",
        &format!("label=ai.basilica.executor.executor_id={executor_id}"),
        "--format",
        "{{.Name}}",
    ])
    .await;
    let mut names: Vec<String> = out.lines().map(str::to_owned).collect();
    names.sort();
    names
}

/// Probes until `ok` holds, for 30 s; a failure says what the last probe saw.
async fn wait_for<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    what: &str,
    mut probe: impl FnMut() -> F,
    ok: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = probe().await;
        if ok(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not after 30 s; the last probe saw {value:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// container-runtime with its spare networks (not `start_service`: that turns the pool off
/// for the other tests).
async fn start_pooled(config: &TestConfig) -> (tokio::process::Child, e2e::runtime::Client) {
    let child = ProcessSpec::new(e2e::binary("container-runtime"))
        .arg("--config")
        .arg(&config.path)
        .spawn_supervised()
        .unwrap();
    let socket = ServiceName::ContainerRuntime.socket(&config.runtime_dir());
    wait_serving(&socket, Duration::from_secs(30)).await.unwrap();
    let client = common::proto::runtime::v1::container_runtime_client::ContainerRuntimeClient::new(
        common::grpc::unix_channel(&socket),
    );
    (child, client)
}

/// The network holders of `executor`: (name, running), sorted.
async fn holders(executor: &str) -> Vec<(String, bool)> {
    let filter = format!("label={}={executor}", e2e::HOLDER_LABEL);
    let (_, out) = docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}} {{.State}}"]).await;
    let mut holders: Vec<(String, bool)> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, state)| (name.to_owned(), state == "running"))
        .collect();
    holders.sort();
    holders
}

#[tokio::test]
async fn spare_networks_are_used_refilled_adopted_and_removed_on_shutdown() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("\n[docker.network_config]\nspare_networks = 2\n");
    let identity = common::identity::ExecutorIdentity::load_or_create(&config.dir.path().join("data")).unwrap();
    let executor = identity.executor_id();
    let start = || start_pooled(&config);
    let (mut service, mut client) = start().await;
    let spares = wait_for("two spare networks", || pool_networks(&executor), |n| n.len() == 2).await;
    let c = run(&mut client, request("sleep 600")).await;
    let network = inspect(&c.id, "{{index .Config.Labels \"ai.basilica.executor.network\"}}").await;
    assert!(spares.contains(&network), "{network} is not one of the spares {spares:?}");
    // The pool refills: two spares plus the one in use.
    wait_for("the pool refilled", || pool_networks(&executor), |n| n.len() == 3).await;

    // kill -9, start again: the spares are adopted, not made again, with their running
    // holders; the container keeps its own.
    let with_holders = if container_runtime::holder::program().is_some() { 3 } else { 0 };
    let all_running = |h: &Vec<(String, bool)>| h.len() == with_holders && h.iter().all(|(_, running)| *running);
    let held = wait_for("the holders running", || holders(&executor), all_running).await;
    service.start_kill().unwrap();
    service.wait().await.unwrap();
    let (mut service, mut client) = start().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = pool_networks(&executor).await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.contains(&network));
    assert_eq!(holders(&executor).await, held);
    client.remove(pb::RemoveContainerRequest { id: c.id.clone(), force: true }).await.unwrap();
    assert!(!docker(&["network", "inspect", &network]).await.0, "{network} left behind");

    // SIGTERM: the spares go too.
    common::process::send_signal(service.id().unwrap(), nix::sys::signal::Signal::SIGTERM).unwrap();
    tokio::time::timeout(Duration::from_secs(30), service.wait()).await.unwrap().unwrap();
    assert_eq!(pool_networks(&executor).await, Vec::<String>::new());
}

/// Spare networks come with a running holder (its image made from the executor's own program,
/// nothing pulled). A create without ports joins it (`container:<network>-holder`) and has the
/// network: an address, shaping, traffic counted. A create with ports, and ports added later,
/// get an endpoint of their own beside it. A holder stopped under its tenant is started with
/// it. A holder goes with its network, and the spares' with them at shutdown.
#[tokio::test]
async fn creates_join_the_running_holder_of_a_spare_network() {
    if !busybox_image().await {
        return;
    }
    if container_runtime::holder::program().is_none() {
        println!("SKIPPED: no network holder program for this architecture");
        return;
    }
    assert_eq!(e2e::HOLDER_LABEL, container_runtime::holder::LABEL_HOLDER_OF);
    let config = TestConfig::new("\n[docker.network_config]\nspare_networks = 2\n");
    let identity = common::identity::ExecutorIdentity::load_or_create(&config.dir.path().join("data")).unwrap();
    let executor = identity.executor_id();
    // Another image under the holders' name (a pull of an image named so): not run, made again.
    assert!(docker(&["tag", e2e::BUSYBOX_IMAGE, container_runtime::holder::HOLDER_IMAGE]).await.0);
    let (mut service, mut client) = start_pooled(&config).await;
    let all_running = |h: &Vec<(String, bool)>| h.len() == 2 && h.iter().all(|(_, running)| *running);
    let spares = wait_for("two spare networks with running holders", || holders(&executor), all_running).await;
    // Made from the program's one layer, and run by the image's id.
    let image = inspect(&spares[0].0, "{{.Image}}").await;
    let layers = docker(&["image", "inspect", "--format", "{{json .RootFS.Layers}}", &image]).await.1;
    assert_eq!(layers, format!("[\"{}\"]", container_runtime::holder::layer().unwrap()));
    assert_eq!(inspect(&spares[0].0, "{{.Config.Image}}").await, image);

    let network_of = |id: String| async move {
        let label = inspect(&id, "{{index .Config.Labels \"ai.basilica.executor.network\"}}").await;
        (label, inspect(&id, "{{.HostConfig.NetworkMode}}").await)
    };
    let mut r = request("sleep 600");
    r.resources.as_mut().unwrap().network_bps = MIB;
    let joined = run(&mut client, r).await;
    let (network, mode) = network_of(joined.id.clone()).await;
    // The engine keeps the holder's id for its name.
    assert_eq!(mode, format!("container:{}", inspect(&format!("{network}-holder"), "{{.Id}}").await));
    let (_, tc) = sh("tc", &["qdisc", "show", "dev", &ifb_name(&joined.id)]).await;
    assert!(tc.contains("tbf") && tc.contains("rate 8388Kbit"), "not shaped: {tc}");
    let (_, gateway) =
        docker(&["network", "inspect", "--format", "{{(index .IPAM.Config 0).Gateway}}", &network]).await;
    let prefix = gateway.trim().rsplit_once('.').unwrap().0.to_owned();
    let out =
        exec(&mut client, &joined.id, &format!("ip -4 addr show eth0; nc -w 1 {} 9 </dev/null; true", gateway.trim()))
            .await;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains(&format!("inet {prefix}.")), "no address on {network}: {shown}");
    let stats = client.stats(pb::ContainerRef { id: joined.id.clone() }).await.unwrap().into_inner();
    assert!(stats.network_tx_bytes > 0, "the traffic of a joined namespace is not counted: {stats:?}");

    // Ports: an endpoint of its own on a spare network, served.
    let mut r = request("nc -ll -p 8080 -e echo hello");
    r.ports = vec![pb::PortMapping { container_port: 8080, protocol: "tcp".into(), ..Default::default() }];
    let published = run(&mut client, r).await;
    let (own, mode) = network_of(published.id.clone()).await;
    assert_eq!(mode, own);
    assert_eq!(e2e::runtime::greeting(published.ports[0].host_port).await, "hello");
    // Ports added to one that joined: made again with an endpoint of its own.
    let add = pb::PortMapping { container_port: 9090, protocol: "tcp".into(), ..Default::default() };
    let update = pb::UpdateContainerRequest { id: joined.id.clone(), add_ports: vec![add], ..Default::default() };
    let updated = client.update(update).await.unwrap().into_inner();
    assert_eq!(updated.state, pb::ContainerState::Running as i32, "{updated:?}");
    assert_eq!(network_of(joined.id.clone()).await, (network.clone(), network.clone()));

    // A holder stopped (by hand, or a reboot) is started with its tenant.
    let again = run(&mut client, request("sleep 600")).await;
    let (network, _) = network_of(again.id.clone()).await;
    let holder = format!("{network}-holder");
    client
        .stop(pb::StopContainerRequest { id: again.id.clone(), timeout_seconds: 0, ..Default::default() })
        .await
        .unwrap();
    assert!(docker(&["stop", "-t", "0", &holder]).await.0);
    let started = client.start(pb::ContainerRef { id: again.id.clone() }).await.unwrap().into_inner();
    assert_eq!(started.state, pb::ContainerState::Running as i32, "{started:?}");
    assert_eq!(inspect(&holder, "{{.State.Running}}").await, "true");

    // The holder goes with its network.
    client.remove(pb::RemoveContainerRequest { id: again.id.clone(), force: true }).await.unwrap();
    assert!(!docker(&["inspect", &holder]).await.0, "{holder} left behind");
    assert!(!docker(&["network", "inspect", &network]).await.0, "{network} left behind");
    remove_all(&mut client).await;

    // SIGTERM: the spares go, and their holders with them.
    common::process::send_signal(service.id().unwrap(), nix::sys::signal::Signal::SIGTERM).unwrap();
    tokio::time::timeout(Duration::from_secs(30), service.wait()).await.unwrap().unwrap();
    assert_eq!(holders(&executor).await, Vec::<(String, bool)>::new());
}
