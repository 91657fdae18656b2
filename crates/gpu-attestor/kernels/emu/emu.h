// Host emulation of the CUDA C that kernels/gpow2.cu uses, for g++ (`GPOW_EMULATION`).
//
// A launch runs the grid's blocks one after another on blockDim.x real threads (emu.cpp), so
// `__shared__` variables become function statics: one copy, used by one block at a time.
// `__syncthreads()` is a barrier of the block's threads; `__syncwarp()` a barrier of the
// calling thread's warp (32 consecutive threads), where `__shfl_sync` meets too. The
// asynchronous instructions are played adversarially: a cp.async fills its destination with
// junk when issued and writes its bytes only when a wait covers it (reading a buffer before
// its wait, or refilling one that is still read, gives wrong roots), and a wgmma, computed at
// issue, delivers its accumulators at the wait that covers it, and the launch fails if its
// operands in shared memory changed in between (a buffer refilled under a wgmma in flight). A
// launch that gives less dynamic shared memory than the kernel uses fails too. What this
// cannot show: timing, memory ordering beyond barriers, and a warp-level instruction whose
// layout emu.h and the kernel misread the same way (the self-test on a GPU is what catches
// that).
#pragma once

#include <cstdint>

typedef uint32_t u32;
typedef uint64_t u64;
typedef int32_t i32;
typedef uint8_t u8;

struct dim3 {
    u32 x, y, z;
};

namespace emu {
extern thread_local dim3 thread_idx;
extern thread_local dim3 block_idx;
extern dim3 block_dim;
extern dim3 grid_dim;
void syncthreads();
void syncwarp();
uint32_t shfl(uint32_t v, uint32_t src, uint32_t width);
void mma_m16n8k32_s8(int32_t d[4], const uint32_t a[4], const uint32_t b[2], const int32_t c[4]);
uint32_t shared_address(const void* p);
void wgmma_m64nNk32_s8(int32_t* d, uint32_t n, uint64_t desc_a, uint64_t desc_b, uint32_t accumulate);
void wgmma_commit();
void wgmma_wait(uint32_t pending);
uint8_t* dynamic_shared(uint32_t bytes);
void cp_async16(uint8_t* dst, const uint32_t* src, uint32_t src_bytes);
void cp_async_commit();
void cp_async_wait(uint32_t pending);
}  // namespace emu
#define __align__(n) __attribute__((aligned(n)))

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define __global__
#define __launch_bounds__(...)
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() emu::syncthreads()
#define __syncwarp() emu::syncwarp()
// Every thread of the warp takes part (the kernels call it with the full mask).
#define __shfl_sync(mask, v, src, width) emu::shfl((v), (src), (width))

inline u32 __umulhi(u32 a, u32 b) { return (u32)(((u64)a * b) >> 32); }

// PTX prmt in its default mode: byte i of the result is byte (s >> 4i) & 7 of {y, x}.
inline u32 __byte_perm(u32 x, u32 y, u32 s) {
    const u64 both = ((u64)y << 32) | x;
    u32 out = 0;
    for (int i = 0; i < 4; i++) out |= (u32)((both >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return out;
}

// c + the four products of the signed bytes of a and b.
inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
    return c;
}
