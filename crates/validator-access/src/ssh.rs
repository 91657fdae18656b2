//! The embedded SSH server (russh): public-key authentication only, for the keys of live
//! grants; strict key exchange (russh does the Terrapin countermeasure, `kex-strict-s-v00`);
//! no PTY, environment, agent, X11 or port forwarding ever; with `strict_ssh_restrictions`
//! only allow-listed commands ([`allowed_command`]), otherwise any command or a shell without a
//! PTY. Commands run as `command_user` with an empty environment, a time limit and an output
//! cap. Connections over `ssh_requests_per_minute` per source IP (connections and failed
//! authentications) or per hotkey (logins) are closed. Sessions whose grant ends are closed by
//! [`Access::end_sessions`].

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::config::ValidatorConfig;
use common::process::ProcessSpec;
use common::ratelimit::RateLimiter;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::challenge::Challenges;
use crate::grants::{GrantRecord, GrantStore, fingerprint};
use common::audit::Audit;

/// PATH of validator commands (their environment is otherwise empty).
const COMMAND_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A new session id, `s-` and 16 hex digits.
pub fn new_session_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    format!("s-{}", hex::encode(b))
}

/// The user commands run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl CommandUser {
    /// Looks `name` up; the error names `key`, the config key it came from.
    pub fn lookup(key: &str, name: &str) -> Result<Self, String> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| format!("{key}: cannot look up `{name}`: {e}"))?
            .ok_or_else(|| format!("{key}: no user `{name}` on this host"))?;
        if user.uid.is_root() {
            return Err(format!("{key}: `{name}` is root"));
        }
        Ok(Self { name: name.to_owned(), uid: user.uid.as_raw(), gid: user.gid.as_raw() })
    }
}

/// A command a validator may run, as it will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub argv: Vec<String>,
    /// `gpu-attestor challenge`: it signs with the executor's key, which the command user must
    /// never read, so it runs as root with every capability dropped, the key path given by us
    /// and no path from the validator.
    pub signs: bool,
}

/// What strict mode lets a validator run, or why not. The command line is split on whitespace
/// and never given to a shell; `gpu-attestor` is this executor's own binary.
pub fn allowed_command(line: &str, attestor: &std::path::Path, identity: &std::path::Path) -> Result<Planned, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let refuse = || {
        Err(format!("`{line}` is not allowed here (strict_ssh_restrictions): only gpu-attestor and read-only facts"))
    };
    let Some((first, rest)) = words.split_first() else { return refuse() };
    let args: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
    let name = first.rsplit('/').next().unwrap_or(first);
    let plain = |argv: Vec<String>| Ok(Planned { argv, signs: false });
    if name == "gpu-attestor" {
        let argv = std::iter::once(attestor.display().to_string()).chain(args.iter().cloned());
        if rest.first() != Some(&"challenge") {
            return plain(argv.collect());
        }
        if rest.iter().any(|a| a.starts_with("--identity")) {
            return Err("gpu-attestor challenge: --identity is chosen by the executor".to_owned());
        }
        let key = ["--identity".to_owned(), identity.display().to_string()];
        return Ok(Planned { argv: argv.chain(key).collect(), signs: true });
    }
    let allowed = match name {
        "nvidia-smi" => rest.iter().all(|a| {
            matches!(*a, "-L" | "-q" | "--list-gpus" | "--query")
                || a.starts_with("--query-")
                || a.starts_with("--format=")
        }),
        "uname" => rest.iter().all(|a| matches!(*a, "-a" | "-r" | "-m" | "-s")),
        "nproc" => rest.is_empty(),
        "cat" => matches!(rest, ["/proc/cpuinfo"] | ["/proc/meminfo"]),
        _ => false,
    };
    if allowed { plain(std::iter::once(name.to_owned()).chain(args).collect()) } else { refuse() }
}

/// An open SSH session.
pub struct SessionInfo {
    pub grant_id: String,
    pub hotkey: String,
    pub peer: String,
    pub started_at: i64,
    pub commands: Vec<String>,
    pub closer: Closer,
    /// Process groups of the commands running now.
    pub children: HashSet<u32>,
}

/// How a session is ended from outside.
pub enum Closer {
    /// A connection to the embedded server: disconnect it.
    Ssh(russh::server::Handle),
    /// A command relayed from the host's sshd (`gate`): cancel the relay.
    Gate(tokio_util::sync::CancellationToken),
}

/// Where a command's output and exit status go.
pub enum Sink {
    Ssh(russh::server::Handle, ChannelId),
    Gate(tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>),
}

impl Sink {
    /// Output on stdout (`stream` 0) or stderr (1).
    pub async fn out(&self, stream: u32, data: Vec<u8>) {
        match self {
            Sink::Ssh(handle, channel) => {
                let _ = if stream == 0 {
                    handle.data(*channel, data).await
                } else {
                    handle.extended_data(*channel, 1, data).await
                };
            }
            Sink::Gate(writer) => {
                let kind = if stream == 0 { crate::gate::STDOUT } else { crate::gate::STDERR };
                let _ = crate::gate::write_frame(&mut *writer.lock().await, kind, &data).await;
            }
        }
    }

    /// The exit status, and the end of the output.
    pub async fn finish(&self, code: u32) {
        match self {
            Sink::Ssh(handle, channel) => {
                let _ = handle.exit_status_request(*channel, code).await;
                let _ = handle.eof(*channel).await;
                let _ = handle.close(*channel).await;
            }
            Sink::Gate(writer) => {
                let _ =
                    crate::gate::write_frame(&mut *writer.lock().await, crate::gate::EXIT, &code.to_be_bytes()).await;
            }
        }
    }
}

impl std::fmt::Debug for Closer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Closer::Ssh(_) => "Closer::Ssh",
            Closer::Gate(_) => "Closer::Gate",
        })
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sink::Ssh(..) => "Sink::Ssh",
            Sink::Gate(_) => "Sink::Gate",
        })
    }
}

impl std::fmt::Debug for SessionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionInfo").field("grant_id", &self.grant_id).field("peer", &self.peer).finish()
    }
}

/// Everything the SSH server and the gRPC API share.
#[derive(Debug)]
pub struct Access {
    pub config: ValidatorConfig,
    pub executor_id: String,
    pub grants: GrantStore,
    pub challenges: Challenges,
    pub audit: Audit,
    pub sessions: Mutex<HashMap<String, SessionInfo>>,
    pub by_ip: RateLimiter<IpAddr>,
    pub by_hotkey: RateLimiter<String>,
    pub user: CommandUser,
    /// This executor's gpu-attestor binary.
    pub attestor: PathBuf,
    /// The executor's identity key, for `gpu-attestor challenge`.
    pub identity_key: PathBuf,
    /// `allowed_source_addresses`, parsed; empty: any.
    pub sources: Vec<(IpAddr, u8)>,
}

impl Access {
    pub fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionInfo>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `ip` is inside `allowed_source_addresses` (any when the list is empty).
    pub fn source_allowed(&self, ip: IpAddr) -> bool {
        self.sources.is_empty() || self.sources.iter().any(|net| common::config::in_network(ip, *net))
    }

    /// The command a validator's line becomes: the allow-list first in both modes (so
    /// `gpu-attestor challenge` signs either way); without strict restrictions anything else
    /// goes to `sh -c` (an empty line: a shell) as the command user.
    pub fn plan(&self, line: &str) -> Result<Planned, String> {
        if line.trim().is_empty() {
            if self.config.strict_ssh_restrictions {
                return Err("no shell here (strict_ssh_restrictions); run gpu-attestor".to_owned());
            }
            return Ok(Planned { argv: vec!["sh".to_owned()], signs: false });
        }
        match allowed_command(line, &self.attestor, &self.identity_key) {
            Err(_) if !self.config.strict_ssh_restrictions => {
                Ok(Planned { argv: vec!["sh".to_owned(), "-c".to_owned(), line.to_owned()], signs: false })
            }
            planned => planned,
        }
    }

    /// The process that runs `planned`: `setpriv` to the command user (or, for the signing
    /// attestor, root without capabilities), an empty environment.
    pub fn command_spec(&self, planned: Planned) -> ProcessSpec {
        let user = &self.user;
        let mut spec = ProcessSpec::new("setpriv");
        spec = if planned.signs {
            spec.args(["--inh-caps=-all", "--bounding-set=-all"])
        } else {
            spec.arg(format!("--reuid={}", user.uid)).arg(format!("--regid={}", user.gid)).arg("--clear-groups")
        };
        spec.args(["--no-new-privs", "--", "env", "-i"])
            .arg(format!("PATH={COMMAND_PATH}"))
            .arg(format!("USER={}", user.name))
            .args(["HOME=/", "LANG=C.UTF-8"])
            .args(planned.argv)
    }

    /// Closes every session whose grant is not live any more (expired or revoked): its
    /// commands are killed and the connection dropped. Returns how many were closed.
    pub async fn end_sessions(&self, reason: &str) -> u32 {
        let now = now();
        let ended: Vec<(String, SessionInfo)> = {
            let mut sessions = self.sessions();
            let gone: Vec<String> = sessions
                .iter()
                .filter(|(_, s)| !self.grants.is_live(&s.grant_id, now))
                .map(|(k, _)| k.clone())
                .collect();
            gone.into_iter().filter_map(|k| sessions.remove(&k).map(|s| (k, s))).collect()
        };
        for (id, session) in &ended {
            for pgid in &session.children {
                let _ = common::process::signal_group(*pgid, nix::sys::signal::Signal::SIGKILL);
            }
            match &session.closer {
                Closer::Ssh(handle) => {
                    let _ = handle.disconnect(Disconnect::ByApplication, "access ended".into(), "en".into()).await;
                }
                Closer::Gate(token) => token.cancel(),
            }
            self.audit.record(
                "disconnect",
                json!({"session": id, "grant_id": session.grant_id, "hotkey": session.hotkey, "reason": reason}),
            );
            metrics::counter!("executor_validator_access_sessions_closed_total", "reason" => reason.to_owned())
                .increment(1);
        }
        ended.len() as u32
    }

    /// Expires grants past their time and closes their sessions (every 500 ms).
    pub async fn reap(&self) {
        match self.grants.expire(now()) {
            Ok(expired) => {
                for g in &expired {
                    self.audit.record("grant_expired", json!({"grant_id": g.id, "hotkey": g.hotkey}));
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot expire grants"),
        }
        self.end_sessions("grant_ended").await;
        metrics::gauge!("executor_validator_access_sessions").set(self.sessions().len() as f64);
        metrics::gauge!("executor_validator_access_grants").set(self.grants.live(now()).len() as f64);
    }

    /// The open sessions, for the API.
    pub fn list_sessions(&self) -> Vec<common::proto::access::v1::Session> {
        self.sessions()
            .iter()
            .map(|(id, s)| common::proto::access::v1::Session {
                session_id: id.clone(),
                grant_id: s.grant_id.clone(),
                validator_hotkey: s.hotkey.clone(),
                peer: s.peer.clone(),
                started_at: s.started_at,
                commands: s.commands.clone(),
            })
            .collect()
    }

    /// Counts a connection or failed authentication from `ip`; false when over the limit.
    pub fn admit_ip(&self, ip: IpAddr, what: &str) -> bool {
        if self.by_ip.check(&ip).is_ok() {
            return true;
        }
        metrics::counter!("executor_validator_access_rate_limited_total", "scope" => "ip").increment(1);
        self.audit.record("rate_limited", json!({"scope": "ip", "peer": ip.to_string(), "what": what}));
        false
    }
}

/// Serves SSH on `listener` until `shutdown`.
pub async fn serve(
    access: Arc<Access>,
    listener: tokio::net::TcpListener,
    host_key: russh::keys::PrivateKey,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let config = Arc::new(russh::server::Config {
        methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(500),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        max_auth_attempts: 6,
        nodelay: true,
        ..Default::default()
    });
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "SSH accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        if !access.source_allowed(peer.ip()) {
            access.audit.record("refused", json!({"what": "source_address", "peer": peer.to_string()}));
            metrics::counter!("executor_validator_access_refused_total", "what" => "source_address").increment(1);
            drop(stream);
            continue;
        }
        if !access.admit_ip(peer.ip(), "connection") {
            drop(stream);
            continue;
        }
        metrics::counter!("executor_validator_access_connections_total").increment(1);
        let conn = Conn::new(access.clone(), peer);
        let config = config.clone();
        tokio::spawn(async move {
            let id = conn.session_id.clone();
            let access = conn.access.clone();
            match russh::server::run_stream(config, stream, conn).await {
                Ok(session) => {
                    let result = session.await;
                    if let Some(s) = access.sessions().remove(&id) {
                        for pgid in &s.children {
                            let _ = common::process::signal_group(*pgid, nix::sys::signal::Signal::SIGKILL);
                        }
                        let reason = if result.is_ok() { "client_closed" } else { "connection_error" };
                        access.audit.record(
                            "disconnect",
                            json!({"session": id, "grant_id": s.grant_id, "hotkey": s.hotkey, "reason": reason}),
                        );
                    }
                }
                Err(e) => tracing::debug!(peer = %peer, error = %e, "SSH handshake failed"),
            }
        });
    }
}

/// One connection.
struct Conn {
    access: Arc<Access>,
    peer: SocketAddr,
    session_id: String,
    grant: Option<GrantRecord>,
    stdin: HashMap<ChannelId, mpsc::Sender<Vec<u8>>>,
}

impl Conn {
    fn new(access: Arc<Access>, peer: SocketAddr) -> Self {
        Self { access, peer, session_id: new_session_id(), grant: None, stdin: HashMap::new() }
    }

    fn refuse(&self, what: &str) {
        metrics::counter!("executor_validator_access_refused_total", "what" => what.to_owned()).increment(1);
        self.access.audit.record(
            "refused",
            json!({"session": self.session_id, "peer": self.peer.to_string(), "what": what,
                   "hotkey": self.grant.as_ref().map(|g| g.hotkey.clone())}),
        );
    }

    fn auth_failed(&self, user: &str, key_fingerprint: &str, reason: &str) -> Result<Auth, russh::Error> {
        metrics::counter!("executor_validator_access_auth_failures_total", "reason" => reason.to_owned()).increment(1);
        self.access.audit.record(
            "auth_failure",
            json!({"session": self.session_id, "peer": self.peer.to_string(), "user": user,
                   "fingerprint": key_fingerprint, "reason": reason}),
        );
        if !self.access.admit_ip(self.peer.ip(), "failed_authentication") {
            return Err(russh::Error::Disconnect);
        }
        Ok(Auth::reject())
    }

    /// Starts a command on `channel`, its stdin fed from the channel.
    fn spawn(&mut self, channel: ChannelId, planned: Planned, line: &str, session: &mut Session) {
        let access = self.access.clone();
        let spec = access.command_spec(planned);
        let sink = Sink::Ssh(session.handle(), channel);
        let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
        self.stdin.insert(channel, tx);
        let session_id = self.session_id.clone();
        let grant = self.grant.clone();
        let line = line.to_owned();
        if let Some(s) = access.sessions().get_mut(&session_id) {
            s.commands.push(line.clone());
        }
        tokio::spawn(async move {
            run(access, spec, sink, rx, session_id, grant, line).await;
        });
    }
}

/// Runs one command to its end and reports it to `sink` and in the audit log.
pub async fn run(
    access: Arc<Access>,
    spec: ProcessSpec,
    sink: Sink,
    mut stdin_rx: mpsc::Receiver<Vec<u8>>,
    session_id: String,
    grant: Option<GrantRecord>,
    line: String,
) {
    let started = Instant::now();
    let cap = access.config.command_max_output_bytes;
    let (code, sent, truncated, timed_out) = match spec.spawn_interactive() {
        Err(e) => {
            sink.out(1, format!("executor: cannot start the command: {e}\n").into_bytes()).await;
            (127u32, [0u64; 2], false, false)
        }
        Ok(mut child) => {
            let pgid = child.id().unwrap_or(0);
            if let Some(s) = access.sessions().get_mut(&session_id) {
                s.children.insert(pgid);
            }
            let mut stdin = child.stdin.take();
            let mut stdout = child.stdout.take();
            let mut stderr = child.stderr.take();
            let mut sent = [0u64; 2];
            let mut truncated = false;
            let (mut out_buf, mut err_buf) = (vec![0u8; 32 << 10], vec![0u8; 32 << 10]);
            let io = async {
                loop {
                    tokio::select! {
                        n = read_some(&mut stdout, &mut out_buf) => match n {
                            Some(n) => {
                                if forward(&sink, 0, &out_buf[..n], &mut sent[0], cap).await { truncated = true; break; }
                            }
                            None => stdout = None,
                        },
                        n = read_some(&mut stderr, &mut err_buf) => match n {
                            Some(n) => {
                                if forward(&sink, 1, &err_buf[..n], &mut sent[1], cap).await { truncated = true; break; }
                            }
                            None => stderr = None,
                        },
                        data = stdin_rx.recv(), if stdin.is_some() => match (data, stdin.as_mut()) {
                            (Some(data), Some(pipe)) => { let _ = pipe.write_all(&data).await; }
                            _ => stdin = None,
                        },
                    }
                    if stdout.is_none() && stderr.is_none() {
                        break;
                    }
                }
            };
            let timed_out = tokio::time::timeout(access.config.command_timeout, io).await.is_err();
            if timed_out || truncated {
                let _ = common::process::signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
            }
            let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            if let Some(s) = access.sessions().get_mut(&session_id) {
                s.children.remove(&pgid);
            }
            let code = match status {
                _ if timed_out => 124,
                Ok(Ok(status)) => status.code().map_or(128 + 9, |c| c as u32),
                _ => 1,
            };
            if timed_out {
                sink.out(1, b"executor: command timed out\n".to_vec()).await;
            }
            (code, sent, truncated, timed_out)
        }
    };
    sink.finish(code).await;
    metrics::counter!("executor_validator_access_commands_total").increment(1);
    access.audit.record(
        "command",
        json!({"session": session_id, "grant_id": grant.as_ref().map(|g| g.id.clone()),
               "hotkey": grant.as_ref().map(|g| g.hotkey.clone()), "command": line, "exit_code": code,
               "stdout_bytes": sent[0], "stderr_bytes": sent[1], "truncated": truncated, "timed_out": timed_out,
               "duration_ms": started.elapsed().as_millis() as u64}),
    );
}

async fn read_some<R: tokio::io::AsyncRead + Unpin>(reader: &mut Option<R>, buf: &mut [u8]) -> Option<usize> {
    match reader {
        Some(r) => match r.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

/// Sends output to the client within the cap; true when the cap is reached.
async fn forward(sink: &Sink, stream: u32, bytes: &[u8], sent: &mut u64, cap: u64) -> bool {
    let room = cap.saturating_sub(*sent) as usize;
    let part = bytes[..bytes.len().min(room)].to_vec();
    *sent += part.len() as u64;
    if !part.is_empty() {
        sink.out(stream, part).await;
    }
    bytes.len() > room
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        let fp = fingerprint(offer.public_key);
        match self.access.grants.for_key(&fp, now()) {
            Some(_) => Ok(Auth::Accept),
            None => self.auth_failed(user, &fp, "no_live_grant"),
        }
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        let fp = fingerprint(key.public_key);
        let Some(grant) = self.access.grants.for_key(&fp, now()) else {
            return self.auth_failed(user, &fp, "no_live_grant");
        };
        if self.access.by_hotkey.check(&grant.hotkey).is_err() {
            metrics::counter!("executor_validator_access_rate_limited_total", "scope" => "hotkey").increment(1);
            self.access.audit.record(
                "rate_limited",
                json!({"scope": "hotkey", "hotkey": grant.hotkey, "peer": self.peer.to_string()}),
            );
            return Err(russh::Error::Disconnect);
        }
        self.access.audit.record(
            "auth_success",
            json!({"session": self.session_id, "peer": self.peer.to_string(), "user": user, "fingerprint": fp,
                   "grant_id": grant.id, "hotkey": grant.hotkey}),
        );
        self.grant = Some(grant);
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Some(grant) = &self.grant {
            let info = SessionInfo {
                grant_id: grant.id.clone(),
                hotkey: grant.hotkey.clone(),
                peer: self.peer.to_string(),
                started_at: now(),
                commands: Vec::new(),
                closer: Closer::Ssh(session.handle()),
                children: HashSet::new(),
            };
            self.access.sessions().insert(self.session_id.clone(), info);
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
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
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("port_forwarding");
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("x11");
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse("remote_port_forwarding");
        Ok(false)
    }

    async fn agent_request(&mut self, _channel: ChannelId, _session: &mut Session) -> Result<bool, Self::Error> {
        self.refuse("agent_forwarding");
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("x11");
        session.channel_failure(channel)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _px_w: u32,
        _px_h: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("pty");
        session.channel_failure(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Commands get an empty environment: nothing from the client either.
        session.channel_failure(channel)
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        match self.access.plan("") {
            Ok(planned) => {
                session.channel_success(channel)?;
                self.spawn(channel, planned, "sh", session);
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
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let line = String::from_utf8_lossy(data).into_owned();
        match self.access.plan(&line) {
            Ok(argv) => {
                session.channel_success(channel)?;
                self.spawn(channel, argv, &line, session);
                Ok(())
            }
            Err(why) => {
                self.refuse("command");
                session.channel_success(channel)?;
                session.extended_data(channel, 1, format!("executor: {why}\n").into_bytes())?;
                session.exit_status_request(channel, 126)?;
                session.eof(channel)?;
                session.close(channel)
            }
        }
    }

    async fn data(&mut self, channel: ChannelId, data: &[u8], _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(tx) = self.stdin.get(&channel) {
            let _ = tx.send(data.to_vec()).await;
        }
        Ok(())
    }

    async fn channel_eof(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.stdin.remove(&channel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_mode_allows_the_attestor_and_read_only_facts() {
        let attestor = std::path::Path::new("/opt/basilica/bin/gpu-attestor");
        let key = std::path::Path::new("/opt/basilica/data/executor_identity.key");
        let allowed = |line: &str| allowed_command(line, attestor, key);
        let run = allowed("gpu-attestor --backend cpu --seed 1").unwrap();
        assert_eq!(run.argv, ["/opt/basilica/bin/gpu-attestor", "--backend", "cpu", "--seed", "1"]);
        assert!(!run.signs);
        assert_eq!(allowed("/usr/bin/gpu-attestor info").unwrap().argv[0], "/opt/basilica/bin/gpu-attestor");
        let challenge = allowed("gpu-attestor challenge --backend cpu").unwrap();
        assert!(challenge.signs);
        assert_eq!(challenge.argv[4..], ["--identity", "/opt/basilica/data/executor_identity.key"]);
        assert!(allowed("gpu-attestor challenge --identity /tmp/mine").is_err());
        assert!(allowed("nvidia-smi --query-gpu=name --format=csv").is_ok());
        assert!(allowed("nproc").is_ok());
        assert!(allowed("cat /proc/cpuinfo").is_ok());
        for refused in ["sh", "bash -c id", "cat /etc/shadow", "nvidia-smi -r", "nproc; id", "", "uname -a && id"] {
            assert!(allowed(refused).is_err(), "{refused}");
        }
    }
}
