//! The two doors validators come in through, each turning its protocol into calls on
//! [`crate::access::Access`]: the embedded SSH server ([`embedded`]) and the host's sshd
//! through a forced command and a relay socket ([`gate`]). Admission, the command grammar,
//! running commands and ending sessions are the same for both and live below.

pub mod embedded;
pub mod gate;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `connection` (an SSH connection of one of the embedded servers) to its end. Past
/// `grace` without `authenticated` cancelled, `socket` (a second handle on the connection's
/// socket) is shut down under russh, whatever it waits for, which ends the connection, and
/// `expired` runs (to count and report it).
pub(crate) async fn with_login_grace(
    connection: impl std::future::Future<Output = ()>,
    socket: std::net::TcpStream,
    grace: Duration,
    authenticated: CancellationToken,
    expired: impl FnOnce(),
) {
    // Never ends: the connection's end ends the select.
    let grace_time = async {
        tokio::select! {
            () = tokio::time::sleep(grace) => {
                let _ = socket.shutdown(std::net::Shutdown::Both);
                expired();
            }
            () = authenticated.cancelled() => {}
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = connection => {}
        () = grace_time => {}
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
