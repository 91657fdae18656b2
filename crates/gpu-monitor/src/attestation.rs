//! The GPU attestation backend's state: when gpu-monitor starts with GPUs, it runs
//! `gpu-attestor self-test --json` (beside its own binary) once, in the background, and
//! reports what came back as metrics and a log line: whether the CUDA backend runs, the kernel
//! each GPU's self-test kept, the kernels it disabled, or why none of it can run.
//!
//! - `executor_gpu_attestation_ready`: 1 when every GPU can prove (its self-test agreed with
//!   the CPU reference), 0 otherwise.
//! - `executor_gpu_attestation_backend_info{backend, kernel, reason}`: 1; `backend` is `cuda`,
//!   `none` (no driver or device: validators will see the CPU reference) or `failed`.
//! - `executor_gpu_attestation_disabled_kernels`: kernels the self-test disabled.

use std::path::Path;
use std::time::Duration;

use common::process::ProcessSpec;
use metrics::gauge;

/// Driver, module and every GPU's small challenge and timing product.
const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// What the self-test said.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub backend: String,
    pub kernel: String,
    pub reason: String,
    pub disabled: usize,
    pub ready: bool,
}

impl State {
    /// From `gpu-attestor self-test --json`'s output and exit status.
    pub fn parse(stdout: &[u8], success: bool) -> State {
        let failed = |reason: String| State {
            backend: "failed".into(),
            kernel: String::new(),
            reason,
            disabled: 0,
            ready: false,
        };
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(stdout) else {
            return failed(format!("unreadable self-test output: {}", String::from_utf8_lossy(stdout).trim()));
        };
        let text = |k: &str| json[k].as_str().unwrap_or_default().to_owned();
        match (json["backend"].as_str(), success) {
            (Some("none"), _) => State {
                backend: "none".into(),
                kernel: String::new(),
                reason: text("reason"),
                disabled: 0,
                ready: false,
            },
            (Some("cuda"), true) => State {
                backend: "cuda".into(),
                kernel: text("kernel"),
                reason: String::new(),
                disabled: json["disabled"].as_array().map_or(0, Vec::len),
                ready: true,
            },
            _ => failed(text("reason")),
        }
    }

    fn export(&self) {
        gauge!("executor_gpu_attestation_ready").set(if self.ready { 1.0 } else { 0.0 });
        gauge!("executor_gpu_attestation_disabled_kernels").set(self.disabled as f64);
        gauge!(
            "executor_gpu_attestation_backend_info",
            "backend" => self.backend.clone(),
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
        "The attestation backend (cuda, none, failed), the kernel kept and why not, from the self-test."
    );
    metrics::describe_gauge!("executor_gpu_attestation_disabled_kernels", "Kernels the GPU self-test disabled.");
}

/// Runs the self-test with the `gpu-attestor` at `binary` and reports it.
pub async fn self_test(binary: &Path) -> State {
    let spec = ProcessSpec::new(binary).args(["self-test", "--json"]);
    let state = match spec.output(SELF_TEST_TIMEOUT, 1 << 20).await {
        Ok(out) => State::parse(&out.stdout, out.status.success()),
        Err(e) => {
            State { backend: "failed".into(), kernel: String::new(), reason: e.to_string(), disabled: 0, ready: false }
        }
    };
    match (state.ready, state.backend.as_str()) {
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
        let none = State::parse(br#"{"backend":"none","reason":"no libcuda"}"#, true);
        assert_eq!((none.backend.as_str(), none.reason.as_str(), none.ready), ("none", "no libcuda", false));
        let cuda =
            State::parse(br#"{"backend":"cuda","kernel":"mma-sync","disabled":["GPU 0: dp4a: roots differ"]}"#, true);
        assert_eq!(
            (cuda.backend.as_str(), cuda.kernel.as_str(), cuda.disabled, cuda.ready),
            ("cuda", "mma-sync", 1, true)
        );
        let failed = State::parse(br#"{"backend":"cuda","reason":"GPU 0: the self-test failed"}"#, false);
        assert_eq!(
            (failed.backend.as_str(), failed.reason.as_str(), failed.ready),
            ("failed", "GPU 0: the self-test failed", false)
        );
        let garbage = State::parse(b"Segmentation fault", false);
        assert_eq!(garbage.backend, "failed");
        assert!(garbage.reason.contains("Segmentation fault"));
    }
}
