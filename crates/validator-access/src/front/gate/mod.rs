//! System-sshd mode: validators log in through the host's OpenSSH as `system_sshd_user`, with
//! keys from an `authorized_keys` file validator-access keeps in step with the live grants
//! ([`keys`]). The key's forced command is this binary's `gate` mode ([`client`]), which
//! relays the validator's command line (`SSH_ORIGINAL_COMMAND`), stdin, stdout, stderr and
//! exit status over a Unix socket to the service; this module is the service's end of the
//! relay: it admits the grant, then plans, runs and ends the session exactly as the embedded
//! server would (grammar, runner, sessions, audit), and closes the relay when the grant ends.
//!
//! Frames, both ways: a kind byte, a big-endian u32 length, the bytes. Gate → service: `H`
//! (JSON header: grant, command, peer), `I` (stdin), `E` (end of stdin). Service → gate: `O`
//! (stdout), `R` (stderr), `X` (exit status, u32).

pub mod client;
pub mod keys;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::command::{Job, Output, Stream};
use crate::principal::Principal;
use crate::sessions::{Closer, Ending, Session, new_session_id};
use crate::time::now;

pub const HEADER: u8 = b'H';
pub const STDIN: u8 = b'I';
pub const STDIN_EOF: u8 = b'E';
pub const STDOUT: u8 = b'O';
pub const STDERR: u8 = b'R';
pub const EXIT: u8 = b'X';
/// Largest frame accepted (the header, or a chunk of stdin).
const MAX_FRAME: u32 = 1 << 20;

/// The relay socket: beside the `authorized_keys` file (a directory sshd already requires the
/// validator user to reach).
pub fn socket_path(authorized_keys: &Path) -> PathBuf {
    authorized_keys.with_file_name("validator-gate.sock")
}

/// What the gate says first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub grant: String,
    pub command: String,
    /// `SSH_CONNECTION`'s first field.
    pub peer: String,
}

/// One frame's bytes.
fn frame(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + data.len());
    f.push(kind);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes());
    f.extend_from_slice(data);
    f
}

async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, kind: u8, data: &[u8]) -> std::io::Result<()> {
    w.write_all(&frame(kind, data)).await
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {len} bytes")));
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data).await?;
    Ok((head[0], data))
}

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
