//! The validator's side: choose a sample, then check openings against the commitment with
//! Freivalds' algorithm, on the CPU, in O(n²) per sampled product instead of O(n³).

use sha2::{Digest, Sha256};

use crate::gemm;
use crate::merkle::{self, Hash};
use crate::opening::{Commitment, ProductOpening, ProductSample};
use crate::params::Params;

/// Products checked per challenge (all of them when there are fewer).
pub const SAMPLED_PRODUCTS: usize = 16;
/// Rows opened per sampled product.
pub const OPENED_ROWS: usize = 4;

/// Bits of each entry of `r`, so that A(Br) fits i64: 20 up to k = 4096, 16 up to 32768.
pub fn vector_bits(k: u32) -> u32 {
    if k <= 4096 { 20 } else { 16 }
}

/// Why a proof is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("commitment lists {got} product roots, the challenge has {expected} products")]
    RootCount { got: usize, expected: u32 },
    #[error("the product roots do not hash to the committed root")]
    Root,
    #[error("{got} openings for {expected} sampled products")]
    OpeningCount { got: usize, expected: usize },
    #[error("sampled product {product}: not a product of the challenge, or r does not have n entries")]
    BadSample { product: u32 },
    #[error("opening {position} is for product {got}, product {expected} was sampled")]
    WrongProduct { position: usize, got: u32, expected: u32 },
    #[error("product {product}: y has {got} entries, expected {expected}")]
    YLength { product: u32, got: usize, expected: u32 },
    #[error("product {product}: C·r differs from A(Br) at row {row} (Freivalds)")]
    Freivalds { product: u32, row: usize },
    #[error("product {product}: rows {got:?} opened, rows {expected:?} were sampled")]
    Rows { product: u32, got: Vec<u32>, expected: Vec<u32> },
    #[error("product {product} row {row}: {got} values, expected {expected}")]
    RowLength { product: u32, row: u32, got: usize, expected: u32 },
    #[error("product {product} row {row}: its Merkle path does not reach R_{product}")]
    Path { product: u32, row: u32 },
    #[error("product {product} row {row}: row·r differs from y[{row}]")]
    RowDot { product: u32, row: u32 },
}

/// A deterministic byte stream: SHA-256(seed ‖ u64 counter) blocks.
struct Stream {
    seed: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl Stream {
    fn new(seed: [u8; 32]) -> Self {
        Self { seed, counter: 0, block: [0; 32], used: 32 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.used == 32 {
            self.block =
                Sha256::new().chain_update(self.seed).chain_update(self.counter.to_le_bytes()).finalize().into();
            self.counter += 1;
            self.used = 0;
        }
        let word = u32::from_le_bytes(self.block[self.used..self.used + 4].try_into().unwrap_or([0; 4]));
        self.used += 4;
        word
    }

    /// Uniform in [0, bound), by rejection.
    fn below(&mut self, bound: u32) -> u32 {
        let zone = u32::MAX - u32::MAX % bound;
        loop {
            let v = self.next_u32();
            if v < zone {
                return v % bound;
            }
        }
    }
}

/// The sample drawn from a 32-byte seed: distinct products, distinct rows, vectors of
/// `vector_bits(k)`-bit entries. Interactive validators seed it from the OS; non-interactive
/// mode from `SHA-256(root ‖ nonce)` (see [`fiat_shamir_seed`]).
pub fn sample(params: &Params, seed: [u8; 32]) -> Vec<ProductSample> {
    let mut stream = Stream::new(seed);
    let mask = (1u32 << vector_bits(params.k)) - 1;
    let mut products = distinct(&mut stream, params.count, SAMPLED_PRODUCTS);
    products.sort_unstable();
    products
        .into_iter()
        .map(|index| {
            let r = (0..params.n).map(|_| stream.next_u32() & mask).collect();
            let mut rows = distinct(&mut stream, params.m, OPENED_ROWS);
            rows.sort_unstable();
            ProductSample { index, r, rows }
        })
        .collect()
}

fn distinct(stream: &mut Stream, bound: u32, want: usize) -> Vec<u32> {
    let want = want.min(bound as usize);
    let mut picked = Vec::with_capacity(want);
    while picked.len() < want {
        let v = stream.below(bound);
        if !picked.contains(&v) {
            picked.push(v);
        }
    }
    picked
}

/// `SHA-256(root ‖ nonce)`: the sample seed of non-interactive mode. Weaker than an interactive
/// sample: a prover can grind roots until it likes the sample.
pub fn fiat_shamir_seed(root: &Hash, nonce: &[u8; 32]) -> [u8; 32] {
    Sha256::new().chain_update(root).chain_update(nonce).finalize().into()
}

/// Checks the commitment's shape and root.
pub fn check_commitment(params: &Params, commitment: &Commitment) -> Result<(), VerifyError> {
    if commitment.product_roots.len() != params.count as usize {
        return Err(VerifyError::RootCount { got: commitment.product_roots.len(), expected: params.count });
    }
    if Commitment::root_of(&commitment.product_roots) != commitment.root {
        return Err(VerifyError::Root);
    }
    Ok(())
}

/// Checks openings of `samples` against `commitment`: regenerates A_p and B_p, checks
/// `A(Br) == y` and every opened row against its path, `R_p` and `y`.
pub fn check_openings(
    params: &Params,
    commitment: &Commitment,
    samples: &[ProductSample],
    openings: &[ProductOpening],
) -> Result<(), VerifyError> {
    check_commitment(params, commitment)?;
    if openings.len() != samples.len() {
        return Err(VerifyError::OpeningCount { got: openings.len(), expected: samples.len() });
    }
    let keys = params.keys();
    let (m, n, k) = (params.m as usize, params.n as usize, params.k as usize);
    let mut a = vec![0i8; m * k];
    let mut b = vec![0i8; k * n];
    let mut buf = Vec::new();
    for (position, (sample, opening)) in samples.iter().zip(openings).enumerate() {
        let p = sample.index;
        // A report's samples are data like the rest: an interactive one was chosen by the
        // validator, but whoever verifies the report later must not trust their shape.
        if p >= params.count || sample.r.len() != n {
            return Err(VerifyError::BadSample { product: p });
        }
        if opening.index != p {
            return Err(VerifyError::WrongProduct { position, got: opening.index, expected: p });
        }
        if opening.y.len() != m {
            return Err(VerifyError::YLength { product: p, got: opening.y.len(), expected: params.m });
        }
        gemm::generate(params.m, params.k, p, keys.0, &mut a);
        gemm::generate(params.k, params.n, p, keys.1, &mut b);
        let br: Vec<i64> = b
            .chunks_exact(n)
            .map(|row| row.iter().zip(&sample.r).map(|(&x, &r)| i64::from(x) * i64::from(r)).sum())
            .collect();
        for (i, arow) in a.chunks_exact(k).enumerate() {
            let abr: i64 = arow.iter().zip(&br).map(|(&x, &v)| i64::from(x) * v).sum();
            if abr != opening.y[i] {
                return Err(VerifyError::Freivalds { product: p, row: i });
            }
        }
        let opened: Vec<u32> = opening.rows.iter().map(|r| r.index).collect();
        if opened != sample.rows {
            return Err(VerifyError::Rows { product: p, got: opened, expected: sample.rows.clone() });
        }
        let product_root = commitment.product_roots[p as usize];
        for row in &opening.rows {
            if row.values.len() != n {
                return Err(VerifyError::RowLength {
                    product: p,
                    row: row.index,
                    got: row.values.len(),
                    expected: params.n,
                });
            }
            let leaf = merkle::leaf(p, row.index, &row.values, &mut buf);
            if merkle::root_from_path(leaf, row.index as usize, m, &row.path) != Some(product_root) {
                return Err(VerifyError::Path { product: p, row: row.index });
            }
            let dot: i64 = row.values.iter().zip(&sample.r).map(|(&c, &r)| i64::from(c) * i64::from(r)).sum();
            if dot != opening.y[row.index as usize] {
                return Err(VerifyError::RowDot { product: p, row: row.index });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prove::{commit, open};

    fn honest(params: &Params) -> (Commitment, Vec<ProductSample>, Vec<ProductOpening>) {
        let commitment = commit(params, 2);
        let samples = sample(params, fiat_shamir_seed(&commitment.root, &params.nonce));
        let openings = samples.iter().map(|s| open(params, s, 2)).collect();
        (commitment, samples, openings)
    }

    #[test]
    fn accepts_honest_work_and_rejects_tampering() {
        let params = Params::plain(99, 32, 20);
        let (commitment, samples, openings) = honest(&params);
        assert_eq!(samples.len(), SAMPLED_PRODUCTS);
        check_openings(&params, &commitment, &samples, &openings).unwrap();

        // A single flipped element of C shows in y: Freivalds rejects it.
        let mut bad = openings.clone();
        bad[3].y[5] += 1;
        assert!(matches!(
            check_openings(&params, &commitment, &samples, &bad),
            Err(VerifyError::Freivalds { row: 5, .. })
        ));

        // A flipped element in an opened row: the path no longer reaches R_p.
        let mut bad = openings.clone();
        bad[0].rows[1].values[0] ^= 1;
        assert!(matches!(check_openings(&params, &commitment, &samples, &bad), Err(VerifyError::Path { .. })));

        // Two rows swapped: each lands on the other's leaf index.
        let mut bad = openings.clone();
        let (r0, r1) = (bad[1].rows[0].values.clone(), bad[1].rows[1].values.clone());
        bad[1].rows[0].values = r1;
        bad[1].rows[1].values = r0;
        assert!(matches!(check_openings(&params, &commitment, &samples, &bad), Err(VerifyError::Path { .. })));

        // A product root changed after the fact.
        let mut bad_commitment = commitment.clone();
        bad_commitment.product_roots[0][0] ^= 1;
        assert_eq!(check_openings(&params, &bad_commitment, &samples, &openings), Err(VerifyError::Root));

        // Openings of other products than sampled.
        let mut bad = openings.clone();
        bad.swap(0, 1);
        assert!(matches!(check_openings(&params, &commitment, &samples, &bad), Err(VerifyError::WrongProduct { .. })));
        assert!(matches!(
            check_openings(&params, &commitment, &samples, &openings[1..]),
            Err(VerifyError::OpeningCount { .. })
        ));
    }

    #[test]
    fn a_wrong_product_fails_freivalds_even_with_consistent_commitment() {
        // The prover computes product 0 from the wrong seed, commits to it consistently: the
        // rows and paths agree with R_0, but A(Br) != y.
        let params = Params::plain(5, 16, 1);
        let other = Params::plain(6, 16, 1);
        let commitment = commit(&other, 1);
        let samples = sample(&params, [7; 32]);
        let openings: Vec<_> = samples.iter().map(|s| open(&other, s, 1)).collect();
        assert!(matches!(
            check_openings(&params, &commitment, &samples, &openings),
            Err(VerifyError::Freivalds { .. })
        ));
    }

    #[test]
    fn samples_are_distinct_bounded_and_deterministic() {
        let params = Params::plain(1, 4096 + 16, 3);
        let s = sample(&params, [1; 32]);
        assert_eq!(s.len(), 3);
        assert!(s.iter().all(|p| p.r.iter().all(|&r| r < 1 << 16)));
        assert!(s.iter().all(|p| p.rows.len() == OPENED_ROWS && p.rows.windows(2).all(|w| w[0] < w[1])));
        assert_eq!(s, sample(&params, [1; 32]));
        assert_ne!(s, sample(&params, [2; 32]));
    }
}
