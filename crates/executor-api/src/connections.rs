//! `[server] max_connections`: a hard cap on concurrent connections to the public port.
//!
//! Each accepted connection holds a permit until it closes. A connection past the cap is
//! closed at once (the client sees UNAVAILABLE and can retry) and counted; it is never queued,
//! so a flood cannot hold the server's memory.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A connection holding one of the `max_connections` permits.
#[derive(Debug)]
pub struct Limited {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

/// Accepts on `listener` until `shutdown`, handing on at most `max` open connections at a time.
pub fn accept(
    listener: TcpListener,
    max: usize,
    shutdown: CancellationToken,
) -> (ReceiverStream<std::io::Result<Limited>>, tokio::task::JoinHandle<()>) {
    metrics::describe_gauge!("executor_api_connections", "Open connections to the public gRPC port.");
    metrics::describe_counter!(
        "executor_api_connections_refused_total",
        "Connections closed at once because [server] max_connections were open."
    );
    let (tx, rx) = mpsc::channel(16);
    let permits = Arc::new(Semaphore::new(max));
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.cancelled() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: say so, and keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                metrics::counter!("executor_api_connections_refused_total").increment(1);
                tracing::warn!(%peer, max, "connection refused: server.max_connections are open");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            metrics::gauge!("executor_api_connections").increment(1.0);
            if tx.send(Ok(Limited { stream, _permit: permit })).await.is_err() {
                return;
            }
        }
    });
    (ReceiverStream::new(rx), task)
}

impl Drop for Limited {
    fn drop(&mut self) {
        metrics::gauge!("executor_api_connections").decrement(1.0);
    }
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
