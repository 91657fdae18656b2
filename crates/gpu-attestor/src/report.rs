//! The signed report, schema version 2 (GPOW.md "Report", `docs/gpow2-protocol.md`): what was
//! asked, committed and opened, on what hardware, signed by the executor's ed25519 key over
//! canonical bytes (a typed, length-prefixed encoding of every field in order; never JSON), and
//! co-signed by the validator's sr25519 hotkey when a validator drew the sample.

use common::hotkey::{Hotkey, HotkeyPair};
use common::identity::{ExecutorIdentity, executor_id_of};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::evidence::Evidence;
use crate::gpow2::{Challenge, ChallengeError, Isa};
use crate::hex_serde::hex32;
use crate::host::{GpuFacts, HostFacts};
use crate::merkle::Hash;
use crate::sample::{self, GpuSample};
use crate::verify::{self, GpuCommitment, GpuOpenings, VerifyError};

pub const SCHEMA_VERSION: u32 = 2;

/// Who drew the sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SampleMode {
    /// The validator, from OS randomness after every commitment: the strong mode.
    Interactive,
    /// Hashes of the prover's own commitments: offline audits. A prover can grind it.
    FiatShamir,
}

impl SampleMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SampleMode::Interactive => "interactive",
            SampleMode::FiatShamir => "fiat-shamir",
        }
    }
}

/// What ran the work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendInfo {
    /// `cpu` or `cuda`.
    pub kind: String,
    /// The kernel or code path, e.g. `cpu-avx512`, `dp4a` (per GPU, comma-separated, where
    /// the GPUs' self-tests chose differently).
    pub kernel: String,
    /// Host threads (the CPU backend) or GPUs (the CUDA backend, one host thread each).
    pub threads: u32,
    /// Kernels the self-test disabled: `GPU g: kernel: why`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled: Vec<String>,
}

/// The prover's own clock: informational.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProverTimings {
    pub phase_a_ms: u64,
    pub build_ms: u64,
    pub walk_ms: u64,
    pub open_ms: u64,
}

/// What the validator measured on its clock, raw (before any round trip is subtracted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorTimes {
    pub rtt_us: u64,
    pub phase_a_us: u64,
    pub build_us: u64,
    pub walk_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub schema_version: u32,
    pub executor_id: String,
    #[serde(with = "hex32")]
    pub executor_public_key: [u8; 32],
    /// SS58 address of the validator hotkey, or empty without a validator.
    pub validator_hotkey: String,
    pub sample_mode: SampleMode,
    pub challenge: Challenge,
    #[serde(with = "hex32")]
    pub walk_nonce: [u8; 32],
    pub commitments: Vec<GpuCommitment>,
    pub samples: Vec<GpuSample>,
    pub openings: Vec<GpuOpenings>,
    pub gpus: Vec<GpuFacts>,
    pub host: HostFacts,
    pub evidence: Evidence,
    pub prover_timings: ProverTimings,
    pub validator_times: Option<ValidatorTimes>,
    pub binary_version: String,
    pub backend: BackendInfo,
    /// ed25519 by the executor over [`Report::canonical_bytes`], hex.
    pub signature: String,
    /// sr25519 by the validator hotkey over [`Report::transcript`], hex; empty when not co-signed.
    pub validator_signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("schema version {0} is not supported (this build reads {SCHEMA_VERSION})")]
    Schema(u32),
    #[error("executor id {got} does not belong to the report's public key (expected {expected})")]
    ExecutorId { got: String, expected: String },
    #[error("the executor public key is weak (small order): it would accept forged signatures")]
    WeakKey,
    #[error("bad signature: {0}")]
    Signature(String),
    #[error("the challenge names another executor key")]
    ExecutorKey,
    #[error("validator hotkey: {0}")]
    Hotkey(String),
    #[error("the challenge names another validator key")]
    ValidatorKey,
    #[error("challenge: {0}")]
    Challenge(#[from] ChallengeError),
    #[error(
        "samples not authenticated: an interactive report needs the validator's signature (`check --hotkey-secret-file`)"
    )]
    NotCoSigned,
    #[error("bad validator signature: {0}")]
    ValidatorSignature(String),
    #[error("a Fiat-Shamir report needs a non-zero nonce")]
    ZeroNonce,
    #[error("the walk nonce is not the Fiat-Shamir walk nonce of the nonce and R_A")]
    WalkNonce,
    #[error("the sample is not the Fiat-Shamir sample of the nonce and the roots")]
    Sample,
    #[error("proof: {0}")]
    Proof(#[from] VerifyError),
}

/// The canonical byte encoding: every item a one-byte kind and its data; byte strings carry a u64
/// LE length, lists a u64 LE count.
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
    fn u64(&mut self, v: impl Into<u64>) {
        self.0.push(b'u');
        self.0.extend_from_slice(&v.into().to_le_bytes());
    }
    fn list(&mut self, len: usize) {
        self.0.push(b'l');
        self.0.extend_from_slice(&(len as u64).to_le_bytes());
    }
    fn hashes(&mut self, list: &[Hash]) {
        self.list(list.len());
        list.iter().for_each(|h| self.bytes(h));
    }
}

/// `SHA-256(0x21 ‖ nonce ‖ R_A,0 ‖ R_A,1 …)`: the walk nonce of a report without a validator.
pub fn fiat_shamir_walk_nonce(nonce: &[u8; 32], roots_a: &[Hash]) -> [u8; 32] {
    let mut h = Sha256::new().chain_update([0x21]).chain_update(nonce);
    roots_a.iter().for_each(|r| h.update(r));
    h.finalize().into()
}

/// `SHA-256(0x22 ‖ nonce ‖ for each g: R_A,g ‖ (R_B,g or 32 zero bytes))`: its sample seed.
pub fn fiat_shamir_sample_seed(nonce: &[u8; 32], commitments: &[GpuCommitment]) -> [u8; 32] {
    let mut h = Sha256::new().chain_update([0x22]).chain_update(nonce);
    for c in commitments {
        h.update(c.root_a);
        h.update(c.root_b.unwrap_or([0; 32]));
    }
    h.finalize().into()
}

/// A verified report: who proved what, and how much the sample can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub tiles: usize,
    pub lanes: usize,
    /// Fiat-Shamir: the prover could grind the sample.
    pub weak: bool,
}

impl Report {
    /// The bytes the executor signs: every field but the two signatures, in order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut c = Canonical::default();
        c.str("gpow/v2/report");
        c.u64(self.schema_version);
        c.str(&self.executor_id);
        c.bytes(&self.executor_public_key);
        c.str(&self.validator_hotkey);
        c.str(self.sample_mode.as_str());
        c.bytes(&self.challenge.canonical());
        c.bytes(&self.walk_nonce);
        c.list(self.commitments.len());
        for x in &self.commitments {
            c.bytes(&x.root_a);
            c.hashes(&x.product_roots);
            c.list(usize::from(x.root_b.is_some()));
            x.root_b.iter().for_each(|r| c.bytes(r));
        }
        c.list(self.samples.len());
        for s in &self.samples {
            c.list(s.tiles.len());
            for t in &s.tiles {
                c.u64(t.p);
                c.u64(t.ti);
                c.u64(t.tj);
            }
            c.list(s.lanes.len());
            s.lanes.iter().for_each(|&l| c.u64(l));
        }
        c.list(self.openings.len());
        for o in &self.openings {
            for paths in [&o.tile_paths, &o.lane_paths] {
                c.list(paths.len());
                paths.iter().for_each(|p| c.hashes(p));
            }
        }
        c.list(self.gpus.len());
        for g in &self.gpus {
            c.u64(g.index);
            for s in [&g.uuid, &g.name, &g.pci_bus_id] {
                c.str(s);
            }
            c.u64(g.memory_bytes);
            c.str(&g.compute_capability);
            for v in [g.cuda_cores, g.max_sm_clock_mhz, g.max_memory_clock_mhz, g.power_limit_mw] {
                c.u64(v);
            }
            for s in [&g.driver_version, &g.cuda_version, &g.mig_mode] {
                c.str(s);
            }
        }
        let h = &self.host;
        for s in [&h.hostname, &h.os, &h.kernel, &h.cpu_model] {
            c.str(s);
        }
        c.u64(h.cpu_cores);
        c.u64(h.memory_bytes);
        let e = &self.evidence;
        c.list(e.proc_driver_gpus.len());
        e.proc_driver_gpus.iter().for_each(|s| c.str(s));
        c.u64(e.proc_driver_is_procfs);
        for s in [&e.nvml_library_path, &e.nvml_library_sha256, &e.ld_preload, &e.ld_so_preload] {
            c.str(s);
        }
        c.u64(e.cpu_hypervisor);
        c.str(&e.dmi_sys_vendor);
        c.str(&e.dmi_product_name);
        c.list(e.gpus.len());
        for g in &e.gpus {
            c.u64(g.index);
            for s in [&g.serial, &g.board_part_number, &g.vbios_version] {
                c.str(s);
            }
            c.u64(g.default_power_limit_mw);
            c.u64(g.enforced_power_limit_mw);
        }
        c.list(e.gpu_processes.len());
        for p in &e.gpu_processes {
            c.u64(p.gpu_index);
            c.u64(p.pid);
            c.u64(p.used_memory_bytes);
            c.str(&p.container_id);
        }
        let t = &self.prover_timings;
        for v in [t.phase_a_ms, t.build_ms, t.walk_ms, t.open_ms] {
            c.u64(v);
        }
        c.list(usize::from(self.validator_times.is_some()));
        if let Some(v) = &self.validator_times {
            for x in [v.rtt_us, v.phase_a_us, v.build_us, v.walk_us] {
                c.u64(x);
            }
        }
        c.str(&self.binary_version);
        c.str(&self.backend.kind);
        c.str(&self.backend.kernel);
        c.u64(self.backend.threads);
        // Last, and only when there is one: reports without any keep their bytes.
        if !self.backend.disabled.is_empty() {
            c.list(self.backend.disabled.len());
            for d in &self.backend.disabled {
                c.str(d);
            }
        }
        c.0
    }

    /// What the validator co-signs: the canonical bytes and the executor's 64 signature bytes.
    pub fn transcript(&self) -> Result<Vec<u8>, ReportError> {
        let mut out = self.canonical_bytes();
        out.extend_from_slice(&self.signature_bytes()?);
        Ok(out)
    }

    fn signature_bytes(&self) -> Result<[u8; 64], ReportError> {
        let mut signature = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut signature)
            .map_err(|e| ReportError::Signature(format!("expected 128 hex digits: {e}")))?;
        Ok(signature)
    }

    /// Signs with the executor identity (sets key, id and signature).
    pub fn sign(&mut self, identity: &ExecutorIdentity) {
        self.executor_public_key = identity.public_key();
        self.executor_id = identity.executor_id();
        self.signature = hex::encode(identity.sign(&self.canonical_bytes()));
    }

    /// The validator's co-signature over the transcript (the executor's signature included).
    pub fn cosign(&mut self, hotkey: &HotkeyPair) -> Result<(), ReportError> {
        self.validator_signature = hex::encode(hotkey.sign(&self.transcript()?));
        Ok(())
    }

    /// The executor's part, strictly: schema, id, a key of full order, the signature
    /// (`verify_strict`), and that the challenge names this key and the validator's.
    pub fn check_signature(&self) -> Result<(), ReportError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(ReportError::Schema(self.schema_version));
        }
        let expected = executor_id_of(&self.executor_public_key);
        if self.executor_id != expected {
            return Err(ReportError::ExecutorId { got: self.executor_id.clone(), expected });
        }
        let key = strict_key(&self.executor_public_key)?;
        key.verify_strict(&self.canonical_bytes(), &Signature::from_bytes(&self.signature_bytes()?))
            .map_err(|_| ReportError::Signature("does not match the report and key".into()))?;
        if self.challenge.executor_key != self.executor_public_key {
            return Err(ReportError::ExecutorKey);
        }
        if self.validator_hotkey.is_empty() {
            if self.challenge.validator_key != [0; 32] {
                return Err(ReportError::ValidatorKey);
            }
        } else {
            let hotkey: Hotkey = self.validator_hotkey.parse().map_err(|e| ReportError::Hotkey(format!("{e}")))?;
            if hotkey.public_key() != &self.challenge.validator_key {
                return Err(ReportError::ValidatorKey);
            }
        }
        self.challenge.validate()?;
        Ok(())
    }

    /// Everything a report claims that can be re-derived offline (`gpu-attestor verify`): the
    /// signatures, who drew the sample (an interactive sample only with the validator's
    /// co-signature; a Fiat-Shamir one re-derived), standard sample sizes, and the proof.
    pub fn verify(&self, isa: Isa, threads: usize) -> Result<Verified, ReportError> {
        self.check_signature()?;
        match self.sample_mode {
            SampleMode::Interactive => {
                if self.validator_signature.is_empty() || self.validator_hotkey.is_empty() {
                    return Err(ReportError::NotCoSigned);
                }
                let hotkey: Hotkey = self.validator_hotkey.parse().map_err(|e| ReportError::Hotkey(format!("{e}")))?;
                let signature = hex::decode(&self.validator_signature)
                    .map_err(|e| ReportError::ValidatorSignature(format!("not hex: {e}")))?;
                hotkey
                    .verify(&self.transcript()?, &signature)
                    .map_err(|e| ReportError::ValidatorSignature(e.to_string()))?;
                verify::check_commitments(&self.challenge, &self.commitments)?;
            }
            SampleMode::FiatShamir => {
                if self.challenge.nonce == [0; 32] {
                    return Err(ReportError::ZeroNonce);
                }
                verify::check_commitments(&self.challenge, &self.commitments)?;
                let roots_a: Vec<Hash> = self.commitments.iter().map(|c| c.root_a).collect();
                if self.walk_nonce != fiat_shamir_walk_nonce(&self.challenge.nonce, &roots_a) {
                    return Err(ReportError::WalkNonce);
                }
                let seed = fiat_shamir_sample_seed(&self.challenge.nonce, &self.commitments);
                if sample::draw(&self.challenge, &seed) != self.samples {
                    return Err(ReportError::Sample);
                }
            }
        }
        // Both arms checked the commitments: once is enough.
        verify::check_sampled(
            isa,
            threads,
            &self.challenge,
            &self.walk_nonce,
            &self.commitments,
            &self.samples,
            &self.openings,
            true,
        )?;
        Ok(Verified {
            tiles: self.samples.iter().map(|s| s.tiles.len()).sum(),
            lanes: self.samples.iter().map(|s| s.lanes.len()).sum(),
            weak: self.sample_mode == SampleMode::FiatShamir,
        })
    }
}

/// An ed25519 public key that is a valid point of full order: small-order keys make signatures
/// that verify for every message, and are refused wherever a key is read.
pub fn strict_key(bytes: &[u8; 32]) -> Result<VerifyingKey, ReportError> {
    let key = VerifyingKey::from_bytes(bytes).map_err(|e| ReportError::Signature(format!("public key: {e}")))?;
    if key.is_weak() {
        return Err(ReportError::WeakKey);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prover::CpuProver;

    /// A Fiat-Shamir report as `gpu-attestor --report` writes it.
    pub(crate) fn fiat_shamir(identity: &ExecutorIdentity, nonce: [u8; 32]) -> Report {
        let mut challenge = Challenge::plain(3, 16, 20, 256);
        challenge.nonce = nonce;
        challenge.executor_key = identity.public_key();
        let mut prover = CpuProver::new(challenge.clone(), Isa::best(), 2);
        prover.phase_a();
        let roots_a: Vec<Hash> = prover.commitments().iter().map(|c| c.root_a).collect();
        let walk_nonce = fiat_shamir_walk_nonce(&nonce, &roots_a);
        prover.build().unwrap();
        prover.walk(&walk_nonce);
        let commitments = prover.commitments();
        let samples = sample::draw(&challenge, &fiat_shamir_sample_seed(&nonce, &commitments));
        let openings = prover.open(&samples);
        let mut r = Report {
            schema_version: SCHEMA_VERSION,
            executor_id: String::new(),
            executor_public_key: [0; 32],
            validator_hotkey: String::new(),
            sample_mode: SampleMode::FiatShamir,
            challenge,
            walk_nonce,
            commitments,
            samples,
            openings,
            gpus: Vec::new(),
            host: crate::host::host(),
            evidence: Evidence::default(),
            prover_timings: ProverTimings::default(),
            validator_times: None,
            binary_version: common::VERSION.into(),
            backend: BackendInfo { kind: "cpu".into(), kernel: "cpu".into(), threads: 1, disabled: Vec::new() },
            signature: String::new(),
            validator_signature: String::new(),
        };
        r.sign(identity);
        r
    }

    #[test]
    fn a_fiat_shamir_report_verifies_says_it_is_weak_and_tampering_fails() {
        let identity = ExecutorIdentity::from_seed([7; 32]);
        let good = fiat_shamir(&identity, [5; 32]);
        let v = good.verify(Isa::best(), 2).unwrap();
        assert_eq!(v, Verified { tiles: 20, lanes: 16, weak: true });
        let json = serde_json::to_string(&good).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), good);

        let mut bad = good.clone();
        bad.host.cpu_model.push('!');
        assert!(matches!(bad.verify(Isa::best(), 2), Err(ReportError::Signature(_))));
        let mut bad = good.clone();
        bad.evidence.ld_preload = "x.so".into();
        assert!(matches!(bad.verify(Isa::best(), 2), Err(ReportError::Signature(_))));

        // Re-signed by another key: the challenge still names the first.
        let mut bad = good.clone();
        bad.sign(&ExecutorIdentity::from_seed([8; 32]));
        assert_eq!(bad.verify(Isa::best(), 2), Err(ReportError::ExecutorKey));
        // A sample the prover chose, signed honestly.
        let mut bad = good.clone();
        bad.samples[0].tiles.swap(0, 1);
        bad.openings[0].tile_paths.swap(0, 1);
        bad.sign(&identity);
        assert_eq!(bad.verify(Isa::best(), 2), Err(ReportError::Sample));
        // A zero nonce.
        let zero = fiat_shamir(&identity, [0; 32]);
        assert_eq!(zero.verify(Isa::best(), 2), Err(ReportError::ZeroNonce));
        // Unknown fields are refused.
        assert!(serde_json::from_str::<Report>(&json.replacen('{', r#"{"extra":1,"#, 1)).is_err());
    }

    #[test]
    fn interactive_reports_need_the_validator_signature() {
        let identity = ExecutorIdentity::from_seed([7; 32]);
        let validator = HotkeyPair::from_seed(&[9; 32]);
        let mut r = fiat_shamir(&identity, [5; 32]);
        r.sample_mode = SampleMode::Interactive;
        r.validator_hotkey = validator.hotkey().as_str().to_owned();
        r.challenge.validator_key = *validator.hotkey().public_key();
        r.sign(&identity);
        // The executor's signature holds, but nobody vouches for the sample.
        r.check_signature().unwrap();
        assert_eq!(r.verify(Isa::best(), 2), Err(ReportError::NotCoSigned));
        // (The challenge changed, so the roots no longer match it: co-signing proves the
        // sample's origin, the proof check still runs.)
        r.cosign(&validator).unwrap();
        assert!(matches!(r.verify(Isa::best(), 2), Err(ReportError::Proof(_))));
        let mut other = r.clone();
        other.cosign(&HotkeyPair::from_seed(&[10; 32])).unwrap();
        assert!(matches!(other.verify(Isa::best(), 2), Err(ReportError::ValidatorSignature(_))));
    }

    /// The small-order key with R = identity and s = 0 "signs" every message for a non-strict
    /// verifier; here it is refused before any signature is looked at.
    #[test]
    fn the_weak_key_signs_nothing() {
        let identity = ExecutorIdentity::from_seed([7; 32]);
        let mut r = fiat_shamir(&identity, [5; 32]);
        let mut weak = [0u8; 32];
        weak[0] = 1;
        r.executor_public_key = weak;
        r.executor_id = executor_id_of(&weak);
        r.challenge.executor_key = weak;
        let mut sig = [0u8; 64];
        sig[0] = 1;
        r.signature = hex::encode(sig);
        // The attack works against the plain check…
        let key = VerifyingKey::from_bytes(&weak).unwrap();
        assert!(ed25519_dalek::Verifier::verify(&key, &r.canonical_bytes(), &Signature::from_bytes(&sig)).is_ok());
        // …and not here.
        assert_eq!(r.verify(Isa::best(), 2), Err(ReportError::WeakKey));
    }
}
