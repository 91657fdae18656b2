//! The one error vocabulary between the services: every error status an internal service
//! returns carries a stable, machine-readable [`Reason`] in its metadata, a message worded for
//! the caller (it names the field, the container, the limit), and optionally an internal
//! cause (engine or OS text) that only logs may show.
//!
//! The internal code of a reason is chosen here, once ([`Reason::internal_code`]); the public
//! code a miner sees is chosen by executor-api's `errors` module from the reason alone.

use std::fmt;
use std::str::FromStr;

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Metadata key of the reason on an error status.
pub const REASON_KEY: &str = "x-executor-reason";
/// Metadata key of the internal cause (engine or OS text); never shown to a public caller.
pub const CAUSE_KEY: &str = "x-executor-cause";
/// Longest cause carried, in bytes: the rest stays in the service's own log.
const MAX_CAUSE: usize = 1024;

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $name:literal => $code:ident,)*) => {
        /// Why a service refused or failed a call. The names are a stable interface: clients and
        /// alerts match on them, so a variant is added, never renamed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, for tests that walk the whole vocabulary.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The stable name carried in [`REASON_KEY`].
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }

            /// The code used between the services (and by `executor ctl` through the public
            /// mapping): a fixed function of the reason.
            pub fn internal_code(self) -> Code {
                match self {
                    $(Reason::$variant => Code::$code,)*
                }
            }
        }

        impl FromStr for Reason {
            type Err = UnknownReason;
            fn from_str(s: &str) -> Result<Self, UnknownReason> {
                match s {
                    $($name => Ok(Reason::$variant),)*
                    other => Err(UnknownReason(other.to_owned())),
                }
            }
        }
    };
}

reasons! {
    /// A request field is malformed or out of its bounds; the message names the field.
    InvalidField = "invalid_field" => InvalidArgument,
    /// The container, grant or other thing the request names does not exist.
    NotFound = "not_found" => NotFound,
    /// The thing already exists.
    AlreadyExists = "already_exists" => AlreadyExists,
    /// The thing is not in a state that allows the call (running and not forced, already
    /// stopped, a challenge that is unknown or expired).
    WrongState = "wrong_state" => FailedPrecondition,
    /// The image is refused by the registry allow-list or the signature policy.
    ImageRefused = "image_refused" => FailedPrecondition,
    /// The image cannot be resolved or pulled from its registry.
    ImageUnavailable = "image_unavailable" => FailedPrecondition,
    /// This host cannot do what was asked in its configuration (no NVIDIA runtime, no traffic
    /// shaping, a host path outside the allowed ones, a configured device list that does not
    /// match the GPUs).
    HostUnsupported = "host_unsupported" => FailedPrecondition,
    /// The GPUs asked for are assigned to other containers.
    GpuBusy = "gpu_busy" => FailedPrecondition,
    /// A limit of the node is reached (containers, GPUs, sessions); retry later.
    LimitReached = "limit_reached" => ResourceExhausted,
    /// The caller sent too many failed attempts and is locked out for a while.
    LockedOut = "locked_out" => PermissionDenied,
    /// A signature did not verify, or was made by a key that may not do this.
    BadSignature = "bad_signature" => Unauthenticated,
    /// The work ran past its deadline (a pull, a command).
    Timeout = "timeout" => DeadlineExceeded,
    /// A service this one depends on did not answer; retry shortly.
    PeerUnavailable = "peer_unavailable" => Unavailable,
    /// The node does not do this in its configuration or build.
    NotServed = "not_served" => Unavailable,
    /// The node is drained (`Drain`): it takes no new containers until `Undrain`.
    Draining = "draining" => Unavailable,
    /// The container engine failed; its text is the cause, never the message.
    Engine = "engine" => Internal,
    /// Persisting state failed (a full or read-only disk); the cause says where.
    Storage = "storage" => Internal,
    /// Our own failure (randomness, a child process, an invariant).
    Internal = "internal" => Internal,
    /// What the request asks is never allowed here, whoever asks (a forward to anything but
    /// the container's own loopback).
    NotPermitted = "not_permitted" => PermissionDenied,
    /// The events a watch asks for are no longer kept, or were never there; the message names
    /// the numbers to ask with.
    EventsGone = "events_gone" => OutOfRange,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason name no version of this code knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reason `{0}`")]
pub struct UnknownReason(pub String);

/// A service's error for a caller: a reason, a message worded for the caller and, for failures
/// that are not the caller's (engine, storage, internal), the cause that goes to logs only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
    pub cause: Option<String>,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Refusal { reason, message: message.into(), cause: None }
    }

    /// The same refusal with an internal cause attached.
    pub fn with_cause(mut self, cause: impl fmt::Display) -> Self {
        self.cause = Some(cause.to_string());
        self
    }

    /// The status a service returns: the reason's internal code, the message, and the reason
    /// and cause in metadata.
    pub fn into_status(self) -> Status {
        let mut status = Status::new(self.reason.internal_code(), self.message);
        let meta = status.metadata_mut();
        meta.insert(REASON_KEY, MetadataValue::from_static(self.reason.as_str()));
        if let Some(cause) = self.cause
            && let Ok(value) = MetadataValue::try_from(ascii_cause(&cause))
        {
            meta.insert(CAUSE_KEY, value);
        }
        status
    }

    /// The refusal a service's status carries, or `None` for a status without a reason (a
    /// transport error, or a peer that predates reasons).
    pub fn from_status(status: &Status) -> Option<Refusal> {
        let reason = status.metadata().get(REASON_KEY)?.to_str().ok()?.parse().ok()?;
        let cause = status.metadata().get(CAUSE_KEY).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Some(Refusal { reason, message: status.message().to_owned(), cause })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.reason)?;
        if let Some(cause) = &self.cause {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        r.into_status()
    }
}

/// Metadata values are visible ASCII: other bytes become `?`, and long causes are cut.
fn ascii_cause(cause: &str) -> String {
    let mut out: String =
        cause.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).take(MAX_CAUSE).collect();
    if cause.len() > MAX_CAUSE {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_through_a_status() {
        for &reason in Reason::ALL {
            let status = Refusal::new(reason, "image: refused").with_cause("engine said\nno").into_status();
            assert_eq!(status.code(), reason.internal_code());
            let back = Refusal::from_status(&status).expect("reason in metadata");
            assert_eq!(back.reason, reason);
            assert_eq!(back.message, "image: refused");
            assert_eq!(back.cause.as_deref(), Some("engine said?no"));
            assert_eq!(reason.as_str().parse::<Reason>(), Ok(reason));
        }
    }

    #[test]
    fn statuses_without_a_reason_have_none() {
        assert_eq!(Refusal::from_status(&Status::unavailable("connect: refused")), None);
        let mut status = Status::internal("x");
        status.metadata_mut().insert(REASON_KEY, MetadataValue::from_static("no_such_reason"));
        assert_eq!(Refusal::from_status(&status), None);
        assert_eq!("nope".parse::<Reason>(), Err(UnknownReason("nope".into())));
    }

    #[test]
    fn long_causes_are_cut() {
        let status =
            Refusal::new(Reason::Engine, "the container engine failed").with_cause("x".repeat(5000)).into_status();
        let cause = Refusal::from_status(&status).and_then(|r| r.cause).expect("cause");
        assert_eq!(cause.len(), MAX_CAUSE + 3);
    }
}
