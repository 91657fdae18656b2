//! Issue 22 item 7: the node under an orchestrator. `[docker] mode = "agent-only"` makes no
//! container (creates are FAILED_PRECONDITION naming `docker.mode`) and says so in Capacity;
//! `exclusive` refuses to start where the kubelet runs the NVIDIA device plugin (a socket in
//! `device_plugins_dir`), since Kubernetes would hand out the same GPUs.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use common::proto::runtime::v1 as pb;
use e2e::runtime::{request, start_service};
use e2e::{TestConfig, busybox_image};
use tonic::Code;

#[tokio::test]
async fn agent_only_makes_no_container_and_exclusive_yields_to_the_device_plugin() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("\n[docker]\nmode = \"agent-only\"\n");
    let (_service, mut client) = start_service(&config).await;
    let err = client.create(request("sleep 60")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().starts_with("docker.mode: this executor runs agent-only"), "{}", err.message());
    let volume = pb::CreateVolumeRequest { name: "data".into(), size_bytes: 16 << 20 };
    assert_eq!(client.create_volume(volume).await.unwrap_err().code(), Code::FailedPrecondition);
    let capacity = client.capacity(pb::CapacityRequest {}).await.unwrap().into_inner();
    assert!(capacity.note.contains("docker.mode = agent-only"), "{}", capacity.note);

    // The NVIDIA device plugin's socket in the kubelet's directory: exclusive mode will not start.
    let plugins = tempfile::tempdir().unwrap();
    let _plugin = std::os::unix::net::UnixListener::bind(plugins.path().join("nvidia-gpu.sock")).unwrap();
    let config = TestConfig::new(&format!(
        "\n[docker]\nmode = \"exclusive\"\ndevice_plugins_dir = \"{}\"\n",
        plugins.path().display()
    ));
    let out = e2e::run("container-runtime", &["--config", &config.path.display().to_string()], &[]).await;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("this node's kubelet advertises nvidia.com/gpu"), "{text}");
    assert!(text.contains("nvidia-gpu.sock"), "{text}");
    // And `executor validate` says the same.
    let out = e2e::run("executor", &["validate", "--config", &config.path.display().to_string()], &[]).await;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("docker mode") && text.contains("set [docker] mode = \"agent-only\""), "{text}");
}
