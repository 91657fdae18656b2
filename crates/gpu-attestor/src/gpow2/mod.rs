//! GPoW-2 (`GPOW.md`): the CPU reference of the proof of work that replaces GPoW-1, built
//! beside it until the protocol, `check`, `verify` and the report switch over whole.
//!
//! - [`challenge`]: the challenge, its checks, the master key and the per-GPU keys.
//! - [`phase_a`]: int8 GEMM tiles, tile leaves, product roots and `R_A,g`.
//! - [`phase_b`]: cache, dataset, walk, lane leaves and `R_B,g`.
//! - [`isa`]: the instruction sets the hot loops are compiled for, chosen at run time; the
//!   portable scalar path is the reference every other path is tested against.
//! - [`prove`]: the whole CPU prover for a challenge (every GPU, both phases).
//! - [`profiles`]: what a claimed GPU must do and in how long (`profiles.json`).
//!
//! Everything is integer arithmetic and bit-exact; `tests/python/gpow2_reference.py` is an
//! independent implementation of the same page that the tests compare with this one.

pub mod challenge;
pub mod isa;
#[cfg(test)]
mod known_answers;
mod par;
pub mod phase_a;
pub mod phase_b;
mod philox_x;
pub mod profiles;
pub mod prove;
mod sha256_x;
mod tile_kernel;

pub use challenge::{Challenge, ChallengeError, GpuKeys, GpuWork};
pub use isa::Isa;

/// `fnv(a, b) = (a · 0x01000193 mod 2³²) ⊕ b`.
#[inline(always)]
pub fn fnv(a: u32, b: u32) -> u32 {
    a.wrapping_mul(0x0100_0193) ^ b
}

/// `pick(x, N) = (u64(x) · N) >> 32`: a uniform index below `n`, for 1 ≤ n ≤ 2³².
#[inline(always)]
pub fn pick(x: u32, n: u64) -> u32 {
    debug_assert!((1..=1 << 32).contains(&n), "pick needs 1 <= N <= 2^32, got {n}");
    ((u64::from(x) * n) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_and_pick_follow_the_definitions() {
        assert_eq!(fnv(0, 7), 7);
        assert_eq!(fnv(1, 0), 0x0100_0193);
        // Wraps modulo 2^32.
        assert_eq!(fnv(0xFFFF_FFFF, 0), 0u32.wrapping_sub(0x0100_0193));
        assert_eq!(pick(0, 10), 0);
        assert_eq!(pick(u32::MAX, 10), 9);
        assert_eq!(pick(u32::MAX, 1), 0);
        assert_eq!(pick(0x8000_0000, 1 << 22), 1 << 21);
        assert_eq!(pick(u32::MAX, 1 << 32), u32::MAX);
    }
}
