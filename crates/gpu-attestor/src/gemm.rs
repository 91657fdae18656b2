//! Matrix generation from Philox and the CPU int8 GEMM (int32 accumulation): blocked over
//! columns so a block of Bᵀ stays in cache, vectorised by the compiler (AVX2 when the CPU has
//! it, chosen at run time), and split over threads by rows.

use std::ops::Range;

use crate::philox::philox4x32_10;

/// Fills `out` (rows × cols, row-major) with matrix `p` of a challenge: row `i`, 16-byte block
/// `q` is Philox(ctr = (i, q, p, 0), key), its four words little-endian, read as i8.
pub fn generate(rows: u32, cols: u32, p: u32, key: [u32; 2], out: &mut [i8]) {
    let blocks = cols / 16;
    assert_eq!(out.len(), rows as usize * cols as usize, "matrix buffer size");
    for (i, row) in out.chunks_exact_mut(cols as usize).enumerate() {
        for (q, block) in row.chunks_exact_mut(16).enumerate().take(blocks as usize) {
            let words = philox4x32_10([i as u32, q as u32, p, 0], key);
            for (w, word) in words.iter().enumerate() {
                for (b, byte) in word.to_le_bytes().iter().enumerate() {
                    block[w * 4 + b] = *byte as i8;
                }
            }
        }
    }
}

/// `out` = `b`ᵀ, for `b` of `k` rows and `n` columns.
pub fn transpose(b: &[i8], k: usize, n: usize, out: &mut [i8]) {
    const T: usize = 16;
    for t0 in (0..k).step_by(T) {
        for j0 in (0..n).step_by(T) {
            for t in t0..(t0 + T).min(k) {
                for j in j0..(j0 + T).min(n) {
                    out[j * k + t] = b[t * n + j];
                }
            }
        }
    }
}

/// Σ a[t]·b[t] in i32: exact, since |a·b| ≤ 2^14 and k ≤ 32768 keeps the sum within 2^29.
#[inline(always)]
fn dot_portable(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum()
}

/// The same loop compiled for AVX2 (vpmovsxbw + vpmaddwd).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn rows_avx2(a: &[i8], bt: &[i8], k: usize, n: usize, rows: Range<usize>, block: usize, c: &mut [i32]) {
    rows_portable(a, bt, k, n, rows, block, c)
}

/// Columns per block: a block of Bᵀ of about 128 KiB stays in L2 while every row of A passes
/// over it.
pub fn default_block(k: usize, n: usize) -> usize {
    ((128 << 10) / k).clamp(4, n)
}

#[inline(always)]
fn rows_portable(a: &[i8], bt: &[i8], k: usize, n: usize, rows: Range<usize>, block: usize, c: &mut [i32]) {
    let block = block.clamp(1, n);
    for j0 in (0..n).step_by(block) {
        let j1 = (j0 + block).min(n);
        for (ci, i) in rows.clone().enumerate() {
            let arow = &a[i * k..(i + 1) * k];
            let crow = &mut c[ci * n..(ci + 1) * n];
            for j in j0..j1 {
                crow[j] = dot_portable(arow, &bt[j * k..(j + 1) * k]);
            }
        }
    }
}

/// Rows `rows` of C = A·B, with B given as `bt` = Bᵀ (n × k), `block` columns at a time;
/// `c` holds those rows (len·n).
pub fn gemm_rows(a: &[i8], bt: &[i8], k: usize, n: usize, rows: Range<usize>, block: usize, c: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        #[allow(unsafe_code)]
        unsafe {
            rows_avx2(a, bt, k, n, rows, block, c);
        }
        return;
    }
    rows_portable(a, bt, k, n, rows, block, c)
}

/// C = A·B (m × n, row-major), rows split over `threads` threads.
pub fn gemm(a: &[i8], bt: &[i8], m: usize, n: usize, k: usize, threads: usize, c: &mut [i32]) {
    gemm_blocked(a, bt, m, n, k, threads, default_block(k, n), c)
}

/// [`gemm`] with an explicit column block (tests check every block size gives the same C).
#[allow(clippy::too_many_arguments)]
pub fn gemm_blocked(a: &[i8], bt: &[i8], m: usize, n: usize, k: usize, threads: usize, block: usize, c: &mut [i32]) {
    let threads = threads.clamp(1, m);
    let per = m.div_ceil(threads);
    std::thread::scope(|s| {
        for (t, chunk) in c.chunks_mut(per * n).enumerate() {
            let rows = t * per..(t * per + chunk.len() / n);
            s.spawn(move || gemm_rows(a, bt, k, n, rows, block, chunk));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[i8], b: &[i8], m: usize, n: usize, k: usize) -> Vec<i32> {
        let mut c = vec![0i32; m * n];
        for i in 0..m {
            for j in 0..n {
                for t in 0..k {
                    c[i * n + j] += i32::from(a[i * k + t]) * i32::from(b[t * n + j]);
                }
            }
        }
        c
    }

    #[test]
    fn matches_the_naive_triple_loop_on_random_sizes() {
        for (seed, (m, n, k)) in
            [(16, 16, 16), (48, 32, 64), (32, 80, 16), (64, 16, 112), (16, 272, 48)].into_iter().enumerate()
        {
            let mut a = vec![0i8; m * k];
            let mut b = vec![0i8; k * n];
            generate(m as u32, k as u32, seed as u32, [1, 2], &mut a);
            generate(k as u32, n as u32, seed as u32, [3, 4], &mut b);
            // Extremes too: -128·-128 is the largest product.
            a[0] = -128;
            b[0] = -128;
            let mut bt = vec![0i8; n * k];
            transpose(&b, k, n, &mut bt);
            let expected = naive(&a, &b, m, n, k);
            for threads in [1, 3] {
                for block in [1, 5, 16, default_block(k, n), n] {
                    let mut c = vec![0i32; m * n];
                    gemm_blocked(&a, &bt, m, n, k, threads, block, &mut c);
                    assert_eq!(c, expected, "{m}x{n}x{k}, {threads} threads, block {block}");
                }
            }
        }
    }

    #[test]
    fn generation_follows_the_spec_layout() {
        let mut a = vec![0i8; 2 * 32];
        generate(2, 32, 7, [9, 9], &mut a);
        let words = philox4x32_10([1, 1, 7, 0], [9, 9]);
        let expected: Vec<i8> = words.iter().flat_map(|w| w.to_le_bytes()).map(|b| b as i8).collect();
        assert_eq!(&a[32 + 16..], &expected[..]);
    }
}
