//! The two doors validators come in through, each turning its protocol into calls on
//! [`crate::access::Access`]: the embedded SSH server ([`embedded`]) and the host's sshd
//! through a forced command and a relay socket ([`gate`]). Admission, the command grammar,
//! running commands and ending sessions are the same for both and live below.

pub mod embedded;
pub mod gate;
