//! Commands in containers as container-runtime runs them, over its socket, on the real Docker
//! engine: a unary Exec past its deadline takes its processes along.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::time::{Duration, Instant};

use common::proto::runtime::v1 as pb;
use e2e::runtime::{docker, remove_all, request, run, start_service};
use e2e::{TestConfig, busybox_image};

/// Whether a process running `args` is in container `id` (its `ps`, through the engine).
async fn runs_in(id: &str, args: &str) -> bool {
    let (ok, ps) = docker(&["exec", id, "ps", "-o", "args"]).await;
    assert!(ok, "docker exec ps");
    ps.lines().any(|l| l.trim() == args)
}

/// Waits up to 2 s for `args` to be gone from container `id`.
async fn gone_within_2s(id: &str, args: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while runs_in(id, args).await {
        assert!(Instant::now() < deadline, "`{args}` still runs in {id} after 2 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_unary_exec_past_its_deadline_is_killed() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("");
    let (_service, mut client) = start_service(&config).await;
    let c = run(&mut client, request("sleep 600")).await;
    let exec = pb::ExecRequest {
        id: c.id.clone(),
        command: vec!["sh".into(), "-c".into(), "sleep 1000 & sleep 1000".into()],
        timeout_seconds: 1,
        max_output_bytes: 0,
    };
    let out = client.exec(exec).await.unwrap().into_inner();
    assert!(out.timed_out, "{out:?}");
    gone_within_2s(&c.id, "sleep 1000").await;
    assert!(runs_in(&c.id, "sleep 600").await);
    remove_all(&mut client).await;
}
