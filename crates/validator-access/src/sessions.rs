//! The one registry of live sessions, whichever front they came through, the commands they
//! run (at most `max_commands_per_session` each and `max_commands_per_grant` per grant, each in
//! its cgroup), and the one way a session ends ([`Sessions::end`], [`Sessions::end_where`]):
//! the cgroups of its commands are killed whole, the connection is closed when the end comes
//! from outside (revocation, expiry), and the end is audited. Both fronts and the reaper end
//! sessions only here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use common::audit::Audit;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cgroup::CommandCgroup;
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
    Disconnect(crate::front::Cut),
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
    /// The cgroups of the commands running now.
    running: Vec<Arc<CommandCgroup>>,
}

impl Session {
    pub fn new(principal: Principal, peer: String, started_at: i64, closer: Closer) -> Self {
        Self { principal, peer, started_at, commands: Vec::new(), closer, running: Vec::new() }
    }
}

/// Concurrent commands allowed (`[validator.access_config.limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandLimits {
    pub per_session: u32,
    pub per_grant: u32,
}

/// Why a command may not start now; the text goes to the validator after `executor: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    #[error("the session has ended")]
    SessionEnded,
    #[error(
        "this connection already runs {0} command(s), the most it may (validator.access_config.limits.max_commands_per_session)"
    )]
    Session(u32),
    #[error(
        "grant {grant} already runs {running} command(s), the most it may (validator.access_config.limits.max_commands_per_grant)"
    )]
    Grant { grant: String, running: u32 },
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
    limits: CommandLimits,
    audit: Arc<Audit>,
}

impl Sessions {
    pub fn new(limits: CommandLimits, audit: Arc<Audit>) -> Self {
        Self { live: Mutex::new(HashMap::new()), limits, audit }
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

    /// Registers a command of session `id` about to start in `cgroup` (killed when the session
    /// ends), unless the session has ended or it or its grant runs as many commands as allowed.
    pub fn begin_command(&self, id: &str, cgroup: Arc<CommandCgroup>) -> Result<(), Busy> {
        let mut live = self.lock();
        let session = live.get(id).ok_or(Busy::SessionEnded)?;
        let mine = session.running.len() as u32;
        if mine >= self.limits.per_session {
            return Err(Busy::Session(mine));
        }
        let Principal::Validator(grant) = &session.principal;
        let of_grant: u32 = live
            .values()
            .filter(|s| matches!(&s.principal, Principal::Validator(g) if g.id == grant.id))
            .map(|s| s.running.len() as u32)
            .sum();
        if of_grant >= self.limits.per_grant {
            return Err(Busy::Grant { grant: grant.id.clone(), running: of_grant });
        }
        if let Some(session) = live.get_mut(id) {
            session.running.push(cgroup);
        }
        Ok(())
    }

    /// Forgets a command that ended (its cgroup killed already).
    pub fn end_command(&self, id: &str, cgroup: &Arc<CommandCgroup>) {
        if let Some(s) = self.lock().get_mut(id) {
            s.running.retain(|c| !Arc::ptr_eq(c, cgroup));
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

    /// The teardown: kill the commands (their cgroups, whole), close the connection when the
    /// end comes from outside, audit, count.
    async fn tear_down(&self, id: &str, session: &Session, ending: Ending) {
        kill_all(session.running.clone()).await;
        if ending.is_external() {
            match &session.closer {
                Closer::Disconnect(cut) => cut.now("access ended"),
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

/// Kills `cgroups` whole, off the async threads (a kill polls until the cgroup is empty).
pub async fn kill_all(cgroups: Vec<Arc<CommandCgroup>>) {
    if cgroups.is_empty() {
        return;
    }
    let killed = tokio::task::spawn_blocking(move || cgroups.iter().map(|c| c.kill()).collect::<Vec<_>>()).await;
    for result in killed.unwrap_or_default() {
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot kill the cgroup of a validator command");
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

    const LIMITS: CommandLimits = CommandLimits { per_session: 2, per_grant: 3 };

    #[tokio::test]
    async fn one_teardown_kills_closes_and_audits() {
        let Some(cgroups) = crate::cgroup::testing::cgroups() else { return };
        let dir = tempfile::tempdir().unwrap();
        let audit = Arc::new(Audit::open(dir.path(), ServiceName::ValidatorAccess).unwrap());
        let sessions = Sessions::new(LIMITS, audit);
        let (revoked, kept) = (CancellationToken::new(), CancellationToken::new());
        sessions
            .insert("s-1".into(), Session::new(validator("g-1"), "peer".into(), 0, Closer::Cancel(revoked.clone())));
        sessions.insert("s-2".into(), Session::new(validator("g-2"), "peer".into(), 0, Closer::Cancel(kept.clone())));
        let cgroup = Arc::new(cgroups.create("s-1-1").unwrap());
        sessions.begin_command("s-1", cgroup.clone()).unwrap();
        // Detached (`setsid` forks: it leads a process group), so only the cgroup finds it.
        let spec = ProcessSpec::new("setsid").args(["sleep", "30"]).in_cgroup(cgroup.procs_files());
        let _setsid = spec.spawn_interactive().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let sleeper = loop {
            let sleeping = cgroup
                .pids()
                .unwrap()
                .into_iter()
                .find(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\0")));
            if let Some(pid) = sleeping {
                break pid;
            }
            assert!(std::time::Instant::now() < deadline, "the detached sleep never showed up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        sessions.add_command("s-1", "sleep 30");
        assert_eq!(sessions.list().iter().find(|s| s.id == "s-1").unwrap().commands, ["sleep 30"]);

        // From outside (the grant ended): commands killed, connection closed, counted.
        let ended = sessions.end_where(|p| matches!(p, Principal::Validator(g) if g.id == "g-1"), Ending::GrantRevoked);
        assert_eq!(ended.await, 1);
        assert!(revoked.is_cancelled());
        assert!(!e2e::process_alive(sleeper), "the detached sleep outlived its session");
        assert!(cgroup.dirs().iter().all(|d| !d.exists()), "the cgroup outlived its session");
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

    #[tokio::test]
    async fn commands_are_counted_per_session_and_per_grant() {
        let Some(cgroups) = crate::cgroup::testing::cgroups() else { return };
        let dir = tempfile::tempdir().unwrap();
        let sessions = Sessions::new(LIMITS, Arc::new(Audit::open(dir.path(), ServiceName::ValidatorAccess).unwrap()));
        for (id, grant) in [("s-1", "g-1"), ("s-2", "g-1"), ("s-3", "g-2")] {
            let closer = Closer::Cancel(CancellationToken::new());
            sessions.insert(id.into(), Session::new(validator(grant), "peer".into(), 0, closer));
        }
        let cgroup = |name: &str| Arc::new(cgroups.create(name).unwrap());
        let (a, b) = (cgroup("s-1-1"), cgroup("s-1-2"));
        sessions.begin_command("s-1", a.clone()).unwrap();
        sessions.begin_command("s-1", b.clone()).unwrap();
        assert_eq!(sessions.begin_command("s-1", cgroup("s-1-3")), Err(Busy::Session(2)));
        sessions.begin_command("s-2", cgroup("s-2-1")).unwrap();
        let busy = sessions.begin_command("s-2", cgroup("s-2-2")).unwrap_err();
        assert_eq!(busy, Busy::Grant { grant: "g-1".into(), running: 3 });
        assert!(busy.to_string().contains("max_commands_per_grant"), "{busy}");
        sessions.begin_command("s-3", cgroup("s-3-1")).unwrap();
        sessions.end_command("s-1", &a);
        sessions.begin_command("s-2", cgroup("s-2-3")).unwrap();
        assert_eq!(sessions.begin_command("s-9", cgroup("s-9-1")), Err(Busy::SessionEnded));
        drop(b);
    }
}
