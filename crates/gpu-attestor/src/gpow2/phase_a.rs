//! Phase A (GPOW.md, "Phase A: compute"): int8 products `C_p = A_p · B_p` from Philox, cut into
//! 16×16 tiles, each tile a leaf; `R_p` over a product's tiles, `R_A,g` over the products.
//!
//! The validator recomputes single tiles ([`tiles`]): 16 rows of `A_p` and one 16-column block
//! of `B_p`, generated and multiplied a chunk of the depth at a time so both stay in cache. The
//! CPU prover ([`commit`]) generates each product's B once and each 16-row band of A once.
//! [`tile_reference`] is the specification written out plainly; the tests hold every path to it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::challenge::{ChallengeError, GpuKeys, GpuWork};
use super::isa::Isa;
use super::par::{parallel_map, run_workers};
use super::{philox_x, tile_kernel};
use crate::merkle::{self, Hash};
use crate::philox::philox4x32_10;

/// A 16×16 tile of `C_p`, row-major.
pub type Tile = [i32; 256];

/// Depth generated and multiplied at a time by [`tile`]: 16 rows of A and 2048 rows of B's
/// block are 64 KiB, held in L2, and long enough runs of Philox blocks to fill the vectors.
const CHUNK: usize = 2048;

/// Which tile: product `p`, rows `16·ti..16·ti+15`, columns `16·tj..16·tj+15`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TileIndex {
    pub p: u32,
    pub ti: u32,
    pub tj: u32,
}

/// A tile outside the GPU's work, or work GPOW.md does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TileError {
    #[error(transparent)]
    Work(#[from] ChallengeError),
    #[error("tile p = {value}: the work has {limit} products")]
    Product { value: u32, limit: u32 },
    #[error("tile ti = {value}: the work has {limit} tile rows (m / 16)")]
    Row { value: u32, limit: u32 },
    #[error("tile tj = {value}: the work has {limit} tile columns (n / 16)")]
    Column { value: u32, limit: u32 },
}

impl TileIndex {
    pub fn check(&self, work: &GpuWork) -> Result<(), TileError> {
        if self.p >= work.count {
            return Err(TileError::Product { value: self.p, limit: work.count });
        }
        if self.ti >= work.m / 16 {
            return Err(TileError::Row { value: self.ti, limit: work.m / 16 });
        }
        if self.tj >= work.n / 16 {
            return Err(TileError::Column { value: self.tj, limit: work.n / 16 });
        }
        Ok(())
    }
}

/// `SHA-256(0x03 ‖ u32 g ‖ u32 p ‖ u32 ti ‖ u32 tj ‖ the 256 i32 of the tile, row-major)`.
pub fn tile_leaf(g: u32, t: TileIndex, tile: &Tile) -> Hash {
    let mut bytes = [0u8; 17 + 1024];
    bytes[0] = 0x03;
    for (i, v) in [g, t.p, t.ti, t.tj].iter().enumerate() {
        bytes[1 + 4 * i..5 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    for (chunk, v) in bytes[17..].chunks_exact_mut(4).zip(tile) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    Sha256::digest(bytes).into()
}

/// `SHA-256(0x02 ‖ u32 g ‖ u32 p ‖ R_p)`: product `p`'s leaf in `R_A,g`.
pub fn product_leaf(g: u32, p: u32, product_root: &Hash) -> Hash {
    Sha256::new()
        .chain_update([0x02])
        .chain_update(g.to_le_bytes())
        .chain_update(p.to_le_bytes())
        .chain_update(product_root)
        .finalize()
        .into()
}

/// `R_A,g` from every `R_p` of GPU `g`, in order (at least one).
pub fn root_of(g: u32, product_roots: &[Hash]) -> Hash {
    let leaves: Vec<Hash> = product_roots.iter().enumerate().map(|(p, r)| product_leaf(g, p as u32, r)).collect();
    merkle::root(&leaves)
}

/// The specification written out: row `i`, block `q` of `A_p` is `Philox(i, q, p, 0; key_A)`,
/// row `t`, block `tj` of `B_p` is `Philox(t, tj, p, 0; key_B)`, each read as 16 i8; the tile is
/// the plain triple loop. Slow; the reference the fast paths are tested against. The depth is
/// `k` rounded down to a multiple of 16 (GPoW-2 allows no other).
pub fn tile_reference(keys: &GpuKeys, k: u32, t: TileIndex) -> Tile {
    let k = k / 16 * 16;
    let bytes = |words: [u32; 4]| -> Vec<i8> { words.iter().flat_map(|w| w.to_le_bytes()).map(|b| b as i8).collect() };
    let a: Vec<Vec<i8>> = (0..16)
        .map(|r| (0..k / 16).flat_map(|q| bytes(philox4x32_10([16 * t.ti + r, q, t.p, 0], keys.a))).collect())
        .collect();
    let b: Vec<Vec<i8>> = (0..k).map(|row| bytes(philox4x32_10([row, t.tj, t.p, 0], keys.b))).collect();
    let mut tile = [0i32; 256];
    for r in 0..16 {
        for c in 0..16 {
            tile[16 * r + c] = (0..k as usize).map(|x| i32::from(a[r][x]) * i32::from(b[x][c])).sum();
        }
    }
    tile
}

/// One tile on `isa`, a chunk of the depth at a time; `k` is a validated depth (a multiple of
/// 16), which [`tiles`] checks for callers outside.
pub(crate) fn tile(isa: Isa, keys: &GpuKeys, k: u32, t: TileIndex) -> Tile {
    let k = k as usize;
    let mut a = vec![[0u32; 4]; 16 * CHUNK.min(k) / 16];
    let mut b = vec![[0u32; 4]; CHUNK.min(k)];
    let mut acc = [0i32; 256];
    for t0 in (0..k).step_by(CHUNK) {
        let depth = CHUNK.min(k - t0);
        let lda = depth / 16;
        for r in 0..16 {
            let base = [16 * t.ti + r as u32, (t0 / 16) as u32, t.p, 0];
            philox_x::run(isa, base, 1, keys.a, &mut a[r * lda..(r + 1) * lda]);
        }
        philox_x::run(isa, [t0 as u32, t.tj, t.p, 0], 0, keys.b, &mut b[..depth]);
        tile_kernel::accumulate(isa, &mut acc, &a[..16 * lda], lda, &b[..depth]);
    }
    acc
}

/// The tiles a validator sampled, on `threads` threads; the work and every index are checked
/// first.
pub fn tiles(
    isa: Isa,
    keys: &GpuKeys,
    work: &GpuWork,
    indices: &[TileIndex],
    threads: usize,
) -> Result<Vec<Tile>, TileError> {
    work.validate(keys.g as usize)?;
    for t in indices {
        t.check(work)?;
    }
    Ok(parallel_map(indices.len(), threads, |i| tile(isa, keys, work.k, indices[i])))
}

/// Every tile leaf of product `p`, in the order `ti·(n/16) + tj`, on `threads` threads (split
/// by 16-row bands). `work` is validated work (the challenge's).
pub fn product_leaves(isa: Isa, keys: &GpuKeys, work: &GpuWork, p: u32, threads: usize) -> Vec<Hash> {
    let (k, col_blocks, row_bands) = (work.k as usize, (work.n / 16) as usize, (work.m / 16) as usize);
    let lda = k / 16;
    // B_p as its column blocks, each k blocks (rows) long.
    let mut b = vec![[0u32; 4]; col_blocks * k];
    for (tj, block) in b.chunks_exact_mut(k).enumerate() {
        philox_x::run(isa, [0, tj as u32, p, 0], 0, keys.b, block);
    }
    let leaves = Mutex::new(vec![[0u8; 32]; row_bands * col_blocks]);
    let next = AtomicUsize::new(0);
    run_workers(threads.min(row_bands), || {
        let mut a = vec![[0u32; 4]; 16 * lda];
        let mut band = Vec::with_capacity(col_blocks);
        loop {
            let ti = next.fetch_add(1, Ordering::Relaxed);
            if ti >= row_bands {
                break;
            }
            for (r, row) in a.chunks_exact_mut(lda).enumerate() {
                philox_x::run(isa, [(16 * ti + r) as u32, 0, p, 0], 1, keys.a, row);
            }
            band.clear();
            for (tj, block) in b.chunks_exact(k).enumerate() {
                let mut acc = [0i32; 256];
                tile_kernel::accumulate(isa, &mut acc, &a, lda, block);
                let index = TileIndex { p, ti: ti as u32, tj: tj as u32 };
                band.push(tile_leaf(keys.g, index, &acc));
            }
            leaves.lock().unwrap_or_else(|e| e.into_inner())[ti * col_blocks..(ti + 1) * col_blocks]
                .copy_from_slice(&band);
        }
    });
    leaves.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// Phase A of one GPU: every `R_p` and `R_A,g`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseA {
    pub product_roots: Vec<Hash>,
    pub root: Hash,
}

/// Phase A of GPU `keys.g` on the CPU: products in parallel when there are at least as many as
/// threads, otherwise each product's bands in parallel. `work` is validated work.
pub fn commit(isa: Isa, keys: &GpuKeys, work: &GpuWork, threads: usize) -> PhaseA {
    let threads = threads.max(1);
    let outer = threads.min(work.count as usize);
    let inner = (threads / outer).max(1);
    let product_roots =
        parallel_map(work.count as usize, outer, |p| merkle::root(&product_leaves(isa, keys, work, p as u32, inner)));
    PhaseA { root: root_of(keys.g, &product_roots), product_roots }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpow2::Challenge;

    fn keys_of(c: &Challenge) -> GpuKeys {
        c.gpu_keys()[0]
    }

    /// The whole product by the triple loop over matrices generated whole, cut into tiles: the
    /// specification read another way than [`tile_reference`].
    fn tiles_via_full_gemm(keys: &GpuKeys, work: &GpuWork, p: u32) -> Vec<Tile> {
        let (m, n, k) = (work.m as usize, work.n as usize, work.k as usize);
        let matrix = |rows: usize, cols: usize, key: [u32; 2]| -> Vec<i8> {
            let mut out = Vec::with_capacity(rows * cols);
            for i in 0..rows {
                for q in 0..cols / 16 {
                    for w in philox4x32_10([i as u32, q as u32, p, 0], key) {
                        out.extend(w.to_le_bytes().map(|b| b as i8));
                    }
                }
            }
            out
        };
        let (a, b) = (matrix(m, k, keys.a), matrix(k, n, keys.b));
        let c = |i: usize, j: usize| (0..k).map(|t| i32::from(a[i * k + t]) * i32::from(b[t * n + j])).sum::<i32>();
        let mut out = Vec::new();
        for ti in 0..m / 16 {
            for tj in 0..n / 16 {
                out.push(std::array::from_fn(|x| c(16 * ti + x / 16, 16 * tj + x % 16)));
            }
        }
        out
    }

    #[test]
    fn every_path_gives_the_reference_tile() {
        let c = Challenge::plain(99, 48, 3, 0);
        let keys = keys_of(&c);
        // Depths around the chunk size too: one chunk, several, a partial last one.
        for k in [16, 48, 2048, 2064, 4096 + 32] {
            for t in [TileIndex { p: 0, ti: 0, tj: 0 }, TileIndex { p: 2, ti: 2, tj: 1 }] {
                let expected = tile_reference(&keys, k, t);
                for isa in Isa::all_available() {
                    assert_eq!(tile(isa, &keys, k, t), expected, "{isa:?} k {k} {t:?}");
                }
            }
        }
    }

    #[test]
    fn tiles_agree_with_the_full_product_and_the_prover() {
        let c = Challenge {
            gpus: vec![GpuWork { m: 48, n: 32, k: 80, count: 2, items: 0 }],
            ..Challenge::plain(5, 16, 1, 0)
        };
        let (keys, work) = (keys_of(&c), c.gpus[0]);
        for p in 0..2 {
            let full = tiles_via_full_gemm(&keys, &work, p);
            let indices: Vec<TileIndex> = (0..3).flat_map(|ti| (0..2).map(move |tj| TileIndex { p, ti, tj })).collect();
            for isa in Isa::all_available() {
                assert_eq!(tiles(isa, &keys, &work, &indices, 3).unwrap(), full, "{isa:?} p {p}");
                let leaves = product_leaves(isa, &keys, &work, p, 2);
                let expected: Vec<Hash> = indices.iter().zip(&full).map(|(t, tile)| tile_leaf(0, *t, tile)).collect();
                assert_eq!(leaves, expected, "{isa:?} p {p}");
            }
        }
    }

    #[test]
    fn the_commitment_does_not_depend_on_path_or_threads() {
        let c = Challenge {
            gpus: vec![GpuWork { m: 32, n: 48, k: 64, count: 5, items: 0 }],
            ..Challenge::plain(8, 16, 1, 0)
        };
        let (keys, work) = (keys_of(&c), c.gpus[0]);
        let one = commit(Isa::Scalar, &keys, &work, 1);
        assert_eq!(one.product_roots.len(), 5);
        assert_eq!(one.root, root_of(0, &one.product_roots));
        for isa in Isa::all_available() {
            for threads in [1, 2, 3, 8] {
                assert_eq!(commit(isa, &keys, &work, threads), one, "{isa:?} {threads} threads");
            }
        }
        // One product split by bands.
        let single = GpuWork { count: 1, ..work };
        assert_eq!(commit(Isa::best(), &keys, &single, 4), commit(Isa::Scalar, &keys, &single, 1));
    }

    #[test]
    fn a_changed_value_or_position_changes_the_leaf() {
        let t = TileIndex { p: 1, ti: 2, tj: 3 };
        let tile: Tile = std::array::from_fn(|i| i as i32 - 100);
        let leaf = tile_leaf(0, t, &tile);
        let mut leaves = vec![leaf];
        for i in [0, 17, 255] {
            let mut other = tile;
            other[i] ^= 1;
            leaves.push(tile_leaf(0, t, &other));
        }
        leaves.push(tile_leaf(1, t, &tile));
        leaves.push(tile_leaf(0, TileIndex { p: 2, ..t }, &tile));
        leaves.push(tile_leaf(0, TileIndex { ti: 3, ..t }, &tile));
        leaves.push(tile_leaf(0, TileIndex { tj: 2, ..t }, &tile));
        let n = leaves.len();
        leaves.sort_unstable();
        leaves.dedup();
        assert_eq!(leaves.len(), n);
        assert_ne!(product_leaf(0, 0, &leaf), product_leaf(1, 0, &leaf));
        assert_ne!(product_leaf(0, 0, &leaf), product_leaf(0, 1, &leaf));
    }

    /// GPUs with the same work commit to different roots (their keys differ).
    #[test]
    fn gpus_with_the_same_work_differ() {
        let w = GpuWork { m: 16, n: 16, k: 16, count: 2, items: 0 };
        let c = Challenge { gpus: vec![w, w], ..Challenge::plain(1, 16, 1, 0) };
        let keys = c.gpu_keys();
        let (r0, r1) = (commit(Isa::best(), &keys[0], &w, 1), commit(Isa::best(), &keys[1], &w, 1));
        assert_ne!(r0.root, r1.root);
        assert_ne!(r0.product_roots[0], r1.product_roots[0]);
    }

    #[test]
    fn tiles_outside_the_work_are_refused_by_name() {
        let w = GpuWork { m: 32, n: 48, k: 16, count: 2, items: 0 };
        let keys = keys_of(&Challenge::plain(1, 16, 1, 0));
        let check = |t: TileIndex| tiles(Isa::Scalar, &keys, &w, &[TileIndex { p: 0, ti: 0, tj: 0 }, t], 1);
        assert_eq!(check(TileIndex { p: 2, ti: 0, tj: 0 }), Err(TileError::Product { value: 2, limit: 2 }));
        assert_eq!(check(TileIndex { p: 1, ti: 2, tj: 0 }), Err(TileError::Row { value: 2, limit: 2 }));
        assert_eq!(check(TileIndex { p: 1, ti: 1, tj: 3 }), Err(TileError::Column { value: 3, limit: 3 }));
        assert_eq!(check(TileIndex { p: 1, ti: 1, tj: 2 }).unwrap().len(), 2);
        let shallow = GpuWork { k: 8, ..w };
        assert_eq!(
            tiles(Isa::Scalar, &keys, &shallow, &[], 1),
            Err(TileError::Work(ChallengeError::Dim { gpu: 0, field: "k", value: 8 }))
        );
        assert_eq!(
            TileError::Column { value: 3, limit: 3 }.to_string(),
            "tile tj = 3: the work has 3 tile columns (n / 16)"
        );
    }
}
