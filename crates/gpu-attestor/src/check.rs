//! The validator's side of the interactive protocol: challenge a prover, time it on our own
//! clock, verify everything on the CPU, and give a verdict.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncWrite};

use crate::params::Params;
use crate::protocol::{Message, ProtocolError, Reader, send};
use crate::report::{Report, SampleMode};
use crate::verify;

/// Round trips measured before the challenge; the fastest is subtracted from the time.
const PINGS: u64 = 3;

/// What the validator asks.
#[derive(Debug, Clone)]
pub struct ValidatorSetup {
    pub seed: [u8; 32],
    pub dim: u32,
    pub count: u32,
    /// The validator's hotkey (SS58) and its public key; empty and zeros without one.
    pub hotkey: String,
    pub hotkey_public: [u8; 32],
    /// Longest wait for each prover message (the commitment included).
    pub step_timeout: Duration,
}

/// The outcome, printed by `gpu-attestor check`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    pub passed: bool,
    /// Why it failed, or notes on a pass.
    pub reasons: Vec<String>,
    pub executor_id: String,
    pub gpu_model: String,
    pub backend: String,
    /// From sending the challenge to receiving the commitment, minus the round trip.
    pub elapsed_ms: f64,
    pub round_trip_ms: f64,
    /// The limit for the claimed GPU, when the limits table has one.
    pub limit_ms: Option<f64>,
    pub checksum: String,
    pub products_checked: usize,
    pub report: Option<Report>,
}

#[derive(Debug, Deserialize)]
struct LimitsFile {
    slack_ms: f64,
    models: Vec<ModelLimit>,
    #[allow(dead_code)]
    calibrated: bool,
    #[allow(dead_code)]
    comment: String,
}

#[derive(Debug, Deserialize)]
struct ModelLimit {
    #[serde(rename = "match")]
    pattern: String,
    peak_int8_ops: f64,
    efficiency: f64,
}

/// The time limit for `gpu_name` on `params`, from `limits.json`; None for unknown models.
pub fn time_limit_ms(gpu_name: &str, params: &Params) -> Option<f64> {
    let limits: LimitsFile = serde_json::from_str(include_str!("../limits.json")).ok()?;
    let model = limits.models.iter().find(|m| gpu_name.contains(&m.pattern))?;
    Some(params.ops() / (model.peak_int8_ops * model.efficiency) * 1e3 + limits.slack_ms)
}

/// 32 bytes from the operating system: the nonce and the sample must be unpredictable.
fn fresh_bytes() -> Result<[u8; 32], ProtocolError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| ProtocolError::Io(std::io::Error::other(e.to_string())))?;
    Ok(b)
}

/// Drives one conversation with a prover.
pub async fn run_validator<R, W>(input: R, mut out: W, setup: &ValidatorSetup) -> Result<Verdict, ProtocolError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = Reader::new(input);
    let step = setup.step_timeout;
    let (executor_id, public_key, backend, gpus) = match reader.next("hello", step).await? {
        Message::Hello { protocol, executor_id, executor_public_key, backend, gpus, .. } => {
            if protocol != crate::protocol::PROTOCOL_VERSION {
                return Err(ProtocolError::Invalid { message: "hello", reason: format!("protocol {protocol}") });
            }
            (executor_id, executor_public_key, backend, gpus)
        }
        other => return Err(ProtocolError::Unexpected { expected: "hello", got: other.kind() }),
    };
    let mut rtt = Duration::MAX;
    for id in 0..PINGS {
        let sent = Instant::now();
        send(&mut out, &Message::Ping { id }).await?;
        match reader.next("pong", step).await? {
            Message::Pong { id: got } if got == id => rtt = rtt.min(sent.elapsed()),
            other => return Err(ProtocolError::Unexpected { expected: "pong", got: other.kind() }),
        }
    }

    let params = Params {
        seed: setup.seed,
        m: setup.dim,
        n: setup.dim,
        k: setup.dim,
        count: setup.count,
        nonce: fresh_bytes()?,
        executor_key: public_key,
        validator_key: setup.hotkey_public,
    };
    params.validate().map_err(|e| ProtocolError::Invalid { message: "challenge", reason: e.to_string() })?;
    let sent = Instant::now();
    send(&mut out, &Message::Challenge { params: params.clone(), validator_hotkey: setup.hotkey.clone() }).await?;
    let commitment = match reader.next("commit", step).await? {
        Message::Commit { commitment, .. } => commitment,
        other => return Err(ProtocolError::Unexpected { expected: "commit", got: other.kind() }),
    };
    let elapsed = sent.elapsed().saturating_sub(rtt);

    let mut reasons = Vec::new();
    let samples = verify::sample(&params, fresh_bytes()?);
    send(&mut out, &Message::Open { samples: samples.clone() }).await?;
    let openings = match reader.next("openings", step).await? {
        Message::Openings { openings } => openings,
        other => return Err(ProtocolError::Unexpected { expected: "openings", got: other.kind() }),
    };
    if let Err(e) = verify::check_openings(&params, &commitment, &samples, &openings) {
        reasons.push(format!("proof rejected: {e}"));
    }
    let report = match reader.next("report", step).await? {
        Message::Report { report } => *report,
        other => return Err(ProtocolError::Unexpected { expected: "report", got: other.kind() }),
    };
    if let Err(e) = report.verify() {
        reasons.push(format!("report rejected: {e}"));
    }
    let same = report.params == params
        && report.commitment == commitment
        && report.samples == samples
        && report.openings == openings
        && report.sample_mode == SampleMode::Interactive
        && report.executor_public_key == public_key
        && report.executor_id == executor_id;
    if !same {
        reasons.push("the report does not describe this conversation".to_owned());
    }

    let gpu_model = gpus.first().map(|g| g.name.clone()).unwrap_or_else(|| "none (CPU backend)".to_owned());
    let limit_ms = gpus.first().and_then(|g| time_limit_ms(&g.name, &params));
    let elapsed_ms = elapsed.as_secs_f64() * 1e3;
    match (backend.kind.as_str(), limit_ms) {
        (_, Some(limit)) if elapsed_ms > limit => {
            reasons.push(format!("too slow for {gpu_model}: {elapsed_ms:.1} ms > limit {limit:.1} ms"))
        }
        (_, Some(_)) => {}
        ("cpu", None) => reasons.push("note: CPU backend, no time limit applies; this proves work, not a GPU".into()),
        (_, None) => reasons.push(format!("note: no time limit is known for `{gpu_model}`")),
    }
    let passed = reasons.iter().all(|r| r.starts_with("note:"));
    Ok(Verdict {
        passed,
        reasons,
        executor_id,
        gpu_model,
        backend: format!("{} ({})", backend.kind, backend.kernel),
        elapsed_ms,
        round_trip_ms: rtt.as_secs_f64() * 1e3,
        limit_ms,
        checksum: commitment.checksum(),
        products_checked: samples.len(),
        report: Some(report),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ProverSetup, run_prover};
    use crate::report::BackendInfo;
    use common::identity::ExecutorIdentity;
    use tokio::io::BufReader;

    fn setup(identity_seed: u8) -> ProverSetup {
        ProverSetup {
            identity: ExecutorIdentity::from_seed([identity_seed; 32]),
            threads: 2,
            step_timeout: Duration::from_secs(10),
            backend: BackendInfo { kind: "cpu".into(), kernel: "cpu".into(), threads: 2 },
            gpus: Vec::new(),
            host: crate::host::host(),
            available_memory: 1 << 30,
        }
    }

    #[tokio::test]
    async fn an_honest_prover_passes_over_in_memory_pipes() {
        let (to_prover, prover_in) = tokio::io::duplex(1 << 20);
        let (prover_out, from_prover) = tokio::io::duplex(1 << 20);
        let prover = tokio::spawn(run_prover(BufReader::new(prover_in), prover_out, setup(1)));
        let v = ValidatorSetup {
            seed: [3; 32],
            dim: 32,
            count: 8,
            hotkey: "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY".into(),
            hotkey_public: *"5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
                .parse::<common::hotkey::Hotkey>()
                .unwrap()
                .public_key(),
            step_timeout: Duration::from_secs(10),
        };
        let verdict = run_validator(BufReader::new(from_prover), to_prover, &v).await.unwrap();
        assert!(verdict.passed, "{:?}", verdict.reasons);
        assert_eq!(verdict.products_checked, 8);
        assert_eq!(verdict.executor_id, ExecutorIdentity::from_seed([1; 32]).executor_id());
        prover.await.unwrap().unwrap();
    }

    #[test]
    fn known_models_get_limits() {
        let params = Params::plain(1, 256, 1000);
        let h100 = time_limit_ms("NVIDIA H100 80GB HBM3", &params).unwrap();
        assert!(h100 > 200.0 && h100 < 300.0, "{h100}");
        assert!(time_limit_ms("Some GPU", &params).is_none());
    }
}
