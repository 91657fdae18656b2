//! What a validator opens (GPOW.md step 8, `docs/gpow2-protocol.md` "Samples"): per GPU, distinct
//! tiles and distinct lanes, of standard sizes, drawn from a 32-byte seed (the validator's OS
//! randomness, or the Fiat-Shamir seed of a report without a validator).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::gpow2::phase_a::TileIndex;
use crate::gpow2::{Challenge, GpuWork};

/// Tiles opened per GPU when the challenge names one GPU, and when it names several.
pub const TILES_ONE_GPU: u64 = 256;
pub const TILES_PER_GPU: u64 = 128;
/// Lanes opened per GPU with phase B.
pub const LANES_PER_GPU: u64 = 128;

/// One GPU's sample.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSample {
    pub tiles: Vec<TileIndex>,
    pub lanes: Vec<u32>,
}

/// Why a sample is refused; each names the GPU and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    #[error("the sample names {got} GPUs; the challenge has {expected}")]
    Gpus { got: usize, expected: usize },
    #[error("gpu {gpu}: {got} {what}; at most {max}")]
    TooMany { gpu: usize, what: &'static str, got: usize, max: u64 },
    #[error("gpu {gpu}: {got} {what}; the standard sample has {expected}")]
    Size { gpu: usize, what: &'static str, got: usize, expected: u64 },
    #[error("gpu {gpu}: {what} {index} is sampled twice")]
    Repeated { gpu: usize, what: &'static str, index: String },
    #[error("gpu {gpu}: tile (p {}, ti {}, tj {}) is outside the work", .tile.p, .tile.ti, .tile.tj)]
    Tile { gpu: usize, tile: TileIndex },
    #[error("gpu {gpu}: lane {lane} is outside the walk ({lanes} lanes)")]
    Lane { gpu: usize, lane: u32, lanes: u64 },
}

/// All tiles of `work`, flattened (`p·(m/16)·(n/16) + ti·(n/16) + tj`).
pub fn total_tiles(work: &GpuWork) -> u64 {
    u64::from(work.count) * work.tiles_per_product()
}

/// The standard sample sizes of GPU `work` in a challenge of `gpus` GPUs: (tiles, lanes).
pub fn sizes(work: &GpuWork, gpus: usize) -> (u64, u64) {
    let tiles = if gpus == 1 { TILES_ONE_GPU } else { TILES_PER_GPU };
    (tiles.min(total_tiles(work)), LANES_PER_GPU.min(work.lanes()))
}

fn tile_at(work: &GpuWork, t: u64) -> TileIndex {
    let per_product = work.tiles_per_product();
    let (p, rest) = (t / per_product, t % per_product);
    let columns = u64::from(work.n / 16);
    TileIndex { p: p as u32, ti: (rest / columns) as u32, tj: (rest % columns) as u32 }
}

/// `size` distinct indices below `total`, the i-th candidate `(x · total) >> 64` with `x` the first
/// 8 bytes of `SHA-256(0x20 ‖ seed ‖ u32 g ‖ u8 kind ‖ u32 i)`.
fn distinct(seed: &[u8; 32], g: u32, kind: u8, total: u64, size: u64) -> Vec<u64> {
    let mut seen = HashSet::with_capacity(size as usize);
    let mut out = Vec::with_capacity(size as usize);
    let mut i = 0u32;
    while (out.len() as u64) < size {
        let h = Sha256::new()
            .chain_update([0x20])
            .chain_update(seed)
            .chain_update(g.to_le_bytes())
            .chain_update([kind])
            .chain_update(i.to_le_bytes())
            .finalize();
        let x = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
        let index = ((u128::from(x) * u128::from(total)) >> 64) as u64;
        if seen.insert(index) {
            out.push(index);
        }
        i = i.wrapping_add(1);
    }
    out
}

/// The standard sample of every GPU of a validated `challenge`, drawn from `seed`.
pub fn draw(challenge: &Challenge, seed: &[u8; 32]) -> Vec<GpuSample> {
    let g_count = challenge.gpus.len();
    challenge
        .gpus
        .iter()
        .enumerate()
        .map(|(g, work)| {
            let (tiles, lanes) = sizes(work, g_count);
            GpuSample {
                tiles: distinct(seed, g as u32, 0, total_tiles(work), tiles)
                    .into_iter()
                    .map(|t| tile_at(work, t))
                    .collect(),
                lanes: distinct(seed, g as u32, 1, work.lanes(), lanes).into_iter().map(|l| l as u32).collect(),
            }
        })
        .collect()
}

/// Checks a sample of a validated `challenge`: one entry per GPU, every index inside the work and
/// distinct, and no more than the standard sizes; with `exact`, exactly those sizes (`verify`).
pub fn check(challenge: &Challenge, samples: &[GpuSample], exact: bool) -> Result<(), SampleError> {
    if samples.len() != challenge.gpus.len() {
        return Err(SampleError::Gpus { got: samples.len(), expected: challenge.gpus.len() });
    }
    for (gpu, (work, s)) in challenge.gpus.iter().zip(samples).enumerate() {
        let (tiles, lanes) = sizes(work, challenge.gpus.len());
        for (what, got, expected) in [("tiles", s.tiles.len(), tiles), ("lanes", s.lanes.len(), lanes)] {
            if got as u64 > expected {
                return Err(SampleError::TooMany { gpu, what, got, max: expected });
            }
            if exact && got as u64 != expected {
                return Err(SampleError::Size { gpu, what, got, expected });
            }
        }
        let mut seen = HashSet::new();
        for tile in &s.tiles {
            if tile.check(work).is_err() {
                return Err(SampleError::Tile { gpu, tile: *tile });
            }
            if !seen.insert(*tile) {
                let index = format!("(p {}, ti {}, tj {})", tile.p, tile.ti, tile.tj);
                return Err(SampleError::Repeated { gpu, what: "tile", index });
            }
        }
        let mut seen = HashSet::new();
        for &lane in &s.lanes {
            if u64::from(lane) >= work.lanes() {
                return Err(SampleError::Lane { gpu, lane, lanes: work.lanes() });
            }
            if !seen.insert(lane) {
                return Err(SampleError::Repeated { gpu, what: "lane", index: lane.to_string() });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(gpus: Vec<GpuWork>) -> Challenge {
        Challenge { gpus, ..Challenge::plain(1, 16, 1, 0) }
    }

    #[test]
    fn standard_samples_are_distinct_inside_the_work_and_deterministic() {
        let w = GpuWork { m: 32, n: 48, k: 16, count: 100, items: 4096 };
        let one = challenge(vec![w]);
        let s = draw(&one, &[1; 32]);
        assert_eq!((s[0].tiles.len(), s[0].lanes.len()), (256, 128));
        check(&one, &s, true).unwrap();
        assert_eq!(s, draw(&one, &[1; 32]));
        assert_ne!(s, draw(&one, &[2; 32]));
        // Every tile row and column is reachable: the flattening covers the whole product.
        assert!(s[0].tiles.iter().any(|t| t.ti == 1) && s[0].tiles.iter().any(|t| t.tj == 2));

        let small = GpuWork { m: 16, n: 16, k: 16, count: 3, items: 0 };
        let two = challenge(vec![w, small]);
        let s = draw(&two, &[3; 32]);
        assert_eq!((s[0].tiles.len(), s[0].lanes.len()), (128, 128));
        // Fewer tiles than the sample: all of them, once each; no phase B, no lanes.
        assert_eq!((s[1].tiles.len(), s[1].lanes.len()), (3, 0));
        check(&two, &s, true).unwrap();
    }

    #[test]
    fn oversized_repeated_and_outside_samples_are_refused() {
        let w = GpuWork { m: 16, n: 16, k: 16, count: 1000, items: 64 };
        let c = challenge(vec![w]);
        let good = draw(&c, &[0; 32]);
        let mut bad = good.clone();
        bad[0].tiles.push(TileIndex { p: 999, ti: 0, tj: 0 });
        assert!(matches!(check(&c, &bad, false), Err(SampleError::TooMany { what: "tiles", got: 257, .. })));
        let mut bad = good.clone();
        bad[0].tiles[1] = bad[0].tiles[0];
        assert!(matches!(check(&c, &bad, false), Err(SampleError::Repeated { what: "tile", .. })));
        let mut bad = good.clone();
        bad[0].tiles[0] = TileIndex { p: 1000, ti: 0, tj: 0 };
        assert!(matches!(check(&c, &bad, false), Err(SampleError::Tile { .. })));
        let mut bad = good.clone();
        bad[0].lanes[0] = 4;
        assert_eq!(check(&c, &bad, false), Err(SampleError::Lane { gpu: 0, lane: 4, lanes: 4 }));
        let mut short = good.clone();
        short[0].tiles.truncate(3);
        check(&c, &short, false).unwrap();
        assert!(matches!(check(&c, &short, true), Err(SampleError::Size { what: "tiles", got: 3, .. })));
        assert_eq!(check(&c, &[], false), Err(SampleError::Gpus { got: 0, expected: 1 }));
    }
}
