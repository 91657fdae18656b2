//! The prover on the CPU: compute every product, commit to its rows, and open sampled products
//! and rows on request. The CPU reference that every GPU kernel must match bit for bit.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::gemm;
use crate::merkle::{self, Hash};
use crate::opening::{Commitment, ProductOpening, ProductSample, RowOpening};
use crate::params::Params;

/// Buffers for one product, reused across products.
#[derive(Debug, Default)]
struct Workspace {
    a: Vec<i8>,
    b: Vec<i8>,
    bt: Vec<i8>,
    c: Vec<i32>,
    buf: Vec<u8>,
}

/// Computes `C_p` into `ws.c` with `threads` threads.
fn compute(params: &Params, keys: ([u32; 2], [u32; 2]), p: u32, threads: usize, ws: &mut Workspace) {
    let (m, n, k) = (params.m as usize, params.n as usize, params.k as usize);
    ws.a.resize(m * k, 0);
    ws.b.resize(k * n, 0);
    ws.bt.resize(n * k, 0);
    ws.c.resize(m * n, 0);
    gemm::generate(params.m, params.k, p, keys.0, &mut ws.a);
    gemm::generate(params.k, params.n, p, keys.1, &mut ws.b);
    gemm::transpose(&ws.b, k, n, &mut ws.bt);
    gemm::gemm(&ws.a, &ws.bt, m, n, k, threads, &mut ws.c);
}

fn row_leaves(p: u32, c: &[i32], n: usize, buf: &mut Vec<u8>) -> Vec<Hash> {
    c.chunks_exact(n).enumerate().map(|(i, row)| merkle::leaf(p, i as u32, row, buf)).collect()
}

/// Computes every product and the commitment, on `threads` threads: whole products in
/// parallel when there are enough of them, otherwise rows of each product in parallel.
pub fn commit(params: &Params, threads: usize) -> Commitment {
    let keys = params.keys();
    let threads = threads.max(1);
    let outer = threads.min(params.count as usize);
    let inner = (threads / outer).max(1);
    let next = AtomicU32::new(0);
    let roots = Mutex::new(vec![[0u8; 32]; params.count as usize]);
    std::thread::scope(|s| {
        for _ in 0..outer {
            s.spawn(|| {
                let mut ws = Workspace::default();
                loop {
                    let p = next.fetch_add(1, Ordering::Relaxed);
                    if p >= params.count {
                        break;
                    }
                    compute(params, keys, p, inner, &mut ws);
                    let leaves = row_leaves(p, &ws.c, params.n as usize, &mut ws.buf);
                    let root = merkle::root(&leaves);
                    roots.lock().unwrap_or_else(|e| e.into_inner())[p as usize] = root;
                }
            });
        }
    });
    let product_roots = roots.into_inner().unwrap_or_else(|e| e.into_inner());
    Commitment { root: Commitment::root_of(&product_roots), product_roots }
}

/// Recomputes product `sample.index` and opens it: `y = C·r` and the sampled rows with their
/// Merkle paths.
pub fn open(params: &Params, sample: &ProductSample, threads: usize) -> ProductOpening {
    let mut ws = Workspace::default();
    compute(params, params.keys(), sample.index, threads, &mut ws);
    let n = params.n as usize;
    let y: Vec<i64> =
        ws.c.chunks_exact(n)
            .map(|row| row.iter().zip(&sample.r).map(|(&c, &r)| i64::from(c) * i64::from(r)).sum())
            .collect();
    let leaves = row_leaves(sample.index, &ws.c, n, &mut ws.buf);
    let rows = sample
        .rows
        .iter()
        .map(|&i| RowOpening {
            index: i,
            values: ws.c[i as usize * n..(i as usize + 1) * n].to_vec(),
            path: merkle::path(&leaves, i as usize),
        })
        .collect();
    ProductOpening { index: sample.index, y, rows }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_does_not_depend_on_thread_count() {
        let params = Params::plain(12345, 48, 5);
        let one = commit(&params, 1);
        for threads in [2, 3, 8] {
            assert_eq!(commit(&params, threads), one, "{threads} threads");
        }
        // One product split by rows over threads, too.
        let single = Params::plain(7, 64, 1);
        assert_eq!(commit(&single, 1), commit(&single, 4));
    }

    /// The value computed by the independent Python implementation of GPOW.md in
    /// tests/python/gpow_reference.py (which `make test` also runs against the CLI).
    #[test]
    fn checksum_matches_the_independent_reference() {
        let c = commit(&Params::plain(12345, 16, 3), 2);
        assert_eq!(c.checksum(), "f07eb69d98ffbe726c5137a0e86a5fb674b1e340e3094a369590982f3739ff25");
        assert_eq!(c.root, Commitment::root_of(&c.product_roots));
    }
}
