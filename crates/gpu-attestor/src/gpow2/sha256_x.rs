//! SHA-256 of cache items on many lanes at once (structure of arrays: `w[i][l]` is word `i` of
//! lane `l`), written so that, inlined into a function compiled for AVX2 or AVX-512, each line
//! becomes one vector operation over the lanes. A cache item's message is one block,
//! `0x10 ‖ master_g ‖ u32 x ‖ tag` padded, whose first 8 words depend on `master_g` alone: the
//! state after the first 8 rounds is computed once per GPU. The `sha2` crate is the reference
//! (and what the scalar path uses).

use crate::merkle::Hash;

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
];

const H0: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// What a GPU's cache hashes share: the message words 0..7 and the state after 8 rounds.
#[derive(Debug, Clone)]
pub(crate) struct CacheHasher {
    /// Words 0..7 of the message: `0x10 ‖ master_g[0..31]`.
    head: [u32; 8],
    /// The last byte of `master_g`, the first of word 8.
    last: u32,
    /// The working variables a..h after rounds 0..7.
    mid: [u32; 8],
}

#[inline(always)]
fn big_sigma0(a: u32) -> u32 {
    a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22)
}

#[inline(always)]
fn big_sigma1(e: u32) -> u32 {
    e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25)
}

impl CacheHasher {
    pub(crate) fn new(master_g: &Hash) -> Self {
        let mut bytes = [0u8; 33];
        bytes[0] = 0x10;
        bytes[1..].copy_from_slice(master_g);
        let head: [u32; 8] = std::array::from_fn(|i| {
            u32::from_be_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]])
        });
        let mut s = H0;
        for (r, w) in head.iter().enumerate() {
            let [a, b, c, d, e, f, g, h] = s;
            let t1 = h.wrapping_add(big_sigma1(e)).wrapping_add((e & f) ^ (!e & g)).wrapping_add(K[r]).wrapping_add(*w);
            let t2 = big_sigma0(a).wrapping_add((a & b) ^ (a & c) ^ (b & c));
            s = [t1.wrapping_add(t2), a, b, c, d.wrapping_add(t1), e, f, g];
        }
        Self { head, last: u32::from(master_g[31]), mid: s }
    }

    /// Both halves of `cache[x]` for every lane: words 0..7 from tag 0x00, 8..15 from 0x01,
    /// each digest read as u32 little-endian, as GPOW.md says.
    #[inline(always)]
    pub(crate) fn items<const L: usize>(&self, x: &[u32; L]) -> [[u32; L]; 16] {
        let lo = self.digest::<L>(x, 0);
        let hi = self.digest::<L>(x, 1);
        std::array::from_fn(|w| std::array::from_fn(|l| if w < 8 { lo[w][l] } else { hi[w - 8][l] }.swap_bytes()))
    }

    /// The SHA-256 state words (big-endian digest words) of `0x10 ‖ master_g ‖ u32 x ‖ tag`.
    #[inline(always)]
    fn digest<const L: usize>(&self, x: &[u32; L], tag: u32) -> [[u32; L]; 8] {
        let mut w = [[0u32; L]; 16];
        for (i, word) in w.iter_mut().enumerate().take(8) {
            *word = [self.head[i]; L];
        }
        for l in 0..L {
            // Bytes 32..39: master_g[31], x as 4 bytes LE, the tag, the padding bit.
            w[8][l] = (self.last << 24) | (x[l].swap_bytes() >> 8);
            w[9][l] = (x[l] & 0xFF00_0000) | (tag << 16) | 0x8000;
        }
        // 38 bytes, as a bit count, big-endian at the end of the block.
        w[15] = [38 * 8; L];
        let mut s: [[u32; L]; 8] = std::array::from_fn(|i| [self.mid[i]; L]);
        for r in 8..64 {
            if r >= 16 {
                // W[r] = σ1(W[r-2]) + W[r-7] + σ0(W[r-15]) + W[r-16], in a ring of 16.
                let (w15, w7, w2) = (w[(r + 1) % 16], w[(r + 9) % 16], w[(r + 14) % 16]);
                for (l, x) in w[r % 16].iter_mut().enumerate() {
                    let s0 = w15[l].rotate_right(7) ^ w15[l].rotate_right(18) ^ (w15[l] >> 3);
                    let s1 = w2[l].rotate_right(17) ^ w2[l].rotate_right(19) ^ (w2[l] >> 10);
                    *x = x.wrapping_add(s0).wrapping_add(w7[l]).wrapping_add(s1);
                }
            }
            let [a, b, c, d, e, f, g, h] = s;
            let mut na = [0u32; L];
            let mut ne = [0u32; L];
            for l in 0..L {
                let t1 = h[l]
                    .wrapping_add(big_sigma1(e[l]))
                    .wrapping_add((e[l] & f[l]) ^ (!e[l] & g[l]))
                    .wrapping_add(K[r])
                    .wrapping_add(w[r % 16][l]);
                let t2 = big_sigma0(a[l]).wrapping_add((a[l] & b[l]) ^ (a[l] & c[l]) ^ (b[l] & c[l]));
                na[l] = t1.wrapping_add(t2);
                ne[l] = d[l].wrapping_add(t1);
            }
            s = [na, a, b, c, ne, e, f, g];
        }
        for (i, word) in s.iter_mut().enumerate() {
            for v in word.iter_mut() {
                *v = v.wrapping_add(H0[i]);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The scalar cache item, computed with the sha2 crate.
    use crate::gpow2::phase_b::cache_item as reference;

    #[test]
    fn lanes_match_the_sha2_crate() {
        for master_g in [[0u8; 32], [0xFF; 32], std::array::from_fn(|i| (i as u8).wrapping_mul(37))] {
            let hasher = CacheHasher::new(&master_g);
            let x = [0, 1, 0x0102_0304, u32::MAX, 0x8000_0000];
            let items = hasher.items::<5>(&x);
            for (l, &xl) in x.iter().enumerate() {
                let expected = reference(&master_g, xl);
                assert_eq!(std::array::from_fn::<u32, 16, _>(|w| items[w][l]), expected, "x = {xl:#x}");
            }
        }
    }
}
