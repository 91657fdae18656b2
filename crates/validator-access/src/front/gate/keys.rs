//! The `authorized_keys` file of system-sshd mode, one line per live grant:
//!
//! ```text
//! restrict,command="/opt/basilica/bin/validator-access gate g-…",expiry-time="20261129120000Z"[,from="…"] ssh-ed25519 AAAA… g-…
//! ```
//!
//! `restrict` turns off PTYs and every kind of forwarding; `expiry-time` makes sshd itself
//! refuse the key after the grant's end; `from=` carries `allowed_source_addresses`; the forced
//! command is this binary's `gate` mode with the grant and the relay socket.

use std::path::{Path, PathBuf};

use super::wire::socket_path;
use crate::grants::GrantRecord;
use common::durable::write_atomically;

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
    let t = crate::time::civil(unix);
    format!("{:04}{:02}{:02}{:02}{:02}{:02}Z", t.year, t.month, t.day, t.hour, t.minute, t.second)
}

/// The `authorized_keys` file of system-sshd mode.
#[derive(Debug)]
pub struct AuthorizedKeysFile {
    path: PathBuf,
    /// This binary, the forced command.
    gate: PathBuf,
    /// `allowed_source_addresses`, for `from=`.
    sources: Vec<String>,
    /// What was written last.
    last: Option<String>,
}

/// Why the file cannot be written; names it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct KeysFileError {
    path: String,
    source: std::io::Error,
}

impl AuthorizedKeysFile {
    pub fn new(path: PathBuf, gate: PathBuf, sources: Vec<String>) -> Self {
        Self { path, gate, sources, last: None }
    }

    /// Rewrites the file (atomically, mode 0644) when `live` changed since the last write.
    pub fn sync(&mut self, live: &[GrantRecord]) -> Result<(), KeysFileError> {
        let text = authorized_keys(live, &self.gate, &socket_path(&self.path), &self.sources);
        if self.last.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        write_atomically(&self.path, text.as_bytes(), Some(0o644))
            .map_err(|source| KeysFileError { path: self.path.display().to_string(), source })?;
        self.last = Some(text);
        Ok(())
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
