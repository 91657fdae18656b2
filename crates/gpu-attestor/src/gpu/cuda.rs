//! The CUDA driver as a [`Device`], loaded at run time (cudarc's `sys` layer with
//! `dynamic-loading`): the binary builds and runs where no CUDA is installed and says why.
//!
//! cudarc panics when a driver function it is asked for is missing, so [`Driver::load`] looks
//! up every symbol this module calls before the first call: a driver library that is absent or
//! too old is an error naming what is missing, never a panic.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};

use cudarc::driver::sys::{self, CUdevice_attribute, CUresult};

use super::{Device, DeviceError, DevicePtr, EVENTS, GemmKernel, Launch, Stream, WalkKernel};

/// Every driver function this module calls, by the symbol cudarc loads.
const SYMBOLS: [&str; 29] = [
    "cuInit",
    "cuDriverGetVersion",
    "cuGetErrorString",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetName",
    "cuDeviceGetAttribute",
    "cuDeviceTotalMem_v2",
    "cuDeviceGetPCIBusId",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuFuncSetAttribute",
    "cuModuleUnload",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemGetInfo_v2",
    "cuMemcpyHtoD_v2",
    "cuMemcpyDtoH_v2",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuEventCreate",
    "cuEventDestroy_v2",
    "cuEventRecord",
    "cuStreamWaitEvent",
    "cuLaunchKernel",
];

/// Why the CUDA backend cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaError {
    #[error("the CUDA driver library (libcuda.so.1, installed with the NVIDIA driver) could not be loaded")]
    NoDriver,
    #[error("the CUDA driver has no {0}: the NVIDIA driver is too old for this build (CUDA 12.8 API)")]
    MissingSymbol(&'static str),
    #[error("no CUDA device is visible (cuDeviceGetCount = 0)")]
    NoDevice,
    #[error("{call}: {message}")]
    Call { call: &'static str, message: String },
}

fn error_text(code: CUresult) -> String {
    let mut text: *const c_char = std::ptr::null();
    // SAFETY: cuGetErrorString (present: checked by `Driver::load`) sets a static string or
    // leaves the pointer null.
    #[allow(unsafe_code)]
    unsafe {
        sys::cuGetErrorString(code, &mut text);
        if text.is_null() {
            format!("{code:?}")
        } else {
            format!("{} ({code:?})", CStr::from_ptr(text).to_string_lossy())
        }
    }
}

fn check(call: &'static str, code: CUresult) -> Result<(), CudaError> {
    match code {
        CUresult::CUDA_SUCCESS => Ok(()),
        _ => Err(CudaError::Call { call, message: error_text(code) }),
    }
}

impl From<CudaError> for DeviceError {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::Call { call, message } => DeviceError { call, message },
            other => DeviceError::new("cuda", other),
        }
    }
}

/// A CUDA device as the driver describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaDeviceInfo {
    pub ordinal: u32,
    pub name: String,
    /// `0000:3b:00.0`, lower case.
    pub pci_bus_id: String,
    pub compute_capability: (u32, u32),
    pub multiprocessors: u32,
    pub memory_bytes: u64,
}

impl CudaDeviceInfo {
    /// `CUDA device 0 (NVIDIA H100 80GB HBM3, 0000:3b:00.0)`: the device's name in messages.
    pub fn label(&self) -> String {
        format!("CUDA device {} ({}, {})", self.ordinal, self.name, self.pci_bus_id)
    }
}

/// Proof that the driver is loaded, has every function this module calls, and is initialised.
#[derive(Debug, Clone, Copy)]
pub struct Driver {
    /// `cuDriverGetVersion`: 12080 for 12.8.
    pub version: i32,
}

impl Driver {
    pub fn load() -> Result<Self, CudaError> {
        // SAFETY: loading libcuda runs NVIDIA's initialisers; `get` only looks symbols up.
        #[allow(unsafe_code)]
        unsafe {
            if !sys::is_culib_present() {
                return Err(CudaError::NoDriver);
            }
            let lib = sys::culib();
            for symbol in SYMBOLS {
                if lib.get::<*const c_void>(symbol.as_bytes()).is_err() {
                    return Err(CudaError::MissingSymbol(symbol));
                }
            }
            check("cuInit", sys::cuInit(0))?;
            let mut version = 0;
            check("cuDriverGetVersion", sys::cuDriverGetVersion(&mut version))?;
            Ok(Self { version })
        }
    }

    /// Every visible device, in the driver's order.
    pub fn devices(&self) -> Result<Vec<CudaDeviceInfo>, CudaError> {
        let mut count = 0;
        // SAFETY: the driver is initialised and has these functions (`load`); every out
        // pointer is a live local, buffers are sized as passed.
        #[allow(unsafe_code)]
        unsafe {
            check("cuDeviceGetCount", sys::cuDeviceGetCount(&mut count))?;
            let mut out = Vec::new();
            for ordinal in 0..count {
                let mut dev = 0;
                check("cuDeviceGet", sys::cuDeviceGet(&mut dev, ordinal))?;
                let mut name = [0 as c_char; 256];
                check("cuDeviceGetName", sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as c_int, dev))?;
                let mut bus = [0 as c_char; 64];
                check("cuDeviceGetPCIBusId", sys::cuDeviceGetPCIBusId(bus.as_mut_ptr(), bus.len() as c_int, dev))?;
                let attribute = |a: CUdevice_attribute| -> Result<u32, CudaError> {
                    let mut v = 0;
                    check("cuDeviceGetAttribute", sys::cuDeviceGetAttribute(&mut v, a, dev))?;
                    Ok(v.max(0) as u32)
                };
                let mut memory = 0usize;
                check("cuDeviceTotalMem_v2", sys::cuDeviceTotalMem_v2(&mut memory, dev))?;
                out.push(CudaDeviceInfo {
                    ordinal: ordinal as u32,
                    name: CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
                    pci_bus_id: CStr::from_ptr(bus.as_ptr()).to_string_lossy().to_lowercase(),
                    compute_capability: (
                        attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                        attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                    ),
                    multiprocessors: attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
                    memory_bytes: memory as u64,
                });
            }
            if out.is_empty() {
                return Err(CudaError::NoDevice);
            }
            Ok(out)
        }
    }

    /// Opens device `ordinal`: its primary context, the kernels' module, two streams and the
    /// events.
    pub fn open(&self, info: &CudaDeviceInfo) -> Result<CudaDevice, CudaError> {
        let mut device = CudaDevice {
            info: info.clone(),
            context: std::ptr::null_mut(),
            module: std::ptr::null_mut(),
            functions: BTreeMap::new(),
            shared_allowed: BTreeMap::new(),
            streams: [std::ptr::null_mut(); 2],
            events: [std::ptr::null_mut(); EVENTS],
        };
        let (cubin, ptx) = super::images_for(info.compute_capability);
        let ptx = CString::new(ptx).expect("the PTX has no NUL byte");
        // SAFETY: as in `devices`; each handle is stored in `device` as soon as it exists, so
        // its Drop releases whatever was made before a failure.
        #[allow(unsafe_code)]
        unsafe {
            let mut dev = 0;
            check("cuDeviceGet", sys::cuDeviceGet(&mut dev, info.ordinal as c_int))?;
            check("cuDevicePrimaryCtxRetain", sys::cuDevicePrimaryCtxRetain(&mut device.context, dev))?;
            check("cuCtxSetCurrent", sys::cuCtxSetCurrent(device.context))?;
            // The cubin made for this GPU, else (none, or the driver refuses it) the PTX.
            let loaded = cubin.map(|image| sys::cuModuleLoadData(&mut device.module, image.as_ptr().cast()));
            if loaded != Some(CUresult::CUDA_SUCCESS) {
                if let Some(code) = loaded {
                    eprintln!(
                        "gpu-attestor: GPU {} refused its cubin ({}); the driver compiles the PTX instead",
                        info.ordinal,
                        error_text(code)
                    );
                }
                check("cuModuleLoadData", sys::cuModuleLoadData(&mut device.module, ptx.as_ptr().cast()))?;
            }
            let kernels = ["fill_a", "fill_bt", "merkle_reduce", "cache_build", "dataset_build"]
                .into_iter()
                .chain(WalkKernel::ALL.into_iter().map(WalkKernel::entry))
                .chain(GemmKernel::supported(info.compute_capability).into_iter().map(GemmKernel::entry));
            for name in kernels {
                let c_name = CString::new(name).expect("kernel names have no NUL");
                let mut f = std::ptr::null_mut();
                check("cuModuleGetFunction", sys::cuModuleGetFunction(&mut f, device.module, c_name.as_ptr()))?;
                device.functions.insert(name, f);
            }
            for s in &mut device.streams {
                check("cuStreamCreate", sys::cuStreamCreate(s, 0))?;
            }
            for e in &mut device.events {
                // CU_EVENT_DISABLE_TIMING: ordering only.
                check("cuEventCreate", sys::cuEventCreate(e, 2))?;
            }
        }
        Ok(device)
    }
}

/// One GPU through the driver.
#[derive(Debug)]
pub struct CudaDevice {
    info: CudaDeviceInfo,
    context: sys::CUcontext,
    module: sys::CUmodule,
    functions: BTreeMap<&'static str, sys::CUfunction>,
    /// The dynamic shared memory each kernel has been allowed so far (48 KiB without asking).
    shared_allowed: BTreeMap<&'static str, u32>,
    streams: [sys::CUstream; 2],
    events: [sys::CUevent; EVENTS],
}

// SAFETY: driver handles may be used from any thread once the context is made current there,
// which every method does first; a device is used by one thread at a time (`&mut self`).
#[allow(unsafe_code)]
unsafe impl Send for CudaDevice {}

impl CudaDevice {
    pub fn info(&self) -> &CudaDeviceInfo {
        &self.info
    }

    fn current(&self) -> Result<(), CudaError> {
        // SAFETY: a context this device retained.
        #[allow(unsafe_code)]
        check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(self.context) })
    }
}

impl Device for CudaDevice {
    fn name(&self) -> String {
        self.info.label()
    }

    fn memory(&self) -> Result<(u64, u64), DeviceError> {
        self.current()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: two out-parameters, context current.
        #[allow(unsafe_code)]
        check("cuMemGetInfo_v2", unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) })?;
        Ok((free as u64, total as u64))
    }

    fn alloc(&mut self, bytes: u64) -> Result<DevicePtr, DeviceError> {
        self.current()?;
        let mut ptr = 0;
        let size = usize::try_from(bytes).map_err(|_| DeviceError::new("cuMemAlloc_v2", "size past usize"))?;
        // SAFETY: an out-parameter, context current.
        #[allow(unsafe_code)]
        check("cuMemAlloc_v2", unsafe { sys::cuMemAlloc_v2(&mut ptr, size) }).map_err(|e| {
            let (free, total) = self.memory().unwrap_or((0, 0));
            DeviceError::new("cuMemAlloc_v2", format!("{bytes} bytes with {free} of {total} free: {e}"))
        })?;
        Ok(ptr)
    }

    fn free(&mut self, ptr: DevicePtr) {
        if self.current().is_ok() {
            // SAFETY: a pointer this device allocated and frees once (the worker's buffers).
            #[allow(unsafe_code)]
            let _ = unsafe { sys::cuMemFree_v2(ptr) };
        }
    }

    fn upload(&mut self, dst: DevicePtr, src: &[u8]) -> Result<(), DeviceError> {
        self.current()?;
        // SAFETY: `src` is live for the (synchronous) copy; `dst` is the caller's allocation.
        #[allow(unsafe_code)]
        unsafe {
            check("cuCtxSynchronize", sys::cuCtxSynchronize())?;
            check("cuMemcpyHtoD_v2", sys::cuMemcpyHtoD_v2(dst, src.as_ptr().cast(), src.len()))?;
        }
        Ok(())
    }

    fn download(&mut self, src: DevicePtr, dst: &mut [u8]) -> Result<(), DeviceError> {
        self.current()?;
        // SAFETY: `dst` is live and as long as the copy; all prior work is finished first.
        #[allow(unsafe_code)]
        unsafe {
            check("cuCtxSynchronize", sys::cuCtxSynchronize())?;
            check("cuMemcpyDtoH_v2", sys::cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), src, dst.len()))?;
        }
        Ok(())
    }

    fn launch(&mut self, stream: Stream, launch: &Launch) -> Result<(), DeviceError> {
        self.current()?;
        let f = *self
            .functions
            .get(launch.kernel)
            .ok_or_else(|| DeviceError::new("cuLaunchKernel", format!("no kernel {}", launch.kernel)))?;
        if launch.shared > 48 * 1024 && self.shared_allowed.get(launch.kernel).is_none_or(|&a| a < launch.shared) {
            // SAFETY: a function of this module; the attribute takes a byte count.
            #[allow(unsafe_code)]
            let code = unsafe {
                sys::cuFuncSetAttribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    launch.shared as c_int,
                )
            };
            check("cuFuncSetAttribute", code).map_err(|e| {
                DeviceError::new(
                    "cuFuncSetAttribute",
                    format!("{} needs {} bytes of shared memory a block: {e}", launch.kernel, launch.shared),
                )
            })?;
            self.shared_allowed.insert(launch.kernel, launch.shared);
        }
        let mut values = launch.param_values();
        let mut args: Vec<*mut c_void> = values.iter_mut().map(|v| (v as *mut u64).cast()).collect();
        let (gx, gy, gz) = launch.grid;
        // SAFETY: a function of this module, parameters as the kernel declares them (the
        // worker's launches; the emulated device runs the same list), all live for the call.
        #[allow(unsafe_code)]
        let code = unsafe {
            sys::cuLaunchKernel(
                f,
                gx,
                gy,
                gz,
                launch.block,
                1,
                1,
                launch.shared,
                self.streams[stream as usize],
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        check("cuLaunchKernel", code).map_err(|e| DeviceError::new("cuLaunchKernel", format!("{}: {e}", launch.kernel)))
    }

    fn record(&mut self, stream: Stream, event: usize) -> Result<(), DeviceError> {
        self.current()?;
        // SAFETY: handles this device made.
        #[allow(unsafe_code)]
        check("cuEventRecord", unsafe { sys::cuEventRecord(self.events[event], self.streams[stream as usize]) })?;
        Ok(())
    }

    fn wait(&mut self, stream: Stream, event: usize) -> Result<(), DeviceError> {
        self.current()?;
        // SAFETY: handles this device made.
        #[allow(unsafe_code)]
        check("cuStreamWaitEvent", unsafe {
            sys::cuStreamWaitEvent(self.streams[stream as usize], self.events[event], 0)
        })?;
        Ok(())
    }

    fn synchronize(&mut self) -> Result<(), DeviceError> {
        self.current()?;
        // SAFETY: context current.
        #[allow(unsafe_code)]
        check("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() })?;
        Ok(())
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        if self.context.is_null() || self.current().is_err() {
            return;
        }
        // SAFETY: each handle was made by this device and is released once, after the work.
        #[allow(unsafe_code)]
        unsafe {
            let _ = sys::cuCtxSynchronize();
            for e in self.events {
                if !e.is_null() {
                    let _ = sys::cuEventDestroy_v2(e);
                }
            }
            for s in self.streams {
                if !s.is_null() {
                    let _ = sys::cuStreamDestroy_v2(s);
                }
            }
            if !self.module.is_null() {
                let _ = sys::cuModuleUnload(self.module);
            }
            let mut dev = 0;
            if sys::cuDeviceGet(&mut dev, self.info.ordinal as c_int) == CUresult::CUDA_SUCCESS {
                let _ = sys::cuDevicePrimaryCtxRelease_v2(dev);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a GPU driver the backend says what is missing instead of panicking; with one,
    /// the devices are listed (the GPU tests proper are in the GPU check).
    #[test]
    fn a_missing_driver_is_an_error_not_a_panic() {
        match Driver::load() {
            Err(e) => {
                eprintln!("SKIPPED (no GPU here): {e}");
                assert_eq!(e, CudaError::NoDriver);
                assert!(e.to_string().contains("libcuda.so.1"));
            }
            Ok(driver) => {
                let devices = driver.devices().unwrap();
                assert!(!devices.is_empty());
            }
        }
    }
}
