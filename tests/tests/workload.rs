//! Issue 21 item 1: what GPU jobs need beyond CPU and memory. A create's `/dev/shm` size,
//! ulimits, IPC mode, entrypoint, working directory, user and NVIDIA driver capabilities reach
//! the container (seen from inside it, by the real engine), default to `[docker.workload]`'s
//! values, are shown by GetContainer, and are refused by name past their bounds.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use common::proto::runtime::v1 as pb;
use container_runtime::workload::HostLimits;
use e2e::runtime::{exec, remove_all, request, start_service};
use e2e::{TestConfig, busybox_image};
use tonic::Code;

const MIB: u64 = 1 << 20;

/// `script`'s standard output inside `id`, its exit status checked.
async fn inside(client: &mut e2e::runtime::Client, id: &str, script: &str) -> String {
    let out = exec(client, id, script).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.exit_code, 0, "`{script}`: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// The size of `/dev/shm` in bytes, as `df` inside the container says.
async fn shm_size(client: &mut e2e::runtime::Client, id: &str) -> u64 {
    let df = inside(client, id, "df -B1 /dev/shm | tail -1").await;
    df.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("df said {df:?}"))
}

#[tokio::test]
async fn workload_options_reach_the_container_and_default_to_the_config() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("\n[docker.workload]\nnofile = 65536\n");
    let (_service, mut client) = start_service(&config).await;

    // Asked for: each option as the renter gave it.
    let mut r = request("");
    r.command = vec!["-c".into(), "echo started > /tmp/started; exec sleep 600".into()];
    r.resources.as_mut().unwrap().memory_bytes = 256 * MIB;
    let asked = pb::Workload {
        shm_bytes: 200 * MIB,
        memlock: 4 * MIB as i64,
        nofile: 4096,
        stack: 16 * MIB as i64,
        ipc: "shareable".into(),
        entrypoint: vec!["/bin/sh".into()],
        working_dir: "/work".into(),
        user: "1000:1000".into(),
        driver_capabilities: vec!["utility".into()],
    };
    r.workload = Some(asked.clone());
    let created = client.create(r).await.unwrap().into_inner();
    let id = created.id.clone();
    client.start(pb::ContainerRef { id: id.clone() }).await.unwrap();
    assert_eq!(shm_size(&mut client, &id).await, 200 * MIB);
    // busybox's `ulimit` counts -l and -s in KiB.
    let limits = inside(&mut client, &id, "ulimit -l; ulimit -n; ulimit -s").await;
    assert_eq!(limits.split_whitespace().collect::<Vec<_>>(), ["4096", "4096", "16384"], "{limits}");
    let who = inside(&mut client, &id, "id -u; id -g; pwd; cat /tmp/started; echo $NVIDIA_DRIVER_CAPABILITIES").await;
    assert_eq!(who.lines().collect::<Vec<_>>(), ["1000", "1000", "/work", "started", "utility"], "{who}");
    let shown = client.get(pb::ContainerRef { id: id.clone() }).await.unwrap().into_inner().workload.unwrap();
    // GetContainer shows exactly what was asked for, read back from the engine.
    assert_eq!(shown, asked);

    // Not asked for: the config's values (nofile set above, the rest its defaults), /dev/shm
    // half the container's memory instead of Docker's 64 MiB. A host that withholds
    // CAP_SYS_RESOURCE (as this test machine does) lowers them to its own hard limits, which
    // container-runtime shares with this test.
    let host = HostLimits::probe();
    println!("this host's bounds on rlimits: {host:?}");
    let memlock = host.memlock.map_or(-1, |m| m as i64);
    let nofile = host.nofile.unwrap_or(65536).min(65536);
    let stack = host.stack.map_or(64 * MIB, |s| s.min(64 * MIB)) as i64;
    let kib = |bytes: i64| if bytes == -1 { "unlimited".to_owned() } else { (bytes >> 10).to_string() };
    let mut r = request("sleep 600");
    r.resources.as_mut().unwrap().memory_bytes = 256 * MIB;
    let plain = client.create(r).await.unwrap().into_inner().id;
    client.start(pb::ContainerRef { id: plain.clone() }).await.unwrap();
    assert_eq!(shm_size(&mut client, &plain).await, 128 * MIB);
    let limits =
        inside(&mut client, &plain, "ulimit -l; ulimit -n; ulimit -s; id -u; echo $NVIDIA_DRIVER_CAPABILITIES").await;
    let expected = [kib(memlock), nofile.to_string(), kib(stack), "0".to_owned(), "compute,utility".to_owned()];
    assert_eq!(limits.split_whitespace().collect::<Vec<_>>(), expected, "{limits}");
    let shown = client.get(pb::ContainerRef { id: plain.clone() }).await.unwrap().into_inner().workload.unwrap();
    assert_eq!((shown.shm_bytes, shown.memlock, shown.nofile, shown.stack), (128 * MIB, memlock, nofile, stack));
    assert_eq!(shown.ipc, "private");

    // Past the bounds: refused by name, nothing made.
    let refused = [
        (pb::Workload { shm_bytes: 300 * MIB, ..Default::default() }, "workload.shm_bytes"),
        (pb::Workload { nofile: 65537, ..Default::default() }, "workload.nofile"),
        (pb::Workload { ipc: "host".into(), ..Default::default() }, "workload.ipc"),
        (pb::Workload { user: "0;id".into(), ..Default::default() }, "workload.user"),
        (pb::Workload { working_dir: "../x".into(), ..Default::default() }, "workload.working_dir"),
        (
            pb::Workload { driver_capabilities: vec!["video".into()], ..Default::default() },
            "workload.driver_capabilities",
        ),
    ];
    for (workload, field) in refused {
        let mut r = request("sleep 600");
        r.resources.as_mut().unwrap().memory_bytes = 256 * MIB;
        r.workload = Some(workload);
        let status = client.create(r).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    let all = client.list(pb::ListContainersRequest { all: true, owner: String::new() }).await.unwrap().into_inner();
    assert_eq!(all.containers.len(), 2, "a refused create left a container");
    remove_all(&mut client).await;
}

/// Issue 21 item 5: a template of `[docker.templates]` fills what a create leaves empty (image,
/// command, env, ports, shm, volume paths); the request's own fields win, everything is checked
/// against the same bounds, and an unknown template is refused by name.
#[tokio::test]
async fn a_template_fills_what_the_request_leaves_empty() {
    if !busybox_image().await {
        return;
    }
    let root = e2e::process::is_root();
    let config = TestConfig::new(&format!(
        r#"
[docker.templates.lab]
image = "{image}"
command = ["sh", "-c", "echo $GREETING $KEEP > /tmp/env; exec sleep 600"]
env = {{ GREETING = "from-template", KEEP = "kept" }}
ports = ["8888", "6006/udp"]
shm_bytes = 33554432
volume_paths = ["/workspace"]
"#,
        image = e2e::BUSYBOX_IMAGE
    ));
    let (_service, mut client) = start_service(&config).await;

    let templates = client.list_templates(pb::ListTemplatesRequest {}).await.unwrap().into_inner().templates;
    assert_eq!(templates.len(), 1);
    let lab = &templates[0];
    assert_eq!(
        (lab.name.as_str(), lab.shm_bytes, lab.volume_paths.as_slice()),
        ("lab", 32 * MIB, &["/workspace".to_owned()][..])
    );
    let ports: Vec<(u32, &str)> = lab.ports.iter().map(|p| (p.container_port, p.protocol.as_str())).collect();
    assert_eq!(ports, [(8888, "tcp"), (6006, "udp")]);

    // Only the template named, one variable and the volume's name given.
    let mut r = pb::CreateContainerRequest {
        template: "lab".into(),
        owner: e2e::ALICE.into(),
        resources: Some(pb::ResourceRequest { memory_bytes: 64 * MIB, cpu_cores: 0.5, ..Default::default() }),
        ..Default::default()
    };
    r.env.insert("GREETING".into(), "from-request".into());
    if root {
        client.create_volume(pb::CreateVolumeRequest { name: "ws".into(), size_bytes: 16 * MIB }).await.unwrap();
        r.volumes = vec![pb::VolumeMount { volume: "ws".into(), ..Default::default() }];
    }
    let created = client.create(r.clone()).await.unwrap().into_inner();
    let c = client.start(pb::ContainerRef { id: created.id.clone() }).await.unwrap().into_inner();
    assert_eq!((c.template.as_str(), c.image.as_str()), ("lab", "docker.io/basilica-test/busybox:latest"));
    let published: Vec<(u32, &str, bool)> =
        c.ports.iter().map(|p| (p.container_port, p.protocol.as_str(), p.host_port > 0)).collect();
    assert_eq!(published, [(8888, "tcp", true), (6006, "udp", true)], "{c:?}");
    assert_eq!(shm_size(&mut client, &c.id).await, 32 * MIB);
    let mut env = String::new();
    for _ in 0..50 {
        env = inside(&mut client, &c.id, "cat /tmp/env 2>/dev/null || true").await;
        if !env.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(env, "from-request kept\n");
    if root {
        assert_eq!(
            c.volumes,
            [pb::VolumeMount { volume: "ws".into(), container_path: "/workspace".into(), read_only: false }]
        );
        let df = inside(&mut client, &c.id, "touch /workspace/x && df -B1 /workspace | tail -1").await;
        let size: u64 = df.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(size <= 16 * MIB, "/workspace is not the volume: {df}");
    }

    // Within bounds: the template's shm does not fit a container of 16 MiB; the request's own
    // command wins over the template's.
    let small = pb::CreateContainerRequest {
        template: "lab".into(),
        resources: Some(pb::ResourceRequest { memory_bytes: 16 * MIB, ..Default::default() }),
        ..Default::default()
    };
    let e = client.create(small).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("workload.shm_bytes"), "{}", e.message());
    let own = pb::CreateContainerRequest {
        template: "lab".into(),
        command: vec!["sh".into(), "-c".into(), "exec sleep 600".into()],
        ports: vec![pb::PortMapping { container_port: 80, protocol: "tcp".into(), ..Default::default() }],
        ..request("")
    };
    let own = client.create(own).await.unwrap().into_inner();
    assert_eq!(own.ports.len(), 1, "{own:?}");
    let e = client.create(pb::CreateContainerRequest { template: "nope".into(), ..request("true") }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "template: `nope` is not a template of this executor (templates: lab)");
    remove_all(&mut client).await;
    if root {
        client.delete_volume(pb::DeleteVolumeRequest { name: "ws".into() }).await.unwrap();
    }
}
