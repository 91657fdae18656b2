//! Issue 21: a volume's data survives a restart of the Docker engine, and its container runs
//! again on the volume's own filesystem. Issue 22: after a "reboot" (the node and the engine
//! stopped, then started) what ran runs again and what was stopped stays stopped. Restarting
//! the engine would break every other test running beside it, so these are ignored by the
//! unit-tests step and run alone, one after the other, by `make test`'s `engine-tests` step
//! (after every other test), as root.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::time::{Duration, Instant};

use common::proto::runtime::v1 as pb;
use e2e::process::is_root;
use e2e::runtime::{exec, remove_all, request, start_service, wait_state};
use e2e::{TestConfig, busybox_image, require_tool};

const SIZE: u64 = 16 << 20;
const MARKER: &str = "engine-restart-marker-3c9a";

async fn with_volume(client: &mut e2e::runtime::Client) -> pb::Container {
    let mut r = request("sleep 600");
    r.volumes = vec![pb::VolumeMount { volume: "keep".into(), container_path: "/vol".into(), read_only: false }];
    let created = client.create(r).await.unwrap().into_inner();
    client.start(pb::ContainerRef { id: created.id }).await.unwrap().into_inner()
}

/// The marker and the size of the filesystem at /vol, from inside `id`.
async fn seen(client: &mut e2e::runtime::Client, id: &str) -> (String, u64) {
    let out = exec(client, id, "cat /vol/marker; df -B1 /vol | tail -1").await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let size = text.lines().nth(1).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0);
    (text.lines().next().unwrap_or_default().to_owned(), size)
}

#[tokio::test]
#[ignore = "restarts the Docker engine: make test runs it alone after the other tests (engine-tests)"]
async fn engine_restart_keeps_a_volume_and_runs_its_container_again() {
    if !busybox_image().await || !require_tool("root (mount, loop devices)", is_root()) {
        return;
    }
    let config = TestConfig::new("");
    let (_service, mut client) = start_service(&config).await;
    client.create_volume(pb::CreateVolumeRequest { name: "keep".into(), size_bytes: SIZE }).await.unwrap();
    let c = with_volume(&mut client).await;
    let out = exec(&mut client, &c.id, &format!("echo {MARKER} > /vol/marker && sync")).await;
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));

    let (how, down) = e2e::engine::restart_docker(e2e::engine::workspace_root()).await.unwrap();
    println!("engine restarted ({how}), back after {down:?}");
    // The container runs again (container-runtime follows the engine), on its volume.
    wait_state(&mut client, &c.id, pb::ContainerState::Running, Duration::from_secs(60)).await;
    let (marker, size) = seen(&mut client, &c.id).await;
    assert_eq!(marker, MARKER);
    assert!(size > 0 && size <= SIZE, "/vol is not the volume's filesystem ({size} bytes)");

    // And a new container after removing this one finds the data too.
    client.remove(pb::RemoveContainerRequest { id: c.id, force: true }).await.unwrap();
    let again = with_volume(&mut client).await;
    assert_eq!(seen(&mut client, &again.id).await.0, MARKER);
    remove_all(&mut client).await;
    client.delete_volume(pb::DeleteVolumeRequest { name: "keep".into() }).await.unwrap();
}

/// Issue 22 item 1, a reboot as the tests can make one: the node goes away, the engine stops
/// (stopping every container) and the volume's mount goes; the engine starts, then the node.
/// The rental that ran runs again on its volume and its port; the one the miner stopped and
/// the one that ended on its own stay stopped.
#[tokio::test]
#[ignore = "stops the Docker engine: make test runs it alone after the other tests (engine-tests)"]
async fn a_reboot_runs_again_what_ran_and_leaves_stopped_what_was_stopped() {
    if !busybox_image().await || !require_tool("root (mount, loop devices)", is_root()) {
        return;
    }
    let config = TestConfig::new("");
    let (mut service, mut client) = start_service(&config).await;
    client.create_volume(pb::CreateVolumeRequest { name: "keep".into(), size_bytes: SIZE }).await.unwrap();
    let rental = with_volume(&mut client).await;
    let out = exec(&mut client, &rental.id, &format!("echo {MARKER} > /vol/marker && sync")).await;
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    let stopped = e2e::runtime::run(&mut client, request("sleep 600")).await;
    let stop = pb::StopContainerRequest { id: stopped.id.clone(), timeout_seconds: 0, requested_by: "miner".into() };
    client.stop(stop).await.unwrap();
    let ended = e2e::runtime::run(&mut client, request("exit 7")).await;
    let intent = |id: &str| std::fs::read_to_string(config.dir.path().join("data/intent").join(id)).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while intent(&ended.id) != "stopped: exited with code 7" {
        assert!(Instant::now() < deadline, "the end was not recorded: {}", intent(&ended.id));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let _ = service.start_kill();
    let _ = service.wait().await;
    let how = e2e::engine::stop_docker().await.unwrap();
    let point = config.runtime_dir().join("volumes/keep");
    let umount = e2e::process::sh("umount", &[point.to_str().unwrap()]).await;
    assert!(umount.0, "{umount:?}");
    e2e::engine::start_docker(e2e::engine::workspace_root()).await.unwrap();
    println!("engine stopped ({how}) and started again");
    let (_service, mut client) = start_service(&config).await;
    wait_state(&mut client, &rental.id, pb::ContainerState::Running, Duration::from_secs(60)).await;
    let (marker, size) = seen(&mut client, &rental.id).await;
    assert_eq!(marker, MARKER);
    assert!(size > 0 && size <= SIZE, "/vol is not the volume's filesystem ({size} bytes)");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for c in [&stopped, &ended] {
        let state = client.get(pb::ContainerRef { id: c.id.clone() }).await.unwrap().into_inner().state;
        assert_eq!(state, pb::ContainerState::Exited as i32, "{} ({})", c.id, intent(&c.id));
    }
    remove_all(&mut client).await;
    client.delete_volume(pb::DeleteVolumeRequest { name: "keep".into() }).await.unwrap();
}
