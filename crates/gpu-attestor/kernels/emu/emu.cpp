// The kernels of gpow2.cu as a host library for the tests: `emu_launch` runs a kernel by name
// over a grid, with kernel parameters passed as cuLaunchKernel takes them (an array of
// pointers to the values), so the Rust backend drives this library and the GPU alike.
#include <barrier>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#define GPOW_EMULATION
#include "../gpow2.cu"

namespace emu {
thread_local dim3 thread_idx;
thread_local dim3 block_idx;
dim3 block_dim;
dim3 grid_dim;
static std::barrier<>* block_barrier;
static std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;

void syncthreads() { block_barrier->arrive_and_wait(); }
void syncwarp() { warp_barriers[thread_idx.x / 32]->arrive_and_wait(); }

// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32, from the PTX ISA's fragment layouts for
// .m16n8k32 with 8-bit types (groupID = lane >> 2, threadID_in_group = lane % 4):
// - A (16x32): a_i, i in 0..15, byte i % 4 of register i / 4, is at row groupID for i < 4 and
//   8 <= i < 12, groupID + 8 otherwise; column threadID_in_group * 4 + (i & 3), plus 16 for
//   i >= 8.
// - B (32x8): b_i, i in 0..7, byte i % 4 of register i / 4, is at row threadID_in_group * 4 +
//   (i & 3), plus 16 for i >= 4; column groupID.
// - C, D (16x8): c_i, i in 0..3, at row groupID for i < 2, groupID + 8 otherwise; column
//   threadID_in_group * 2 + (i & 1).
// Every lane publishes its fragments, the warp meets, each lane computes its four results
// from the whole matrices, and the warp meets again before the fragments can change.
void mma_m16n8k32_s8(int32_t d[4], const uint32_t a[4], const uint32_t b[2], const int32_t c[4]) {
    static uint32_t frag_a[32][32][4];
    static uint32_t frag_b[32][32][2];
    const u32 warp = thread_idx.x / 32, lane = thread_idx.x % 32;
    for (int i = 0; i < 4; i++) frag_a[warp][lane][i] = a[i];
    for (int i = 0; i < 2; i++) frag_b[warp][lane][i] = b[i];
    syncwarp();
    int8_t am[16][32], bm[32][8];
    for (u32 l = 0; l < 32; l++) {
        const u32 group = l >> 2, tig = l % 4;
        for (u32 i = 0; i < 16; i++) {
            const u32 row = (i < 4 || (i >= 8 && i < 12)) ? group : group + 8;
            const u32 col = tig * 4 + (i & 3) + (i >= 8 ? 16 : 0);
            am[row][col] = (int8_t)(frag_a[warp][l][i / 4] >> (8 * (i % 4)));
        }
        for (u32 i = 0; i < 8; i++) {
            const u32 row = tig * 4 + (i & 3) + (i >= 4 ? 16 : 0);
            bm[row][group] = (int8_t)(frag_b[warp][l][i / 4] >> (8 * (i % 4)));
        }
    }
    const u32 group = lane >> 2, tig = lane % 4;
    int32_t out[4];
    for (u32 i = 0; i < 4; i++) {
        const u32 row = i < 2 ? group : group + 8, col = tig * 2 + (i & 1);
        int32_t sum = c[i];
        for (u32 x = 0; x < 32; x++) sum += (int32_t)am[row][x] * (int32_t)bm[x][col];
        out[i] = sum;
    }
    syncwarp();
    for (int i = 0; i < 4; i++) d[i] = out[i];
}
// The block's shared memory, as wgmma's descriptors address it: offsets from the kernel's
// shared buffer (one per kernel here; the GPU's window holds every __shared__ variable).
static const uint8_t* shared_base;
void set_shared_base(const void* base) { shared_base = static_cast<const uint8_t*>(base); }
uint32_t shared_address(const void* p) { return (uint32_t)(static_cast<const uint8_t*>(p) - shared_base); }

// The element (r, kbyte) of a K-major operand a no-swizzle descriptor names (PTX ISA, "Matrix
// Descriptor Format" and the shared-memory layouts of wgmma): core matrices of 8 rows x 16
// bytes, 128 contiguous bytes each; the leading dimension byte offset (bits 16-29, >> 4)
// between core matrices adjacent in K, the stride dimension byte offset (bits 32-45, >> 4)
// between those adjacent in M or N; the start address in bits 0-13 (>> 4).
static int8_t described(uint64_t desc, uint32_t r, uint32_t kbyte) {
    const uint32_t start = (uint32_t)(desc & 0x3FFF) << 4;
    const uint32_t lbo = (uint32_t)((desc >> 16) & 0x3FFF) << 4;
    const uint32_t sbo = (uint32_t)((desc >> 32) & 0x3FFF) << 4;
    const uint32_t address = start + (r / 8) * sbo + (kbyte / 16) * lbo + (r % 8) * 16 + kbyte % 16;
    return (int8_t)shared_base[address];
}

// wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 with A and B from shared memory, for the
// warpgroup of the calling thread (the block's 128 threads here). D's layout for m64nN (PTX
// ISA): warp w of the warpgroup holds rows 16w..16w+15; its lane (groupID = lane >> 2,
// threadID_in_group = lane % 4) holds, for each 8-column chunk i, d[4i + j] at row 16w +
// groupID (+ 8 for j >= 2) and column 8i + 2 threadID_in_group + (j & 1).
void wgmma_m64n128k32_s8(int32_t d[64], uint64_t desc_a, uint64_t desc_b, uint32_t accumulate) {
    syncthreads();
    const u32 warp = thread_idx.x / 32, lane = thread_idx.x % 32, group = lane >> 2, tig = lane % 4;
    int32_t out[64];
    for (u32 i = 0; i < 64; i++) {
        const u32 row = 16 * warp + group + ((i % 4) >= 2 ? 8 : 0), col = 8 * (i / 4) + 2 * tig + (i & 1);
        int32_t sum = accumulate ? d[i] : 0;
        for (u32 x = 0; x < 32; x++) sum += (int32_t)described(desc_a, row, x) * (int32_t)described(desc_b, col, x);
        out[i] = sum;
    }
    syncthreads();
    for (u32 i = 0; i < 64; i++) d[i] = out[i];
}
}  // namespace emu

namespace {

// The parameters read once at launch, then the kernel called with them on every thread.
template <typename... A, size_t... I>
std::function<void()> bind_args(void (*f)(A...), void** args, std::index_sequence<I...>) {
    std::tuple<A...> values{*static_cast<A*>(args[I])...};
    return [f, values]() { std::apply(f, values); };
}

template <typename... A>
std::function<void()> bind_args(void (*f)(A...), void** args) {
    return bind_args(f, args, std::index_sequence_for<A...>{});
}

std::function<void()> kernel(const char* name, void** args) {
#define KERNEL(k) \
    if (std::strcmp(name, #k) == 0) return bind_args(k, args);
    KERNEL(fill_a)
    KERNEL(fill_bt)
    KERNEL(gemm_dp4a)
    KERNEL(gemm_mma)
    KERNEL(gemm_wgmma)
    KERNEL(merkle_reduce)
    KERNEL(cache_build)
    KERNEL(dataset_build)
    KERNEL(walk)
#undef KERNEL
    return nullptr;
}

std::mutex launches;

}  // namespace

// 0 on success, 1 for an unknown kernel, 2 for a bad shape.
extern "C" int emu_launch(const char* name, u32 grid_x, u32 grid_y, u32 block_x, void** args) {
    std::lock_guard<std::mutex> one_at_a_time(launches);
    const std::function<void()> run = kernel(name, args);
    if (!run) return 1;
    if (grid_x == 0 || grid_y == 0 || block_x == 0 || block_x > 1024) return 2;
    emu::block_dim = dim3{block_x, 1, 1};
    emu::grid_dim = dim3{grid_x, grid_y, 1};
    std::barrier<> block_barrier(block_x);
    emu::block_barrier = &block_barrier;
    emu::warp_barriers.clear();
    for (u32 w = 0; w < (block_x + 31) / 32; w++) {
        const u32 lanes = block_x - 32 * w < 32 ? block_x - 32 * w : 32;
        emu::warp_barriers.push_back(std::make_unique<std::barrier<>>(lanes));
    }
    std::vector<std::thread> threads;
    threads.reserve(block_x);
    for (u32 t = 0; t < block_x; t++) {
        threads.emplace_back([&, t]() {
            emu::thread_idx = dim3{t, 0, 0};
            for (u32 y = 0; y < grid_y; y++) {
                for (u32 x = 0; x < grid_x; x++) {
                    emu::block_idx = dim3{x, y, 0};
                    run();
                    // No thread starts the next block while another still uses the statics.
                    block_barrier.arrive_and_wait();
                }
            }
        });
    }
    for (auto& t : threads) t.join();
    return 0;
}
