//! ExecContainer against the fake Attach: output and exit code relayed, stdin delivered, the
//! output cap and the deadline enforced, the Attach stream dropped (the command cut off) at
//! either and when the caller goes, bad fields named, container-runtime's refusals passed on.

use std::time::{Duration, Instant};

use common::proto::api::v1 as api;
use common::reason::{Reason, Refusal};
use executor_api::client::ExecutorClient;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::node::Node;

/// What one call streamed: stdout, stderr, and its end.
#[derive(Debug, Default)]
struct Ran {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    end: Option<api::ExecContainerEnd>,
}

fn request(command: &[&str]) -> api::ExecContainerRequest {
    api::ExecContainerRequest {
        id: "c-1".into(),
        command: command.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    }
}

async fn run(client: &ExecutorClient, request: api::ExecContainerRequest) -> Result<Ran, tonic::Status> {
    use api::exec_container_output::Output;
    let mut stream = client.exec_container(request).await?;
    let mut ran = Ran::default();
    while let Some(message) = stream.next().await {
        assert!(ran.end.is_none(), "a message after the end");
        match message?.output.unwrap() {
            Output::Stdout(bytes) => ran.stdout.extend(bytes),
            Output::Stderr(bytes) => ran.stderr.extend(bytes),
            Output::End(end) => ran.end = Some(end),
        }
    }
    Ok(ran)
}

/// Waits (up to 5 s) for the fake to see its client go.
async fn cut_off(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !node.fakes.runtime.take_calls().iter().any(|c| c == "Attach cut off") {
        assert!(Instant::now() < deadline, "the Attach stream was not dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn output_exit_code_and_stdin_are_relayed() {
    let node = Node::start().await;
    let ran = run(&node.client, api::ExecContainerRequest { env: vec!["A=1".into()], ..request(&["echo"]) });
    let ran = ran.await.unwrap();
    assert_eq!((ran.stdout.as_slice(), ran.stderr.as_slice()), (&b"out\n"[..], &b"err\n"[..]));
    assert_eq!(ran.end, Some(api::ExecContainerEnd { exit_code: 3, timed_out: false, truncated: false }));
    let calls = node.fakes.runtime.take_calls();
    assert_eq!(calls, [r#"Attach AttachStart { id: "c-1", command: ["echo"], tty: false, size: None, env: ["A=1"] }"#]);
    let stdin = vec![b'z'; 200_000];
    let ran = run(&node.client, api::ExecContainerRequest { stdin: stdin.clone(), ..request(&["cat"]) });
    let ran = ran.await.unwrap();
    assert_eq!((ran.stdout, ran.end.unwrap().exit_code), (stdin, 0));
}

#[tokio::test]
async fn the_output_cap_truncates_and_cuts_the_command_off() {
    let node = Node::start().await;
    let ran = run(&node.client, api::ExecContainerRequest { max_output_bytes: 1000, ..request(&["yes"]) });
    let ran = ran.await.unwrap();
    assert_eq!(ran.stdout, vec![b'y'; 1000]);
    assert_eq!(ran.end, Some(api::ExecContainerEnd { exit_code: -1, timed_out: false, truncated: true }));
    cut_off(&node).await;
}

#[tokio::test]
async fn the_deadline_ends_the_call_and_cuts_the_command_off() {
    let node = Node::start().await;
    let started = Instant::now();
    let ran = run(&node.client, api::ExecContainerRequest { timeout_seconds: 1, ..request(&["sleep", "100"]) });
    let ran = ran.await.unwrap();
    assert_eq!(ran.end, Some(api::ExecContainerEnd { exit_code: -1, timed_out: true, truncated: false }));
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    cut_off(&node).await;
}

#[tokio::test]
async fn a_caller_that_goes_away_takes_the_command_along() {
    let node = Node::start().await;
    let stream = node.client.exec_container(request(&["sleep", "100"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);
    cut_off(&node).await;
}

#[tokio::test]
async fn bad_fields_are_named_and_refusals_passed_on() {
    let node = Node::start().await;
    for (bad, message) in [
        (api::ExecContainerRequest { id: String::new(), ..request(&["true"]) }, "id: required"),
        (request(&[]), "command: must not be empty"),
        (api::ExecContainerRequest { timeout_seconds: 3601, ..request(&["true"]) }, "timeout_seconds: "),
        (api::ExecContainerRequest { env: vec!["NVIDIA_VISIBLE_DEVICES=all".into()], ..request(&["true"]) }, "env: "),
    ] {
        let err = run(&node.client, bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(message), "{message}: {err:?}");
    }
    assert!(node.fakes.runtime.take_calls().is_empty(), "a bad request reached container-runtime");
    node.fakes.runtime.fail_with(Refusal::new(Reason::NotFound, "container c-1 not found").into_status());
    let err = run(&node.client, request(&["true"])).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::NotFound, "container c-1 not found"));
    node.fakes.runtime.fail_with(Refusal::new(Reason::WrongState, "container c-1 is not running").into_status());
    let err = run(&node.client, request(&["true"])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}
