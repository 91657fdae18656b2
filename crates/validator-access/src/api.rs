//! The `executor.access.v1.ValidatorAccess` gRPC service on the internal socket (executor-api
//! forwards the miner's calls here): decodes a request, calls [`Access`], and maps the
//! outcome. `refusal` is the one place a status is chosen: every error carries a
//! [`Reason`] and a message for the caller; OS and storage text only reaches the log.

use std::sync::Arc;

use common::hotkey::Hotkey;
use common::proto::access::v1 as pb;
use common::proto::access::v1::validator_access_server::ValidatorAccess as AccessApi;
use common::reason::{Reason, Refusal};
use tonic::{Request, Response, Status};

use crate::access::{Access, AccessError, Provision};
use crate::challenge::ChallengeError;
use crate::grants::{GrantRecord, KeyError, parse_key};
use crate::principal::Principal;
use crate::sessions::SessionView;

/// The service.
#[derive(Debug, Clone)]
pub struct Api {
    access: Arc<Access>,
    /// `user@host:port` validators connect to, reported with each grant.
    ssh_endpoint: String,
}

/// Why a call failed, before the mapping to a status.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("{field}: {source}")]
    Hotkey { field: &'static str, source: common::hotkey::AddressError },
    #[error("ssh_public_key: {0}")]
    Key(#[from] KeyError),
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// The status of an error: its reason (and with it the code), the message the caller sees,
/// and for failures that are not the caller's the internal cause, logged here too.
fn refusal(e: ApiError) -> Refusal {
    let refusal = match e {
        // Malformed input names its field.
        ApiError::Hotkey { .. } | ApiError::Key(_) => Refusal::new(Reason::InvalidField, e.to_string()),
        ApiError::Access(e) => match e {
            // A TTL out of bounds or a missing challenge are fields the caller got wrong.
            AccessError::Ttl { .. } | AccessError::ChallengeRequired => {
                Refusal::new(Reason::InvalidField, e.to_string())
            }
            // Too many bad signatures: the hotkey waits out its lock-out.
            AccessError::Challenge(ChallengeError::LockedOut(_)) => Refusal::new(Reason::LockedOut, e.to_string()),
            // A signature that does not verify, or a challenge of another hotkey.
            AccessError::Challenge(ChallengeError::BadSignature { .. } | ChallengeError::OtherHotkey) => {
                Refusal::new(Reason::BadSignature, e.to_string())
            }
            // A key or TTL the signed challenge does not name: a field the caller got wrong
            // (whoever relays a validator's signature cannot change what it signed for).
            AccessError::Challenge(ChallengeError::OtherKey { .. } | ChallengeError::TtlAbove { .. }) => {
                Refusal::new(Reason::InvalidField, e.to_string())
            }
            // The challenge is used, unknown or expired: ask for a new one.
            AccessError::Challenge(ChallengeError::Unknown | ChallengeError::Expired) => {
                Refusal::new(Reason::WrongState, e.to_string())
            }
            // Revoking a grant that is not there.
            AccessError::NoGrant(_) => Refusal::new(Reason::NotFound, e.to_string()),
            // The grants file could not be written (a full or read-only disk).
            AccessError::StoreGrant(_) => {
                Refusal::new(Reason::Storage, "cannot store the grant; see the executor log").with_cause(e)
            }
            // Revoked in memory and its sessions closed (fail closed), but not on disk.
            AccessError::StoreRevocation { .. } => Refusal::new(
                Reason::Storage,
                "the grant is revoked and its sessions closed, but the revocation cannot be stored; see the executor log",
            )
            .with_cause(e),
            // Our own failure: the OS gave no randomness for an id.
            AccessError::Randomness(_) => {
                Refusal::new(Reason::Internal, "no randomness on this node right now; see the executor log")
                    .with_cause(e)
            }
            // Our own failure: a key we parsed that we cannot write back.
            AccessError::KeyEncoding(_) => {
                Refusal::new(Reason::Internal, "ssh_public_key: cannot be stored; see the executor log").with_cause(e)
            }
        },
    };
    if let Some(cause) = &refusal.cause {
        tracing::error!(reason = %refusal.reason, cause = %cause, "{}", refusal.message);
    }
    refusal
}

fn hotkey(field: &'static str, value: &str) -> Result<Hotkey, ApiError> {
    value.parse().map_err(|source| ApiError::Hotkey { field, source })
}

impl Api {
    pub fn new(access: Arc<Access>, ssh_endpoint: String) -> Self {
        Self { access, ssh_endpoint }
    }

    /// The domain behind the API.
    pub fn access(&self) -> &Arc<Access> {
        &self.access
    }

    fn grant(&self, g: &GrantRecord) -> pb::Grant {
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

fn session(s: SessionView) -> pb::Session {
    let Principal::Validator(grant) = s.principal;
    pb::Session {
        session_id: s.id,
        grant_id: grant.id,
        validator_hotkey: grant.hotkey,
        peer: s.peer,
        started_at: s.started_at,
        commands: s.commands,
    }
}

#[tonic::async_trait]
impl AccessApi for Api {
    async fn request_challenge(
        &self,
        request: Request<pb::ChallengeRequest>,
    ) -> Result<Response<pb::Challenge>, Status> {
        let r = request.into_inner();
        let call = || -> Result<_, ApiError> {
            let key = hotkey("validator_hotkey", &r.validator_hotkey)?;
            Ok(self.access.request_challenge(&key, &parse_key(&r.ssh_public_key)?, r.ttl_seconds)?)
        };
        let c = call().map_err(refusal)?;
        Ok(Response::new(pb::Challenge { challenge_id: c.id, message: c.message, expires_at: c.expires_at }))
    }

    async fn provision(&self, request: Request<pb::ProvisionRequest>) -> Result<Response<pb::Grant>, Status> {
        let r = request.into_inner();
        let call = || -> Result<_, ApiError> {
            let provision = Provision {
                hotkey: hotkey("validator_hotkey", &r.validator_hotkey)?,
                public_key: parse_key(&r.ssh_public_key)?,
                ttl_seconds: r.ttl_seconds,
                challenge_id: r.challenge_id,
                signature: r.signature,
            };
            Ok(self.access.provision(provision)?)
        };
        let grant = call().map_err(refusal)?;
        Ok(Response::new(self.grant(&grant)))
    }

    async fn revoke(&self, request: Request<pb::RevokeRequest>) -> Result<Response<pb::RevokeResponse>, Status> {
        let id = request.into_inner().grant_id;
        let sessions_closed = self.access.revoke(&id).await.map_err(|e| refusal(e.into()))?;
        Ok(Response::new(pb::RevokeResponse { sessions_closed }))
    }

    async fn list_grants(&self, _: Request<pb::ListGrantsRequest>) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let grants = self.access.live_grants().iter().map(|g| self.grant(g)).collect();
        Ok(Response::new(pb::ListGrantsResponse { grants }))
    }

    async fn list_sessions(
        &self,
        _: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: self.access.list_sessions().into_iter().map(session).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use common::hotkey::AddressError;
    use tonic::Code;

    use super::*;
    use crate::grants::GrantError;

    /// `error` becomes a status with `code` (today's), a message starting with `message`, and
    /// the reason in metadata; internal text never reaches the message.
    fn check(error: ApiError, code: Code, message: &str) {
        let status = refusal(error).into_status();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().starts_with(message), "{status:?}");
        assert!(!status.message().contains("/secret/path"), "{status:?}");
        let back = Refusal::from_status(&status).expect("a reason");
        assert_eq!(back.reason.internal_code(), code);
    }

    #[test]
    fn every_error_has_a_reason_and_today_s_code() {
        let disk = || GrantError::Io { path: "/secret/path".into(), source: std::io::Error::other("disk full") };
        let hotkey = ApiError::Hotkey { field: "validator_hotkey", source: AddressError::NotBase58("5Grw".into()) };
        check(hotkey, Code::InvalidArgument, "validator_hotkey: ");
        let key = ApiError::Key(parse_key("ssh-rsa AAAA").unwrap_err());
        check(key, Code::InvalidArgument, "ssh_public_key: ");
        let access = |e: AccessError| ApiError::Access(e);
        check(access(AccessError::Ttl { ttl: 0, max: 60 }), Code::InvalidArgument, "ttl_seconds: ");
        check(access(AccessError::ChallengeRequired), Code::InvalidArgument, "challenge_id: required");
        check(access(ChallengeError::LockedOut(5).into()), Code::PermissionDenied, "validator_hotkey: locked out");
        let bad = ChallengeError::BadSignature { left: 1 };
        check(access(bad.into()), Code::Unauthenticated, "signature: ");
        check(access(ChallengeError::OtherHotkey.into()), Code::Unauthenticated, "challenge_id: ");
        let other_key = ChallengeError::OtherKey { signed: "SHA256:a".into(), given: "SHA256:b".into() };
        check(access(other_key.into()), Code::InvalidArgument, "ssh_public_key: SHA256:b is not the key");
        let longer = ChallengeError::TtlAbove { ttl: 601, max: 600 };
        check(access(longer.into()), Code::InvalidArgument, "ttl_seconds: 601 is more than the 600 s");
        check(access(ChallengeError::Unknown.into()), Code::FailedPrecondition, "challenge_id: no such");
        check(access(ChallengeError::Expired.into()), Code::FailedPrecondition, "challenge_id: the challenge expired");
        check(access(AccessError::NoGrant("g-1".into())), Code::NotFound, "grant_id: no grant `g-1`");
        check(access(AccessError::StoreGrant(disk())), Code::Internal, "cannot store the grant");
        check(
            access(AccessError::StoreRevocation { closed: 1, source: disk() }),
            Code::Internal,
            "the grant is revoked",
        );
        check(access(AccessError::Randomness(getrandom::Error::UNSUPPORTED)), Code::Internal, "no randomness");
        let encoding = AccessError::KeyEncoding(russh::keys::ssh_key::Error::FormatEncoding);
        check(access(encoding), Code::Internal, "ssh_public_key: ");
    }

    #[test]
    fn internal_causes_go_to_metadata_only() {
        let disk = GrantError::Io { path: "/secret/path".into(), source: std::io::Error::other("disk full") };
        let r = refusal(ApiError::Access(AccessError::StoreGrant(disk)));
        assert_eq!(r.reason, Reason::Storage);
        assert!(r.cause.as_deref().is_some_and(|c| c.contains("/secret/path: disk full")), "{r:?}");
    }
}
