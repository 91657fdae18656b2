//! The one place where errors (and refusals) become gRPC statuses for callers of the public
//! API: no other module of executor-api builds a `Status`.
//!
//! A downstream error carries a [`Reason`] (common::reason); its public code and what the
//! caller is told are chosen from that reason alone, in [`policy`]. Callers get a code and a
//! sentence they can act on; internal detail (socket paths, Docker and OS errors, the cause a
//! service attaches) goes to the log with the request id, and the status names only that id.
//! Every public error status carries its reason under [`REASON_KEY`] where there is one, so
//! that miners' tooling can match on it.

use std::time::Duration;

use common::ServiceName;
use common::reason::{REASON_KEY, Reason, Refusal};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::auth::{AuthFailure, Reason as AuthReason};

/// What a caller is told about a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    /// The refusal's own message: services word it for callers (it names the field, the
    /// container, the limit), and any cause stays in the log.
    Message,
    /// `<peer> is unavailable; retry shortly`; the message and cause go to the log.
    RetryShortly,
    /// Only the request id; the message and cause go to the log.
    RequestId,
}

/// The public code of a refusal for `reason`, and what its caller is told: the one choice per
/// reason, for every service.
pub fn policy(reason: Reason) -> (Code, Told) {
    match reason {
        // A malformed or out-of-bounds field: the message names it, the caller fixes it.
        Reason::InvalidField => (Code::InvalidArgument, Told::Message),
        // The container or grant the caller named does not exist: the message names it.
        Reason::NotFound => (Code::NotFound, Told::Message),
        // The caller asked to create what is already there.
        Reason::AlreadyExists => (Code::AlreadyExists, Told::Message),
        // Not in a state that allows the call (running and not forced, an expired challenge):
        // the caller changes the request or the order of calls.
        Reason::WrongState => (Code::FailedPrecondition, Told::Message),
        // The registry allow-list or the signature policy refuses the image: the caller picks
        // another image, the message says which rule.
        Reason::ImageRefused => (Code::FailedPrecondition, Told::Message),
        // The image cannot be pulled: a reference the caller can check; the registry's own
        // text is the cause and stays in the log.
        Reason::ImageUnavailable => (Code::FailedPrecondition, Told::Message),
        // This host's configuration cannot do it (no NVIDIA runtime, a host path outside the
        // allowed ones, validator access disabled): the miner asks for less or reconfigures.
        Reason::HostUnsupported => (Code::FailedPrecondition, Told::Message),
        // The GPUs asked for belong to other containers: the caller asks for others or waits.
        Reason::GpuBusy => (Code::FailedPrecondition, Told::Message),
        // A node limit (containers, GPUs, sessions, calls a minute): retry later.
        Reason::LimitReached => (Code::ResourceExhausted, Told::Message),
        // Too many failed attempts by that hotkey: the caller waits out the lock.
        Reason::LockedOut => (Code::PermissionDenied, Told::Message),
        // A signature the caller passed on (a validator's answer to its challenge) does not
        // verify or is by another key: docs/api.md promises UNAUTHENTICATED.
        Reason::BadSignature => (Code::Unauthenticated, Told::Message),
        // The work ran past its deadline (a pull, the request timeout): the caller may retry
        // with a longer deadline or a smaller request.
        Reason::Timeout => (Code::DeadlineExceeded, Told::Message),
        // A service behind this one is down or restarting (the launcher restarts it): retry
        // shortly; which socket failed is for the log.
        Reason::PeerUnavailable => (Code::Unavailable, Told::RetryShortly),
        // The node does not do this in its configuration or build: not the caller's mistake,
        // and the message says what is missing.
        Reason::NotServed => (Code::Unavailable, Told::Message),
        // The operator drained the node: the message says so and since when; try another node.
        Reason::Draining => (Code::Unavailable, Told::Message),
        // A watch asked for events the node no longer keeps: the message says which number
        // to ask with after listing the containers again.
        Reason::EventsGone => (Code::OutOfRange, Told::Message),
        // The container engine failed: its text may name paths and internals, never shown.
        Reason::Engine => (Code::Internal, Told::RequestId),
        // Persisting state failed (a full or read-only disk): the operator's business.
        Reason::Storage => (Code::Internal, Told::RequestId),
        // Our own failure (randomness, a child process, an invariant).
        Reason::Internal => (Code::Internal, Told::RequestId),
        // A rule of the node forbids it whoever asks (a forward off the container's
        // loopback): the message says which rule.
        Reason::NotPermitted => (Code::PermissionDenied, Told::Message),
    }
}

/// The code of a refused call, and the reason it carries: UNAUTHENTICATED when we cannot tell
/// who is calling (no, bad or stale signature, a replay, an unreadable body); PERMISSION_DENIED
/// when we can and that hotkey may not manage this executor; RESOURCE_EXHAUSTED for the limits,
/// which the caller should retry later.
pub fn auth_code(reason: AuthReason) -> (Code, Reason) {
    match reason {
        AuthReason::HotkeyNotAllowed => (Code::PermissionDenied, Reason::BadSignature),
        AuthReason::RateLimited => (Code::ResourceExhausted, Reason::LimitReached),
        // The caller's address made too many refused calls: it waits (the message says how
        // long), whoever it is.
        AuthReason::TooManyFailures => (Code::ResourceExhausted, Reason::LimitReached),
        // The signature checkers' queue is full (a flood from many addresses): retry shortly.
        AuthReason::Overloaded => (Code::ResourceExhausted, Reason::LimitReached),
        AuthReason::MissingSignature
        | AuthReason::UnsupportedScheme
        | AuthReason::MalformedMetadata
        | AuthReason::MalformedBody
        | AuthReason::StaleTimestamp
        | AuthReason::BadSignature
        | AuthReason::ReplayedNonce
        | AuthReason::UnknownSession
        | AuthReason::ReplayedCounter => (Code::Unauthenticated, Reason::BadSignature),
    }
}

// An inherent method of the auth module's type, defined here so that auth never chooses a
// status (and never imports this module).
impl AuthFailure {
    /// `<reason>: <detail>`, so clients can switch on the code before the colon.
    pub fn to_status(&self) -> Status {
        let (code, reason) = auth_code(self.reason);
        public(code, format!("{}: {}", self.reason.as_str(), self.detail), Some(reason))
    }
}

/// What can go wrong while serving a public call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A bad field in the caller's request.
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    /// An internal service answered with an error status.
    #[error("{service}: {status}")]
    Downstream { service: ServiceName, status: Status },
    /// The node does not do this in its current configuration or build; the message says what.
    #[error("{0}")]
    NotServed(String),
    /// `[validator] enabled = false`: there is no validator-access to forward to.
    #[error("validator access is disabled ([validator] enabled = false)")]
    ValidatorAccessDisabled,
    /// `[tenant_access] enabled = false`: renters' SSH keys are not taken.
    #[error("renters' SSH access is disabled ([tenant_access] enabled = false)")]
    TenantAccessDisabled,
    /// The Docker engine does not answer container-runtime's checks; `detail` is what they
    /// said (for the log).
    #[error("the Docker engine does not answer container-runtime: {detail}")]
    DockerUnavailable { detail: String },
    /// The call ran past `[server] request_timeout`.
    #[error("no answer within server.request_timeout ({}s)", .0.as_secs_f64())]
    RequestTimeout(Duration),
    /// The prover ran past RunAttestation's own deadline and was stopped.
    #[error("gpu-attestor did not finish within {}s and was stopped", .0.as_secs())]
    AttestationTimeout(Duration),
    /// Our own failure (a child process, a file).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The status the caller sees for this error in the call `request_id`.
    pub fn into_status(self, request_id: &str) -> Status {
        let (peer, refusal) = match self {
            ApiError::Downstream { service, status } => match Refusal::from_status(&status) {
                Some(refusal) => (service.as_str(), refusal),
                None => return by_code(service, &status, request_id),
            },
            ApiError::InvalidArgument { .. } => ("executor-api", Refusal::new(Reason::InvalidField, self.to_string())),
            ApiError::NotServed(_) => ("executor-api", Refusal::new(Reason::NotServed, self.to_string())),
            ApiError::ValidatorAccessDisabled | ApiError::TenantAccessDisabled => {
                ("executor-api", Refusal::new(Reason::HostUnsupported, self.to_string()))
            }
            ApiError::DockerUnavailable { .. } => {
                ("the Docker engine", Refusal::new(Reason::PeerUnavailable, self.to_string()))
            }
            ApiError::RequestTimeout(_) | ApiError::AttestationTimeout(_) => {
                ("executor-api", Refusal::new(Reason::Timeout, self.to_string()))
            }
            ApiError::Internal(_) => ("executor-api", Refusal::new(Reason::Internal, self.to_string())),
        };
        refused(peer, refusal, request_id)
    }
}

/// A status the miner-side client makes itself (the executor's answer to OpenSession did not
/// check out, the client had no randomness): never sent by a server.
pub fn client_side(code: Code, message: String) -> Status {
    Status::new(code, message)
}

/// The public status of `refusal`, which `peer` gave, by [`policy`].
fn refused(peer: &str, refusal: Refusal, request_id: &str) -> Status {
    let Refusal { reason, message, cause } = refusal;
    let cause = cause.as_deref().unwrap_or("");
    let (code, told) = policy(reason);
    let message = match told {
        Told::Message => {
            if !cause.is_empty() {
                tracing::info!(request_id, peer, %reason, %message, cause, "refused");
            }
            message
        }
        Told::RetryShortly => {
            tracing::warn!(request_id, peer, %reason, %message, cause, "unavailable");
            format!("{peer} is unavailable; retry shortly")
        }
        Told::RequestId => {
            tracing::error!(request_id, peer, %reason, %message, cause, "internal error");
            internal_message(request_id)
        }
    };
    public(code, message, Some(reason))
}

/// Today's policy by code, for a downstream status without a reason (a transport error, or a
/// service not yet converted to reasons).
fn by_code(service: ServiceName, status: &Status, request_id: &str) -> Status {
    match status.code() {
        // Answers about the caller's request: the services word them for callers (they name
        // the field, the container, the limit), so they pass through.
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Aborted
        | Code::DeadlineExceeded
        | Code::Cancelled => public(status.code(), status.message().to_owned(), None),
        // The service is down or restarting (the launcher restarts it): retry later. A
        // transport error carries the socket path, which stays in the log.
        Code::Unavailable => {
            tracing::warn!(request_id, %service, error = %status, "internal service unavailable");
            public(Code::Unavailable, format!("{service} is unavailable; retry shortly"), Some(Reason::PeerUnavailable))
        }
        // The service does not serve this in this build (validator-access before its grants
        // land): the feature is unavailable, not the caller's mistake.
        Code::Unimplemented => {
            tracing::warn!(request_id, %service, error = %status, "not served by this build");
            let message = format!("{service} does not serve this call in this build");
            public(Code::Unavailable, message, Some(Reason::NotServed))
        }
        // INTERNAL, UNKNOWN, DATA_LOSS, OK-as-error, UNAUTHENTICATED between our own services:
        // never the caller's business.
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss | Code::Unauthenticated => {
            tracing::error!(request_id, %service, error = %status, "internal error");
            public(Code::Internal, internal_message(request_id), Some(Reason::Internal))
        }
    }
}

fn internal_message(request_id: &str) -> String {
    format!("internal error; the executor log has the detail under request id {request_id}")
}

/// A fresh status (nothing of a service's metadata, its cause included, is copied), with the
/// reason in [`REASON_KEY`].
fn public(code: Code, message: String, reason: Option<Reason>) -> Status {
    let mut status = Status::new(code, message);
    if let Some(reason) = reason {
        status.metadata_mut().insert(REASON_KEY, MetadataValue::from_static(reason.as_str()));
    }
    status
}

#[cfg(test)]
mod tests {
    use common::reason::CAUSE_KEY;

    use super::*;

    const ID: &str = "abc-1";

    fn reason_of(status: &Status) -> Option<&str> {
        status.metadata().get(REASON_KEY).and_then(|v| v.to_str().ok())
    }

    fn check(error: ApiError, code: Code, message: &str) {
        let status = error.into_status(ID);
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(message), "{status:?}");
    }

    /// Every reason a service may give, with an engine path in its message and cause: the
    /// public code is the policy's, the cause never reaches the caller, and neither does the
    /// message unless the policy says the service words it for callers.
    #[test]
    fn internal_paths_never_reach_a_caller_for_any_reason() {
        #[rustfmt::skip]
        let expected = [
            (Reason::InvalidField, Code::InvalidArgument, Told::Message),
            (Reason::NotFound, Code::NotFound, Told::Message),
            (Reason::AlreadyExists, Code::AlreadyExists, Told::Message),
            (Reason::WrongState, Code::FailedPrecondition, Told::Message),
            (Reason::ImageRefused, Code::FailedPrecondition, Told::Message),
            (Reason::ImageUnavailable, Code::FailedPrecondition, Told::Message),
            (Reason::HostUnsupported, Code::FailedPrecondition, Told::Message),
            (Reason::GpuBusy, Code::FailedPrecondition, Told::Message),
            (Reason::LimitReached, Code::ResourceExhausted, Told::Message),
            (Reason::LockedOut, Code::PermissionDenied, Told::Message),
            (Reason::BadSignature, Code::Unauthenticated, Told::Message),
            (Reason::Timeout, Code::DeadlineExceeded, Told::Message),
            (Reason::PeerUnavailable, Code::Unavailable, Told::RetryShortly),
            (Reason::NotServed, Code::Unavailable, Told::Message),
            (Reason::Draining, Code::Unavailable, Told::Message),
            (Reason::Engine, Code::Internal, Told::RequestId),
            (Reason::Storage, Code::Internal, Told::RequestId),
            (Reason::Internal, Code::Internal, Told::RequestId),
            (Reason::NotPermitted, Code::PermissionDenied, Told::Message),
            (Reason::EventsGone, Code::OutOfRange, Told::Message),
        ];
        assert_eq!(expected.len(), Reason::ALL.len(), "a reason without a row");
        for (reason, code, told) in expected {
            assert_eq!(policy(reason), (code, told), "{reason}");
            let sent = Refusal::new(reason, "container c-1: /var/lib/docker/overlay2 is full")
                .with_cause("docker: /var/run/docker.sock: secret-token")
                .into_status();
            let status = ApiError::Downstream { service: ServiceName::ContainerRuntime, status: sent }.into_status(ID);
            assert_eq!(status.code(), code, "{reason}: {status:?}");
            assert_eq!(reason_of(&status), Some(reason.as_str()), "{reason}");
            assert!(status.metadata().get(CAUSE_KEY).is_none(), "{reason}: {status:?}");
            assert!(!status.message().contains("secret-token"), "{reason}: {status:?}");
            let shown = match told {
                Told::Message => "container c-1: /var/lib/docker/overlay2 is full".to_owned(),
                Told::RetryShortly => "container-runtime is unavailable; retry shortly".to_owned(),
                Told::RequestId => internal_message(ID),
            };
            assert_eq!(status.message(), shown, "{reason}");
        }
    }

    /// A status without a reason: today's policy by code.
    #[test]
    fn statuses_without_a_reason_map_by_code() {
        let runtime = ServiceName::ContainerRuntime;
        let downstream = |status| ApiError::Downstream { service: runtime, status };
        check(
            downstream(Status::invalid_argument("image: `UPPER` is not a reference")),
            Code::InvalidArgument,
            "image:",
        );
        check(downstream(Status::not_found("container c-1 not found")), Code::NotFound, "c-1");
        check(downstream(Status::resource_exhausted("10 containers running")), Code::ResourceExhausted, "10");
        let unavailable = downstream(Status::unavailable("connect /run/basilica/container-runtime.sock: refused"));
        let status = unavailable.into_status(ID);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "container-runtime is unavailable; retry shortly");
        assert_eq!(reason_of(&status), Some("peer_unavailable"));
        let internal = downstream(Status::internal("docker: /var/lib/docker/overlay2 is full"));
        let status = internal.into_status(ID);
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains(ID) && !status.message().contains("overlay2"), "{status:?}");
        let status = downstream(Status::unauthenticated("peer certificate")).into_status(ID);
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        check(
            ApiError::Downstream { service: ServiceName::ValidatorAccess, status: Status::unimplemented("") },
            Code::Unavailable,
            "validator-access does not serve",
        );
        let passed = downstream(Status::not_found("c-1")).into_status(ID);
        assert_eq!(reason_of(&passed), None);
    }

    #[test]
    fn errors_of_our_own() {
        check(ApiError::InvalidArgument { field: "seed", message: "32 bytes".into() }, Code::InvalidArgument, "seed:");
        let status = ApiError::Internal("spawn /usr/bin/x: ENOENT".into()).into_status(ID);
        assert_eq!((status.code(), status.message()), (Code::Internal, internal_message(ID).as_str()));
        check(ApiError::ValidatorAccessDisabled, Code::FailedPrecondition, "[validator] enabled = false");
        check(ApiError::TenantAccessDisabled, Code::FailedPrecondition, "[tenant_access] enabled = false");
        check(ApiError::NotServed("no CUDA backend".into()), Code::Unavailable, "no CUDA backend");
        let status =
            ApiError::DockerUnavailable { detail: "unix:///var/run/docker.sock: refused".into() }.into_status(ID);
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unavailable, "the Docker engine is unavailable; retry shortly")
        );
        check(ApiError::RequestTimeout(Duration::from_secs(2)), Code::DeadlineExceeded, "server.request_timeout (2s)");
    }

    #[test]
    fn auth_refusals_name_their_reason() {
        let limited = AuthFailure { reason: AuthReason::RateLimited, detail: "more than 3 calls a minute".into() };
        let status = limited.to_status();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().starts_with("rate_limited: more than 3 calls a minute"), "{status:?}");
        for reason in AuthReason::ALL {
            let status = AuthFailure { reason, detail: "why".into() }.to_status();
            assert_eq!(status.code(), auth_code(reason).0, "{reason:?}");
            assert_eq!(status.message(), format!("{}: why", reason.as_str()));
            assert_eq!(reason_of(&status), Some(auth_code(reason).1.as_str()));
        }
    }
}
