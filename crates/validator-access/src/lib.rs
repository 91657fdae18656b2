//! validator-access: grants of short-lived SSH access to validators and the SSH fronts that
//! honour them.
//!
//! The miner provisions a grant (validator hotkey, SSH key, TTL) through executor-api after the
//! validator signed a challenge with its hotkey ([`challenge`]); grants persist in `data_dir`
//! ([`grants`]). Validators come in through one of two fronts ([`front`]): the embedded SSH
//! server or the host's sshd with a forced command. Both ask [`admission`] who a key is (a
//! [`principal`]), plan commands with the [`grammar`], run them with [`command`], and end
//! sessions through the one registry in [`sessions`] (within 500 ms of their grant ending).
//! [`access`] ties these together for the fronts and the gRPC API ([`api`], the service of
//! `proto/executor/validator_access.proto`); every decision goes to the audit log
//! ([`common::audit`]).
//!
//! Layers, each module importing only modules of the lines above it:
//! - `time`, `challenge`, `grammar`, `cgroup`, `refusals`: nothing of this crate;
//! - `grants` (time); `principal` (grants); `sessions` (principal);
//! - `admission` (grants, principal, time); `command` (grammar, principal, sessions);
//! - `access` (all of the above);
//! - `front::embedded`, `front::gate`, `api` (access and what it is made of);
//! - this file and `main.rs`.

pub mod access;
pub mod admission;
pub mod api;
pub mod cgroup;
pub mod challenge;
pub mod command;
pub mod front;
pub mod grammar;
pub mod grants;
pub mod principal;
pub mod refusals;
pub mod sessions;
pub mod time;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::ServiceName;
use common::check::Check;
use common::config::LoadedConfig;
use common::service::{BoxError, Service, ServiceContext};

use crate::command::CommandUser;
use crate::front::gate::keys::AuthorizedKeysFile;

/// The gRPC service name.
pub const GRPC_SERVICE: &str = "executor.access.v1.ValidatorAccess";
/// How often expired grants and their sessions are reaped.
pub const REAP_INTERVAL: Duration = Duration::from_millis(500);

/// Why the service cannot start; names the config key.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot find the directory of this binary")]
    NoBinaryDir,
    #[error("validator.allowed_source_addresses: {0}")]
    Sources(common::config::InvalidValue),
    #[error("validator.ssh_port: cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("validator.authorized_keys_file: no directory")]
    NoKeysDir,
    #[error("validator.authorized_keys_file: cannot create {dir}: {source}")]
    KeysDir { dir: PathBuf, source: std::io::Error },
    #[error("validator.authorized_keys_file: cannot listen on {socket}: {source}")]
    GateSocket { socket: PathBuf, source: std::io::Error },
    /// Validator commands never run unconfined: no cgroups, no service (`[validator] enabled =
    /// false` turns validator access off instead).
    #[error(
        "validator commands need cgroups and cannot have them: {0}. Run the node as root with the cgroup hierarchy writable (systemd: the shipped unit's Delegate=yes; Docker: privileged), or set [validator] enabled = false"
    )]
    Cgroups(cgroup::CgroupError),
}

/// Where validators come in.
#[derive(Debug)]
enum Front {
    /// The embedded SSH server.
    Embedded { listener: tokio::net::TcpListener, host_key: Box<russh::keys::PrivateKey> },
    /// The host's sshd, through `authorized_keys` and the gate socket.
    System { listener: tokio::net::UnixListener, uid: u32, keys_file: PathBuf },
}

/// The validator-access service.
#[derive(Debug)]
pub struct ValidatorAccess {
    api: api::Api,
    front: Front,
    /// The cgroups of validator commands, closed (every command killed) at shutdown.
    cgroups: Arc<cgroup::Cgroups>,
    /// Refusals waiting for their writer.
    refusals: refusals::RefusalQueue,
    /// `allowed_source_addresses` as configured, for the `authorized_keys` file.
    sources: Vec<String>,
}

impl Service for ValidatorAccess {
    const NAME: ServiceName = ServiceName::ValidatorAccess;
    const GRPC_SERVICES: &'static [&'static str] = &[GRPC_SERVICE];

    async fn check(loaded: &LoadedConfig) -> Vec<Check> {
        let v = &loaded.config.validator;
        let user = match CommandUser::lookup("validator.command_user", &v.command_user) {
            Ok(u) => Check::pass("validator command user", format!("{} (uid {})", u.name, u.uid)),
            Err(e) => Check::fail("validator command user", e.to_string()),
        };
        let setpriv =
            if std::path::Path::new("/usr/bin/setpriv").exists() || std::path::Path::new("/bin/setpriv").exists() {
                Check::pass("setpriv", "present (util-linux)")
            } else {
                Check::fail("setpriv", "missing: validator commands cannot drop privileges (install util-linux)")
            };
        let cgroups = match cgroup::Hierarchy::of_this_process().and_then(|h| h.probe()) {
            Ok(found) => Check::pass("cgroups for validator commands", found),
            Err(e) => Check::fail("cgroups for validator commands", SetupError::Cgroups(e).to_string()),
        };
        vec![user, setpriv, cgroups]
    }

    async fn build(ctx: &ServiceContext) -> Result<Self, BoxError> {
        let config = ctx.config();
        let v = config.validator.clone();
        let identity = common::identity::ExecutorIdentity::load_or_create(&config.data_dir)?;
        let user = CommandUser::lookup("validator.command_user", &v.command_user)?;
        let attestor =
            std::env::current_exe()?.parent().map(|d| d.join("gpu-attestor")).ok_or(SetupError::NoBinaryDir)?;
        let audit = common::audit::Audit::open(&config.data_dir, common::ServiceName::ValidatorAccess)?;
        let (grants, opened) = grants::GrantStore::open(&config.data_dir)?;
        if let grants::Opened::Recovered { moved_to, grants } = &opened {
            tracing::error!(moved_to = %moved_to.display(), grants, "the grants file was damaged: restored from its last good copy");
            audit.record(
                "grants_recovered",
                serde_json::json!({"moved_to": moved_to.display().to_string(), "grants": grants}),
            );
        }
        let limits = cgroup::Limits {
            memory_bytes: v.command_max_memory_bytes.get(),
            pids: v.command_max_pids,
            cpus: v.command_max_cpus,
        };
        let cgroups =
            Arc::new(cgroup::Cgroups::for_this_process(&identity.executor_id(), limits).map_err(SetupError::Cgroups)?);
        let (refusal_log, refusal_queue) = refusals::RefusalLog::new(refusals::QUEUE);
        let sources = v
            .allowed_source_addresses
            .iter()
            .map(|n| common::config::parse_network(n))
            .collect::<Result<_, _>>()
            .map_err(SetupError::Sources)?;
        let access = access::Access::new(access::AccessSetup {
            config: v.clone(),
            executor_id: identity.executor_id(),
            grants,
            audit,
            user,
            attestor,
            identity_key: config.data_dir.join(common::identity::IDENTITY_FILE),
            sources,
            cgroups: cgroups.clone(),
            refusals: refusal_log,
            clock: Arc::new(common::clock::SystemClock),
        });
        let host = config.server.host;
        let (front, user) = match v.ssh_server {
            common::config::SshServerKind::Embedded => {
                let addr = SocketAddr::new(host, v.ssh_port.get());
                let listener =
                    tokio::net::TcpListener::bind(addr).await.map_err(|source| SetupError::Listen { addr, source })?;
                tracing::info!(port = v.ssh_port.get(), strict = v.strict_ssh_restrictions, "SSH server listening");
                let host_key = Box::new(front::embedded::host_key(&config.data_dir)?);
                (Front::Embedded { listener, host_key }, "validator".to_owned())
            }
            common::config::SshServerKind::System => {
                let uid = CommandUser::lookup("validator.system_sshd_user", &v.system_sshd_user)?.uid;
                let keys_file = v.authorized_keys_file.clone();
                let dir = keys_file.parent().ok_or(SetupError::NoKeysDir)?;
                std::fs::create_dir_all(dir).map_err(|source| SetupError::KeysDir { dir: dir.to_owned(), source })?;
                let socket = front::gate::socket_path(&keys_file);
                let _ = std::fs::remove_file(&socket);
                let listener = tokio::net::UnixListener::bind(&socket)
                    .map_err(|source| SetupError::GateSocket { socket: socket.clone(), source })?;
                // Any local user may connect; the service answers only system_sshd_user. Set
                // through the socket itself, never by following a link swapped in after bind.
                common::grpc::set_socket_mode(&socket, 0o666)?;
                tracing::info!(file = %keys_file.display(), user = %v.system_sshd_user, "validators come in through the host's sshd");
                (Front::System { listener, uid, keys_file }, v.system_sshd_user.clone())
            }
        };
        let ssh_endpoint = match &config.advertised_endpoint.ssh_endpoint {
            Some(e) => e.clone(),
            None => format!(
                "ssh://{user}@{}:{}",
                config.server.advertised_host.as_deref().unwrap_or(&host.to_string()),
                v.ssh_port
            ),
        };
        Ok(Self {
            api: api::Api::new(Arc::new(access), ssh_endpoint),
            front,
            cgroups,
            refusals: refusal_queue,
            sources: v.allowed_source_addresses,
        })
    }

    fn add_routes(&self, routes: tonic::service::Routes) -> tonic::service::Routes {
        routes.add_service(common::proto::access::v1::validator_access_server::ValidatorAccessServer::new(
            self.api.clone(),
        ))
    }

    async fn run(self, ctx: ServiceContext) -> Result<(), BoxError> {
        ctx.health.set_service_status(GRPC_SERVICE, tonic_health::ServingStatus::Serving).await;
        describe_metrics();
        let access = self.api.access().clone();
        let refusals = tokio::spawn(refusals::write(self.refusals, access.audit_log(), ctx.shutdown.clone()));
        let mut keys = None;
        let server = match self.front {
            Front::Embedded { listener, host_key } => {
                tokio::spawn(front::embedded::serve(access.clone(), listener, *host_key, ctx.shutdown.clone()))
            }
            Front::System { listener, uid, keys_file } => {
                keys = Some(AuthorizedKeysFile::new(keys_file, std::env::current_exe()?, self.sources));
                tokio::spawn(front::gate::serve(access.clone(), listener, uid, ctx.shutdown.clone()))
            }
        };
        let mut reap = tokio::time::interval(REAP_INTERVAL);
        loop {
            tokio::select! {
                _ = reap.tick() => {
                    access.reap().await;
                    if let Some(file) = &mut keys
                        && let Err(e) = file.sync(&access.live_grants())
                    {
                        tracing::error!(error = %e, "cannot write the authorized_keys file");
                    }
                }
                () = ctx.shutdown.cancelled() => break,
            }
        }
        let _ = server.await;
        let _ = refusals.await;
        let cgroups = self.cgroups.clone();
        match tokio::task::spawn_blocking(move || cgroups.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot kill the validator commands at shutdown"),
            Err(e) => tracing::error!(error = %e, "cannot kill the validator commands at shutdown"),
        }
        Ok(())
    }
}

fn describe_metrics() {
    metrics::describe_counter!("executor_validator_access_connections_total", "SSH connections accepted.");
    metrics::describe_counter!(
        "executor_validator_access_auth_failures_total",
        "SSH authentications refused, by reason."
    );
    metrics::describe_counter!(
        "executor_validator_access_rate_limited_total",
        "Connections closed by ssh_requests_per_minute, by scope (ip, hotkey)."
    );
    metrics::describe_counter!(
        "executor_validator_access_refused_total",
        "Requests refused (shell, pty, forwarding, command)."
    );
    metrics::describe_counter!("executor_validator_access_commands_total", "Commands run for validators.");
    metrics::describe_counter!(
        "executor_validator_access_sessions_closed_total",
        "Sessions closed because their grant ended."
    );
    metrics::describe_counter!(
        "executor_validator_access_refusals_dropped_total",
        "Refusals not audited because their queue was full (still counted in the other metrics)."
    );
    metrics::describe_gauge!("executor_validator_access_sessions", "Open SSH sessions.");
    metrics::describe_gauge!("executor_validator_access_grants", "Live grants.");
}
