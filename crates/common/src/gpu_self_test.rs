//! `gpu-attestor self-test --json`, run and read in one place: `executor validate` and
//! gpu-monitor both ask it whether the GPU backend can prove on this machine.
//!
//! The command prints one JSON object: `{"backend": "none", "reason"}` (exit 0) when there is no
//! driver or device, `{"backend": "cuda", "kernel", "disabled", "self_tests", ...}` (exit 0) when
//! every GPU passed, and `{"backend": "cuda", "reason"}` (exit 1) when a GPU cannot prove.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::process::{ProcessSpec, describe_exit};

/// Driver, module, and every GPU's small challenge and timing product.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// What the self-test said.
#[derive(Debug, Clone, PartialEq)]
pub enum SelfTest {
    /// No driver or no device: attestation runs the CPU reference.
    NoGpu { reason: String },
    /// Every GPU can prove.
    Ready {
        /// The GEMM and walk kernels in use, `gemm+walk` (one pair a GPU, comma-separated, where
        /// they differ).
        kernel: String,
        /// `GPU g: kernel: why` for each kernel a self-test disabled.
        disabled: Vec<String>,
        gpus: Vec<GpuResult>,
    },
    /// A GPU cannot prove, or the self-test itself did not run or answer.
    Failed { reason: String },
}

/// One GPU's self-test.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GpuResult {
    pub device: String,
    /// The GEMM kernel it kept.
    #[serde(default)]
    pub chosen: Option<String>,
    /// The walk kernel it kept.
    #[serde(default)]
    pub walk: Option<String>,
    pub elapsed_ms: f64,
}

#[derive(Deserialize)]
struct Output {
    backend: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    kernel: String,
    #[serde(default)]
    disabled: Vec<String>,
    #[serde(default)]
    self_tests: Vec<GpuResult>,
}

impl SelfTest {
    /// Runs `<attestor> self-test --json`.
    pub async fn run(attestor: &Path) -> SelfTest {
        let spec = ProcessSpec::new(attestor).args(["self-test", "--json"]);
        match spec.output(TIMEOUT, 1 << 20).await {
            Ok(out) => SelfTest::parse(&out.stdout, &out.stderr, out.status),
            Err(e) => SelfTest::Failed { reason: e.to_string() },
        }
    }

    /// Reads the command's output and exit status.
    pub fn parse(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> SelfTest {
        let Ok(out) = serde_json::from_slice::<Output>(stdout) else {
            let said = if stderr.trim_ascii().is_empty() { stdout } else { stderr };
            return SelfTest::Failed {
                reason: format!(
                    "`gpu-attestor self-test` {}: {}",
                    describe_exit(status),
                    String::from_utf8_lossy(said).trim()
                ),
            };
        };
        match (out.backend.as_str(), status.success()) {
            ("none", _) => SelfTest::NoGpu { reason: out.reason },
            ("cuda", true) => SelfTest::Ready { kernel: out.kernel, disabled: out.disabled, gpus: out.self_tests },
            _ => SelfTest::Failed { reason: out.reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    #[test]
    fn every_answer_of_the_self_test_is_read() {
        let ok = ExitStatus::from_raw(0);
        let failed = ExitStatus::from_raw(1 << 8);
        assert_eq!(
            SelfTest::parse(br#"{"backend":"none","reason":"no libcuda"}"#, b"", ok),
            SelfTest::NoGpu { reason: "no libcuda".into() }
        );
        let ready = br#"{"backend":"cuda","kernel":"mma-sync+walk-group","disabled":["GPU 0: dp4a: roots differ"],
            "self_tests":[{"device":"GPU 0 (H100)","chosen":"mma-sync","walk":"walk-group","elapsed_ms":812.5,"kernels":[]}]}"#;
        assert_eq!(
            SelfTest::parse(ready, b"", ok),
            SelfTest::Ready {
                kernel: "mma-sync+walk-group".into(),
                disabled: vec!["GPU 0: dp4a: roots differ".into()],
                gpus: vec![GpuResult {
                    device: "GPU 0 (H100)".into(),
                    chosen: Some("mma-sync".into()),
                    walk: Some("walk-group".into()),
                    elapsed_ms: 812.5
                }],
            }
        );
        assert_eq!(
            SelfTest::parse(br#"{"backend":"cuda","reason":"GPU 0: the self-test failed"}"#, b"", failed),
            SelfTest::Failed { reason: "GPU 0: the self-test failed".into() }
        );
        let SelfTest::Failed { reason } = SelfTest::parse(b"", b"Segmentation fault", ExitStatus::from_raw(11)) else {
            panic!("a crash is a failure");
        };
        assert!(
            reason.starts_with("`gpu-attestor self-test` ") && reason.ends_with(": Segmentation fault"),
            "{reason}"
        );
    }
}
