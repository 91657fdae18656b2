//! One connection to the embedded server: the russh handler. Authentication asks admission;
//! a session is registered once authenticated; at most `max_channels_per_session` channels,
//! one command each; shell and exec requests check the grant again, then go through the
//! grammar and the runner; everything else (PTY, environment, agent, X11, forwarding) is
//! refused.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use common::peers::Slot;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session as SshSession, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, ChannelWriteHalf};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::command::{Job, Output, Stream};
use crate::front::Leash;
use crate::grammar::Planned;
use crate::grants::fingerprint;
use crate::principal::Principal;
use crate::refusals::Refusal;
use crate::sessions::{Closer, Session, new_session_id};
use crate::time::now;

/// A command's output on an SSH channel, through the channel's write half, which waits for
/// room in the client's window. Output handed to russh past the window waits in the
/// connection, and while any does russh takes no message for the connection at all: once the
/// client closed such a channel, every other channel of the connection stopped. A write stops
/// waiting when the channel or the connection is gone (`gone`), so the command's runner
/// always gets to its end.
struct ChannelOutput {
    out: ChannelWriteHalf<Msg>,
    gone: CancellationToken,
}

impl Output for ChannelOutput {
    async fn out(&self, stream: Stream, data: Vec<u8>) {
        let write = async {
            let _ = match stream {
                Stream::Stdout => self.out.data_bytes(data).await,
                Stream::Stderr => self.out.extended_data_bytes(1, data).await,
            };
        };
        tokio::select! {
            () = write => {}
            () = self.gone.cancelled() => {}
        }
    }

    async fn finish(&self, code: u32) {
        let _ = self.out.exit_status(code).await;
        let _ = self.out.eof().await;
        let _ = self.out.close().await;
    }
}

/// An open session channel: its write half until a command takes it, and what tells the
/// command's output that the channel is gone.
struct OpenChannel {
    out: Option<ChannelWriteHalf<Msg>>,
    gone: CancellationToken,
}

/// One connection.
pub(super) struct Conn {
    access: Arc<Access>,
    peer: SocketAddr,
    session_id: String,
    principal: Option<Principal>,
    /// `max_channels_per_session`.
    max_channels: usize,
    /// The channels open now.
    channels: HashMap<ChannelId, OpenChannel>,
    /// The channels that ran a command (one each).
    used: HashSet<ChannelId>,
    stdin: HashMap<ChannelId, mpsc::Sender<Vec<u8>>>,
    /// Its place among the connections that have not authenticated, given back at login.
    unauthenticated: Option<Slot>,
    /// What ends the connection from outside russh: the login grace, a cut-off.
    leash: Leash,
    /// Cancelled when the connection is gone (this is dropped); each channel's `gone` is a child.
    gone: CancellationToken,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.gone.cancel();
    }
}

impl Conn {
    pub(super) fn new(
        access: Arc<Access>,
        peer: SocketAddr,
        max_channels: usize,
        unauthenticated: Slot,
        leash: Leash,
    ) -> Self {
        Self {
            access,
            peer,
            session_id: new_session_id(),
            principal: None,
            max_channels,
            channels: HashMap::new(),
            used: HashSet::new(),
            stdin: HashMap::new(),
            unauthenticated: Some(unauthenticated),
            leash,
            gone: CancellationToken::new(),
        }
    }

    pub(super) fn session_id(&self) -> &str {
        &self.session_id
    }

    fn refuse(&self, what: &str) {
        metrics::counter!("executor_validator_access_refused_total", "what" => what.to_owned()).increment(1);
        self.access.audit().record(
            "refused",
            json!({"session": self.session_id, "peer": self.peer.to_string(), "what": what,
                   "hotkey": self.principal.as_ref().map(Principal::hotkey)}),
        );
    }

    /// A key no live grant has: counted, and audited off the connection's path (the first of
    /// a peer in a minute in full, the rest in the minute's summary); past the per-address
    /// limit the connection is closed.
    fn auth_failed(&self, user: &str, key_fingerprint: &str, reason: &'static str) -> Result<Auth, russh::Error> {
        metrics::counter!("executor_validator_access_auth_failures_total", "reason" => reason).increment(1);
        let detail = json!({"session": self.session_id, "user": user, "fingerprint": key_fingerprint});
        let peer = self.peer.ip();
        self.access.refusals().refuse(Refusal { peer, event: "auth_failure", reason, detail });
        if !self.access.admission().admit_ip(peer) {
            let detail = json!({"scope": "ip", "what": "failed_authentication"});
            self.access.refusals().refuse(Refusal { peer, event: "rate_limited", reason: "rate_limited", detail });
            return Err(russh::Error::Disconnect);
        }
        Ok(Auth::reject())
    }

    /// Starts a command on `channel`, its stdin fed from the channel.
    fn spawn(&mut self, channel: ChannelId, planned: Planned, line: &str) {
        let access = self.access.clone();
        let job = Job {
            session_id: self.session_id.clone(),
            principal: self.principal.clone(),
            line: line.to_owned(),
            spec: access.runner().spec(planned),
        };
        let Some(open) = self.channels.get_mut(&channel) else { return };
        let Some(out) = open.out.take() else { return };
        let output = ChannelOutput { out, gone: open.gone.clone() };
        let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
        self.stdin.insert(channel, tx);
        access.sessions().add_command(&self.session_id, line);
        tokio::spawn(async move {
            access.runner().run(access.sessions(), job, output, rx).await;
        });
    }

    /// Why a shell or exec request on `channel` may not run anything, if so: the grant ended
    /// since login, or the channel ran a command already.
    fn may_not_run(&self, channel: ChannelId) -> Option<(&'static str, &'static str)> {
        if !self.principal.as_ref().is_some_and(|p| self.access.still_admitted(p)) {
            return Some(("grant_ended", "the grant of this session has ended"));
        }
        if self.used.contains(&channel) {
            return Some(("second_command", "one command per channel"));
        }
        None
    }

    /// Refuses a command line: the reason on stderr, exit status 126.
    fn refuse_command(&self, channel: ChannelId, why: &str, session: &mut SshSession) -> Result<(), russh::Error> {
        self.refuse_command_as("command", channel, why, session)
    }

    /// [`Self::refuse_command`], audited as `what`.
    fn refuse_command_as(
        &self,
        what: &str,
        channel: ChannelId,
        why: &str,
        session: &mut SshSession,
    ) -> Result<(), russh::Error> {
        self.refuse(what);
        session.channel_success(channel)?;
        session.extended_data(channel, 1, format!("executor: {why}\n").into_bytes())?;
        session.exit_status_request(channel, 126)?;
        session.eof(channel)?;
        session.close(channel)
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        let fp = fingerprint(offer.public_key);
        match self.access.admission().principal_for_key(&fp) {
            Some(_) => Ok(Auth::Accept),
            None => self.auth_failed(user, &fp, "no_live_grant"),
        }
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        let fp = fingerprint(key.public_key);
        let Some(principal) = self.access.admission().principal_for_key(&fp) else {
            return self.auth_failed(user, &fp, "no_live_grant");
        };
        let Principal::Validator(grant) = &principal;
        if self.access.admission().admit_login(&principal).is_err() {
            metrics::counter!("executor_validator_access_rate_limited_total", "scope" => "hotkey").increment(1);
            self.access.audit().record(
                "rate_limited",
                json!({"scope": "hotkey", "hotkey": grant.hotkey, "peer": self.peer.to_string()}),
            );
            return Err(russh::Error::Disconnect);
        }
        self.access.audit().record(
            "auth_success",
            json!({"session": self.session_id, "peer": self.peer.to_string(), "user": user, "fingerprint": fp,
                   "grant_id": grant.id, "hotkey": grant.hotkey}),
        );
        self.principal = Some(principal);
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, session: &mut SshSession) -> Result<(), Self::Error> {
        self.unauthenticated = None;
        self.leash.logged_in();
        if let Some(principal) = &self.principal {
            let closer = Closer::Disconnect(self.leash.cut(session.handle()));
            let info = Session::new(principal.clone(), self.peer.to_string(), now(), closer);
            self.access.sessions().insert(self.session_id.clone(), info);
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        if self.channels.len() >= self.max_channels {
            self.refuse("channel");
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        // The read half is dropped: a command's input comes through `data` (russh would wait for
        // a read half nobody reads).
        let (_, out) = channel.split();
        self.channels.insert(out.id(), OpenChannel { out: Some(out), gone: self.gone.child_token() });
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut SshSession) -> Result<(), Self::Error> {
        if let Some(open) = self.channels.remove(&channel) {
            open.gone.cancel();
        }
        self.used.remove(&channel);
        self.stdin.remove(&channel);
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host: &str,
        _port: u32,
        _originator: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        self.refuse("port_forwarding");
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    crate::front::refuse_x11_agent_and_remote_forwarding!();

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _px_w: u32,
        _px_h: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        self.refuse("pty");
        session.channel_failure(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        // Commands get an empty environment: nothing from the client either.
        session.channel_failure(channel)
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut SshSession) -> Result<(), Self::Error> {
        if let Some((what, why)) = self.may_not_run(channel) {
            return self.refuse_command_as(what, channel, why, session);
        }
        match self.access.grammar().plan("") {
            Ok(planned) => {
                session.channel_success(channel)?;
                self.used.insert(channel);
                self.spawn(channel, planned, "sh");
                Ok(())
            }
            Err(why) => {
                self.refuse("shell");
                session.extended_data(channel, 1, format!("executor: {why}\n").into_bytes())?;
                session.channel_failure(channel)
            }
        }
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        if let Some((what, why)) = self.may_not_run(channel) {
            return self.refuse_command_as(what, channel, why, session);
        }
        let line = String::from_utf8_lossy(data).into_owned();
        match self.access.grammar().plan(&line) {
            Ok(planned) => {
                session.channel_success(channel)?;
                self.used.insert(channel);
                self.spawn(channel, planned, &line);
                Ok(())
            }
            Err(why) => self.refuse_command(channel, &why.to_string(), session),
        }
    }

    async fn data(&mut self, channel: ChannelId, data: &[u8], _session: &mut SshSession) -> Result<(), Self::Error> {
        if let Some(tx) = self.stdin.get(&channel) {
            let _ = tx.send(data.to_vec()).await;
        }
        Ok(())
    }

    async fn channel_eof(&mut self, channel: ChannelId, _session: &mut SshSession) -> Result<(), Self::Error> {
        self.stdin.remove(&channel);
        Ok(())
    }
}
