//! Phase B (GPOW.md, "Phase B: memory"): the cache, the dataset built from it, and the walk
//! over the dataset's pages after the walk nonce; lane leaves and `R_B,g`.
//!
//! The CPU prover builds the whole dataset ([`Dataset::build`]) and walks it
//! ([`Dataset::walk`]); the validator replays sampled lanes ([`replay`]), computing each item it
//! reads from the cache items it needs (both counter-based). Lanes and items run in lock-step
//! groups of 8 (AVX2) or 16 (AVX-512), one vector lane each; the scalar path is the
//! specification written out plainly, with the `sha2` crate, and the reference.

use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::challenge::{ChallengeError, GpuKeys, GpuWork};
use super::isa::{self, Isa};
use super::par::{parallel_map, run_workers};
use super::sha256_x::CacheHasher;
use super::{fnv, philox_x, pick};
use crate::merkle::{self, Hash};
use crate::philox::philox4x32_10;

/// `N_C`: cache items (64 bytes each, 256 MiB).
pub const CACHE_ITEMS: u64 = 1 << 22;
/// Walk steps per lane.
pub const WALK_STEPS: u32 = 128;
/// Items per lane: `L = N_D / 16`.
pub const ITEMS_PER_LANE: u64 = 16;

/// A cache or dataset item: 16 u32 words.
pub type Item = [u32; 16];
/// A lane's compressed mix: 8 u32 words.
pub type Cmix = [u32; 8];

/// `cache[x] = SHA-256(0x10 ‖ master_g ‖ u32 x ‖ 0x00) ‖ SHA-256(0x10 ‖ master_g ‖ u32 x ‖ 0x01)`,
/// read as 16 u32 LE.
pub fn cache_item(master_g: &Hash, x: u32) -> Item {
    let half = |tag: u8| -> [u8; 32] {
        Sha256::new()
            .chain_update([0x10])
            .chain_update(master_g)
            .chain_update(x.to_le_bytes())
            .chain_update([tag])
            .finalize()
            .into()
    };
    let (lo, hi) = (half(0), half(1));
    std::array::from_fn(|w| {
        let h = if w < 8 { &lo } else { &hi };
        let i = 4 * (w % 8);
        u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]])
    })
}

/// Dataset item `j`, the specification written out (steps 1-3 of GPOW.md), with `cache` giving
/// cache items.
pub fn item_with(key_d: [u32; 2], j: u32, mut cache: impl FnMut(u32) -> Item) -> Item {
    let mut mix = [0u32; 16];
    for q in 0..4 {
        mix[4 * q..4 * q + 4].copy_from_slice(&philox4x32_10([j, q as u32, 0, 0xD0], key_d));
    }
    for t in 0..16 {
        let x = fnv(j ^ t as u32, mix[t]);
        let c = cache(pick(x, CACHE_ITEMS));
        for w in 0..16 {
            mix[w] = fnv(mix[w], c[w]);
        }
    }
    let mut item = [0u32; 16];
    for q in 0..4 {
        let ctr = [mix[4 * q], mix[4 * q + 1], mix[4 * q + 2], mix[4 * q + 3]];
        let key = [mix[(4 * q + 4) % 16] ^ key_d[0], mix[(4 * q + 5) % 16] ^ key_d[1]];
        item[4 * q..4 * q + 4].copy_from_slice(&philox4x32_10(ctr, key));
    }
    item
}

/// Dataset item `j` of GPU `keys.g`, its cache items computed on demand: the reference.
pub fn item_reference(keys: &GpuKeys, j: u32) -> Item {
    item_with(keys.d, j, |x| cache_item(&keys.master_g, x))
}

/// Lane `lane` of the walk, the specification written out: `n_items` is `N_D`, `item` gives
/// dataset items. Returns `cmix`.
pub fn lane_with(walk_key: [u32; 2], n_items: u64, lane: u32, mut item: impl FnMut(u32) -> Item) -> Cmix {
    let mut mix = [0u32; 32];
    for s in 0..8 {
        mix[4 * s..4 * s + 4].copy_from_slice(&philox4x32_10([lane, s as u32, 1, 0x57], walk_key));
    }
    let pages = n_items / 2;
    for a in 0..WALK_STEPS {
        let x = fnv(a ^ lane, mix[(a % 32) as usize]);
        let pg = pick(x, pages);
        let (first, second) = (item(2 * pg), item(2 * pg + 1));
        for w in 0..32 {
            mix[w] = fnv(mix[w], if w < 16 { first[w] } else { second[w - 16] });
        }
    }
    std::array::from_fn(|i| fnv(fnv(fnv(mix[4 * i], mix[4 * i + 1]), mix[4 * i + 2]), mix[4 * i + 3]))
}

/// `SHA-256(0x13 ‖ u32 g ‖ u32 ℓ ‖ cmix as 8 u32 LE)`.
pub fn lane_leaf(g: u32, lane: u32, cmix: &Cmix) -> Hash {
    let mut bytes = [0u8; 9 + 32];
    bytes[0] = 0x13;
    bytes[1..5].copy_from_slice(&g.to_le_bytes());
    bytes[5..9].copy_from_slice(&lane.to_le_bytes());
    for (chunk, v) in bytes[9..].chunks_exact_mut(4).zip(cmix) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    Sha256::digest(bytes).into()
}

/// Items `j[l]` for every lane (structure of arrays: `out[w][l]`), cache items from `hasher`.
#[inline(always)]
fn items_lanes<const L: usize>(hasher: &CacheHasher, key_d: [u32; 2], j: &[u32; L]) -> [[u32; L]; 16] {
    let key = [[key_d[0]; L], [key_d[1]; L]];
    let mut mix = [[0u32; L]; 16];
    for q in 0..4 {
        let mut c = [*j, [q as u32; L], [0; L], [0xD0; L]];
        philox_x::lanes(&mut c, &key);
        mix[4 * q..4 * q + 4].copy_from_slice(&c);
    }
    for t in 0..16 {
        let x: [u32; L] = std::array::from_fn(|l| pick(fnv(j[l] ^ t as u32, mix[t][l]), CACHE_ITEMS));
        let c = hasher.items::<L>(&x);
        for w in 0..16 {
            for l in 0..L {
                mix[w][l] = fnv(mix[w][l], c[w][l]);
            }
        }
    }
    let mut item = [[0u32; L]; 16];
    for q in 0..4 {
        let mut c = [mix[4 * q], mix[4 * q + 1], mix[4 * q + 2], mix[4 * q + 3]];
        let key: [[u32; L]; 2] =
            std::array::from_fn(|h| std::array::from_fn(|l| mix[(4 * q + 4 + h) % 16][l] ^ key_d[h]));
        philox_x::lanes(&mut c, &key);
        item[4 * q..4 * q + 4].copy_from_slice(&c);
    }
    item
}

/// The walk of every lane in `lane` at once; `page` gives each lane's page (32 words).
#[inline(always)]
fn walk_lanes<const L: usize>(
    walk_key: [u32; 2],
    n_items: u64,
    lane: &[u32; L],
    mut page: impl FnMut(&[u32; L]) -> [[u32; L]; 32],
) -> [[u32; L]; 8] {
    let key = [[walk_key[0]; L], [walk_key[1]; L]];
    let mut mix = [[0u32; L]; 32];
    for s in 0..8 {
        let mut c = [*lane, [s as u32; L], [1; L], [0x57; L]];
        philox_x::lanes(&mut c, &key);
        mix[4 * s..4 * s + 4].copy_from_slice(&c);
    }
    for a in 0..WALK_STEPS {
        let pg: [u32; L] = std::array::from_fn(|l| pick(fnv(a ^ lane[l], mix[(a % 32) as usize][l]), n_items / 2));
        let words = page(&pg);
        for w in 0..32 {
            for l in 0..L {
                mix[w][l] = fnv(mix[w][l], words[w][l]);
            }
        }
    }
    std::array::from_fn(|i| {
        std::array::from_fn(|l| fnv(fnv(fnv(mix[4 * i][l], mix[4 * i + 1][l]), mix[4 * i + 2][l]), mix[4 * i + 3][l]))
    })
}

/// Both items of each lane's page, computed (the validator's replay).
#[inline(always)]
fn computed_page<const L: usize>(hasher: &CacheHasher, key_d: [u32; 2], pg: &[u32; L]) -> [[u32; L]; 32] {
    let first = items_lanes::<L>(hasher, key_d, &std::array::from_fn(|l| 2 * pg[l]));
    let second = items_lanes::<L>(hasher, key_d, &std::array::from_fn(|l| 2 * pg[l] + 1));
    std::array::from_fn(|w| if w < 16 { first[w] } else { second[w - 16] })
}

/// Both items of each lane's page, read from the dataset (the prover's walk).
#[inline(always)]
fn stored_page<const L: usize>(items: &[Item], pg: &[u32; L]) -> [[u32; L]; 32] {
    std::array::from_fn(|w| std::array::from_fn(|l| items[2 * pg[l] as usize + w / 16][w % 16]))
}

/// The lock-step groups compiled for each instruction set.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    pub(super) fn items16(hasher: &CacheHasher, key_d: [u32; 2], j: &[u32; 16]) -> [[u32; 16]; 16] {
        items_lanes::<16>(hasher, key_d, j)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn items8(hasher: &CacheHasher, key_d: [u32; 2], j: &[u32; 8]) -> [[u32; 8]; 16] {
        items_lanes::<8>(hasher, key_d, j)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    pub(super) fn replay16(
        hasher: &CacheHasher,
        keys: ([u32; 2], [u32; 2]),
        n: u64,
        lane: &[u32; 16],
    ) -> [[u32; 16]; 8] {
        walk_lanes::<16>(keys.1, n, lane, |pg| computed_page::<16>(hasher, keys.0, pg))
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn replay8(hasher: &CacheHasher, keys: ([u32; 2], [u32; 2]), n: u64, lane: &[u32; 8]) -> [[u32; 8]; 8] {
        walk_lanes::<8>(keys.1, n, lane, |pg| computed_page::<8>(hasher, keys.0, pg))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    pub(super) fn walk16(items: &[Item], walk_key: [u32; 2], lane: &[u32; 16]) -> [[u32; 16]; 8] {
        walk_lanes::<16>(walk_key, items.len() as u64, lane, |pg| stored_page::<16>(items, pg))
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn walk8(items: &[Item], walk_key: [u32; 2], lane: &[u32; 8]) -> [[u32; 8]; 8] {
        walk_lanes::<8>(walk_key, items.len() as u64, lane, |pg| stored_page::<8>(items, pg))
    }
}

/// Runs `group` on `inputs` in lock-step groups of `L` (the last padded with its own last
/// input, the extra results dropped) and writes one output per input.
fn in_groups<const L: usize, I: Copy, O>(inputs: &[I], out: &mut [O], mut group: impl FnMut(&[I; L]) -> [O; L]) {
    for (chunk, dst) in inputs.chunks(L).zip(out.chunks_mut(L)) {
        let padded: [I; L] = std::array::from_fn(|l| chunk[l.min(chunk.len() - 1)]);
        for (d, v) in dst.iter_mut().zip(group(&padded)) {
            *d = v;
        }
    }
}

/// Lanes to structure-of-arrays results, back to one array per lane.
fn per_lane<const L: usize, const W: usize>(soa: [[u32; L]; W]) -> [[u32; W]; L] {
    std::array::from_fn(|l| std::array::from_fn(|w| soa[w][l]))
}

/// Items `first..first + out.len()` on `isa`.
fn items_into(isa: Isa, keys: &GpuKeys, hasher: &CacheHasher, first: u32, out: &mut [Item]) {
    let js: Vec<u32> = (0..out.len() as u32).map(|i| first + i).collect();
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa::has_avx512() => in_groups::<16, _, _>(&js, out, |j| {
            // SAFETY: the CPU has AVX-512 F, BW, VL and DQ (checked on this line's arm).
            #[allow(unsafe_code)]
            per_lane(unsafe { x86::items16(hasher, keys.d, j) })
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa::has_avx2() => in_groups::<8, _, _>(&js, out, |j| {
            // SAFETY: the CPU has AVX2 (checked on this line's arm).
            #[allow(unsafe_code)]
            per_lane(unsafe { x86::items8(hasher, keys.d, j) })
        }),
        _ => {
            for (o, j) in out.iter_mut().zip(js) {
                *o = item_reference(keys, j);
            }
        }
    }
}

/// A lane outside the walk, or work without phase B or that GPOW.md does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaneError {
    #[error(transparent)]
    Work(#[from] ChallengeError),
    #[error("items = 0: this GPU has no phase B")]
    NoPhaseB,
    #[error("lane = {value}: the walk has {limit} lanes (items / 16)")]
    Lane { value: u32, limit: u64 },
}

/// Units of work handed to a thread: items per unit of the build, lanes per unit of the walk.
const BUILD_UNIT: usize = 1024;
const WALK_UNIT: usize = 64;

/// A GPU's dataset in memory (the CPU prover's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    g: u32,
    items: Vec<Item>,
}

impl Dataset {
    /// Builds all `work.items` items (`items > 0`, checked by the challenge) on `threads` threads.
    /// The caller has checked that `items × 64` bytes fit ([`super::prove::memory_needed`]).
    pub fn build(isa: Isa, keys: &GpuKeys, work: &GpuWork, threads: usize) -> Result<Self, LaneError> {
        work.validate(keys.g as usize)?;
        if work.items == 0 {
            return Err(LaneError::NoPhaseB);
        }
        let hasher = CacheHasher::new(&keys.master_g);
        let mut items = vec![[0u32; 16]; work.items as usize];
        let units = Mutex::new(items.chunks_mut(BUILD_UNIT).enumerate());
        run_workers(threads, || {
            loop {
                let next = units.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some((u, chunk)) = next else { break };
                items_into(isa, keys, &hasher, (u * BUILD_UNIT) as u32, chunk);
            }
        });
        Ok(Self { g: keys.g, items })
    }

    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// The cmix of every lane, in order, on `threads` threads.
    pub fn walk(&self, isa: Isa, walk_key: [u32; 2], threads: usize) -> Vec<Cmix> {
        let lanes: Vec<u32> = (0..(self.items.len() as u64 / ITEMS_PER_LANE) as u32).collect();
        let units: Vec<&[u32]> = lanes.chunks(WALK_UNIT).collect();
        let n = self.items.len() as u64;
        let items = &self.items;
        parallel_map(units.len(), threads, |u| {
            let mut out = vec![[0u32; 8]; units[u].len()];
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 if isa::has_avx512() => in_groups::<16, _, _>(units[u], &mut out, |l| {
                    // SAFETY: the CPU has AVX-512 F, BW, VL and DQ (checked on this line's arm).
                    #[allow(unsafe_code)]
                    per_lane(unsafe { x86::walk16(items, walk_key, l) })
                }),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 if isa::has_avx2() => in_groups::<8, _, _>(units[u], &mut out, |l| {
                    // SAFETY: the CPU has AVX2 (checked on this line's arm).
                    #[allow(unsafe_code)]
                    per_lane(unsafe { x86::walk8(items, walk_key, l) })
                }),
                _ => {
                    for (o, &lane) in out.iter_mut().zip(units[u]) {
                        *o = lane_with(walk_key, n, lane, |j| items[j as usize]);
                    }
                }
            }
            out
        })
        .into_iter()
        .flatten()
        .collect()
    }

    /// Every lane leaf, in order.
    pub fn lane_leaves(&self, isa: Isa, walk_key: [u32; 2], threads: usize) -> Vec<Hash> {
        self.walk(isa, walk_key, threads).iter().enumerate().map(|(l, c)| lane_leaf(self.g, l as u32, c)).collect()
    }
}

/// The validator's side: the cmix of each of `lanes`, every item they read computed from the
/// cache items it needs, on `threads` threads. Every lane is checked first.
pub fn replay(
    isa: Isa,
    keys: &GpuKeys,
    work: &GpuWork,
    walk_key: [u32; 2],
    lanes: &[u32],
    threads: usize,
) -> Result<Vec<Cmix>, LaneError> {
    work.validate(keys.g as usize)?;
    if work.items == 0 {
        return Err(LaneError::NoPhaseB);
    }
    let limit = work.items / ITEMS_PER_LANE;
    if let Some(&value) = lanes.iter().find(|&&l| u64::from(l) >= limit) {
        return Err(LaneError::Lane { value, limit });
    }
    let hasher = CacheHasher::new(&keys.master_g);
    let n = work.items;
    // One group of lanes per unit: 16 lanes share the vectors, threads share the groups.
    let unit = match isa {
        Isa::Avx512 => 16,
        _ => 8,
    };
    let units: Vec<&[u32]> = lanes.chunks(unit).collect();
    Ok(parallel_map(units.len(), threads, |u| {
        let mut out = vec![[0u32; 8]; units[u].len()];
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if isa::has_avx512() => in_groups::<16, _, _>(units[u], &mut out, |l| {
                // SAFETY: the CPU has AVX-512 F, BW, VL and DQ (checked on this line's arm).
                #[allow(unsafe_code)]
                per_lane(unsafe { x86::replay16(&hasher, (keys.d, walk_key), n, l) })
            }),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if isa::has_avx2() => in_groups::<8, _, _>(units[u], &mut out, |l| {
                // SAFETY: the CPU has AVX2 (checked on this line's arm).
                #[allow(unsafe_code)]
                per_lane(unsafe { x86::replay8(&hasher, (keys.d, walk_key), n, l) })
            }),
            _ => {
                for (o, &lane) in out.iter_mut().zip(units[u]) {
                    *o = lane_with(walk_key, n, lane, |j| item_reference(keys, j));
                }
            }
        }
        out
    })
    .into_iter()
    .flatten()
    .collect())
}

/// Phase B of one GPU: every lane leaf and `R_B,g`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseB {
    pub lane_leaves: Vec<Hash>,
    pub root: Hash,
}

/// Phase B of GPU `keys.g` on the CPU: build, then walk after `walk_nonce`.
pub fn commit(
    isa: Isa,
    keys: &GpuKeys,
    work: &GpuWork,
    walk_nonce: &[u8; 32],
    threads: usize,
) -> Result<PhaseB, LaneError> {
    let dataset = Dataset::build(isa, keys, work, threads)?;
    let lane_leaves = dataset.lane_leaves(isa, keys.walk_key(walk_nonce), threads);
    Ok(PhaseB { root: merkle::root(&lane_leaves), lane_leaves })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpow2::Challenge;

    fn setup(items: u64) -> (GpuKeys, GpuWork) {
        let c = Challenge::plain(12345, 16, 1, items);
        (c.gpu_keys()[0], c.gpus[0])
    }

    #[test]
    fn every_path_builds_the_reference_items() {
        let (keys, work) = setup(64);
        let expected: Vec<Item> = (0..64).map(|j| item_reference(&keys, j)).collect();
        for isa in Isa::all_available() {
            for threads in [1, 3] {
                let d = Dataset::build(isa, &keys, &work, threads).unwrap();
                assert_eq!(d.items(), &expected[..], "{isa:?} {threads} threads");
            }
        }
        // Items far from 0, where j ⊕ t and the counters use high bits.
        let hasher = CacheHasher::new(&keys.master_g);
        for isa in Isa::all_available() {
            let first = u32::MAX - 20;
            let mut out = vec![[0u32; 16]; 20];
            items_into(isa, &keys, &hasher, first, &mut out);
            for (i, item) in out.iter().enumerate() {
                assert_eq!(*item, item_reference(&keys, first + i as u32), "{isa:?} item {}", first + i as u32);
            }
        }
    }

    #[test]
    fn walk_and_replay_agree_on_every_path() {
        let (keys, work) = setup(256);
        let walk_key = keys.walk_key(&[7; 32]);
        let d = Dataset::build(Isa::Scalar, &keys, &work, 2).unwrap();
        let reference = d.walk(Isa::Scalar, walk_key, 1);
        assert_eq!(reference.len(), 16);
        let lanes: Vec<u32> = vec![15, 0, 3, 3, 9, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14];
        for isa in Isa::all_available() {
            for threads in [1, 2] {
                assert_eq!(d.walk(isa, walk_key, threads), reference, "walk {isa:?} {threads} threads");
                let replayed = replay(isa, &keys, &work, walk_key, &lanes, threads).unwrap();
                let expected: Vec<Cmix> = lanes.iter().map(|&l| reference[l as usize]).collect();
                assert_eq!(replayed, expected, "replay {isa:?} {threads} threads");
            }
        }
    }

    #[test]
    fn a_wrong_item_changes_every_lane_that_reads_it() {
        let (keys, work) = setup(64);
        let walk_key = keys.walk_key(&[0; 32]);
        let d = Dataset::build(Isa::best(), &keys, &work, 1).unwrap();
        let honest: Vec<Cmix> = (0..4).map(|l| lane_with(walk_key, 64, l, |j| d.items()[j as usize])).collect();
        for bad in [0u32, 17, 63] {
            for lane in 0..4u32 {
                let mut touched = false;
                let cheat = lane_with(walk_key, 64, lane, |j| {
                    let mut item = d.items()[j as usize];
                    if j == bad {
                        touched = true;
                        item[5] ^= 1;
                    }
                    item
                });
                assert_eq!(cheat != honest[lane as usize], touched, "lane {lane} item {bad}");
            }
        }
    }

    #[test]
    fn the_walk_nonce_and_the_gpu_change_the_root() {
        let w = GpuWork { m: 16, n: 16, k: 16, count: 1, items: 64 };
        let c = Challenge { gpus: vec![w, w], ..Challenge::plain(1, 16, 1, 0) };
        let keys = c.gpu_keys();
        let isa = Isa::best();
        let r = |g: usize, nonce: u8| commit(isa, &keys[g], &w, &[nonce; 32], 1).unwrap().root;
        assert_ne!(r(0, 0), r(0, 1));
        assert_ne!(r(0, 0), r(1, 0));
        assert_eq!(r(1, 1), r(1, 1));
        let b = commit(isa, &keys[0], &w, &[0; 32], 2).unwrap();
        assert_eq!(b.lane_leaves.len(), 4);
        assert_eq!(b.root, merkle::root(&b.lane_leaves));
    }

    #[test]
    fn lanes_and_work_without_phase_b_are_refused() {
        let (keys, work) = setup(64);
        let walk_key = keys.walk_key(&[0; 32]);
        assert_eq!(
            replay(Isa::Scalar, &keys, &work, walk_key, &[0, 4], 1),
            Err(LaneError::Lane { value: 4, limit: 4 })
        );
        let none = GpuWork { items: 0, ..work };
        assert_eq!(replay(Isa::Scalar, &keys, &none, walk_key, &[0], 1), Err(LaneError::NoPhaseB));
        assert_eq!(Dataset::build(Isa::Scalar, &keys, &none, 1), Err(LaneError::NoPhaseB));
        assert_eq!(replay(Isa::Scalar, &keys, &work, walk_key, &[], 1), Ok(vec![]));
        let odd = GpuWork { items: 48, ..work };
        let refused = Err(LaneError::Work(ChallengeError::Items { gpu: 0, value: 48 }));
        assert_eq!(replay(Isa::Scalar, &keys, &odd, walk_key, &[0], 1), refused);
        assert_eq!(Dataset::build(Isa::Scalar, &keys, &odd, 1).map(|_| ()), refused.map(|_: Vec<Cmix>| ()));
    }

    #[test]
    fn the_lane_leaf_binds_gpu_lane_and_cmix() {
        let cmix: Cmix = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut other = cmix;
        other[7] ^= 1;
        let leaves = [lane_leaf(0, 0, &cmix), lane_leaf(1, 0, &cmix), lane_leaf(0, 1, &cmix), lane_leaf(0, 0, &other)];
        for i in 0..4 {
            for j in 0..i {
                assert_ne!(leaves[i], leaves[j]);
            }
        }
    }
}
