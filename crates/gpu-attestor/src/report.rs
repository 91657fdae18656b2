//! The signed report: what was asked, what was committed and opened, on what hardware, signed
//! by the executor's ed25519 key over canonical bytes (a length-prefixed encoding of every
//! field in a fixed order, so any implementation can rebuild them; never JSON).

use common::hotkey::Hotkey;
use common::identity::{ExecutorIdentity, executor_id_of};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::host::{GpuFacts, HostFacts};
use crate::opening::{Commitment, ProductOpening, ProductSample};
use crate::params::{Params, hex32};
use crate::verify::{self, VerifyError};

pub const SCHEMA_VERSION: u32 = 1;

/// How the sample was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SampleMode {
    /// By the validator, after the commitment: the strong mode.
    Interactive,
    /// From `SHA-256(root ‖ nonce)`: offline audits and tests. A prover can grind it.
    FiatShamir,
}

/// Prover-side timings: informational; validators time on their own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    pub compute_ms: u64,
    pub open_ms: u64,
}

/// What ran the work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendInfo {
    /// `cpu` or `cuda`.
    pub kind: String,
    /// Kernel or implementation name, e.g. `cpu-avx2`.
    pub kernel: String,
    pub threads: u32,
}

/// The report, as JSON: unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub schema_version: u32,
    pub executor_id: String,
    #[serde(with = "hex32")]
    pub executor_public_key: [u8; 32],
    /// SS58 address of the validator hotkey, or empty in plain mode.
    pub validator_hotkey: String,
    pub sample_mode: SampleMode,
    pub params: Params,
    pub commitment: Commitment,
    pub samples: Vec<ProductSample>,
    pub openings: Vec<ProductOpening>,
    pub gpus: Vec<GpuFacts>,
    pub host: HostFacts,
    pub binary_version: String,
    pub timings: Timings,
    pub backend: BackendInfo,
    /// ed25519 over [`Report::canonical_bytes`], hex.
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("schema version {0} is not supported (this build reads {SCHEMA_VERSION})")]
    Schema(u32),
    #[error("executor id {got} does not belong to the report's public key (expected {expected})")]
    ExecutorId { got: String, expected: String },
    #[error("the challenge parameters name another executor key")]
    ExecutorKey,
    #[error("validator hotkey: {0}")]
    Hotkey(String),
    #[error("the challenge parameters name another validator key")]
    ValidatorKey,
    #[error("parameters: {0}")]
    Params(#[from] crate::params::ParamsError),
    #[error("bad signature: {0}")]
    Signature(String),
    #[error("the sample is not the Fiat-Shamir sample of the root and nonce")]
    Sample,
    #[error("proof: {0}")]
    Proof(#[from] VerifyError),
}

/// The canonical byte encoding: every item is a one-byte kind and its data; strings and byte
/// strings carry a u64 LE length; lists a u64 LE count.
#[derive(Default)]
struct Canonical(Vec<u8>);

impl Canonical {
    fn bytes(&mut self, b: &[u8]) {
        self.0.push(b'b');
        self.0.extend_from_slice(&(b.len() as u64).to_le_bytes());
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.push(b'u');
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.push(b'i');
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn list(&mut self, len: usize) {
        self.0.push(b'l');
        self.0.extend_from_slice(&(len as u64).to_le_bytes());
    }
}

impl Report {
    /// The bytes the signature covers: every field but the signature, in declaration order,
    /// after the domain tag `gpow/v1/report`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut c = Canonical::default();
        c.str("gpow/v1/report");
        c.u64(self.schema_version.into());
        c.str(&self.executor_id);
        c.bytes(&self.executor_public_key);
        c.str(&self.validator_hotkey);
        c.str(match self.sample_mode {
            SampleMode::Interactive => "interactive",
            SampleMode::FiatShamir => "fiat-shamir",
        });
        c.bytes(&self.params.canonical());
        c.bytes(&self.commitment.root);
        c.list(self.commitment.product_roots.len());
        for r in &self.commitment.product_roots {
            c.bytes(r);
        }
        c.list(self.samples.len());
        for s in &self.samples {
            c.u64(s.index.into());
            c.list(s.r.len());
            s.r.iter().for_each(|&v| c.u64(v.into()));
            c.list(s.rows.len());
            s.rows.iter().for_each(|&v| c.u64(v.into()));
        }
        c.list(self.openings.len());
        for o in &self.openings {
            c.u64(o.index.into());
            c.list(o.y.len());
            o.y.iter().for_each(|&v| c.i64(v));
            c.list(o.rows.len());
            for row in &o.rows {
                c.u64(row.index.into());
                c.list(row.values.len());
                row.values.iter().for_each(|&v| c.i64(v.into()));
                c.list(row.path.len());
                row.path.iter().for_each(|h| c.bytes(h));
            }
        }
        c.list(self.gpus.len());
        for g in &self.gpus {
            c.u64(g.index.into());
            for s in [&g.uuid, &g.name, &g.pci_bus_id] {
                c.str(s);
            }
            c.u64(g.memory_bytes);
            c.str(&g.compute_capability);
            for v in [g.cuda_cores, g.max_sm_clock_mhz, g.max_memory_clock_mhz, g.power_limit_mw] {
                c.u64(v.into());
            }
            for s in [&g.driver_version, &g.cuda_version, &g.mig_mode] {
                c.str(s);
            }
        }
        let h = &self.host;
        for s in [&h.hostname, &h.os, &h.kernel, &h.cpu_model] {
            c.str(s);
        }
        c.u64(h.cpu_cores.into());
        c.u64(h.memory_bytes);
        c.str(&self.binary_version);
        c.u64(self.timings.compute_ms);
        c.u64(self.timings.open_ms);
        c.str(&self.backend.kind);
        c.str(&self.backend.kernel);
        c.u64(self.backend.threads.into());
        c.0
    }

    /// Signs the report with the executor identity (sets key, id and signature).
    pub fn sign(&mut self, identity: &ExecutorIdentity) {
        self.executor_public_key = identity.public_key();
        self.executor_id = identity.executor_id();
        self.signature = hex::encode(identity.sign(&self.canonical_bytes()));
    }

    /// Checks everything a report claims that can be checked: its signature by the key it
    /// names, that the parameters bind that key (and the validator's), and the proof itself.
    pub fn verify(&self) -> Result<(), ReportError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(ReportError::Schema(self.schema_version));
        }
        let expected = executor_id_of(&self.executor_public_key);
        if self.executor_id != expected {
            return Err(ReportError::ExecutorId { got: self.executor_id.clone(), expected });
        }
        let key = VerifyingKey::from_bytes(&self.executor_public_key)
            .map_err(|e| ReportError::Signature(format!("public key: {e}")))?;
        let mut signature = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut signature)
            .map_err(|e| ReportError::Signature(format!("expected 128 hex digits: {e}")))?;
        key.verify(&self.canonical_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| ReportError::Signature("does not match the report and key".into()))?;
        if self.params.executor_key != self.executor_public_key && self.params.executor_key != [0; 32] {
            return Err(ReportError::ExecutorKey);
        }
        if !self.validator_hotkey.is_empty() {
            let hotkey: Hotkey = self.validator_hotkey.parse().map_err(|e| ReportError::Hotkey(format!("{e}")))?;
            if hotkey.public_key() != &self.params.validator_key {
                return Err(ReportError::ValidatorKey);
            }
        }
        self.params.validate()?;
        if self.sample_mode == SampleMode::FiatShamir {
            let seed = verify::fiat_shamir_seed(&self.commitment.root, &self.params.nonce);
            if verify::sample(&self.params, seed) != self.samples {
                return Err(ReportError::Sample);
            }
        }
        verify::check_openings(&self.params, &self.commitment, &self.samples, &self.openings)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prove::{commit, open};

    fn report(identity: &ExecutorIdentity) -> Report {
        let mut params = Params::plain(3, 32, 4);
        params.executor_key = identity.public_key();
        let commitment = commit(&params, 1);
        let samples = verify::sample(&params, verify::fiat_shamir_seed(&commitment.root, &params.nonce));
        let openings = samples.iter().map(|s| open(&params, s, 1)).collect();
        let mut r = Report {
            schema_version: SCHEMA_VERSION,
            executor_id: String::new(),
            executor_public_key: [0; 32],
            validator_hotkey: String::new(),
            sample_mode: SampleMode::FiatShamir,
            params,
            commitment,
            samples,
            openings,
            gpus: Vec::new(),
            host: crate::host::host(),
            binary_version: common::VERSION.into(),
            timings: Timings { compute_ms: 1, open_ms: 1 },
            backend: BackendInfo { kind: "cpu".into(), kernel: "cpu".into(), threads: 1 },
            signature: String::new(),
        };
        r.sign(identity);
        r
    }

    #[test]
    fn a_signed_report_verifies_and_tampering_fails() {
        let identity = ExecutorIdentity::from_seed([7; 32]);
        let good = report(&identity);
        good.verify().unwrap();
        let json = serde_json::to_string(&good).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        back.verify().unwrap();

        let mut bad = good.clone();
        bad.host.cpu_model.push('!');
        assert!(matches!(bad.verify(), Err(ReportError::Signature(_))));

        let mut bad = good.clone();
        bad.timings.compute_ms = 0;
        assert!(matches!(bad.verify(), Err(ReportError::Signature(_))));

        // Re-signed by another key: the id no longer matches, and with a matching id the
        // parameters still name the first key.
        let other = ExecutorIdentity::from_seed([8; 32]);
        let mut bad = good.clone();
        bad.executor_public_key = other.public_key();
        assert!(matches!(bad.verify(), Err(ReportError::ExecutorId { .. })));
        let mut bad = good.clone();
        bad.sign(&other);
        assert_eq!(bad.verify(), Err(ReportError::ExecutorKey));

        // A tampered proof signed honestly is still rejected by the proof check.
        let mut bad = good.clone();
        bad.openings[0].y[0] += 1;
        bad.sign(&identity);
        assert!(matches!(bad.verify(), Err(ReportError::Proof(VerifyError::Freivalds { .. }))));

        // Found while writing the report_verify fuzz target: an interactive report signed by its
        // own key, sampling a product that does not exist with an empty `r` (so Freivalds holds
        // trivially), panicked on the product root lookup. Now it is an error.
        let mut bad = good.clone();
        bad.sample_mode = SampleMode::Interactive;
        bad.samples = vec![ProductSample { index: 9, r: Vec::new(), rows: Vec::new() }];
        bad.openings = vec![ProductOpening { index: 9, y: vec![0; 32], rows: Vec::new() }];
        bad.sign(&identity);
        assert_eq!(bad.verify(), Err(ReportError::Proof(VerifyError::BadSample { product: 9 })));
        // The same with a real product and a short `r`: accepted before, it proves nothing.
        bad.samples[0].index = 0;
        bad.openings[0].index = 0;
        bad.sign(&identity);
        assert_eq!(bad.verify(), Err(ReportError::Proof(VerifyError::BadSample { product: 0 })));

        // Unknown fields are refused.
        let extra = json.replacen('{', r#"{"extra":1,"#, 1);
        assert!(serde_json::from_str::<Report>(&extra).is_err());
    }
}
