//! A tenant container, as the executor creates it by default, trying to get out: the
//! executor's sockets, the host's services, the cloud metadata address, the kernel's knobs,
//! devices, mounts and the network stack, over IPv4 and IPv6. Every attempt must fail. (Other
//! tenants are in `container_runtime`, egress shaping in `container_limits`.)

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::time::{Duration, Instant};

use common::ServiceName;
use common::process::ProcessSpec;
use common::proto::runtime::v1 as pb;
use e2e::lan::{self, Lan};
use e2e::process::{is_root, sh, which};
use e2e::runtime::{exec, inspect, remove_all, request, run, start_service};
use e2e::{TestConfig, busybox_image, derived_image, require_tool};
use tonic::Code;

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

/// Issue 18 item 2: where the NVIDIA runtime is Docker's default, `NVIDIA_VISIBLE_DEVICES`
/// from the image (every `nvidia/cuda` image says `all`) or from the tenant would hand out
/// every GPU. A container without GPUs is told `void`, and the tenant may not set `NVIDIA_*`.
#[tokio::test]
async fn a_tenant_gets_no_gpu_by_environment() {
    if !busybox_image().await {
        return;
    }
    let image = "basilica-test/all-gpus:latest";
    derived_image(image, "ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=all").await;
    let config = TestConfig::new("");
    let (_service, mut client) = start_service(&config).await;
    let mut r = request("sleep 600");
    r.image = image.into();
    let c = run(&mut client, r).await;
    let out = exec(&mut client, &c.id, "echo \"$NVIDIA_VISIBLE_DEVICES $NVIDIA_DRIVER_CAPABILITIES\"").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "void compute,utility\n", "{out:?}");
    for key in ["NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "nvidia_visible_devices"] {
        let mut r = request("sleep 600");
        r.env.insert(key.into(), "all".into());
        let err = client.create(r).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(&format!("env: `{key}`")), "{}", err.message());
    }
    remove_all(&mut client).await;
}

/// Issue 18 item 6: tools on the host act on their own labels (Watchtower recreates a container
/// labelled for it, outside the executor's control: no shaping, no admission). A tenant's labels
/// live under `ai.basilica.tenant.`; an image's Watchtower label is overridden.
#[tokio::test]
async fn a_tenant_cannot_label_its_container_for_other_tools() {
    if !busybox_image().await {
        return;
    }
    let image = "basilica-test/watchtower-enabled:latest";
    derived_image(image, "LABEL com.centurylinklabs.watchtower.enable=true").await;
    let config = TestConfig::new("");
    let (_service, mut client) = start_service(&config).await;
    for key in ["com.centurylinklabs.watchtower.enable", "traefik.enable", "com.docker.compose.project", "team"] {
        let mut r = request("sleep 600");
        r.labels.insert(key.into(), "true".into());
        let err = client.create(r).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{key}: {err:?}");
        assert!(err.message().contains(&format!("labels: `{key}`: tenant labels are")), "{}", err.message());
    }
    let mut r = request("sleep 600");
    r.image = image.into();
    r.labels.insert("ai.basilica.tenant.team".into(), "a".into());
    let c = run(&mut client, r).await;
    let watchtower = inspect(&c.docker_id, "{{index .Config.Labels \"com.centurylinklabs.watchtower.enable\"}}").await;
    assert_eq!(watchtower, "false", "the image's Watchtower label reached the container");
    let got = client.get(pb::ContainerRef { id: c.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.labels, std::collections::HashMap::from([("ai.basilica.tenant.team".to_owned(), "a".to_owned())]));
    remove_all(&mut client).await;
}

/// Issue 18 item 8: seccomp is on (pinned, never the daemon's `unconfined` default), AppArmor's
/// `docker-default` where the host has AppArmor, and root in the container cannot read or
/// chmod another user's files (no DAC_OVERRIDE, no FOWNER) unless `[docker]
/// extra_capabilities` asks for them.
#[tokio::test]
async fn a_tenant_is_confined_by_seccomp_apparmor_and_fewer_capabilities() {
    if !busybox_image().await {
        return;
    }
    // Root makes a file of user 1000 that only its owner may read, then tries to read it and
    // change its mode.
    let read_others = "echo secret > /tmp/f && chmod 600 /tmp/f && chown 1000 /tmp/f && cat /tmp/f";
    let chmod_others = "touch /tmp/g && chown 1000 /tmp/g && chmod 600 /tmp/g";
    let apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.trim() == "Y");
    for (extra, allowed) in [("", false), ("\n[docker]\nextra_capabilities = [\"DAC_OVERRIDE\", \"FOWNER\"]\n", true)] {
        let config = TestConfig::new(extra);
        let (_service, mut client) = start_service(&config).await;
        let c = run(&mut client, request("sleep 600")).await;
        let status = exec(&mut client, &c.id, "grep -E '^(Seccomp|CapEff):' /proc/self/status").await;
        let status = String::from_utf8_lossy(&status.stdout).into_owned();
        assert!(status.contains("Seccomp:\t2"), "no seccomp filter: {status}");
        let cap_eff = status.lines().find_map(|l| l.strip_prefix("CapEff:\t")).unwrap();
        let cap_eff = u64::from_str_radix(cap_eff.trim(), 16).unwrap();
        // CAP_DAC_OVERRIDE is bit 1, CAP_FOWNER bit 3.
        assert_eq!(cap_eff & 0b1010 == 0b1010, allowed, "{extra:?}: CapEff {cap_eff:#x}");
        assert_eq!(cap_eff & 0b1010 == 0, !allowed, "{extra:?}: CapEff {cap_eff:#x}");
        let read = exec(&mut client, &c.id, read_others).await;
        assert_eq!(read.exit_code == 0, allowed, "{extra:?}: reading another user's file: {read:?}");
        let chmod = exec(&mut client, &c.id, chmod_others).await;
        assert_eq!(chmod.exit_code == 0, allowed, "{extra:?}: changing another user's file mode: {chmod:?}");
        let profile = exec(&mut client, &c.id, "cat /proc/self/attr/current").await;
        let profile = String::from_utf8_lossy(&profile.stdout).into_owned();
        if apparmor {
            assert_eq!(profile.trim(), "docker-default (enforce)");
        } else {
            eprintln!("AppArmor is not enabled on this host: the profile is not checked ({profile:?})");
        }
        remove_all(&mut client).await;
    }
}

/// Issue 18 item 8: an allowed host path reaches a tenant `nosuid,nodev` (Docker's API cannot set
/// these on a bind mount; the staging mount of item 1 carries them and Docker's bind keeps them),
/// from any directory the operator allows, without preparing a mount of its own.
#[tokio::test]
async fn host_paths_reach_tenants_nosuid_nodev() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("\n[docker]\nallowed_host_paths = [\"{dir}/shared\"]\n");
    let shared = config.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let (_service, mut client) = start_service(&config).await;
    let mut r = request("sleep 600");
    r.mounts =
        vec![pb::Mount { host_path: shared.display().to_string(), container_path: "/data".into(), read_only: false }];
    let c = run(&mut client, r).await;
    let mounts = exec(&mut client, &c.id, "grep ' /data ' /proc/self/mountinfo").await;
    let line = String::from_utf8_lossy(&mounts.stdout).into_owned();
    let options = line.split_whitespace().nth(5).unwrap_or_default().to_owned();
    remove_all(&mut client).await;
    assert!(options.split(',').any(|o| o == "nosuid") && options.split(',').any(|o| o == "nodev"), "{line}");
}

/// Issue 18 item 1, the bind-mount swap: Docker resolves a bind mount's source again at every
/// start, so a tenant who writes under an allowed path swaps a mounted directory for a symlink to
/// `/` and, at the next start (an engine restart starts containers again), gets the host's root:
/// `/run/docker.sock`, the executor's key. Docker must be given something a tenant cannot change.
#[tokio::test]
async fn a_swapped_bind_mount_source_does_not_reach_the_host() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("\n[docker]\nallowed_host_paths = [\"{dir}/shared\"]\n");
    let shared = config.dir.path().join("shared");
    let victim_dir = shared.join("project");
    std::fs::create_dir_all(&victim_dir).unwrap();
    std::fs::write(victim_dir.join("mine"), "tenant data\n").unwrap();
    let (_service, mut client) = start_service(&config).await;
    let mut r = request("sleep 600");
    r.mounts = vec![pb::Mount {
        host_path: victim_dir.display().to_string(),
        container_path: "/data".into(),
        read_only: false,
    }];
    let c = run(&mut client, r).await;
    assert_eq!(String::from_utf8_lossy(&exec(&mut client, &c.id, "cat /data/mine").await.stdout), "tenant data\n");

    // Another tenant with write access under `shared` swaps the directory for a symlink to `/`
    // while the container is stopped; the engine then starts it again.
    async fn docker(args: &[&str]) -> common::process::CapturedOutput {
        let spec = common::process::ProcessSpec::new("docker").args(args.iter().copied());
        spec.output(Duration::from_secs(60), 1 << 16).await.unwrap()
    }
    assert!(docker(&["stop", "-t", "1", &c.id]).await.status.success());
    std::fs::rename(&victim_dir, shared.join("project.old")).unwrap();
    std::os::unix::fs::symlink("/", &victim_dir).unwrap();
    let started = docker(&["start", &c.id]).await;
    if started.status.success() {
        let seen =
            exec(&mut client, &c.id, "ls /data; test -e /data/run/docker.sock || test -e /data/etc/hostname").await;
        assert_ne!(seen.exit_code, 0, "the container sees the host's root: {}", String::from_utf8_lossy(&seen.stdout));
        let mine = exec(&mut client, &c.id, "cat /data/mine").await;
        assert_eq!(String::from_utf8_lossy(&mine.stdout), "tenant data\n", "the mount is the object that was checked");
    }
    // (A start that fails is safe too; with the staging mount it succeeds and sees the original.)
    assert!(started.status.success(), "{}", e2e::process::text(&started));

    // Removing the container removes its staging mount.
    let staging = config.runtime_dir().join("mounts").join(&c.id);
    assert!(staging.exists());
    remove_all(&mut client).await;
    assert!(!staging.exists(), "the staging path outlived its container");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&staging.display().to_string()), "the staging mount outlived its container");
}

/// Issue 18 item 7: containers had no log rotation and no disk limit, so a tenant could fill the
/// host's disk (and the node then stops persisting grants). Now a container writing past
/// `writable_layer_bytes` is stopped with `disk_quota`, and a chatty one's logs stay within
/// `log_max_size × log_max_files`.
#[tokio::test]
async fn a_container_filling_the_disk_is_stopped_and_logs_stay_bounded() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new(
        "\n[docker]\nreap_interval = \"1s\"\nlog_max_size = 65536\nlog_max_files = 2\n\
         [docker.resource_limits]\nwritable_layer_bytes = 33554432\n",
    );
    let (_service, mut client) = start_service(&config).await;
    // A create may ask for less than the configured limit, never more.
    let with_disk = |command: &str, disk_bytes: u64| {
        let mut r = request(command);
        r.resources.as_mut().unwrap().disk_bytes = disk_bytes;
        r
    };
    let e = client.create(with_disk("true", 64 << 20)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert_eq!(e.message(), "resources.disk_bytes: 67108864 is more than the limit of 33554432");
    // 16 MiB into the writable layer (not /tmp: that is a tmpfs with its own size): over the
    // 8 MiB this one asked for, under the 32 MiB the other one has.
    let fill = "dd if=/dev/zero of=/fill bs=1M count=16 && sleep 600";
    let filler = run(&mut client, with_disk(fill, 8 << 20)).await;
    let roomy = run(&mut client, request(fill)).await;
    // Two megabytes of log lines, then quiet.
    let chatty = run(
        &mut client,
        request("i=0; while [ $i -lt 20000 ]; do echo \"line $i of a tenant that talks far too much\"; i=$((i+1)); done; sleep 600"),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stopped = loop {
        let c = client.get(pb::ContainerRef { id: filler.id.clone() }).await.unwrap().into_inner();
        if c.state() != pb::ContainerState::Running {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "a container over its writable layer limit still runs");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(stopped.stop_reason.starts_with("disk_quota: the writable layer holds "), "{stopped:?}");
    assert!(stopped.stop_reason.ends_with("over the limit of 8388608"), "{stopped:?}");
    let stats = client.stats(pb::ContainerRef { id: roomy.id.clone() }).await.unwrap().into_inner();
    assert_eq!(
        client.get(pb::ContainerRef { id: roomy.id.clone() }).await.unwrap().into_inner().state(),
        pb::ContainerState::Running
    );
    assert!(stats.writable_layer_bytes >= 16 << 20, "{stats:?}");
    assert_eq!(stats.writable_layer_limit_bytes, 32 << 20, "{stats:?}");

    // The chatty container keeps at most 2 files of 64 KiB (Docker rotates as it writes).
    let chatty_running = client.get(pb::ContainerRef { id: chatty.id.clone() }).await.unwrap().into_inner();
    assert_eq!(chatty_running.state(), pb::ContainerState::Running, "{chatty_running:?}");
    let inspect = common::process::ProcessSpec::new("docker")
        .args(["inspect", "--format", "{{.LogPath}}", &chatty.id])
        .output(Duration::from_secs(30), 1 << 16)
        .await
        .unwrap();
    let log_path = std::path::PathBuf::from(String::from_utf8_lossy(&inspect.stdout).trim());
    let dir = log_path.parent().unwrap();
    let logs: u64 = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("-json.log"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(logs > 0 && logs <= 2 * 65536 + 4096, "{logs} bytes of logs in {}", dir.display());
    remove_all(&mut client).await;
}

/// `online` with `allow_internet = true`: the provider's LAN, the metadata and platform
/// addresses, and every other range that is not public unicast are out of reach; the
/// internet is not. Each container's network is made after the service put its rules in place,
/// and Docker puts each new network's `ACCEPT` at the top of filter FORWARD: two of them, so
/// the second tenant's network also comes after another one's.
#[tokio::test]
async fn an_online_tenant_reaches_the_internet_but_no_reserved_range() {
    if !busybox_image().await || !require_tool("root (ip netns)", is_root()) {
        return;
    }
    let lan = Lan::new().await;
    let config = TestConfig::new("\n[docker.network_config]\nallow_internet = true\n");
    let (_service, mut client) = start_service(&config).await;
    let first = run(&mut client, request("sleep 600")).await;
    let second = run(&mut client, request("sleep 600")).await;
    // Every address at once (a blocked one costs the whole timeout); each answer names its address.
    let probe = std::iter::once(lan::PUBLIC)
        .chain(lan::BLOCKED)
        .map(|ip| format!("(nc -w 2 {ip} 8080 </dev/null | sed 's/^/{ip} /') &"))
        .chain(["wait".to_owned()])
        .collect::<Vec<_>>()
        .join("\n");
    for c in [&first, &second] {
        let out = exec(&mut client, &c.id, &probe).await;
        let answers = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(answers.trim(), format!("{} hello", lan::PUBLIC), "{out:?}");
    }
    // The same address from the host works: the block is the tenants' alone.
    let (ok, text) = sh("busybox", &["nc", "-w", "3", lan::BLOCKED[0], "8080"]).await;
    assert!(ok && text.contains("hello"), "{text}");
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
    for rule in [
        ["filter", "INPUT", "bas-+"],
        ["mangle", "FORWARD", "bas-+"],
        ["filter", "INPUT", "bai-+"],
        ["mangle", "FORWARD", "bai-+"],
    ] {
        let (ok, text) = sh("ip6tables", &["-t", rule[0], "-C", rule[1], "-i", rule[2], "-j", "DROP"]).await;
        assert!(ok, "ip6tables rule {rule:?} missing: {text}");
    }

    // The engine's part undone: IPv6 on, and a default route through the gateway.
    let pid = inspect(&c.id, "{{.State.Pid}}").await;
    let network = inspect(&c.id, "{{index .Config.Labels \"ai.basilica.executor.network\"}}").await;
    let bridge = container_runtime::firewall::bridge_name(&network, true);
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
