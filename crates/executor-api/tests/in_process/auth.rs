//! The signature layer in front of every handler: each refusal has its code and reason, and a
//! refused call never reaches a peer.

use std::time::{SystemTime, UNIX_EPOCH};

use common::proto::runtime::v1 as runtime;
use executor_api::auth::sign;
use executor_api::client::ExecutorClient;
use prost::Message;
use tonic::{Code, Request, Status};

use common::hotkey::HotkeyPair;

use common::proto::api::v1::executor_api_client::ExecutorApiClient;

use crate::node::{Node, Options, channel_from, test_id};

const GET: &str = "/executor.api.v1.ExecutorApi/GetContainer";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// `message` with the given signature metadata.
fn with_headers<T>(message: T, headers: &[(&'static str, String)]) -> Request<T> {
    let mut request = Request::new(message);
    for (name, value) in headers {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    request
}

fn c1() -> runtime::ContainerRef {
    runtime::ContainerRef { id: "c-1".into() }
}

/// The status is `code`, its message starts with `<reason>:`, and it carries `public_reason`.
fn refused(status: Status, code: Code, reason: &str, public_reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().starts_with(&format!("{reason}: ")), "{status:?}");
    assert_eq!(status.metadata().get("x-executor-reason").unwrap(), public_reason, "{status:?}");
    assert!(status.metadata().get("x-request-id").is_some(), "{status:?}");
}

#[tokio::test]
async fn refusals_have_their_codes_and_reach_no_peer() {
    let node = Node::start().await;
    let mut raw = node.raw();
    let alice = &node.alice;

    // No signature, unary and streaming.
    let err = raw.get_container(c1()).await.unwrap_err();
    refused(err, Code::Unauthenticated, "missing_signature", "bad_signature");
    let err = raw.stream_logs(runtime::LogsRequest { id: "c-1".into(), ..Default::default() }).await.unwrap_err();
    refused(err, Code::Unauthenticated, "missing_signature", "bad_signature");
    let err = raw.watch_events(runtime::WatchEventsRequest::default()).await.unwrap_err();
    refused(err, Code::Unauthenticated, "missing_signature", "bad_signature");

    // A body other than the one signed.
    let mut request = node.client.signed("GetContainer", c1());
    request.get_mut().id = "c-2".into();
    refused(raw.get_container(request).await.unwrap_err(), Code::Unauthenticated, "bad_signature", "bad_signature");

    // Malformed metadata: a signature that is not hex.
    let mut headers = sign(alice, &test_id(), GET, &c1().encode_to_vec(), now());
    headers[4].1 = "zz".into();
    let err = raw.get_container(with_headers(c1(), &headers)).await.unwrap_err();
    refused(err, Code::Unauthenticated, "malformed_metadata", "bad_signature");

    // Signed an hour ago, and an hour ahead.
    for timestamp in [now() - 3600, now() + 3600] {
        let headers = sign(alice, &test_id(), GET, &c1().encode_to_vec(), timestamp);
        let err = raw.get_container(with_headers(c1(), &headers)).await.unwrap_err();
        refused(err, Code::Unauthenticated, "stale_timestamp", "bad_signature");
    }

    // Another hotkey's valid signature.
    let stranger = HotkeyPair::from_seed(&[2; 32]);
    let err = node.client_of(stranger).get_container(c1()).await.unwrap_err();
    refused(err, Code::PermissionDenied, "hotkey_not_allowed", "bad_signature");

    assert_eq!(node.fakes.runtime.take_calls(), Vec::<String>::new());
}

#[tokio::test]
async fn a_nonce_is_spent_once() {
    let node = Node::start().await;
    let mut raw = node.raw();
    let headers = sign(&node.alice, &node.executor_id, GET, &c1().encode_to_vec(), now());
    raw.get_container(with_headers(c1(), &headers)).await.unwrap();
    let err = raw.get_container(with_headers(c1(), &headers)).await.unwrap_err();
    refused(err, Code::Unauthenticated, "replayed_nonce", "bad_signature");
    assert_eq!(node.fakes.runtime.take_calls().len(), 1);
}

#[tokio::test]
async fn the_rate_limit_counts_signed_calls() {
    let node = Node::with(Options { per_minute: 2, ..Options::default() }).await;
    // Unsigned calls do not use the miner's budget.
    for _ in 0..3 {
        node.raw().get_container(c1()).await.unwrap_err();
    }
    let per_call = node.client.clone().per_call();
    per_call.get_container(c1()).await.unwrap();
    per_call.get_container(c1()).await.unwrap();
    let err = per_call.get_container(c1()).await.unwrap_err();
    assert!(err.message().starts_with("rate_limited: more than 2 calls a minute"), "{err:?}");
    refused(err, Code::ResourceExhausted, "rate_limited", "limit_reached");
    assert_eq!(node.fakes.runtime.take_calls().len(), 2);
    // Calls in a session count the same, OpenSession included.
    let node = Node::with(Options { per_minute: 3, ..Options::default() }).await;
    node.client.get_container(c1()).await.unwrap();
    node.client.get_container(c1()).await.unwrap();
    let err = node.client.get_container(c1()).await.unwrap_err();
    refused(err, Code::ResourceExhausted, "rate_limited", "limit_reached");
    assert_eq!(node.fakes.runtime.take_calls().len(), 2);
}

/// Issue 25 item 1: the client's calls go in a signed session; a captured session call is
/// refused when replayed; a session the executor no longer knows (ended for a newer one, as
/// after a restart) is reopened by the client, which sends the call again.
#[tokio::test]
async fn calls_in_a_session_are_replay_proof_and_reopened_when_gone() {
    let node = Node::with(Options { max_sessions: Some(1), ..Options::default() }).await;
    let captured = node.client.authorized("GetContainer", c1()).await.unwrap();
    assert_eq!(captured.metadata().get("x-executor-auth").unwrap(), "v3");
    let headers = captured.metadata().clone();
    node.raw().get_container(captured).await.unwrap();
    let mut replay = Request::new(c1());
    *replay.metadata_mut() = headers;
    let err = node.raw().get_container(replay).await.unwrap_err();
    refused(err, Code::Unauthenticated, "replayed_counter", "bad_signature");
    assert_eq!(node.fakes.runtime.take_calls().len(), 1);
    // Another client opens a session: max_sessions = 1 ends the first one.
    let other = node.client_of(HotkeyPair::parse(e2e::ALICE_SEED).unwrap());
    other.get_container(c1()).await.unwrap();
    let stale = node.client.authorized("GetContainer", c1()).await.unwrap();
    let err = node.raw().get_container(stale).await.unwrap_err();
    refused(err, Code::Unauthenticated, "unknown_session", "bad_signature");
    // The client itself reopens and sends the call again: the caller sees an answer.
    node.client.get_container(c1()).await.unwrap();
    assert_eq!(node.fakes.runtime.take_calls().len(), 2);
    // The per-call signature keeps working beside sessions.
    node.client.clone().per_call().get_container(c1()).await.unwrap();
}

/// The client renews its session before it ends, counting the session's life on its own
/// clock (`ttl_seconds`), never by comparing its wall clock with the executor's.
#[tokio::test]
async fn the_client_renews_its_session_before_it_ends() {
    let ttl = std::time::Duration::from_secs(4);
    let node = Node::with(Options { session_ttl: Some(ttl), ..Options::default() }).await;
    let session = |r: &Request<runtime::ContainerRef>| r.metadata().get("x-executor-session").unwrap().clone();
    let first = session(&node.client.authorized("GetContainer", c1()).await.unwrap());
    let again = session(&node.client.authorized("GetContainer", c1()).await.unwrap());
    assert_eq!(first, again, "one session for calls within its life");
    // Renewed a quarter of its life before it ends (a minute for the usual hour).
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let renewed = node.client.authorized("GetContainer", c1());
    let renewed = renewed.await.unwrap();
    assert_ne!(session(&renewed), first);
    node.raw().get_container(renewed).await.unwrap();
}

#[tokio::test]
async fn health_is_open_and_every_answer_names_its_request_id() {
    let node = Node::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(node.channel.clone());
    let request = tonic_health::pb::HealthCheckRequest { service: "executor.api.v1.ExecutorApi".into() };
    assert_eq!(health.check(request).await.unwrap().into_inner().status, 1);
    let request = node.client.signed("Identity", common::proto::api::v1::IdentityRequest {});
    let response = node.raw().identity(request).await.unwrap();
    let id = response.metadata().get("x-request-id").unwrap().to_str().unwrap();
    let (prefix, counter) = id.split_once('-').unwrap();
    assert_eq!(prefix.len(), 8, "{id}");
    assert!(counter.parse::<u64>().is_ok(), "{id}");
}

/// Every answer names the executor (`x-executor-id`), the open health check and refusals
/// included: a client learns whom it signs for, and a pinned client is told when the endpoint
/// is another executor.
#[tokio::test]
async fn every_answer_names_the_executor_and_clients_learn_it() {
    let node = Node::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(node.channel.clone());
    let answer = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(answer.metadata().get("x-executor-id").unwrap(), node.executor_id.as_str());
    let refusal = node.raw().get_container(c1()).await.unwrap_err();
    assert_eq!(refusal.metadata().get("x-executor-id").unwrap(), node.executor_id.as_str());

    let endpoint = format!("http://{}", node.addr);
    let alice = || HotkeyPair::parse(e2e::ALICE_SEED).unwrap();
    let client = ExecutorClient::connect(&endpoint, None, alice()).await.unwrap();
    assert_eq!(client.executor_id(), node.executor_id);
    client.get_container(c1()).await.unwrap();
    ExecutorClient::connect_pinned(&endpoint, None, alice(), Some(&node.executor_id)).await.unwrap();
    let other = ExecutorClient::connect_pinned(&endpoint, None, alice(), Some("executor-other")).await.unwrap_err();
    assert_eq!(other.to_string(), format!("{endpoint} is {}, not the executor executor-other", node.executor_id));
}

/// Issue 17 item 9: the miner's hotkey is public, so a stranger's calls pass the header checks
/// and reach the signature checker, each with a body of up to 1 MiB read first. After
/// `auth_failures_per_minute` refusals an address is refused before its bodies are read or its
/// signatures checked; the miner, from another address, is served.
#[tokio::test]
async fn a_bad_signature_flood_is_refused_before_bodies_are_read() {
    let node = Node::with(Options { auth_failures_per_minute: Some(5), ..Options::default() }).await;
    let channel = channel_from(node.addr, [127, 0, 0, 2]).await.unwrap();
    let mut raw = ExecutorApiClient::new(channel);
    // A well-formed sr25519 signature by the miner, over another call: it takes a full check.
    let forged = || {
        let mut headers = sign(&node.alice, &node.executor_id, GET, &c1().encode_to_vec(), now());
        headers[4].1 = sign(&node.alice, &node.executor_id, GET, b"another body", now())[4].1.clone();
        headers
    };
    for i in 0..20 {
        let err = raw.get_container(with_headers(c1(), &forged())).await.unwrap_err();
        let reason = if i < 5 { "bad_signature" } else { "too_many_failures" };
        assert!(err.message().starts_with(&format!("{reason}: ")), "call {i} from 127.0.0.2: {err:?}");
    }
    // Not read: a body past the 1 MiB bound would be `malformed_body` once read.
    let big = runtime::CreateContainerRequest { image: "x".repeat(2 << 20), ..Default::default() };
    let err = raw.create_container(with_headers(big, &forged())).await.unwrap_err();
    refused(err, Code::ResourceExhausted, "too_many_failures", "limit_reached");
    node.client.get_container(c1()).await.unwrap();
    assert_eq!(node.fakes.runtime.take_calls().len(), 1);
}

/// Issue 17 item 12: a call captured on its way to one executor, replayed to another executor
/// of the same miner, is refused: the signed string names the executor.
#[tokio::test]
async fn a_call_signed_for_one_executor_is_refused_by_another() {
    let a = Node::with(Options { identity_seed: [10; 32], ..Options::default() }).await;
    let b = Node::with(Options { identity_seed: [11; 32], ..Options::default() }).await;
    let captured = a.client.signed("GetContainer", c1());
    let replayed = b.raw().get_container(captured).await;
    let err = replayed.map(|_| ()).expect_err("executor-b answered a call signed for executor-a");
    refused(err, Code::Unauthenticated, "bad_signature", "bad_signature");
    assert!(b.fakes.runtime.take_calls().is_empty());
    a.client.get_container(c1()).await.unwrap();
}

/// Issue 17 item 12: a client of the first scheme (no executor id in the signed string, no
/// `x-executor-auth`) is told what changed before any signature is checked.
#[tokio::test]
async fn a_first_scheme_call_is_told_to_sign_with_the_second() {
    let node = Node::start().await;
    let (timestamp, nonce) = (now(), "00112233445566778899aabbccddeeff");
    let digest = hex::encode(sha2_256(&c1().encode_to_vec()));
    let v1 = format!("basilica-executor-api-v1\n{GET}\n{timestamp}\n{nonce}\n{digest}");
    let headers = [
        ("x-executor-hotkey", node.alice.hotkey().to_string()),
        ("x-executor-timestamp", timestamp.to_string()),
        ("x-executor-nonce", nonce.to_owned()),
        ("x-executor-signature", hex::encode(node.alice.sign(v1.as_bytes()))),
    ];
    let answer = node.raw().get_container(with_headers(c1(), &headers)).await;
    let err = answer.map(|_| ()).expect_err("a first-scheme call was answered");
    refused(err.clone(), Code::Unauthenticated, "unsupported_scheme", "bad_signature");
    assert!(err.message().contains("x-executor-auth: v2") && err.message().contains("docs/api.md"), "{err:?}");
}

fn sha2_256(bytes: &[u8]) -> [u8; 32] {
    executor_api::auth::sha256(bytes)
}
