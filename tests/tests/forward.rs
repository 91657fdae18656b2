//! Forward on container-runtime as a process, over its socket, on the real Docker engine: a
//! connection to a server on the container's loopback, bytes both ways with a half-close, the
//! refusals (every target but the loopback, a bad port, a stopped or unknown container, nothing
//! listening), each naming its field or its rule, and the service's shutdown ending a forward.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::time::{Duration, Instant};

use common::proto::runtime::v1 as pb;
use e2e::runtime::{Client, remove_all, request, run, start_service};
use e2e::{TestConfig, busybox_image};
use pb::forward_input::Input;
use pb::forward_output::Output;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// One Forward call: what goes in, and what comes out.
struct Forward {
    input: mpsc::Sender<pb::ForwardInput>,
    output: tonic::Streaming<pb::ForwardOutput>,
}

fn start(id: &str, host: &str, port: u32) -> Input {
    Input::Start(pb::ForwardStart { id: id.to_owned(), host: host.to_owned(), port })
}

/// Sends `first`, then opens the call: the forward once `connected` came (with the address),
/// or the refusal.
async fn open(client: &mut Client, first: Input) -> Result<(Forward, String), tonic::Status> {
    let (input, rx) = mpsc::channel(4);
    input.send(pb::ForwardInput { input: Some(first) }).await.unwrap();
    let mut output = client.forward(ReceiverStream::new(rx)).await?.into_inner();
    match output.message().await? {
        Some(pb::ForwardOutput { output: Some(Output::Connected(c)) }) => Ok((Forward { input, output }, c.address)),
        other => panic!("not `connected` first: {other:?}"),
    }
}

impl Forward {
    async fn send(&self, input: Input) {
        self.input.send(pb::ForwardInput { input: Some(input) }).await.unwrap();
    }

    /// Everything until the stream ends (within 20 s).
    async fn rest(&mut self) -> Result<Vec<u8>, tonic::Status> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, self.output.message()).await.expect("no end in 20 s")? {
                Some(pb::ForwardOutput { output: Some(Output::Data(data)) }) => got.extend(data),
                Some(other) => panic!("unexpected {other:?}"),
                None => return Ok(got),
            }
        }
    }
}

/// Opens a forward to `port` on the loopback of `id`, waiting up to 10 s for its server to
/// listen.
async fn connect(client: &mut Client, id: &str, port: u32) -> (Forward, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open(client, start(id, "localhost", port)).await {
            Ok(forward) => return forward,
            Err(e) if e.code() == Code::FailedPrecondition && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test]
async fn forwards_reach_the_loopback_and_nothing_else() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("");
    let (_service, mut client) = start_service(&config).await;
    let c = run(&mut client, request("nc -ll -p 8888 -e cat & exec sleep 600")).await;
    let stopped = run(&mut client, request("sleep 600")).await;
    client
        .stop(pb::StopContainerRequest { id: stopped.id.clone(), timeout_seconds: 0, ..Default::default() })
        .await
        .unwrap();

    // Both ways through `cat`, a few hundred KiB, the half-close reaching it.
    let (mut forward, address) = connect(&mut client, &c.id, 8888).await;
    assert_eq!(address, "127.0.0.1:8888");
    let chunk: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
    let input = forward.input.clone();
    let sent = chunk.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..8 {
            input.send(pb::ForwardInput { input: Some(Input::Data(sent.clone())) }).await.unwrap();
        }
        input.send(pb::ForwardInput { input: Some(Input::CloseWrite(true)) }).await.unwrap();
    });
    let got = forward.rest().await.unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), 8 * chunk.len());
    assert!(got.chunks(chunk.len()).all(|c| c == chunk.as_slice()));
    let (mut by_address, address) = open(&mut client, start(&c.id, "127.0.0.1", 8888)).await.unwrap();
    assert_eq!(address, "127.0.0.1:8888");
    by_address.send(Input::Data(b"hi".to_vec())).await;
    by_address.send(Input::CloseWrite(true)).await;
    assert_eq!(by_address.rest().await.unwrap(), b"hi");

    let loopback_only = "start.host: only the container's own loopback (localhost, 127.0.0.1, ::1) can be forwarded to";
    let mut cases: Vec<(Input, Code, &str)> = [
        "172.17.0.1",
        "169.254.169.254",
        "0.0.0.0",
        "127.0.0.2",
        "10.0.0.1",
        "example.com",
        "localhost.",
        "[::1]",
        "::ffff:127.0.0.1",
        "",
    ]
    .into_iter()
    .map(|host| (start(&c.id, host, 8888), Code::PermissionDenied, loopback_only))
    .collect();
    cases.extend([
        (start(&c.id, "localhost", 0), Code::InvalidArgument, "start.port: 0 is not between 1 and 65535"),
        (start(&c.id, "localhost", 70000), Code::InvalidArgument, "start.port"),
        (start("c-000000000000", "localhost", 8888), Code::NotFound, "container c-000000000000 not found"),
        (start("../etc", "localhost", 8888), Code::InvalidArgument, "id:"),
        (start(&stopped.id, "localhost", 8888), Code::FailedPrecondition, "is not running"),
        (start(&c.id, "127.0.0.1", 1), Code::FailedPrecondition, "nothing listens on 127.0.0.1:1 in the container"),
        (Input::Data(b"GET /".to_vec()), Code::InvalidArgument, "start: the first message must be `start`"),
    ]);
    for (first, code, words) in cases {
        let shown = format!("{first:?}");
        let err = open(&mut client, first).await.err().unwrap_or_else(|| panic!("{shown}: not refused"));
        assert_eq!(err.code(), code, "{shown}: {err:?}");
        assert!(err.message().contains(words), "{shown}: {}", err.message());
    }

    let (_, metrics) = e2e::http_get(config.ports.metrics[1], "/metrics").await.unwrap();
    for counted in [
        "executor_container_runtime_forwards_total{result=\"not_permitted\"} 10",
        "executor_container_runtime_forwards_total{result=\"connected\"} 2",
    ] {
        assert!(metrics.contains(counted), "{counted}:\n{metrics}");
    }
    remove_all(&mut client).await;
}

#[tokio::test]
async fn shutdown_ends_the_forwards() {
    if !busybox_image().await {
        return;
    }
    let config = TestConfig::new("");
    let (mut service, mut client) = start_service(&config).await;
    let c = run(&mut client, request("nc -ll -p 8888 -e sleep 1000 & exec sleep 600")).await;
    let (mut forward, _) = connect(&mut client, &c.id, 8888).await;
    common::process::send_signal(service.id().unwrap(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let err = forward.rest().await.expect_err("the forward ended without an error");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("shutting down"), "{}", err.message());
    let exit = tokio::time::timeout(Duration::from_secs(10), service.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit:?}");
    let (_service, mut client) = start_service(&config).await;
    remove_all(&mut client).await;
}
