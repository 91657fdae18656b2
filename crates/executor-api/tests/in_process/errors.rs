//! What a caller sees of a peer's error: for each reason a fake gives, the public code and
//! message of executor-api's policy; engine text and causes never.

use common::proto::access::v1 as access;
use common::proto::runtime::v1 as runtime;
use common::reason::{Reason, Refusal};
use executor_api::errors::{Told, policy};
use tokio_stream::StreamExt;
use tonic::{Code, Status};

use crate::node::{Node, Options};

const ENGINE_TEXT: &str = "Error response from daemon: mkdir /var/lib/docker/overlay2/3f2a: no space left on device";

fn c1() -> runtime::ContainerRef {
    runtime::ContainerRef { id: "c-1".into() }
}

fn header<'a>(status: &'a Status, name: &str) -> &'a str {
    status.metadata().get(name).map_or("", |v| v.to_str().unwrap())
}

/// The message of an internal error names the call's request id and nothing else.
fn names_only_its_request_id(status: &Status) {
    let id = header(status, "x-request-id");
    assert!(!id.is_empty(), "{status:?}");
    let expected = format!("internal error; the executor log has the detail under request id {id}");
    assert_eq!(status.message(), expected);
}

#[tokio::test]
async fn every_reason_gets_its_public_code_and_message() {
    let node = Node::start().await;
    for &reason in Reason::ALL {
        let message = "container c-1: worded for the caller";
        node.fakes.runtime.fail_with(Refusal::new(reason, message).with_cause(ENGINE_TEXT).into_status());
        let status = node.client.get_container(c1()).await.unwrap_err();
        let (code, told) = policy(reason);
        assert_eq!(status.code(), code, "{reason}: {status:?}");
        assert_eq!(header(&status, "x-executor-reason"), reason.as_str(), "{status:?}");
        assert_eq!(header(&status, "x-executor-cause"), "", "{status:?}");
        assert!(!status.message().contains("overlay2"), "{reason}: {status:?}");
        match told {
            Told::Message => assert_eq!(status.message(), message, "{reason}"),
            Told::RetryShortly => assert_eq!(status.message(), "container-runtime is unavailable; retry shortly"),
            Told::RequestId => names_only_its_request_id(&status),
        }
    }
}

#[tokio::test]
async fn engine_text_never_reaches_the_caller() {
    let node = Node::start().await;
    // A service not yet giving reasons: by code, as before.
    node.fakes.runtime.fail_with(Status::internal(ENGINE_TEXT));
    let status = node.client.get_container(c1()).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    names_only_its_request_id(&status);
    // Caller-fixable codes pass through.
    node.fakes.runtime.fail_with(Status::not_found("container c-9 not found"));
    let status = node.client.get_container(c1()).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::NotFound, "container c-9 not found"));
    // A watch asking for events no longer kept is told which number to ask with.
    let gone = "after_seq 3: events up to 9 are no longer kept (the node keeps the last 10000); list the containers again and watch with after_seq = 9";
    node.fakes.runtime.fail_with(Refusal::new(Reason::EventsGone, gone).into_status());
    let status = node.client.watch_events(runtime::WatchEventsRequest::default()).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::OutOfRange, gone));
    assert_eq!(header(&status, "x-executor-reason"), "events_gone");
    // UNAUTHENTICATED between our own services is not the caller's.
    node.fakes.access.fail_with(Status::unauthenticated("peer said no"));
    let status = node.client.list_validator_grants(access::ListGrantsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    // A stream that fails after its first messages.
    node.fakes.runtime.fail_with(Refusal::new(Reason::Engine, ENGINE_TEXT).with_cause(ENGINE_TEXT).into_status());
    let mut logs =
        node.client.stream_logs(runtime::LogsRequest { id: "c-1".into(), ..Default::default() }).await.unwrap();
    assert_eq!(logs.next().await.unwrap().unwrap().data, b"line 1\n");
    assert_eq!(logs.next().await.unwrap().unwrap().data, b"line 2\n");
    let status = logs.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(!status.message().contains("overlay2") && status.message().contains("request id"), "{status:?}");
    assert_eq!(header(&status, "x-executor-reason"), "engine");
}

#[tokio::test]
async fn a_peer_that_is_down_is_unavailable() {
    let node = Node::with(Options { gpu_monitor: false, ..Options::default() }).await;
    let status = node.client.system_profile().await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::Unavailable, "gpu-monitor is unavailable; retry shortly"));
    assert_eq!(header(&status, "x-executor-reason"), "peer_unavailable");
    let health = node.client.detailed_health().await.unwrap();
    assert!(!health.healthy);
    let gpu = health.components.iter().find(|c| c.name == "gpu-monitor").unwrap();
    assert!(!gpu.serving && gpu.detail.starts_with("UNREACHABLE"), "{gpu:?}");
}

#[tokio::test]
async fn docker_down_is_unavailable_without_its_socket() {
    let node = Node::with(Options { docker_up: false, ..Options::default() }).await;
    let status = node.client.system_profile().await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "the Docker engine is unavailable; retry shortly")
    );
}

#[tokio::test]
async fn validator_calls_without_validator_access() {
    let node = Node::with(Options { validator: false, ..Options::default() }).await;
    let status = node.client.list_validator_grants(access::ListGrantsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "validator access is disabled ([validator] enabled = false)");
    assert_eq!(header(&status, "x-executor-reason"), "host_unsupported");
    assert_eq!(node.fakes.access.take_calls(), Vec::<String>::new());
}
