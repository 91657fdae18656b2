//! Issue 21 item 2: named volumes with a hard size. A volume written full gets ENOSPC inside
//! the container at its size; its data survives the container's removal, a `kill -9` of
//! container-runtime and the loss of its mount (as after a host reboot); two writers are
//! refused, readers share; a volume in use cannot be deleted, and a deleted one's bytes are
//! gone. Real engine, real loop devices and ext4.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::Path;

use common::proto::runtime::v1 as pb;
use e2e::process::is_root;
use e2e::runtime::{Client, exec, remove_all, request, start_service};
use e2e::{TestConfig, busybox_image, require_tool};
use tonic::Code;

const MIB: u64 = 1 << 20;
/// Written into the volume and looked for in its image from the host.
const MARKER: &str = "volume-marker-5f1e0c";

fn mount(volume: &str, path: &str, read_only: bool) -> pb::VolumeMount {
    pb::VolumeMount { volume: volume.into(), container_path: path.into(), read_only }
}

async fn with_volumes(client: &mut Client, volumes: Vec<pb::VolumeMount>) -> Result<pb::Container, tonic::Status> {
    let mut r = request("sleep 600");
    r.volumes = volumes;
    let created = client.create(r).await?.into_inner();
    Ok(client.start(pb::ContainerRef { id: created.id }).await?.into_inner())
}

async fn volume(client: &mut Client, name: &str, size_bytes: u64) -> Result<pb::Volume, tonic::Status> {
    client.create_volume(pb::CreateVolumeRequest { name: name.into(), size_bytes }).await.map(|r| r.into_inner())
}

async fn run(client: &mut Client, id: &str, script: &str) -> (i64, String) {
    let out = exec(client, id, script).await;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.exit_code, text)
}

/// Whether `image` holds `needle` anywhere (read from the host).
fn image_holds(image: &Path, needle: &str) -> bool {
    let bytes = std::fs::read(image).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn assert_refused(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, starts: &str) {
    let e = result.unwrap_err();
    assert_eq!(e.code(), code, "{e:?}");
    assert!(e.message().starts_with(starts), "{:?} does not start with {starts:?}", e.message());
}

#[tokio::test]
async fn volumes_have_a_hard_size_outlive_containers_and_are_wiped() {
    if !busybox_image().await || !require_tool("root (mount, loop devices)", is_root()) {
        return;
    }
    let config = TestConfig::new("\n[docker.volumes]\nmax_volume_bytes = 67108864\nmax_total_bytes = 100663296\n");
    let images = config.dir.path().join("data/volumes");
    let (mut service, mut client) = start_service(&config).await;

    // Bad input, refused by name; the bounds of the config.
    assert_refused(
        volume(&mut client, "a/b", 32 * MIB).await,
        Code::InvalidArgument,
        "name: `a/b` is not a volume name",
    );
    assert_refused(volume(&mut client, "data", MIB).await, Code::InvalidArgument, "size_bytes: 1048576 is not between");
    assert_refused(
        volume(&mut client, "data", 65 * MIB).await,
        Code::InvalidArgument,
        "size_bytes: 68157440 is not between",
    );
    let made = volume(&mut client, "data", 32 * MIB).await.unwrap();
    assert_eq!((made.name.as_str(), made.size_bytes), ("data", 32 * MIB));
    assert_refused(
        volume(&mut client, "data", 32 * MIB).await,
        Code::AlreadyExists,
        "name: volume `data` exists already",
    );
    volume(&mut client, "other", 48 * MIB).await.unwrap();
    assert_refused(
        volume(&mut client, "third", 32 * MIB).await,
        Code::ResourceExhausted,
        "size_bytes: 33554432 more bytes",
    );
    assert_refused(
        with_volumes(&mut client, vec![mount("nope", "/data", false)]).await,
        Code::NotFound,
        "volumes[0].volume: volume `nope` does not exist",
    );
    assert_refused(
        with_volumes(&mut client, vec![mount("data", "data", false)]).await,
        Code::InvalidArgument,
        "volumes[0].container_path",
    );

    // A writer fills it: ENOSPC at its size, inside; the host goes on.
    let writer = with_volumes(&mut client, vec![mount("data", "/data", false)]).await.unwrap();
    assert_eq!(writer.volumes, [mount("data", "/data", false)]);
    let (code, text) = run(
        &mut client,
        &writer.id,
        &format!("echo {MARKER} > /data/marker && sync; dd if=/dev/zero of=/data/fill bs=1M count=64; echo dd=$?"),
    )
    .await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("No space left on device") && text.contains("dd=1"), "{text}");
    let (_, df) = run(&mut client, &writer.id, "df -B1 /data | tail -1").await;
    let size: u64 = df.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(size <= 32 * MIB && size > 24 * MIB, "the filesystem is {size} bytes: {df}");
    let listed = client.list_volumes(pb::ListVolumesRequest {}).await.unwrap().into_inner().volumes;
    let data = listed.iter().find(|v| v.name == "data").unwrap();
    assert_eq!(data.containers, std::slice::from_ref(&writer.id));
    assert!(data.used_bytes > 24 * MIB, "{data:?}");
    let stats = client.stats(pb::ContainerRef { id: writer.id.clone() }).await.unwrap().into_inner();
    assert_eq!(stats.volumes.len(), 1, "{stats:?}");
    let usage = &stats.volumes[0];
    assert_eq!((usage.volume.as_str(), usage.container_path.as_str(), usage.size_bytes), ("data", "/data", 32 * MIB));
    assert_eq!(usage.used_bytes, data.used_bytes, "{stats:?}");

    // A second writer, or a reader beside a writer: refused by name.
    for read_only in [false, true] {
        assert_refused(
            with_volumes(&mut client, vec![mount("data", "/data", read_only)]).await,
            Code::FailedPrecondition,
            &format!("volumes[0].volume: volume `data` is in use by {} (read-write)", writer.id),
        );
    }
    assert_refused(
        client.delete_volume(pb::DeleteVolumeRequest { name: "data".into() }).await,
        Code::FailedPrecondition,
        "name: volume `data` is in use by",
    );

    // The writer goes; two readers share it and see its data; they cannot write.
    client.remove(pb::RemoveContainerRequest { id: writer.id.clone(), force: true }).await.unwrap();
    let reader = with_volumes(&mut client, vec![mount("data", "/in", true)]).await.unwrap();
    let second =
        with_volumes(&mut client, vec![mount("data", "/also", true), mount("other", "/out", false)]).await.unwrap();
    assert_eq!(run(&mut client, &reader.id, "cat /in/marker").await.1.trim(), MARKER);
    let (code, text) = run(&mut client, &second.id, "cat /also/marker; echo x > /also/new").await;
    assert_ne!(code, 0, "a read-only volume was written: {text}");
    assert!(text.contains(MARKER) && text.contains("Read-only file system"), "{text}");
    remove_all(&mut client).await;

    // kill -9, and the mount gone as after a reboot: the next service mounts it again.
    let _ = service.start_kill();
    let _ = service.wait().await;
    let point = config.runtime_dir().join("volumes/data");
    let umount = e2e::process::sh("umount", &[point.to_str().unwrap()]).await;
    assert!(umount.0, "{umount:?}");
    let (_service, mut client) = start_service(&config).await;
    let again = with_volumes(&mut client, vec![mount("data", "/data", false)]).await.unwrap();
    assert_eq!(run(&mut client, &again.id, "cat /data/marker").await.1.trim(), MARKER);
    client.remove(pb::RemoveContainerRequest { id: again.id.clone(), force: true }).await.unwrap();

    // Deleted: unmounted, its bytes wiped before its image goes; made again, it holds nothing.
    let image = images.join("data.img");
    assert!(image_holds(&image, MARKER), "the marker is not in the image: the test cannot see a wipe");
    client.delete_volume(pb::DeleteVolumeRequest { name: "data".into() }).await.unwrap();
    assert!(!image.exists() && !images.join("data.json").exists() && !point.exists());
    assert_refused(
        client.delete_volume(pb::DeleteVolumeRequest { name: "data".into() }).await,
        Code::NotFound,
        "name: volume `data` does not exist",
    );
    volume(&mut client, "data", 32 * MIB).await.unwrap();
    assert!(!image_holds(&image, MARKER), "a re-made volume holds the old bytes");
    let fresh = with_volumes(&mut client, vec![mount("data", "/data", false)]).await.unwrap();
    assert_eq!(run(&mut client, &fresh.id, "ls /data").await.1.trim(), "lost+found");
    remove_all(&mut client).await;
    for name in ["data", "other"] {
        client.delete_volume(pb::DeleteVolumeRequest { name: name.into() }).await.unwrap();
    }
    assert!(client.list_volumes(pb::ListVolumesRequest {}).await.unwrap().into_inner().volumes.is_empty());
}
