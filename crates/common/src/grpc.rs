//! gRPC over Unix sockets between the services, plus the health and reflection services every
//! server carries.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::server::HealthReporter;

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}: another process is already serving on this socket")]
    InUse(PathBuf),
    #[error("{0}: exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("reflection: {0}")]
    Reflection(String),
}

/// Binds a Unix socket at `path` with mode 0660, creating its directory with mode 0750.
/// A stale socket left by a dead process is replaced; a live one is an error.
pub async fn bind_unix(path: &Path) -> Result<UnixListener, GrpcError> {
    let io_err = |source| GrpcError::Io { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o750).create(dir).map_err(io_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(GrpcError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io_err)?;
        }
        Ok(_) => return Err(GrpcError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    set_socket_mode(path, 0o660).map_err(io_err)?;
    Ok(listener)
}

/// Sets the mode of the socket at `path` without following a symlink: `chmod` by path would
/// change whatever a link swapped in after `bind` points to (issue 18 item 9). The socket is
/// opened with `O_PATH | O_NOFOLLOW`, checked to be a socket, and changed through its descriptor.
pub fn set_socket_mode(path: &Path, mode: u32) -> io::Result<()> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::{Mode, SFlag, fstat};
    use std::os::fd::AsRawFd;
    let fd = open(path, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())?;
    let stat = fstat(&fd)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(io::Error::other(format!("{} is not a socket (replaced after bind?)", path.display())));
    }
    // An O_PATH descriptor takes no fchmod; its /proc entry names the inode itself.
    std::fs::set_permissions(format!("/proc/self/fd/{}", fd.as_raw_fd()), std::fs::Permissions::from_mode(mode))
}

/// A channel to a Unix socket that connects on first use and reconnects after failures.
pub fn unix_channel(path: &Path) -> Channel {
    let path = path.to_owned();
    // The URI is required by the API but unused: the connector decides where to go.
    Endpoint::from_static("http://localhost").connect_timeout(Duration::from_secs(2)).connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }),
    )
}

/// Asks a server for the health of `service` ("" for the server as a whole).
pub async fn check_health(channel: Channel, service: &str, timeout: Duration) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest { service: service.to_owned() };
    let response = tokio::time::timeout(timeout, client.check(request))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded(format!("no health answer within {timeout:?}")))??;
    Ok(match response.into_inner().status {
        1 => ServingStatus::Serving,
        2 => ServingStatus::NotServing,
        _ => ServingStatus::Unknown,
    })
}

/// The routes every server starts with: `grpc.health.v1.Health` and server reflection (v1 and
/// v1alpha, since Python clients speak v1alpha) advertising `services` and health, describing
/// every proto of the node. Returns the health reporter; the caller marks services SERVING
/// when they are.
pub fn base_routes(services: &[&str]) -> Result<(HealthReporter, Routes), GrpcError> {
    routes_describing(services, crate::proto::FILE_DESCRIPTOR_SET)
}

/// As [`base_routes`], for the public port: reflection describes only
/// [`crate::proto::PUBLIC_FILE_DESCRIPTOR_SET`], so no internal service's RPCs are visible
/// from the network.
pub fn public_base_routes(services: &[&str]) -> Result<(HealthReporter, Routes), GrpcError> {
    routes_describing(services, crate::proto::PUBLIC_FILE_DESCRIPTOR_SET)
}

fn routes_describing(services: &[&str], descriptors: &'static [u8]) -> Result<(HealthReporter, Routes), GrpcError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(descriptors)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in services {
            b = b.with_service_name(*name);
        }
        b
    };
    let v1 = builder().build_v1().map_err(|e| GrpcError::Reflection(e.to_string()))?;
    let v1alpha = builder().build_v1alpha().map_err(|e| GrpcError::Reflection(e.to_string()))?;
    Ok((reporter, Routes::new(health).add_service(v1).add_service(v1alpha)))
}

#[cfg(test)]
mod socket_mode_tests {
    use super::*;

    /// The attack: the socket's path swapped for a symlink to a file between `bind` and the
    /// chmod. A chmod by path follows it and opens the file up; ours refuses and leaves it be.
    #[tokio::test]
    async fn a_socket_swapped_for_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("executor_identity.key");
        std::fs::write(&victim, b"secret").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let socket = dir.path().join("api.sock");
        let listener = bind_unix(&socket).await.unwrap();
        assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o660);
        std::fs::remove_file(&socket).unwrap();
        std::os::unix::fs::symlink(&victim, &socket).unwrap();
        // What the old code did.
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).unwrap();
        assert_eq!(std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777, 0o660, "the attack works by path");
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = set_socket_mode(&socket, 0o666).unwrap_err();
        assert!(
            err.to_string().contains("Too many levels of symbolic links") || err.to_string().contains("not a socket"),
            "{err}"
        );
        assert_eq!(std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777, 0o600);
        drop(listener);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::wrappers::UnixListenerStream;

    #[tokio::test]
    async fn serves_health_over_a_socket_and_replaces_stale_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/test.sock");
        let listener = bind_unix(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(matches!(bind_unix(&path).await, Err(GrpcError::InUse(_))));

        let (reporter, routes) = base_routes(&[]).unwrap();
        reporter.set_service_status("", ServingStatus::Serving).await;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.clone().cancelled_owned()),
        );
        let status = check_health(unix_channel(&path), "", Duration::from_secs(5)).await.unwrap();
        assert_eq!(status, ServingStatus::Serving);
        shutdown.cancel();
        server.await.unwrap().unwrap();

        // The socket file outlives the server: binding again replaces it.
        assert!(path.exists());
        drop(bind_unix(&path).await.unwrap());
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(bind_unix(&path).await, Err(GrpcError::NotASocket(_))));
    }
}
