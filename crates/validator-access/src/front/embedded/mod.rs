//! The embedded SSH server (russh): public-key authentication only, for the keys admission
//! knows; strict key exchange (russh does the Terrapin countermeasure, `kex-strict-s-v00`); no
//! PTY, environment, agent, X11 or port forwarding ever; commands as the grammar plans them,
//! run by the runner. Connections over `ssh_requests_per_minute` per source address
//! (connections and failed authentications) or per hotkey (logins) are closed; so are
//! connections past `max_unauthenticated_connections` (in all) or
//! `max_unauthenticated_per_address` that have not authenticated yet, and those that have not
//! within `login_grace_time` (the socket is shut down under russh, whatever it waits for).
//! Also the persistent host key.

mod handler;

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::peers::PeerSlots;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::refusals::Refusal;
use crate::sessions::Ending;

/// The SSH host key under `data_dir`.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// Why the host key cannot be loaded or made; names the file.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("{path}: {source}")]
    Load { path: String, source: russh::keys::Error },
    #[error("no randomness for a new host key: {0}")]
    Randomness(getrandom::Error),
    #[error("cannot encode a new host key: {0}")]
    Encode(russh::keys::ssh_key::Error),
    #[error("{path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// The persistent SSH host key: `data_dir/ssh_host_ed25519_key` (OpenSSH format, 0600), made
/// on first start.
pub fn host_key(data_dir: &Path) -> Result<russh::keys::PrivateKey, HostKeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(HOST_KEY_FILE);
    let shown = || path.display().to_string();
    if path.exists() {
        return russh::keys::load_secret_key(&path, None)
            .map_err(|source| HostKeyError::Load { path: shown(), source });
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(HostKeyError::Randomness)?;
    let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
    let key = russh::keys::PrivateKey::from(pair);
    let text = key.to_openssh(russh::keys::ssh_key::LineEnding::LF).map_err(HostKeyError::Encode)?;
    let write = |source| HostKeyError::Write { path: shown(), source };
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(write)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(write)?;
    file.sync_all().map_err(write)?;
    Ok(key)
}

/// Serves SSH on `listener` until `shutdown`.
pub async fn serve(
    access: Arc<Access>,
    listener: tokio::net::TcpListener,
    host_key: russh::keys::PrivateKey,
    shutdown: CancellationToken,
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
    let limits = access.limits();
    let unauthenticated = PeerSlots::new(
        limits.max_unauthenticated_connections as usize,
        limits.max_unauthenticated_per_address as usize,
    );
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
        // Refusals are counted here and audited by another task: nothing here waits for a disk.
        if !access.admission().source_allowed(peer.ip()) {
            metrics::counter!("executor_validator_access_refused_total", "what" => "source_address").increment(1);
            let detail = json!({"what": "source_address"});
            access.refusals().refuse(Refusal { peer: peer.ip(), event: "refused", reason: "source_address", detail });
            drop(stream);
            continue;
        }
        if !access.admission().admit_ip(peer.ip()) {
            let detail = json!({"scope": "ip", "what": "connection"});
            access.refusals().refuse(Refusal {
                peer: peer.ip(),
                event: "rate_limited",
                reason: "rate_limited",
                detail,
            });
            drop(stream);
            continue;
        }
        let slot = match unauthenticated.try_acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(full) => {
                metrics::counter!("executor_validator_access_refused_total", "what" => "unauthenticated_limit")
                    .increment(1);
                let detail = json!({"what": "unauthenticated_limit", "limit": full.to_string()});
                let refusal = Refusal { peer: peer.ip(), event: "refused", reason: "unauthenticated_limit", detail };
                access.refusals().refuse(refusal);
                drop(stream);
                continue;
            }
        };
        // A second handle on the socket, to shut it down under russh when the grace is over.
        let socket = match stream.as_fd().try_clone_to_owned() {
            Ok(fd) => std::net::TcpStream::from(fd),
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep a handle on an SSH connection");
                continue;
            }
        };
        metrics::counter!("executor_validator_access_connections_total").increment(1);
        let leash = super::Leash::default();
        let limits = access.limits();
        let conn =
            handler::Conn::new(access.clone(), peer, limits.max_channels_per_session as usize, slot, leash.clone());
        let config = config.clone();
        let access = access.clone();
        let grace = limits.login_grace_time;
        tokio::spawn(async move {
            let id = conn.session_id().to_owned();
            let connection = async {
                match russh::server::run_stream(config, stream, conn).await {
                    Ok(session) => {
                        let ending = if session.await.is_ok() { Ending::ClientClosed } else { Ending::ConnectionError };
                        access.sessions().end(&id, ending).await;
                    }
                    Err(e) => tracing::debug!(peer = %peer, error = %e, "SSH handshake failed"),
                }
            };
            let expired = || {
                metrics::counter!("executor_validator_access_refused_total", "what" => "login_grace_time").increment(1);
                let detail = json!({"what": "login_grace_time", "session": id});
                let refusal = Refusal { peer: peer.ip(), event: "refused", reason: "login_grace_time", detail };
                access.refusals().refuse(refusal);
            };
            super::run_connection(connection, socket, grace, leash, expired).await;
        });
    }
}
