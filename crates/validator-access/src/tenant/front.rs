//! The renters' SSH server (`[tenant_access] ssh_port`): `ssh -p 2222 <container id>@host`
//! with a key given for that container opens a login shell inside it (a PTY when asked for),
//! or runs `ssh ... cmd` there through `/bin/sh -c`. The shell and commands are streaming
//! execs container-runtime runs ([`runtime::AttachInput`]): the image needs no sshd and no
//! passwd entry. The `sftp` subsystem (also `scp`) works inside the container's root
//! ([`crate::tenant::sftp`]). `ssh -L port:localhost:port` reaches a server on the container's own loopback
//! ([`crate::tenant::forward`]: container-runtime connects inside the container's network
//! namespace); any other target (the host, other containers, the network) is refused, and so
//! are remote forwarding, the agent and X11. Public-key authentication only.
//!
//! Before authentication a connection holds one of `max_unauthenticated_connections` slots
//! (`max_unauthenticated_per_address` per address) for at most `login_grace_time`, and
//! connections and failed authentications count against `ssh_requests_per_minute` per source
//! address. Sessions close when their key is removed or their container stops, goes or passes
//! its TTL ([`crate::tenant::access::Tenants::reap`]); a closed connection takes the
//! processes it started with it (its execs are cancelled, and container-runtime kills them).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use common::clock::SystemClock;
use common::config::SshCipher;
use common::peers::{PeerKey, PeerSlots, Slot};
use common::proto::runtime::v1 as runtime;
use common::proto::runtime::v1::attach_input::Input;
use common::proto::runtime::v1::attach_output::Output;
use common::ratelimit::RateLimiter;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session as SshSession, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::front::Leash;
use crate::grants::fingerprint;
use crate::sessions::new_session_id;
use crate::tenant::access::Tenants;
use crate::tenant::forward;
use crate::tenant::sessions::TenantSession;
use crate::tenant::sftp;
use crate::time::now;

/// russh's name of a cipher of `[tenant_access] ciphers`.
fn cipher_name(cipher: SshCipher) -> russh::cipher::Name {
    match cipher {
        SshCipher::Aes256Gcm => russh::cipher::AES_256_GCM,
        SshCipher::Aes128Gcm => russh::cipher::AES_128_GCM,
        SshCipher::Aes256Ctr => russh::cipher::AES_256_CTR,
        SshCipher::Aes192Ctr => russh::cipher::AES_192_CTR,
        SshCipher::Aes128Ctr => russh::cipher::AES_128_CTR,
        SshCipher::Chacha20Poly1305 => russh::cipher::CHACHA20_POLY1305,
    }
}

/// The largest terminal a PTY request may ask for, each way.
const MAX_TERMINAL: u32 = 1000;
/// Environment variables a client may send (as OpenSSH's default `AcceptEnv`).
fn accepted_env(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_") || name == "TZ"
}

/// Counts a refusal by reason.
fn refused(reason: &'static str) {
    metrics::counter!("executor_validator_access_tenant_refused_total", "reason" => reason).increment(1);
}

/// Serves renters' SSH on `listener` until `shutdown`.
pub async fn serve(
    tenants: Arc<Tenants>,
    listener: tokio::net::TcpListener,
    host_key: russh::keys::PrivateKey,
    shutdown: CancellationToken,
) {
    let c = tenants.config().clone();
    let config = Arc::new(russh::server::Config {
        methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        inactivity_timeout: Some(c.idle_timeout),
        keepalive_interval: Some(Duration::from_secs(30)),
        max_auth_attempts: 6,
        nodelay: true,
        preferred: russh::Preferred {
            cipher: c.ciphers.iter().copied().map(cipher_name).collect::<Vec<_>>().into(),
            ..russh::Preferred::DEFAULT
        },
        ..Default::default()
    });
    let by_ip = Arc::new(RateLimiter::<PeerKey>::new(c.ssh_requests_per_minute, Arc::new(SystemClock)));
    let unauthenticated =
        PeerSlots::new(c.max_unauthenticated_connections as usize, c.max_unauthenticated_per_address as usize);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "tenant SSH accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        if by_ip.check(&PeerKey::of(peer.ip())).is_err() {
            refused("rate_limited");
            continue;
        }
        let Ok(slot) = unauthenticated.try_acquire(peer.ip()) else {
            refused("unauthenticated_limit");
            continue;
        };
        // A second handle on the socket, to shut it down under russh when the grace is over.
        let Ok(socket) = stream.as_fd().try_clone_to_owned().map(std::net::TcpStream::from) else { continue };
        metrics::counter!("executor_validator_access_tenant_connections_total").increment(1);
        let leash = Leash::default();
        let conn = Conn {
            tenants: tenants.clone(),
            peer,
            session_id: new_session_id(),
            login: None,
            channels: HashMap::new(),
            unauthenticated: Some(slot),
            leash: leash.clone(),
            by_ip: by_ip.clone(),
            started: None,
        };
        let config = config.clone();
        let grace = c.login_grace_time;
        tokio::spawn(async move {
            let connection = async {
                if let Ok(session) = russh::server::run_stream(config, stream, conn).await {
                    let _ = session.await;
                }
            };
            crate::front::run_connection(connection, socket, grace, leash, || refused("login_grace_time")).await;
        });
    }
}

/// Who logged in: a key of a container.
#[derive(Debug, Clone)]
struct Login {
    container: String,
    fingerprint: String,
}

/// The PTY a channel asked for.
#[derive(Debug, Clone)]
struct Pty {
    term: String,
    cols: u32,
    rows: u32,
}

/// One channel: a session's PTY and environment until it starts, then its exec's input; or a
/// forward's (`forward`), which starts nothing. `task` carries the exec or the forward and is
/// aborted when the channel or the connection closes.
#[derive(Debug, Default)]
struct ChannelState {
    /// The channel itself until it starts something: an SFTP session reads and writes it as a
    /// stream; a shell or command gets its input through [`Self::input`] (russh would wait for
    /// a channel nobody reads, so it is dropped then).
    channel: Option<Channel<Msg>>,
    pty: Option<Pty>,
    env: Vec<String>,
    input: Option<mpsc::Sender<runtime::AttachInput>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// A `direct-tcpip` channel: no command may start on it.
    forward: bool,
}

/// One connection.
struct Conn {
    tenants: Arc<Tenants>,
    peer: SocketAddr,
    session_id: String,
    login: Option<Login>,
    channels: HashMap<ChannelId, ChannelState>,
    /// Its place among the connections that have not authenticated, given back at login.
    unauthenticated: Option<Slot>,
    /// What ends the connection from outside russh: the login grace, a cut-off.
    leash: Leash,
    by_ip: Arc<RateLimiter<PeerKey>>,
    /// When the session was registered (Unix seconds).
    started: Option<i64>,
}

impl Drop for Conn {
    /// The connection is gone: its execs are cancelled (container-runtime kills what they
    /// started) and the session leaves the registry.
    fn drop(&mut self) {
        for state in self.channels.values_mut() {
            if let Some(task) = state.task.take() {
                task.abort();
            }
        }
        if self.tenants.sessions().remove(&self.session_id).is_some()
            && let Some(login) = &self.login
        {
            self.tenants.audit().record(
                "tenant_session_ended",
                json!({"session": self.session_id, "container": login.container, "fingerprint": login.fingerprint,
                       "peer": self.peer.to_string(), "seconds": self.started.map(|s| now() - s)}),
            );
        }
    }
}

impl Conn {
    /// A refused request after login: counted and audited.
    fn refuse(&self, what: &'static str) {
        refused(what);
        self.tenants.audit().record(
            "tenant_refused",
            json!({"session": self.session_id, "peer": self.peer.to_string(), "what": what,
                   "container": self.login.as_ref().map(|l| l.container.clone())}),
        );
    }

    /// A failed authentication: counted, audited, and past the per-address limit the end of
    /// the connection.
    fn auth_failed(&self, user: &str, fp: &str, reason: &'static str) -> Result<Auth, russh::Error> {
        refused(reason);
        self.tenants.audit().record(
            "tenant_auth_failure",
            json!({"session": self.session_id, "peer": self.peer.to_string(), "user": user, "fingerprint": fp,
                   "reason": reason}),
        );
        if self.by_ip.check(&PeerKey::of(self.peer.ip())).is_err() {
            refused("rate_limited");
            return Err(russh::Error::Disconnect);
        }
        Ok(Auth::reject())
    }

    /// Starts `command` (empty: the login shell) in the container on `channel`.
    fn start(&mut self, channel: ChannelId, command: Vec<String>, shown: &str) {
        let Some(login) = self.login.clone() else { return };
        let Some(state) = self.channels.get_mut(&channel) else { return };
        let Some(open) = state.channel.take() else { return };
        // The output goes out through the channel's write half, which waits for room in the
        // client's window. Output handed to russh past the window waits in the connection, and
        // while any does russh takes no message for the connection at all: once the client
        // closed such a channel, every other channel of the connection stopped. The input comes
        // through `input`; the read half is dropped (russh would wait for one nobody reads).
        let (_, out) = open.split();
        let size =
            state.pty.as_ref().filter(|p| p.cols > 0).map(|p| runtime::TerminalSize { cols: p.cols, rows: p.rows });
        let mut env = state.env.clone();
        if let Some(pty) = state.pty.as_ref().filter(|p| !p.term.is_empty()) {
            env.push(format!("TERM={}", pty.term));
        }
        let start = runtime::AttachStart { id: login.container.clone(), command, tty: state.pty.is_some(), size, env };
        let (tx, rx) = mpsc::channel::<runtime::AttachInput>(32);
        // The first message is queued before anything the client sends after this request.
        let _ = tx.try_send(runtime::AttachInput { input: Some(Input::Start(start)) });
        state.input = Some(tx);
        self.tenants.audit().record(
            "tenant_command",
            json!({"session": self.session_id, "container": login.container, "fingerprint": login.fingerprint,
                   "command": shown, "tty": state.pty.is_some()}),
        );
        metrics::counter!("executor_validator_access_tenant_commands_total").increment(1);
        let mut runtime = self.tenants.runtime();
        let tenants = Arc::clone(&self.tenants);
        let failed = json!({"session": self.session_id, "container": login.container, "command": shown});
        state.task = Some(tokio::spawn(async move {
            // A start container-runtime refuses (no shell in the image, the container stopped
            // meanwhile) is counted as a refusal; it, and an exec that fails once started, is
            // told to the renter on stderr and audited with its reason.
            let failure = |status: &tonic::Status, started: bool| {
                if !started {
                    refused("command_failed");
                }
                let mut fields = failed.clone();
                fields["started"] = json!(started);
                fields["code"] = json!(format!("{:?}", status.code()));
                fields["message"] = json!(status.message());
                tenants.audit().record("tenant_command_failed", fields);
                format!("executor: {}\r\n", status.message())
            };
            let code = match runtime.attach(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
                Ok(response) => {
                    let mut output = response.into_inner();
                    let (mut code, mut started) = (None, false);
                    while let Some(item) = output.next().await {
                        match item.map(|o| o.output) {
                            Ok(Some(Output::Stdout(data))) => {
                                if out.data_bytes(data).await.is_err() {
                                    break;
                                }
                            }
                            Ok(Some(Output::Stderr(data))) => {
                                let _ = out.extended_data_bytes(1, data).await;
                            }
                            Ok(Some(Output::ExitCode(c))) => code = Some(c),
                            Ok(Some(Output::Started(_))) => started = true,
                            Ok(None) => {}
                            Err(status) => {
                                let _ = out.extended_data_bytes(1, failure(&status, started).into_bytes()).await;
                                code = Some(255);
                                break;
                            }
                        }
                    }
                    code.unwrap_or(255)
                }
                Err(status) => {
                    let _ = out.extended_data_bytes(1, failure(&status, false).into_bytes()).await;
                    // 127: what a shell says of a command it cannot start.
                    if status.code() == tonic::Code::FailedPrecondition { 127 } else { 255 }
                }
            };
            let _ = out.exit_status(u32::try_from(code).unwrap_or(255)).await;
            let _ = out.eof().await;
            let _ = out.close().await;
        }));
    }

    /// Whether `channel` may start a command now: logged in, the container still holds the
    /// key, and the channel has not started one.
    fn may_start(&self, channel: ChannelId) -> Result<(), &'static str> {
        let login = self.login.as_ref().ok_or("not_logged_in")?;
        if !self.tenants.keys().opens(&login.container, &login.fingerprint) {
            return Err("key_removed");
        }
        // A channel is taken by whatever it started (a shell, a command, sftp); a forward's is
        // never kept.
        match self.channels.get(&channel) {
            Some(state) if state.channel.is_some() => Ok(()),
            _ => Err("second_command"),
        }
    }

    /// The channels open now. A forward whose task ended was refused (its channel never
    /// opened, so no close will come for it) or has closed its channel: it no longer counts.
    fn open_channels(&mut self) -> usize {
        self.channels.retain(|_, s| !(s.forward && s.task.as_ref().is_none_or(tokio::task::JoinHandle::is_finished)));
        self.channels.len()
    }

    /// Sends what `input` makes to `channel`'s exec, if it runs; nothing is made for a channel
    /// without one (an sftp session's or a forward's data goes by its own stream).
    async fn send(&self, channel: ChannelId, input: impl FnOnce() -> Input) {
        if let Some(tx) = self.channels.get(&channel).and_then(|s| s.input.clone()) {
            let _ = tx.send(runtime::AttachInput { input: Some(input()) }).await;
        }
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        let fp = fingerprint(offer.public_key);
        if self.tenants.keys().opens(user, &fp) { Ok(Auth::Accept) } else { self.auth_failed(user, &fp, "unknown_key") }
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        let fp = fingerprint(key.public_key);
        if !self.tenants.keys().opens(user, &fp) {
            return self.auth_failed(user, &fp, "unknown_key");
        }
        if !self.tenants.is_running(user).await {
            return self.auth_failed(user, &fp, "container_not_running");
        }
        if let Err(full) = self.tenants.sessions().would_admit(user, &fp) {
            refused(full.reason());
            self.tenants.audit().record(
                "tenant_refused",
                json!({"session": self.session_id, "peer": self.peer.to_string(), "container": user,
                       "fingerprint": fp, "what": full.reason(), "detail": full.to_string()}),
            );
            return Ok(Auth::reject());
        }
        self.login = Some(Login { container: user.to_owned(), fingerprint: fp });
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, session: &mut SshSession) -> Result<(), Self::Error> {
        self.unauthenticated = None;
        self.leash.logged_in();
        let Some(login) = &self.login else { return Err(russh::Error::Disconnect) };
        let started = now();
        let entry = TenantSession::new(
            login.container.clone(),
            login.fingerprint.clone(),
            self.peer.to_string(),
            started,
            self.leash.cut(session.handle()),
        );
        if let Err(full) = self.tenants.sessions().insert(self.session_id.clone(), entry) {
            // Another login took the last place since this one was checked.
            refused(full.reason());
            return Err(russh::Error::Disconnect);
        }
        self.started = Some(started);
        metrics::counter!("executor_validator_access_tenant_logins_total").increment(1);
        self.tenants.audit().record(
            "tenant_login",
            json!({"session": self.session_id, "peer": self.peer.to_string(), "container": login.container,
                   "fingerprint": login.fingerprint}),
        );
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        if self.open_channels() >= self.tenants.config().max_channels_per_session as usize {
            self.refuse("channel_limit");
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.channels.insert(channel.id(), ChannelState { channel: Some(channel), ..ChannelState::default() });
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut SshSession) -> Result<(), Self::Error> {
        if let Some(mut state) = self.channels.remove(&channel)
            && let Some(task) = state.task.take()
        {
            task.abort();
        }
        Ok(())
    }

    /// `ssh -L`: for a logged-in renter whose key still opens the container, within
    /// `max_channels_per_session`; container-runtime decides the target (the container's own
    /// loopback only) and the channel is answered once it has (see [`forward::carry`]).
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let open = self.open_channels();
        let peer = self.peer.to_string();
        let container = self.login.as_ref().map(|l| l.container.as_str());
        let refusal = match &self.login {
            None => Some(("not_logged_in", ChannelOpenFailure::AdministrativelyProhibited)),
            Some(login) if !self.tenants.keys().opens(&login.container, &login.fingerprint) => {
                Some(("key_removed", ChannelOpenFailure::AdministrativelyProhibited))
            }
            Some(_) if open >= self.tenants.config().max_channels_per_session as usize => {
                Some(("channel_limit", ChannelOpenFailure::ResourceShortage))
            }
            Some(_) => None,
        };
        if let Some((reason, failure)) = refusal {
            forward::refused(&self.tenants, &self.session_id, &peer, container, (host, port), reason, reason);
            reply.reject(failure).await;
            return Ok(());
        }
        let Some(login) = self.login.clone() else { return Ok(()) };
        let request = forward::Request {
            session: self.session_id.clone(),
            peer,
            container: login.container,
            fingerprint: login.fingerprint,
            host: host.to_owned(),
            port,
        };
        let id = channel.id();
        let task = tokio::spawn(forward::carry(self.tenants.clone(), request, channel, reply));
        self.channels.insert(id, ChannelState { forward: true, task: Some(task), ..ChannelState::default() });
        Ok(())
    }

    crate::front::refuse_x11_agent_and_remote_forwarding!();

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        _px_w: u32,
        _px_h: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        // A client without TERM sends none: the exec gets container-runtime's default.
        let sane_term = term.len() <= 64 && term.bytes().all(|b| b.is_ascii_graphic());
        let Some(state) = self.channels.get_mut(&channel).filter(|s| s.input.is_none()) else {
            return session.channel_failure(channel);
        };
        // 0 by 0: the client does not know its size (its stdin is no terminal).
        let unknown = cols == 0 && rows == 0;
        let fits = (1..=MAX_TERMINAL).contains(&cols) && (1..=MAX_TERMINAL).contains(&rows);
        if !sane_term || !(unknown || fits) {
            self.refuse("pty_size");
            return session.channel_failure(channel);
        }
        state.pty = Some(Pty { term: term.to_owned(), cols, rows });
        session.channel_success(channel)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        _px_w: u32,
        _px_h: u32,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let (cols, rows) = (cols.clamp(1, MAX_TERMINAL), rows.clamp(1, MAX_TERMINAL));
        if let Some(pty) = self.channels.get_mut(&channel).and_then(|s| s.pty.as_mut()) {
            (pty.cols, pty.rows) = (cols, rows);
        }
        self.send(channel, || Input::Resize(runtime::TerminalSize { cols, rows })).await;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(state)
                if accepted_env(name) && state.env.len() < 16 && !value.contains('\0') && value.len() <= 256 =>
            {
                state.env.push(format!("{name}={value}"));
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut SshSession) -> Result<(), Self::Error> {
        if let Err(what) = self.may_start(channel) {
            self.refuse(what);
            return session.channel_failure(channel);
        }
        session.channel_success(channel)?;
        self.start(channel, Vec::new(), "(login shell)");
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        if let Err(what) = self.may_start(channel) {
            self.refuse(what);
            return session.channel_failure(channel);
        }
        let line = String::from_utf8_lossy(data).into_owned();
        session.channel_success(channel)?;
        self.start(channel, vec!["/bin/sh".into(), "-c".into(), line.clone()], &line);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            self.refuse("subsystem");
            return session.channel_failure(channel);
        }
        if let Err(what) = self.may_start(channel) {
            self.refuse(what);
            return session.channel_failure(channel);
        }
        let Some(login) = self.login.clone() else { return session.channel_failure(channel) };
        let Some(stream) = self.channels.get_mut(&channel).and_then(|s| s.channel.take()) else {
            return session.channel_failure(channel);
        };
        let root = match sftp::open_root(&self.tenants, &login.container).await {
            Ok(root) => root,
            Err(e) => {
                tracing::warn!(container = %login.container, error = %e, "cannot open a container's root for SFTP");
                self.refuse("sftp_root");
                return session.channel_failure(channel);
            }
        };
        session.channel_success(channel)?;
        self.tenants.audit().record(
            "tenant_command",
            json!({"session": self.session_id, "container": login.container, "fingerprint": login.fingerprint,
                   "command": "sftp", "tty": false}),
        );
        metrics::counter!("executor_validator_access_tenant_commands_total").increment(1);
        let files = sftp::ContainerFiles::new(self.tenants.clone(), self.session_id.clone(), login.container, root);
        // The session ends with the channel's input (the client closed it, or a cut-off closed
        // the connection): then, as OpenSSH's sftp-server exiting, status 0 before the close.
        let handle = session.handle();
        let on_end = async move {
            let _ = handle.exit_status_request(channel, 0).await;
            let _ = handle.eof(channel).await;
        };
        russh_sftp::server::run(sftp::Fused::new(stream.into_stream(), on_end), files).await;
        Ok(())
    }

    async fn data(&mut self, channel: ChannelId, data: &[u8], _session: &mut SshSession) -> Result<(), Self::Error> {
        self.send(channel, || Input::Stdin(data.to_vec())).await;
        Ok(())
    }

    async fn channel_eof(&mut self, channel: ChannelId, _session: &mut SshSession) -> Result<(), Self::Error> {
        self.send(channel, || Input::CloseStdin(true)).await;
        Ok(())
    }
}
