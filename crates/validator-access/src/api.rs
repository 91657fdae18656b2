//! The `executor.access.v1.ValidatorAccess` gRPC service on the internal socket (executor-api
//! forwards the miner's calls here): challenges, grants, sessions. Bad input is
//! INVALID_ARGUMENT naming the field; a locked-out hotkey PERMISSION_DENIED.

use std::sync::Arc;

use common::hotkey::Hotkey;
use common::proto::access::v1 as pb;
use common::proto::access::v1::validator_access_server::ValidatorAccess as AccessApi;
use serde_json::json;
use tonic::{Request, Response, Status};

use crate::challenge::ChallengeError;
use crate::grants::{GrantRecord, fingerprint, parse_key};
use crate::ssh::{Access, now};

/// The service.
#[derive(Debug, Clone)]
pub struct Api {
    pub access: Arc<Access>,
    /// `user@host:port` validators connect to, reported with each grant.
    pub ssh_endpoint: String,
}

fn hotkey(field: &str, value: &str) -> Result<Hotkey, Status> {
    value.parse().map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

fn challenge_status(e: ChallengeError) -> Status {
    match e {
        ChallengeError::LockedOut(_) => Status::permission_denied(e.to_string()),
        ChallengeError::BadSignature { .. } | ChallengeError::OtherHotkey => Status::unauthenticated(e.to_string()),
        ChallengeError::Unknown | ChallengeError::Expired => Status::failed_precondition(e.to_string()),
    }
}

impl Api {
    fn to_proto(&self, g: &GrantRecord) -> pb::Grant {
        pb::Grant {
            grant_id: g.id.clone(),
            validator_hotkey: g.hotkey.clone(),
            ssh_public_key_fingerprint: g.fingerprint.clone(),
            created_at: g.created_at,
            expires_at: g.expires_at,
            ssh_user: "validator".into(),
            ssh_endpoint: self.ssh_endpoint.clone(),
        }
    }
}

#[tonic::async_trait]
impl AccessApi for Api {
    async fn request_challenge(
        &self,
        request: Request<pb::ChallengeRequest>,
    ) -> Result<Response<pb::Challenge>, Status> {
        let key = hotkey("validator_hotkey", &request.into_inner().validator_hotkey)?;
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| Status::internal(format!("no randomness: {e}")))?;
        let (id, message, valid) = self.access.challenges.issue(&key, nonce).map_err(challenge_status)?;
        self.access.audit.record("challenge", json!({"hotkey": key.as_str(), "challenge_id": id}));
        Ok(Response::new(pb::Challenge { challenge_id: id, message, expires_at: now() + valid.as_secs() as i64 }))
    }

    async fn provision(&self, request: Request<pb::ProvisionRequest>) -> Result<Response<pb::Grant>, Status> {
        let r = request.into_inner();
        let key = hotkey("validator_hotkey", &r.validator_hotkey)?;
        let public_key =
            parse_key(&r.ssh_public_key).map_err(|e| Status::invalid_argument(format!("ssh_public_key: {e}")))?;
        let max = self.access.config.max_grant_ttl.as_secs();
        if r.ttl_seconds == 0 || r.ttl_seconds > max {
            return Err(Status::invalid_argument(format!(
                "ttl_seconds: {} is not between 1 and validator.max_grant_ttl ({max})",
                r.ttl_seconds
            )));
        }
        if self.access.config.access_config.hotkey_verification.enabled {
            if r.challenge_id.is_empty() {
                return Err(Status::invalid_argument(
                    "challenge_id: required (hotkey verification is on): call RequestChallenge and sign its message",
                ));
            }
            if let Err(e) = self.access.challenges.verify(&r.challenge_id, &key, &r.signature) {
                self.access.audit.record(
                    "challenge_failed",
                    json!({"hotkey": key.as_str(), "challenge_id": r.challenge_id, "reason": e.to_string()}),
                );
                return Err(challenge_status(e));
            }
        }
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| Status::internal(format!("no randomness: {e}")))?;
        let created_at = now();
        let grant = GrantRecord {
            id: format!("g-{}", hex::encode(b)),
            hotkey: key.as_str().to_owned(),
            public_key: public_key.to_openssh().map_err(|e| Status::internal(e.to_string()))?,
            fingerprint: fingerprint(&public_key),
            created_at,
            expires_at: created_at + r.ttl_seconds as i64,
        };
        self.access.grants.add(grant.clone()).map_err(|e| {
            tracing::error!(error = %e, "cannot store a grant");
            Status::internal("cannot store the grant; see the executor log")
        })?;
        self.access.audit.record(
            "grant",
            json!({"grant_id": grant.id, "hotkey": grant.hotkey, "fingerprint": grant.fingerprint,
                   "expires_at": grant.expires_at}),
        );
        Ok(Response::new(self.to_proto(&grant)))
    }

    async fn revoke(&self, request: Request<pb::RevokeRequest>) -> Result<Response<pb::RevokeResponse>, Status> {
        let id = request.into_inner().grant_id;
        let revoked = self.access.grants.revoke(&id).map_err(|e| {
            tracing::error!(error = %e, "cannot store a revocation");
            Status::internal("cannot store the revocation; see the executor log")
        })?;
        let Some(grant) = revoked else {
            return Err(Status::not_found(format!("grant_id: no grant `{id}`")));
        };
        self.access.audit.record("revoke", json!({"grant_id": grant.id, "hotkey": grant.hotkey}));
        let sessions_closed = self.access.end_sessions("grant_revoked").await;
        Ok(Response::new(pb::RevokeResponse { sessions_closed }))
    }

    async fn list_grants(&self, _: Request<pb::ListGrantsRequest>) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let grants = self.access.grants.live(now()).iter().map(|g| self.to_proto(g)).collect();
        Ok(Response::new(pb::ListGrantsResponse { grants }))
    }

    async fn list_sessions(
        &self,
        _: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        Ok(Response::new(pb::ListSessionsResponse { sessions: self.access.list_sessions() }))
    }
}
