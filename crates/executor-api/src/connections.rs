//! Who may hold a connection to the public port, and for how long (issue 17, item 8).
//!
//! - `[server] max_connections` in all, `max_connections_per_ip` for one peer (an IPv4
//!   address or an IPv6 /64, [`PeerKey`]): a connection past its peer's share is closed at once.
//! - A connection is a *stranger* until it makes an authenticated call ([`Peer::authenticated`]).
//!   When every slot is held, a new connection takes the slot of the oldest stranger, which is
//!   closed; only when authenticated connections hold every slot is the new one closed. Idle
//!   strangers, from however many addresses, never lock the miner out.
//! - `[server] handshake_timeout`: a connection that has not delivered its first request's
//!   headers (after the TLS handshake and the HTTP/2 preface) in time is closed.
//!
//! The connection's own IO ([`Door`]) does the closing: while hyper or the TLS handshake polls
//! it, it watches its deadline and its eviction, and once either fires it fails the read or
//! write, which ends the connection. Connections are never queued, so a flood holds no memory.
//! `max_connection_age` is tonic's (`serve_public`).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use common::config::ServerConfig;
use common::peers::{PeerKey, PeerSlots, Slot, SlotsFull};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// The limits of the public port, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub handshake_timeout: Duration,
}

impl Limits {
    pub fn of(server: &ServerConfig) -> Self {
        Self {
            max_connections: server.max_connections as usize,
            max_connections_per_ip: server.max_connections_per_ip as usize,
            handshake_timeout: server.handshake_timeout,
        }
    }
}

/// Why the server closed a connection: the `limit` label of
/// `executor_api_connections_refused_total` (closed at once) or the `reason` label of
/// `executor_api_connections_closed_total` (closed later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// Refused: its peer held `max_connections_per_ip`.
    PeerFull,
    /// Refused: authenticated connections held every slot.
    AllFull,
    /// A newcomer took its slot: it was the oldest stranger when every slot was held.
    Evicted,
    /// No complete first request within `handshake_timeout`.
    HandshakeTimeout,
}

impl Closed {
    fn as_str(self) -> &'static str {
        match self {
            Closed::PeerFull => "max_connections_per_ip",
            Closed::AllFull => "max_connections",
            Closed::Evicted => "evicted",
            Closed::HandshakeTimeout => "handshake_timeout",
        }
    }

    /// Logs and counts one connection closed for this reason. Debug level: a flood of them is
    /// the counters' business, not the log's.
    fn record(self, peer: SocketAddr) {
        match self {
            Closed::PeerFull | Closed::AllFull => {
                metrics::counter!("executor_api_connections_refused_total", "limit" => self.as_str()).increment(1);
            }
            Closed::Evicted | Closed::HandshakeTimeout => {
                metrics::counter!("executor_api_connections_closed_total", "reason" => self.as_str()).increment(1);
            }
        }
        tracing::debug!(%peer, reason = self.as_str(), "connection closed");
    }
}

fn describe_metrics() {
    metrics::describe_gauge!("executor_api_connections", "Open connections to the public gRPC port.");
    metrics::describe_counter!(
        "executor_api_connections_refused_total",
        "Connections to the public gRPC port closed at once, by the limit reached: max_connections_per_ip, or \
         max_connections (authenticated connections held every slot)."
    );
    metrics::describe_counter!(
        "executor_api_connections_closed_total",
        "Connections to the public gRPC port closed later by the server: evicted (the oldest stranger, whose \
         slot a newcomer took), handshake_timeout (no complete first request in time)."
    );
    for limit in [Closed::PeerFull, Closed::AllFull] {
        metrics::counter!("executor_api_connections_refused_total", "limit" => limit.as_str()).absolute(0);
    }
    for reason in [Closed::Evicted, Closed::HandshakeTimeout] {
        metrics::counter!("executor_api_connections_closed_total", "reason" => reason.as_str()).absolute(0);
    }
}

/// What a connection is to the slot policy.
const STRANGER: u8 = 0;
const KNOWN: u8 = 1;
const EVICTED: u8 = 2;

/// One accepted connection, shared by its IO, the stranger list and the calls made on it.
#[derive(Debug)]
struct Conn {
    /// Accept order: the lowest stranger is the oldest.
    order: u64,
    local: Option<SocketAddr>,
    remote: SocketAddr,
    state: AtomicU8,
    /// Whether a request's headers have arrived.
    requested: AtomicBool,
    evict: CancellationToken,
    /// Its place under the caps; taken away when it is evicted, given back when it closes.
    slot: Mutex<Option<Slot>>,
    strangers: Arc<Strangers>,
}

/// The strangers' connections by age.
#[derive(Debug, Default)]
struct Strangers(Mutex<BTreeMap<u64, Arc<Conn>>>);

impl Strangers {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Conn>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the oldest stranger and frees its slot; false when there is none.
    fn evict_oldest(&self) -> bool {
        loop {
            let Some((_, conn)) = self.lock().pop_first() else { return false };
            // It may have authenticated since it was listed: then it stays.
            if conn.state.compare_exchange(STRANGER, EVICTED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                drop(conn.slot.lock().unwrap_or_else(|e| e.into_inner()).take());
                conn.evict.cancel();
                Closed::Evicted.record(conn.remote);
                return true;
            }
        }
    }
}

/// The peer of a call: in the request extensions (tonic puts a connection's
/// [`Connected::connect_info`] there), for the layer to mark its connection and key its limits.
#[derive(Debug, Clone)]
pub struct Peer(Arc<Conn>);

impl Peer {
    /// The peer of `request`'s connection, plaintext or TLS.
    pub fn of<B>(request: &http::Request<B>) -> Option<Peer> {
        let extensions = request.extensions();
        extensions
            .get::<Peer>()
            .or_else(|| extensions.get::<TlsConnectInfo<Peer>>().map(TlsConnectInfo::get_ref))
            .cloned()
    }

    pub fn remote_addr(&self) -> SocketAddr {
        self.0.remote
    }

    /// The key of its per-address limits.
    pub fn key(&self) -> PeerKey {
        PeerKey::of(self.0.remote.ip())
    }

    /// What tonic's `Request::remote_addr` reads.
    pub fn tcp_info(&self) -> TcpConnectInfo {
        TcpConnectInfo { local_addr: self.0.local, remote_addr: Some(self.0.remote) }
    }

    /// A request's headers arrived: the handshake deadline no longer applies.
    pub fn requested(&self) {
        self.0.requested.store(true, Ordering::Release);
    }

    /// The connection made an authenticated call: it is never evicted.
    pub fn authenticated(&self) {
        let conn = &self.0;
        if conn.state.compare_exchange(STRANGER, KNOWN, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            conn.strangers.lock().remove(&conn.order);
        }
    }
}

/// A connection of the public port: the TCP stream, its slot, and the deadline and eviction
/// that close it.
#[derive(Debug)]
pub struct Door {
    stream: TcpStream,
    conn: Arc<Conn>,
    /// Until the first request's headers arrive.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Until the connection authenticates.
    evicted: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// Once closed, every later read and write fails the same way.
    closed: Option<Closed>,
}

impl Door {
    /// Fails once the connection is evicted or its handshake deadline passes; registers the
    /// waker for both otherwise, so that hyper polls again when either fires.
    fn watch(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.closed.is_none() {
            if let Some(evicted) = &mut self.evicted {
                if self.conn.state.load(Ordering::Acquire) == KNOWN {
                    self.evicted = None;
                } else if evicted.as_mut().poll(cx).is_ready() {
                    self.closed = Some(Closed::Evicted);
                }
            }
            if let Some(deadline) = &mut self.deadline {
                if self.conn.requested.load(Ordering::Acquire) {
                    self.deadline = None;
                } else if deadline.as_mut().poll(cx).is_ready() {
                    Closed::HandshakeTimeout.record(self.conn.remote);
                    self.closed = Some(Closed::HandshakeTimeout);
                }
            }
        }
        match self.closed {
            None => Ok(()),
            Some(Closed::HandshakeTimeout) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "no request within server.handshake_timeout"))
            }
            Some(_) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, "evicted: every slot was held")),
        }
    }
}

/// Accepts on `listener` until `shutdown`, handing on the connections the limits admit.
pub fn accept(
    listener: TcpListener,
    limits: Limits,
    shutdown: CancellationToken,
) -> (ReceiverStream<io::Result<Door>>, tokio::task::JoinHandle<()>) {
    describe_metrics();
    let (tx, rx) = mpsc::channel(16);
    let slots = PeerSlots::new(limits.max_connections, limits.max_connections_per_ip);
    let strangers = Arc::new(Strangers::default());
    let order = AtomicU64::new(0);
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.cancelled() => return,
            };
            let (stream, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: say so, and keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = match slots.try_acquire(remote.ip()) {
                Ok(slot) => Ok(slot),
                Err(SlotsFull::All { .. }) if strangers.evict_oldest() => slots.try_acquire(remote.ip()),
                Err(full) => Err(full),
            };
            let slot = match slot {
                Ok(slot) => slot,
                Err(full) => {
                    let closed =
                        if matches!(full, SlotsFull::Peer { .. }) { Closed::PeerFull } else { Closed::AllFull };
                    closed.record(remote);
                    drop(stream);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let conn = Arc::new(Conn {
                order: order.fetch_add(1, Ordering::Relaxed),
                local: stream.local_addr().ok(),
                remote,
                state: AtomicU8::new(STRANGER),
                requested: AtomicBool::new(false),
                evict: CancellationToken::new(),
                slot: Mutex::new(Some(slot)),
                strangers: strangers.clone(),
            });
            strangers.lock().insert(conn.order, conn.clone());
            metrics::gauge!("executor_api_connections").increment(1.0);
            let door = Door {
                stream,
                deadline: Some(Box::pin(tokio::time::sleep(limits.handshake_timeout))),
                evicted: Some(Box::pin(conn.evict.clone().cancelled_owned())),
                conn,
                closed: None,
            };
            if tx.send(Ok(door)).await.is_err() {
                return;
            }
        }
    });
    (ReceiverStream::new(rx), task)
}

impl Drop for Door {
    fn drop(&mut self) {
        metrics::gauge!("executor_api_connections").decrement(1.0);
        // Off the stranger list (which would otherwise keep it), its slot given back.
        self.conn.strangers.lock().remove(&self.conn.order);
        drop(self.conn.slot.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

impl Connected for Door {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        Peer(self.conn.clone())
    }
}

impl AsyncRead for Door {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.watch(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Door {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.watch(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.watch(cx)?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.watch(cx)?;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
