// The kernels of gpow2.cu as a host library for the tests: `emu_launch` runs a kernel by name
// over a grid, with kernel parameters passed as cuLaunchKernel takes them (an array of
// pointers to the values), so the Rust backend drives this library and the GPU alike.
#include <barrier>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
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

// __shfl_sync(full mask, v, src, width): v of thread `src` of the caller's segment of `width`
// threads. Each thread publishes v and the warp meets once; the slots alternate between two
// sets, so a thread that runs ahead to its next shuffle writes the set no one reads any more
// (everyone read this one before they could pass the next shuffle's meeting).
uint32_t shfl(uint32_t v, uint32_t src, uint32_t width) {
    static uint32_t slots[2][32][32];
    static thread_local uint32_t round;
    const u32 warp = thread_idx.x / 32, lane = thread_idx.x % 32, set = round++ % 2;
    slots[set][warp][lane] = v;
    syncwarp();
    return slots[set][warp][(lane & ~(width - 1)) + src % width];
}

// The first thing a launch did that a GPU would not do right; the launch then fails with it.
static std::mutex violation_lock;
static std::string violation_text;
static void violation(const std::string& what) {
    std::lock_guard<std::mutex> hold(violation_lock);
    if (violation_text.empty()) violation_text = what;
}

// The block's dynamic shared memory: as much as a GPU gives a block at most (an H100's
// 227 KiB), of which the launch gives `launch_shared` bytes.
constexpr uint32_t MAX_DYNAMIC_SHARED = 227 * 1024;
alignas(128) static uint8_t dynamic_shared_memory[MAX_DYNAMIC_SHARED];
static uint32_t launch_shared;

uint8_t* dynamic_shared(uint32_t bytes) {
    if (bytes > launch_shared) {
        violation("the kernel uses " + std::to_string(bytes) + " bytes of dynamic shared memory; the launch gave " +
                  std::to_string(launch_shared));
    }
    return dynamic_shared_memory;
}

// cp.async: the source is read at issue (global memory does not change under a kernel), the
// destination filled with junk, and the bytes land when a wait covers the copy's group.
struct Copy {
    uint8_t* dst;
    uint8_t bytes[16];
};
static thread_local std::vector<Copy> open_copies;
static thread_local std::deque<std::vector<Copy>> copy_groups;

void cp_async16(uint8_t* dst, const uint32_t* src, uint32_t src_bytes) {
    Copy copy{dst, {}};
    if (src_bytes == 16) {
        std::memcpy(copy.bytes, src, 16);
    } else if (src_bytes != 0) {
        violation("cp.async of " + std::to_string(src_bytes) + " source bytes (the kernels copy 16 or 0)");
    }
    std::memset(dst, 0x5A, 16);
    open_copies.push_back(copy);
}

void cp_async_commit() {
    copy_groups.push_back(std::move(open_copies));
    open_copies.clear();
}

void cp_async_wait(uint32_t pending) {
    while (copy_groups.size() > pending) {
        for (const Copy& c : copy_groups.front()) std::memcpy(c.dst, c.bytes, 16);
        copy_groups.pop_front();
    }
}

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
// The block's shared memory, as cp.async and wgmma's descriptors address it: offsets into the
// dynamic shared memory, where the kernels that use those instructions keep their buffers.
uint32_t shared_address(const void* p) { return (uint32_t)(static_cast<const uint8_t*>(p) - dynamic_shared_memory); }

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
    if (address >= launch_shared) {
        violation("a wgmma descriptor names shared byte " + std::to_string(address) + ", past the launch's " +
                  std::to_string(launch_shared));
        return 0;
    }
    return (int8_t)dynamic_shared_memory[address];
}

// wgmma.mma_async.sync.aligned.m64nNk32.s32.s8.s8 (N = 128 or 256) with A and B from shared
// memory, for the warpgroup of the calling thread (threads 128w..128w+127 of the block). D's
// layout for m64nN (PTX ISA): warp w of the warpgroup holds rows 16w..16w+15; its lane
// (groupID = lane >> 2, threadID_in_group = lane % 4) holds, for each 8-column chunk i, d[4i +
// j] at row 16w + groupID (+ 8 for j >= 2) and column 8i + 2 threadID_in_group + (j & 1).
struct Wgmma {
    int32_t* d;
    uint32_t n;
    uint64_t desc_a, desc_b;
    int32_t out[128];
    // The operands as they were at issue (A's 64 x 32 bytes, then B's N x 32), kept by the
    // warpgroup's first thread alone: the same for the whole warpgroup.
    std::vector<int8_t> operands;
};
static thread_local std::vector<Wgmma> open_wgmma;
static thread_local std::deque<std::vector<Wgmma>> wgmma_groups;

static std::vector<int8_t> wgmma_operands(uint32_t n, uint64_t desc_a, uint64_t desc_b) {
    std::vector<int8_t> bytes;
    bytes.reserve((64 + n) * 32);
    for (u32 r = 0; r < 64; r++)
        for (u32 x = 0; x < 32; x++) bytes.push_back(described(desc_a, r, x));
    for (u32 r = 0; r < n; r++)
        for (u32 x = 0; x < 32; x++) bytes.push_back(described(desc_b, r, x));
    return bytes;
}

// Issued: computed now from shared memory and from d as the wgmmas before it in this thread
// leave it; delivered into d by the wait that covers it.
void wgmma_m64nNk32_s8(int32_t* d, uint32_t n, uint64_t desc_a, uint64_t desc_b, uint32_t accumulate) {
    if (n != 128 && n != 256) violation("wgmma with N = " + std::to_string(n));
    Wgmma w{d, n, desc_a, desc_b, {}, {}};
    // The newest wgmma in flight into d, if any, is what this one adds to.
    const int32_t* before = d;
    for (const std::vector<Wgmma>& group : wgmma_groups) {
        for (const Wgmma& o : group) {
            if (o.d == d) before = o.out;
        }
    }
    for (const Wgmma& o : open_wgmma) {
        if (o.d == d) before = o.out;
    }
    const u32 warp = (thread_idx.x / 32) % 4, lane = thread_idx.x % 32, group = lane >> 2, tig = lane % 4;
    for (u32 i = 0; i < n / 2; i++) {
        const u32 row = 16 * warp + group + ((i % 4) >= 2 ? 8 : 0), col = 8 * (i / 4) + 2 * tig + (i & 1);
        int32_t sum = accumulate ? before[i] : 0;
        for (u32 x = 0; x < 32; x++) sum += (int32_t)described(desc_a, row, x) * (int32_t)described(desc_b, col, x);
        w.out[i] = sum;
    }
    if (thread_idx.x % 128 == 0) w.operands = wgmma_operands(n, desc_a, desc_b);
    open_wgmma.push_back(std::move(w));
}

void wgmma_commit() {
    wgmma_groups.push_back(std::move(open_wgmma));
    open_wgmma.clear();
}

// Delivers the groups the wait covers; the warpgroup's first thread checks that the operands
// are still what they were at issue.
void wgmma_wait(uint32_t pending) {
    while (wgmma_groups.size() > pending) {
        for (const Wgmma& w : wgmma_groups.front()) {
            if (!w.operands.empty() && wgmma_operands(w.n, w.desc_a, w.desc_b) != w.operands) {
                violation("a wgmma's shared-memory operands changed while it was in flight (warpgroup " +
                          std::to_string(thread_idx.x / 128) + ")");
            }
            std::memcpy(w.d, w.out, sizeof(int32_t) * (w.n / 2));
        }
        wgmma_groups.pop_front();
    }
}

// What a thread leaves in flight at the end of a block is lost with it: a kernel bug.
static void end_block() {
    if (!open_copies.empty() || !copy_groups.empty()) {
        violation("a block ended with cp.async copies in flight (thread " + std::to_string(thread_idx.x) + ")");
    }
    if (!open_wgmma.empty() || !wgmma_groups.empty()) {
        violation("a block ended with wgmma in flight (thread " + std::to_string(thread_idx.x) + ")");
    }
    open_copies.clear();
    copy_groups.clear();
    open_wgmma.clear();
    wgmma_groups.clear();
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
    KERNEL(gemm_wgmma_wide)
    KERNEL(merkle_reduce)
    KERNEL(cache_build)
    KERNEL(dataset_build)
    KERNEL(walk)
    KERNEL(walk_group)
#undef KERNEL
    return nullptr;
}

std::mutex launches;

}  // namespace

// 0 on success, 1 for an unknown kernel, 2 for a bad shape, 3 when the kernel did what a GPU
// would not do right (`emu_violation` says what).
extern "C" int emu_launch(const char* name, u32 grid_x, u32 grid_y, u32 grid_z, u32 block_x, u32 shared, void** args) {
    std::lock_guard<std::mutex> one_at_a_time(launches);
    const std::function<void()> run = kernel(name, args);
    if (!run) return 1;
    if (grid_x == 0 || grid_y == 0 || grid_z == 0 || grid_z > 65535 || block_x == 0 || block_x > 1024 ||
        shared > emu::MAX_DYNAMIC_SHARED)
        return 2;
    emu::launch_shared = shared;
    emu::violation_text.clear();
    emu::block_dim = dim3{block_x, 1, 1};
    emu::grid_dim = dim3{grid_x, grid_y, grid_z};
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
            for (u32 z = 0; z < grid_z; z++) {
                for (u32 y = 0; y < grid_y; y++) {
                    for (u32 x = 0; x < grid_x; x++) {
                        emu::block_idx = dim3{x, y, z};
                        run();
                        emu::end_block();
                        // No thread starts the next block while another still uses the statics.
                        block_barrier.arrive_and_wait();
                    }
                }
            }
        });
    }
    for (auto& t : threads) t.join();
    return emu::violation_text.empty() ? 0 : 3;
}

// What the last launch that returned 3 did wrong.
extern "C" const char* emu_violation() { return emu::violation_text.c_str(); }
