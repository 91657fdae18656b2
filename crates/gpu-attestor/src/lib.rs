//! gpu-attestor: the GPoW-2 proof of work (`GPOW.md`), run by validators over SSH.
//!
//! The prover computes int8 matrix products from Philox and commits to every 16×16 output tile
//! (phase A), then builds a dataset the size of the GPU's memory and walks it after the
//! validator's nonce (phase B). The validator times each phase on its own clock, recomputes a
//! random sample of tiles and lanes on its CPU and climbs their Merkle paths, at a cost orders of
//! magnitude below the proving work. Everything is integer arithmetic and bit-exact. The library
//! is standalone: it depends on `common` and nothing else of ours.
//!
//! - [`gpow2`]: the CPU reference of the math (challenge, keys, phases, profiles).
//! - [`prover`]: the CPU prover, step by step; [`protocol`]: protocol 2 and the prover's side.
//! - [`check`]: the validator's side and its verdict; [`verify`]: the CPU checks; [`sample`]:
//!   what is opened.
//! - [`report`]: the signed report (schema 2); [`evidence`] and [`host`]: the facts it carries.

pub mod check;
pub mod evidence;
pub mod gpow2;
pub mod gpu;
pub mod hex_serde;
pub mod host;
pub mod merkle;
pub mod philox;
pub mod protocol;
pub mod prover;
pub mod report;
pub mod sample;
pub mod verify;

pub use philox::philox4x32_10;
