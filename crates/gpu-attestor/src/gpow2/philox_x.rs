//! Philox4x32-10 over many counters at once: runs of blocks for the GEMM inputs (explicit
//! AVX2 / AVX-512 code, several independent vectors in flight to hide the multiply latency)
//! and lanes of independent counters and keys for phase B (portable code the compiler
//! vectorises for each instruction set). [`crate::philox::philox4x32_10`] is the reference.

use crate::philox::philox4x32_10;

use super::isa::{self, Isa};

/// Philox 4x32 multipliers and Weyl increments (as in [`crate::philox`]).
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// `out[i] = Philox(base with word 0 + i; key)` (`along = 0`) or with word 1 + i (`along = 1`):
/// a row of `A_p` walks word 1 (the block `q`), a column block of `B_p` walks word 0 (the row).
/// Counters never wrap in GPoW-2 (rows, blocks and items are below 2³²), and wrap modulo 2³²
/// like the scalar path if they did.
pub(crate) fn run(isa: Isa, base: [u32; 4], along: usize, key: [u32; 2], out: &mut [[u32; 4]]) {
    debug_assert!(along < 2, "runs walk word 0 or 1");
    let done = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa::has_avx512() => {
            // SAFETY: the CPU has AVX-512 F (checked on this line).
            #[allow(unsafe_code)]
            unsafe {
                x86::run_avx512(base, along, key, out)
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa::has_avx2() => {
            // SAFETY: the CPU has AVX2 (checked on this line).
            #[allow(unsafe_code)]
            unsafe {
                x86::run_avx2(base, along, key, out)
            }
        }
        _ => 0,
    };
    for (i, block) in out.iter_mut().enumerate().skip(done) {
        let mut ctr = base;
        ctr[along] = ctr[along].wrapping_add(i as u32);
        *block = philox4x32_10(ctr, key);
    }
}

/// Philox on `L` independent counters and keys, structure of arrays: `c[w][l]` is word `w` of
/// lane `l`. Written so that, inlined into a function compiled for AVX2 or AVX-512, each line
/// becomes one vector operation over the lanes.
#[inline(always)]
pub(crate) fn lanes<const L: usize>(c: &mut [[u32; L]; 4], key: &[[u32; L]; 2]) {
    let mut k = *key;
    for round in 0..10 {
        if round > 0 {
            let [k0, k1] = &mut k;
            for (a, b) in k0.iter_mut().zip(k1.iter_mut()) {
                *a = a.wrapping_add(W0);
                *b = b.wrapping_add(W1);
            }
        }
        let mut n = [[0u32; L]; 4];
        for l in 0..L {
            let p0 = u64::from(M0) * u64::from(c[0][l]);
            let p1 = u64::from(M1) * u64::from(c[2][l]);
            n[0][l] = (p1 >> 32) as u32 ^ c[1][l] ^ k[0][l];
            n[1][l] = p1 as u32;
            n[2][l] = (p0 >> 32) as u32 ^ c[3][l] ^ k[1][l];
            n[3][l] = p0 as u32;
        }
        *c = n;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{M0, M1, W0, W1};

    /// Independent vectors in flight per round: a round's multiply-shift-blend chain is about
    /// 9 cycles long, four chains keep the vector units busy.
    const J: usize = 4;

    /// `out` (a whole number of `[[u32; 4]; 4]`) from four vectors of words 0..3 of 16 blocks.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store16(c: [__m512i; 4], out: &mut [[u32; 4]; 16]) {
        // 4x4 transposes inside each 128-bit lane, then the lanes put in block order.
        let a = _mm512_unpacklo_epi32(c[0], c[1]);
        let b = _mm512_unpackhi_epi32(c[0], c[1]);
        let cc = _mm512_unpacklo_epi32(c[2], c[3]);
        let d = _mm512_unpackhi_epi32(c[2], c[3]);
        // Lane i of r_m holds block 4i + m.
        let r0 = _mm512_unpacklo_epi64(a, cc);
        let r1 = _mm512_unpackhi_epi64(a, cc);
        let r2 = _mm512_unpacklo_epi64(b, d);
        let r3 = _mm512_unpackhi_epi64(b, d);
        let s0 = _mm512_shuffle_i32x4(r0, r1, 0x44); // blocks 0 4 1 5
        let s1 = _mm512_shuffle_i32x4(r2, r3, 0x44); // 2 6 3 7
        let s2 = _mm512_shuffle_i32x4(r0, r1, 0xEE); // 8 12 9 13
        let s3 = _mm512_shuffle_i32x4(r2, r3, 0xEE); // 10 14 11 15
        let o = [
            _mm512_shuffle_i32x4(s0, s1, 0x88),
            _mm512_shuffle_i32x4(s0, s1, 0xDD),
            _mm512_shuffle_i32x4(s2, s3, 0x88),
            _mm512_shuffle_i32x4(s2, s3, 0xDD),
        ];
        for (chunk, v) in out.chunks_exact_mut(4).zip(o) {
            // SAFETY: `chunk` is 4 blocks of 16 bytes, the 64 bytes written; storeu needs no
            // alignment.
            #[allow(unsafe_code)]
            unsafe {
                _mm512_storeu_si512(chunk.as_mut_ptr().cast(), v)
            }
        }
    }

    /// High and low halves of the 32x32 products of every lane with `m`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn mul_hi_lo512(a: __m512i, m: __m512i) -> (__m512i, __m512i) {
        let even = _mm512_mul_epu32(a, m);
        let odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
        let hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
        let lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
        (hi, lo)
    }

    /// The AVX-512 part of [`super::run`]: whole groups of 16 blocks; returns how many blocks
    /// it wrote (the rest is the caller's).
    #[target_feature(enable = "avx512f")]
    pub(super) fn run_avx512(base: [u32; 4], along: usize, key: [u32; 2], out: &mut [[u32; 4]]) -> usize {
        let m0 = _mm512_set1_epi32(M0 as i32);
        let m1 = _mm512_set1_epi32(M1 as i32);
        let step = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let word = |w: usize, first: usize| {
            if w == along {
                _mm512_add_epi32(_mm512_set1_epi32(base[w].wrapping_add(first as u32) as i32), step)
            } else {
                _mm512_set1_epi32(base[w] as i32)
            }
        };
        let (groups, _) = out.as_chunks_mut::<16>();
        let total = groups.len();
        let mut g = 0;
        while g < total {
            let j = (total - g).min(J);
            let mut c: [[__m512i; 4]; J] = [[_mm512_setzero_si512(); 4]; J];
            for (x, cx) in c.iter_mut().enumerate().take(j) {
                *cx = std::array::from_fn(|w| word(w, (g + x) * 16));
            }
            let mut k = key;
            for round in 0..10 {
                if round > 0 {
                    k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
                }
                let (k0, k1) = (_mm512_set1_epi32(k[0] as i32), _mm512_set1_epi32(k[1] as i32));
                for cx in c.iter_mut().take(j) {
                    let (hi0, lo0) = mul_hi_lo512(cx[0], m0);
                    let (hi1, lo1) = mul_hi_lo512(cx[2], m1);
                    *cx = [
                        _mm512_ternarylogic_epi32(hi1, cx[1], k0, 0x96),
                        lo1,
                        _mm512_ternarylogic_epi32(hi0, cx[3], k1, 0x96),
                        lo0,
                    ];
                }
            }
            for (x, cx) in c.iter().enumerate().take(j) {
                store16(*cx, &mut groups[g + x]);
            }
            g += j;
        }
        total * 16
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn mul_hi_lo256(a: __m256i, m: __m256i) -> (__m256i, __m256i) {
        let even = _mm256_mul_epu32(a, m);
        let odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
        let hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
        let lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
        (hi, lo)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn store8(c: [__m256i; 4], out: &mut [[u32; 4]; 8]) {
        let a = _mm256_unpacklo_epi32(c[0], c[1]);
        let b = _mm256_unpackhi_epi32(c[0], c[1]);
        let cc = _mm256_unpacklo_epi32(c[2], c[3]);
        let d = _mm256_unpackhi_epi32(c[2], c[3]);
        // Half h of r_m holds block 4h + m.
        let r0 = _mm256_unpacklo_epi64(a, cc);
        let r1 = _mm256_unpackhi_epi64(a, cc);
        let r2 = _mm256_unpacklo_epi64(b, d);
        let r3 = _mm256_unpackhi_epi64(b, d);
        let o = [
            _mm256_permute2x128_si256(r0, r1, 0x20),
            _mm256_permute2x128_si256(r2, r3, 0x20),
            _mm256_permute2x128_si256(r0, r1, 0x31),
            _mm256_permute2x128_si256(r2, r3, 0x31),
        ];
        for (chunk, v) in out.chunks_exact_mut(2).zip(o) {
            // SAFETY: `chunk` is 2 blocks of 16 bytes, the 32 bytes written; storeu needs no
            // alignment.
            #[allow(unsafe_code)]
            unsafe {
                _mm256_storeu_si256(chunk.as_mut_ptr().cast(), v)
            }
        }
    }

    /// The AVX2 part of [`super::run`]: whole groups of 8 blocks.
    #[target_feature(enable = "avx2")]
    pub(super) fn run_avx2(base: [u32; 4], along: usize, key: [u32; 2], out: &mut [[u32; 4]]) -> usize {
        let m0 = _mm256_set1_epi32(M0 as i32);
        let m1 = _mm256_set1_epi32(M1 as i32);
        let step = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let word = |w: usize, first: usize| {
            if w == along {
                _mm256_add_epi32(_mm256_set1_epi32(base[w].wrapping_add(first as u32) as i32), step)
            } else {
                _mm256_set1_epi32(base[w] as i32)
            }
        };
        let (groups, _) = out.as_chunks_mut::<8>();
        let total = groups.len();
        let mut g = 0;
        while g < total {
            let j = (total - g).min(J);
            let mut c: [[__m256i; 4]; J] = [[_mm256_setzero_si256(); 4]; J];
            for (x, cx) in c.iter_mut().enumerate().take(j) {
                *cx = std::array::from_fn(|w| word(w, (g + x) * 8));
            }
            let mut k = key;
            for round in 0..10 {
                if round > 0 {
                    k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
                }
                let (k0, k1) = (_mm256_set1_epi32(k[0] as i32), _mm256_set1_epi32(k[1] as i32));
                for cx in c.iter_mut().take(j) {
                    let (hi0, lo0) = mul_hi_lo256(cx[0], m0);
                    let (hi1, lo1) = mul_hi_lo256(cx[2], m1);
                    *cx = [
                        _mm256_xor_si256(_mm256_xor_si256(hi1, cx[1]), k0),
                        lo1,
                        _mm256_xor_si256(_mm256_xor_si256(hi0, cx[3]), k1),
                        lo0,
                    ];
                }
            }
            for (x, cx) in c.iter().enumerate().take(j) {
                store8(*cx, &mut groups[g + x]);
            }
            g += j;
        }
        total * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_matches_the_reference_for_every_length_and_direction() {
        for isa in Isa::all_available() {
            for along in 0..2 {
                for len in [0, 1, 7, 8, 15, 16, 17, 63, 64, 65, 100, 200] {
                    let base = [0xFFFF_FFF0, 5, 9, 0xD0];
                    let key = [0x1234_5678, 0x9ABC_DEF0];
                    let mut out = vec![[0u32; 4]; len];
                    run(isa, base, along, key, &mut out);
                    for (i, block) in out.iter().enumerate() {
                        let mut ctr = base;
                        ctr[along] = ctr[along].wrapping_add(i as u32);
                        assert_eq!(*block, philox4x32_10(ctr, key), "{isa:?} along {along} len {len} block {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn lanes_match_the_reference() {
        let mut c: [[u32; 5]; 4] = std::array::from_fn(|w| std::array::from_fn(|l| (w * 77 + l * 13) as u32));
        let key: [[u32; 5]; 2] = std::array::from_fn(|w| std::array::from_fn(|l| u32::MAX - (w + l) as u32));
        let expected: Vec<[u32; 4]> =
            (0..5).map(|l| philox4x32_10(std::array::from_fn(|w| c[w][l]), [key[0][l], key[1][l]])).collect();
        lanes(&mut c, &key);
        for (l, e) in expected.iter().enumerate() {
            assert_eq!(std::array::from_fn::<u32, 4, _>(|w| c[w][l]), *e, "lane {l}");
        }
    }
}
