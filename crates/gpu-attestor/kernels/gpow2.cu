// GPoW-2 kernels (GPOW.md): the Philox fill of A_p and B_p, the int8 GEMM with SHA-256 tile
// hashing in its epilogue, the Merkle reduction, and phase B (cache, dataset, walk, lane leaves).
//
// One source, two compilers: NVRTC compiles it to PTX (`cargo xtask ptx`, checked in under
// `ptx/`), and g++ compiles it as host C++ with `GPOW_EMULATION` (kernels/emu/emu.cpp), where
// thread blocks run on real threads meeting at real barriers. So: no includes, no early return
// before a barrier, 1-D thread blocks, and every warp-level instruction behind a function that
// emu.h implements for the host.
//
// Layouts in device memory (all little-endian words):
// - A_p: m x k int8, row-major (row i, bytes 16q..16q+15 = Philox(i, q, p, 0; key_A)).
// - BT_p: B_p transposed, n x k int8 (column j of B_p is k contiguous bytes), so both operands
//   of every dot product are contiguous in k (what dp4a and mma .row.col read).
// - A hash: 32 bytes in SHA-256 output order, i.e. 8 words each the byte swap of a state word.
// - A cache or dataset item: 16 words.

#ifdef GPOW_EMULATION
#include "emu/emu.h"
#else
typedef unsigned int u32;
typedef unsigned long long u64;
typedef int i32;
typedef unsigned char u8;
#endif

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

// ---------------------------------------------------------------------------------------------
// Primitives

__device__ __forceinline__ void philox(u32 c[4], u32 k0, u32 k1) {
#pragma unroll
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        const u32 hi0 = __umulhi(PHILOX_M0, c[0]);
        const u32 lo0 = PHILOX_M0 * c[0];
        const u32 hi1 = __umulhi(PHILOX_M1, c[2]);
        const u32 lo1 = PHILOX_M1 * c[2];
        const u32 c1 = c[1], c3 = c[3];
        c[0] = hi1 ^ c1 ^ k0;
        c[1] = lo1;
        c[2] = hi0 ^ c3 ^ k1;
        c[3] = lo0;
    }
}

__device__ __forceinline__ u32 fnv(u32 a, u32 b) { return (a * 0x01000193u) ^ b; }

// pick(x, N) = (u64(x) * N) >> 32 for 1 <= N <= 2^32.
__device__ __forceinline__ u32 pick(u32 x, u64 n) { return (u32)(((u64)x * n) >> 32); }

__device__ __forceinline__ u32 bswap32(u32 x) { return __byte_perm(x, 0, 0x0123); }

__device__ __forceinline__ u32 rotr(u32 x, int n) { return (x >> n) | (x << (32 - n)); }

__device__ const u32 SHA256_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

__device__ __forceinline__ void sha256_init(u32 s[8]) {
    s[0] = 0x6a09e667; s[1] = 0xbb67ae85; s[2] = 0x3c6ef372; s[3] = 0xa54ff53a;
    s[4] = 0x510e527f; s[5] = 0x9b05688c; s[6] = 0x1f83d9ab; s[7] = 0x5be0cd19;
}

// One compression of the 16 big-endian message words `w` (overwritten: the schedule rolls in place).
__device__ void sha256_block(u32 s[8], u32 w[16]) {
    u32 a = s[0], b = s[1], c = s[2], d = s[3], e = s[4], f = s[5], g = s[6], h = s[7];
#pragma unroll
    for (int i = 0; i < 64; i++) {
        u32 wi;
        if (i < 16) {
            wi = w[i];
        } else {
            const u32 w15 = w[(i + 1) & 15], w2 = w[(i + 14) & 15];
            const u32 s0 = rotr(w15, 7) ^ rotr(w15, 18) ^ (w15 >> 3);
            const u32 s1 = rotr(w2, 17) ^ rotr(w2, 19) ^ (w2 >> 10);
            wi = w[i & 15] + s0 + w[(i + 9) & 15] + s1;
            w[i & 15] = wi;
        }
        const u32 t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + SHA256_K[i] + wi;
        const u32 t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s[0] += a; s[1] += b; s[2] += c; s[3] += d; s[4] += e; s[5] += f; s[6] += g; s[7] += h;
}

// Hashes are stored as their 32 output bytes: word i in memory is the byte swap of state word i.
__device__ __forceinline__ void store_hash(u32* out, const u32 s[8]) {
#pragma unroll
    for (int i = 0; i < 8; i++) out[i] = bswap32(s[i]);
}

// Messages of the form `tag byte ‖ v[0] ‖ v[1] ‖ ... (u32 LE each)` are one byte off the words
// of the SHA-256 block: big-endian word 0 is `tag, v0 bytes 0..2`, word i is `v[i-1] byte 3,
// v[i] bytes 0..2`, and the word after the last value is `v[last] byte 3, 0x80, 0, 0`.
__device__ __forceinline__ u32 tagged_word(u32 prev, u32 cur) { return (prev & 0xff000000u) | (bswap32(cur) >> 8); }

// Merkle node: SHA-256(0x01 ‖ l ‖ r), l and r stored hashes.
__device__ void merkle_node(const u32* l, const u32* r, u32 out[8]) {
    u32 v[16];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        v[i] = l[i];
        v[8 + i] = r[i];
    }
    u32 s[8], w[16];
    sha256_init(s);
    // The stored words are LE bytes of the hash; as message bytes they are v[i] LE, so the
    // tagged form applies with the values as they are in memory.
    w[0] = 0x01000000u | (bswap32(v[0]) >> 8);
#pragma unroll
    for (int i = 1; i < 16; i++) w[i] = tagged_word(v[i - 1], v[i]);
    sha256_block(s, w);
    w[0] = (v[15] & 0xff000000u) | 0x00800000u;
#pragma unroll
    for (int i = 1; i < 15; i++) w[i] = 0;
    w[15] = 65 * 8;
    sha256_block(s, w);
#pragma unroll
    for (int i = 0; i < 8; i++) out[i] = bswap32(s[i]);
}

// 16 bytes from a 16-byte aligned address.
__device__ __forceinline__ void load16(const u32* p, u32 v[4]) {
#ifdef GPOW_EMULATION
    for (int i = 0; i < 4; i++) v[i] = p[i];
#else
    const uint4 x = *(const uint4*)p;
    v[0] = x.x;
    v[1] = x.y;
    v[2] = x.z;
    v[3] = x.w;
#endif
}

// mix[w] = fnv(mix[w], src[w]) for w < 4 * quads; src 16-byte aligned. Inlined with a
// constant count, mix stays in registers.
__device__ __forceinline__ void fnv_into(u32* mix, const u32* src, int quads) {
#pragma unroll
    for (int q = 0; q < quads; q++) {
        u32 v[4];
        load16(src + 4 * q, v);
        for (int w = 0; w < 4; w++) mix[4 * q + w] = fnv(mix[4 * q + w], v[w]);
    }
}

// ---------------------------------------------------------------------------------------------
// Phase A: the fill
//
// Phase A's kernels work on a batch of products at once, product p0 + blockIdx.z of the batch
// a product further on in each buffer (m k bytes of A, n k of BT, (m / 16)(n / 16) leaves):
// small products, the guide's 1000 of 256³ say, then take a few launches instead of a few
// thousand, and a production product is a batch of one.

// A_p for p = p0 + blockIdx.z: one thread per 16-byte Philox block, grid-stride in x.
extern "C" __global__ void fill_a(u32* a, u32 m, u32 k, u32 p0, u32 k0, u32 k1) {
    const u32 p = p0 + blockIdx.z;
    a += (u64)blockIdx.z * m * k / 4;
    const u32 blocks_per_row = k / 16;
    const u64 total = (u64)m * blocks_per_row;
    for (u64 l = (u64)blockIdx.x * blockDim.x + threadIdx.x; l < total; l += (u64)gridDim.x * blockDim.x) {
        u32 c[4] = {(u32)(l / blocks_per_row), (u32)(l % blocks_per_row), p, 0};
        philox(c, k0, k1);
        a[4 * l + 0] = c[0];
        a[4 * l + 1] = c[1];
        a[4 * l + 2] = c[2];
        a[4 * l + 3] = c[3];
    }
}

#define FILL_ROWS 256

// BT_p for p = p0 + blockIdx.z: block (tj, y) makes rows 256y..256y+255 of column block tj of
// B_p (one Philox block per thread), transposes them in shared memory and writes 16 runs of 256
// contiguous bytes of BT_p. blockDim.x = FILL_ROWS, grid (n / 16, ceil(k / 256), products).
extern "C" __global__ void fill_bt(u32* bt, u32 k, u32 p0, u32 k0, u32 k1) {
    // cols[c] holds column 16tj + c of rows t0..t0+255, one byte per row.
    __shared__ u32 cols[16][FILL_ROWS / 4];
    const u32 p = p0 + blockIdx.z;
    bt += (u64)blockIdx.z * (16 * gridDim.x) * k / 4;
    const u32 tj = blockIdx.x, t0 = blockIdx.y * FILL_ROWS, x = threadIdx.x;
    u32 c[4] = {t0 + x, tj, p, 0};
    philox(c, k0, k1);
    for (int col = 0; col < 16; col++) ((u8*)cols[col])[x] = (u8)(c[col / 4] >> (8 * (col % 4)));
    __syncthreads();
    // 16 columns x 64 words; a group of 4 rows is either wholly inside k or wholly outside.
    for (u32 i = x; i < 16 * (FILL_ROWS / 4); i += FILL_ROWS) {
        const u32 col = i / (FILL_ROWS / 4), r4 = i % (FILL_ROWS / 4), row = t0 + 4 * r4;
        if (row < k) bt[((u64)(16 * tj + col) * k + row) / 4] = cols[col][r4];
    }
}

// ---------------------------------------------------------------------------------------------
// Phase A: the GEMM and its epilogue

// The GEMMs' grids are (column blocks, row blocks, products): block z makes product p0 + z,
// from the operands and into the leaves a product further on.
__device__ __forceinline__ void batch_product(const u32*& a, const u32*& bt, u32*& leaves, u32& p, u32 m, u32 n, u32 k) {
    const u64 z = blockIdx.z;
    a += z * m * k / 4;
    bt += z * n * k / 4;
    leaves += z * (m / 16) * (n / 16) * 8;
    p += (u32)z;
}

#define GEMM_BM 64
#define GEMM_BN 64
#define GEMM_BK 64
#define GEMM_THREADS 256

// Hashes the 16x16 tile (its 256 values row-major from `c`) with its header into `out`:
// SHA-256(0x03 ‖ u32 g ‖ u32 p ‖ u32 ti ‖ u32 tj ‖ 256 i32), 1041 bytes, 17 blocks.
__device__ void tile_leaf(const i32* c, u32 g, u32 p, u32 ti, u32 tj, u32* out) {
    // The values in message order: the header's four words, then the tile.
#define TILE_VALUE(v) ((v) == 0 ? g : (v) == 1 ? p : (v) == 2 ? ti : (v) == 3 ? tj : (u32)c[(v) - 4])
    u32 s[8], w[16];
    sha256_init(s);
    u32 prev = 0;
    for (int block = 0; block < 17; block++) {
        for (int i = 0; i < 16; i++) {
            const int word = 16 * block + i;
            u32 out_word;
            if (word == 0) {
                prev = TILE_VALUE(0);
                out_word = 0x03000000u | (bswap32(prev) >> 8);
            } else if (word < 260) {
                const u32 cur = TILE_VALUE(word);
                out_word = tagged_word(prev, cur);
                prev = cur;
            } else if (word == 260) {
                out_word = (prev & 0xff000000u) | 0x00800000u;
            } else if (word == 271) {
                out_word = 1041 * 8;
            } else {
                out_word = 0;
            }
            w[i] = out_word;
        }
        sha256_block(s, w);
    }
#undef TILE_VALUE
    store_hash(out, s);
}

// C of a BM x BN block in shared memory, tile by tile: tile T = (BN / 16) (row / 16) +
// column / 16 at word 257 T, row-major inside. The one word of padding puts the 32 tiles a warp
// hashes at once in 32 different banks.
#define C_TILE_STRIDE 257
#define C_BYTES(BM, BN) ((BM) / 16 * ((BN) / 16) * C_TILE_STRIDE * 4)

template <int BN>
__device__ __forceinline__ void c_store(i32* cs, u32 row, u32 col, i32 v) {
    cs[((BN / 16) * (row / 16) + col / 16) * C_TILE_STRIDE + 16 * (row % 16) + col % 16] = v;
}

// The (BM / 16)(BN / 16) tile leaves of a BM x BN block of C (`c_store`d), a thread each, in
// the order ti * (n / 16) + tj.
template <int BM, int BN>
__device__ __forceinline__ void hash_c_block(const i32* cs, u32 m, u32 n, u32 g, u32 p, u32* leaves) {
    const u32 t = threadIdx.x;
    if (t < (BM / 16) * (BN / 16)) {
        const u32 ti = blockIdx.y * (BM / 16) + t / (BN / 16), tj = blockIdx.x * (BN / 16) + t % (BN / 16);
        if (ti < m / 16 && tj < n / 16) {
            tile_leaf(cs + t * C_TILE_STRIDE, g, p, ti, tj, leaves + 8 * ((u64)ti * (n / 16) + tj));
        }
    }
}

// Stages a 64 x 64-byte slab of rows [row0, row0 + 64) of an operand with `rows` rows and
// depth k (contiguous), from depth kk, as 16 words per row; what lies outside is zero.
__device__ __forceinline__ void stage(u32 (*s)[GEMM_BK / 4 + 1], const u32* src, u32 rows, u32 k, u32 row0, u32 kk) {
    // 64 rows x 4 pieces of 16 bytes: piece t is row t / 4, bytes 16 (t % 4) onwards.
    const u32 t = threadIdx.x, row = row0 + t / 4, depth = kk + 16 * (t % 4);
    u32 v[4] = {0, 0, 0, 0};
    if (row < rows && depth < k) load16(src + ((u64)row * k + depth) / 4, v);
    for (int w = 0; w < 4; w++) s[t / 4][4 * (t % 4) + w] = v[w];
}

// C_p = A_p · B_p with dp4a, 64x64 per block of 256 threads (4x4 each), then the block's C in
// shared memory and its 16 tiles hashed. grid (ceil(n / 64), ceil(m / 64)).
extern "C" __global__ void gemm_dp4a(const u32* a, const u32* bt, u32 m, u32 n, u32 k, u32 g, u32 p, u32* leaves) {
    batch_product(a, bt, leaves, p, m, n, k);
    __shared__ u32 as[GEMM_BM][GEMM_BK / 4 + 1];
    __shared__ u32 bs[GEMM_BN][GEMM_BK / 4 + 1];
    __shared__ i32 cs[C_BYTES(GEMM_BM, GEMM_BN) / 4];
    const u32 tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    i32 acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = 0;
    for (u32 kk = 0; kk < k; kk += GEMM_BK) {
        stage(as, a, m, k, blockIdx.y * GEMM_BM, kk);
        stage(bs, bt, n, k, blockIdx.x * GEMM_BN, kk);
        __syncthreads();
#pragma unroll
        for (int w = 0; w < GEMM_BK / 4; w++) {
            i32 av[4], bv[4];
            for (int i = 0; i < 4; i++) av[i] = (i32)as[ty + 16 * i][w];
            for (int j = 0; j < 4; j++) bv[j] = (i32)bs[tx + 16 * j][w];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] = __dp4a(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) c_store<GEMM_BN>(cs, ty + 16 * i, tx + 16 * j, acc[i][j]);
    __syncthreads();
    hash_c_block<GEMM_BM, GEMM_BN>(cs, m, n, g, p, leaves);
}

// ---------------------------------------------------------------------------------------------
// Phase A: the tensor-core GEMMs' staging (sm_80+)
//
// gemm_mma and gemm_wgmma keep STAGES buffers of 64 bytes of depth of A's and BT's slabs in
// dynamic shared memory (the launch gives `shared_bytes`, above the 48 KiB a block gets by
// default), filled by asynchronous copies (cp.async) several steps ahead of the tensor cores,
// and reuse the same memory for the block's C once the last step is done.

// The block's dynamic shared memory, which the launch sizes; `bytes` is what the kernel uses
// (the emulation checks the launch gave that much).
#ifndef GPOW_EMULATION
extern __shared__ __align__(128) u8 gpow_dynamic_shared[];
#endif
__device__ __forceinline__ u8* dynamic_shared(u32 bytes) {
#ifdef GPOW_EMULATION
    return emu::dynamic_shared(bytes);
#else
    return gpow_dynamic_shared;
#endif
}

// The shared-memory address of `p` (the 32-bit window cp.async and wgmma's descriptors name).
__device__ __forceinline__ u32 shared_address(const void* p) {
#ifdef GPOW_EMULATION
    return emu::shared_address(p);
#else
    return (u32)__cvta_generic_to_shared(p);
#endif
}

// Starts copying 16 bytes from global `src` to shared `dst` (both 16-byte aligned), or zeros
// when `inside` is false (then nothing is read). The bytes are there once a cp_async_wait
// covering this copy's commit group returns in this thread, and visible to the block after a
// barrier that follows it.
__device__ __forceinline__ void cp_async16(u8* dst, const u32* src, bool inside) {
#ifdef GPOW_EMULATION
    emu::cp_async16(dst, src, inside ? 16 : 0);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src), "r"(inside ? 16 : 0)
                 : "memory");
#endif
}

// Closes this thread's current group of copies (an empty group is fine: it keeps the count).
__device__ __forceinline__ void cp_async_commit() {
#ifdef GPOW_EMULATION
    emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's commit groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef GPOW_EMULATION
    emu::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Where in a stage piece q (bytes 16q..16q+15) of row r of a 64-byte-deep slab goes.
// - SwizzledRows (mma.sync): row r at 64r, its piece q at piece q ^ ((r / 2) % 4). A warp's
//   fragment loads (rows gid, word tig of one piece) then fall in 32 different banks, with no
//   padding; a warp's copies fill 512 contiguous bytes.
// - CoreMatrices (wgmma without swizzling): core matrices of 8 rows x 16 bytes, 128 contiguous
//   bytes each, the four of a row group adjacent in depth: ((r / 8) * 4 + q) * 128 + (r % 8) * 16.
struct SwizzledRows {
    __device__ __forceinline__ u32 operator()(u32 r, u32 q) const { return 64 * r + 16 * (q ^ ((r >> 1) & 3)); }
};
struct CoreMatrices {
    __device__ __forceinline__ u32 operator()(u32 r, u32 q) const { return ((r / 8) * 4 + q) * 128 + (r % 8) * 16; }
};

// Starts this thread's PIECES copies of the 64-byte-deep slab of rows [row0, row0 + THREADS *
// PIECES / 4) of an operand with `rows` rows and depth k (contiguous), from depth kk, into
// `stage` as `place` lays it out; piece i = threadIdx.x + THREADS * j is row i / 4, bytes
// 16 (i % 4) onwards, and what lies outside the operand is zero.
template <int PIECES, int THREADS, typename Place>
__device__ __forceinline__ void copy_pieces(u8* stage, const u32* src, u32 rows, u32 k, u32 row0, u32 kk, Place place) {
#pragma unroll
    for (int j = 0; j < PIECES; j++) {
        const u32 i = threadIdx.x + THREADS * j, r = i / 4, q = i % 4, row = row0 + r, depth = kk + 16 * q;
        const bool inside = row < rows && depth < k;
        cp_async16(stage + place(r, q), inside ? src + ((u64)row * k + depth) / 4 : src, inside);
    }
}

// The tensor-core GEMMs make 128 rows x BN columns of C a block (BN = 128, or 256 for
// gemm_wgmma_wide) and take 64 bytes of depth a step: a step's buffer holds A's 128 rows, then
// BT's BN rows.
#define TC_BLOCK 128
#define TC_BK 64
#define STAGE_BYTES(BN) ((TC_BLOCK + (BN)) * TC_BK)

// Starts this thread's copies (256 threads) of step `step` (depth TC_BK step) into buffer
// step % STAGES, laid out by Place.
template <int STAGES, int BN, typename Place>
__device__ __forceinline__ void copy_step(u8* smem, const u32* a, const u32* bt, u32 m, u32 n, u32 k, u32 step) {
    u8* stage = smem + (step % STAGES) * STAGE_BYTES(BN);
    copy_pieces<TC_BLOCK / 64, 256>(stage, a, m, k, blockIdx.y * TC_BLOCK, step * TC_BK, Place());
    copy_pieces<BN / 64, 256>(stage + TC_BLOCK * TC_BK, bt, n, k, blockIdx.x * BN, step * TC_BK, Place());
}

// What a block of BN columns with STAGES buffers takes: the buffers, then C in the same memory.
#define TC_SMEM_BYTES(STAGES, BN) \
    ((STAGES) * STAGE_BYTES(BN) > C_BYTES(TC_BLOCK, BN) ? (STAGES) * STAGE_BYTES(BN) : C_BYTES(TC_BLOCK, BN))

// ---------------------------------------------------------------------------------------------
// Phase A: mma.sync (sm_80+)

// One warp-wide mma.sync.m16n8k32 (s8 x s8 + s32): d = a · b + c for a 16x32 A fragment
// (4 registers a lane), a 32x8 B fragment (2) and a 16x8 accumulator (4), in the fragment
// layouts of the PTX ISA. emu.h emulates it from that definition.
__device__ __forceinline__ void mma_16832(i32 d[4], const u32 a[4], const u32 b[2], const i32 c[4]) {
#ifdef GPOW_EMULATION
    emu::mma_m16n8k32_s8(d, a, b, c);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]));
#endif
}

// Four buffers: the copies run three steps ahead of the tensor cores.
#define MMA_STAGES 4
#define MMA_SMEM_BYTES TC_SMEM_BYTES(MMA_STAGES, 128)

// Word w (0..15) of row r of a SwizzledRows slab.
__device__ __forceinline__ u32 swizzled_word(const u8* slab, u32 r, u32 w) {
    return *(const u32*)(slab + 64 * r + 16 * ((w / 4) ^ ((r >> 1) & 3)) + 4 * (w % 4));
}

// C_p = A_p · B_p with mma.sync m16n8k32 (sm_80+): 128x128 per block of 8 warps, each warp
// 64 rows x 32 columns (4 x 4 fragments); A and BT come through MMA_STAGES buffers of 64 bytes
// of depth, copied asynchronously three steps ahead; then the block's C in the same shared
// memory, its 64 tiles hashed at once. grid (ceil(n / 128), ceil(m / 128)), 256 threads,
// MMA_SMEM_BYTES of dynamic shared memory; two blocks fit an SM's registers.
extern "C" __global__ void __launch_bounds__(256, 2)
    gemm_mma(const u32* a, const u32* bt, u32 m, u32 n, u32 k, u32 g, u32 p, u32* leaves) {
    batch_product(a, bt, leaves, p, m, n, k);
    u8* smem = dynamic_shared(MMA_SMEM_BYTES);
    const u32 t = threadIdx.x, warp = t / 32, lane = t % 32, gid = lane / 4, tig = lane % 4;
    const u32 wm = warp / 4, wn = warp % 4;
    i32 acc[4][4][4];
    for (int mi = 0; mi < 4; mi++)
        for (int ni = 0; ni < 4; ni++)
            for (int c = 0; c < 4; c++) acc[mi][ni][c] = 0;
    const u32 steps = (k + TC_BK - 1) / TC_BK;
    for (u32 s = 0; s < MMA_STAGES - 1; s++) {
        if (s < steps) copy_step<MMA_STAGES, 128, SwizzledRows>(smem, a, bt, m, n, k, s);
        cp_async_commit();
    }
    for (u32 step = 0; step < steps; step++) {
        // This thread's copies of this step are in; after the barrier everyone's are, and no
        // one still reads the buffer of the step before, which the copies below refill.
        cp_async_wait<MMA_STAGES - 2>();
        __syncthreads();
        if (step + MMA_STAGES - 1 < steps) copy_step<MMA_STAGES, 128, SwizzledRows>(smem, a, bt, m, n, k, step + MMA_STAGES - 1);
        cp_async_commit();
        const u8* as = smem + (step % MMA_STAGES) * STAGE_BYTES(128);
        const u8* bs = as + TC_BLOCK * TC_BK;
#pragma unroll
        for (u32 ks = 0; ks < TC_BK / 32; ks++) {
            u32 af[4][4], bf[4][2];
#pragma unroll
            for (u32 mi = 0; mi < 4; mi++) {
                const u32 r0 = 64 * wm + 16 * mi + gid;
                af[mi][0] = swizzled_word(as, r0, 8 * ks + tig);
                af[mi][1] = swizzled_word(as, r0 + 8, 8 * ks + tig);
                af[mi][2] = swizzled_word(as, r0, 8 * ks + 4 + tig);
                af[mi][3] = swizzled_word(as, r0 + 8, 8 * ks + 4 + tig);
            }
#pragma unroll
            for (u32 ni = 0; ni < 4; ni++) {
                const u32 c0 = 32 * wn + 8 * ni + gid;
                bf[ni][0] = swizzled_word(bs, c0, 8 * ks + tig);
                bf[ni][1] = swizzled_word(bs, c0, 8 * ks + 4 + tig);
            }
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++) mma_16832(acc[mi][ni], af[mi], bf[ni], acc[mi][ni]);
        }
    }
    // Only empty groups are left; the barrier ends every read of the buffers.
    cp_async_wait<0>();
    __syncthreads();
    i32* cs = (i32*)smem;
    for (u32 mi = 0; mi < 4; mi++) {
        for (u32 ni = 0; ni < 4; ni++) {
            const u32 r = 64 * wm + 16 * mi + gid, c = 32 * wn + 8 * ni + 2 * tig;
            c_store<128>(cs, r, c, acc[mi][ni][0]);
            c_store<128>(cs, r, c + 1, acc[mi][ni][1]);
            c_store<128>(cs, r + 8, c, acc[mi][ni][2]);
            c_store<128>(cs, r + 8, c + 1, acc[mi][ni][3]);
        }
    }
    __syncthreads();
    hash_c_block<TC_BLOCK, 128>(cs, m, n, g, p, leaves);
}

// ---------------------------------------------------------------------------------------------
// Phase A: wgmma (sm_90a: H100, H200)

#if defined(GPOW_EMULATION) || defined(__CUDA_ARCH_FEAT_SM90_ALL)

// A wgmma matrix descriptor for a K-major operand without swizzling: core matrices of 8 rows x
// 16 bytes (128 contiguous bytes each), `lbo` bytes between core matrices adjacent in K, `sbo`
// bytes between those adjacent in M or N (PTX ISA, "Matrix Descriptor Format").
__device__ __forceinline__ u64 wgmma_descriptor(u32 address, u32 lbo, u32 sbo) {
    return (u64)((address & 0x3FFFF) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32);
}

// One warpgroup-wide wgmma.m64n128k32 (s8 x s8 + s32), A and B from shared memory; d is the
// thread's 64 accumulators in the ISA's m64nN layout; `accumulate` = 0 ignores d's input.
// Asynchronous: d and the shared memory it reads are the tensor cores' until a wgmma_wait
// covering its commit group returns.
__device__ __forceinline__ void wgmma_64128(i32 d[64], u64 desc_a, u64 desc_b, u32 accumulate) {
#ifdef GPOW_EMULATION
    emu::wgmma_m64nNk32_s8(d, 128, desc_a, desc_b, accumulate);
#else
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p;\n"
        "}\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
#endif
}

// The same with 128 columns more (m64n256k32): 128 accumulators a thread.
__device__ __forceinline__ void wgmma_64256(i32 d[128], u64 desc_a, u64 desc_b, u32 accumulate) {
#ifdef GPOW_EMULATION
    emu::wgmma_m64nNk32_s8(d, 256, desc_a, desc_b, accumulate);
#else
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127}, %128, %129, p;\n"
        "}\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]), "+r"(d[64]), "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]), "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]), "+r"(d[79]), "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87]), "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95]), "+r"(d[96]), "+r"(d[97]), "+r"(d[98]), "+r"(d[99]), "+r"(d[100]), "+r"(d[101]), "+r"(d[102]), "+r"(d[103]), "+r"(d[104]), "+r"(d[105]), "+r"(d[106]), "+r"(d[107]), "+r"(d[108]), "+r"(d[109]), "+r"(d[110]), "+r"(d[111]), "+r"(d[112]), "+r"(d[113]), "+r"(d[114]), "+r"(d[115]), "+r"(d[116]), "+r"(d[117]), "+r"(d[118]), "+r"(d[119]), "+r"(d[120]), "+r"(d[121]), "+r"(d[122]), "+r"(d[123]), "+r"(d[124]), "+r"(d[125]), "+r"(d[126]), "+r"(d[127])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
#endif
}

// wgmma m64nNk32 for the N of a block.
template <int BN>
__device__ __forceinline__ void wgmma_64n(i32 d[BN / 2], u64 desc_a, u64 desc_b, u32 accumulate) {
    if constexpr (BN == 128) {
        wgmma_64128(d, desc_a, desc_b, accumulate);
    } else {
        wgmma_64256(d, desc_a, desc_b, accumulate);
    }
}

__device__ __forceinline__ void wgmma_fence() {
#ifndef GPOW_EMULATION
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit() {
#ifdef GPOW_EMULATION
    emu::wgmma_commit();
#else
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

// Waits until at most N of the warpgroup's wgmma commit groups are in flight.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#ifdef GPOW_EMULATION
    emu::wgmma_wait(N);
#else
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// Generic-proxy writes to shared memory (cp.async's among them) made visible to wgmma (the
// async proxy).
__device__ __forceinline__ void fence_proxy_async() {
#ifndef GPOW_EMULATION
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// C_p = A_p · B_p with wgmma m64nNk32 (N = BN): 128 x BN of C per block of two warpgroups (256
// threads), warpgroup w making rows 64w..64w+63 with the B both read; A and BT come through
// STAGES buffers of 64 bytes of depth, copied asynchronously STAGES - 2 steps ahead, and each
// step's two wgmmas run while the next step's are issued; then the block's C in the same
// shared memory, its tiles hashed at once. grid (ceil(n / BN), ceil(m / 128)),
// TC_SMEM_BYTES(STAGES, BN) of dynamic shared memory.
template <int BN, int STAGES>
__device__ __forceinline__ void gemm_wgmma_block(const u32* a, const u32* bt, u32 m, u32 n, u32 k, u32 g, u32 p, u32* leaves) {
    batch_product(a, bt, leaves, p, m, n, k);
    constexpr u32 AHEAD = STAGES - 2;
    u8* smem = dynamic_shared(TC_SMEM_BYTES(STAGES, BN));
    const u32 t = threadIdx.x, warp = t / 32, lane = t % 32, gid = lane / 4, tig = lane % 4, wg = warp / 4;
    i32 acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; i++) acc[i] = 0;
    const u32 steps = (k + TC_BK - 1) / TC_BK;
    for (u32 s = 0; s < AHEAD; s++) {
        if (s < steps) copy_step<STAGES, BN, CoreMatrices>(smem, a, bt, m, n, k, s);
        cp_async_commit();
    }
    for (u32 step = 0; step < steps; step++) {
        // This thread's copies of this step are in and visible to the tensor cores; after the
        // barrier everyone's are, and every warpgroup's wgmmas of two steps back are done, so
        // their buffer can be refilled.
        cp_async_wait<AHEAD - 1>();
        fence_proxy_async();
        __syncthreads();
        if (step + AHEAD < steps) copy_step<STAGES, BN, CoreMatrices>(smem, a, bt, m, n, k, step + AHEAD);
        cp_async_commit();
        // A's rows 64w.. (warpgroup w) start 8 row groups of 512 bytes in.
        const u8* as = smem + (step % STAGES) * STAGE_BYTES(BN) + 4096 * wg;
        const u8* bs = smem + (step % STAGES) * STAGE_BYTES(BN) + TC_BLOCK * TC_BK;
        wgmma_fence();
#pragma unroll
        for (u32 ks = 0; ks < TC_BK / 32; ks++) {
            // Two core matrices of depth per k32 step: 256 bytes further each step.
            const u64 da = wgmma_descriptor(shared_address(as + 256 * ks), 128, 512);
            const u64 db = wgmma_descriptor(shared_address(bs + 256 * ks), 128, 512);
            wgmma_64n<BN>(acc, da, db, 1);
        }
        wgmma_commit();
        wgmma_wait<1>();
    }
    wgmma_wait<0>();
    cp_async_wait<0>();
    __syncthreads();
    // Accumulator i of a thread: rows 64 wg + 16 (warp % 4) + gid (+ 8 for i % 4 >= 2),
    // column 8 (i / 4) + 2 tig + (i % 2).
    i32* cs = (i32*)smem;
#pragma unroll
    for (u32 i = 0; i < BN / 2; i++) {
        const u32 row = 64 * wg + 16 * (warp % 4) + gid + ((i % 4) >= 2 ? 8 : 0), col = 8 * (i / 4) + 2 * tig + (i % 2);
        c_store<BN>(cs, row, col, acc[i]);
    }
    __syncthreads();
    hash_c_block<TC_BLOCK, BN>(cs, m, n, g, p, leaves);
}

// 128 x 128 blocks, 5 buffers (80 KiB): 112 registers, so two blocks share an SM and one's
// tile hashing overlaps the other's products. 128 operations a byte of operands.
extern "C" __global__ void __launch_bounds__(256, 2)
    gemm_wgmma(const u32* a, const u32* bt, u32 m, u32 n, u32 k, u32 g, u32 p, u32* leaves) {
    gemm_wgmma_block<128, 5>(a, bt, m, n, k, g, p, leaves);
}

// 128 x 256 blocks, 6 buffers of 24 KiB (144 KiB): one block an SM, its hashing not
// overlapped, but 171 operations a byte of operands, a third less L2 traffic than 128 x 128.
// The self-test keeps whichever is faster on the GPU at hand.
extern "C" __global__ void __launch_bounds__(256, 1)
    gemm_wgmma_wide(const u32* a, const u32* bt, u32 m, u32 n, u32 k, u32 g, u32 p, u32* leaves) {
    gemm_wgmma_block<256, 6>(a, bt, m, n, k, g, p, leaves);
}

#endif

// ---------------------------------------------------------------------------------------------
// Merkle reduction

#define MERKLE_THREADS 256
#define MERKLE_SPAN (2 * MERKLE_THREADS)

// Block b reduces nodes [512b, min(count, 512b + 512)) of a level to one node of the level
// nine above (the carry rule holds inside the block: it starts at an even index, and only the
// last block can be short). out[b] = that node. 256 threads. Tree z of a batch (grid
// (blocks, 1, trees)) has its level `count` nodes further on in `in` and its nodes above
// `gridDim.x` further on in `out`.
extern "C" __global__ void merkle_reduce(const u32* __restrict__ in, u64 count, u32* __restrict__ out) {
    __shared__ u32 nodes[MERKLE_SPAN][8];
    in += (u64)blockIdx.z * count * 8;
    out += (u64)blockIdx.z * gridDim.x * 8;
    const u32 t = threadIdx.x;
    const u64 first = (u64)blockIdx.x * MERKLE_SPAN;
    u32 live = (u32)(count - first < MERKLE_SPAN ? count - first : MERKLE_SPAN);
    for (u32 i = t; i < MERKLE_SPAN; i += MERKLE_THREADS) {
        if (i < live) {
            for (int w = 0; w < 8; w++) nodes[i][w] = in[8 * (first + i) + w];
        }
    }
    __syncthreads();
    while (live > 1) {
        const u32 next = (live + 1) / 2;
        u32 h[8];
        const bool busy = t < next;
        if (busy) {
            if (2 * t + 1 < live) {
                merkle_node(nodes[2 * t], nodes[2 * t + 1], h);
            } else {
                for (int w = 0; w < 8; w++) h[w] = nodes[2 * t][w];
            }
        }
        __syncthreads();
        if (busy) {
            for (int w = 0; w < 8; w++) nodes[t][w] = h[w];
        }
        __syncthreads();
        live = next;
    }
    if (t == 0) {
        for (int w = 0; w < 8; w++) out[8 * (u64)blockIdx.x + w] = nodes[0][w];
    }
}

// ---------------------------------------------------------------------------------------------
// Phase B
//
// The kernels that read a table they do not write (the cache, the dataset, a Merkle level)
// mark their pointers `__restrict__`, so those reads go through the read-only path
// (ld.global.nc).

#define CACHE_ITEMS (1u << 22)

// cache[x] = SHA-256(0x10 ‖ master_g ‖ u32 x ‖ 0x00) ‖ SHA-256(0x10 ‖ master_g ‖ u32 x ‖ 0x01).
// `master_g` is a stored hash (8 words). One thread per item, grid-stride.
extern "C" __global__ void cache_build(const u32* master_g, u32* cache) {
    u32 mg[8];
    for (int i = 0; i < 8; i++) mg[i] = master_g[i];
    for (u32 x = blockIdx.x * blockDim.x + threadIdx.x; x < CACHE_ITEMS; x += gridDim.x * blockDim.x) {
        for (u32 half = 0; half < 2; half++) {
            // Bytes: 0x10, master_g (32), x (4 LE), half, then the padding; 38 bytes.
            u32 s[8], w[16];
            sha256_init(s);
            w[0] = 0x10000000u | (bswap32(mg[0]) >> 8);
            for (int i = 1; i < 8; i++) w[i] = tagged_word(mg[i - 1], mg[i]);
            w[8] = tagged_word(mg[7], x);
            w[9] = (x & 0xff000000u) | (half << 16) | 0x8000u;
            for (int i = 10; i < 15; i++) w[i] = 0;
            w[15] = 38 * 8;
            sha256_block(s, w);
            store_hash(cache + 16 * (u64)x + 8 * half, s);
        }
    }
}

// Dataset items [first, first + count), GPOW.md "Dataset" steps 1-3. Grid-stride.
extern "C" __global__ void dataset_build(const u32* __restrict__ cache, u32* __restrict__ dataset, u64 first, u64 count, u32 k0, u32 k1) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (u64)gridDim.x * blockDim.x) {
        const u32 j = (u32)(first + i);
        u32 mix[16];
        for (u32 q = 0; q < 4; q++) {
            u32 c[4] = {j, q, 0, 0xD0};
            philox(c, k0, k1);
            for (int w = 0; w < 4; w++) mix[4 * q + w] = c[w];
        }
#pragma unroll
        for (u32 t = 0; t < 16; t++) {
            const u32 x = pick(fnv(j ^ t, mix[t]), CACHE_ITEMS);
            fnv_into(mix, cache + 16 * (u64)x, 4);
        }
        u32* out = dataset + 16 * (u64)j;
        for (int q = 0; q < 4; q++) {
            u32 c[4] = {mix[4 * q], mix[4 * q + 1], mix[4 * q + 2], mix[4 * q + 3]};
            philox(c, mix[(4 * q + 4) % 16] ^ k0, mix[(4 * q + 5) % 16] ^ k1);
            for (int w = 0; w < 4; w++) out[4 * q + w] = c[w];
        }
    }
}

#define WALK_STEPS 128

// cmix[i] from mix[4i..4i+3] (GPOW.md, walk step 3).
__device__ __forceinline__ u32 fold_quad(const u32 q[4]) { return fnv(fnv(fnv(q[0], q[1]), q[2]), q[3]); }

// leaves[l] = lane_leaf(g, lane) = SHA-256(0x13 ‖ u32 g ‖ u32 lane ‖ cmix), 41 bytes.
__device__ __forceinline__ void store_lane_leaf(u32 g, u32 lane, const u32 cmix[8], u32* leaf) {
    u32 v[10];
    v[0] = g;
    v[1] = lane;
    for (int i = 0; i < 8; i++) v[2 + i] = cmix[i];
    u32 s[8], w[16];
    sha256_init(s);
    w[0] = 0x13000000u | (bswap32(v[0]) >> 8);
    for (int i = 1; i < 10; i++) w[i] = tagged_word(v[i - 1], v[i]);
    w[10] = (v[9] & 0xff000000u) | 0x00800000u;
    for (int i = 11; i < 15; i++) w[i] = 0;
    w[15] = 41 * 8;
    sha256_block(s, w);
    store_hash(leaf, s);
}

// Lanes [first, first + count) of the walk over `items` dataset items; leaves[ℓ] =
// lane_leaf(g, ℓ). A thread a lane, grid-stride: a warp's load reads 16 bytes of 32 pages.
extern "C" __global__ void walk(const u32* __restrict__ dataset, u64 items, u64 first, u64 count, u32 k0, u32 k1, u32 g, u32* __restrict__ leaves) {
    const u64 pages = items / 2;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (u64)gridDim.x * blockDim.x) {
        const u64 l = first + i;
        const u32 lane = (u32)l;
        u32 mix[32];
        for (u32 s = 0; s < 8; s++) {
            u32 c[4] = {lane, s, 1, 0x57};
            philox(c, k0, k1);
            for (int w = 0; w < 4; w++) mix[4 * s + w] = c[w];
        }
        // Unrolled by 32 so that mix[a % 32] is a register, not local memory; a page is 128
        // aligned bytes, read 16 at a time.
        for (u32 a0 = 0; a0 < WALK_STEPS; a0 += 32) {
#pragma unroll
            for (u32 j = 0; j < 32; j++) {
                const u32 pg = pick(fnv((a0 + j) ^ lane, mix[j]), pages);
                fnv_into(mix, dataset + 32 * (u64)pg, 8);
            }
        }
        u32 cmix[8];
        for (int i = 0; i < 8; i++) cmix[i] = fold_quad(mix + 4 * i);
        store_lane_leaf(g, lane, cmix, leaves + 8 * l);
    }
}

// The same walk, eight threads a lane: thread t of a lane's group holds mix[4t..4t+3] and reads
// bytes 16t..16t+15 of each page, so a warp's load reads four whole pages (four 128-byte lines)
// where `walk`'s reads 16 bytes of 32 lines, a tag lookup of the L1 each. Step a's mix[a mod 32]
// comes from thread (a mod 32) / 4 of the group by a shuffle, and thread i's cmix[i] is its own
// four words folded. A group walks WALK_GROUP_LANES lanes at once: independent chains, so more
// reads in flight (with four, 64 registers on sm_90a: four blocks of 256 an SM, 512 lanes and
// 64 KiB of page reads in flight an SM). The grid-stride loop runs the same iterations on every
// thread of a warp (a shuffle takes the whole warp): a group past the end walks junk and stores
// nothing.
#define WALK_GROUP 8
#define WALK_GROUP_LANES 4

extern "C" __global__ void walk_group(const u32* __restrict__ dataset, u64 items, u64 first, u64 count, u32 k0, u32 k1, u32 g, u32* __restrict__ leaves) {
    const u64 pages = items / 2;
    const u32 t = threadIdx.x % WALK_GROUP;
    const u64 thread = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    const u64 stride = (u64)gridDim.x * blockDim.x / WALK_GROUP * WALK_GROUP_LANES;
    const u64 group_first = thread / WALK_GROUP * WALK_GROUP_LANES;
    const u64 warp_first = (thread - threadIdx.x % 32) / WALK_GROUP * WALK_GROUP_LANES;
    for (u64 i0 = 0; warp_first + i0 < count; i0 += stride) {
        u32 lane[WALK_GROUP_LANES], mix[WALK_GROUP_LANES][4];
#pragma unroll
        for (int h = 0; h < WALK_GROUP_LANES; h++) {
            lane[h] = (u32)(first + group_first + i0 + h);
            u32 c[4] = {lane[h], t, 1, 0x57};
            philox(c, k0, k1);
            for (int w = 0; w < 4; w++) mix[h][w] = c[w];
        }
        // Unrolled by 4 so that the word of mix[a mod 32] a thread holds, a mod 4, is a register;
        // its thread, (a mod 32) / 4, is the shuffle's source.
        for (u32 a0 = 0; a0 < WALK_STEPS; a0 += 4) {
            const u32 src = (a0 % 32) / 4;
#pragma unroll
            for (u32 j = 0; j < 4; j++) {
                u32 pg[WALK_GROUP_LANES];
#pragma unroll
                for (int h = 0; h < WALK_GROUP_LANES; h++) {
                    pg[h] = pick(fnv((a0 + j) ^ lane[h], __shfl_sync(0xffffffffu, mix[h][j], src, WALK_GROUP)), pages);
                }
#pragma unroll
                for (int h = 0; h < WALK_GROUP_LANES; h++) fnv_into(mix[h], dataset + 32 * (u64)pg[h] + 4 * t, 1);
            }
        }
        // Thread h of the group gathers lane h's cmix and hashes its leaf (one SHA-256 in the
        // code, not one a lane).
        u32 cmix[8] = {0};
#pragma unroll
        for (int h = 0; h < WALK_GROUP_LANES; h++) {
            const u32 folded = fold_quad(mix[h]);
#pragma unroll
            for (int q = 0; q < 8; q++) {
                const u32 word = __shfl_sync(0xffffffffu, folded, q, WALK_GROUP);
                if (t == (u32)h) cmix[q] = word;
            }
        }
        const u64 i = group_first + i0 + t;
        if (t < WALK_GROUP_LANES && i < count) store_lane_leaf(g, (u32)(first + i), cmix, leaves + 8 * (first + i));
    }
}
