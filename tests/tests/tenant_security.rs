//! A tenant container, as the executor creates it by default, trying to get out: the
//! executor's sockets, the host's services, the cloud metadata address, the kernel's knobs,
//! devices, mounts and the network stack. Every attempt must fail. (Other tenants and the
//! private ranges with internet on are in `container_runtime` and `container_limits`.)

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use common::ServiceName;
use e2e::runtime::{exec, remove_all, request, run, start_service};
use e2e::{TestConfig, busybox_image};

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
