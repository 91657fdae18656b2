//! validator-access: grants of short-lived SSH access to validators and the SSH fronts that
//! honour them, and renters' SSH into their own containers ([`tenant`]). Each side runs only
//! when enabled (`[validator] enabled`, `[tenant_access] enabled`).
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
//! - `grants` (time; its file is a `common::durable` one); `principal` (grants); `sessions` (principal);
//! - `admission` (grants, principal, time); `command` (grammar, principal, sessions);
//! - `access` (all of the above);
//! - `front::embedded`, `front::gate`, `api` (access and what it is made of);
//! - `tenant` (grants' key parsing, sessions' ids, the fronts' login grace and
//!   refusals, time);
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
pub mod tenant;
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

/// The gRPC service name of validator grants.
pub const GRPC_SERVICE: &str = "executor.access.v1.ValidatorAccess";
/// The gRPC service name of renters' keys.
pub const TENANT_GRPC_SERVICE: &str = "executor.access.v1.TenantAccess";
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
    #[error("tenant_access.ssh_port: cannot listen on {addr}: {source}")]
    TenantListen { addr: SocketAddr, source: std::io::Error },
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

/// The validators' side: their grants, API and front.
#[derive(Debug)]
struct Validators {
    api: api::Api,
    front: Front,
    /// The cgroups of validator commands, closed (every command killed) at shutdown.
    cgroups: Arc<cgroup::Cgroups>,
    /// Refusals waiting for their writer.
    refusals: refusals::RefusalQueue,
    /// `allowed_source_addresses` as configured, for the `authorized_keys` file.
    sources: Vec<String>,
}

/// The renters' side: their keys, API and SSH server.
#[derive(Debug)]
struct Renters {
    tenants: Arc<tenant::access::Tenants>,
    listener: tokio::net::TcpListener,
    host_key: Box<russh::keys::PrivateKey>,
}

/// The validator-access service: validators (`[validator] enabled`) and renters
/// (`[tenant_access] enabled`), each side only when enabled.
#[derive(Debug)]
pub struct ValidatorAccess {
    validators: Option<Validators>,
    renters: Option<Renters>,
}

impl Service for ValidatorAccess {
    const NAME: ServiceName = ServiceName::ValidatorAccess;
    const GRPC_SERVICES: &'static [&'static str] = &[GRPC_SERVICE, TENANT_GRPC_SERVICE];

    async fn check(loaded: &LoadedConfig) -> Vec<Check> {
        let v = &loaded.config.validator;
        if !v.enabled {
            return Vec::new();
        }
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
        let audit = Arc::new(common::audit::Audit::open(&config.data_dir, common::ServiceName::ValidatorAccess)?);
        let validators =
            if config.validator.enabled { Some(Validators::build(config, audit.clone()).await?) } else { None };
        let renters = if config.tenant_access.enabled { Some(Renters::build(config, audit).await?) } else { None };
        Ok(Self { validators, renters })
    }

    fn add_routes(&self, mut routes: tonic::service::Routes) -> tonic::service::Routes {
        use common::proto::access::v1::{tenant_access_server, validator_access_server};
        if let Some(v) = &self.validators {
            routes = routes.add_service(validator_access_server::ValidatorAccessServer::new(v.api.clone()));
        }
        if let Some(r) = &self.renters {
            let api = tenant::api::Api::new(r.tenants.clone());
            routes = routes.add_service(tenant_access_server::TenantAccessServer::new(api));
        }
        routes
    }

    async fn run(self, ctx: ServiceContext) -> Result<(), BoxError> {
        describe_metrics();
        let mut validators = match self.validators {
            Some(v) => Some(v.start(&ctx).await?),
            None => None,
        };
        let renters = match self.renters {
            Some(r) => Some(r.start(&ctx).await),
            None => None,
        };
        let mut reap = tokio::time::interval(REAP_INTERVAL);
        loop {
            tokio::select! {
                _ = reap.tick() => {
                    if let Some(v) = &mut validators {
                        v.reap().await;
                    }
                    if let Some((tenants, _)) = &renters {
                        tenants.reap().await;
                    }
                }
                () = ctx.shutdown.cancelled() => break,
            }
        }
        if let Some((_, server)) = renters {
            let _ = server.await;
        }
        if let Some(v) = validators {
            v.stop().await;
        }
        Ok(())
    }
}

/// The validators' side while it runs.
struct RunningValidators {
    access: Arc<access::Access>,
    /// System mode: the `authorized_keys` file kept in step with the grants.
    keys: Option<AuthorizedKeysFile>,
    server: tokio::task::JoinHandle<()>,
    refusals: tokio::task::JoinHandle<()>,
    cgroups: Arc<cgroup::Cgroups>,
}

impl Validators {
    async fn start(self, ctx: &ServiceContext) -> Result<RunningValidators, BoxError> {
        ctx.health.set_service_status(GRPC_SERVICE, tonic_health::ServingStatus::Serving).await;
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
        Ok(RunningValidators { access, keys, server, refusals, cgroups: self.cgroups })
    }
}

impl RunningValidators {
    async fn reap(&mut self) {
        self.access.reap().await;
        if let Some(file) = &mut self.keys
            && let Err(e) = file.sync(&self.access.live_grants())
        {
            tracing::error!(error = %e, "cannot write the authorized_keys file");
        }
    }

    /// After shutdown: the front and the refusal writer end, every validator command is killed.
    async fn stop(self) {
        let _ = self.server.await;
        let _ = self.refusals.await;
        let cgroups = self.cgroups;
        match tokio::task::spawn_blocking(move || cgroups.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot kill the validator commands at shutdown"),
            Err(e) => tracing::error!(error = %e, "cannot kill the validator commands at shutdown"),
        }
    }
}

impl Renters {
    async fn build(config: &common::config::Config, audit: Arc<common::audit::Audit>) -> Result<Self, BoxError> {
        let t = config.tenant_access.clone();
        let (keys, opened) = tenant::keys::TenantKeyStore::open(&config.data_dir, t.max_keys_per_container)?;
        if let common::durable::Opened::Recovered { moved_to, entries } = &opened {
            tracing::error!(moved_to = %moved_to.display(), keys = entries, "the tenant keys file was damaged: restored from its last good copy");
            audit.record(
                "tenant_keys_recovered",
                serde_json::json!({"moved_to": moved_to.display().to_string(), "keys": entries}),
            );
        }
        let addr = SocketAddr::new(config.server.host, t.ssh_port.get());
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| SetupError::TenantListen { addr, source })?;
        tracing::info!(port = t.ssh_port.get(), "tenant SSH server listening");
        let host_key = front::embedded::host_key(&config.data_dir)?;
        let runtime = common::proto::runtime::v1::container_runtime_client::ContainerRuntimeClient::new(
            common::grpc::unix_channel(&ServiceName::ContainerRuntime.socket(&config.runtime_dir)),
        );
        let host = config.server.advertised_host.clone().map_or_else(|| config.server.host.to_string(), String::from);
        let tenants = Arc::new(tenant::access::Tenants::new(keys, runtime, audit, t, host));
        Ok(Self { tenants, listener, host_key: Box::new(host_key) })
    }

    /// Serves the renters' SSH until shutdown; the task ends with it.
    async fn start(self, ctx: &ServiceContext) -> (Arc<tenant::access::Tenants>, tokio::task::JoinHandle<()>) {
        ctx.health.set_service_status(TENANT_GRPC_SERVICE, tonic_health::ServingStatus::Serving).await;
        let server = tokio::spawn(tenant::front::serve(
            self.tenants.clone(),
            self.listener,
            *self.host_key,
            ctx.shutdown.clone(),
        ));
        (self.tenants, server)
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
    metrics::describe_gauge!("executor_validator_access_tenant_sessions", "Open renter SSH sessions.");
    metrics::describe_gauge!("executor_validator_access_tenant_keys", "Renter SSH keys, over all containers.");
    metrics::describe_counter!(
        "executor_validator_access_tenant_connections_total",
        "Renter SSH connections accepted."
    );
    metrics::describe_counter!("executor_validator_access_tenant_logins_total", "Renter SSH logins.");
    metrics::describe_counter!(
        "executor_validator_access_tenant_commands_total",
        "Shells and commands started for renters."
    );
    metrics::describe_counter!(
        "executor_validator_access_tenant_refused_total",
        "Renter SSH connections, logins and requests refused, by reason."
    );
    metrics::describe_counter!(
        "executor_validator_access_tenant_forwards_total",
        "Renters' ssh -L connections by result (connected, or why not: not_permitted, wrong_state, ...)."
    );
}

impl Validators {
    async fn build(config: &common::config::Config, audit: Arc<common::audit::Audit>) -> Result<Self, BoxError> {
        let v = config.validator.clone();
        let identity = common::identity::ExecutorIdentity::load_or_create(&config.data_dir)?;
        let user = CommandUser::lookup("validator.command_user", &v.command_user)?;
        let attestor =
            std::env::current_exe()?.parent().map(|d| d.join("gpu-attestor")).ok_or(SetupError::NoBinaryDir)?;
        let (grants, opened) = grants::GrantStore::open(&config.data_dir)?;
        if let grants::Opened::Recovered { moved_to, entries: grants } = &opened {
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
}
