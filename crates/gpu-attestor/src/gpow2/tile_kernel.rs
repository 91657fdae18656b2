//! The int8 GEMM of one 16×16 tile, i32 accumulation: `acc[16r + c] += Σ_t A[r][t]·B[t][c]`
//! over a chunk of the depth. Inputs are Philox blocks as generated (16 bytes, the four words
//! little-endian): row `r` of A is `a[r·lda ..]`, one block per 16 columns; row `t` of B is
//! block `b[t]` (the 16 columns of the tile). The scalar path is the reference; the AVX2 path
//! multiplies pairs of i16 (`vpmaddwd`), the AVX-512 path quadruples of bytes (`vpdpbusd`,
//! with A offset by 128 to make it unsigned and the offset taken out through B's column sums).
//! Every product is exact: |a·b| ≤ 2¹⁴ and k ≤ 32768, so no sum leaves i32, and the vector
//! paths' intermediate sums, which may wrap, are exact modulo 2³² and end in range.

use super::isa::{self, Isa};

/// A Philox block's 16 bytes as i8, in memory order.
#[inline(always)]
pub(crate) fn block_bytes(block: &[u32; 4]) -> [i8; 16] {
    std::array::from_fn(|i| (block[i / 4] >> (8 * (i % 4))) as u8 as i8)
}

/// Adds this chunk's products to `acc`; `b.len()` (the chunk's depth) is a multiple of 16 and
/// every row of A holds `b.len() / 16` blocks from `r·lda`.
pub(crate) fn accumulate(isa: Isa, acc: &mut [i32; 256], a: &[[u32; 4]], lda: usize, b: &[[u32; 4]]) {
    let depth_blocks = b.len() / 16;
    assert!(b.len().is_multiple_of(16) && a.len() >= 15 * lda + depth_blocks, "tile kernel inputs");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa::has_avx512() => {
            // SAFETY: the CPU has AVX-512 F, BW and VNNI (checked on this line).
            #[allow(unsafe_code)]
            unsafe {
                x86::accumulate_avx512(acc, a, lda, b)
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa::has_avx2() => {
            // SAFETY: the CPU has AVX2 (checked on this line).
            #[allow(unsafe_code)]
            unsafe {
                x86::accumulate_avx2(acc, a, lda, b)
            }
        }
        _ => accumulate_scalar(acc, a, lda, b),
    }
}

fn accumulate_scalar(acc: &mut [i32; 256], a: &[[u32; 4]], lda: usize, b: &[[u32; 4]]) {
    for (q, b16) in b.as_chunks::<16>().0.iter().enumerate() {
        let arows: [[i8; 16]; 16] = std::array::from_fn(|r| block_bytes(&a[r * lda + q]));
        for (tt, brow) in b16.iter().enumerate() {
            let brow = block_bytes(brow);
            for (r, arow) in arows.iter().enumerate() {
                let x = i32::from(arow[tt]);
                for (c, &y) in brow.iter().enumerate() {
                    acc[16 * r + c] += x * i32::from(y);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load512(src: &[[u32; 4]; 4]) -> __m512i {
        // SAFETY: `src` is 64 readable bytes; loadu needs no alignment.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_loadu_si512(src.as_ptr().cast())
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load512_i32(src: &[i32; 16]) -> __m512i {
        // SAFETY: `src` is 64 readable bytes; loadu needs no alignment.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_loadu_si512(src.as_ptr().cast())
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store512_i32(dst: &mut [i32; 16], v: __m512i) {
        // SAFETY: `dst` is 64 writable bytes; storeu needs no alignment.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_storeu_si512(dst.as_mut_ptr().cast(), v)
        }
    }

    /// `vpdpbusd` adds, per i32 lane, four products of an unsigned byte of its first operand
    /// with a signed byte of its second. Lanes are the tile's 16 columns; the four bytes are
    /// four consecutive `t`. A's bytes (a + 128, unsigned) are broadcast, B's four rows are
    /// rearranged so lane `c` holds `B[t..t+4][c]`; Σ(a + 128)·b − 128·Σb = Σa·b.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn accumulate_avx512(acc: &mut [i32; 256], a: &[[u32; 4]], lda: usize, b: &[[u32; 4]]) {
        let (acc_rows, _) = acc.as_chunks_mut::<16>();
        let mut sums: [__m512i; 16] = std::array::from_fn(|r| load512_i32(&acc_rows[r]));
        let mut colsum = _mm512_setzero_si512();
        // Dword (row tt, columns 4cq..4cq+3) to 128-bit lane cq, then bytes to column order.
        let dwords = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let bytes = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
        let ones = _mm512_set1_epi8(1);
        let depth_blocks = b.len() / 16;
        let rows: [&[[u32; 4]]; 16] = std::array::from_fn(|r| &a[r * lda..r * lda + depth_blocks]);
        for (q, b16) in b.as_chunks::<16>().0.iter().enumerate() {
            let ablocks: [[u32; 4]; 16] = std::array::from_fn(|r| rows[r][q]);
            for (w, quad) in b16.as_chunks::<4>().0.iter().enumerate() {
                let bv = _mm512_shuffle_epi8(_mm512_permutexvar_epi32(dwords, load512(quad)), bytes);
                colsum = _mm512_dpbusd_epi32(colsum, ones, bv);
                for (sum, ab) in sums.iter_mut().zip(&ablocks) {
                    let x = _mm512_set1_epi32((ab[w] ^ 0x8080_8080) as i32);
                    *sum = _mm512_dpbusd_epi32(*sum, x, bv);
                }
            }
        }
        let offset = _mm512_slli_epi32(colsum, 7);
        for (row, sum) in acc_rows.iter_mut().zip(sums) {
            store512_i32(row, _mm512_sub_epi32(sum, offset));
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load128(src: &[u32; 4]) -> __m128i {
        // SAFETY: `src` is 16 readable bytes; loadu needs no alignment.
        #[allow(unsafe_code)]
        unsafe {
            _mm_loadu_si128(src.as_ptr().cast())
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load256_i32(src: &[i32; 8]) -> __m256i {
        // SAFETY: `src` is 32 readable bytes; loadu needs no alignment.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_loadu_si256(src.as_ptr().cast())
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn store256_i32(dst: &mut [i32; 8], v: __m256i) {
        // SAFETY: `dst` is 32 writable bytes; storeu needs no alignment.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_storeu_si256(dst.as_mut_ptr().cast(), v)
        }
    }

    /// Rows per pass: 4 rows × 2 halves of 8 columns = 8 accumulators, which with B's two
    /// vectors and a broadcast fit the 16 AVX2 registers.
    const GROUP: usize = 4;

    /// `vpmaddwd` adds, per i32 lane, two products of i16. Lanes are 8 of the tile's columns;
    /// the pair is two consecutive `t`: B's rows t and t+1 interleaved and widened, A's pair
    /// `(a[t], a[t+1])` as i16 broadcast.
    #[target_feature(enable = "avx2")]
    pub(super) fn accumulate_avx2(acc: &mut [i32; 256], a: &[[u32; 4]], lda: usize, b: &[[u32; 4]]) {
        let depth_blocks = b.len() / 16;
        let (acc_halves, _) = acc.as_chunks_mut::<8>();
        for (g, halves) in acc_halves.chunks_exact_mut(2 * GROUP).enumerate() {
            let mut sums: [__m256i; 2 * GROUP] = std::array::from_fn(|h| load256_i32(&halves[h]));
            let rows: [&[[u32; 4]]; GROUP] =
                std::array::from_fn(|r| &a[(GROUP * g + r) * lda..(GROUP * g + r) * lda + depth_blocks]);
            for (q, b16) in b.as_chunks::<16>().0.iter().enumerate() {
                // Row r's 16 bytes of this block as 8 i16 pairs, one per i32.
                let mut pairs = [[0i32; 8]; GROUP];
                for (p, row) in pairs.iter_mut().zip(&rows) {
                    store256_i32(p, _mm256_cvtepi8_epi16(load128(&row[q])));
                }
                for (j, two) in b16.as_chunks::<2>().0.iter().enumerate() {
                    let (b0, b1) = (load128(&two[0]), load128(&two[1]));
                    let lo = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(b0, b1));
                    let hi = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(b0, b1));
                    for (r, p) in pairs.iter().enumerate() {
                        let x = _mm256_set1_epi32(p[j]);
                        sums[2 * r] = _mm256_add_epi32(sums[2 * r], _mm256_madd_epi16(x, lo));
                        sums[2 * r + 1] = _mm256_add_epi32(sums[2 * r + 1], _mm256_madd_epi16(x, hi));
                    }
                }
            }
            for (half, sum) in halves.iter_mut().zip(sums) {
                store256_i32(half, sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::philox::philox4x32_10;

    /// Random blocks, with the extreme bytes -128 and 127 forced in.
    fn blocks(n: usize, seed: u32) -> Vec<[u32; 4]> {
        let mut v: Vec<[u32; 4]> = (0..n as u32).map(|i| philox4x32_10([i, seed, 0, 0], [seed, 1])).collect();
        if n > 1 {
            v[0] = [0x8080_8080; 4];
            v[1] = [0x7F7F_7F7F, 0x8080_8080, 0x7F80_7F80, 0x807F_807F];
        }
        v
    }

    fn naive(acc: &[i32; 256], a: &[[u32; 4]], lda: usize, b: &[[u32; 4]]) -> [i32; 256] {
        let mut out = *acc;
        for r in 0..16 {
            for c in 0..16 {
                for (t, brow) in b.iter().enumerate() {
                    let x = block_bytes(&a[r * lda + t / 16])[t % 16];
                    out[16 * r + c] += i32::from(x) * i32::from(block_bytes(brow)[c]);
                }
            }
        }
        out
    }

    #[test]
    fn every_path_matches_the_naive_product() {
        for isa in Isa::all_available() {
            for (depth, lda) in [(16, 1), (32, 2), (48, 5), (256, 16), (512, 40)] {
                let a = blocks(16 * lda, depth as u32);
                let b = blocks(depth, 1000 + depth as u32);
                let start: [i32; 256] = std::array::from_fn(|i| i as i32 * 1000 - 128_000);
                let mut acc = start;
                accumulate(isa, &mut acc, &a, lda, &b);
                assert_eq!(acc, naive(&start, &a, lda, &b), "{isa:?} depth {depth} lda {lda}");
            }
        }
    }

    /// The largest sums GPoW-2 allows: every product -128·-128 over k = 32768, in chunks.
    #[test]
    fn extreme_sums_stay_exact() {
        let k = 32768;
        let a = vec![[0x8080_8080u32; 4]; 16 * (k / 16)];
        let b = vec![[0x8080_8080u32; 4]; k];
        for isa in Isa::all_available() {
            let mut acc = [0i32; 256];
            for chunk in 0..k / 4096 {
                accumulate(isa, &mut acc, &a[chunk * 256..], k / 16, &b[chunk * 4096..(chunk + 1) * 4096]);
            }
            assert_eq!(acc, [1 << 29; 256], "{isa:?}");
        }
    }
}
