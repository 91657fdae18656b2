//! One GPU's GPoW-2 work on a [`Device`]: what the kernels are launched with, in which order,
//! and what comes back to the host.
//!
//! - Phase A: products go in batches (one product at the production shape; as many small ones
//!   as [`Tuning::product_batch_bytes`] of operands hold, each kernel launched once for the
//!   whole batch): batch `b + 1` is filled (A_p and BT_p, one stream) while batch `b` is
//!   multiplied (the other stream), in two buffer slots guarded by events; the GEMM hashes
//!   its tiles in its epilogue and the leaves are reduced on the device to `R_p`, written into
//!   a table of roots that comes back once, after the last product.
//! - Phase B: the cache and the dataset in batches, the walk in batches, lane leaves kept on
//!   the device; the tree's lowest nine levels are reduced on the device and the levels above
//!   kept on the host, so a lane's path needs one 512-leaf block from the device.
//! - Openings: a sampled product is computed again and its leaves come back whole.
//!
//! Buffers are kept between challenges and grown when a challenge needs more.

use super::{Device, DeviceError, DevicePtr, GemmKernel, Launch, Param, Stream, WalkKernel};
use crate::gpow2::challenge::{GpuKeys, GpuWork};
use crate::gpow2::phase_b::CACHE_ITEMS;
use crate::merkle::{self, Hash, Tree};

/// Threads per block of every kernel (the kernels assume it where they use shared memory).
const THREADS: u32 = 256;
/// Rows of BT made by one block of `fill_bt`.
const FILL_ROWS: u32 = 256;
/// Nodes one block of `merkle_reduce` reduces to one (nine levels).
const MERKLE_SPAN: u64 = 512;

/// Sizes of the backend's launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Most blocks of a grid-stride kernel. In production enough for a thread an item (lane,
    /// Philox block) of a whole batch: a grid of a few waves leaves its last wave part-empty
    /// (1024 blocks of `walk`, three resident an SM on 132 SMs, are 2.6 waves: the third runs
    /// at 60 %), where tens of thousands of blocks end within one block's time of each other.
    /// The emulated tests take a few, since the emulator pays a barrier between blocks.
    pub max_blocks: u32,
    /// Dataset items per `dataset_build` launch.
    pub build_batch: u64,
    /// Lanes per `walk` launch.
    pub walk_batch: u64,
    /// Bytes of operands (A_p and BT_p) of the products filled and multiplied by one launch
    /// of each phase-A kernel: a production product (256 MiB) alone, the guide example's 1000
    /// products of 256³ (128 KiB each) at once, instead of some 8000 launches and events that
    /// would take longer than their work.
    pub product_batch_bytes: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self { max_blocks: 1 << 16, build_batch: 1 << 24, walk_batch: 1 << 22, product_batch_bytes: 256 << 20 }
    }
}

/// Most products of one batch: a grid's z.
const MAX_BATCH: u32 = 65535;

/// A device allocation the worker owns.
#[derive(Debug, Default, Clone, Copy)]
struct Buffer {
    ptr: DevicePtr,
    bytes: u64,
}

/// The worker's buffers, by use.
#[derive(Debug, Default)]
struct Buffers {
    a: [Buffer; 2],
    bt: [Buffer; 2],
    tile_leaves: Buffer,
    tile_scratch: Buffer,
    product_roots: Buffer,
    master: Buffer,
    cache: Buffer,
    dataset: Buffer,
    lane_leaves: Buffer,
    lane_scratch: Buffer,
}

impl Buffers {
    fn all_mut(&mut self) -> [&mut Buffer; 12] {
        let [a0, a1] = &mut self.a;
        let [b0, b1] = &mut self.bt;
        [
            a0,
            a1,
            b0,
            b1,
            &mut self.tile_leaves,
            &mut self.tile_scratch,
            &mut self.product_roots,
            &mut self.master,
            &mut self.cache,
            &mut self.dataset,
            &mut self.lane_leaves,
            &mut self.lane_scratch,
        ]
    }
}

/// The walk's state between `walk` and the openings: lanes, and the tree above level nine.
#[derive(Debug)]
struct Walked {
    lanes: u64,
    upper: Tree,
}

/// One GPU's worker.
#[derive(Debug)]
pub struct Worker<D: Device> {
    device: D,
    kernel: GemmKernel,
    walk_kernel: WalkKernel,
    tuning: Tuning,
    buffers: Buffers,
    /// The GPU (`g`) and the items of the dataset the device holds, once built.
    built: Option<(u32, u64)>,
    walked: Option<Walked>,
}

fn bytes_to_hashes(bytes: &[u8]) -> Vec<Hash> {
    bytes.chunks_exact(32).map(|c| c.try_into().expect("32-byte chunks")).collect()
}

/// Blocks for `threads` threads of a grid-stride kernel.
fn stride_blocks(threads: u64, tuning: &Tuning) -> u32 {
    threads.div_ceil(u64::from(THREADS)).clamp(1, u64::from(tuning.max_blocks)) as u32
}

impl<D: Device> Worker<D> {
    pub fn new(device: D, kernel: GemmKernel, tuning: Tuning) -> Self {
        let walk_kernel = WalkKernel::ALL[0];
        Self { device, kernel, walk_kernel, tuning, buffers: Buffers::default(), built: None, walked: None }
    }

    pub fn kernel(&self) -> GemmKernel {
        self.kernel
    }

    pub fn set_kernel(&mut self, kernel: GemmKernel) {
        self.kernel = kernel;
    }

    pub fn walk_kernel(&self) -> WalkKernel {
        self.walk_kernel
    }

    pub fn set_walk_kernel(&mut self, kernel: WalkKernel) {
        self.walk_kernel = kernel;
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    /// Makes `buffer` at least `bytes` long (its content is not kept).
    fn ensure(device: &mut D, buffer: &mut Buffer, bytes: u64) -> Result<(), DeviceError> {
        let bytes = bytes.max(32);
        if buffer.bytes < bytes {
            if buffer.bytes > 0 {
                device.free(buffer.ptr);
                *buffer = Buffer::default();
            }
            let ptr = device.alloc(bytes)?;
            *buffer = Buffer { ptr, bytes };
        }
        Ok(())
    }

    /// Gives back the phase-B buffers (the dataset is most of the GPU's memory).
    pub fn release_dataset(&mut self) {
        for b in [
            &mut self.buffers.cache,
            &mut self.buffers.dataset,
            &mut self.buffers.lane_leaves,
            &mut self.buffers.lane_scratch,
        ] {
            if b.bytes > 0 {
                self.device.free(b.ptr);
                *b = Buffer::default();
            }
        }
        self.built = None;
        self.walked = None;
    }

    /// Products of `work` a batch holds.
    fn batch(&self, work: &GpuWork) -> u32 {
        let operands = (u64::from(work.m) + u64::from(work.n)) * u64::from(work.k);
        let fit = self.tuning.product_batch_bytes / operands.max(1);
        u32::try_from(fit).unwrap_or(u32::MAX).clamp(1, work.count.clamp(1, MAX_BATCH))
    }

    /// Fills A_p and BT_p of products `p0..p0 + products` into `slot`.
    fn fill(&mut self, keys: &GpuKeys, work: &GpuWork, p0: u32, products: u32, slot: usize) -> Result<(), DeviceError> {
        let (a, bt) = (self.buffers.a[slot].ptr, self.buffers.bt[slot].ptr);
        let blocks = u64::from(work.m) * u64::from(work.k / 16);
        self.device.launch(
            Stream::Fill,
            &Launch {
                kernel: "fill_a",
                grid: (stride_blocks(blocks, &self.tuning), 1, products),
                block: THREADS,
                shared: 0,
                params: vec![
                    Param::U64(a),
                    Param::U32(work.m),
                    Param::U32(work.k),
                    Param::U32(p0),
                    Param::U32(keys.a[0]),
                    Param::U32(keys.a[1]),
                ],
            },
        )?;
        self.device.launch(
            Stream::Fill,
            &Launch {
                kernel: "fill_bt",
                grid: (work.n / 16, work.k.div_ceil(FILL_ROWS), products),
                block: FILL_ROWS,
                shared: 0,
                params: vec![
                    Param::U64(bt),
                    Param::U32(work.k),
                    Param::U32(p0),
                    Param::U32(keys.b[0]),
                    Param::U32(keys.b[1]),
                ],
            },
        )
    }

    /// Multiplies products `p0..p0 + products` of `slot`, their leaves into `tile_leaves`.
    fn gemm(&mut self, keys: &GpuKeys, work: &GpuWork, p0: u32, products: u32, slot: usize) -> Result<(), DeviceError> {
        let params = vec![
            Param::U64(self.buffers.a[slot].ptr),
            Param::U64(self.buffers.bt[slot].ptr),
            Param::U32(work.m),
            Param::U32(work.n),
            Param::U32(work.k),
            Param::U32(keys.g),
            Param::U32(p0),
            Param::U64(self.buffers.tile_leaves.ptr),
        ];
        let (rows, columns, threads) = self.kernel.block();
        let grid = (work.n.div_ceil(columns), work.m.div_ceil(rows), products);
        let launch =
            Launch { kernel: self.kernel.entry(), grid, block: threads, shared: self.kernel.shared_bytes(), params };
        self.device.launch(Stream::Main, &launch)
    }

    /// Reduces `trees` trees of `count` nodes each, one after the other at `from`
    /// (overwritten), to their roots, one after the other at `root`, with `scratch`.
    fn reduce_to_root(
        &mut self,
        mut from: DevicePtr,
        count: u64,
        trees: u32,
        mut scratch: DevicePtr,
        root: DevicePtr,
    ) -> Result<(), DeviceError> {
        let mut count = count;
        loop {
            let blocks = count.div_ceil(MERKLE_SPAN);
            let out = if blocks == 1 { root } else { scratch };
            self.merkle_reduce(from, count, trees, out)?;
            if blocks == 1 {
                return Ok(());
            }
            count = blocks;
            std::mem::swap(&mut from, &mut scratch);
        }
    }

    /// One level of `trees` trees of `count` nodes each (see `merkle_reduce` in the kernels).
    fn merkle_reduce(&mut self, from: DevicePtr, count: u64, trees: u32, out: DevicePtr) -> Result<(), DeviceError> {
        let blocks = u32::try_from(count.div_ceil(MERKLE_SPAN))
            .map_err(|_| DeviceError::new("merkle_reduce", format!("{count} nodes is too many for one level")))?;
        self.device.launch(
            Stream::Main,
            &Launch {
                kernel: "merkle_reduce",
                grid: (blocks, 1, trees),
                block: THREADS,
                shared: 0,
                params: vec![Param::U64(from), Param::U64(count), Param::U64(out)],
            },
        )
    }

    /// Phase A's buffers for `work` in batches of `batch` products, with their sizes: what
    /// [`Self::prepare_phase_a`] allocates and [`Self::phase_a_bytes`] counts.
    fn phase_a_buffers<'b>(buffers: &'b mut Buffers, work: &GpuWork, batch: u32) -> [(&'b mut Buffer, u64); 7] {
        let batch = u64::from(batch);
        let (m, n, k) = (batch * u64::from(work.m), batch * u64::from(work.n), u64::from(work.k));
        let tiles = work.tiles_per_product();
        let [a0, a1] = &mut buffers.a;
        let [b0, b1] = &mut buffers.bt;
        [
            (a0, m * k),
            (a1, m * k),
            (b0, n * k),
            (b1, n * k),
            (&mut buffers.tile_leaves, batch * tiles * 32),
            (&mut buffers.tile_scratch, batch * tiles.div_ceil(MERKLE_SPAN) * 32),
            (&mut buffers.product_roots, u64::from(work.count) * 32),
        ]
    }

    /// Bytes phase A of `work` needs on the device.
    pub fn phase_a_bytes(&self, work: &GpuWork) -> u64 {
        Self::phase_a_buffers(&mut Buffers::default(), work, self.batch(work)).iter().map(|(_, bytes)| bytes).sum()
    }

    /// Bytes the worker holds on the device now.
    pub fn held_bytes(&mut self) -> u64 {
        self.buffers.all_mut().iter().map(|b| b.bytes).sum()
    }

    /// Buffers for phase A of `work`.
    fn prepare_phase_a(&mut self, work: &GpuWork) -> Result<(), DeviceError> {
        let batch = self.batch(work);
        for (buffer, bytes) in Self::phase_a_buffers(&mut self.buffers, work, batch) {
            Self::ensure(&mut self.device, buffer, bytes)?;
        }
        Ok(())
    }

    /// Phase A of GPU `keys.g`: every `R_p`, in order. `work` is validated work.
    pub fn phase_a(&mut self, keys: &GpuKeys, work: &GpuWork) -> Result<Vec<Hash>, DeviceError> {
        self.prepare_phase_a(work)?;
        let tiles = work.tiles_per_product();
        let roots = self.buffers.product_roots.ptr;
        let batch = self.batch(work);
        let batches = work.count.div_ceil(batch);
        // Batch b: its first product and how many.
        let span = |b: u32| (b * batch, batch.min(work.count - b * batch));
        // Events: 0 and 1 = slot filled, 2 and 3 = slot's GEMM done.
        self.fill(keys, work, 0, span(0).1, 0)?;
        self.device.record(Stream::Fill, 0)?;
        for b in 0..batches {
            let slot = (b % 2) as usize;
            if b + 1 < batches {
                let next = 1 - slot;
                if b >= 1 {
                    // Slot `next` was batch b - 1's: its GEMM must be done with it.
                    self.device.wait(Stream::Fill, 2 + next)?;
                }
                let (p0, products) = span(b + 1);
                self.fill(keys, work, p0, products, next)?;
                self.device.record(Stream::Fill, next)?;
            }
            let (p0, products) = span(b);
            self.device.wait(Stream::Main, slot)?;
            self.gemm(keys, work, p0, products, slot)?;
            self.device.record(Stream::Main, 2 + slot)?;
            let (leaves, scratch) = (self.buffers.tile_leaves.ptr, self.buffers.tile_scratch.ptr);
            self.reduce_to_root(leaves, tiles, products, scratch, roots + 32 * u64::from(p0))?;
        }
        let mut out = vec![0u8; 32 * work.count as usize];
        self.device.download(roots, &mut out)?;
        Ok(bytes_to_hashes(&out))
    }

    /// The tile leaves of product `p`, computed again (for openings).
    pub fn product_leaves(&mut self, keys: &GpuKeys, work: &GpuWork, p: u32) -> Result<Vec<Hash>, DeviceError> {
        self.prepare_phase_a(work)?;
        self.device.synchronize()?;
        self.fill(keys, work, p, 1, 0)?;
        self.device.record(Stream::Fill, 0)?;
        self.device.wait(Stream::Main, 0)?;
        self.gemm(keys, work, p, 1, 0)?;
        let mut out = vec![0u8; 32 * work.tiles_per_product() as usize];
        self.device.download(self.buffers.tile_leaves.ptr, &mut out)?;
        Ok(bytes_to_hashes(&out))
    }

    /// Phase B's buffers for `work`, with their sizes: what [`Self::build`] allocates and
    /// [`Self::dataset_bytes`] counts.
    fn phase_b_buffers<'b>(buffers: &'b mut Buffers, work: &GpuWork) -> [(&'b mut Buffer, u64); 5] {
        let lanes = work.lanes();
        [
            (&mut buffers.master, 32),
            (&mut buffers.cache, CACHE_ITEMS * 64),
            (&mut buffers.dataset, work.items * 64),
            (&mut buffers.lane_leaves, lanes * 32),
            (&mut buffers.lane_scratch, lanes.div_ceil(MERKLE_SPAN) * 32),
        ]
    }

    /// Bytes phase B of `work` needs on the device.
    pub fn dataset_bytes(work: &GpuWork) -> u64 {
        Self::phase_b_buffers(&mut Buffers::default(), work).iter().map(|(_, bytes)| bytes).sum()
    }

    /// The cache and the dataset of GPU `keys.g` on the device; `work.items > 0`.
    pub fn build(&mut self, keys: &GpuKeys, work: &GpuWork) -> Result<(), DeviceError> {
        self.walked = None;
        for (buffer, bytes) in Self::phase_b_buffers(&mut self.buffers, work) {
            Self::ensure(&mut self.device, buffer, bytes)?;
        }
        let (master, cache, dataset) = (self.buffers.master.ptr, self.buffers.cache.ptr, self.buffers.dataset.ptr);
        // The upload waits for the work before it (Device::upload).
        self.device.upload(master, &keys.master_g)?;
        self.device.launch(
            Stream::Main,
            &Launch {
                kernel: "cache_build",
                grid: (stride_blocks(CACHE_ITEMS, &self.tuning), 1, 1),
                block: THREADS,
                shared: 0,
                params: vec![Param::U64(master), Param::U64(cache)],
            },
        )?;
        for first in (0..work.items).step_by(self.tuning.build_batch as usize) {
            let count = self.tuning.build_batch.min(work.items - first);
            self.device.launch(
                Stream::Main,
                &Launch {
                    kernel: "dataset_build",
                    grid: (stride_blocks(count, &self.tuning), 1, 1),
                    block: THREADS,
                    shared: 0,
                    params: vec![
                        Param::U64(cache),
                        Param::U64(dataset),
                        Param::U64(first),
                        Param::U64(count),
                        Param::U32(keys.d[0]),
                        Param::U32(keys.d[1]),
                    ],
                },
            )?;
        }
        self.device.synchronize()?;
        self.built = Some((keys.g, work.items));
        Ok(())
    }

    /// The walk after the walk key over the dataset [`Self::build`] made: `R_B,g`.
    pub fn walk(&mut self, g: u32, walk_key: [u32; 2]) -> Result<Hash, DeviceError> {
        let Some((built_g, items)) = self.built else {
            return Err(DeviceError::new("walk", "no dataset is built"));
        };
        if built_g != g {
            return Err(DeviceError::new("walk", format!("the dataset is GPU {built_g}'s, not GPU {g}'s")));
        }
        let lanes = items / 16;
        let (dataset, leaves, scratch) =
            (self.buffers.dataset.ptr, self.buffers.lane_leaves.ptr, self.buffers.lane_scratch.ptr);
        let (threads, lanes_per_group) = self.walk_kernel.threads_per();
        for first in (0..lanes).step_by(self.tuning.walk_batch as usize) {
            let count = self.tuning.walk_batch.min(lanes - first);
            self.device.launch(
                Stream::Main,
                &Launch {
                    kernel: self.walk_kernel.entry(),
                    grid: (stride_blocks(count.div_ceil(lanes_per_group) * threads, &self.tuning), 1, 1),
                    block: THREADS,
                    shared: 0,
                    params: vec![
                        Param::U64(dataset),
                        Param::U64(items),
                        Param::U64(first),
                        Param::U64(count),
                        Param::U32(walk_key[0]),
                        Param::U32(walk_key[1]),
                        Param::U32(g),
                        Param::U64(leaves),
                    ],
                },
            )?;
        }
        // Nine levels on the device; the rest on the host.
        self.merkle_reduce(leaves, lanes, 1, scratch)?;
        let mut level9 = vec![0u8; 32 * lanes.div_ceil(MERKLE_SPAN) as usize];
        self.device.download(scratch, &mut level9)?;
        let upper = Tree::new(bytes_to_hashes(&level9));
        let root = upper.root();
        self.walked = Some(Walked { lanes, upper });
        Ok(root)
    }

    /// Lane `lane`'s path inside `R_B,g` (after [`Self::walk`]).
    pub fn lane_path(&mut self, lane: u64) -> Result<Vec<Hash>, DeviceError> {
        let Some(walked) = &self.walked else {
            return Err(DeviceError::new("lane_path", "the dataset has not been walked"));
        };
        if lane >= walked.lanes {
            return Err(DeviceError::new("lane_path", format!("lane {lane}: the walk has {} lanes", walked.lanes)));
        }
        let block = lane / MERKLE_SPAN;
        let first = block * MERKLE_SPAN;
        let count = MERKLE_SPAN.min(walked.lanes - first);
        let mut bytes = vec![0u8; 32 * count as usize];
        let upper = walked.upper.path(block as usize);
        self.device.download(self.buffers.lane_leaves.ptr + 32 * first, &mut bytes)?;
        let mut path = merkle::path(&bytes_to_hashes(&bytes), (lane - first) as usize);
        path.extend(upper);
        Ok(path)
    }
}

impl<D: Device> Drop for Worker<D> {
    fn drop(&mut self) {
        let device = &mut self.device;
        for b in self.buffers.all_mut() {
            if b.bytes > 0 {
                device.free(b.ptr);
                *b = Buffer::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpow2::phase_b::{self, Dataset};
    use crate::gpow2::{Challenge, Isa, phase_a};
    use crate::gpu::emu::EmuDevice;
    use crate::gpu::test_gpus::cuda_workers;

    fn emulated(tuning: Tuning) -> Worker<EmuDevice> {
        Worker::new(EmuDevice::new(), GemmKernel::Dp4a, tuning)
    }

    fn challenge(seed: u64, work: GpuWork) -> Challenge {
        Challenge { gpus: vec![work], ..Challenge::plain(seed, 16, 1, 0) }
    }

    /// Each of `kernels` gives the CPU reference's roots: shapes that cut its blocks (64 and
    /// 128) short, a depth that is no multiple of its staging (64), several products, and a
    /// depth of 12 steps, which cycles the tensor-core kernels' buffers (4 and 5) more than twice.
    fn every_gemm_kernel_agrees<D: Device>(w: &mut Worker<D>, kernels: &[GemmKernel]) {
        for &kernel in kernels {
            w.set_kernel(kernel);
            for (seed, m, n, k, count) in [
                (u64::MAX, 144, 80, 80, 2),
                (2, 16, 272, 32, 1),
                (3, 128, 128, 128, 1),
                (4, 80, 144, 48, 1),
                (5, 48, 32, 720, 1),
            ] {
                let work = GpuWork { m, n, k, count, items: 0 };
                let keys = challenge(seed, work).gpu_keys()[0];
                let want = phase_a::commit(Isa::best(), &keys, &work, 2).product_roots;
                assert_eq!(w.phase_a(&keys, &work).unwrap(), want, "{} {kernel} {work:?}", w.device().name());
            }
        }
    }

    #[test]
    fn every_gemm_kernel_gives_the_cpu_reference_roots() {
        every_gemm_kernel_agrees(&mut emulated(Tuning::default()), &GemmKernel::ALL);
    }

    #[test]
    fn cuda_every_gemm_kernel_gives_the_cpu_reference_roots() {
        for (mut w, kernels) in cuda_workers("cuda_every_gemm_kernel_gives_the_cpu_reference_roots", Tuning::default())
        {
            every_gemm_kernel_agrees(&mut w, &kernels);
        }
    }

    /// Phase A with the worker's kernel gives the CPU reference's roots and leaves on shapes
    /// that cut the GEMM's blocks and the fill's 256-row blocks short, more tiles than one
    /// reduction block holds (alone and two in a batch), odd counts and the largest seed; with
    /// `SMALL_BATCHES`, in batches of two that end short.
    fn phase_a_agrees<D: Device>(w: &mut Worker<D>) {
        for (seed, m, n, k, count) in [
            (1, 16, 16, 16, 1),
            (u64::MAX, 48, 80, 272, 3),
            (11, 80, 48, 272, 5),
            (7, 64, 64, 64, 2),
            (9, 384, 400, 16, 1),
            (13, 400, 384, 16, 2),
            (3, 80, 16, 528, 1),
        ] {
            let work = GpuWork { m, n, k, count, items: 0 };
            let c = challenge(seed, work);
            let keys = c.gpu_keys()[0];
            let want = phase_a::commit(Isa::best(), &keys, &work, 2);
            let got = w.phase_a(&keys, &work).unwrap();
            let kernel = w.kernel();
            assert_eq!(got, want.product_roots, "{} {kernel} seed {seed} {work:?}", w.device().name());
            assert_eq!(phase_a::root_of(0, &got), want.root);
            let p = count - 1;
            assert_eq!(
                w.product_leaves(&keys, &work, p).unwrap(),
                phase_a::product_leaves(Isa::best(), &keys, &work, p, 2),
                "{kernel}: leaves of product {p}, {work:?}"
            );
        }
    }

    #[test]
    fn phase_a_gives_the_cpu_reference_roots() {
        let mut w = emulated(Tuning::default());
        assert_eq!(w.batch(&GpuWork { m: 80, n: 48, k: 272, count: 5, items: 0 }), 5);
        phase_a_agrees(&mut w);
    }

    #[test]
    fn phase_a_in_small_batches_gives_the_cpu_reference_roots() {
        let mut w = emulated(SMALL_BATCHES);
        assert_eq!(w.batch(&GpuWork { m: 80, n: 48, k: 272, count: 5, items: 0 }), 2);
        phase_a_agrees(&mut w);
    }

    /// A production product is a batch of one; the guide's 1000 products of 256³ are one
    /// batch; a batch is never empty nor more than a grid's z.
    #[test]
    fn batches_hold_what_the_tuning_says() {
        let w = emulated(Tuning::default());
        let work = |m, k, count| GpuWork { m, n: m, k, count, items: 0 };
        assert_eq!(w.batch(&work(4096, 32768, 64)), 1);
        assert_eq!(w.batch(&work(256, 256, 1000)), 1000);
        assert_eq!(w.batch(&work(16, 16, 100_000)), MAX_BATCH);
        assert_eq!(w.batch(&work(16, 16, 0)), 1);
        assert_eq!(
            w.phase_a_bytes(&work(256, 256, 1000)),
            2 * 1000 * 2 * 256 * 256 + 1000 * (256 + 1) * 32 + 1000 * 32
        );
    }

    /// On a GPU, with every kernel it runs, in one batch and in small ones.
    #[test]
    fn cuda_phase_a_gives_the_cpu_reference_roots() {
        for tuning in [Tuning::default(), SMALL_BATCHES] {
            for (mut w, kernels) in cuda_workers("cuda_phase_a_gives_the_cpu_reference_roots", tuning) {
                for kernel in kernels {
                    w.set_kernel(kernel);
                    phase_a_agrees(&mut w);
                }
            }
        }
    }

    /// Batches that end inside the dataset and the lanes, as the tests' tuning makes them, and
    /// phase A's products two at a time for the shapes 272 deep (48 + 80 rows).
    const SMALL_BATCHES: Tuning =
        Tuning { max_blocks: 8, build_batch: 4000, walk_batch: 300, product_batch_bytes: 2 * (48 + 80) * 272 };

    /// Phase B in batches that end inside the dataset and the lanes, lane paths across the
    /// device's nine levels and the host's, against the CPU reference.
    fn phase_b_agrees<D: Device>(w: &mut Worker<D>) {
        for (seed, items) in [(u64::MAX, 32), (5, 16 * 600 + 32)] {
            let work = GpuWork { m: 16, n: 16, k: 16, count: 1, items };
            let c = challenge(seed, work);
            let keys = c.gpu_keys()[0];
            let nonce = [seed as u8; 32];
            let walk_key = keys.walk_key(&nonce);
            let dataset = Dataset::build(Isa::best(), &keys, &work, 2).unwrap();
            let leaves = dataset.lane_leaves(Isa::best(), walk_key, 2);
            w.build(&keys, &work).unwrap();
            let root = w.walk(0, walk_key).unwrap();
            assert_eq!(root, merkle::root(&leaves), "{} {}: items {items}", w.device().name(), w.walk_kernel());
            assert_eq!(Some(root), Some(phase_b::commit(Isa::best(), &keys, &work, &nonce, 2).unwrap().root));
            let lanes = leaves.len() as u64;
            for lane in [0, 1, lanes - 1, lanes / 2, 511, 512, 513] {
                if lane < lanes {
                    assert_eq!(w.lane_path(lane).unwrap(), merkle::path(&leaves, lane as usize), "lane {lane}");
                }
            }
            assert!(w.lane_path(lanes).is_err());
        }
    }

    /// Each walk kernel; the batches of 300 lanes end inside a warp of `walk_group` (sixteen
    /// lanes a warp), and 2 lanes leave most of its one warp without a lane.
    #[test]
    fn phase_b_gives_the_cpu_reference_roots_and_paths() {
        for kernel in WalkKernel::ALL {
            let mut w = emulated(SMALL_BATCHES);
            w.set_walk_kernel(kernel);
            phase_b_agrees(&mut w);
        }
    }

    /// On a GPU, in the small batches and in the production ones.
    #[test]
    fn cuda_phase_b_gives_the_cpu_reference_roots_and_paths() {
        for tuning in [SMALL_BATCHES, Tuning::default()] {
            for (mut w, _) in cuda_workers("cuda_phase_b_gives_the_cpu_reference_roots_and_paths", tuning) {
                for kernel in WalkKernel::ALL {
                    w.set_walk_kernel(kernel);
                    phase_b_agrees(&mut w);
                }
            }
        }
    }
}
