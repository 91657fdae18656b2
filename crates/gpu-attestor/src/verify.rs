//! The validator's CPU checks (GPOW.md, "Verification work"): the commitments' shape and `R_A,g`,
//! then each sampled tile recomputed, hashed and climbed to its `R_p`, and each sampled lane
//! replayed from the cache, hashed and climbed to `R_B,g`. The prover sends paths only: every leaf
//! is the validator's own.

use serde::{Deserialize, Serialize};

use crate::gpow2::phase_a::{self, TileIndex};
use crate::gpow2::{Challenge, Isa, phase_b};
use crate::hex_serde::{hex32, hex32_list, hex32_option, hex32_paths};
use crate::merkle::{self, Hash};
use crate::sample::{self, GpuSample, SampleError};

/// One GPU's commitments: `R_A,g` with every `R_p`, and `R_B,g` when it has phase B.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuCommitment {
    #[serde(with = "hex32")]
    pub root_a: Hash,
    #[serde(with = "hex32_list")]
    pub product_roots: Vec<Hash>,
    #[serde(with = "hex32_option")]
    pub root_b: Option<Hash>,
}

/// One GPU's answers to its sample: a Merkle path per tile (inside `R_p`) and per lane (inside
/// `R_B,g`), in the sample's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuOpenings {
    #[serde(with = "hex32_paths")]
    pub tile_paths: Vec<Vec<Hash>>,
    #[serde(with = "hex32_paths")]
    pub lane_paths: Vec<Vec<Hash>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("{what}: {got} entries for a challenge of {expected} GPUs")]
    Gpus { what: &'static str, got: usize, expected: usize },
    #[error("gpu {gpu}: {got} product roots; the work has {expected} products")]
    ProductRoots { gpu: usize, got: usize, expected: u32 },
    #[error("gpu {gpu}: the product roots do not make the committed R_A")]
    RootA { gpu: usize },
    #[error("gpu {gpu}: R_B is {}, but the work has {} phase B", if *.present { "present" } else { "absent" }, if *.present { "no" } else { "a" })]
    RootB { gpu: usize, present: bool },
    #[error("gpu {gpu}: {got} {what} paths for {expected} sampled")]
    Paths { gpu: usize, what: &'static str, got: usize, expected: usize },
    #[error("gpu {gpu}: tile (p {}, ti {}, tj {}) does not reach its committed R_p", .tile.p, .tile.ti, .tile.tj)]
    Tile { gpu: usize, tile: TileIndex },
    #[error("gpu {gpu}: lane {lane} does not reach the committed R_B")]
    Lane { gpu: usize, lane: u32 },
    #[error("gpu {gpu}: {reason}")]
    Work { gpu: usize, reason: String },
    #[error("sample: {0}")]
    Sample(#[from] SampleError),
}

/// The commitments fit a validated `challenge`: one per GPU, a root per product that together make
/// `R_A,g`, and `R_B,g` exactly where the work has phase B.
pub fn check_commitments(challenge: &Challenge, commitments: &[GpuCommitment]) -> Result<(), VerifyError> {
    if commitments.len() != challenge.gpus.len() {
        return Err(VerifyError::Gpus { what: "commitments", got: commitments.len(), expected: challenge.gpus.len() });
    }
    for (gpu, (work, c)) in challenge.gpus.iter().zip(commitments).enumerate() {
        if c.product_roots.len() != work.count as usize {
            return Err(VerifyError::ProductRoots { gpu, got: c.product_roots.len(), expected: work.count });
        }
        if phase_a::root_of(gpu as u32, &c.product_roots) != c.root_a {
            return Err(VerifyError::RootA { gpu });
        }
        if c.root_b.is_some() != (work.items > 0) {
            return Err(VerifyError::RootB { gpu, present: c.root_b.is_some() });
        }
    }
    Ok(())
}

/// Everything a validator checks of a conversation or report after the commitments: the sample's
/// shape (at most the standard sizes; `exact` for reports), then each tile and lane recomputed on
/// `threads` threads with `isa` and climbed to its committed root. Each check runs once.
#[allow(clippy::too_many_arguments)]
pub fn check_openings(
    isa: Isa,
    threads: usize,
    challenge: &Challenge,
    walk_nonce: &[u8; 32],
    commitments: &[GpuCommitment],
    samples: &[GpuSample],
    openings: &[GpuOpenings],
    exact: bool,
) -> Result<(), VerifyError> {
    check_commitments(challenge, commitments)?;
    check_sampled(isa, threads, challenge, walk_nonce, commitments, samples, openings, exact)
}

/// [`check_openings`] for commitments the caller has already checked with [`check_commitments`].
#[allow(clippy::too_many_arguments)]
pub fn check_sampled(
    isa: Isa,
    threads: usize,
    challenge: &Challenge,
    walk_nonce: &[u8; 32],
    commitments: &[GpuCommitment],
    samples: &[GpuSample],
    openings: &[GpuOpenings],
    exact: bool,
) -> Result<(), VerifyError> {
    sample::check(challenge, samples, exact)?;
    if openings.len() != challenge.gpus.len() {
        return Err(VerifyError::Gpus { what: "openings", got: openings.len(), expected: challenge.gpus.len() });
    }
    let keys = challenge.gpu_keys();
    for (gpu, work) in challenge.gpus.iter().enumerate() {
        let (c, s, o) = (&commitments[gpu], &samples[gpu], &openings[gpu]);
        for (what, got, expected) in
            [("tile", o.tile_paths.len(), s.tiles.len()), ("lane", o.lane_paths.len(), s.lanes.len())]
        {
            if got != expected {
                return Err(VerifyError::Paths { gpu, what, got, expected });
            }
        }
        // Indices were checked against the work by the sample check: these cannot fail.
        let tiles = phase_a::tiles(isa, &keys[gpu], work, &s.tiles, threads)
            .map_err(|e| VerifyError::Work { gpu, reason: e.to_string() })?;
        let per_product = work.tiles_per_product() as usize;
        let columns = (work.n / 16) as usize;
        for ((t, tile), path) in s.tiles.iter().zip(&tiles).zip(&o.tile_paths) {
            let leaf = phase_a::tile_leaf(gpu as u32, *t, tile);
            let index = t.ti as usize * columns + t.tj as usize;
            if merkle::root_from_path(leaf, index, per_product, path) != Some(c.product_roots[t.p as usize]) {
                return Err(VerifyError::Tile { gpu, tile: *t });
            }
        }
        let Some(root_b) = c.root_b else { continue };
        let walk_key = keys[gpu].walk_key(walk_nonce);
        let cmixes = phase_b::replay(isa, &keys[gpu], work, walk_key, &s.lanes, threads)
            .map_err(|e| VerifyError::Work { gpu, reason: e.to_string() })?;
        let lanes = work.lanes() as usize;
        for ((&lane, cmix), path) in s.lanes.iter().zip(&cmixes).zip(&o.lane_paths) {
            let leaf = phase_b::lane_leaf(gpu as u32, lane, cmix);
            if merkle::root_from_path(leaf, lane as usize, lanes, path) != Some(root_b) {
                return Err(VerifyError::Lane { gpu, lane });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpow2::GpuWork;
    use crate::prover::CpuProver;

    fn honest(challenge: &Challenge, seed: u8) -> (Vec<GpuCommitment>, Vec<GpuSample>, Vec<GpuOpenings>) {
        let mut prover = CpuProver::new(challenge.clone(), Isa::best(), 2);
        prover.phase_a();
        prover.build().unwrap();
        prover.walk(&[9; 32]);
        let samples = sample::draw(challenge, &[seed; 32]);
        let openings = prover.open(&samples);
        (prover.commitments(), samples, openings)
    }

    #[test]
    fn honest_openings_verify_and_every_tampering_is_named() {
        let w = GpuWork { m: 32, n: 16, k: 48, count: 40, items: 2048 };
        let c = Challenge { gpus: vec![w, GpuWork { items: 0, ..w }], ..Challenge::plain(4, 16, 1, 0) };
        let (commitments, samples, openings) = honest(&c, 1);
        let run = |c2: &[GpuCommitment], s: &[GpuSample], o: &[GpuOpenings]| {
            check_openings(Isa::best(), 2, &c, &[9; 32], c2, s, o, true)
        };
        run(&commitments, &samples, &openings).unwrap();
        // The scalar path agrees.
        check_openings(Isa::Scalar, 1, &c, &[9; 32], &commitments, &samples, &openings, true).unwrap();

        let mut bad = openings.clone();
        bad[0].tile_paths[3][0][0] ^= 1;
        assert_eq!(run(&commitments, &samples, &bad), Err(VerifyError::Tile { gpu: 0, tile: samples[0].tiles[3] }));
        let mut bad = openings.clone();
        bad[0].lane_paths[5].pop();
        assert_eq!(run(&commitments, &samples, &bad), Err(VerifyError::Lane { gpu: 0, lane: samples[0].lanes[5] }));
        // Another walk nonce: every lane is wrong.
        assert!(matches!(
            check_openings(Isa::best(), 2, &c, &[8; 32], &commitments, &samples, &openings, true),
            Err(VerifyError::Lane { gpu: 0, .. })
        ));
        let mut bad = commitments.clone();
        bad[1].product_roots[0][0] ^= 1;
        assert_eq!(run(&bad, &samples, &openings), Err(VerifyError::RootA { gpu: 1 }));
        let mut bad = commitments.clone();
        bad[1].root_b = Some([0; 32]);
        assert_eq!(run(&bad, &samples, &openings), Err(VerifyError::RootB { gpu: 1, present: true }));
        let mut bad = openings.clone();
        bad[1].tile_paths.pop();
        assert!(matches!(run(&commitments, &samples, &bad), Err(VerifyError::Paths { gpu: 1, what: "tile", .. })));
        // A short sample passes the protocol's check but not a report's.
        let mut short = samples.clone();
        short[0].tiles.truncate(1);
        let mut short_openings = openings.clone();
        short_openings[0].tile_paths.truncate(1);
        assert!(matches!(
            run(&commitments, &short, &short_openings),
            Err(VerifyError::Sample(SampleError::Size { .. }))
        ));
        check_openings(Isa::best(), 2, &c, &[9; 32], &commitments, &short, &short_openings, false).unwrap();
    }

    /// A prover that skipped one tile (committed garbage for it) passes exactly when the sample
    /// misses that tile.
    #[test]
    fn a_skipped_tile_fails_when_sampled() {
        let w = GpuWork { m: 16, n: 16, k: 16, count: 300, items: 0 };
        let c = Challenge { gpus: vec![w], ..Challenge::plain(5, 16, 1, 0) };
        let mut prover = CpuProver::new(c.clone(), Isa::best(), 2);
        prover.phase_a();
        let skipped = TileIndex { p: 7, ti: 0, tj: 0 };
        prover.corrupt_tile(0, skipped);
        prover.build().unwrap();
        prover.walk(&[0; 32]);
        let commitments = prover.commitments();
        let (mut passed, mut failed) = (0, 0);
        for seed in 0..20u8 {
            let samples = sample::draw(&c, &[seed; 32]);
            let openings = prover.open(&samples);
            let result = check_openings(Isa::best(), 2, &c, &[0; 32], &commitments, &samples, &openings, true);
            if samples[0].tiles.contains(&skipped) {
                assert_eq!(result, Err(VerifyError::Tile { gpu: 0, tile: skipped }));
                failed += 1;
            } else {
                result.unwrap();
                passed += 1;
            }
        }
        assert!(passed > 0 && failed > 0, "{passed} passed, {failed} failed");
    }
}
