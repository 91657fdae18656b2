//! Issue 22 item 1: rentals that went down while the node was away (a host reboot, an engine
//! stopped under it) run again when the node starts, with their volumes and ports; those the
//! miner stopped, those that ended on their own, those stopped outside the executor and those
//! never started stay as they were. What the executor meant for each is recorded, not guessed.
//! A restart of the engine itself is in `engine_restart` (run alone by `make test`).

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::time::{Duration, Instant};

use common::proto::runtime::v1 as pb;
use e2e::process::{is_root, sh};
use e2e::runtime::{Client, docker, exec, greeting, remove_all, request, run, start_service, wait_state};
use e2e::{TestConfig, busybox_image, require_tool};

const MARKER: &str = "resume-marker-51d2";

/// What the executor recorded it means for container `id` (`data_dir/intent/<id>`).
fn intent(config: &TestConfig, id: &str) -> String {
    std::fs::read_to_string(config.dir.path().join("data/intent").join(id)).unwrap_or_default()
}

/// Waits up to `within` until `check` holds for what the executor recorded of `id`.
async fn wait_intent(config: &TestConfig, id: &str, within: Duration, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = intent(config, id);
        if check(&text) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn state(client: &mut Client, id: &str) -> i32 {
    client.get(pb::ContainerRef { id: id.into() }).await.unwrap().into_inner().state
}

#[tokio::test]
async fn rentals_meant_to_run_run_again_when_the_node_comes_back() {
    if !busybox_image().await || !require_tool("root (mount, loop devices)", is_root()) {
        return;
    }
    let config = TestConfig::with_ports("", "");
    let (mut service, mut client) = start_service(&config).await;
    client.create_volume(pb::CreateVolumeRequest { name: "rental".into(), size_bytes: 16 << 20 }).await.unwrap();

    // The rental: a published port and a volume.
    let mut r = request("nc -ll -p 8080 -e echo hello");
    r.ports = vec![pb::PortMapping { container_port: 8080, protocol: "tcp".into(), ..Default::default() }];
    r.volumes = vec![pb::VolumeMount { volume: "rental".into(), container_path: "/vol".into(), read_only: false }];
    let rental = run(&mut client, r).await;
    let port = rental.ports[0].host_port;
    let out = exec(&mut client, &rental.id, &format!("echo {MARKER} > /vol/marker && sync")).await;
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(greeting(port).await, "hello");
    assert_eq!(intent(&config, &rental.id), "running");

    // Stopped by the miner, ended on its own, never started.
    let stopped = run(&mut client, request("sleep 600")).await;
    let stop = pb::StopContainerRequest { id: stopped.id.clone(), timeout_seconds: 0, requested_by: "miner-x".into() };
    client.stop(stop).await.unwrap();
    assert_eq!(intent(&config, &stopped.id), "stopped: by miner-x");
    let ended = run(&mut client, request("exit 3")).await;
    let why = wait_intent(&config, &ended.id, Duration::from_secs(10), |t| t.starts_with("stopped")).await;
    assert_eq!(why, "stopped: exited with code 3");
    let created = client.create(request("sleep 600")).await.unwrap().into_inner();

    // The node goes away; the host goes down under it: the engine stops the rental and the
    // volume's mount is gone.
    let _ = service.start_kill();
    let _ = service.wait().await;
    assert!(docker(&["stop", "-t", "1", &rental.docker_id]).await.0);
    let point = config.runtime_dir().join("volumes/rental");
    let umount = sh("umount", &[point.to_str().unwrap()]).await;
    assert!(umount.0, "{umount:?}");

    let started = Instant::now();
    let (_service, mut client) = start_service(&config).await;
    wait_state(&mut client, &rental.id, pb::ContainerState::Running, Duration::from_secs(30)).await;
    println!("the rental runs again {:?} after the service was started", started.elapsed());
    let back = client.get(pb::ContainerRef { id: rental.id.clone() }).await.unwrap().into_inner();
    assert_eq!(back.ports, rental.ports, "the ports changed");
    assert_eq!(greeting(port).await, "hello");
    let out = exec(&mut client, &rental.id, "cat /vol/marker; df -B1 /vol | tail -1").await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.lines().next(), Some(MARKER), "{text}");
    let size: u64 = text.lines().nth(1).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0);
    assert!(size > 0 && size <= 16 << 20, "/vol is not the volume's filesystem: {text}");

    // Give a resume that should not happen the time to happen.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (c, want) in [
        (&stopped, pb::ContainerState::Exited),
        (&ended, pb::ContainerState::Exited),
        (&created, pb::ContainerState::Created),
    ] {
        assert_eq!(state(&mut client, &c.id).await, want as i32, "{} ({})", c.id, intent(&config, &c.id));
    }
    remove_all(&mut client).await;
    assert!(!config.dir.path().join("data/intent").join(&rental.id).exists(), "the intent outlived its container");
    client.delete_volume(pb::DeleteVolumeRequest { name: "rental".into() }).await.unwrap();
}

/// A `docker stop` from outside the executor, with the engine still up past its shutdown
/// window, is recorded: the container is not run again when the node next starts.
#[tokio::test]
async fn a_container_stopped_outside_the_executor_stays_stopped() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("");
    let (mut service, mut client) = start_service(&config).await;
    let c = run(&mut client, request("sleep 600")).await;
    assert!(docker(&["stop", "-t", "1", &c.docker_id]).await.0);
    // The engine's shutdown window is 30 s; the sweep runs every 5 s.
    let why = wait_intent(&config, &c.id, Duration::from_secs(45), |t| t != "running").await;
    assert_eq!(why, "stopped: stopped outside the executor");
    let _ = service.start_kill();
    let _ = service.wait().await;
    let (_service, mut client) = start_service(&config).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(state(&mut client, &c.id).await, pb::ContainerState::Exited as i32);
    remove_all(&mut client).await;
}
