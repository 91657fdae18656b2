//! The real GPUs a test runs on (test builds only). The tests named `cuda_*` run the same checks
//! as their emulated twins on every CUDA device the driver shows. Without a driver or a device
//! they print why they are skipped and pass: this machine and CI have no GPU. With
//! `GPOW_REQUIRE_GPU=1` (`make gpu-check` sets it on the lent GPU machine) a missing GPU fails
//! them instead, so a GPU machine cannot pass by skipping.

use super::GemmKernel;
use super::cuda::{CudaDevice, Driver};
use super::worker::{Tuning, Worker};

/// `GPOW_REQUIRE_GPU=1`: a test without a GPU fails.
fn required() -> bool {
    std::env::var("GPOW_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// Every CUDA device, opened, with the kernels its compute capability runs; empty (the test is
/// skipped, with the reason printed) where there is none. A device that exists and does not open
/// fails the test.
fn cuda_devices(test: &str) -> Vec<(CudaDevice, Vec<GemmKernel>)> {
    let found = Driver::load().and_then(|driver| Ok((driver, driver.devices()?)));
    let (driver, infos) = match found {
        Ok(found) => found,
        Err(e) if required() => {
            panic!("{test}: GPOW_REQUIRE_GPU=1 and no GPU to run on: {e}")
        }
        Err(e) => {
            eprintln!("skipped {test}: No NVIDIA GPU found: {e}");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for info in &infos {
        let kernels = GemmKernel::supported(info.compute_capability);
        if kernels.is_empty() {
            let (major, minor) = info.compute_capability;
            eprintln!(
                "{test}: GPU {} ({}) left out: compute capability {major}.{minor} runs none of the kernels",
                info.ordinal, info.name
            );
            continue;
        }
        let device = driver.open(info).unwrap_or_else(|e| panic!("{test}: GPU {} ({}): {e}", info.ordinal, info.name));
        out.push((device, kernels));
    }
    if out.is_empty() && required() {
        panic!("{test}: GPOW_REQUIRE_GPU=1 and no GPU runs the kernels");
    }
    out
}

/// One worker per CUDA device (see [`cuda_devices`]), with the kernels each runs.
pub(crate) fn cuda_workers(test: &str, tuning: Tuning) -> Vec<(Worker<CudaDevice>, Vec<GemmKernel>)> {
    cuda_devices(test).into_iter().map(|(device, kernels)| (Worker::new(device, kernels[0], tuning), kernels)).collect()
}
