//! The two doors validators come in through, each turning its protocol into calls on
//! [`crate::access::Access`]: the embedded SSH server ([`embedded`]) and the host's sshd
//! through a forced command and a relay socket ([`gate`]). Admission, the command grammar,
//! running commands and ending sessions are the same for both and live below.

pub mod embedded;
pub mod gate;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long a connection ended from outside ([`Cut::now`]) has to end by itself, with the
/// client told why, before it is dropped.
pub(crate) const DISCONNECT_GRACE: Duration = Duration::from_millis(250);

/// What ends a connection of one of the embedded SSH servers from outside russh: its login
/// grace, unless [`Leash::logged_in`] comes first, and a cut-off ([`Cut`]). The connection's
/// handler holds a clone; [`run_connection`] watches it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Leash {
    authenticated: CancellationToken,
    cut: CancellationToken,
}

impl Leash {
    /// The login grace time no longer applies.
    pub(crate) fn logged_in(&self) {
        self.authenticated.cancel();
    }

    /// What ends this connection once logged in; `handle` is its session's.
    pub(crate) fn cut(&self, handle: russh::server::Handle) -> Cut {
        Cut { handle, cut: self.cut.clone() }
    }
}

/// Ends a logged-in connection from outside: the client gets the disconnect and its reason,
/// and the connection is dropped [`DISCONNECT_GRACE`] later if it has not ended by then. The
/// drop is what makes the end certain: russh takes no message for a connection (a disconnect
/// included) while one of its channels holds output the client has not made room for, so a
/// client that stops reading would otherwise keep its session, and its commands, for as long
/// as it liked.
#[derive(Clone)]
pub struct Cut {
    handle: russh::server::Handle,
    cut: CancellationToken,
}

impl std::fmt::Debug for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cut").field("cut", &self.cut.is_cancelled()).finish_non_exhaustive()
    }
}

impl Cut {
    /// Ends the connection, telling the client `why`. Returns at once: it never waits on the
    /// client.
    pub fn now(&self, why: &str) {
        let (handle, why) = (self.handle.clone(), why.to_owned());
        tokio::spawn(async move {
            let _ = handle.disconnect(russh::Disconnect::ByApplication, why, "en".into()).await;
        });
        self.cut.cancel();
    }
}

/// Runs `connection` (an SSH connection of one of the embedded servers) to its end. Past
/// `grace` without [`Leash::logged_in`], `socket` (a second handle on the connection's socket)
/// is shut down under russh, whatever it waits for, which ends the connection, and `expired`
/// runs (to count and report it). [`DISCONNECT_GRACE`] after a [`Cut`], the socket is shut down
/// and the connection dropped, whatever it was doing.
pub(crate) async fn run_connection(
    connection: impl std::future::Future<Output = ()>,
    socket: std::net::TcpStream,
    grace: Duration,
    leash: Leash,
    expired: impl FnOnce(),
) {
    // Never ends: the connection's end ends the select.
    let grace_time = async {
        tokio::select! {
            () = tokio::time::sleep(grace) => {
                let _ = socket.shutdown(std::net::Shutdown::Both);
                expired();
            }
            () = leash.authenticated.cancelled() => {}
        }
        std::future::pending::<()>().await;
    };
    let cut_off = async {
        leash.cut.cancelled().await;
        tokio::time::sleep(DISCONNECT_GRACE).await;
    };
    tokio::select! {
        () = connection => {}
        () = grace_time => {}
        () = cut_off => {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The russh `Handler` methods both embedded SSH servers (validators' and renters') answer
/// alike: X11 (channels and requests), remote forwarding and agent forwarding are refused,
/// each through the server's own `refuse(what)`, which counts and audits it.
macro_rules! refuse_x11_agent_and_remote_forwarding {
    () => {
        async fn channel_open_x11(
            &mut self,
            _channel: russh::Channel<russh::server::Msg>,
            _originator: &str,
            _originator_port: u32,
            reply: russh::server::ChannelOpenHandle,
            _session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            self.refuse("x11");
            reply.reject(russh::ChannelOpenFailure::AdministrativelyProhibited).await;
            Ok(())
        }

        async fn tcpip_forward(
            &mut self,
            _address: &str,
            _port: &mut u32,
            _session: &mut russh::server::Session,
        ) -> Result<bool, Self::Error> {
            self.refuse("remote_port_forwarding");
            Ok(false)
        }

        async fn agent_request(
            &mut self,
            _channel: russh::ChannelId,
            _session: &mut russh::server::Session,
        ) -> Result<bool, Self::Error> {
            self.refuse("agent_forwarding");
            Ok(false)
        }

        async fn x11_request(
            &mut self,
            channel: russh::ChannelId,
            _single: bool,
            _protocol: &str,
            _cookie: &str,
            _screen: u32,
            session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            self.refuse("x11");
            session.channel_failure(channel)
        }
    };
}
pub(crate) use refuse_x11_agent_and_remote_forwarding;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use super::*;

    /// Sets its flag when dropped.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn socket() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener.accept().unwrap().0, client)
    }

    #[tokio::test]
    async fn a_cut_connection_is_dropped_and_its_socket_shut_after_the_grace_whatever_it_waits_for() {
        let (server, mut client) = socket();
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = Dropped(dropped.clone());
        // A connection stuck for good, as russh is while a channel holds unread output.
        let connection = async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        };
        let leash = Leash::default();
        leash.logged_in();
        let started = Instant::now();
        leash.cut.cancel();
        tokio::time::timeout(
            Duration::from_secs(5),
            run_connection(connection, server, Duration::from_secs(60), leash, || {}),
        )
        .await
        .expect("the cut connection kept running");
        assert!(started.elapsed() >= DISCONNECT_GRACE, "{:?}", started.elapsed());
        assert!(dropped.load(Ordering::SeqCst), "the connection was not dropped");
        let mut byte = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut client, &mut byte).unwrap(), 0, "the client saw no end");
    }

    #[tokio::test]
    async fn a_connection_that_ends_by_itself_ends_the_run_without_waiting() {
        let (server, _client) = socket();
        let started = Instant::now();
        run_connection(async {}, server, Duration::from_secs(60), Leash::default(), || panic!("not expired")).await;
        assert!(started.elapsed() < DISCONNECT_GRACE);
    }
}
