//! Forward: a TCP connection to a running container's own loopback, for a renter's `ssh -L`.
//! [`Runtime::forward`] checks the target (only `localhost`, `127.0.0.1` or `::1`, nothing is
//! resolved), finds the container's init on the host and connects from inside the
//! container's network namespace: a thread of its own enters the namespace (`setns`),
//! connects, and ends; the socket stays in the namespace it was made in. So the container's
//! loopback is reached and nothing else is: not the host, not another container, not the
//! network. [`Forwarding::run`] then carries bytes both ways until the container's side
//! closes, the client goes, or the service shuts down (tracked with the Attach sessions).

use std::fmt::Display;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::proto::runtime::v1 as pb;
use pb::forward_input::Input;
use pb::forward_output::Output;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::attach::{invalid, running_pid};
use super::{Runtime, RuntimeError};

/// How long a connection inside the container may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes read from the container's side at once: one `data` message.
const READ_BUFFER: usize = 16 << 10;

/// A forward connected inside a container, not yet run.
#[derive(Debug)]
pub struct Forwarding {
    /// Our id of the container.
    container: String,
    /// Where the socket is connected, inside the container.
    address: SocketAddr,
    stream: tokio::net::TcpStream,
    /// Cancelled when the service shuts down.
    closing: CancellationToken,
}

/// How a forward ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardEnd {
    /// The container's side closed the connection (or reset it: `reset` says why).
    Closed { reset: Option<String> },
    /// The client's input broke or it stopped listening.
    ClientGone { why: String },
    /// The client sent something invalid; the error was sent.
    Refused { why: String },
    /// The service shut down; the client was told.
    ShutDown,
}

/// The loopback addresses `host` names inside the container, in the order they are tried:
/// the allow-list is these three spellings, and nothing is resolved.
fn loopback(host: &str, port: u32) -> Result<Vec<SocketAddr>, RuntimeError> {
    let ips: &[IpAddr] = match host {
        "localhost" => &[IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)],
        "127.0.0.1" => &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        "::1" => &[IpAddr::V6(Ipv6Addr::LOCALHOST)],
        _ => return Err(RuntimeError::ForwardTarget { host: host.to_owned() }),
    };
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| invalid("start.port", format!("{port} is not between 1 and 65535")))?;
    Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
}

/// The network namespace of the process `pid`, opened; a process that is gone is a
/// container that stopped.
fn open_namespace(id: &str, pid: u32) -> Result<File, RuntimeError> {
    File::open(format!("/proc/{pid}/ns/net")).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => RuntimeError::NotRunning { id: id.to_owned() },
        _ => RuntimeError::Namespace { id: id.to_owned(), source },
    })
}

/// Refuses a namespace that is this service's own (the host's, for a container started with
/// the host's network): its loopback is the host's.
fn not_ours(id: &str, namespace: &File) -> Result<(), RuntimeError> {
    let fail = |source| RuntimeError::Namespace { id: id.to_owned(), source };
    let theirs = namespace.metadata().map_err(fail)?;
    let ours = std::fs::metadata("/proc/self/ns/net").map_err(fail)?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Err(RuntimeError::SharesHostNetwork { id: id.to_owned() });
    }
    Ok(())
}

/// Connects to the first of `targets` that accepts, from inside `namespace`: on a thread of
/// its own, which enters the namespace and ends when the socket is made (a thread that
/// changed its namespace never goes back to a pool). The first target's error when none
/// accepts.
async fn connect_in(
    id: &str,
    namespace: File,
    targets: Vec<SocketAddr>,
) -> Result<(SocketAddr, tokio::net::TcpStream), RuntimeError> {
    let (tx, rx) = oneshot::channel();
    let connect = move || {
        let result = nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Failure::Namespace(e.into()))
            .and_then(|()| {
                let mut first = None;
                for address in targets {
                    match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
                        Ok(stream) => return Ok((address, stream)),
                        Err(e) => {
                            first.get_or_insert((address, e));
                        }
                    }
                }
                Err(first.map_or(Failure::NoTarget, |(address, e)| Failure::Connect(address, e)))
            });
        let _ = tx.send(result);
    };
    let fail = |failure| match failure {
        Failure::Namespace(source) => RuntimeError::Namespace { id: id.to_owned(), source },
        Failure::Connect(address, source) => match source.kind() {
            std::io::ErrorKind::ConnectionRefused => RuntimeError::NothingListens { id: id.to_owned(), address },
            std::io::ErrorKind::TimedOut => RuntimeError::ConnectTimeout { id: id.to_owned(), address },
            _ => RuntimeError::Connect { id: id.to_owned(), address, source },
        },
        Failure::NoTarget => RuntimeError::Namespace { id: id.to_owned(), source: std::io::Error::other("no target") },
    };
    std::thread::Builder::new()
        .name("forward-connect".to_owned())
        .spawn(connect)
        .map_err(|source| RuntimeError::Namespace { id: id.to_owned(), source })?;
    let (address, stream) = rx
        .await
        .map_err(|_| RuntimeError::Namespace { id: id.to_owned(), source: std::io::Error::other("the thread died") })?
        .map_err(fail)?;
    let stream = stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(stream))
        .map_err(|source| RuntimeError::Namespace { id: id.to_owned(), source })?;
    Ok((address, stream))
}

/// What the connecting thread ran into.
#[derive(Debug)]
enum Failure {
    Namespace(std::io::Error),
    Connect(SocketAddr, std::io::Error),
    NoTarget,
}

impl Runtime {
    /// Connects to `start.host:start.port` inside a running container of ours: the target
    /// checked, the container's network namespace entered by a thread of its own.
    pub async fn forward(&self, start: pb::ForwardStart) -> Result<Forwarding, RuntimeError> {
        let closing = self.sessions.closing();
        if closing.is_cancelled() {
            return Err(RuntimeError::ShuttingDown);
        }
        let targets = loopback(&start.host, start.port)?;
        let id = start.id;
        let pid = running_pid(&id, &self.ours(&id).await?)?;
        let namespace = open_namespace(&id, pid)?;
        not_ours(&id, &namespace)?;
        // The container may have stopped and its PID gone to another process before the
        // namespace was opened: it must still run as that PID now.
        if running_pid(&id, &self.ours(&id).await?)? != pid {
            return Err(RuntimeError::NotRunning { id });
        }
        let (address, stream) = connect_in(&id, namespace, targets).await?;
        tracing::info!(id, %address, "forward connected");
        Ok(Forwarding { container: id, address, stream, closing })
    }
}

/// How the client's side of a forward ended.
#[derive(Debug)]
enum InputEnd {
    /// The client finished sending (a clean end of its stream).
    Finished,
    /// The client's stream failed.
    Broken(String),
    /// The client sent something invalid.
    Invalid(RuntimeError),
}

/// How the container's side ended.
#[derive(Debug)]
enum OutputEnd {
    /// It closed (None) or reset (the error) the connection.
    Closed(Option<String>),
    /// The client stopped listening.
    ClientGone,
}

impl Forwarding {
    /// Where the socket is connected inside the container.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Carries the forward to its end: `input` is what the client sends after `start` (its
    /// failures as `Err`), `out` where the answers go (bounded: a slow client slows the
    /// container's side down, and the next `data` is read only when the last was written).
    pub async fn run<E: Display>(
        self,
        mut input: impl Stream<Item = Result<pb::ForwardInput, E>> + Send + Unpin,
        out: mpsc::Sender<Result<pb::ForwardOutput, RuntimeError>>,
    ) -> ForwardEnd {
        let Self { container, address, mut stream, closing } = self;
        let connected = Output::Connected(pb::ForwardConnected { address: address.to_string() });
        if out.send(Ok(pb::ForwardOutput { output: Some(connected) })).await.is_err() {
            return ForwardEnd::ClientGone { why: "stopped listening".to_owned() };
        }
        let (mut reader, mut writer) = stream.split();
        let inbound = feed(&mut input, &mut writer);
        let outbound = pump(&mut reader, &out);
        tokio::pin!(inbound, outbound);
        let mut input_open = true;
        loop {
            tokio::select! {
                end = &mut inbound, if input_open => match end {
                    InputEnd::Finished => input_open = false,
                    InputEnd::Broken(why) => return ForwardEnd::ClientGone { why },
                    InputEnd::Invalid(e) => {
                        let why = e.to_string();
                        let _ = out.send(Err(e)).await;
                        return ForwardEnd::Refused { why };
                    }
                },
                end = &mut outbound => return match end {
                    OutputEnd::Closed(reset) => {
                        tracing::debug!(container, %address, ?reset, "the container's side closed the forward");
                        ForwardEnd::Closed { reset }
                    }
                    OutputEnd::ClientGone => ForwardEnd::ClientGone { why: "stopped listening".to_owned() },
                },
                () = out.closed() => return ForwardEnd::ClientGone { why: "stopped listening".to_owned() },
                () = closing.cancelled() => {
                    let _ = out.send(Err(RuntimeError::ShuttingDown)).await;
                    return ForwardEnd::ShutDown;
                }
            }
        }
    }
}

/// Writes the client's data to the container's side as it comes (the next message is read
/// only when the last was written); `close_write`, or the end of the client's stream, is a
/// half-close. Returns when the client is done or broke, or sent something invalid.
async fn feed<E: Display>(
    input: &mut (impl Stream<Item = Result<pb::ForwardInput, E>> + Unpin),
    writer: &mut (impl AsyncWrite + Unpin),
) -> InputEnd {
    let mut write_open = true;
    loop {
        let message = match input.next().await {
            Some(Ok(message)) => message,
            Some(Err(e)) => return InputEnd::Broken(e.to_string()),
            None => {
                if write_open {
                    let _ = writer.shutdown().await;
                }
                return InputEnd::Finished;
            }
        };
        match message.input {
            Some(Input::Data(bytes)) if write_open => {
                if let Err(e) = writer.write_all(&bytes).await {
                    // The container's side stopped reading: what follows has nowhere to go.
                    tracing::debug!(error = %e, "the forward's container side does not take more");
                    write_open = false;
                }
            }
            Some(Input::CloseWrite(true)) if write_open => {
                write_open = false;
                let _ = writer.shutdown().await;
            }
            Some(Input::Data(_) | Input::CloseWrite(_)) | None => {}
            Some(Input::Start(_)) => return InputEnd::Invalid(invalid("start", "sent twice; only the first message")),
        }
    }
}

/// Sends what the container's side writes to the client, [`READ_BUFFER`] at most a message,
/// until it closes.
async fn pump(
    reader: &mut (impl AsyncRead + Unpin),
    out: &mpsc::Sender<Result<pb::ForwardOutput, RuntimeError>>,
) -> OutputEnd {
    let mut buffer = vec![0; READ_BUFFER];
    loop {
        let n = match reader.read(&mut buffer).await {
            Ok(0) => return OutputEnd::Closed(None),
            Ok(n) => n,
            Err(e) => return OutputEnd::Closed(Some(e.to_string())),
        };
        let data = buffer.get(..n).unwrap_or_default().to_vec();
        if out.send(Ok(pb::ForwardOutput { output: Some(Output::Data(data)) })).await.is_err() {
            return OutputEnd::ClientGone;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SpecError;

    /// Each target: the addresses tried, or the field refused.
    #[test]
    fn only_the_containers_loopback_is_a_target() {
        let check = |host: &str, port: u32, expected: Result<&[&str], &str>| {
            let got = loopback(host, port).map(|a| a.iter().map(ToString::to_string).collect::<Vec<_>>());
            match (got, expected) {
                (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{host}:{port}"),
                (Err(RuntimeError::ForwardTarget { .. }), Err(field)) => assert_eq!(field, "start.host"),
                (Err(RuntimeError::Invalid(SpecError { field, .. })), Err(expected)) => {
                    assert_eq!(field, expected, "{host}:{port}");
                }
                (got, expected) => panic!("{host}:{port}: {got:?}, expected {expected:?}"),
            }
        };
        check("localhost", 8888, Ok(&["127.0.0.1:8888", "[::1]:8888"]));
        check("127.0.0.1", 1, Ok(&["127.0.0.1:1"]));
        check("::1", 65535, Ok(&["[::1]:65535"]));
        for host in [
            "0.0.0.0",
            "::",
            "127.0.0.2",
            "[::1]",
            "LOCALHOST",
            "localhost.",
            "localhost.localdomain",
            "172.17.0.1",
            "169.254.169.254",
            "10.0.0.1",
            "8.8.8.8",
            "example.com",
            "::ffff:127.0.0.1",
            "0x7f000001",
            "2130706433",
            "127.1",
            "",
        ] {
            check(host, 80, Err("start.host"));
        }
        check("localhost", 0, Err("start.port"));
        check("127.0.0.1", 65536, Err("start.port"));
        // The host is checked first: a bad host with a bad port names the host.
        check("10.0.0.1", 0, Err("start.host"));
    }

    #[test]
    fn the_message_of_a_refused_target_names_the_rule() {
        let e = loopback("172.17.0.1", 22).unwrap_err();
        assert_eq!(
            e.to_string(),
            "start.host: only the container's own loopback (localhost, 127.0.0.1, ::1) can be forwarded to"
        );
    }

    #[tokio::test]
    async fn a_forward_carries_bytes_both_ways_and_half_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            socket.read_to_end(&mut got).await.unwrap();
            socket.write_all(&got.repeat(2)).await.unwrap();
        });
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let forwarding = Forwarding { container: "c-1".into(), address, stream, closing: CancellationToken::new() };
        let input = tokio_stream::iter([
            Ok::<_, String>(pb::ForwardInput { input: Some(Input::Data(b"ab".to_vec())) }),
            Ok(pb::ForwardInput { input: Some(Input::Data(b"c".to_vec())) }),
            Ok(pb::ForwardInput { input: Some(Input::CloseWrite(true)) }),
        ])
        .chain(tokio_stream::pending());
        let (tx, mut rx) = mpsc::channel(4);
        let end = forwarding.run(input, tx).await;
        assert_eq!(end, ForwardEnd::Closed { reset: None });
        let mut outputs = Vec::new();
        while let Some(item) = rx.recv().await {
            outputs.push(item.unwrap().output.unwrap());
        }
        let Some(Output::Connected(connected)) = outputs.first() else { panic!("{outputs:?}") };
        assert_eq!(connected.address, address.to_string());
        let data: Vec<u8> = outputs[1..]
            .iter()
            .flat_map(|o| match o {
                Output::Data(d) => d.clone(),
                Output::Connected(_) => panic!("connected twice"),
            })
            .collect();
        assert_eq!(data, b"abcabc");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_second_start_is_refused_and_shutdown_ends_a_forward() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let _server = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let start = pb::ForwardStart { id: "c-1".into(), host: "localhost".into(), port: 1 };
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let forwarding = Forwarding { container: "c-1".into(), address, stream, closing: CancellationToken::new() };
        let input = tokio_stream::iter([Ok::<_, String>(pb::ForwardInput { input: Some(Input::Start(start)) })])
            .chain(tokio_stream::pending());
        let (tx, mut rx) = mpsc::channel(4);
        assert!(matches!(forwarding.run(input, tx).await, ForwardEnd::Refused { .. }));
        assert!(rx.recv().await.unwrap().is_ok());
        assert!(
            matches!(rx.recv().await.unwrap(), Err(RuntimeError::Invalid(SpecError { field, .. })) if field == "start")
        );

        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let closing = CancellationToken::new();
        let forwarding = Forwarding { container: "c-1".into(), address, stream, closing: closing.clone() };
        let (tx, mut rx) = mpsc::channel(4);
        let run = tokio::spawn(forwarding.run(tokio_stream::pending::<Result<pb::ForwardInput, String>>(), tx));
        assert!(rx.recv().await.unwrap().is_ok());
        closing.cancel();
        assert!(matches!(run.await.unwrap(), ForwardEnd::ShutDown));
        assert!(matches!(rx.recv().await.unwrap(), Err(RuntimeError::ShuttingDown)));
    }
}
