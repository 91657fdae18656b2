//! Protocol 2 (GPOW.md "Interactive protocol", `docs/gpow2-protocol.md`): line-delimited JSON over
//! the prover's stdin/stdout, typically through SSH. `hello` → `challenge` → `commit_a` → `built`
//! → `walk` → `commit_b` → `open` → `openings` → `report`, with `ping`/`pong` while the prover
//! waits. Every read has a deadline and a size limit; anything malformed, truncated, oversized or
//! out of order ends the conversation with an `error`.

use std::time::{Duration, Instant};

use common::hotkey::Hotkey;
use common::identity::ExecutorIdentity;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::evidence::Evidence;
use crate::gpow2::Challenge;
use crate::hex_serde::{hex32, hex32_list, hex32_option_list};
use crate::host::{GpuFacts, HostFacts};
use crate::merkle::Hash;
use crate::prover::{Prover, ProverError};
use crate::report::{self, BackendInfo, ProverTimings, Report, SampleMode, ValidatorTimes};
use crate::sample::{self, GpuSample};
use crate::verify::GpuOpenings;

/// Version of this protocol, sent in `hello`.
pub const PROTOCOL_VERSION: u32 = 2;
/// The longest line either side ever accepts (GPOW.md).
pub const MAX_LINE: usize = 16 << 20;
/// The longest line the prover reads until the challenge has fixed the number of GPUs: a
/// `challenge` of 64 GPUs is under 8 KiB.
pub const PROVER_LINE: usize = 64 << 10;

/// The longest `open` a validator needs for `gpus` GPUs: 256 tiles (~40 bytes each) and 128
/// lanes (~11 bytes each) per GPU, with room for the names around them.
pub fn open_line_limit(gpus: usize) -> usize {
    PROVER_LINE + gpus * (32 << 10)
}

/// One GPU's phase A commitment in `commit_a`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootsA {
    #[serde(with = "hex32")]
    pub root_a: Hash,
    #[serde(with = "hex32_list")]
    pub product_roots: Vec<Hash>,
}

/// One protocol message. A conversation holds a handful of them at once, so `hello`'s size (host
/// facts and evidence inline) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// Prover, once set up (so set-up is not timed).
    Hello {
        protocol: u32,
        version: String,
        executor_id: String,
        #[serde(with = "hex32")]
        executor_public_key: [u8; 32],
        backend: BackendInfo,
        gpus: Vec<GpuFacts>,
        host: HostFacts,
        evidence: Evidence,
    },
    Ping {
        id: u64,
    },
    Pong {
        id: u64,
    },
    /// Validator: the work. `validator_hotkey` is the SS58 address of `validator_key`, or empty.
    Challenge {
        challenge: Challenge,
        validator_hotkey: String,
    },
    /// Prover: phase A of every GPU.
    CommitA {
        gpus: Vec<RootsA>,
        elapsed_ms: u64,
    },
    /// Prover: every dataset is in memory.
    Built {
        elapsed_ms: u64,
    },
    /// Validator: the walk nonce, sent only now.
    Walk {
        #[serde(with = "hex32")]
        walk_nonce: [u8; 32],
    },
    /// Prover: `R_B,g` of every GPU (null without phase B).
    CommitB {
        #[serde(with = "hex32_option_list")]
        roots_b: Vec<Option<Hash>>,
        elapsed_ms: u64,
    },
    /// Validator: the sample, and what it measured (copied into the report).
    Open {
        gpus: Vec<GpuSample>,
        times: ValidatorTimes,
    },
    /// Prover: the paths.
    Openings {
        gpus: Vec<GpuOpenings>,
    },
    /// Prover: the signed report; the conversation ends.
    Report {
        report: Box<Report>,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("no `{expected}` within {timeout:?}")]
    Timeout { expected: &'static str, timeout: Duration },
    #[error("the other side closed the stream before `{expected}`")]
    Closed { expected: &'static str },
    #[error("truncated message (no end of line) while waiting for `{expected}`")]
    Truncated { expected: &'static str },
    #[error("message longer than the limit of {limit} bytes")]
    TooLong { limit: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("expected `{expected}`, got `{got}`")]
    Unexpected { expected: &'static str, got: &'static str },
    #[error("the other side reported an error: {0}")]
    Remote(String),
    #[error("invalid `{message}`: {reason}")]
    Invalid { message: &'static str, reason: String },
    /// The prover failed a step (a GPU error): its own fault, not the challenge's.
    #[error("the prover failed at `{step}`: {message}")]
    Prover { step: &'static str, message: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Ping { .. } => "ping",
            Message::Pong { .. } => "pong",
            Message::Challenge { .. } => "challenge",
            Message::CommitA { .. } => "commit_a",
            Message::Built { .. } => "built",
            Message::Walk { .. } => "walk",
            Message::CommitB { .. } => "commit_b",
            Message::Open { .. } => "open",
            Message::Openings { .. } => "openings",
            Message::Report { .. } => "report",
            Message::Error { .. } => "error",
        }
    }
}

/// Parses one line; never panics, whatever the bytes.
pub fn parse(line: &[u8]) -> Result<Message, ProtocolError> {
    if line.len() > MAX_LINE {
        return Err(ProtocolError::TooLong { limit: MAX_LINE });
    }
    serde_json::from_slice(line).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// A reader of messages with a deadline per message.
#[derive(Debug)]
pub struct Reader<R> {
    inner: R,
    line: Vec<u8>,
    limit: usize,
}

impl<R: AsyncBufRead + Unpin> Reader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_limit(inner, MAX_LINE)
    }

    /// A reader refusing lines longer than `limit` bytes.
    pub fn with_limit(inner: R, limit: usize) -> Self {
        Self { inner, line: Vec::new(), limit: limit.min(MAX_LINE) }
    }

    /// Refuses lines longer than `limit` bytes from now on (never more than [`MAX_LINE`]).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(MAX_LINE);
    }

    /// The next message, waiting at most `timeout`.
    pub async fn next(&mut self, expected: &'static str, timeout: Duration) -> Result<Message, ProtocolError> {
        self.line.clear();
        let mut limited = (&mut self.inner).take(self.limit as u64 + 1);
        let read = limited.read_until(b'\n', &mut self.line);
        let n =
            tokio::time::timeout(timeout, read).await.map_err(|_| ProtocolError::Timeout { expected, timeout })??;
        if n == 0 {
            return Err(ProtocolError::Closed { expected });
        }
        if self.line.len() > self.limit {
            return Err(ProtocolError::TooLong { limit: self.limit });
        }
        if self.line.last() != Some(&b'\n') {
            return Err(ProtocolError::Truncated { expected });
        }
        match parse(&self.line)? {
            Message::Error { message } => Err(ProtocolError::Remote(message)),
            message => Ok(message),
        }
    }
}

/// Writes one message as a line and flushes it.
pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, message: &Message) -> Result<(), ProtocolError> {
    let mut line = serde_json::to_vec(message).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await?;
    Ok(())
}

/// What the prover needs.
#[derive(Debug)]
pub struct ProverSetup {
    pub identity: ExecutorIdentity,
    /// The backend's prover, set up (for a GPU: driver, module, buffers and self-test) before
    /// `hello`, so none of that is timed.
    pub prover: Box<dyn Prover>,
    /// Longest wait for each validator message.
    pub step_timeout: Duration,
    pub backend: BackendInfo,
    pub gpus: Vec<GpuFacts>,
    pub host: HostFacts,
    pub evidence: Evidence,
}

/// Reads the next message, answering pings on the way, within one deadline for the whole step.
async fn next_answering_pings<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut Reader<R>,
    out: &mut W,
    expected: &'static str,
    timeout: Duration,
) -> Result<Message, ProtocolError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match reader.next(expected, left).await {
            Ok(Message::Ping { id }) => send(out, &Message::Pong { id }).await?,
            Ok(message) if message.kind() == expected => return Ok(message),
            Ok(other) => return Err(ProtocolError::Unexpected { expected, got: other.kind() }),
            // Name the whole step's deadline, not what was left of it.
            Err(ProtocolError::Timeout { expected, .. }) => return Err(ProtocolError::Timeout { expected, timeout }),
            Err(e) => return Err(e),
        }
    }
}

/// Runs `f` on the prover off the async threads and gives the prover back.
async fn blocking<T: Send + 'static>(
    mut prover: Box<dyn Prover>,
    f: impl FnOnce(&mut dyn Prover) -> T + Send + 'static,
) -> Result<(Box<dyn Prover>, T), ProtocolError> {
    tokio::task::spawn_blocking(move || {
        let out = f(prover.as_mut());
        (prover, out)
    })
    .await
    .map_err(|e| ProtocolError::Io(std::io::Error::other(e)))
}

fn ms_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The prover side: runs the whole conversation; on any error, tells the validator before
/// returning it.
pub async fn run_prover<R, W>(input: R, mut out: W, setup: ProverSetup) -> Result<(), ProtocolError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let result = prover_steps(Reader::with_limit(input, PROVER_LINE), &mut out, setup).await;
    if let Err(e) = &result
        && !matches!(e, ProtocolError::Remote(_) | ProtocolError::Closed { .. } | ProtocolError::Io(_))
    {
        let _ = send(&mut out, &Message::Error { message: e.to_string() }).await;
    }
    result
}

/// Refuses a challenge this prover must not answer: invalid work, another executor's key, a
/// validator key that is not the hotkey's, or more memory than it has.
fn check_challenge(challenge: &Challenge, validator_hotkey: &str, setup: &ProverSetup) -> Result<(), ProtocolError> {
    let invalid = |reason: String| ProtocolError::Invalid { message: "challenge", reason };
    challenge.validate().map_err(|e| invalid(e.to_string()))?;
    if challenge.executor_key != setup.identity.public_key() {
        return Err(invalid("executor_key is not this executor's public key".into()));
    }
    if validator_hotkey.is_empty() {
        if challenge.validator_key != [0; 32] {
            return Err(invalid("validator_key set without validator_hotkey".into()));
        }
    } else {
        let hotkey: Hotkey = validator_hotkey.parse().map_err(|e| invalid(format!("validator_hotkey: {e}")))?;
        if hotkey.public_key() != &challenge.validator_key {
            return Err(invalid("validator_key is not the key of validator_hotkey".into()));
        }
    }
    Ok(())
}

/// A step the prover could not do: a refusal is the challenge's fault, anything else the
/// prover's.
fn step_error(step: &'static str, e: ProverError) -> ProtocolError {
    match e {
        ProverError::Refused(reason) => ProtocolError::Invalid { message: "challenge", reason },
        ProverError::Lane(e) => ProtocolError::Invalid { message: "challenge", reason: e.to_string() },
        other => ProtocolError::Prover { step, message: other.to_string() },
    }
}

async fn prover_steps<R, W>(mut reader: Reader<R>, out: &mut W, setup: ProverSetup) -> Result<(), ProtocolError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let step = setup.step_timeout;
    send(
        out,
        &Message::Hello {
            protocol: PROTOCOL_VERSION,
            version: common::VERSION.to_owned(),
            executor_id: setup.identity.executor_id(),
            executor_public_key: setup.identity.public_key(),
            backend: setup.backend.clone(),
            gpus: setup.gpus.clone(),
            host: setup.host.clone(),
            evidence: setup.evidence.clone(),
        },
    )
    .await?;
    let Message::Challenge { challenge, validator_hotkey } =
        next_answering_pings(&mut reader, out, "challenge", step).await?
    else {
        unreachable!("next_answering_pings returns the expected kind")
    };
    check_challenge(&challenge, &validator_hotkey, &setup)?;
    // The challenge fixed how long an `open` can be: nothing longer is read.
    reader.set_limit(open_line_limit(challenge.gpus.len()));
    let mut timings = ProverTimings::default();

    let mut prover = setup.prover;
    prover.start(&challenge).map_err(|e| step_error("start", e))?;
    let started = Instant::now();
    let (prover, done) = blocking(prover, |p| p.phase_a()).await?;
    done.map_err(|e| step_error("phase_a", e))?;
    timings.phase_a_ms = ms_since(started);
    let commitments = prover.commitments();
    let gpus =
        commitments.iter().map(|c| RootsA { root_a: c.root_a, product_roots: c.product_roots.clone() }).collect();
    send(out, &Message::CommitA { gpus, elapsed_ms: timings.phase_a_ms }).await?;

    let started = Instant::now();
    let (prover, built) = blocking(prover, |p| p.build()).await?;
    built.map_err(|e| step_error("build", e))?;
    timings.build_ms = ms_since(started);
    send(out, &Message::Built { elapsed_ms: timings.build_ms }).await?;

    let Message::Walk { walk_nonce } = next_answering_pings(&mut reader, out, "walk", step).await? else {
        unreachable!("next_answering_pings returns the expected kind")
    };
    let started = Instant::now();
    let (prover, walked) = blocking(prover, move |p| p.walk(&walk_nonce)).await?;
    walked.map_err(|e| step_error("walk", e))?;
    timings.walk_ms = ms_since(started);
    send(out, &Message::CommitB { roots_b: prover.roots_b(), elapsed_ms: timings.walk_ms }).await?;

    let Message::Open { gpus: samples, times } = next_answering_pings(&mut reader, out, "open", step).await? else {
        unreachable!("next_answering_pings returns the expected kind")
    };
    sample::check(&challenge, &samples, false)
        .map_err(|e| ProtocolError::Invalid { message: "open", reason: e.to_string() })?;
    let started = Instant::now();
    let s = samples.clone();
    let (prover, openings) = blocking(prover, move |p| p.open(&s)).await?;
    let openings = openings.map_err(|e| step_error("open", e))?;
    timings.open_ms = ms_since(started);
    send(out, &Message::Openings { gpus: openings.clone() }).await?;

    let mut report = Report {
        schema_version: report::SCHEMA_VERSION,
        executor_id: String::new(),
        executor_public_key: [0; 32],
        validator_hotkey,
        sample_mode: SampleMode::Interactive,
        challenge,
        walk_nonce,
        commitments: prover.commitments(),
        samples,
        openings,
        gpus: setup.gpus,
        host: setup.host,
        evidence: setup.evidence,
        prover_timings: timings,
        validator_times: Some(times),
        binary_version: common::VERSION.to_owned(),
        backend: setup.backend,
        signature: String::new(),
        validator_signature: String::new(),
    };
    report.sign(&setup.identity);
    send(out, &Message::Report { report: Box::new(report) }).await
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small deterministic generator for the property test.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    pub(crate) fn setup(identity_seed: u8) -> ProverSetup {
        ProverSetup {
            identity: ExecutorIdentity::from_seed([identity_seed; 32]),
            prover: Box::new(crate::prover::CpuProver::idle(crate::gpow2::Isa::best(), 2, 1 << 30)),
            step_timeout: Duration::from_secs(10),
            backend: BackendInfo { kind: "cpu".into(), kernel: "cpu".into(), threads: 2, disabled: Vec::new() },
            gpus: Vec::new(),
            host: crate::host::host(),
            evidence: Evidence::default(),
        }
    }

    #[test]
    fn parsing_never_panics_on_mutated_or_random_input() {
        let valid = [
            r#"{"type":"ping","id":1}"#.to_owned(),
            serde_json::to_string(&Message::Challenge {
                challenge: Challenge::plain(1, 16, 1, 32),
                validator_hotkey: String::new(),
            })
            .unwrap(),
            serde_json::to_string(&Message::Open {
                gpus: vec![GpuSample {
                    tiles: vec![crate::gpow2::phase_a::TileIndex { p: 0, ti: 0, tj: 0 }],
                    lanes: vec![1],
                }],
                times: ValidatorTimes::default(),
            })
            .unwrap(),
            serde_json::to_string(&Message::CommitB { roots_b: vec![None, Some([1; 32])], elapsed_ms: 3 }).unwrap(),
        ];
        let mut rng = Lcg(42);
        for round in 0..20_000 {
            let mut bytes = valid[round % valid.len()].clone().into_bytes();
            for _ in 0..(rng.next() % 4 + 1) {
                let at = (rng.next() as usize) % (bytes.len() + 1);
                match rng.next() % 3 {
                    0 if at < bytes.len() => bytes[at] = rng.next() as u8,
                    1 => bytes.insert(at, rng.next() as u8),
                    _ => bytes.truncate(at),
                }
            }
            let _ = parse(&bytes);
        }
        for _ in 0..5_000 {
            let len = (rng.next() % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = parse(&bytes);
        }
        for line in &valid {
            let m = parse(line.as_bytes()).unwrap();
            assert_eq!(serde_json::to_string(&m).unwrap(), *line);
        }
    }

    #[test]
    fn rejects_unknown_types_and_fields() {
        assert!(parse(br#"{"type":"shutdown"}"#).is_err());
        assert!(parse(br#"{"type":"ping","id":1,"extra":true}"#).is_err());
        assert!(parse(br#"{"id":1}"#).is_err());
        assert_eq!(parse(br#"{"type":"pong","id":9}"#).unwrap(), Message::Pong { id: 9 });
        assert_eq!(parse(br#"{"type":"built","elapsed_ms":9}"#).unwrap().kind(), "built");
    }

    #[tokio::test]
    async fn the_reader_reports_truncation_timeouts_and_remote_errors() {
        let mut r = Reader::new(&b"{\"type\":\"ping\",\"id\":1}"[..]);
        assert!(matches!(r.next("ping", Duration::from_secs(1)).await, Err(ProtocolError::Truncated { .. })));
        let mut r = Reader::new(&b""[..]);
        assert!(matches!(r.next("hello", Duration::from_secs(1)).await, Err(ProtocolError::Closed { .. })));
        let mut r = Reader::new(&b"{\"type\":\"error\",\"message\":\"no\"}\n"[..]);
        assert!(matches!(r.next("hello", Duration::from_secs(1)).await, Err(ProtocolError::Remote(m)) if m == "no"));
        let long = format!("{{\"type\":\"error\",\"message\":\"{}\"}}\n", "x".repeat(200));
        let mut r = Reader::with_limit(long.as_bytes(), 100);
        assert!(matches!(r.next("hello", Duration::from_secs(1)).await, Err(ProtocolError::TooLong { limit: 100 })));
        let (_tx, rx) = tokio::io::duplex(64);
        let mut r = Reader::new(tokio::io::BufReader::new(rx));
        assert!(matches!(r.next("hello", Duration::from_millis(50)).await, Err(ProtocolError::Timeout { .. })));
    }

    /// The prover reads only what a validator needs: a `ping` padded with a megabyte of JSON
    /// whitespace (valid, and what a validator never sends) ends the conversation unread.
    #[tokio::test]
    async fn the_prover_refuses_lines_longer_than_a_validator_needs() {
        use tokio::io::BufReader;
        let (mut to_prover, prover_in) = tokio::io::duplex(1 << 16);
        let (prover_out, from_prover) = tokio::io::duplex(1 << 16);
        let prover = tokio::spawn(run_prover(BufReader::new(prover_in), prover_out, setup(1)));
        let mut lines = BufReader::new(from_prover).lines();
        let hello = lines.next_line().await.unwrap().unwrap();
        assert!(hello.contains("\"hello\"") && hello.contains("\"protocol\":2"), "{hello}");
        let padded = format!("{{\"type\":\"ping\",{}\"id\":1}}\n", " ".repeat(1 << 20));
        // The prover may stop reading half-way: the write's outcome does not matter.
        let _ = tokio::time::timeout(Duration::from_secs(10), to_prover.write_all(padded.as_bytes())).await;
        let answer = lines.next_line().await.unwrap().unwrap();
        assert!(
            answer.contains("\"error\"") && answer.contains("longer than"),
            "the prover read a 1 MiB line: {answer}"
        );
        assert!(matches!(prover.await.unwrap(), Err(ProtocolError::TooLong { limit: PROVER_LINE })));
    }

    /// The largest `open` a prover answers (64 GPUs, 128 tiles and 128 lanes each, the largest
    /// indices) fits the limit it reads with; the largest challenge fits before it.
    #[test]
    fn the_largest_messages_a_prover_reads_fit_its_limits() {
        let tile = crate::gpow2::phase_a::TileIndex { p: 999_999, ti: 2047, tj: 2047 };
        let one = GpuSample { tiles: vec![tile; 256], lanes: vec![u32::MAX; 128] };
        let times = ValidatorTimes { rtt_us: u64::MAX, phase_a_us: u64::MAX, build_us: u64::MAX, walk_us: u64::MAX };
        for gpus in [1, 64] {
            let open = Message::Open { gpus: vec![one.clone(); gpus], times };
            let line = serde_json::to_vec(&open).unwrap().len() + 1;
            assert!(line <= open_line_limit(gpus), "{gpus} GPUs: {line} bytes > {}", open_line_limit(gpus));
        }
        let mut c = Challenge::plain(u64::MAX, 32768, 1_000_000, (1 << 32) - 32);
        c.gpus = vec![c.gpus[0]; 64];
        let challenge = Message::Challenge { challenge: c, validator_hotkey: "5".repeat(48) };
        assert!(serde_json::to_vec(&challenge).unwrap().len() < PROVER_LINE / 4);
    }

    #[test]
    fn challenges_the_prover_must_not_answer_are_refused() {
        let mut s = setup(1);
        let mut c = Challenge::plain(1, 16, 1, 32);
        let refused = |c: &Challenge, hotkey: &str| check_challenge(c, hotkey, &s).unwrap_err().to_string();
        assert!(refused(&c, "").contains("not this executor's public key"));
        c.executor_key = s.identity.public_key();
        check_challenge(&c, "", &s).unwrap();
        let alice = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
        assert!(refused(&c, alice).contains("not the key of validator_hotkey"));
        c.validator_key = *alice.parse::<Hotkey>().unwrap().public_key();
        check_challenge(&c, alice, &s).unwrap();
        assert!(refused(&c, "").contains("without validator_hotkey"));
        let mut bad = c.clone();
        bad.gpus[0].m = 24;
        assert!(refused(&bad, alice).contains("gpus[0].m = 24"));
        // What the prover cannot hold is refused when it starts, as the challenge's fault.
        let mut big = c.clone();
        big.gpus[0].items = 1 << 31;
        let e = step_error("start", s.prover.start(&big).unwrap_err());
        assert!(
            e.to_string()
                .starts_with("invalid `challenge`: the work needs 139264 MiB of memory on the CPU with 2 thread(s)"),
            "{e}"
        );
    }
}
