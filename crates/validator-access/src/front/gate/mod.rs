//! System-sshd mode: validators log in through the host's OpenSSH as `system_sshd_user`, with
//! keys from an `authorized_keys` file validator-access keeps in step with the live grants
//! ([`keys`]). The key's forced command is this binary's `gate` mode ([`client`]), which
//! relays the validator's command line (`SSH_ORIGINAL_COMMAND`), stdin, stdout, stderr and
//! exit status over a Unix socket to the service; this module is the service's end of the
//! relay: it admits the grant, then plans, runs and ends the session exactly as the embedded
//! server would (grammar, runner, sessions, audit), and closes the relay when the grant ends.
//! The frames are [`wire`]'s.

pub mod client;
pub mod keys;
pub mod wire;

use std::sync::Arc;

use serde_json::json;
use tokio::net::unix::OwnedWriteHalf;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::command::{Job, Output, Stream};
use crate::principal::Principal;
use crate::sessions::{Closer, Ending, Session, new_session_id};
use crate::time::now;

pub use wire::socket_path;
use wire::{EXIT, HEADER, Header, STDERR, STDIN, STDOUT, read_frame, write_frame};

/// A command's output, relayed to the gate.
struct RelayOutput(tokio::sync::Mutex<OwnedWriteHalf>);

impl Output for RelayOutput {
    async fn out(&self, stream: Stream, data: Vec<u8>) {
        let kind = match stream {
            Stream::Stdout => STDOUT,
            Stream::Stderr => STDERR,
        };
        let _ = write_frame(&mut *self.0.lock().await, kind, &data).await;
    }

    async fn finish(&self, code: u32) {
        let _ = write_frame(&mut *self.0.lock().await, EXIT, &code.to_be_bytes()).await;
    }
}

impl RelayOutput {
    /// Ends the relay with a message on stderr and `code`.
    async fn refuse(&self, message: String, code: u32) {
        self.out(Stream::Stderr, message.into_bytes()).await;
        self.finish(code).await;
    }
}

/// Serves relays from the gate on `listener` until `shutdown`; only `uid` may connect.
pub async fn serve(access: Arc<Access>, listener: tokio::net::UnixListener, uid: u32, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "gate accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let access = access.clone();
        tokio::spawn(async move {
            if let Err(e) = relay(access, stream, uid).await {
                tracing::debug!(error = %e, "gate relay ended");
            }
        });
    }
}

async fn relay(access: Arc<Access>, stream: tokio::net::UnixStream, uid: u32) -> std::io::Result<()> {
    let peer_uid = stream.peer_cred()?.uid();
    let (mut rd, wr) = stream.into_split();
    let output = RelayOutput(tokio::sync::Mutex::new(wr));
    if peer_uid != uid {
        access.audit().record("refused", json!({"what": "gate_caller", "uid": peer_uid}));
        output.refuse("executor: not the validator login user\n".to_owned(), 255).await;
        return Ok(());
    }
    let (kind, data) = read_frame(&mut rd).await?;
    let header: Header = match (kind, serde_json::from_slice(&data)) {
        (HEADER, Ok(h)) => h,
        _ => return Err(std::io::Error::other("no header")),
    };
    let session_id = new_session_id();
    let principal = match access.admission().admit_relayed(&header.grant, header.peer.parse().ok()) {
        Ok(principal) => principal,
        Err(denied) => {
            let reason = denied.as_str();
            access.audit().record(
                "auth_failure",
                json!({"session": session_id, "peer": header.peer, "grant_id": header.grant, "reason": reason,
                       "via": "system_sshd"}),
            );
            output.refuse(format!("executor: access refused ({reason})\n"), 255).await;
            return Ok(());
        }
    };
    let Principal::Validator(grant) = &principal;
    access.audit().record(
        "auth_success",
        json!({"session": session_id, "peer": header.peer, "grant_id": grant.id, "hotkey": grant.hotkey,
               "via": "system_sshd"}),
    );
    let planned = match access.grammar().plan(&header.command) {
        Ok(p) => p,
        Err(why) => {
            let what = if header.command.trim().is_empty() { "shell" } else { "command" };
            access.audit().record("refused", json!({"session": session_id, "what": what, "hotkey": grant.hotkey}));
            output.refuse(format!("executor: {why}\n"), 126).await;
            return Ok(());
        }
    };
    let token = CancellationToken::new();
    let mut session = Session::new(principal.clone(), header.peer.clone(), now(), Closer::Cancel(token.clone()));
    session.commands.push(header.command.clone());
    access.sessions().insert(session_id.clone(), session);
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let stdin = tokio::spawn(async move {
        while let Ok((kind, data)) = read_frame(&mut rd).await {
            match kind {
                STDIN if tx.send(data).await.is_ok() => {}
                _ => break,
            }
        }
    });
    let job = Job {
        session_id: session_id.clone(),
        principal: Some(principal),
        line: header.command,
        spec: access.runner().spec(planned),
    };
    tokio::select! {
        () = access.runner().run(access.sessions(), job, output, rx) => {}
        () = token.cancelled() => {}
    }
    stdin.abort();
    access.sessions().end(&session_id, Ending::ClientClosed).await;
    Ok(())
}
