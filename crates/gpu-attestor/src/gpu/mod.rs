//! The GPU backend of GPoW-2: the kernels of `kernels/gpow2.cu` driven on a [`Device`].
//!
//! - [`Device`]: what the backend needs of a GPU (memory, copies, launches by name, two streams
//!   and events). The CUDA driver implements it in production; the tests implement it with the
//!   same `.cu` source compiled for the host (`emu`, test builds only), so the backend's own
//!   launches, batching and reductions are what the emulation checks.
//! - [`worker`]: one GPU's work: phase A (fill one product ahead of the GEMM, tile leaves in
//!   the GEMM's epilogue, the Merkle reduction on the device), the cache, the dataset, the walk
//!   and the openings, with buffers kept between challenges.

pub mod backend;
pub mod cuda;
pub mod gpu_check;
pub mod self_test;
pub mod worker;

#[cfg(test)]
pub(crate) mod emu;
#[cfg(test)]
pub(crate) mod test_gpus;

use std::fmt;

/// The kernels' PTX (`ptx/gpow2.ptx`, made by `cargo xtask ptx` from `kernels/gpow2.cu` for
/// compute_80: the driver compiles it for the GPU it is loaded on). Its first line is the
/// source's SHA-256.
pub const PTX: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../ptx/gpow2.ptx"));

/// The same kernels for sm_90a (`ptx/gpow2.sm_90a.ptx`, compute_90a), with `gemm_wgmma` and
/// `gemm_wgmma_wide`: loaded on GPUs of compute capability 9.0 (H100, H200).
pub const PTX_SM90A: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../ptx/gpow2.sm_90a.ptx"));

/// `PTX` assembled by ptxas for sm_80 (`ptx/gpow2.sm_80.cubin`, made with the PTX by `cargo
/// xtask ptx`): runs on every GPU of compute capability 8.x.
pub const CUBIN_SM80: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../ptx/gpow2.sm_80.cubin"));

/// `PTX_SM90A` assembled for sm_90a (`ptx/gpow2.sm_90a.cubin`): H100, H200.
pub const CUBIN_SM90A: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../ptx/gpow2.sm_90a.cubin"));

/// What a GPU of compute capability `cc` loads: the cubin made for it where there is one (no
/// compiling at start: the driver would otherwise assemble the PTX for every context, a second
/// or two of CPU each where its cache is off), and the PTX, which the driver compiles for any
/// GPU from 8.0 on (a later architecture, or a cubin the driver refuses).
pub fn images_for(cc: (u32, u32)) -> (Option<&'static [u8]>, &'static str) {
    match cc {
        (9, 0) => (Some(CUBIN_SM90A), PTX_SM90A),
        (8, _) => (Some(CUBIN_SM80), PTX),
        _ => (None, PTX),
    }
}

/// A device address.
pub type DevicePtr = u64;

/// The GEMM kernels, in the order `auto` prefers them when they agree with the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GemmKernel {
    /// Portable: `dp4a`, four int8 products a thread and instruction.
    Dp4a,
    /// Tensor cores through `mma.sync.m16n8k32` (sm_80+): A100, RTX 4090, H100, H200.
    MmaSync,
    /// Hopper's warpgroup MMA, `wgmma.mma_async.m64n128k32` (sm_90a: H100, H200): 128 x 128
    /// blocks, two an SM.
    Wgmma,
    /// The same with `m64n256k32`: 128 x 256 blocks, one an SM, a third less L2 traffic; the
    /// self-test measures which of the two is faster.
    WgmmaWide,
}

impl GemmKernel {
    pub const ALL: [GemmKernel; 4] = [GemmKernel::Dp4a, GemmKernel::MmaSync, GemmKernel::Wgmma, GemmKernel::WgmmaWide];

    /// The name in `--kernel`, `hello` and the report.
    pub fn name(self) -> &'static str {
        match self {
            GemmKernel::Dp4a => "dp4a",
            GemmKernel::MmaSync => "mma-sync",
            GemmKernel::Wgmma => "wgmma",
            GemmKernel::WgmmaWide => "wgmma-wide",
        }
    }

    /// Whether a GPU of compute capability `cc` has the instructions.
    pub fn runs_on(self, cc: (u32, u32)) -> bool {
        match self {
            // The PTX is for compute_80.
            GemmKernel::Dp4a | GemmKernel::MmaSync => cc.0 >= 8,
            // sm_90a instructions run on 9.0 alone.
            GemmKernel::Wgmma | GemmKernel::WgmmaWide => cc == (9, 0),
        }
    }

    /// The kernels a GPU of compute capability `cc` runs, in order of preference on ties.
    pub fn supported(cc: (u32, u32)) -> Vec<GemmKernel> {
        GemmKernel::ALL.into_iter().filter(|k| k.runs_on(cc)).collect()
    }

    /// The kernel named `name` (`--kernel`, self-test results).
    pub fn from_name(name: &str) -> Option<GemmKernel> {
        GemmKernel::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kernel's entry point in the PTX.
    pub(crate) fn entry(self) -> &'static str {
        match self {
            GemmKernel::Dp4a => "gemm_dp4a",
            GemmKernel::MmaSync => "gemm_mma",
            GemmKernel::Wgmma => "gemm_wgmma",
            GemmKernel::WgmmaWide => "gemm_wgmma_wide",
        }
    }

    /// Rows and columns of C one block of the kernel makes, and its threads.
    pub(crate) fn block(self) -> (u32, u32, u32) {
        match self {
            GemmKernel::Dp4a => (64, 64, 256),
            GemmKernel::MmaSync => (128, 128, 256),
            GemmKernel::Wgmma => (128, 128, 256),
            GemmKernel::WgmmaWide => (128, 256, 256),
        }
    }

    /// Bytes of dynamic shared memory a block of the kernel uses (`TC_SMEM_BYTES` in the
    /// kernels): the larger of its buffers (4, 5 and 6 of them, each 64 bytes of depth of A's 128
    /// rows and BT's) and the block's C (its 16 x 16 tiles at 257 words each), which takes the
    /// same memory after the last step. Above the 48 KiB a block gets by default, so the driver
    /// is asked to allow it first.
    pub(crate) fn shared_bytes(self) -> u32 {
        let (rows, columns, _) = self.block();
        let tensor_cores = |stages: u32| (stages * (rows + columns) * 64).max(rows / 16 * (columns / 16) * 257 * 4);
        match self {
            GemmKernel::Dp4a => 0,
            GemmKernel::MmaSync => tensor_cores(4),
            GemmKernel::Wgmma => tensor_cores(5),
            GemmKernel::WgmmaWide => tensor_cores(6),
        }
    }
}

impl fmt::Display for GemmKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Phase B's walk kernels, in the order a GPU prefers them when they agree with the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WalkKernel {
    /// Eight threads a lane (`walk_group`): a warp's load reads four whole 128-byte pages, so
    /// the walk is bound by memory, not by the L1's one tag lookup a line.
    Group,
    /// A thread a lane (`walk`): a warp's load reads 16 bytes of 32 pages; the fallback.
    Thread,
}

impl WalkKernel {
    pub const ALL: [WalkKernel; 2] = [WalkKernel::Group, WalkKernel::Thread];

    /// The name in the self-test and gpu-check.
    pub fn name(self) -> &'static str {
        match self {
            WalkKernel::Group => "walk-group",
            WalkKernel::Thread => "walk-thread",
        }
    }

    pub fn from_name(name: &str) -> Option<WalkKernel> {
        WalkKernel::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kernel's entry point in the PTX.
    pub(crate) fn entry(self) -> &'static str {
        match self {
            WalkKernel::Group => "walk_group",
            WalkKernel::Thread => "walk",
        }
    }

    /// Threads a lane, and lanes a group of them walks at once (`WALK_GROUP`,
    /// `WALK_GROUP_LANES` in the kernels).
    pub(crate) fn threads_per(self) -> (u64, u64) {
        match self {
            WalkKernel::Group => (8, 4),
            WalkKernel::Thread => (1, 1),
        }
    }
}

impl fmt::Display for WalkKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A kernel parameter: a value or a device address (passed as a u64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    U32(u32),
    U64(u64),
}

/// A launch: kernel entry point, grid (x, y, z), threads per block (x), bytes of dynamic
/// shared memory per block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub kernel: &'static str,
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub shared: u32,
    pub params: Vec<Param>,
}

impl Launch {
    /// Each parameter as a u64: a u32 is the low half of its little-endian u64, so pointers to
    /// these values are what cuLaunchKernel takes (the driver reads each parameter's size from
    /// the kernel) and what the emulated device takes too.
    pub(crate) fn param_values(&self) -> Vec<u64> {
        self.params
            .iter()
            .map(|p| match *p {
                Param::U32(v) => u64::from(v),
                Param::U64(v) => v,
            })
            .collect()
    }
}

/// The two streams of a worker: fills run on one, GEMMs and everything else on the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Fill = 0,
    Main = 1,
}

/// Events a worker records and waits on; four are enough (two products in flight, each with a
/// fill and a GEMM).
pub const EVENTS: usize = 4;

/// A device failure, with the call that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{call}: {message}")]
pub struct DeviceError {
    pub call: &'static str,
    pub message: String,
}

impl DeviceError {
    pub fn new(call: &'static str, message: impl fmt::Display) -> Self {
        Self { call, message: message.to_string() }
    }
}

/// What the backend needs of one GPU. Calls are made from one thread at a time (a worker owns
/// its device); copies to the host wait for the work before them on every stream.
pub trait Device: Send + fmt::Debug {
    /// The device's name, for messages.
    fn name(&self) -> String;
    /// Free and total device memory in bytes.
    fn memory(&self) -> Result<(u64, u64), DeviceError>;
    fn alloc(&mut self, bytes: u64) -> Result<DevicePtr, DeviceError>;
    fn free(&mut self, ptr: DevicePtr);
    /// Copies `src` to `dst` (synchronous with respect to both streams).
    fn upload(&mut self, dst: DevicePtr, src: &[u8]) -> Result<(), DeviceError>;
    /// Copies from `src` into `dst` after all work submitted so far.
    fn download(&mut self, src: DevicePtr, dst: &mut [u8]) -> Result<(), DeviceError>;
    fn launch(&mut self, stream: Stream, launch: &Launch) -> Result<(), DeviceError>;
    /// Records event `event` (< [`EVENTS`]) on `stream`.
    fn record(&mut self, stream: Stream, event: usize) -> Result<(), DeviceError>;
    /// Makes `stream` wait for the last recording of `event`.
    fn wait(&mut self, stream: Stream, event: usize) -> Result<(), DeviceError>;
    /// Waits for all work submitted so far.
    fn synchronize(&mut self) -> Result<(), DeviceError>;
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    /// The embedded PTX was made from the kernels as they are (`cargo xtask ptx` after every
    /// change to them; the xtask's own test checks the bytes with NVRTC).
    #[test]
    fn the_embedded_ptx_is_of_the_current_source() {
        let source = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/gpow2.cu")).unwrap();
        let expected = format!("// gpow2.cu sha256 {}", hex::encode(Sha256::digest(source)));
        assert_eq!(super::PTX.lines().next(), Some(expected.as_str()), "ptx/gpow2.ptx is stale: run `cargo xtask ptx`");
        for entry in [
            "fill_a",
            "fill_bt",
            "gemm_dp4a",
            "gemm_mma",
            "merkle_reduce",
            "cache_build",
            "dataset_build",
            "walk",
            "walk_group",
        ] {
            assert!(super::PTX.contains(&format!(".entry {entry}(")), "no kernel {entry} in the PTX");
        }
    }

    /// The embedded cubins were assembled from the embedded PTX (`ptx/cubins.txt`, which `cargo
    /// xtask ptx` writes with them; the xtask's own test checks the bytes with ptxas), and each
    /// GPU generation loads its own.
    #[test]
    fn the_embedded_cubins_are_of_the_current_ptx() {
        let list = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../ptx/cubins.txt"));
        let ptx = |name| match name {
            "gpow2.ptx" => super::PTX,
            "gpow2.sm_90a.ptx" => super::PTX_SM90A,
            other => panic!("cubins.txt names {other}"),
        };
        let mut listed = Vec::new();
        for line in list.lines().filter(|l| !l.starts_with('#')) {
            let [cubin, _target, source, "sha256", hash] = line.split(' ').collect::<Vec<_>>()[..] else {
                panic!("cubins.txt: {line}");
            };
            assert_eq!(hash, hex::encode(Sha256::digest(ptx(source))), "ptx/{cubin} is stale: run `cargo xtask ptx`");
            listed.push(cubin);
        }
        assert_eq!(listed, ["gpow2.sm_80.cubin", "gpow2.sm_90a.cubin"]);
        // ELF images, not text.
        for cubin in [super::CUBIN_SM80, super::CUBIN_SM90A] {
            assert_eq!(&cubin[..4], b"\x7fELF");
        }
        assert_eq!(super::images_for((9, 0)), (Some(super::CUBIN_SM90A), super::PTX_SM90A));
        assert_eq!(super::images_for((8, 6)), (Some(super::CUBIN_SM80), super::PTX));
        assert_eq!(super::images_for((12, 0)), (None, super::PTX));
    }
}
