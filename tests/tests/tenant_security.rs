//! A tenant container, as the executor creates it by default, trying to get out: the
//! executor's sockets, the host's services, the cloud metadata address, the kernel's knobs,
//! devices, mounts and the network stack. Every attempt must fail. (Other tenants and the
//! private ranges with internet on are in `container_runtime` and `container_limits`.)

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use common::ServiceName;
use common::proto::runtime::v1 as pb;
use e2e::runtime::{exec, inspect, remove_all, request, run, start_service};
use e2e::{TestConfig, busybox_image, derived_image, nosuid_nodev_mount, unmount};
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

/// Issue 18 item 8: an allowed host path reaches a tenant only from a `nosuid,nodev` mount (the
/// bind mount keeps those flags; Docker cannot add them), and is refused otherwise.
#[tokio::test]
async fn host_paths_come_only_from_nosuid_nodev_mounts() {
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
    let err = client.create(r.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("mounts[0].host_path") && err.message().contains("nosuid,nodev"),
        "{}",
        err.message()
    );
    if !nosuid_nodev_mount(&shared).await {
        return;
    }
    let c = run(&mut client, r).await;
    let mounts = exec(&mut client, &c.id, "grep ' /data ' /proc/self/mountinfo").await;
    let line = String::from_utf8_lossy(&mounts.stdout).into_owned();
    let options = line.split_whitespace().nth(5).unwrap_or_default().to_owned();
    remove_all(&mut client).await;
    unmount(&shared).await;
    assert!(options.split(',').any(|o| o == "nosuid") && options.split(',').any(|o| o == "nodev"), "{line}");
}
