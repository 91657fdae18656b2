//! The GPU attestation backend's state: when gpu-monitor starts with GPUs, it runs
//! `gpu-attestor self-test --json` (beside its own binary) once, in the background, and
//! reports what came back as metrics and a log line: whether the CUDA backend runs, the GEMM and
//! walk kernels each GPU's self-test kept (`wgmma+walk-group`), the kernels it disabled, or why none of it can run.
//!
//! - `executor_gpu_attestation_ready`: 1 when every GPU can prove (its self-test agreed with
//!   the CPU reference), 0 otherwise.
//! - `executor_gpu_attestation_backend_info{backend, kernel, reason}`: 1; `backend` is `cuda`,
//!   `none` (no driver or device: validators will see the CPU reference) or `failed`.
//! - `executor_gpu_attestation_disabled_kernels`: kernels the self-test disabled.

use std::path::Path;

use common::gpu_self_test::SelfTest;
use metrics::gauge;

/// What the metrics say of the self-test.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub backend: &'static str,
    pub kernel: String,
    pub reason: String,
    pub disabled: usize,
    pub ready: bool,
}

impl State {
    pub fn of(test: SelfTest) -> State {
        let (backend, kernel, reason, disabled, ready) = match test {
            SelfTest::NoGpu { reason } => ("none", String::new(), reason, 0, false),
            SelfTest::Ready { kernel, disabled, .. } => ("cuda", kernel, String::new(), disabled.len(), true),
            SelfTest::Failed { reason } => ("failed", String::new(), reason, 0, false),
        };
        State { backend, kernel, reason, disabled, ready }
    }

    fn export(&self) {
        gauge!("executor_gpu_attestation_ready").set(if self.ready { 1.0 } else { 0.0 });
        gauge!("executor_gpu_attestation_disabled_kernels").set(self.disabled as f64);
        gauge!(
            "executor_gpu_attestation_backend_info",
            "backend" => self.backend,
            "kernel" => self.kernel.clone(),
            "reason" => self.reason.clone()
        )
        .set(1.0);
    }
}

pub fn describe() {
    metrics::describe_gauge!(
        "executor_gpu_attestation_ready",
        "1 when gpu-attestor's self-test passed on every GPU at gpu-monitor's start."
    );
    metrics::describe_gauge!(
        "executor_gpu_attestation_backend_info",
        "The attestation backend (cuda, none, failed), the kernels kept (gemm+walk) and why not, from the self-test."
    );
    metrics::describe_gauge!("executor_gpu_attestation_disabled_kernels", "Kernels the GPU self-test disabled.");
}

/// Runs the self-test with the `gpu-attestor` at `binary` and reports it.
pub async fn self_test(binary: &Path) -> State {
    let state = State::of(SelfTest::run(binary).await);
    match (state.ready, state.backend) {
        (true, _) => tracing::info!(kernel = %state.kernel, disabled = state.disabled, "GPU attestation backend ready"),
        (false, "none") => {
            tracing::warn!(reason = %state.reason, "no GPU attestation backend: attestation runs the CPU reference")
        }
        (false, _) => tracing::error!(reason = %state.reason, "the GPU attestation backend failed its self-test"),
    }
    state.export();
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_of_the_self_test_is_a_state() {
        let none = State::of(SelfTest::NoGpu { reason: "no libcuda".into() });
        assert_eq!((none.backend, none.reason.as_str(), none.ready), ("none", "no libcuda", false));
        let cuda = State::of(SelfTest::Ready {
            kernel: "mma-sync+walk-group".into(),
            disabled: vec!["GPU 0: dp4a: roots differ".into()],
            gpus: Vec::new(),
        });
        assert_eq!(
            (cuda.backend, cuda.kernel.as_str(), cuda.disabled, cuda.ready),
            ("cuda", "mma-sync+walk-group", 1, true)
        );
        let failed = State::of(SelfTest::Failed { reason: "GPU 0: the self-test failed".into() });
        assert_eq!(
            (failed.backend, failed.reason.as_str(), failed.ready),
            ("failed", "GPU 0: the self-test failed", false)
        );
    }
}
