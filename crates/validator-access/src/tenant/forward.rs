//! A renter's `ssh -L`: one `direct-tcpip` channel carried to container-runtime's Forward,
//! which connects inside the container's network namespace and refuses every target but the
//! container's own loopback (`localhost`, `127.0.0.1`, `::1`). The SSH front checks the login
//! and the channel limit; [`carry`] asks for the connection, answers the channel open only
//! when it is made (or refused), audits it, and then carries bytes both ways until either side
//! closes. The task it runs in is the channel's: the front aborts it when the channel or the
//! connection goes, which drops the stream and so closes the socket in the container.

use std::sync::Arc;

use common::proto::runtime::v1 as runtime;
use common::proto::runtime::v1::forward_input::Input;
use common::proto::runtime::v1::forward_output::Output;
use common::reason::{Reason, Refusal};
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::tenant::access::Tenants;

/// Messages on their way to container-runtime: the channel's data waits for room here, so a
/// container that reads slowly slows the client down.
const QUEUE: usize = 16;

/// Who asks for a forward and where to: what its audit records name.
#[derive(Debug, Clone)]
pub struct Request {
    pub session: String,
    pub peer: String,
    pub container: String,
    pub fingerprint: String,
    pub host: String,
    pub port: u32,
}

/// A forward refused, before or by container-runtime: counted by `reason`
/// (`executor_validator_access_tenant_forwards_total` and the refusals'
/// `executor_validator_access_tenant_refused_total{reason="port_forwarding"}`) and audited as
/// `tenant_refused`, `what: port_forwarding`, with the reason and the words the renter got.
pub fn refused(
    tenants: &Tenants,
    session: &str,
    peer: &str,
    container: Option<&str>,
    target: (&str, u32),
    reason: &str,
    detail: &str,
) {
    metrics::counter!("executor_validator_access_tenant_refused_total", "reason" => "port_forwarding").increment(1);
    metrics::counter!("executor_validator_access_tenant_forwards_total", "result" => reason.to_owned()).increment(1);
    tenants.audit().record(
        "tenant_refused",
        json!({"session": session, "peer": peer, "container": container, "what": "port_forwarding",
               "reason": reason, "host": target.0, "port": target.1, "detail": detail}),
    );
}

/// A forward connected: counted and audited as `tenant_forward`.
fn connected(tenants: &Tenants, request: &Request, address: &str) {
    metrics::counter!("executor_validator_access_tenant_forwards_total", "result" => "connected").increment(1);
    tenants.audit().record(
        "tenant_forward",
        json!({"session": request.session, "container": request.container, "fingerprint": request.fingerprint,
               "peer": request.peer, "host": request.host, "port": request.port, "address": address}),
    );
}

/// The SSH answer to a Forward that failed: a target off the loopback is prohibited, anything
/// else (nothing listens, a stopped container, container-runtime away) a failed connect.
fn failure(refusal: &Refusal) -> ChannelOpenFailure {
    match refusal.reason {
        Reason::NotPermitted | Reason::InvalidField => ChannelOpenFailure::AdministrativelyProhibited,
        _ => ChannelOpenFailure::ConnectFailed,
    }
}

/// Asks container-runtime for the connection `request` names, accepts `channel` once it is
/// made (rejects it, audited, when not), then carries bytes both ways: the channel's data to
/// the container, its end of file as a half-close; the container's data to the channel, its
/// close as the channel's end of file and close. Runs as the channel's task, aborted by the
/// front when the channel or the connection closes.
pub async fn carry(tenants: Arc<Tenants>, request: Request, channel: Channel<Msg>, reply: ChannelOpenHandle) {
    let start = runtime::ForwardStart { id: request.container.clone(), host: request.host.clone(), port: request.port };
    let (tx, rx) = mpsc::channel::<runtime::ForwardInput>(QUEUE);
    let _ = tx.try_send(runtime::ForwardInput { input: Some(Input::Start(start)) });
    let answer = match tenants.runtime().forward(ReceiverStream::new(rx)).await {
        Ok(response) => {
            let mut output = response.into_inner();
            match output.next().await {
                Some(Ok(runtime::ForwardOutput { output: Some(Output::Connected(c)) })) => Ok((output, c.address)),
                Some(Err(status)) => Err(status),
                Some(Ok(_)) | None => Err(tonic::Status::internal("Forward answered without `connected`")),
            }
        }
        Err(status) => Err(status),
    };
    let (output, address) = match answer {
        Ok(answer) => answer,
        Err(status) => {
            let refusal = Refusal::from_status(&status)
                .unwrap_or_else(|| Refusal::new(Reason::PeerUnavailable, status.message()));
            let target = (request.host.as_str(), request.port);
            refused(
                &tenants,
                &request.session,
                &request.peer,
                Some(&request.container),
                target,
                refusal.reason.as_str(),
                &refusal.message,
            );
            reply.reject(failure(&refusal)).await;
            return;
        }
    };
    reply.accept().await;
    connected(&tenants, &request, &address);
    let (mut from_client, to_client) = channel.split();
    pump(&mut from_client, tx, output, &to_client, &request.session).await;
    tracing::debug!(session = request.session, address, "forward ended");
}

/// The renter's side of a forward's channel as [`pump`] reads it: russh's read half (a
/// script in the tests).
trait FromClient {
    async fn next(&mut self) -> Option<ChannelMsg>;
}

/// The renter's side of a forward's channel as [`pump`] writes it.
trait ToClient {
    /// False once the channel is gone.
    async fn data(&self, data: Vec<u8>) -> bool;
    /// End of file, then close.
    async fn end(&self);
}

impl FromClient for russh::ChannelReadHalf {
    async fn next(&mut self) -> Option<ChannelMsg> {
        self.wait().await
    }
}

impl ToClient for russh::ChannelWriteHalf<Msg> {
    async fn data(&self, data: Vec<u8>) -> bool {
        self.data_bytes(data).await.is_ok()
    }

    async fn end(&self) {
        let _ = self.eof().await;
        let _ = self.close().await;
    }
}

/// Carries bytes both ways once the forward is made: the channel's data to the container
/// (`tx`), its end of file as a half-close; the container's data (`output`) to the channel,
/// its end as the channel's end of file and close. The channel closing ends it at once; the
/// container's side ending ends it once the channel was told. container-runtime may be done
/// with the request stream (`tx` closed) before the renter's end of file arrives: that does
/// not end the forward, or what the container said last would never reach the renter.
async fn pump(
    from_client: &mut impl FromClient,
    tx: mpsc::Sender<runtime::ForwardInput>,
    mut output: impl tokio_stream::Stream<Item = Result<runtime::ForwardOutput, tonic::Status>> + Unpin,
    to_client: &impl ToClient,
    session: &str,
) {
    let inbound = async {
        let mut tx = Some(tx);
        while let Some(message) = from_client.next().await {
            let input = match message {
                ChannelMsg::Data { data } => Input::Data(data.to_vec()),
                ChannelMsg::Eof => Input::CloseWrite(true),
                ChannelMsg::Close => break,
                _ => continue,
            };
            if let Some(open) = &tx
                && open.send(runtime::ForwardInput { input: Some(input) }).await.is_err()
            {
                // container-runtime finished the forward; what it sent still goes out.
                tx = None;
            }
        }
    };
    let outbound = async {
        while let Some(item) = output.next().await {
            match item.map(|o| o.output) {
                Ok(Some(Output::Data(data))) => {
                    if !to_client.data(data).await {
                        return;
                    }
                }
                Ok(Some(Output::Connected(_)) | None) => {}
                Err(status) => {
                    tracing::debug!(session, error = %status, "forward broke off");
                    break;
                }
            }
        }
        to_client.end().await;
    };
    tokio::select! {
        () = inbound => {}
        () = outbound => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// The client's messages, then nothing more (the channel stays open).
    struct Script(std::vec::IntoIter<ChannelMsg>);

    impl FromClient for Script {
        async fn next(&mut self) -> Option<ChannelMsg> {
            match self.0.next() {
                Some(message) => Some(message),
                None => std::future::pending().await,
            }
        }
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl ToClient for Recorder {
        async fn data(&self, data: Vec<u8>) -> bool {
            self.0.lock().unwrap().push(String::from_utf8_lossy(&data).into_owned());
            true
        }

        async fn end(&self) {
            self.0.lock().unwrap().extend(["eof".to_owned(), "close".to_owned()]);
        }
    }

    /// The race CI met once: the container's server answered and closed, container-runtime
    /// ended the forward (and with it the request stream), and the renter's end of file
    /// arrived at the same moment. Both sides are ready at the first poll; whichever the task
    /// takes, the answer, the end of file and the close reach the renter.
    #[tokio::test]
    async fn what_the_container_said_last_reaches_the_renter_when_its_end_of_file_comes_late() {
        for _ in 0..64 {
            let (tx, rx) = mpsc::channel(QUEUE);
            drop(rx);
            let answer = runtime::ForwardOutput { output: Some(Output::Data(b"hello-from-inside\n".to_vec())) };
            let output = tokio_stream::iter([Ok(answer)]);
            let mut client = Script(vec![ChannelMsg::Eof].into_iter());
            let recorder = Recorder::default();
            tokio::time::timeout(Duration::from_secs(5), pump(&mut client, tx, output, &recorder, "s"))
                .await
                .expect("the forward ended");
            assert_eq!(*recorder.0.lock().unwrap(), ["hello-from-inside\n", "eof", "close"]);
        }
    }

    /// The renter closing the channel ends the forward even while the container says nothing.
    #[tokio::test]
    async fn the_renter_closing_the_channel_ends_the_forward() {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let mut client =
            Script(vec![ChannelMsg::Data { data: b"ping".as_slice().into() }, ChannelMsg::Close].into_iter());
        let recorder = Recorder::default();
        let silent = tokio_stream::pending::<Result<runtime::ForwardOutput, tonic::Status>>();
        tokio::time::timeout(Duration::from_secs(5), pump(&mut client, tx, silent, &recorder, "s"))
            .await
            .expect("the forward ended");
        let sent = rx.recv().await.and_then(|i| i.input);
        assert!(matches!(sent, Some(Input::Data(ref d)) if d == b"ping"), "{sent:?}");
        assert!(recorder.0.lock().unwrap().is_empty());
    }
}
