//! Issue 22 item 3: the node's events, from container-runtime on the real engine. A
//! container's life comes as created, started, died (with its exit code and why: killed
//! outside, stopped by whom, its own exit); drain changes, removal and the reaper too. A
//! watcher that lost its stream asks again with the last number it has and misses nothing,
//! across a restart of the service; one that asks for what is not there is told the numbers.
//! (GPU health events are in `gpu_health`, the signed public call in `executor_api`.)

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::time::{Duration, Instant};

use common::proto::runtime::v1 as pb;
use e2e::runtime::{Client, docker, remove_all, request, run, start_service, wait_state};
use e2e::{ALICE, TestConfig, busybox_image};
use pb::EventKind as K;
use tonic::Streaming;

/// The next event on `stream`, 15 s at most.
async fn next(stream: &mut Streaming<pb::Event>) -> pb::Event {
    let event = tokio::time::timeout(Duration::from_secs(15), stream.message()).await;
    event.expect("an event within 15 s").expect("the stream is fine").expect("the stream is open")
}

/// Events from `stream` until one of `kind` for `id`; the ones before it are returned too.
async fn until(stream: &mut Streaming<pb::Event>, kind: K, id: &str) -> Vec<pb::Event> {
    let mut seen = Vec::new();
    loop {
        let event = next(stream).await;
        let done = event.kind() == kind && event.container_id == id;
        seen.push(event);
        if done {
            return seen;
        }
    }
}

async fn watch(client: &mut Client, after_seq: u64, only_new: bool, container_id: &str) -> Streaming<pb::Event> {
    let request = pb::WatchEventsRequest { after_seq, only_new, container_id: container_id.into() };
    client.events(request).await.unwrap().into_inner()
}

fn kinds_of<'a>(events: &'a [pb::Event], id: &str) -> Vec<(K, &'a str)> {
    events.iter().filter(|e| e.container_id == id).map(|e| (e.kind(), e.reason.as_str())).collect()
}

#[tokio::test]
async fn events_tell_a_containers_life_and_resume_after_a_disconnect_and_a_restart() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("\n[docker]\nreap_interval = \"300ms\"\n");
    let (mut service, mut client) = start_service(&config).await;
    let mut live = watch(&mut client, 0, true, "").await;

    // Created, started, then killed outside the executor.
    let first = run(&mut client, request("sleep 600")).await;
    let seen = until(&mut live, K::Started, &first.id).await;
    let created = seen.iter().find(|e| e.kind() == K::Created).unwrap();
    assert_eq!((created.container_id.as_str(), created.owner.as_str()), (first.id.as_str(), ALICE));
    assert!(created.image.contains("busybox"), "{created:?}");
    assert!(created.seq >= 1 && created.time_ms > 0, "{created:?}");
    let killed = Instant::now();
    assert!(docker(&["kill", &first.id]).await.0);
    let died = until(&mut live, K::Died, &first.id).await.pop().unwrap();
    println!("docker kill to the event: {} ms", killed.elapsed().as_millis());
    assert_eq!(died.exit_code, 137, "{died:?}");
    assert!(died.reason.starts_with("killed outside the executor"), "{died:?}");
    let last = died.seq;
    drop(live);

    // While nobody watches: a stop by a miner, an exit of its own, drain on and off.
    let stopped = run(&mut client, request("sleep 600")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop = pb::StopContainerRequest { id: stopped.id.clone(), timeout_seconds: 1, requested_by: "5Fminer".into() };
    client.stop(stop).await.unwrap();
    let exited = run(&mut client, request("exit 3")).await;
    wait_state(&mut client, &exited.id, pb::ContainerState::Exited, Duration::from_secs(10)).await;
    client.set_drain(pb::SetDrainRequest { draining: true, reason: "new disks".into() }).await.unwrap();
    client.set_drain(pb::SetDrainRequest { draining: false, reason: String::new() }).await.unwrap();

    // The service goes away (SIGKILL) and comes back: a watch from the last number seen gets
    // exactly what it missed, in order, numbered on from there.
    let _ = service.start_kill();
    let _ = service.wait().await;
    let (_service, mut client) = start_service(&config).await;
    let mut resumed = watch(&mut client, last, false, "").await;
    let mut missed = until(&mut resumed, K::Died, &exited.id).await;
    missed.push(next(&mut resumed).await);
    missed.push(next(&mut resumed).await);
    let seqs: Vec<u64> = missed.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (last + 1..=last + seqs.len() as u64).collect::<Vec<_>>(), "{missed:?}");
    assert_eq!(
        kinds_of(&missed, &stopped.id),
        [(K::Created, ""), (K::Started, ""), (K::Stopped, "a stop request"), (K::Died, "stopped by 5Fminer")],
        "{missed:?}"
    );
    let by = missed.iter().find(|e| e.kind() == K::Stopped).unwrap();
    assert_eq!(by.by, "5Fminer");
    assert_eq!(
        kinds_of(&missed, &exited.id),
        [(K::Created, ""), (K::Started, ""), (K::Died, "exited with code 3")],
        "{missed:?}"
    );
    assert_eq!(missed.iter().find(|e| e.container_id == exited.id && e.kind() == K::Died).unwrap().exit_code, 3);
    let drains: Vec<(K, bool, &str)> =
        missed[missed.len() - 2..].iter().map(|e| (e.kind(), e.draining, e.reason.as_str())).collect();
    assert_eq!(drains, [(K::Drain, true, "new disks"), (K::Drain, false, "")]);

    // Live again on the same stream: the reaper and a removal.
    let update = pb::UpdateContainerRequest { id: exited.id.clone(), ttl_seconds: Some(1), ..Default::default() };
    client.update(update).await.unwrap();
    let reaped = until(&mut resumed, K::Reaped, &exited.id).await.pop().unwrap();
    assert_eq!((reaped.reason.as_str(), reaped.owner.as_str()), ("its TTL ran out", ALICE));
    client.remove(pb::RemoveContainerRequest { id: stopped.id.clone(), force: true }).await.unwrap();
    until(&mut resumed, K::Removed, &stopped.id).await;

    // One container's events only, from the oldest kept.
    let mut only = watch(&mut client, 0, false, &stopped.id).await;
    let mut its = Vec::new();
    while its.last().is_none_or(|e: &pb::Event| e.kind() != K::Removed) {
        its.push(next(&mut only).await);
    }
    assert!(its.iter().all(|e| e.container_id == stopped.id), "{its:?}");
    assert_eq!(its.len(), 5, "{its:?}");

    // Numbers that are not there yet are refused with the newest one.
    let newest = its.last().unwrap().seq.max(reaped.seq);
    let request = pb::WatchEventsRequest { after_seq: newest + 1000, ..Default::default() };
    let err = client.events(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(err.message().contains(&format!("past the newest event, {newest}")), "{}", err.message());

    // The file is the record, one event a line.
    let text = std::fs::read_to_string(config.dir.path().join("data/events.jsonl")).unwrap();
    assert_eq!(text.lines().count() as u64, newest, "{text}");
    assert!(text.contains(r#""kind":"died""#) && text.contains(r#""exit_code":137"#), "{text}");
    remove_all(&mut client).await;
}
