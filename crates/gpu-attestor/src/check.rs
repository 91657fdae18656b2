//! The validator's side of protocol 2 (GPOW.md "Timing and verdict"): ask each claimed GPU for
//! its profile's work, time every phase on our own clock, verify the sample on the CPU once, check
//! the signed report against the conversation and `hello`, and give a verdict: PASS, FAIL or
//! UNTIMED.

use std::time::{Duration, Instant};

use common::hotkey::{Hotkey, HotkeyPair};
use common::identity::executor_id_of;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncWrite};

use crate::gpow2::profiles::{Profile, ProfilesFile};
use crate::gpow2::{Challenge, GpuWork, Isa};
use crate::protocol::{MAX_LINE, Message, PROTOCOL_VERSION, ProtocolError, Reader, send};
use crate::report::{self, Report, SampleMode, ValidatorTimes};
use crate::sample;
use crate::verify::{self, GpuCommitment};

/// Pings before the challenge and again after `commit_b`; the fastest of all is the round trip.
const PINGS: u64 = 3;
/// Never more than this is subtracted from a timed interval: the prover decides when it answers
/// a ping.
const MAX_SUBTRACTED: Duration = Duration::from_millis(50);
/// A round trip above this cannot time an executor.
const MAX_RTT: Duration = Duration::from_millis(250);
/// Limits are this margin over the time references, in thousandths (1.25).
const MARGIN_PER_MILLE: u128 = 1250;
/// Bytes of one product root in `commit_a` (64 hex digits, quotes, comma), for the line limit.
const ROOT_BYTES: u64 = 67;

/// Work named on the command line instead of the profiles': the proof holds, the time says
/// nothing about a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomWork {
    pub dim: u32,
    pub count: u32,
    pub items: u64,
}

impl CustomWork {
    /// What a CPU prover is asked when the validator names no sizes: seconds of CPU work.
    pub const CPU_DEFAULT: CustomWork = CustomWork { dim: 256, count: 16, items: 4096 };

    fn work(&self) -> GpuWork {
        GpuWork { m: self.dim, n: self.dim, k: self.dim, count: self.count, items: self.items }
    }
}

/// What the validator asks and how it judges.
#[derive(Debug)]
pub struct ValidatorSetup {
    pub profiles: ProfilesFile,
    /// Sizes from `--matrix-dim`/`--num-matrices`/`--dataset-items`: UNTIMED.
    pub custom: Option<CustomWork>,
    /// The challenge seed; random when absent.
    pub seed: Option<[u8; 32]>,
    /// The validator hotkey bound into the challenge, and its secret when the report is to be
    /// co-signed.
    pub hotkey: Option<Hotkey>,
    pub hotkey_secret: Option<HotkeyPair>,
    /// `--expect-executor`: an executor id or a public key in hex.
    pub expect_executor: Option<String>,
    /// Longest wait for each prover message, the timed phases included.
    pub step_timeout: Duration,
    pub isa: Isa,
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Outcome {
    Pass,
    Fail,
    Untimed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Untimed => "UNTIMED",
        }
    }

    /// `check`'s exit code: 0, 1, 3.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Pass => 0,
            Outcome::Fail => 1,
            Outcome::Untimed => 3,
        }
    }
}

/// A claimed GPU and the profile its name maps to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimedGpu {
    pub index: u32,
    pub name: String,
    pub profile: Option<String>,
}

/// Times on the validator's clock, milliseconds: measured, and after the round trip is taken off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Times {
    pub rtt_ms: f64,
    pub subtracted_ms: f64,
    pub phase_a_ms: f64,
    pub build_ms: f64,
    pub walk_ms: f64,
}

/// The limits of a timed check, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub phase_a_ms: f64,
    pub build_and_walk_ms: f64,
    pub walk_ms: f64,
    /// Every reference behind them was measured on the hardware (else some are estimates).
    pub measured: bool,
}

/// The outcome, printed by `gpu-attestor check`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    pub verdict: Outcome,
    /// Why it failed: one line per failed check.
    pub reasons: Vec<String>,
    /// What the verdict means beyond pass or fail.
    pub notes: Vec<String>,
    pub executor_id: String,
    pub backend: String,
    pub gpus: Vec<ClaimedGpu>,
    pub times: Option<Times>,
    pub limits: Option<Limits>,
    pub tiles_checked: usize,
    pub lanes_checked: usize,
    /// `hex(R_A,0)`.
    pub checksum: String,
    #[serde(skip)]
    pub report: Option<Report>,
}

impl Verdict {
    /// A verdict with nothing judged yet: FAIL until the checks say otherwise.
    fn undecided() -> Self {
        Self {
            verdict: Outcome::Fail,
            reasons: Vec::new(),
            notes: Vec::new(),
            executor_id: String::new(),
            backend: String::new(),
            gpus: Vec::new(),
            times: None,
            limits: None,
            tiles_checked: 0,
            lanes_checked: 0,
            checksum: String::new(),
            report: None,
        }
    }
}

/// 32 bytes from the operating system: nonces and samples must be unpredictable.
fn fresh_bytes() -> Result<[u8; 32], ProtocolError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| ProtocolError::Io(std::io::Error::other(e.to_string())))?;
    Ok(b)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What the validator learned from `hello`.
struct Hello {
    executor_id: String,
    public_key: [u8; 32],
    version: String,
    message: Message,
}

/// Drives one conversation with a prover. A broken conversation (a prover error, a timeout,
/// malformed or out-of-order messages) is a FAIL verdict naming it, never a hang.
pub async fn run_validator<R, W>(input: R, mut out: W, setup: &ValidatorSetup) -> Verdict
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut verdict = Verdict::undecided();
    match conversation(input, &mut out, setup, &mut verdict).await {
        Ok(()) => {}
        Err(e) => {
            // Tell the prover why we stop, unless it is the one that stopped.
            if !matches!(e, ProtocolError::Remote(_) | ProtocolError::Closed { .. } | ProtocolError::Io(_)) {
                let _ = send(&mut out, &Message::Error { message: format!("validator: {e}") }).await;
            }
            verdict.reasons.push(format!("protocol: {e}"));
        }
    }
    if !verdict.reasons.is_empty() {
        verdict.verdict = Outcome::Fail;
    }
    verdict
}

/// Ends the conversation early with `reason` as the verdict's: the prover is told why.
async fn refuse<W: AsyncWrite + Unpin>(out: &mut W, verdict: &mut Verdict, reason: String) {
    let _ = send(out, &Message::Error { message: format!("validator: {reason}") }).await;
    verdict.reasons.push(reason);
}

async fn pings<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut Reader<R>,
    out: &mut W,
    first_id: u64,
    step: Duration,
) -> Result<Duration, ProtocolError> {
    let mut rtt = Duration::MAX;
    for id in first_id..first_id + PINGS {
        let sent = Instant::now();
        send(out, &Message::Ping { id }).await?;
        match reader.next("pong", step).await? {
            Message::Pong { id: got } if got == id => rtt = rtt.min(sent.elapsed()),
            Message::Pong { id: got } => {
                return Err(ProtocolError::Invalid { message: "pong", reason: format!("id {got}, expected {id}") });
            }
            other => return Err(ProtocolError::Unexpected { expected: "pong", got: other.kind() }),
        }
    }
    Ok(rtt)
}

async fn expect<R: AsyncBufRead + Unpin>(
    reader: &mut Reader<R>,
    expected: &'static str,
    step: Duration,
) -> Result<Message, ProtocolError> {
    let message = reader.next(expected, step).await?;
    if message.kind() != expected {
        return Err(ProtocolError::Unexpected { expected, got: message.kind() });
    }
    Ok(message)
}

async fn read_hello<R: AsyncBufRead + Unpin>(reader: &mut Reader<R>, step: Duration) -> Result<Hello, ProtocolError> {
    let message = expect(reader, "hello", step).await?;
    let Message::Hello { protocol, version, executor_id, executor_public_key, .. } = &message else {
        unreachable!("expect returns the expected kind")
    };
    if *protocol != PROTOCOL_VERSION {
        return Err(ProtocolError::Invalid {
            message: "hello",
            reason: format!("protocol {protocol}; this validator speaks {PROTOCOL_VERSION}"),
        });
    }
    Ok(Hello { executor_id: executor_id.clone(), public_key: *executor_public_key, version: version.clone(), message })
}

/// The checks of `hello` that end the conversation: a weak key, another executor than expected,
/// a GPU backend claiming no GPU, a GPU name with no profile. Returns the claimed profiles (None
/// for the CPU backend).
fn judge_hello(hello: &Hello, setup: &ValidatorSetup, verdict: &mut Verdict) -> Result<Vec<Profile>, String> {
    let Message::Hello { backend, gpus, .. } = &hello.message else { unreachable!("a hello") };
    if let Err(e) = report::strict_key(&hello.public_key) {
        return Err(format!("hello: {e}"));
    }
    let id = executor_id_of(&hello.public_key);
    if hello.executor_id != id {
        return Err(format!("hello: executor id {} does not belong to its public key ({id})", hello.executor_id));
    }
    if let Some(expected) = &setup.expect_executor
        && *expected != id
        && !expected.eq_ignore_ascii_case(&hex::encode(hello.public_key))
    {
        return Err(format!("{id} is not the expected executor `{expected}` (a relay to another identity?)"));
    }
    let mut profiles = Vec::new();
    for g in gpus {
        let profile = setup.profiles.lookup(&g.name);
        verdict.gpus.push(ClaimedGpu { index: g.index, name: g.name.clone(), profile: profile.map(|p| p.id.clone()) });
        profiles.extend(profile.cloned());
    }
    if backend.kind == "cpu" {
        return Ok(Vec::new());
    }
    if gpus.is_empty() {
        return Err(format!("the `{}` backend claims no GPU", backend.kind));
    }
    if let Some(g) = gpus.iter().find(|g| setup.profiles.lookup(&g.name).is_none()) {
        return Err(format!("no profile for `{}`", g.name));
    }
    Ok(profiles)
}

/// `margin × max over profiles of f(profile)`, in microseconds.
fn limit_us(profiles: &[Profile], f: impl Fn(&Profile) -> u64) -> u128 {
    profiles.iter().map(|p| u128::from(f(p))).max().unwrap_or(0) * MARGIN_PER_MILLE
}

async fn conversation<R, W>(
    input: R,
    out: &mut W,
    setup: &ValidatorSetup,
    verdict: &mut Verdict,
) -> Result<(), ProtocolError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let step = setup.step_timeout;
    let mut reader = Reader::new(input);
    let hello = read_hello(&mut reader, step).await?;
    let Message::Hello { backend, gpus: claimed, host, evidence, .. } = &hello.message else { unreachable!("a hello") };
    verdict.executor_id = hello.executor_id.clone();
    verdict.backend = format!("{} ({}, {} threads)", backend.kind, backend.kernel, backend.threads);
    let profiles = match judge_hello(&hello, setup, verdict) {
        Ok(p) => p,
        Err(reason) => {
            refuse(out, verdict, reason).await;
            return Ok(());
        }
    };
    let custom = match (setup.custom, backend.kind.as_str()) {
        (Some(c), _) => Some(c),
        (None, "cpu") => Some(CustomWork::CPU_DEFAULT),
        (None, _) => None,
    };
    let works: Vec<GpuWork> = match custom {
        Some(c) => vec![c.work(); claimed.len().max(1)],
        None => profiles.iter().map(|p| p.work).collect(),
    };
    let products: u64 = works.iter().map(|w| u64::from(w.count)).sum();
    if products.saturating_mul(ROOT_BYTES) + (64 << 10) > MAX_LINE as u64 {
        refuse(
            out,
            verdict,
            format!("{products} products in all: `commit_a` would pass the {MAX_LINE}-byte line limit"),
        )
        .await;
        return Ok(());
    }

    let rtt_before = pings(&mut reader, out, 0, step).await?;
    let challenge = Challenge {
        seed: match setup.seed {
            Some(s) => s,
            None => fresh_bytes()?,
        },
        nonce: fresh_bytes()?,
        executor_key: hello.public_key,
        validator_key: setup.hotkey.as_ref().map_or([0; 32], |h| *h.public_key()),
        gpus: works,
    };
    if let Err(e) = challenge.validate() {
        refuse(out, verdict, format!("challenge: {e}")).await;
        return Ok(());
    }
    let validator_hotkey = setup.hotkey.as_ref().map(|h| h.as_str().to_owned()).unwrap_or_default();
    let sent = Instant::now();
    send(out, &Message::Challenge { challenge: challenge.clone(), validator_hotkey: validator_hotkey.clone() }).await?;
    let Message::CommitA { gpus: roots_a, .. } = expect(&mut reader, "commit_a", step).await? else { unreachable!() };
    let committed_a = Instant::now();
    let t_a = committed_a - sent;
    expect(&mut reader, "built", step).await?;
    let t_build = committed_a.elapsed();
    let walk_nonce = fresh_bytes()?;
    let sent = Instant::now();
    send(out, &Message::Walk { walk_nonce }).await?;
    let Message::CommitB { roots_b, .. } = expect(&mut reader, "commit_b", step).await? else { unreachable!() };
    let t_walk = sent.elapsed();
    let rtt = rtt_before.min(pings(&mut reader, out, PINGS, step).await?);

    if roots_a.len() != challenge.gpus.len() || roots_b.len() != challenge.gpus.len() {
        return Err(ProtocolError::Invalid {
            message: "commit_a/commit_b",
            reason: format!(
                "{} and {} entries for a challenge of {} GPUs",
                roots_a.len(),
                roots_b.len(),
                challenge.gpus.len()
            ),
        });
    }
    let commitments: Vec<GpuCommitment> = roots_a
        .into_iter()
        .zip(&roots_b)
        .map(|(a, b)| GpuCommitment { root_a: a.root_a, product_roots: a.product_roots, root_b: *b })
        .collect();
    verdict.checksum = hex::encode(commitments[0].root_a);
    let times = ValidatorTimes {
        rtt_us: micros(rtt),
        phase_a_us: micros(t_a),
        build_us: micros(t_build),
        walk_us: micros(t_walk),
    };
    let samples = sample::draw(&challenge, &fresh_bytes()?);
    send(out, &Message::Open { gpus: samples.clone(), times }).await?;
    let Message::Openings { gpus: openings } = expect(&mut reader, "openings", step).await? else { unreachable!() };
    verdict.tiles_checked = samples.iter().map(|s| s.tiles.len()).sum();
    verdict.lanes_checked = samples.iter().map(|s| s.lanes.len()).sum();
    let (isa, threads) = (setup.isa, setup.threads);
    let (c, w, cm, s, o) = (challenge.clone(), walk_nonce, commitments.clone(), samples.clone(), openings.clone());
    let proof = tokio::task::spawn_blocking(move || verify::check_openings(isa, threads, &c, &w, &cm, &s, &o, true))
        .await
        .map_err(|e| ProtocolError::Io(std::io::Error::other(e)))?;
    if let Err(e) = proof {
        verdict.reasons.push(format!("proof rejected: {e}"));
    }

    let Message::Report { report } = expect(&mut reader, "report", step).await? else { unreachable!() };
    let mut report = *report;
    match report.check_signature() {
        Err(e) => verdict.reasons.push(format!("report rejected: {e}")),
        Ok(()) => {
            let same = report.executor_public_key == hello.public_key
                && report.sample_mode == SampleMode::Interactive
                && report.validator_hotkey == validator_hotkey
                && report.challenge == challenge
                && report.walk_nonce == walk_nonce
                && report.commitments == commitments
                && report.samples == samples
                && report.openings == openings
                && report.validator_times == Some(times);
            if !same {
                verdict.reasons.push("the report does not describe this conversation".to_owned());
            }
            let fields: [(&str, bool); 5] = [
                ("gpus", report.gpus == *claimed),
                ("host", report.host == *host),
                ("evidence", report.evidence == *evidence),
                ("backend", report.backend == *backend),
                ("binary_version", report.binary_version == hello.version),
            ];
            for (field, equal) in fields {
                if !equal {
                    verdict.reasons.push(format!("the report's `{field}` differ from hello"));
                }
            }
            // The co-signature says "this report is my conversation": never on one that is not
            // (its samples would then be the executor's own, vouched for by the validator).
            let faithful = same && fields.iter().all(|(_, equal)| *equal);
            if faithful
                && let Some(secret) = &setup.hotkey_secret
                && let Err(e) = report.cosign(secret)
            {
                verdict.reasons.push(format!("co-signing the report: {e}"));
            }
        }
    }
    verdict.report = Some(report);

    judge_times(verdict, &profiles, custom.is_some(), backend.kind == "cpu", rtt, [t_a, t_build, t_walk]);
    Ok(())
}

/// GPOW.md's timing rules: the round trip (capped) off each interval, the network too slow to
/// time above 250 ms, and each phase within its limit for a timed challenge.
fn judge_times(
    verdict: &mut Verdict,
    profiles: &[Profile],
    custom: bool,
    cpu: bool,
    rtt: Duration,
    [t_a, t_build, t_walk]: [Duration; 3],
) {
    let subtract = rtt.min(MAX_SUBTRACTED);
    let (a, build, walk) =
        (t_a.saturating_sub(subtract), t_build.saturating_sub(subtract), t_walk.saturating_sub(subtract));
    verdict.times = Some(Times {
        rtt_ms: ms(rtt),
        subtracted_ms: ms(subtract),
        phase_a_ms: ms(a),
        build_ms: ms(build),
        walk_ms: ms(walk),
    });
    if rtt > MAX_RTT {
        verdict.reasons.push(format!(
            "the network is too slow to time this executor: fastest ping {:.1} ms > {} ms",
            ms(rtt),
            MAX_RTT.as_millis()
        ));
    }
    if cpu || custom {
        verdict.notes.push(if cpu {
            "CPU backend: the proof holds, but proves work, not a GPU".to_owned()
        } else {
            "custom sizes: the proof holds, but no profile's time limit applies".to_owned()
        });
        if verdict.reasons.is_empty() {
            verdict.verdict = Outcome::Untimed;
        }
        return;
    }
    let limits = [
        ("phase A", a.as_micros(), limit_us(profiles, |p| p.time.phase_a.ms())),
        (
            "build and walk",
            build.as_micros() + walk.as_micros(),
            limit_us(profiles, |p| p.time.build.ms() + p.time.walk.ms()),
        ),
        ("walk", walk.as_micros(), limit_us(profiles, |p| p.time.walk.ms())),
    ];
    for (phase, took, limit) in limits {
        if took > limit {
            verdict.reasons.push(format!(
                "{phase} took {:.1} ms, over the limit of {:.1} ms",
                took as f64 / 1e3,
                limit as f64 / 1e3
            ));
        }
    }
    let measured = profiles
        .iter()
        .all(|p| p.time.phase_a.is_measured() && p.time.build.is_measured() && p.time.walk.is_measured());
    verdict.limits = Some(Limits {
        phase_a_ms: limits[0].2 as f64 / 1e3,
        build_and_walk_ms: limits[1].2 as f64 / 1e3,
        walk_ms: limits[2].2 as f64 / 1e3,
        measured,
    });
    verdict.notes.push(if measured {
        "limits from references measured on the hardware".to_owned()
    } else {
        "limits from estimated references (not yet measured on the hardware)".to_owned()
    });
    if verdict.reasons.is_empty() {
        verdict.verdict = Outcome::Pass;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{run_prover, tests::setup as prover_setup};
    use common::identity::ExecutorIdentity;
    use tokio::io::BufReader;

    fn validator(custom: Option<CustomWork>) -> ValidatorSetup {
        let secret = HotkeyPair::from_seed(&[0x11; 32]);
        ValidatorSetup {
            profiles: ProfilesFile::builtin().unwrap(),
            custom,
            seed: None,
            hotkey: Some(secret.hotkey().clone()),
            hotkey_secret: Some(secret),
            expect_executor: None,
            step_timeout: Duration::from_secs(20),
            isa: Isa::best(),
            threads: 2,
        }
    }

    async fn converse(v: &ValidatorSetup) -> Verdict {
        let (to_prover, prover_in) = tokio::io::duplex(1 << 20);
        let (prover_out, from_prover) = tokio::io::duplex(1 << 20);
        let prover = tokio::spawn(run_prover(BufReader::new(prover_in), prover_out, prover_setup(1)));
        let verdict = run_validator(BufReader::new(from_prover), to_prover, v).await;
        let _ = prover.await;
        verdict
    }

    #[tokio::test]
    async fn an_honest_cpu_prover_is_untimed_and_its_report_verifies() {
        let v = validator(Some(CustomWork { dim: 32, count: 4, items: 2048 }));
        let verdict = converse(&v).await;
        assert_eq!(verdict.verdict, Outcome::Untimed, "{:?}", verdict.reasons);
        assert_eq!(verdict.executor_id, ExecutorIdentity::from_seed([1; 32]).executor_id());
        assert_eq!((verdict.tiles_checked, verdict.lanes_checked), (16, 128));
        let report = verdict.report.unwrap();
        let verified = report.verify(Isa::best(), 2).unwrap();
        assert!(!verified.weak);
        // Without the co-signature nobody vouches for the sample.
        let mut unsigned = report.clone();
        unsigned.validator_signature.clear();
        assert_eq!(unsigned.verify(Isa::best(), 2), Err(report::ReportError::NotCoSigned));
    }

    #[tokio::test]
    async fn another_executor_than_expected_fails_before_any_work() {
        let mut v = validator(Some(CustomWork { dim: 16, count: 1, items: 0 }));
        v.expect_executor = Some(ExecutorIdentity::from_seed([2; 32]).executor_id());
        let verdict = converse(&v).await;
        assert_eq!(verdict.verdict, Outcome::Fail);
        assert!(verdict.reasons[0].contains("not the expected executor"), "{:?}", verdict.reasons);
        // The key in hex is accepted as well as the id.
        v.expect_executor = Some(hex::encode(ExecutorIdentity::from_seed([1; 32]).public_key()).to_uppercase());
        assert_eq!(converse(&v).await.verdict, Outcome::Untimed);
    }

    fn profile(phase_a: u64, build: u64, walk: u64) -> Profile {
        let mut p = ProfilesFile::builtin().unwrap().profiles[0].clone();
        p.time.phase_a = crate::gpow2::profiles::TimeReference::Estimated { ms: phase_a };
        p.time.build = crate::gpow2::profiles::TimeReference::Estimated { ms: build };
        p.time.walk = crate::gpow2::profiles::TimeReference::Estimated { ms: walk };
        p
    }

    #[test]
    fn timing_rules_follow_gpow_md() {
        let fresh = Verdict::undecided;
        let secs = Duration::from_millis;
        // Two GPUs: the slowest profile sets each limit (max, never the sum): 1.25 × 1000 ms.
        let profiles = [profile(800, 100, 100), profile(1000, 200, 300)];
        let mut v = fresh();
        judge_times(&mut v, &profiles, false, false, secs(10), [secs(1250 + 10), secs(100), secs(300)]);
        assert_eq!(v.verdict, Outcome::Pass, "{:?}", v.reasons);
        assert_eq!(v.limits.unwrap().phase_a_ms, 1250.0);
        assert!(v.notes[0].contains("estimated"));
        // Just over: the round trip taken off, no more.
        let mut v = fresh();
        judge_times(&mut v, &profiles, false, false, secs(10), [secs(1250 + 11), secs(100), secs(300)]);
        assert!(v.reasons[0].starts_with("phase A took 1251.0 ms, over the limit of 1250.0 ms"), "{:?}", v.reasons);
        // A prover inflating its pongs gains at most 50 ms.
        let mut v = fresh();
        judge_times(&mut v, &profiles, false, false, secs(200), [secs(1251 + 50), secs(0), secs(0)]);
        assert!(v.reasons[0].contains("phase A took"), "{:?}", v.reasons);
        // …and above 250 ms it cannot be timed at all.
        let mut v = fresh();
        judge_times(&mut v, &profiles, false, false, secs(2000), [secs(0), secs(0), secs(0)]);
        assert!(v.reasons[0].contains("the network is too slow to time this executor"));
        // Build and walk together, and the walk alone.
        let mut v = fresh();
        judge_times(&mut v, &profiles, false, false, secs(0), [secs(0), secs(400), secs(300)]);
        assert!(
            v.reasons[0].starts_with("build and walk took 700.0 ms, over the limit of 625.0 ms"),
            "{:?}",
            v.reasons
        );
        let mut v = fresh();
        judge_times(&mut v, &profiles, false, false, secs(0), [secs(0), secs(0), secs(376)]);
        assert!(v.reasons[0].starts_with("walk took 376.0 ms, over the limit of 375.0 ms"), "{:?}", v.reasons);
        // CPU or custom sizes: untimed, unless something failed.
        let mut v = fresh();
        judge_times(&mut v, &[], true, false, secs(0), [secs(9999), secs(0), secs(0)]);
        assert_eq!(v.verdict, Outcome::Untimed);
        let mut v = fresh();
        judge_times(&mut v, &[], false, true, secs(300), [secs(0), secs(0), secs(0)]);
        assert_ne!(v.verdict, Outcome::Untimed);
    }
}
