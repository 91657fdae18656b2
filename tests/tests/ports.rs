//! Issue 20: published ports. Host ports come from `[docker.ports] ranges`, are reported back
//! with the endpoint renters use, work with and without `allow_internet` (an isolated tenant
//! still opens nothing), answer clients on private ranges, and are never handed out twice,
//! also across a `kill -9` of container-runtime. The clients are in another network namespace
//! (see `e2e::lan`): one standing in for the internet (198.51.100.2) and one for a LAN client
//! (10.211.0.2), both reaching the node at its address on that link.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::collections::BTreeSet;
use std::time::Duration;

use common::process::ProcessSpec;
use common::proto::runtime::v1 as pb;
use e2e::lan::{self, Lan};
use e2e::process::{is_root, sh, which};
use e2e::runtime::{exec, greeting, remove_all, request, start_service};
use e2e::{TestConfig, busybox_image, require_tool};
use tonic::Code;

/// A client in the namespace: one TCP exchange or one UDP datagram and its answer, sent from
/// `source`; prints what came back (nothing when nothing did).
const CLIENT: &str = r#"
import socket, sys
kind, host, port, source = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
s.settimeout(3)
s.bind((source, 0))
try:
    if kind == "tcp":
        s.connect((host, port))
        print(s.recv(100).decode().strip())
    else:
        for _ in range(5):
            s.sendto(b"ping", (host, port))
            try:
                print(s.recv(100).decode().strip())
                break
            except socket.timeout:
                pass
except OSError as e:
    print("failed:", e, file=sys.stderr)
"#;

/// A UDP echo server, run in the container's network namespace (the test image has no UDP
/// server of its own): each datagram comes back with `echo ` before it.
const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(100)
    s.sendto(b"echo " + data, peer)
"#;

fn port(container_port: u32, protocol: &str) -> pb::PortMapping {
    pb::PortMapping { container_port, protocol: protocol.into(), ..Default::default() }
}

/// What the client in `lan` got back from `endpoint` (`host:port`) over `kind`, sent from `source`.
async fn ask(lan: &Lan, script: &std::path::Path, kind: &str, endpoint: &str, source: &str) -> String {
    let (host, port) = endpoint.rsplit_once(':').unwrap();
    let child = lan.spawn(&["python3", &script.display().to_string(), kind, host, port, source]);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Published TCP and UDP ports answer clients on the internet and on a private range, in both
/// `allow_internet` modes, through the endpoint the container reports; an isolated tenant
/// still cannot open a connection out.
#[tokio::test]
async fn published_ports_answer_public_and_private_clients_in_both_modes() {
    if !busybox_image().await
        || !require_tool("root (ip netns, nsenter)", is_root() && which("nsenter"))
        || !require_tool("python3", which("python3"))
    {
        return;
    }
    let lan = Lan::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (client_py, echo_py) = (dir.path().join("client.py"), dir.path().join("echo.py"));
    std::fs::write(&client_py, CLIENT).unwrap();
    std::fs::write(&echo_py, UDP_ECHO).unwrap();
    for internet in [false, true] {
        let config = TestConfig::with_ports(
            &format!("external_host = \"{}\"", lan::HOST_END),
            &format!("\n[docker.network_config]\nallow_internet = {internet}\n"),
        );
        let (_service, mut client) = start_service(&config).await;
        let mut r = request("nc -ll -p 8080 -e echo hello");
        r.ports = vec![port(8080, "tcp"), port(5353, "udp")];
        let created = client.create(r).await.unwrap().into_inner();
        let c = client.start(pb::ContainerRef { id: created.id.clone() }).await.unwrap().into_inner();
        assert_eq!(created.ports, c.ports, "the ports change between create and start");
        let pool = config.ports.pool..config.ports.pool + e2e::POOL_PORTS;
        let [tcp, udp] = [&c.ports[0], &c.ports[1]];
        for (p, protocol) in [(tcp, "tcp"), (udp, "udp")] {
            assert_eq!(p.protocol, protocol, "{c:?}");
            assert!(pool.contains(&(p.host_port as u16)), "{p:?} outside {pool:?}");
            assert_eq!(p.external_port, p.host_port, "no NAT: {p:?}");
            assert_eq!(p.external_endpoint, format!("{}:{}", lan::HOST_END, p.host_port));
        }
        let pid = e2e::runtime::inspect(&c.id, "{{.State.Pid}}").await;
        let mut echo = ProcessSpec::new("nsenter")
            .args(["-t", &pid, "-n", "python3"])
            .arg(&echo_py)
            .arg("5353")
            .spawn_supervised()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;

        for source in [lan::PUBLIC, lan::BLOCKED[0]] {
            let mode = if internet { "online" } else { "isolated" };
            let got = ask(&lan, &client_py, "tcp", &tcp.external_endpoint, source).await;
            assert_eq!(got, "hello", "{mode}: TCP from {source}");
            let got = ask(&lan, &client_py, "udp", &udp.external_endpoint, source).await;
            assert_eq!(got, "echo ping", "{mode}: UDP from {source}");
        }
        // Over IPv6 from the host (tenants have no IPv6; Docker's proxy takes the connection).
        if std::path::Path::new("/proc/sys/net/ipv6").exists() {
            let (port, script) = (tcp.host_port.to_string(), client_py.display().to_string());
            let out = ProcessSpec::new("python3").args([script.as_str(), "tcp", "::1", &port, "::1"]);
            let out = out.output(Duration::from_secs(30), 1 << 12).await.unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello", "over IPv6: {out:?}");
        }
        // Out of the container: the internet only when online, the private range never.
        let probe = format!(
            "(nc -w 2 {} 8080 </dev/null | sed 's/^/public /') & (nc -w 2 {} 8080 </dev/null | sed 's/^/private /') & wait",
            lan::PUBLIC,
            lan::BLOCKED[0]
        );
        let out = exec(&mut client, &c.id, &probe).await;
        let answers = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(answers, if internet { "public hello" } else { "" }, "{out:?}");

        let _ = echo.start_kill();
        let _ = echo.wait().await;
        remove_all(&mut client).await;
    }
    lan.remove().await;
}

/// Concurrent creates never share a host port; a port asked for must be in the pool, free and
/// not one of the node's own; an empty pool is RESOURCE_EXHAUSTED; a restarted service (after
/// `kill -9`) reads what is held from the containers' labels; a removed container's ports are
/// free again. 50 ports are asked for at once by 10 creates of 5 each: every container has a
/// bridge network of its own, and the engine's address pools hold only about 30 networks.
#[tokio::test]
async fn ports_come_from_the_pool_once_each_and_survive_a_kill() {
    if !busybox_image().await {
        return;
    }
    let base = e2e::free_block(60);
    let config = TestConfig::with_ports(
        &format!("ranges = [\"{base}-{}\"]\nreserved = [\"{}\"]", base + 59, base + 59),
        "\n[docker]\nmax_concurrent_containers = 20\nreap_interval = \"200ms\"\n",
    );
    let ports = |n: u32, protocol: &str| (0..n).map(|i| port(80 + i, protocol)).collect::<Vec<_>>();
    let (mut service, client) = start_service(&config).await;
    let mut creates = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let mut client = client.clone();
        let mut r = request("sleep 600");
        r.ports = ports(5, "tcp");
        creates.spawn(async move { client.create(r).await.unwrap().into_inner() });
    }
    let mut created = creates.join_all().await;
    created.sort_by_key(|c| c.ports[0].host_port);
    let held: BTreeSet<u32> = created.iter().flat_map(|c| c.ports.iter().map(|p| p.host_port)).collect();
    assert_eq!(held.len(), 50, "a host port was given twice: {held:?}");
    assert!(held.iter().all(|p| (u32::from(base)..u32::from(base) + 59).contains(p)), "{held:?}");

    let mut client = client;
    let ask = |host_port: u32| {
        let mut r = request("sleep 600");
        r.ports = vec![pb::PortMapping { host_port, ..port(80, "tcp") }];
        r
    };
    let refused = |r: Result<tonic::Response<pb::Container>, tonic::Status>| r.unwrap_err();
    let taken = *held.first().unwrap();
    let e = refused(client.create(ask(taken)).await);
    assert_eq!(
        (e.code(), e.message()),
        (Code::AlreadyExists, format!("ports[0].host_port: {taken} is in use").as_str())
    );
    let e = refused(client.create(ask(50051)).await);
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("ports[0].host_port: 50051 is not in docker.ports.ranges"), "{e:?}");
    let e = refused(client.create(ask(u32::from(base) + 59)).await);
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("is reserved on this node (docker.ports.reserved)"), "{e:?}");

    // kill -9, a new service: the 50 stay held; 9 are left, a 10th is refused by name.
    let _ = service.start_kill();
    let _ = service.wait().await;
    let (_service, mut client) = start_service(&config).await;
    let mut r = request("sleep 600");
    r.ports = ports(9, "udp");
    let rest: BTreeSet<u32> = client.create(r).await.unwrap().into_inner().ports.iter().map(|p| p.host_port).collect();
    assert!(rest.is_disjoint(&held) && rest.len() == 9, "{rest:?} reuses {held:?}");
    let mut r = request("sleep 600");
    r.ports = ports(1, "tcp");
    let e = refused(client.create(r.clone()).await);
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().starts_with("ports: no free host port left in docker.ports.ranges"), "{e:?}");
    let (_, metrics) = e2e::http_get(config.ports.metrics[1], "/metrics").await.unwrap();
    assert!(metrics.contains("executor_container_runtime_ports_pool_size 59"), "{metrics}");
    assert!(metrics.contains("executor_container_runtime_ports_exhausted_total 1"), "{metrics}");
    // The reaper's round counts what is held.
    let mut metrics = metrics;
    for _ in 0..50 {
        if metrics.contains("executor_container_runtime_ports_allocated 59") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = e2e::http_get(config.ports.metrics[1], "/metrics").await.unwrap().1;
    }
    assert!(metrics.contains("executor_container_runtime_ports_allocated 59"), "{metrics}");

    // A removed container's ports are free again, and a running one publishes where it says.
    client.remove(pb::RemoveContainerRequest { id: created[0].id.clone(), force: true }).await.unwrap();
    let again = client.create(r).await.unwrap().into_inner();
    assert_eq!(again.ports[0].host_port, created[0].ports[0].host_port);
    client.start(pb::ContainerRef { id: again.id.clone() }).await.unwrap();
    let (_, published) = sh("docker", &["port", &again.id, "80/tcp"]).await;
    assert!(published.contains(&format!(":{}", again.ports[0].host_port)), "{published}");
    remove_all(&mut client).await;
}

/// Without a network of its own a container has none at all: asking it to publish a port is
/// refused by name rather than dropped.
#[tokio::test]
async fn ports_without_networks_are_refused() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("\n[docker.network_config]\nenable_isolation = false\n");
    let (_service, mut client) = start_service(&config).await;
    let mut r = request("sleep 600");
    r.ports = vec![port(80, "tcp")];
    let e = client.create(r).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().starts_with("ports: docker.network_config.enable_isolation = false"), "{e:?}");
}

/// CheckPorts listens on a spare pool port and reaches it through the external host: on this
/// machine's own address it gets through, on an address that is not this machine's it does not,
/// and says why.
#[tokio::test]
async fn the_reachability_check_tells_a_reachable_pool_from_a_wrong_address() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("");
    let (_service, mut client) = start_service(&config).await;
    let r = client.check_ports(pb::CheckPortsRequest {}).await.unwrap().into_inner();
    assert!(r.tcp_reachable && r.udp_reachable, "{r:?}");
    assert_eq!(
        (r.host_port, r.target.clone()),
        (u32::from(config.ports.pool), format!("127.0.0.1:{}", config.ports.pool))
    );
    assert_eq!((r.pool_size, r.allocated), (u32::from(e2e::POOL_PORTS), 0), "{r:?}");
    // A held port is not listened on: the check takes the next.
    let mut req = request("sleep 600");
    req.ports = vec![port(80, "tcp")];
    client.create(req).await.unwrap();
    let r = client.check_ports(pb::CheckPortsRequest {}).await.unwrap().into_inner();
    assert_eq!((r.host_port, r.allocated), (u32::from(config.ports.pool) + 1, 1), "{r:?}");
    remove_all(&mut client).await;

    // Behind a router forwarding other port numbers: renters are told the router's port, and
    // the check says what it cannot see.
    let (pool, external) = (config.ports.pool, 50000 + config.ports.pool % 10000);
    let last = pool + e2e::POOL_PORTS - 1;
    let body = format!(
        "ranges = [\"{pool}-{last}\"]\n[[docker.ports.nat]]\nhost = \"{pool}-{last}\"\nexternal = \"{external}-{}\"",
        external + e2e::POOL_PORTS - 1
    );
    let config = TestConfig::with_ports(&body, "");
    let (_service, mut client) = start_service(&config).await;
    let mut req = request("sleep 600");
    req.ports = vec![port(80, "tcp")];
    let c = client.create(req).await.unwrap().into_inner();
    assert_eq!(c.ports[0].host_port, u32::from(pool), "{c:?}");
    assert_eq!(c.ports[0].external_port, u32::from(external), "{c:?}");
    assert_eq!(c.ports[0].external_endpoint, format!("127.0.0.1:{external}"), "{c:?}");
    let r = client.check_ports(pb::CheckPortsRequest {}).await.unwrap().into_inner();
    assert!(r.tcp_reachable && r.udp_reachable, "{r:?}");
    assert!(r.note.contains("(docker.ports.nat): the router's forward"), "{r:?}");
    remove_all(&mut client).await;

    // An external host that is not this machine (TEST-NET-2, routed nowhere here).
    let config = TestConfig::with_ports("external_host = \"198.51.100.77\"", "");
    let (_service, mut client) = start_service(&config).await;
    let r = client.check_ports(pb::CheckPortsRequest {}).await.unwrap().into_inner();
    assert!(!r.tcp_reachable && !r.udp_reachable, "{r:?}");
    assert!(!r.tcp_error.is_empty() && r.udp_error.contains("198.51.100.77"), "{r:?}");
}

/// What a miner types: `executor ctl containers create --port`, `ports check`.
#[tokio::test]
async fn executor_ctl_publishes_ports_and_checks_the_pool() {
    if !busybox_image().await {
        return;
    }
    let node = e2e::Node::start(TestConfig::new("")).await;
    let seed = node.config.dir.path().join("miner.seed");
    std::fs::write(&seed, format!("{}\n", e2e::ALICE_SEED)).unwrap();
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "--config", node.config.path.to_str().unwrap(), "--key-file", seed.to_str().unwrap()];
        all.extend(args);
        let all: Vec<String> = all.iter().map(|a| (*a).to_owned()).collect();
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            e2e::run("executor", &all, &[]).await
        }
    };
    let pool = node.config.ports.pool;
    let wanted = (pool + 5).to_string();
    let image = e2e::BUSYBOX_IMAGE;
    let out =
        ctl(&["containers", "create", "--image", image, "--port", "8080", "--port", "53/udp", "--", "sleep", "60"])
            .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ports = created["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 2, "{created}");
    assert_eq!(ports[0]["external_endpoint"], format!("127.0.0.1:{pool}"), "{created}");
    assert_eq!((ports[1]["container_port"].as_u64(), ports[1]["protocol"].as_str()), (Some(53), Some("udp")));
    let out = ctl(&["containers", "create", "--image", image, "--port", "8080", "--host-port", &wanted]).await;
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["ports"][0]["host_port"].as_u64(), Some(u64::from(pool) + 5), "{created}");
    let out = ctl(&["containers", "create", "--image", image, "--port", "8080", "--host-port", "50051"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ports[0].host_port: 50051 is not in docker.ports.ranges"));
    let out = ctl(&["containers", "create", "--image", image, "--port", "80/sctp"]).await;
    assert_eq!(out.status.code(), Some(2), "a bad --port is a usage error");
    let out = ctl(&["ports", "check"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((check["tcp_reachable"].as_bool(), check["allocated"].as_u64()), (Some(true), Some(3)), "{check}");
    let all: serde_json::Value = {
        let out = ctl(&["containers", "list", "--all"]).await;
        let lines = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        serde_json::Value::Array(lines)
    };
    for c in all.as_array().unwrap() {
        let out = ctl(&["containers", "remove", "--force", c["id"].as_str().unwrap()]).await;
        assert!(out.status.success());
    }
}

/// Issue 22 item 2: a port added to a running rental makes it again under the same id, with
/// its volume, its other port on the same host port and its TTL; it runs again and says so
/// (`recreated_at`, a `RECREATED` event). Its writable layer starts fresh. A port published
/// already is refused by name, and nothing changes.
#[tokio::test]
async fn a_port_added_to_a_rental_recreates_it_keeping_its_volume_and_ports() {
    if !busybox_image().await || !require_tool("root (mount, loop devices)", is_root()) {
        return;
    }
    let config = TestConfig::with_ports("", "");
    let (_service, mut client) = start_service(&config).await;
    client.create_volume(pb::CreateVolumeRequest { name: "keep".into(), size_bytes: 16 << 20 }).await.unwrap();
    let mut r = request("nc -ll -p 8080 -e echo first & nc -ll -p 9090 -e echo second");
    r.ports = vec![port(8080, "tcp")];
    r.volumes = vec![pb::VolumeMount { volume: "keep".into(), container_path: "/vol".into(), read_only: false }];
    let created = client.create(r).await.unwrap().into_inner();
    let rental = client.start(pb::ContainerRef { id: created.id.clone() }).await.unwrap().into_inner();
    let first_port = rental.ports[0].host_port;
    assert_eq!(greeting(first_port).await, "first");
    let out = exec(&mut client, &rental.id, "echo kept > /vol/marker && echo lost > /layer && sync").await;
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    let mut events = client
        .events(pb::WatchEventsRequest { only_new: true, container_id: rental.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();

    // Published already: refused by name, the container untouched.
    let again =
        pb::UpdateContainerRequest { id: rental.id.clone(), add_ports: vec![port(8080, "tcp")], ..Default::default() };
    let err = client.update(again).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(err.message(), format!("add_ports[0]: 8080/tcp is published already, on host port {first_port}"));
    let bad =
        pb::UpdateContainerRequest { id: rental.id.clone(), add_ports: vec![port(70000, "tcp")], ..Default::default() };
    let err = client.update(bad).await.unwrap_err();
    assert_eq!(err.message(), "add_ports.container_port: 70000 is not a port");
    let same = client.get(pb::ContainerRef { id: rental.id.clone() }).await.unwrap().into_inner();
    assert_eq!((same.docker_id.as_str(), same.recreated_at), (rental.docker_id.as_str(), 0));

    let add =
        pb::UpdateContainerRequest { id: rental.id.clone(), add_ports: vec![port(9090, "tcp")], ..Default::default() };
    let updated = client.update(add).await.unwrap().into_inner();
    assert_ne!(updated.docker_id, rental.docker_id, "not made again");
    assert!(updated.recreated_at > 0, "{updated:?}");
    assert_eq!(updated.state, pb::ContainerState::Running as i32, "{updated:?}");
    assert_eq!((updated.expires_at, updated.owner.as_str()), (rental.expires_at, rental.owner.as_str()));
    let published: Vec<(u32, u32)> = updated.ports.iter().map(|p| (p.container_port, p.host_port)).collect();
    assert_eq!(published.len(), 2, "{published:?}");
    assert_eq!(published[0], (8080, first_port));
    assert_eq!(greeting(first_port).await, "first");
    assert_eq!(greeting(published[1].1).await, "second");
    let out = exec(&mut client, &rental.id, "cat /vol/marker; cat /layer 2>/dev/null || echo fresh").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\nfresh\n");
    let listed = client.list(pb::ListContainersRequest { all: true, owner: String::new() }).await.unwrap();
    assert_eq!(listed.into_inner().containers.len(), 1, "the replaced container is gone");

    // Said in the events: the old one's end, then the recreation, then the new one's start.
    let mut kinds = Vec::new();
    while kinds.last() != Some(&pb::EventKind::Started) {
        let event = tokio::time::timeout(Duration::from_secs(10), events.message()).await.unwrap().unwrap().unwrap();
        if event.kind() == pb::EventKind::Recreated {
            let why = format!("recreated to publish 9090/tcp on host port {}", published[1].1);
            assert!(event.reason.starts_with(&why), "{event:?}");
        }
        kinds.push(event.kind());
    }
    assert_eq!(kinds, [pb::EventKind::Died, pb::EventKind::Recreated, pb::EventKind::Started]);
    remove_all(&mut client).await;
    client.delete_volume(pb::DeleteVolumeRequest { name: "keep".into() }).await.unwrap();
}

/// While an update makes a rental again, its old container is renamed aside before the new one
/// is created (`Engine::recreate`): a listing in that moment must still show the rental, or
/// validator-access takes it for removed and drops its renters' keys. The moment is made here
/// by renaming the container as the recreate does; with the new one there too, it is listed once.
#[tokio::test]
async fn a_rental_renamed_aside_by_a_recreate_is_still_listed_once() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("");
    let (_service, mut client) = start_service(&config).await;
    let created = client.create(request("sleep 600")).await.unwrap().into_inner();
    let id = created.id.clone();
    let listed = |client: &mut e2e::runtime::Client| {
        let mut client = client.clone();
        async move {
            let all = pb::ListContainersRequest { all: true, owner: String::new() };
            client.list(all).await.unwrap().into_inner().containers.into_iter().map(|c| c.id).collect::<Vec<_>>()
        }
    };
    let aside = format!("{id}-replaced");
    let (ok, out) = e2e::runtime::docker(&["rename", &id, &aside]).await;
    assert!(ok, "{out}");
    assert_eq!(listed(&mut client).await, vec![id.clone()], "the rental is left out while renamed aside");
    // The new container of the same rental (made here as the recreate makes it): one entry.
    let (ok, out) = e2e::runtime::docker(&[
        "create",
        "--name",
        &id,
        "--label=ai.basilica.executor.managed=true",
        &format!("--label=ai.basilica.executor.executor_id={}", executor_id_of(&aside).await),
        &format!("--label=ai.basilica.executor.id={id}"),
        e2e::BUSYBOX_IMAGE,
        "sleep",
        "600",
    ])
    .await;
    assert!(ok, "{out}");
    assert_eq!(listed(&mut client).await, vec![id.clone()], "listed twice while both are there");
    e2e::runtime::docker(&["rm", "-f", &aside]).await;
    client.remove(pb::RemoveContainerRequest { id, force: true }).await.unwrap();
}

async fn executor_id_of(container: &str) -> String {
    let format = "{{index .Config.Labels \"ai.basilica.executor.executor_id\"}}";
    e2e::runtime::docker(&["inspect", "-f", format, container]).await.1.trim().to_owned()
}
