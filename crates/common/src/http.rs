//! Every HTTP listener of the node (executor-api's health port, each process's metrics port):
//! an axum router served over HTTP/1.1 with caps and deadlines, so that strangers cannot hold
//! the port (issue 17, item 11). `axum::serve` has neither, and cannot be given them.
//!
//! - At most [`HttpLimits::max_connections`] in all and [`HttpLimits::max_connections_per_ip`]
//!   from one address ([`PeerKey`]); a connection past either is closed at once.
//! - A request's headers must arrive within [`HttpLimits::header_timeout`], counted from when
//!   the server waits for them: a slow header and a connection idle between requests are
//!   closed alike.
//! - A connection lives at most [`HttpLimits::max_connection_age`]; past it, it is closed once
//!   the response it is writing is done, or cut one header timeout later (a client that does
//!   not read its response holds nothing for long).

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::peers::{PeerSlots, SlotsFull};

/// The caps and deadlines of one HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections at once, in all.
    pub max_connections: usize,
    /// Connections at once from one address (an IPv4 address, or an IPv6 /64).
    pub max_connections_per_ip: usize,
    /// Longest the server waits for a request's headers (the first, or the next on a kept-alive
    /// connection).
    pub header_timeout: Duration,
    /// Longest a connection lives.
    pub max_connection_age: Duration,
}

impl HttpLimits {
    /// For the node's listeners, which answer small GETs (`/health`, `/livez`, `/readyz`,
    /// `/metrics`) to load balancers, probes and a scraper: a few connections each, a fresh
    /// connection every minute or so.
    pub const DEFAULT: HttpLimits = HttpLimits {
        max_connections: 256,
        max_connections_per_ip: 16,
        header_timeout: Duration::from_secs(10),
        max_connection_age: Duration::from_secs(60),
    };
}

/// Why a connection was closed at once: the `limit` label of
/// `executor_http_connections_refused_total`.
fn limit_name(full: SlotsFull) -> &'static str {
    match full {
        SlotsFull::All { .. } => "max_connections",
        SlotsFull::Peer { .. } => "max_connections_per_ip",
    }
}

/// Logs and counts a connection to `listener` refused at once. Debug level: a flood of them
/// is the counter's business, not the log's.
fn refused(listener: &'static str, peer: SocketAddr, full: SlotsFull) {
    let limit = limit_name(full);
    metrics::counter!("executor_http_connections_refused_total", "listener" => listener, "limit" => limit).increment(1);
    tracing::debug!(listener, %peer, limit, "HTTP connection refused");
}

fn describe_metrics(listener: &'static str) {
    metrics::describe_counter!(
        "executor_http_connections_refused_total",
        "Connections to an HTTP listener (health, metrics) closed at once, by the limit reached."
    );
    for limit in ["max_connections", "max_connections_per_ip"] {
        metrics::counter!("executor_http_connections_refused_total", "listener" => listener, "limit" => limit)
            .absolute(0);
    }
}

/// Serves `router` on `listener` (named `listener` in logs and metrics: `health`, `metrics`)
/// under `limits` until `shutdown`, then lets the connections finish their responses for up
/// to a header timeout.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    name: &'static str,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    describe_metrics(name);
    let slots = PeerSlots::new(limits.max_connections, limits.max_connections_per_ip);
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: say so, and keep serving.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match slots.try_acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(full) => {
                refused(name, peer, full);
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
            let end = tokio::select! {
                served = connection.as_mut() => Some(served),
                () = tokio::time::sleep(limits.max_connection_age) => None,
                () = shutdown.cancelled() => None,
            };
            let served = match end {
                Some(served) => served,
                None => {
                    connection.as_mut().graceful_shutdown();
                    tokio::time::timeout(limits.header_timeout, connection).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = served {
                tracing::debug!(listener = name, %peer, error = %e, "HTTP connection ended");
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    use super::*;

    /// Longest a test waits for the server to answer or close: far past every deadline set.
    const PATIENCE: Duration = Duration::from_secs(10);

    const LIMITS: HttpLimits = HttpLimits {
        max_connections: 4,
        max_connections_per_ip: 2,
        header_timeout: Duration::from_millis(300),
        max_connection_age: Duration::from_secs(2),
    };

    /// `/ok`, and `/endless`, a body that never ends.
    async fn served() -> (SocketAddr, CancellationToken) {
        const CHUNK: &[u8] = &[b'x'; 1024];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endless =
            || async { Body::from_stream(tokio_stream::iter(std::iter::repeat_with(|| Ok::<_, io::Error>(CHUNK)))) };
        let router = axum::Router::new().route("/ok", get(|| async { "ok" })).route("/endless", get(endless));
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, router, "test", LIMITS, shutdown.clone()));
        (addr, shutdown)
    }

    async fn connect_from(addr: SocketAddr, source: [u8; 4]) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        socket.connect(addr).await.unwrap()
    }

    /// Whether a GET of `path` on `stream` is answered 200 (a refused connection is closed).
    async fn answered(stream: &mut TcpStream, path: &str) -> bool {
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        match tokio::time::timeout(PATIENCE, stream.read_exact(&mut head)).await {
            Ok(Ok(_)) => &head == b"HTTP/1.1 200",
            Ok(Err(_)) => false,
            Err(_) => panic!("no answer and no close in {PATIENCE:?}"),
        }
    }

    /// Whether the server closes `stream` (what it sends before is read and dropped).
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut sink = vec![0u8; 1 << 16];
        let drain = async { while let Ok(1..) = stream.read(&mut sink).await {} };
        tokio::time::timeout(PATIENCE, drain).await.is_ok()
    }

    #[tokio::test]
    async fn slow_and_idle_connections_are_closed_at_the_header_timeout() {
        let (addr, _shutdown) = served().await;
        for (sent, source) in [(&b""[..], 2), (b"GET /ok HTTP/1.1\r\nHost: x\r\n", 3)] {
            let mut stream = connect_from(addr, [127, 0, 0, source]).await;
            stream.write_all(sent).await.unwrap();
            let text = String::from_utf8_lossy(sent);
            assert!(closed(&mut stream).await, "a connection that sent {text:?} was still open after {PATIENCE:?}");
        }
        // Answered, then idle: closed too.
        let mut stream = connect_from(addr, [127, 0, 0, 4]).await;
        assert!(answered(&mut stream, "/ok").await);
        assert!(closed(&mut stream).await, "an idle kept-alive connection was still open after {PATIENCE:?}");
    }

    #[tokio::test]
    async fn connections_are_capped_per_address_and_in_all() {
        let (addr, _shutdown) = served().await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(connect_from(addr, [127, 0, 0, 2]).await);
        }
        let mut answers = Vec::new();
        for stream in &mut held {
            answers.push(answered(stream, "/ok").await);
        }
        assert_eq!(answers, [true, true, false], "127.0.0.2 is allowed 2 connections");
        let mut other = connect_from(addr, [127, 0, 0, 3]).await;
        assert!(answered(&mut other, "/ok").await);
        let mut fourth = connect_from(addr, [127, 0, 0, 4]).await;
        assert!(answered(&mut fourth, "/ok").await);
        // 4 held in all: a fifth address is refused.
        let mut fifth = connect_from(addr, [127, 0, 0, 5]).await;
        assert!(!answered(&mut fifth, "/ok").await, "a fifth connection was served; the cap is 4");
        drop(held);
        let mut again = connect_from(addr, [127, 0, 0, 5]).await;
        assert!(answered(&mut again, "/ok").await, "slots were not given back");
    }

    #[tokio::test]
    async fn a_connection_is_cut_at_its_age() {
        let (addr, _shutdown) = served().await;
        let mut stream = connect_from(addr, [127, 0, 0, 2]).await;
        assert!(answered(&mut stream, "/endless").await);
        assert!(closed(&mut stream).await, "an endless response was still going after {PATIENCE:?}");
    }
}
