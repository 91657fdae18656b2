//! gpu-attestor: the GPoW-1 proof of work (`GPOW.md`), run by validators over SSH.
//!
//! The prover computes `count` int8 matrix products whose inputs come from Philox and a
//! seed, and commits to every output row in a Merkle tree; the validator checks a random sample
//! of products with Freivalds' algorithm and opened rows with their Merkle paths, on its CPU,
//! at a cost orders of magnitude below the proving work. Everything here is integer arithmetic
//! and bit-exact. The library is standalone: it depends on `common` and nothing else of ours.
//!
//! [`gpow2`] is GPoW-2's CPU reference (tiles, dataset and walk), built beside GPoW-1 until the
//! protocol, `check`, `verify` and the report switch to it together.

pub mod check;
pub mod gemm;
pub mod gpow2;
pub mod host;
pub mod merkle;
pub mod opening;
pub mod params;
pub mod philox;
pub mod protocol;
pub mod prove;
pub mod report;
pub mod verify;

pub use params::{Params, ParamsError};
pub use philox::philox4x32_10;
