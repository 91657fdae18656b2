//! A [`Device`] for the tests: `kernels/gpow2.cu` compiled for the host by g++
//! (`kernels/emu/emu.cpp`), its blocks run on real threads meeting at real barriers. Memory is
//! host memory, filled with 0xA5 when allocated so a kernel that reads what nobody wrote gives
//! the wrong roots instead of lucky zeros; copies are checked against the allocations. Streams
//! and events are trivially honoured: every call completes before it returns.
//!
//! The library is built once per source content under `target/<profile>/gpu-emu/` (g++ is a
//! test tool, like the Docker engine: `make test` has it).

use std::collections::BTreeMap;
use std::ffi::{CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::process::ProcessSpec;

use sha2::{Digest, Sha256};

use super::{Device, DeviceError, DevicePtr, Launch, Param, Stream};

type LaunchFn = unsafe extern "C" fn(*const c_char, u32, u32, u32, u32, u32, *mut *mut c_void) -> c_int;
type ViolationFn = unsafe extern "C" fn() -> *const c_char;

const SOURCES: [&str; 3] = ["gpow2.cu", "emu/emu.h", "emu/emu.cpp"];

fn kernels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels")
}

/// Builds the library if this content has not been built yet; its path.
fn build() -> PathBuf {
    let dir = kernels_dir();
    let mut hash = Sha256::new();
    for s in SOURCES {
        hash.update(std::fs::read(dir.join(s)).unwrap_or_else(|e| panic!("reading kernels/{s}: {e}")));
    }
    let digest = hex::encode(&hash.finalize()[..8]);
    // target/<profile>/deps/<test binary> → target/<profile>/gpu-emu
    let exe = std::env::current_exe().expect("the test binary's path");
    let out_dir = exe.parent().and_then(Path::parent).expect("target/<profile>").join("gpu-emu");
    std::fs::create_dir_all(&out_dir).expect("creating target/<profile>/gpu-emu");
    let lib = out_dir.join(format!("gpow2-emu-{digest}.so"));
    if lib.exists() {
        return lib;
    }
    let partial = out_dir.join(format!("gpow2-emu-{digest}.{}.so", std::process::id()));
    let g = ProcessSpec::new("g++")
        .args([
            "-std=c++20",
            "-O2",
            "-shared",
            "-fPIC",
            "-pthread",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wno-unknown-pragmas",
        ])
        .arg("-o")
        .arg(&partial)
        .arg(dir.join("emu/emu.cpp"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for g++");
    let out = runtime
        .block_on(g.output(Duration::from_secs(300), 1 << 20))
        .unwrap_or_else(|e| panic!("g++ (the host emulation of the kernels needs it): {e}"));
    assert!(out.status.success(), "g++ failed on kernels/emu/emu.cpp:\n{}", String::from_utf8_lossy(&out.stderr));
    std::fs::rename(&partial, &lib).expect("renaming the emulation library into place");
    lib
}

fn library() -> &'static libloading::Library {
    static LIB: OnceLock<libloading::Library> = OnceLock::new();
    LIB.get_or_init(|| {
        let path = build();
        // SAFETY: our own library, built just now from kernels/emu; its initialisers only set
        // up globals.
        #[allow(unsafe_code)]
        unsafe { libloading::Library::new(&path) }.unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
    })
}

/// What the last launch that failed with 3 did wrong (emu.cpp's `emu_violation`).
fn violation() -> String {
    // SAFETY: the symbol has this signature (emu.cpp); it returns a NUL-terminated string that
    // lives until the next launch clears it, and the text is copied out at once.
    #[allow(unsafe_code)]
    unsafe {
        match library().get::<ViolationFn>(b"emu_violation\0") {
            Ok(f) => std::ffi::CStr::from_ptr(f()).to_string_lossy().into_owned(),
            Err(e) => format!("(emu_violation: {e})"),
        }
    }
}

/// How a kernel goes wrong on an emulated GPU: what a kernel never run on real hardware might do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// It computes wrong: after it runs, the first byte at its last pointer parameter (its
    /// output) is flipped. A GPU on which the kernel is miscompiled, or a layout misread.
    Wrong,
    /// It faults, as on an illegal address: the launch returns, and every later call fails, as
    /// a GPU's context does after a sticky error.
    Illegal,
    /// It never ends (the calling thread parks for good).
    Hang,
    /// It takes the process down (abort).
    Abort,
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "wrong" => Ok(Fault::Wrong),
            "illegal" => Ok(Fault::Illegal),
            "hang" => Ok(Fault::Hang),
            "abort" => Ok(Fault::Abort),
            _ => Err(format!("no fault `{s}`")),
        }
    }
}

/// The emulated GPU.
#[derive(Debug, Default)]
pub(crate) struct EmuDevice {
    /// Allocations by address, with the bytes asked for; u64 words keep every address 8-byte
    /// aligned (16-byte loads in the kernels are done word by word under emulation).
    memory: BTreeMap<DevicePtr, (Vec<u64>, u64)>,
    /// Kernels (entry points) that go wrong here, and how.
    faults: BTreeMap<String, Fault>,
    /// After a [`Fault::Illegal`]: why every call fails.
    lost: Option<String>,
}

impl EmuDevice {
    pub(crate) fn new() -> Self {
        library();
        Self::default()
    }

    /// A device on which `kernel` gives wrong output.
    pub(crate) fn broken(kernel: &str) -> Self {
        Self::with_fault(kernel, Fault::Wrong)
    }

    /// A device on which `kernel` goes wrong as `fault` says.
    pub(crate) fn with_fault(kernel: &str, fault: Fault) -> Self {
        Self::new().and_fault(kernel, fault)
    }

    pub(crate) fn and_fault(mut self, kernel: &str, fault: Fault) -> Self {
        self.faults.insert(kernel.to_owned(), fault);
        self
    }

    /// Every call fails once a kernel has faulted, as on a GPU.
    fn alive(&self, call: &'static str) -> Result<(), DeviceError> {
        match &self.lost {
            Some(why) => Err(DeviceError::new(call, why)),
            None => Ok(()),
        }
    }

    /// The allocation holding `[ptr, ptr + len)`, as a host pointer.
    fn host(&self, call: &'static str, ptr: DevicePtr, len: usize) -> Result<*mut u8, DeviceError> {
        let (&base, &(_, size)) = self
            .memory
            .range(..=ptr)
            .next_back()
            .ok_or_else(|| DeviceError::new(call, format!("{ptr:#x} is in no allocation")))?;
        if ptr + len as u64 > base + size {
            return Err(DeviceError::new(
                call,
                format!("{len} bytes at {ptr:#x} pass the end of a {size}-byte allocation"),
            ));
        }
        Ok(ptr as *mut u8)
    }
}

impl Device for EmuDevice {
    fn name(&self) -> String {
        "host emulation".into()
    }

    fn memory(&self) -> Result<(u64, u64), DeviceError> {
        self.alive("memory")?;
        let used: u64 = self.memory.values().map(|(_, bytes)| bytes).sum();
        let total = 16 << 30;
        Ok((total - used.min(total), total))
    }

    fn alloc(&mut self, bytes: u64) -> Result<DevicePtr, DeviceError> {
        self.alive("alloc")?;
        let words = vec![0xA5A5_A5A5_A5A5_A5A5u64; bytes.div_ceil(8) as usize];
        let ptr = words.as_ptr() as DevicePtr;
        self.memory.insert(ptr, (words, bytes));
        Ok(ptr)
    }

    fn free(&mut self, ptr: DevicePtr) {
        self.memory.remove(&ptr);
    }

    fn upload(&mut self, dst: DevicePtr, src: &[u8]) -> Result<(), DeviceError> {
        self.alive("upload")?;
        let to = self.host("upload", dst, src.len())?;
        // SAFETY: `host` checked that the range lies inside one of our live allocations.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), to, src.len())
        };
        Ok(())
    }

    fn download(&mut self, src: DevicePtr, dst: &mut [u8]) -> Result<(), DeviceError> {
        self.alive("download")?;
        let from = self.host("download", src, dst.len())?;
        // SAFETY: as in `upload`.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(from, dst.as_mut_ptr(), dst.len())
        };
        Ok(())
    }

    fn launch(&mut self, _stream: Stream, launch: &Launch) -> Result<(), DeviceError> {
        self.alive("launch")?;
        let fault = self.faults.get(launch.kernel).copied();
        match fault {
            Some(Fault::Illegal) => {
                // As CUDA reports it: the launch returns; the next call fails, and every one after.
                self.lost = Some(format!("an illegal memory access was encountered (emulated, in {})", launch.kernel));
                return Ok(());
            }
            Some(Fault::Hang) => loop {
                std::thread::park();
            },
            Some(Fault::Abort) => std::process::abort(),
            Some(Fault::Wrong) | None => {}
        }
        let mut values = launch.param_values();
        let mut args: Vec<*mut c_void> = values.iter_mut().map(|v| (v as *mut u64).cast()).collect();
        let name = CString::new(launch.kernel).map_err(|e| DeviceError::new("launch", e))?;
        // SAFETY: the symbol has this signature (emu.cpp); `args` points at live values that
        // outlive the call, one per parameter of the kernel as the backend declares them.
        #[allow(unsafe_code)]
        let code = unsafe {
            let run = library().get::<LaunchFn>(b"emu_launch\0").map_err(|e| DeviceError::new("launch", e))?;
            run(
                name.as_ptr(),
                launch.grid.0,
                launch.grid.1,
                launch.grid.2,
                launch.block,
                launch.shared,
                args.as_mut_ptr(),
            )
        };
        if code == 0
            && fault == Some(Fault::Wrong)
            && let Some(Param::U64(out)) = launch.params.last()
        {
            let byte = self.host("launch", *out, 1)?;
            // SAFETY: `host` checked the byte lies in a live allocation.
            #[allow(unsafe_code)]
            unsafe {
                *byte ^= 1
            };
        }
        match code {
            0 => Ok(()),
            1 => Err(DeviceError::new("launch", format!("no kernel named {}", launch.kernel))),
            3 => Err(DeviceError::new("launch", format!("{} would go wrong on a GPU: {}", launch.kernel, violation()))),
            _ => Err(DeviceError::new("launch", format!("bad shape for {}: {:?}", launch.kernel, launch))),
        }
    }

    fn record(&mut self, _stream: Stream, _event: usize) -> Result<(), DeviceError> {
        self.alive("record")?;
        Ok(())
    }

    fn wait(&mut self, _stream: Stream, _event: usize) -> Result<(), DeviceError> {
        self.alive("wait")?;
        Ok(())
    }

    fn synchronize(&mut self) -> Result<(), DeviceError> {
        self.alive("synchronize")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::GemmKernel;

    /// A tensor-core GEMM launched with less dynamic shared memory than it uses fails, naming
    /// both sizes (on a GPU it would read and write past its block's shared memory); with what
    /// `shared_bytes` says, it runs.
    #[test]
    fn a_launch_short_of_shared_memory_fails() {
        let mut device = EmuDevice::new();
        for kernel in [GemmKernel::MmaSync, GemmKernel::Wgmma, GemmKernel::WgmmaWide] {
            let (a, bt, leaves) = (device.alloc(256).unwrap(), device.alloc(256).unwrap(), device.alloc(32).unwrap());
            let launch = |shared| Launch {
                kernel: kernel.entry(),
                grid: (1, 1, 1),
                block: kernel.block().2,
                shared,
                params: vec![
                    Param::U64(a),
                    Param::U64(bt),
                    Param::U32(16),
                    Param::U32(16),
                    Param::U32(16),
                    Param::U32(0),
                    Param::U32(0),
                    Param::U64(leaves),
                ],
            };
            let short = kernel.shared_bytes() - 16;
            let err = device.launch(Stream::Main, &launch(short)).unwrap_err();
            assert!(
                err.message.contains(&format!(
                    "uses {} bytes of dynamic shared memory; the launch gave {short}",
                    kernel.shared_bytes()
                )),
                "{kernel}: {err}"
            );
            device.launch(Stream::Main, &launch(kernel.shared_bytes())).unwrap();
        }
    }
}
