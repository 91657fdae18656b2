//! The domain of the service, one object both fronts and the gRPC API share: challenges and
//! grants (provision, revoke, expire), the live sessions, admission, the command grammar and
//! the command runner. No tonic here: the API maps [`AccessError`] to statuses.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::audit::Audit;
use common::clock::Clock;
use common::config::{AccessLimits, ValidatorConfig};
use common::hotkey::Hotkey;
use russh::keys::PublicKey;
use serde_json::json;

use crate::admission::Admission;
use crate::cgroup::Cgroups;
use crate::challenge::{ChallengeError, Challenges, Terms};
use crate::command::{CommandUser, Runner};
use crate::grammar::CommandGrammar;
use crate::grants::{GrantError, GrantRecord, GrantStore, fingerprint};
use crate::principal::Principal;
use crate::refusals::RefusalLog;
use crate::sessions::{CommandLimits, Ending, SessionView, Sessions};
use crate::time::now;

/// Why a call on the domain is refused or failed. The text is for logs; the gRPC API words
/// what the caller sees.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("ttl_seconds: {ttl} is not between 1 and validator.max_grant_ttl ({max})")]
    Ttl { ttl: u64, max: u64 },
    #[error("challenge_id: required (hotkey verification is on): call RequestChallenge and sign its message")]
    ChallengeRequired,
    #[error(transparent)]
    Challenge(#[from] ChallengeError),
    #[error("grant_id: no grant `{0}`")]
    NoGrant(String),
    #[error("no randomness: {0}")]
    Randomness(getrandom::Error),
    #[error("cannot encode the key: {0}")]
    KeyEncoding(russh::keys::ssh_key::Error),
    #[error("cannot store the grant: {0}")]
    StoreGrant(GrantError),
    #[error("revoked and {closed} session(s) closed, but the revocation cannot be stored: {source}")]
    StoreRevocation { closed: u32, source: GrantError },
}

/// What the service is built from.
#[derive(Debug)]
pub struct AccessSetup {
    pub config: ValidatorConfig,
    pub executor_id: String,
    pub grants: GrantStore,
    pub audit: Arc<Audit>,
    pub user: CommandUser,
    /// This executor's gpu-attestor binary.
    pub attestor: PathBuf,
    /// The executor's identity key, for `gpu-attestor challenge`.
    pub identity_key: PathBuf,
    /// `allowed_source_addresses`, parsed; empty: any.
    pub sources: Vec<(IpAddr, u8)>,
    /// Where commands run (set up at start).
    pub cgroups: Arc<Cgroups>,
    /// Where refusals of strangers go (audited off the accept path).
    pub refusals: RefusalLog,
    pub clock: Arc<dyn Clock>,
}

/// A challenge for a validator to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedChallenge {
    pub id: String,
    pub message: Vec<u8>,
    /// Unix seconds.
    pub expires_at: i64,
}

/// What a provision asks for, decoded.
#[derive(Debug)]
pub struct Provision {
    pub hotkey: Hotkey,
    pub public_key: PublicKey,
    pub ttl_seconds: u64,
    pub challenge_id: String,
    pub signature: Vec<u8>,
}

/// Everything the fronts and the API share.
#[derive(Debug)]
pub struct Access {
    max_grant_ttl: Duration,
    limits: AccessLimits,
    verify_hotkeys: bool,
    grants: Arc<GrantStore>,
    challenges: Challenges,
    audit: Arc<Audit>,
    refusals: RefusalLog,
    sessions: Sessions,
    admission: Admission,
    grammar: CommandGrammar,
    runner: Runner,
    /// Held while a revocation or the reaper removes grants and ends their sessions, so one
    /// never ends the other's sessions (a revocation counts and audits exactly its own).
    ending: tokio::sync::Mutex<()>,
}

fn random<const N: usize>() -> Result<[u8; N], AccessError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(AccessError::Randomness)?;
    Ok(b)
}

impl Access {
    pub fn new(setup: AccessSetup) -> Self {
        let AccessSetup {
            config: v,
            executor_id,
            grants,
            audit,
            user,
            attestor,
            identity_key,
            sources,
            cgroups,
            refusals,
            clock,
        } = setup;
        let hv = &v.access_config.hotkey_verification;
        let per_minute = v.access_config.rate_limits.ssh_requests_per_minute;
        let limits = &v.access_config.limits;
        let commands =
            CommandLimits { per_session: limits.max_commands_per_session, per_grant: limits.max_commands_per_grant };
        let grants = Arc::new(grants);
        Self {
            max_grant_ttl: v.max_grant_ttl,
            limits: v.access_config.limits.clone(),
            verify_hotkeys: hv.enabled,
            challenges: Challenges::new(
                &executor_id,
                Duration::from_secs(hv.challenge_timeout_seconds),
                hv.max_signature_attempts,
                clock.clone(),
            ),
            sessions: Sessions::new(commands, audit.clone()),
            admission: Admission::new(grants.clone(), sources, per_minute, clock),
            refusals,
            grammar: CommandGrammar::new(v.strict_ssh_restrictions, attestor, identity_key),
            runner: Runner::new(user, v.command_timeout, v.command_max_output_bytes.get(), cgroups, audit.clone()),
            grants,
            audit,
            ending: tokio::sync::Mutex::new(()),
        }
    }

    /// `[validator.access_config.limits]`.
    pub fn limits(&self) -> &AccessLimits {
        &self.limits
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The audit log, for the writer of refusals.
    pub fn audit_log(&self) -> Arc<Audit> {
        self.audit.clone()
    }

    /// Where refusals of strangers go.
    pub fn refusals(&self) -> &RefusalLog {
        &self.refusals
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    pub fn grammar(&self) -> &CommandGrammar {
        &self.grammar
    }

    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// A new challenge for `hotkey`, naming the key a grant will be for and its longest TTL
    /// (`ttl_seconds`, 0 for `max_grant_ttl`).
    pub fn request_challenge(
        &self,
        hotkey: &Hotkey,
        public_key: &PublicKey,
        ttl_seconds: u64,
    ) -> Result<IssuedChallenge, AccessError> {
        let max = self.max_grant_ttl.as_secs();
        let max_ttl_seconds = match ttl_seconds {
            0 => max,
            ttl if ttl <= max => ttl,
            ttl => return Err(AccessError::Ttl { ttl, max }),
        };
        let terms = Terms { fingerprint: fingerprint(public_key), max_ttl_seconds };
        let nonce = random::<16>()?;
        let (id, message, valid) = self.challenges.issue(hotkey, terms.clone(), nonce)?;
        self.audit.record(
            "challenge",
            json!({"hotkey": hotkey.as_str(), "challenge_id": id, "fingerprint": terms.fingerprint,
                   "max_ttl_seconds": max_ttl_seconds}),
        );
        Ok(IssuedChallenge { id, message, expires_at: now() + valid.as_secs() as i64 })
    }

    /// Grants `p.hotkey` SSH access with `p.public_key` for `p.ttl_seconds`, after checking its
    /// answer to the challenge when hotkey verification is on.
    pub fn provision(&self, p: Provision) -> Result<GrantRecord, AccessError> {
        let max = self.max_grant_ttl.as_secs();
        if p.ttl_seconds == 0 || p.ttl_seconds > max {
            return Err(AccessError::Ttl { ttl: p.ttl_seconds, max });
        }
        if self.verify_hotkeys {
            if p.challenge_id.is_empty() {
                return Err(AccessError::ChallengeRequired);
            }
            let key = fingerprint(&p.public_key);
            if let Err(e) = self.challenges.verify(&p.challenge_id, &p.hotkey, &key, p.ttl_seconds, &p.signature) {
                self.audit.record(
                    "challenge_failed",
                    json!({"hotkey": p.hotkey.as_str(), "challenge_id": p.challenge_id, "reason": e.to_string()}),
                );
                return Err(e.into());
            }
        }
        let id = random::<8>()?;
        let created_at = now();
        let grant = GrantRecord {
            id: format!("g-{}", hex::encode(id)),
            hotkey: p.hotkey.as_str().to_owned(),
            public_key: p.public_key.to_openssh().map_err(AccessError::KeyEncoding)?,
            fingerprint: fingerprint(&p.public_key),
            created_at,
            expires_at: created_at + p.ttl_seconds as i64,
        };
        self.grants.add(grant.clone()).map_err(AccessError::StoreGrant)?;
        self.audit.record(
            "grant",
            json!({"grant_id": grant.id, "hotkey": grant.hotkey, "fingerprint": grant.fingerprint,
                   "expires_at": grant.expires_at}),
        );
        Ok(grant)
    }

    /// Revokes grant `id` and ends the sessions that lost their grant; how many.
    /// Fails closed: when the grants file cannot take the revocation, the grant is revoked in
    /// memory all the same and its sessions end; the error then says it was not stored.
    pub async fn revoke(&self, id: &str) -> Result<u32, AccessError> {
        let _ending = self.ending.lock().await;
        let (grant, unstored) = match self.grants.revoke(id) {
            Ok(grant) => (grant, None),
            Err(unstored) => (unstored.removed.first().cloned(), Some(unstored.source)),
        };
        let grant = grant.ok_or_else(|| AccessError::NoGrant(id.to_owned()))?;
        self.audit
            .record("revoke", json!({"grant_id": grant.id, "hotkey": grant.hotkey, "stored": unstored.is_none()}));
        let closed = self.end_sessions(Ending::GrantRevoked).await;
        match unstored {
            None => Ok(closed),
            Some(e) => Err(AccessError::StoreRevocation { closed, source: e }),
        }
    }

    /// Whether `principal`'s grant is still live: checked again at each request to run
    /// something, so a grant that ended between two requests of one connection runs nothing
    /// more (the reaper closes the connection within 500 ms; this closes the gap).
    pub fn still_admitted(&self, principal: &Principal) -> bool {
        match principal {
            Principal::Validator(g) => self.grants.is_live(&g.id, now()),
        }
    }

    /// The grants live now.
    pub fn live_grants(&self) -> Vec<GrantRecord> {
        self.grants.live(now())
    }

    /// The open sessions.
    pub fn list_sessions(&self) -> Vec<SessionView> {
        self.sessions.list()
    }

    /// Closes every session whose grant is not live any more (expired or revoked): its
    /// commands are killed and the connection dropped. Returns how many were closed.
    async fn end_sessions(&self, ending: Ending) -> u32 {
        let now = now();
        self.sessions
            .end_where(
                |p| match p {
                    Principal::Validator(g) => !self.grants.is_live(&g.id, now),
                },
                ending,
            )
            .await
    }

    /// Expires grants past their time and closes their sessions (every 500 ms).
    pub async fn reap(&self) {
        let _ending = self.ending.lock().await;
        match self.grants.expire(now()) {
            Ok(expired) => {
                for g in &expired {
                    self.audit.record("grant_expired", json!({"grant_id": g.id, "hotkey": g.hotkey}));
                }
            }
            // Gone from memory all the same; the file follows at the next write.
            Err(e) => {
                for g in &e.removed {
                    self.audit.record("grant_expired", json!({"grant_id": g.id, "hotkey": g.hotkey, "stored": false}));
                }
                tracing::error!(error = %e, "cannot store the expiry of grants");
            }
        }
        self.end_sessions(Ending::GrantEnded).await;
        metrics::gauge!("executor_validator_access_sessions").set(self.sessions.len() as f64);
        metrics::gauge!("executor_validator_access_grants").set(self.grants.live(now()).len() as f64);
    }
}
