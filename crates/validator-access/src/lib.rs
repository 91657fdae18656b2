//! validator-access: grants of short-lived SSH access to validators and the embedded SSH
//! server that honours them.
//!
//! The miner provisions a grant (validator hotkey, SSH key, TTL) through executor-api after the
//! validator signed a challenge with its hotkey ([`challenge`]); grants persist in `data_dir`
//! ([`grants`]); the SSH server ([`ssh`]) lets in only keys of live grants and closes sessions
//! within 500 ms of their grant ending; every decision goes to the audit log ([`common::audit`]); the
//! gRPC API of `proto/executor/validator_access.proto` is [`api`].

pub mod api;
pub mod challenge;
pub mod gate;
pub mod grants;
pub mod ssh;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::ServiceName;
use common::check::Check;
use common::config::LoadedConfig;
use common::service::{BoxError, Service, ServiceContext};

/// The gRPC service name.
pub const GRPC_SERVICE: &str = "executor.access.v1.ValidatorAccess";
/// The SSH host key under `data_dir`.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
/// How often expired grants and their sessions are reaped.
pub const REAP_INTERVAL: Duration = Duration::from_millis(500);

/// The persistent SSH host key: `data_dir/ssh_host_ed25519_key` (OpenSSH format, 0600), made
/// on first start.
pub fn host_key(data_dir: &Path) -> Result<russh::keys::PrivateKey, BoxError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(HOST_KEY_FILE);
    if path.exists() {
        return russh::keys::load_secret_key(&path, None).map_err(|e| format!("{}: {e}", path.display()).into());
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness: {e}"))?;
    let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
    let key = russh::keys::PrivateKey::from(pair);
    let text = key.to_openssh(russh::keys::ssh_key::LineEnding::LF).map_err(|e| e.to_string())?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
    file.sync_all()?;
    Ok(key)
}

/// Where validators come in.
#[derive(Debug)]
enum Front {
    /// The embedded SSH server.
    Embedded { listener: tokio::net::TcpListener, host_key: Box<russh::keys::PrivateKey> },
    /// The host's sshd, through `authorized_keys` and the gate socket.
    System { listener: tokio::net::UnixListener, uid: u32, keys_file: std::path::PathBuf },
}

/// The validator-access service.
#[derive(Debug)]
pub struct ValidatorAccess {
    api: api::Api,
    front: Front,
}

impl Service for ValidatorAccess {
    const NAME: ServiceName = ServiceName::ValidatorAccess;
    const GRPC_SERVICES: &'static [&'static str] = &[GRPC_SERVICE];

    async fn check(loaded: &LoadedConfig) -> Vec<Check> {
        let v = &loaded.config.validator;
        let user = match ssh::CommandUser::lookup("validator.command_user", &v.command_user) {
            Ok(u) => Check::pass("validator command user", format!("{} (uid {})", u.name, u.uid)),
            Err(e) => Check::fail("validator command user", e),
        };
        let setpriv =
            if std::path::Path::new("/usr/bin/setpriv").exists() || std::path::Path::new("/bin/setpriv").exists() {
                Check::pass("setpriv", "present (util-linux)")
            } else {
                Check::fail("setpriv", "missing: validator commands cannot drop privileges (install util-linux)")
            };
        vec![user, setpriv]
    }

    async fn build(ctx: &ServiceContext) -> Result<Self, BoxError> {
        let config = ctx.config();
        let v = config.validator.clone();
        let identity = common::identity::ExecutorIdentity::load_or_create(&config.data_dir)?;
        let user = ssh::CommandUser::lookup("validator.command_user", &v.command_user)?;
        let clock: Arc<dyn common::clock::Clock> = Arc::new(common::clock::SystemClock);
        let hv = &v.access_config.hotkey_verification;
        let per_minute = v.access_config.rate_limits.ssh_requests_per_minute;
        let attestor = std::env::current_exe()?
            .parent()
            .map(|d| d.join("gpu-attestor"))
            .ok_or("cannot find the directory of this binary")?;
        let audit = common::audit::Audit::open(&config.data_dir, common::ServiceName::ValidatorAccess)?;
        let (grants, opened) = grants::GrantStore::open(&config.data_dir)?;
        if let grants::Opened::Recovered { moved_to, grants } = &opened {
            tracing::error!(moved_to = %moved_to.display(), grants, "the grants file was damaged: restored from its last good copy");
            audit.record(
                "grants_recovered",
                serde_json::json!({"moved_to": moved_to.display().to_string(), "grants": grants}),
            );
        }
        let access = ssh::Access {
            executor_id: identity.executor_id(),
            grants,
            challenges: challenge::Challenges::new(
                &identity.executor_id(),
                Duration::from_secs(hv.challenge_timeout_seconds),
                hv.max_signature_attempts,
                clock.clone(),
            ),
            audit,
            sessions: Default::default(),
            by_ip: common::ratelimit::RateLimiter::new(per_minute, clock.clone()),
            by_hotkey: common::ratelimit::RateLimiter::new(per_minute, clock),
            user,
            attestor,
            identity_key: config.data_dir.join(common::identity::IDENTITY_FILE),
            sources: v
                .allowed_source_addresses
                .iter()
                .map(|n| common::config::parse_network(n))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("validator.allowed_source_addresses: {e}"))?,
            config: v.clone(),
        };
        let host = config.server.host;
        let (front, user) = match v.ssh_server {
            common::config::SshServerKind::Embedded => {
                let listener = tokio::net::TcpListener::bind((host, v.ssh_port))
                    .await
                    .map_err(|e| format!("validator.ssh_port: cannot listen on {host}:{}: {e}", v.ssh_port))?;
                tracing::info!(port = v.ssh_port, strict = v.strict_ssh_restrictions, "SSH server listening");
                let host_key = Box::new(host_key(&config.data_dir)?);
                (Front::Embedded { listener, host_key }, "validator".to_owned())
            }
            common::config::SshServerKind::System => {
                let uid = ssh::CommandUser::lookup("validator.system_sshd_user", &v.system_sshd_user)?.uid;
                let keys_file = v.authorized_keys_file.clone();
                let dir = keys_file.parent().ok_or("validator.authorized_keys_file: no directory")?;
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("validator.authorized_keys_file: cannot create {}: {e}", dir.display()))?;
                let socket = gate::socket_path(&keys_file);
                let _ = std::fs::remove_file(&socket);
                let listener = tokio::net::UnixListener::bind(&socket).map_err(|e| {
                    format!("validator.authorized_keys_file: cannot listen on {}: {e}", socket.display())
                })?;
                {
                    use std::os::unix::fs::PermissionsExt;
                    // Any local user may connect; the service answers only system_sshd_user.
                    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
                }
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
        Ok(Self { api: api::Api { access: Arc::new(access), ssh_endpoint }, front })
    }

    fn add_routes(&self, routes: tonic::service::Routes) -> tonic::service::Routes {
        routes.add_service(common::proto::access::v1::validator_access_server::ValidatorAccessServer::new(
            self.api.clone(),
        ))
    }

    async fn run(self, ctx: ServiceContext) -> Result<(), BoxError> {
        ctx.health.set_service_status(GRPC_SERVICE, tonic_health::ServingStatus::Serving).await;
        describe_metrics();
        let access = self.api.access.clone();
        let mut keys = None;
        let server = match self.front {
            Front::Embedded { listener, host_key } => {
                tokio::spawn(ssh::serve(access.clone(), listener, *host_key, ctx.shutdown.clone()))
            }
            Front::System { listener, uid, keys_file } => {
                keys = Some((keys_file, std::env::current_exe()?, None));
                tokio::spawn(gate::serve(access.clone(), listener, uid, ctx.shutdown.clone()))
            }
        };
        let mut reap = tokio::time::interval(REAP_INTERVAL);
        loop {
            tokio::select! {
                _ = reap.tick() => {
                    access.reap().await;
                    if let Some((file, gate, last)) = &mut keys
                        && let Err(e) = gate::sync_authorized_keys(&access, file, gate, last)
                    {
                        tracing::error!(file = %file.display(), error = %e, "cannot write the authorized_keys file");
                    }
                }
                () = ctx.shutdown.cancelled() => break,
            }
        }
        let _ = server.await;
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
    metrics::describe_gauge!("executor_validator_access_sessions", "Open SSH sessions.");
    metrics::describe_gauge!("executor_validator_access_grants", "Live grants.");
}
