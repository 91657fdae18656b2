//! System-sshd mode: validators log in through the host's OpenSSH as `system_sshd_user`, with
//! keys from an `authorized_keys` file validator-access keeps in step with the live grants:
//!
//! ```text
//! restrict,command="/opt/basilica/bin/validator-access gate g-…",expiry-time="20261129120000Z"[,from="…"] ssh-ed25519 AAAA… g-…
//! ```
//!
//! `restrict` turns off PTYs and every kind of forwarding; `expiry-time` makes sshd itself
//! refuse the key after the grant's end; `from=` carries `allowed_source_addresses`. The forced
//! command is this binary's `gate` mode, which relays the validator's command line
//! (`SSH_ORIGINAL_COMMAND`), stdin, stdout, stderr and exit status over a Unix socket to the
//! service, which checks the grant and runs the command exactly as the embedded server would
//! (allow-list, command user, limits, audit) and closes the relay when the grant ends.
//!
//! Frames, both ways: a kind byte, a big-endian u32 length, the bytes. Gate → service: `H`
//! (JSON header: grant, command, peer), `I` (stdin), `E` (end of stdin). Service → gate: `O`
//! (stdout), `R` (stderr), `X` (exit status, u32).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::grants::GrantRecord;
use crate::ssh::{Access, Closer, SessionInfo, Sink, now};

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

pub async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, kind: u8, data: &[u8]) -> std::io::Result<()> {
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

/// The `authorized_keys` text for `grants`: `gate` is this binary, `socket` the relay socket.
pub fn authorized_keys(grants: &[GrantRecord], gate: &Path, socket: &Path, sources: &[String]) -> String {
    let mut out = String::from("# Written by validator-access: one line per live grant. Edits are overwritten.\n");
    let from = if sources.is_empty() { String::new() } else { format!(",from=\"{}\"", sources.join(",")) };
    let mut grants: Vec<&GrantRecord> = grants.iter().collect();
    grants.sort_by(|a, b| a.id.cmp(&b.id));
    for g in grants {
        let expiry = expiry_time(g.expires_at);
        out.push_str(&format!(
            "restrict,command=\"{} gate {} {}\",expiry-time=\"{expiry}\"{from} {} {}\n",
            gate.display(),
            g.id,
            socket.display(),
            g.public_key.trim(),
            g.id
        ));
    }
    out
}

/// `YYYYMMDDHHMMSSZ` (UTC) for Unix seconds, as sshd's `expiry-time` wants.
pub fn expiry_time(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}{:02}{:02}{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Rewrites the `authorized_keys` file (atomically, mode 0644) when the live grants changed.
pub fn sync_authorized_keys(
    access: &Access,
    path: &Path,
    gate: &Path,
    last: &mut Option<String>,
) -> std::io::Result<()> {
    let socket = socket_path(path);
    let text = authorized_keys(&access.grants.live(now()), gate, &socket, &access.config.allowed_source_addresses);
    if last.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    crate::grants::write_atomically(path, text.as_bytes(), Some(0o644))?;
    *last = Some(text);
    Ok(())
}

/// Serves relays from the gate on `listener` until `shutdown`; only `uid` may connect.
pub async fn serve(
    access: Arc<Access>,
    listener: tokio::net::UnixListener,
    uid: u32,
    shutdown: tokio_util::sync::CancellationToken,
) {
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
    let sink = Sink::Gate(tokio::sync::Mutex::new(wr));
    if peer_uid != uid {
        access.audit.record("refused", json!({"what": "gate_caller", "uid": peer_uid}));
        sink.out(1, b"executor: not the validator login user\n".to_vec()).await;
        sink.finish(255).await;
        return Ok(());
    }
    let (kind, data) = read_frame(&mut rd).await?;
    let header: Header = match (kind, serde_json::from_slice(&data)) {
        (HEADER, Ok(h)) => h,
        _ => return Err(std::io::Error::other("no header")),
    };
    let peer_ip: Option<std::net::IpAddr> = header.peer.parse().ok();
    let grant = access.grants.live(now()).into_iter().find(|g| g.id == header.grant);
    let refusal = match (&grant, peer_ip) {
        (None, _) => Some("no_live_grant"),
        (_, Some(ip)) if !access.source_allowed(ip) => Some("source_address"),
        (_, Some(ip)) if !access.admit_ip(ip, "connection") => Some("rate_limited"),
        (Some(g), _) if access.by_hotkey.check(&g.hotkey).is_err() => Some("rate_limited"),
        _ => None,
    };
    let session_id = crate::ssh::new_session_id();
    let (Some(grant), None) = (grant, refusal) else {
        let reason = refusal.unwrap_or("no_live_grant");
        access.audit.record(
            "auth_failure",
            json!({"session": session_id, "peer": header.peer, "grant_id": header.grant, "reason": reason, "via": "system_sshd"}),
        );
        sink.out(1, format!("executor: access refused ({reason})\n").into_bytes()).await;
        sink.finish(255).await;
        return Ok(());
    };
    access.audit.record(
        "auth_success",
        json!({"session": session_id, "peer": header.peer, "grant_id": grant.id, "hotkey": grant.hotkey, "via": "system_sshd"}),
    );
    let planned = match access.plan(&header.command) {
        Ok(p) => p,
        Err(why) => {
            access.audit.record(
                "refused",
                json!({"session": session_id, "what": if header.command.trim().is_empty() { "shell" } else { "command" },
                       "hotkey": grant.hotkey}),
            );
            sink.out(1, format!("executor: {why}\n").into_bytes()).await;
            sink.finish(126).await;
            return Ok(());
        }
    };
    let token = tokio_util::sync::CancellationToken::new();
    access.sessions().insert(
        session_id.clone(),
        SessionInfo {
            grant_id: grant.id.clone(),
            hotkey: grant.hotkey.clone(),
            peer: header.peer.clone(),
            started_at: now(),
            commands: vec![header.command.clone()],
            closer: Closer::Gate(token.clone()),
            children: HashSet::new(),
        },
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let stdin = tokio::spawn(async move {
        while let Ok((kind, data)) = read_frame(&mut rd).await {
            match kind {
                STDIN if tx.send(data).await.is_ok() => {}
                _ => break,
            }
        }
    });
    let spec = access.command_spec(planned);
    let run = crate::ssh::run(access.clone(), spec, sink, rx, session_id.clone(), Some(grant.clone()), header.command);
    tokio::select! {
        () = run => {}
        () = token.cancelled() => {}
    }
    stdin.abort();
    if access.sessions().remove(&session_id).is_some() {
        access.audit.record(
            "disconnect",
            json!({"session": session_id, "grant_id": grant.id, "hotkey": grant.hotkey, "reason": "client_closed"}),
        );
    }
    Ok(())
}

/// `validator-access gate <grant> <socket>`: the forced command sshd runs for a validator key.
/// Relays to the service and exits with the command's status (255 when the service is not
/// there).
pub fn gate_main(args: &[String]) -> std::process::ExitCode {
    let (Some(grant), Some(socket)) = (args.first(), args.get(1)) else {
        eprintln!("usage: validator-access gate GRANT_ID SOCKET");
        return std::process::ExitCode::from(2);
    };
    match gate(grant, Path::new(socket)) {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("executor: validator access is not available on this host right now ({e})");
            std::process::ExitCode::from(255)
        }
    }
}

fn gate(grant: &str, socket: &Path) -> std::io::Result<u32> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    let header = Header {
        grant: grant.to_owned(),
        command: std::env::var("SSH_ORIGINAL_COMMAND").unwrap_or_default(),
        peer: std::env::var("SSH_CONNECTION").unwrap_or_default().split_whitespace().next().unwrap_or("").to_owned(),
    };
    stream.write_all(&frame(HEADER, &serde_json::to_vec(&header).map_err(std::io::Error::other)?))?;
    let mut writer = stream.try_clone()?;
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = writer.write_all(&frame(STDIN_EOF, &[]));
                    break;
                }
                Ok(n) => {
                    if writer.write_all(&frame(STDIN, &buf[..n])).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr().lock());
    loop {
        let mut head = [0u8; 5];
        if stream.read_exact(&mut head).is_err() {
            // The service closed the relay: access ended.
            return Ok(255);
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]).min(MAX_FRAME) as usize;
        let mut data = vec![0u8; len];
        stream.read_exact(&mut data)?;
        match head[0] {
            STDOUT => {
                stdout.write_all(&data)?;
                stdout.flush()?;
            }
            STDERR => {
                stderr.write_all(&data)?;
                stderr.flush()?;
            }
            EXIT if data.len() == 4 => return Ok(u32::from_be_bytes([data[0], data[1], data[2], data[3]])),
            _ => return Err(std::io::Error::other("bad frame from the service")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_times_are_utc_calendar_dates() {
        assert_eq!(expiry_time(0), "19700101000000Z");
        assert_eq!(expiry_time(1_795_901_199), "20261128212639Z");
        assert_eq!(expiry_time(951_782_400), "20000229000000Z");
    }

    #[test]
    fn authorized_keys_lines_restrict_and_force_the_gate() {
        let g = GrantRecord {
            id: "g-1".into(),
            hotkey: "5Grw".into(),
            public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl".into(),
            fingerprint: "SHA256:x".into(),
            created_at: 0,
            expires_at: 86_400,
        };
        let socket = socket_path(Path::new("/etc/basilica/validator_authorized_keys"));
        let text =
            authorized_keys(&[g], Path::new("/opt/basilica/bin/validator-access"), &socket, &["10.0.0.0/8".into()]);
        let line = text.lines().nth(1).unwrap();
        assert_eq!(
            line,
            "restrict,command=\"/opt/basilica/bin/validator-access gate g-1 /etc/basilica/validator-gate.sock\",expiry-time=\"19700102000000Z\",from=\"10.0.0.0/8\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl g-1"
        );
    }
}
