//! The whole GPoW-2 CPU prover for a challenge: phase A and, where `items > 0`, phase B of every
//! GPU, one GPU after another, each on every thread. The reference the GPU kernels and the
//! independent Python implementation are compared with.

use serde::Serialize;

use super::challenge::{Challenge, ChallengeError, GpuWork};
use super::isa::Isa;
use super::phase_b::LaneError;
use super::{phase_a, phase_b};
use crate::hex_serde::{hex32, hex32_list};
use crate::merkle::Hash;

/// One GPU's keys and roots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuProof {
    pub g: u32,
    /// `key_A`, `key_B`, `key_D`, `key_W` as two u32 words each.
    pub keys: [[u32; 2]; 4],
    #[serde(with = "hex32_list")]
    pub product_roots: Vec<Hash>,
    #[serde(with = "hex32")]
    pub root_a: Hash,
    /// `R_B,g`; none when the GPU has no phase B.
    #[serde(serialize_with = "hex_option")]
    pub root_b: Option<Hash>,
}

/// Every GPU's roots for a challenge and walk nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Proof {
    #[serde(with = "hex32")]
    pub master: Hash,
    #[serde(with = "hex32")]
    pub walk_nonce: [u8; 32],
    pub gpus: Vec<GpuProof>,
}

impl Proof {
    /// The guide's checksum: `hex(R_A,0)`.
    pub fn checksum(&self) -> String {
        self.gpus.first().map(|g| hex::encode(g.root_a)).unwrap_or_default()
    }

    /// The guide's memory checksum: `hex(R_B,0)`, when GPU 0 has phase B.
    pub fn memory_checksum(&self) -> Option<String> {
        self.gpus.first().and_then(|g| g.root_b).map(hex::encode)
    }
}

fn hex_option<S: serde::Serializer>(v: &Option<Hash>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(h) => s.serialize_str(&hex::encode(h)),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProveError {
    #[error(transparent)]
    Challenge(#[from] ChallengeError),
    #[error(transparent)]
    PhaseB(#[from] LaneError),
    #[error(
        "the challenge needs {needed} MiB of memory on the CPU with {threads} thread(s); {available} MiB are available"
    )]
    Memory { needed: u64, available: u64, threads: usize },
}

/// Bytes the CPU prover holds at once for `work` on `threads` threads: phase A's products in
/// flight (B, the tile leaves, a band of A per thread) or phase B's dataset, whichever is
/// larger, plus the product roots.
pub fn memory_needed(work: &GpuWork, threads: usize) -> u128 {
    let (m, n, k) = (u128::from(work.m), u128::from(work.n), u128::from(work.k));
    let threads = threads.max(1) as u128;
    let in_flight = threads.min(u128::from(work.count));
    let phase_a = in_flight * (k * n + (m / 16) * (n / 16) * 32) + threads * 16 * k;
    let phase_b = u128::from(work.items) * 64;
    phase_a.max(phase_b) + u128::from(work.count) * 32
}

/// Checks the challenge and that the largest GPU's work fits in `available_bytes`, then proves
/// every GPU: phase A, then the dataset and the walk after `walk_nonce`.
pub fn prove(
    challenge: &Challenge,
    walk_nonce: &[u8; 32],
    isa: Isa,
    threads: usize,
    available_bytes: u64,
) -> Result<Proof, ProveError> {
    challenge.validate()?;
    let needed = challenge.gpus.iter().map(|w| memory_needed(w, threads)).max().unwrap_or(0);
    if needed > u128::from(available_bytes) {
        return Err(ProveError::Memory {
            needed: u64::try_from(needed >> 20).unwrap_or(u64::MAX),
            available: available_bytes >> 20,
            threads,
        });
    }
    let master = challenge.master();
    let mut gpus = Vec::with_capacity(challenge.gpus.len());
    for (keys, work) in challenge.gpu_keys().iter().zip(&challenge.gpus) {
        let a = phase_a::commit(isa, keys, work, threads);
        let root_b = match work.items {
            0 => None,
            _ => Some(phase_b::commit(isa, keys, work, walk_nonce, threads)?.root),
        };
        gpus.push(GpuProof {
            g: keys.g,
            keys: [keys.a, keys.b, keys.d, keys.walk_key(walk_nonce)],
            product_roots: a.product_roots,
            root_a: a.root,
            root_b,
        });
    }
    Ok(Proof { master, walk_nonce: *walk_nonce, gpus })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpow2::challenge::GpuWork;

    #[test]
    fn refuses_bad_challenges_and_too_little_memory_before_work() {
        let bad = Challenge::plain(1, 17, 1, 0);
        assert!(matches!(prove(&bad, &[0; 32], Isa::Scalar, 1, u64::MAX), Err(ProveError::Challenge(_))));
        let big = Challenge::plain(1, 16, 1, 1 << 31);
        let e = prove(&big, &[0; 32], Isa::Scalar, 1, 1 << 30).unwrap_err();
        assert_eq!(e, ProveError::Memory { needed: 131072, available: 1024, threads: 1 });
        // Production phase A on 64 threads: the size is computed without overflow.
        let w = GpuWork { m: 32768, n: 32768, k: 32768, count: 1_000_000, items: (1 << 32) - 32 };
        assert!(memory_needed(&w, usize::MAX) > u128::from(u64::MAX));
    }

    #[test]
    fn plain_proof_has_both_checksums_and_multi_gpu_proofs_each_gpu() {
        let p = prove(&Challenge::plain(3, 16, 2, 32), &[0; 32], Isa::best(), 2, u64::MAX).unwrap();
        assert_eq!(p.checksum(), hex::encode(p.gpus[0].root_a));
        assert_eq!(p.memory_checksum(), p.gpus[0].root_b.map(hex::encode));
        assert!(p.memory_checksum().is_some());
        assert!(
            prove(&Challenge::plain(3, 16, 2, 0), &[0; 32], Isa::best(), 2, u64::MAX)
                .unwrap()
                .memory_checksum()
                .is_none()
        );

        let w = GpuWork { m: 16, n: 32, k: 16, count: 2, items: 32 };
        let c = Challenge { gpus: vec![w, GpuWork { items: 0, ..w }, w], ..Challenge::plain(3, 16, 1, 0) };
        let p = prove(&c, &[1; 32], Isa::best(), 2, u64::MAX).unwrap();
        assert_eq!(p.gpus.len(), 3);
        assert_eq!(p.gpus.iter().map(|g| g.g).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(p.gpus[1].root_b.is_none() && p.gpus[0].root_b.is_some() && p.gpus[2].root_b.is_some());
        assert_ne!(p.gpus[0].root_a, p.gpus[2].root_a);
        assert_ne!(p.gpus[0].root_b, p.gpus[2].root_b);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["gpus"][1]["root_b"], serde_json::Value::Null);
        assert_eq!(json["gpus"][0]["product_roots"].as_array().unwrap().len(), 2);
    }
}
