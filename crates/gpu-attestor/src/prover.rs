//! Provers of a challenge, step by step as the protocol drives them ([`Prover`]): phase A of
//! every GPU, the datasets, the walk after the validator's nonce, and the openings of a sample.
//! [`CpuProver`] claims no GPU: it is the reference prover for tests and for `--backend cpu`;
//! the CUDA backend's is `gpu::backend::GpuProver`.
//!
//! It keeps what the openings need: every `R_p` (a sampled product's tiles are recomputed, which
//! costs one product per sampled product) and every lane leaf (`items / 16` hashes per GPU).

use std::collections::BTreeMap;

use crate::gpow2::phase_a;
use crate::gpow2::phase_b::{Dataset, LaneError};
use crate::gpow2::{Challenge, GpuKeys, GpuWork, Isa};
use crate::merkle::{Hash, Tree};
use crate::sample::GpuSample;
use crate::verify::{GpuCommitment, GpuOpenings};

/// Why a prover could not do a step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProverError {
    /// The challenge asks for what this prover cannot do (more GPUs or memory than it has).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Lane(#[from] LaneError),
    /// A GPU failed mid-step.
    #[error("GPU {gpu} ({device}): {source}")]
    Device { gpu: usize, device: String, source: crate::gpu::DeviceError },
}

/// A prover as the protocol and the guide's mode drive it: `start` with a validated challenge,
/// then the steps in order.
pub trait Prover: Send + std::fmt::Debug {
    /// Takes a new challenge (validated by the caller); refuses one it cannot prove.
    fn start(&mut self, challenge: &Challenge) -> Result<(), ProverError>;
    /// Phase A of every GPU.
    fn phase_a(&mut self) -> Result<(), ProverError>;
    /// Every dataset, in memory.
    fn build(&mut self) -> Result<(), ProverError>;
    /// The walk of every dataset after `walk_nonce`.
    fn walk(&mut self, walk_nonce: &[u8; 32]) -> Result<(), ProverError>;
    /// `R_A,g` with every `R_p`, and `R_B,g` once walked.
    fn commitments(&self) -> Vec<GpuCommitment>;
    /// The openings of a sample the caller has checked (`sample::check`).
    fn open(&mut self, samples: &[GpuSample]) -> Result<Vec<GpuOpenings>, ProverError>;

    /// The roots of `R_B,g` alone, for `commit_b`.
    fn roots_b(&self) -> Vec<Option<Hash>> {
        self.commitments().into_iter().map(|c| c.root_b).collect()
    }
}

#[derive(Debug)]
pub struct CpuProver {
    challenge: Challenge,
    isa: Isa,
    threads: usize,
    keys: Vec<GpuKeys>,
    product_roots: Vec<Vec<Hash>>,
    datasets: Vec<Option<Dataset>>,
    lane_trees: Vec<Option<Tree>>,
    /// Bytes of host memory a challenge may take ([`Prover::start`] refuses more).
    memory_limit: u64,
    /// Tile leaves replaced by tests that play a cheating prover, per (GPU, product).
    #[cfg(test)]
    corrupted: BTreeMap<(usize, u32), Vec<Hash>>,
}

/// Bytes the CPU prover holds at once for a challenge on `threads` threads: the larger of phase
/// A's products in flight and every dataset with its lane tree, plus the product roots.
pub fn memory_needed(challenge: &Challenge, threads: usize) -> u128 {
    let threads = threads.max(1) as u128;
    let phase_a = |w: &GpuWork| {
        let (m, n, k) = (u128::from(w.m), u128::from(w.n), u128::from(w.k));
        threads.min(u128::from(w.count)) * (k * n + (m / 16) * (n / 16) * 32) + threads * 16 * k
    };
    let largest_phase_a = challenge.gpus.iter().map(phase_a).max().unwrap_or(0);
    // 64 bytes an item, and a lane tree of about 2 × items/16 hashes of 32 bytes.
    let datasets: u128 = challenge.gpus.iter().map(|w| u128::from(w.items) * 68).sum();
    let roots: u128 = challenge.gpus.iter().map(|w| u128::from(w.count) * 32).sum();
    largest_phase_a.max(datasets) + roots
}

impl CpuProver {
    /// A prover for a validated challenge.
    pub fn new(challenge: Challenge, isa: Isa, threads: usize) -> Self {
        let keys = challenge.gpu_keys();
        let g = challenge.gpus.len();
        Self {
            challenge,
            isa,
            threads: threads.max(1),
            keys,
            product_roots: vec![Vec::new(); g],
            datasets: (0..g).map(|_| None).collect(),
            lane_trees: (0..g).map(|_| None).collect(),
            memory_limit: u64::MAX,
            #[cfg(test)]
            corrupted: BTreeMap::new(),
        }
    }

    /// An idle prover that may use `memory_limit` bytes: no challenge yet ([`Prover::start`]
    /// gives it one).
    pub fn idle(isa: Isa, threads: usize, memory_limit: u64) -> Self {
        Self { memory_limit, ..Self::new(Challenge::plain(0, 16, 1, 0), isa, threads) }
    }

    /// Phase A of every GPU, one after another, each on every thread.
    pub fn phase_a(&mut self) {
        for (g, work) in self.challenge.gpus.iter().enumerate() {
            self.product_roots[g] = phase_a::commit(self.isa, &self.keys[g], work, self.threads).product_roots;
        }
    }

    /// Every dataset in memory.
    pub fn build(&mut self) -> Result<(), LaneError> {
        for (g, work) in self.challenge.gpus.iter().enumerate() {
            if work.items > 0 {
                self.datasets[g] = Some(Dataset::build(self.isa, &self.keys[g], work, self.threads)?);
            }
        }
        Ok(())
    }

    /// The walk of every dataset after `walk_nonce`.
    pub fn walk(&mut self, walk_nonce: &[u8; 32]) {
        for (g, dataset) in self.datasets.iter().enumerate() {
            if let Some(d) = dataset {
                let leaves = d.lane_leaves(self.isa, self.keys[g].walk_key(walk_nonce), self.threads);
                self.lane_trees[g] = Some(Tree::new(leaves));
            }
        }
    }

    /// `R_A,g` with every `R_p`, and `R_B,g` once walked.
    pub fn commitments(&self) -> Vec<GpuCommitment> {
        (0..self.challenge.gpus.len())
            .map(|g| GpuCommitment {
                root_a: phase_a::root_of(g as u32, &self.product_roots[g]),
                product_roots: self.product_roots[g].clone(),
                root_b: self.lane_trees[g].as_ref().map(Tree::root),
            })
            .collect()
    }

    /// The roots of `R_B,g` alone, for `commit_b`.
    pub fn roots_b(&self) -> Vec<Option<Hash>> {
        self.lane_trees.iter().map(|t| t.as_ref().map(Tree::root)).collect()
    }

    /// The leaves of product `p` of GPU `g`, recomputed.
    fn product_leaves(&self, g: usize, p: u32) -> Vec<Hash> {
        #[cfg(test)]
        if let Some(leaves) = self.corrupted.get(&(g, p)) {
            return leaves.clone();
        }
        phase_a::product_leaves(self.isa, &self.keys[g], &self.challenge.gpus[g], p, self.threads)
    }

    /// The paths of a sample the caller has checked (`sample::check`): each sampled product is
    /// recomputed once, and lane paths come from the lane trees.
    pub fn open(&self, samples: &[GpuSample]) -> Vec<GpuOpenings> {
        samples
            .iter()
            .enumerate()
            .map(|(g, s)| {
                let columns = (self.challenge.gpus[g].n / 16) as usize;
                let mut products: BTreeMap<u32, Tree> = BTreeMap::new();
                for t in &s.tiles {
                    products.entry(t.p).or_insert_with(|| Tree::new(self.product_leaves(g, t.p)));
                }
                let tile_paths =
                    s.tiles.iter().map(|t| products[&t.p].path(t.ti as usize * columns + t.tj as usize)).collect();
                let lane_paths = match &self.lane_trees[g] {
                    Some(tree) => s.lanes.iter().map(|&l| tree.path(l as usize)).collect(),
                    None => Vec::new(),
                };
                GpuOpenings { tile_paths, lane_paths }
            })
            .collect()
    }

    /// Plays a prover that skipped tile `t` of GPU `g`: its leaf becomes garbage, and `R_p` is
    /// the root over the garbage (a consistent commitment to wrong work).
    #[cfg(test)]
    pub fn corrupt_tile(&mut self, g: usize, t: phase_a::TileIndex) {
        let mut leaves = self.product_leaves(g, t.p);
        let columns = (self.challenge.gpus[g].n / 16) as usize;
        leaves[t.ti as usize * columns + t.tj as usize] = [0xEE; 32];
        self.product_roots[g][t.p as usize] = crate::merkle::root(&leaves);
        self.corrupted.insert((g, t.p), leaves);
    }
}

impl Prover for CpuProver {
    fn start(&mut self, challenge: &Challenge) -> Result<(), ProverError> {
        let needed = memory_needed(challenge, self.threads);
        let available = self.memory_limit;
        if needed > u128::from(available) {
            return Err(ProverError::Refused(format!(
                "the work needs {} MiB of memory on the CPU with {} thread(s); {} MiB are available",
                needed >> 20,
                self.threads,
                available >> 20
            )));
        }
        *self = Self { memory_limit: self.memory_limit, ..Self::new(challenge.clone(), self.isa, self.threads) };
        Ok(())
    }

    fn phase_a(&mut self) -> Result<(), ProverError> {
        CpuProver::phase_a(self);
        Ok(())
    }

    fn build(&mut self) -> Result<(), ProverError> {
        Ok(CpuProver::build(self)?)
    }

    fn walk(&mut self, walk_nonce: &[u8; 32]) -> Result<(), ProverError> {
        CpuProver::walk(self, walk_nonce);
        Ok(())
    }

    fn commitments(&self) -> Vec<GpuCommitment> {
        CpuProver::commitments(self)
    }

    fn open(&mut self, samples: &[GpuSample]) -> Result<Vec<GpuOpenings>, ProverError> {
        Ok(CpuProver::open(self, samples))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpow2::prove;

    /// The step-by-step prover gives the one-call reference's roots.
    #[test]
    fn steps_give_the_reference_roots() {
        let w = GpuWork { m: 32, n: 16, k: 32, count: 3, items: 64 };
        let c = Challenge { gpus: vec![w, GpuWork { items: 0, ..w }], ..Challenge::plain(8, 16, 1, 0) };
        let mut p = CpuProver::new(c.clone(), Isa::best(), 2);
        p.phase_a();
        p.build().unwrap();
        p.walk(&[3; 32]);
        let reference = prove::prove(&c, &[3; 32], Isa::Scalar, 1, u64::MAX).unwrap();
        for (got, want) in p.commitments().iter().zip(&reference.gpus) {
            assert_eq!((got.root_a, &got.product_roots, got.root_b), (want.root_a, &want.product_roots, want.root_b));
        }
        assert_eq!(p.roots_b(), vec![reference.gpus[0].root_b, None]);
    }

    #[test]
    fn memory_counts_every_dataset_at_once() {
        let w = GpuWork { m: 16, n: 16, k: 16, count: 1, items: 1 << 20 };
        let one = Challenge { gpus: vec![w], ..Challenge::plain(1, 16, 1, 0) };
        let two = Challenge { gpus: vec![w, w], ..one.clone() };
        assert!(memory_needed(&two, 1) > memory_needed(&one, 1) + (60 << 20));
    }
}
