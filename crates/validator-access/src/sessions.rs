//! The one registry of live sessions, whichever front they came through, and the one way a
//! session ends ([`Sessions::end`], [`Sessions::end_where`]): the process groups of its
//! commands are killed, the connection is closed when the end comes from outside (revocation,
//! expiry), and the end is audited. Both fronts and the reaper end sessions only here.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use common::audit::Audit;
use russh::Disconnect;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::principal::{Principal, with_principal};

/// A new session id, `s-` and 16 hex digits.
pub fn new_session_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    format!("s-{}", hex::encode(b))
}

/// How a session is ended from outside.
pub enum Closer {
    /// A connection to the embedded server: disconnect it.
    Disconnect(russh::server::Handle),
    /// A relay (the system-sshd gate): cancel it.
    Cancel(CancellationToken),
}

impl std::fmt::Debug for Closer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Closer::Disconnect(_) => "Closer::Disconnect",
            Closer::Cancel(_) => "Closer::Cancel",
        })
    }
}

/// Why a session ended; the audit line's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Its grant was revoked.
    GrantRevoked,
    /// Its grant expired (or was gone when the reaper looked).
    GrantEnded,
    /// The client went away, or the relayed command ended.
    ClientClosed,
    /// The connection failed.
    ConnectionError,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::GrantRevoked => "grant_revoked",
            Ending::GrantEnded => "grant_ended",
            Ending::ClientClosed => "client_closed",
            Ending::ConnectionError => "connection_error",
        }
    }

    /// Whether the end comes from outside the connection, which must then be closed.
    fn is_external(self) -> bool {
        matches!(self, Ending::GrantRevoked | Ending::GrantEnded)
    }
}

/// A live session.
#[derive(Debug)]
pub struct Session {
    pub principal: Principal,
    pub peer: String,
    /// Unix seconds.
    pub started_at: i64,
    pub commands: Vec<String>,
    closer: Closer,
    /// Process groups of the commands running now.
    children: HashSet<u32>,
}

impl Session {
    pub fn new(principal: Principal, peer: String, started_at: i64, closer: Closer) -> Self {
        Self { principal, peer, started_at, commands: Vec::new(), closer, children: HashSet::new() }
    }
}

/// What a caller sees of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub id: String,
    pub principal: Principal,
    pub peer: String,
    pub started_at: i64,
    pub commands: Vec<String>,
}

/// The live sessions of the service.
#[derive(Debug)]
pub struct Sessions {
    live: Mutex<HashMap<String, Session>>,
    audit: Arc<Audit>,
}

impl Sessions {
    pub fn new(audit: Arc<Audit>) -> Self {
        Self { live: Mutex::new(HashMap::new()), audit }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, id: String, session: Session) {
        self.lock().insert(id, session);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Records a command line the session ran.
    pub fn add_command(&self, id: &str, line: &str) {
        if let Some(s) = self.lock().get_mut(id) {
            s.commands.push(line.to_owned());
        }
    }

    /// Records the process group of a command that started; killed when the session ends.
    pub fn add_child(&self, id: &str, pgid: u32) {
        if let Some(s) = self.lock().get_mut(id) {
            s.children.insert(pgid);
        }
    }

    /// Forgets the process group of a command that ended.
    pub fn remove_child(&self, id: &str, pgid: u32) {
        if let Some(s) = self.lock().get_mut(id) {
            s.children.remove(&pgid);
        }
    }

    /// The live sessions.
    pub fn list(&self) -> Vec<SessionView> {
        self.lock()
            .iter()
            .map(|(id, s)| SessionView {
                id: id.clone(),
                principal: s.principal.clone(),
                peer: s.peer.clone(),
                started_at: s.started_at,
                commands: s.commands.clone(),
            })
            .collect()
    }

    /// Ends session `id` if it is still live; false when it was already ended.
    pub async fn end(&self, id: &str, ending: Ending) -> bool {
        let Some(session) = self.lock().remove(id) else { return false };
        self.tear_down(id, &session, ending).await;
        true
    }

    /// Ends every session whose principal `gone` says lost its access. Returns how many.
    pub async fn end_where(&self, gone: impl Fn(&Principal) -> bool, ending: Ending) -> u32 {
        let ended: Vec<(String, Session)> = {
            let mut live = self.lock();
            let ids: Vec<String> = live.iter().filter(|(_, s)| gone(&s.principal)).map(|(k, _)| k.clone()).collect();
            ids.into_iter().filter_map(|k| live.remove(&k).map(|s| (k, s))).collect()
        };
        for (id, session) in &ended {
            self.tear_down(id, session, ending).await;
        }
        ended.len() as u32
    }

    /// The teardown: kill the commands, close the connection when the end comes from outside,
    /// audit, count.
    async fn tear_down(&self, id: &str, session: &Session, ending: Ending) {
        for pgid in &session.children {
            let _ = common::process::signal_group(*pgid, nix::sys::signal::Signal::SIGKILL);
        }
        if ending.is_external() {
            match &session.closer {
                Closer::Disconnect(handle) => {
                    let _ = handle.disconnect(Disconnect::ByApplication, "access ended".into(), "en".into()).await;
                }
                Closer::Cancel(token) => token.cancel(),
            }
        }
        self.audit.record(
            "disconnect",
            with_principal(Some(&session.principal), json!({"session": id, "reason": ending.as_str()})),
        );
        if ending.is_external() {
            metrics::counter!("executor_validator_access_sessions_closed_total", "reason" => ending.as_str())
                .increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use common::ServiceName;
    use common::process::ProcessSpec;

    use super::*;
    use crate::grants::GrantRecord;

    fn validator(grant: &str) -> Principal {
        Principal::Validator(GrantRecord {
            id: grant.into(),
            hotkey: "5Grw".into(),
            public_key: String::new(),
            fingerprint: String::new(),
            created_at: 0,
            expires_at: 100,
        })
    }

    #[tokio::test]
    async fn one_teardown_kills_closes_and_audits() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Arc::new(Audit::open(dir.path(), ServiceName::ValidatorAccess).unwrap());
        let sessions = Sessions::new(audit);
        let (revoked, kept) = (CancellationToken::new(), CancellationToken::new());
        sessions
            .insert("s-1".into(), Session::new(validator("g-1"), "peer".into(), 0, Closer::Cancel(revoked.clone())));
        sessions.insert("s-2".into(), Session::new(validator("g-2"), "peer".into(), 0, Closer::Cancel(kept.clone())));
        let mut child = ProcessSpec::new("sleep").arg("30").spawn_interactive().unwrap();
        sessions.add_child("s-1", child.id().unwrap());
        sessions.add_command("s-1", "sleep 30");
        assert_eq!(sessions.list().iter().find(|s| s.id == "s-1").unwrap().commands, ["sleep 30"]);

        // From outside (the grant ended): commands killed, connection closed, counted.
        let ended = sessions.end_where(|p| matches!(p, Principal::Validator(g) if g.id == "g-1"), Ending::GrantRevoked);
        assert_eq!(ended.await, 1);
        assert!(revoked.is_cancelled());
        let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await.unwrap().unwrap();
        assert!(!status.success(), "{status:?}");
        // The client went away: nothing left to close; a second end finds nothing.
        assert!(sessions.end("s-2", Ending::ClientClosed).await);
        assert!(!kept.is_cancelled());
        assert!(!sessions.end("s-2", Ending::ClientClosed).await);
        assert!(sessions.is_empty());

        let log = std::fs::read_to_string(dir.path().join("audit/validator-access.jsonl")).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        for (line, (session, grant, reason)) in
            lines.iter().zip([("s-1", "g-1", "grant_revoked"), ("s-2", "g-2", "client_closed")])
        {
            for field in [
                format!("\"session\":\"{session}\""),
                format!("\"grant_id\":\"{grant}\""),
                format!("\"reason\":\"{reason}\""),
                "\"hotkey\":\"5Grw\"".to_owned(),
                "\"event\":\"disconnect\"".to_owned(),
            ] {
                assert!(line.contains(&field), "{field} not in {line}");
            }
        }
    }
}
