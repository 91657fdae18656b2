//! The public port against strangers (issue 17, item 8): idle connections from one address or
//! many cannot take the slots the miner needs, and a connection that sends no request is
//! closed at `[server] handshake_timeout`. Peers are told apart by their source address: every
//! address of 127.0.0.0/8 is local, so a test can be many peers.

use std::net::SocketAddr;
use std::time::Duration;

use common::proto::api::v1 as api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::node::{Node, Options, connect_from};

/// The HTTP/2 client preface and an empty SETTINGS frame: the first bytes of every gRPC
/// connection, and no request.
const PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Longest a test waits for the server to answer or close a connection: far past every
/// deadline the tests set, so reaching it means the server did neither.
const PATIENCE: Duration = Duration::from_secs(10);

/// Whether the server took the connection: it sends its SETTINGS frame first, and closes a
/// connection it refuses without a byte.
async fn served(stream: &mut TcpStream) -> bool {
    let mut frame = [0u8; 9];
    match tokio::time::timeout(PATIENCE, stream.read_exact(&mut frame)).await {
        Ok(Ok(_)) => true,
        Ok(Err(_)) => false,
        Err(_) => panic!("the server neither answered nor closed a connection in {PATIENCE:?}"),
    }
}

/// A connection from `source` that the server took, held idle; `None` if it was refused.
async fn idle_from(addr: SocketAddr, source: [u8; 4]) -> Option<TcpStream> {
    let mut stream = connect_from(addr, source).await.unwrap();
    served(&mut stream).await.then_some(stream)
}

/// Whether the server closes `stream` (reading to its end) within [`PATIENCE`].
async fn closed(stream: &mut TcpStream) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut sink)).await.is_ok()
}

/// The attack: one address holds the whole cap in idle sockets; the miner, from
/// another address, still gets a connection and an answer.
#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let options = Options { max_connections: Some(8), max_connections_per_ip: Some(4), ..Options::default() };
    let node = Node::with(options).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.extend(idle_from(node.addr, [127, 0, 0, 2]).await);
    }
    let client = node.client_from([127, 0, 0, 1]).await.unwrap();
    let identity = client.identity().await;
    let identity =
        identity.unwrap_or_else(|e| panic!("the miner was refused while 127.0.0.2 held {}: {e:?}", held.len()));
    assert_eq!(identity.executor_id, node.executor_id);
    assert_eq!(held.len(), 4, "127.0.0.2 holds {} connections; max_connections_per_ip is 4", held.len());
}

/// Idle strangers from many addresses fill every slot: an authenticated connection keeps its
/// slot, and a new connection takes the oldest stranger's.
#[tokio::test]
async fn strangers_cannot_exhaust_the_slots() {
    let options = Options {
        max_connections: Some(6),
        max_connections_per_ip: Some(2),
        // Only eviction closes a stranger in this test.
        handshake_timeout: Some(Duration::from_secs(60)),
        ..Options::default()
    };
    let node = Node::with(options).await;
    node.client.identity().await.unwrap();
    let mut strangers = Vec::new();
    for peer in 2..10 {
        for _ in 0..2 {
            strangers.extend(idle_from(node.addr, [127, 0, 0, peer]).await);
        }
    }
    node.client.identity().await.unwrap_or_else(|e| panic!("the miner's connection was lost: {e:?}"));
    let client = node.client_from([127, 0, 0, 1]).await.unwrap();
    let identity = client.identity().await;
    identity
        .unwrap_or_else(|e| panic!("a new connection of the miner was refused ({} strangers): {e:?}", strangers.len()));
    // Every stranger was taken in, each newcomer closing the oldest.
    assert_eq!(strangers.len(), 16, "strangers were refused while strangers held slots");
    assert!(closed(&mut strangers[0]).await, "the oldest stranger still holds its slot");
    assert_eq!(node.connects(), 1, "the miner's first connection was closed");
}

/// A connection that sends nothing, half a preface, or the preface and no request is closed
/// at `handshake_timeout`; one that made a request is not.
#[tokio::test]
async fn a_connection_without_a_request_is_closed_at_handshake_timeout() {
    let options = Options { handshake_timeout: Some(Duration::from_millis(300)), ..Options::default() };
    let node = Node::with(options).await;
    for sent in [&b""[..], &PREFACE_AND_SETTINGS[..10], PREFACE_AND_SETTINGS] {
        let mut stream = connect_from(node.addr, [127, 0, 0, 2]).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let text = String::from_utf8_lossy(sent);
        assert!(closed(&mut stream).await, "a connection that sent {text:?} was still open after {PATIENCE:?}");
    }
    // The node's client made a request before a silent stranger's deadline passed: once the
    // stranger is closed, the client's connection still answers.
    node.client.identity().await.unwrap();
    let mut silent = connect_from(node.addr, [127, 0, 0, 3]).await.unwrap();
    assert!(closed(&mut silent).await);
    let reconnects = node.connects();
    node.client.identity().await.unwrap();
    assert_eq!(node.connects(), reconnects, "the client had to reconnect");
}

/// `max_connection_age`: an old connection is asked to close, and a call in flight on it
/// finishes first; the client's next call comes on a new connection.
#[tokio::test]
async fn an_old_connection_closes_after_its_calls_finish() {
    let options =
        Options { max_connection_age: Some(Duration::from_secs(1)), attestor_seconds: 2, ..Options::default() };
    let node = Node::with(options).await;
    let report = node.client.run_attestation(api::AttestationRequest::default()).await.unwrap().report_json;
    assert!(report.contains("\"fake\":true"), "{report}");
    assert_eq!(node.connects(), 1);
    node.client.identity().await.unwrap();
    assert_eq!(node.connects(), 2, "the client's connection outlived max_connection_age");
}
