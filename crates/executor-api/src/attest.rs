//! RunAttestation: the caller's sizes checked, then the bundled `gpu-attestor` run with the
//! executor's key, its signed report returned.

use std::path::PathBuf;
use std::time::Duration;

use common::process::ProcessSpec;
use common::proto::api::v1 as pb;

use crate::errors::ApiError;

/// Longest attestation run; past it the prover is killed. RunAttestation has this deadline of
/// its own instead of `[server] request_timeout` (which bounds reading and authenticating it).
pub(crate) const ATTESTATION_TIMEOUT: Duration = Duration::from_secs(600);
/// Attestation sizes accepted from callers (the prover's own limits are wider).
const MAX_ATTESTATION_DIM: u32 = 4096;
const MAX_ATTESTATION_MATRICES: u32 = 100_000;
/// 1 GiB of dataset.
const MAX_ATTESTATION_ITEMS: u64 = 1 << 24;
const DEFAULT_ATTESTATION_ITEMS: u64 = 4096;

/// The prover beside this binary and the key its reports are signed with.
#[derive(Debug, Clone)]
pub(crate) struct Attestor {
    pub(crate) binary: PathBuf,
    pub(crate) identity_file: PathBuf,
}

impl Attestor {
    /// Runs `gpu-attestor` with a signed report: CUDA when gpu-monitor sees `gpus` > 0, the
    /// CPU reference otherwise.
    pub(crate) async fn run(&self, request: pb::AttestationRequest, gpus: u32) -> Result<String, ApiError> {
        let invalid = |field, message: &str| ApiError::InvalidArgument { field, message: message.to_owned() };
        // The prover takes a u64 seed, zero-padded to 32 bytes (docs/gpu-pow.md).
        let seed = match request.seed.len() {
            0 => 0,
            32 if request.seed[8..].iter().all(|b| *b == 0) => {
                let mut low = [0u8; 8];
                low.copy_from_slice(&request.seed[..8]);
                u64::from_le_bytes(low)
            }
            32 => return Err(invalid("seed", "bytes 8..32 must be zero (a u64, little-endian, zero-padded)")),
            _ => return Err(invalid("seed", "must be 32 bytes")),
        };
        // The report is a Fiat-Shamir one, bound to the caller's nonce (docs/gpow2-protocol.md);
        // without one, a fresh random nonce still makes every report new.
        let nonce = match request.nonce.len() {
            0 => {
                let mut n = [0u8; 32];
                getrandom::fill(&mut n).map_err(|e| ApiError::Internal(format!("no randomness for the nonce: {e}")))?;
                n
            }
            32 if request.nonce.iter().any(|b| *b != 0) => {
                let mut n = [0u8; 32];
                n.copy_from_slice(&request.nonce);
                n
            }
            32 => return Err(invalid("nonce", "must not be all zero")),
            _ => return Err(invalid("nonce", "must be 32 bytes")),
        };
        let items = if request.dataset_items == 0 { DEFAULT_ATTESTATION_ITEMS } else { request.dataset_items };
        if items % 32 != 0 || items > MAX_ATTESTATION_ITEMS {
            return Err(invalid("dataset_items", &format!("must be a multiple of 32 up to {MAX_ATTESTATION_ITEMS}")));
        }
        let dim = if request.matrix_dim == 0 { 256 } else { request.matrix_dim };
        if dim % 16 != 0 || !(16..=MAX_ATTESTATION_DIM).contains(&dim) {
            return Err(invalid("matrix_dim", &format!("must be a multiple of 16 from 16 to {MAX_ATTESTATION_DIM}")));
        }
        let count = if request.num_matrices == 0 { 16 } else { request.num_matrices };
        if count > MAX_ATTESTATION_MATRICES {
            return Err(invalid("num_matrices", &format!("must be at most {MAX_ATTESTATION_MATRICES}")));
        }
        let backend = if gpus > 0 { "cuda" } else { "cpu" };
        // A private (0700) directory, removed when dropped: when the run ends, fails, or its
        // caller goes away.
        let dir = tempfile::Builder::new()
            .prefix("executor-attestation-")
            .tempdir()
            .map_err(|e| ApiError::Internal(format!("attestation temp dir: {e}")))?;
        let report = dir.path().join("report.json");
        let spec = ProcessSpec::new(&self.binary)
            .arg("--seed")
            .arg(seed.to_string())
            .arg("--matrix-dim")
            .arg(dim.to_string())
            .arg("--num-matrices")
            .arg(count.to_string())
            .arg("--dataset-items")
            .arg(items.to_string())
            .arg("--nonce")
            .arg(hex::encode(nonce))
            .arg("--backend")
            .arg(backend)
            .arg("--identity")
            .arg(&self.identity_file)
            .arg("--report")
            .arg(&report)
            .arg("--json");
        // If the caller goes away, this future is dropped: the prover is killed (kill_on_drop)
        // and the directory removed (the guard), so nothing is left behind.
        let result = spec.output(ATTESTATION_TIMEOUT, 1 << 20).await;
        let text = std::fs::read_to_string(&report);
        drop(dir);
        let output = result.map_err(|e| match e {
            common::process::ProcessError::Timeout { timeout, .. } => ApiError::AttestationTimeout(timeout),
            e => ApiError::Internal(format!("gpu-attestor: {e}")),
        })?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() && stderr.contains("No NVIDIA GPU found") {
            // gpu-monitor sees GPUs the CUDA backend cannot use (no driver library, or a GPU
            // whose self-test failed): the machine's situation, not a fault of the call.
            return Err(ApiError::NotServed(format!(
                "the GPU backend cannot run: {}",
                stderr.trim().trim_start_matches("Error: ")
            )));
        }
        if !output.status.success() {
            return Err(ApiError::Internal(format!(
                "gpu-attestor {}: {}",
                common::process::describe_exit(output.status),
                stderr.trim()
            )));
        }
        text.map_err(|e| ApiError::Internal(format!("gpu-attestor report: {e}")))
    }
}
