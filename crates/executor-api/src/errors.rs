//! The one place where errors (and refusals) become gRPC status codes for callers of the
//! public API.
//!
//! Callers get a code and a sentence they can act on; internal detail (socket paths, Docker
//! and OS errors, stack of causes) goes to the log with the request id, and the status names
//! only that id.

use common::ServiceName;
use tonic::{Code, Status};

use crate::auth::Reason;

/// The code of a refused call: UNAUTHENTICATED when we cannot tell who is calling (no, bad or
/// stale signature, a replay, an unreadable body); PERMISSION_DENIED when we can and that
/// hotkey may not manage this executor; RESOURCE_EXHAUSTED for the rate limit, which the
/// caller should retry later.
pub fn auth_code(reason: Reason) -> Code {
    match reason {
        Reason::HotkeyNotAllowed => Code::PermissionDenied,
        Reason::RateLimited => Code::ResourceExhausted,
        Reason::MissingSignature
        | Reason::MalformedMetadata
        | Reason::MalformedBody
        | Reason::StaleTimestamp
        | Reason::BadSignature
        | Reason::ReplayedNonce => Code::Unauthenticated,
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
    /// The node cannot do this in its current configuration or build.
    #[error("{0}")]
    Unavailable(String),
    /// Our own failure (a child process, a file).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The status the caller sees for this error in the call `request_id`.
    pub fn into_status(self, request_id: &str) -> Status {
        let internal = |detail: &dyn std::fmt::Display| {
            tracing::error!(request_id, error = %detail, "internal error");
            Status::internal(format!("internal error; the executor log has the detail under request id {request_id}"))
        };
        match self {
            // The caller can fix it: say which field and why.
            ApiError::InvalidArgument { field, message } => Status::invalid_argument(format!("{field}: {message}")),
            ApiError::Unavailable(message) => {
                tracing::warn!(request_id, %message, "unavailable");
                Status::unavailable(message)
            }
            ApiError::Internal(detail) => internal(&detail),
            ApiError::Downstream { service, status } => match status.code() {
                // Answers about the caller's request: the services word them for callers
                // (they name the field, the container, the limit), so they pass through.
                Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::FailedPrecondition
                | Code::ResourceExhausted
                | Code::OutOfRange
                | Code::PermissionDenied
                | Code::Aborted
                | Code::DeadlineExceeded
                | Code::Cancelled => Status::new(status.code(), status.message().to_owned()),
                // The service is down or restarting (the launcher restarts it): retry later.
                // A transport error carries the socket path, which stays in the log.
                Code::Unavailable => {
                    tracing::warn!(request_id, %service, error = %status, "internal service unavailable");
                    Status::unavailable(format!("{service} is unavailable; retry shortly"))
                }
                // The service does not serve this in this build (validator-access before its
                // grants land): the feature is unavailable, not the caller's mistake.
                Code::Unimplemented => {
                    tracing::warn!(request_id, %service, error = %status, "not served by this build");
                    Status::unavailable(format!("{service} does not serve this call in this build"))
                }
                // INTERNAL, UNKNOWN, DATA_LOSS, OK-as-error, UNAUTHENTICATED between our own
                // services: never the caller's business.
                _ => internal(&format!("{service}: {status}")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(error: ApiError, code: Code, message: &str) {
        let status = error.into_status("abc-1");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(message), "{status:?}");
    }

    #[test]
    fn maps_each_kind_without_leaking_detail() {
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
        let status = unavailable.into_status("abc-1");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("/run"), "{status:?}");
        let internal = downstream(Status::internal("docker: /var/lib/docker/overlay2 is full"));
        let status = internal.into_status("abc-1");
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("abc-1") && !status.message().contains("overlay2"), "{status:?}");
        check(
            ApiError::Downstream { service: ServiceName::ValidatorAccess, status: Status::unimplemented("") },
            Code::Unavailable,
            "validator-access does not serve",
        );
        check(ApiError::InvalidArgument { field: "seed", message: "32 bytes".into() }, Code::InvalidArgument, "seed:");
        check(ApiError::Internal("spawn /usr/bin/x: ENOENT".into()), Code::Internal, "abc-1");
    }
}
