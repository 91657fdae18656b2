//! A tenant container, as the executor creates it by default, trying to get out: the
//! executor's sockets, the host's services, the cloud metadata address, the kernel's knobs,
//! devices, mounts and the network stack, over IPv4 and IPv6. Every attempt must fail. (Other
//! tenants are in `container_runtime`, egress shaping in `container_limits`.)

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::time::{Duration, Instant};

use common::ServiceName;
use common::process::ProcessSpec;
use e2e::lan::{self, Lan};
use e2e::process::{is_root, sh, which};
use e2e::runtime::{exec, inspect, remove_all, request, run, start_service};
use e2e::{TestConfig, busybox_image, require_tool};

#[tokio::test]
async fn a_tenant_cannot_break_out() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("");
    let (_service, mut client) = start_service(&config).await;
    let c = run(&mut client, request("sleep 600")).await;
    let socket = ServiceName::ContainerRuntime.socket(&config.runtime_dir());
    assert!(socket.exists());
    let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = host.local_addr().unwrap().port();
    host.set_nonblocking(true).unwrap();
    let attempts = [
        ("the executor's socket", format!("ls {}", socket.display())),
        (
            "a host service through the gateway",
            format!(
                "gw=$(ip route | awk '/default/ {{print $3}}'); nc -w 2 \"$gw\" {port} </dev/null && test -n \"$gw\""
            ),
        ),
        ("the cloud metadata address", "nc -w 2 169.254.169.254 80 </dev/null".into()),
        ("a kernel setting", "echo 1 > /proc/sys/kernel/sysrq".into()),
        ("a block device node", "mknod /tmp/disk b 8 0".into()),
        ("a mount", "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m".into()),
        ("the network stack", "ip link add evil0 type dummy".into()),
        ("the host's processes", "kill -0 1 && test \"$(cat /proc/1/comm)\" != docker-init".into()),
        ("running from /tmp", "cp /bin/busybox /tmp/bb && /tmp/bb true".into()),
    ];
    for (what, script) in attempts {
        let out = exec(&mut client, &c.id, &script).await;
        assert_ne!(out.exit_code, 0, "a tenant reached {what}: {out:?}");
    }
    assert!(host.accept().is_err(), "the host saw a connection from a tenant");
    // And it still works as a container: the same shell runs ordinary commands.
    assert_eq!(exec(&mut client, &c.id, "echo fine").await.exit_code, 0);
    remove_all(&mut client).await;
}

/// `online` with `allow_internet = true`: the provider's LAN, the metadata and platform
/// addresses, and every other range that is not public unicast are out of reach; the
/// internet is not.
#[tokio::test]
async fn an_online_tenant_reaches_the_internet_but_no_reserved_range() {
    if !busybox_image().await || !require_tool("root (ip netns)", is_root()) {
        return;
    }
    let lan = Lan::new().await;
    let config = TestConfig::new("\n[docker.network_config]\nallow_internet = true\n");
    let (_service, mut client) = start_service(&config).await;
    let c = run(&mut client, request("sleep 600")).await;
    let probe = |ip: &str| format!("nc -w 2 {ip} 8080 </dev/null; true");
    let public = exec(&mut client, &c.id, &probe(lan::PUBLIC)).await;
    assert_eq!(String::from_utf8_lossy(&public.stdout).trim(), "hello", "no egress at all: {public:?}");
    for blocked in lan::BLOCKED {
        let out = exec(&mut client, &c.id, &probe(blocked)).await;
        assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty(), "a tenant reached {blocked}: {out:?}");
    }
    remove_all(&mut client).await;
    lan.remove().await;
}

/// The IPv6 address of `device` in `scope` (`link` or `global`), once it is usable (not tentative).
async fn ipv6_address(netns_of: Option<&str>, device: &str, scope: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut args = vec!["-6", "-o", "addr", "show", "scope", scope];
        if !device.is_empty() {
            args.extend(["dev", device]);
        }
        let (_, text) = match netns_of {
            Some(pid) => sh("nsenter", &[&["-t", pid, "-n", "ip"][..], &args].concat()).await,
            None => sh("ip", &args).await,
        };
        let line = text.lines().find(|l| l.contains("inet6") && !l.contains("tentative") && !l.contains("deprecated"));
        if let Some(address) = line.and_then(|l| l.split_whitespace().skip_while(|w| *w != "inet6").nth(1)) {
            return Some(address.split('/').next().unwrap().to_owned());
        }
        if Instant::now() > deadline || !text.contains("tentative") {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A tenant gets no IPv6 inside its container, and were the engine to give it some anyway (an
/// engine whose IPv4-only networks leave IPv6 on, as this test makes it), the host is still out
/// of reach over IPv6: the gateway's link-local address and the host's own addresses.
#[tokio::test]
async fn a_tenant_cannot_reach_the_host_over_ipv6() {
    if !busybox_image().await
        || !require_tool("root and nsenter", is_root() && which("nsenter"))
        || !require_tool("IPv6 in the host kernel", std::path::Path::new("/proc/sys/net/ipv6").exists())
    {
        return;
    }
    let config = TestConfig::new("\n[docker.network_config]\nallow_internet = true\n");
    let (_service, mut client) = start_service(&config).await;
    let c = run(&mut client, request("sleep 600")).await;
    // Off inside, by our own create body, not by the engine's defaults.
    let sysctls = inspect(&c.id, "{{json .HostConfig.Sysctls}}").await;
    assert!(sysctls.contains("\"net.ipv6.conf.all.disable_ipv6\":\"1\""), "{sysctls}");
    let inside = exec(&mut client, &c.id, "cat /proc/sys/net/ipv6/conf/all/disable_ipv6").await;
    assert_eq!(String::from_utf8_lossy(&inside.stdout).trim(), "1", "{inside:?}");
    for rule in [["INPUT", "-i", "bas-+", "-j", "DROP"], ["FORWARD", "-i", "bas-+", "-j", "DROP"]] {
        let chain = if rule[0] == "FORWARD" && sh("ip6tables", &["-S", "DOCKER-USER"]).await.0 {
            "DOCKER-USER"
        } else {
            rule[0]
        };
        let (ok, text) = sh("ip6tables", &[&["-C", chain][..], &rule[1..]].concat()).await;
        assert!(ok, "ip6tables rule {chain} {rule:?} missing: {text}");
    }

    // The engine's part undone: IPv6 on, and a default route through the gateway.
    let pid = inspect(&c.id, "{{.State.Pid}}").await;
    let network = inspect(&c.id, "{{index .Config.Labels \"ai.basilica.executor.network\"}}").await;
    let bridge = container_runtime::firewall::bridge_name(&network);
    for key in ["all", "default", "eth0", "lo"] {
        let setting = format!("net.ipv6.conf.{key}.disable_ipv6=0");
        let (ok, text) = sh("nsenter", &["-t", &pid, "-n", "sysctl", "-qw", &setting]).await;
        assert!(ok, "{setting}: {text}");
    }
    let gateway = ipv6_address(None, &bridge, "link").await.expect("the bridge's link-local address");
    ipv6_address(Some(&pid), "eth0", "link").await.expect("the container's link-local address");
    let (ok, text) =
        sh("nsenter", &["-t", &pid, "-n", "ip", "-6", "route", "add", "default", "via", &gateway, "dev", "eth0"]).await;
    assert!(ok, "{text}");

    let host = std::net::TcpListener::bind("[::]:0").unwrap();
    let port = host.local_addr().unwrap().port();
    host.set_nonblocking(true).unwrap();
    let mut targets = vec![("the gateway's link-local address", format!("{gateway}%eth0"))];
    match ipv6_address(None, "", "global").await {
        Some(own) => targets.push(("the host's own IPv6 address", own)),
        None => println!("the host has no global or ULA IPv6 address: only the link-local attempt runs"),
    }
    for (what, address) in targets {
        let out = exec(&mut client, &c.id, &format!("nc -w 2 {address} {port} </dev/null")).await;
        assert_ne!(out.exit_code, 0, "a tenant reached the host at {what} {address}: {out:?}");
    }
    assert!(host.accept().is_err(), "the host saw a connection from a tenant over IPv6");
    remove_all(&mut client).await;
}

/// Tenants on Docker's default bridge would share it with the host and everything on it: an
/// online tenant gets a network of its own or none, so the combination is refused.
#[tokio::test]
async fn online_without_isolation_is_refused() {
    let config = TestConfig::new("\n[docker.network_config]\nenable_isolation = false\nallow_internet = true\n");
    let out = e2e::run("container-runtime", &["--config", config.path.to_str().unwrap()], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for key in ["docker.network_config.allow_internet", "docker.network_config.enable_isolation"] {
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }
}

/// Where ip6tables cannot be used, container-runtime still starts, says so, and its tenants
/// still have no IPv6.
#[tokio::test]
async fn without_ip6tables_tenants_still_have_no_ipv6() {
    if !busybox_image().await
        || !require_tool("root and IPv6", is_root() && std::path::Path::new("/proc/sys/net/ipv6").exists())
    {
        return;
    }
    let config = TestConfig::new("");
    let bin = config.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("ip6tables");
    std::fs::write(&fake, "#!/bin/sh\necho \"ip6tables: can't initialize ip6tables table 'filter'\" >&2\nexit 3\n")
        .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut service = ProcessSpec::new(e2e::binary("container-runtime"))
        .arg("--config")
        .arg(&config.path)
        .env("PATH", path)
        .env(e2e::NO_SPARE_NETWORKS.0, e2e::NO_SPARE_NETWORKS.1)
        .spawn_supervised()
        .unwrap();
    let socket = ServiceName::ContainerRuntime.socket(&config.runtime_dir());
    e2e::wait_serving(&socket, Duration::from_secs(30)).await.expect("container-runtime serving without ip6tables");
    let mut client = common::proto::runtime::v1::container_runtime_client::ContainerRuntimeClient::new(
        common::grpc::unix_channel(&socket),
    );
    let c = run(&mut client, request("sleep 600")).await;
    let inside = exec(&mut client, &c.id, "cat /proc/sys/net/ipv6/conf/all/disable_ipv6").await;
    assert_eq!(String::from_utf8_lossy(&inside.stdout).trim(), "1", "{inside:?}");
    let sysctls = inspect(&c.id, "{{json .HostConfig.Sysctls}}").await;
    assert!(sysctls.contains("\"net.ipv6.conf.all.disable_ipv6\":\"1\""), "{sysctls}");
    remove_all(&mut client).await;
    let _ = service.start_kill();
    let output = service.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("ip6tables is unavailable"), "{log}");
}
