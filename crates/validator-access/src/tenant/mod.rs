//! Renters in their own containers: their SSH keys ([`keys`]), their live sessions
//! ([`sessions`]), the domain both the SSH front and the API use ([`access`]), the SSH server
//! ([`front`]) with its `ssh -L` forwards into the container's loopback ([`forward`]) and its
//! file transfers ([`sftp`]), and the
//! gRPC API executor-api forwards the miner's key calls to ([`api`]).

pub mod access;
pub mod api;
pub mod forward;
pub mod front;
pub mod keys;
pub mod sessions;
pub mod sftp;
