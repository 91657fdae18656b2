//! The interactive protocol (GPOW.md): line-delimited JSON over the prover's stdin/stdout,
//! typically through SSH. `hello` → `challenge` → `commit` → `open` → `openings` → `report`,
//! with `ping`/`pong` at any time. Every read has a deadline and a size limit; anything
//! malformed, truncated, oversized or out of order ends the conversation with an `error`.

use std::time::{Duration, Instant};

use common::hotkey::Hotkey;
use common::identity::ExecutorIdentity;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::host::{GpuFacts, HostFacts};
use crate::opening::{Commitment, ProductOpening, ProductSample};
use crate::params::{Params, hex32};
use crate::prove;
use crate::report::{BackendInfo, Report, SampleMode, Timings};
use crate::verify::{self, OPENED_ROWS, SAMPLED_PRODUCTS};

/// Version of this protocol, sent in `hello`.
pub const PROTOCOL_VERSION: u32 = 1;
/// The longest line either side ever accepts (a commitment of a million products, which the
/// validator reads, is ~66 MB). The prover reads far less: [`PROVER_LINE`], then
/// [`open_line_limit`].
pub const MAX_LINE: usize = 128 << 20;
/// The longest line the prover reads until the challenge has fixed the sizes: a `challenge`
/// (two keys, a seed, a nonce, a hotkey: well under 1 KiB) or a `ping`.
pub const PROVER_LINE: usize = 64 << 10;

/// The longest `open` line a validator can need for `params`: as many products as the prover
/// answers, each with `n` entries of `r` (below 2^20: at most 7 digits and a comma) and 64 rows
/// (below 32768: at most 5 digits and a comma), with room for the names around them.
pub fn open_line_limit(params: &Params) -> usize {
    let per_product = params.n as usize * 8 + OPENED_ROWS.max(64) * 6 + 64;
    SAMPLED_PRODUCTS.max(64) * per_product + 1024
}

/// One protocol message.
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
    },
    /// Validator: what to compute. `validator_hotkey` is an SS58 address or empty.
    Challenge {
        params: Params,
        validator_hotkey: String,
    },
    /// Prover: the commitment, before it learns the sample.
    Commit {
        commitment: Commitment,
        compute_ms: u64,
    },
    /// Validator: the sample.
    Open {
        samples: Vec<ProductSample>,
    },
    /// Prover: `y = C·r` and the opened rows.
    Openings {
        openings: Vec<ProductOpening>,
    },
    /// Prover: the signed report; the conversation ends.
    Report {
        report: Box<Report>,
    },
    Ping {
        id: u64,
    },
    Pong {
        id: u64,
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
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Challenge { .. } => "challenge",
            Message::Commit { .. } => "commit",
            Message::Open { .. } => "open",
            Message::Openings { .. } => "openings",
            Message::Report { .. } => "report",
            Message::Ping { .. } => "ping",
            Message::Pong { .. } => "pong",
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
    pub threads: usize,
    /// Longest wait for each validator message.
    pub step_timeout: Duration,
    pub backend: BackendInfo,
    pub gpus: Vec<GpuFacts>,
    pub host: HostFacts,
    /// Bytes of memory the prover may use.
    pub available_memory: u64,
}

/// Reads the next message, answering pings on the way.
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
            Ok(message) => return Ok(message),
            // Name the whole step's deadline, not what was left of it.
            Err(ProtocolError::Timeout { expected, .. }) => return Err(ProtocolError::Timeout { expected, timeout }),
            Err(e) => return Err(e),
        }
    }
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

async fn prover_steps<R, W>(mut reader: Reader<R>, out: &mut W, setup: ProverSetup) -> Result<(), ProtocolError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let public_key = setup.identity.public_key();
    send(
        out,
        &Message::Hello {
            protocol: PROTOCOL_VERSION,
            version: common::VERSION.to_owned(),
            executor_id: setup.identity.executor_id(),
            executor_public_key: public_key,
            backend: setup.backend.clone(),
            gpus: setup.gpus.clone(),
            host: setup.host.clone(),
        },
    )
    .await?;
    let (params, validator_hotkey) =
        match next_answering_pings(&mut reader, out, "challenge", setup.step_timeout).await? {
            Message::Challenge { params, validator_hotkey } => (params, validator_hotkey),
            other => return Err(ProtocolError::Unexpected { expected: "challenge", got: other.kind() }),
        };
    let invalid = |reason: String| ProtocolError::Invalid { message: "challenge", reason };
    params.validate().map_err(|e| invalid(e.to_string()))?;
    params.check_memory(setup.threads, setup.available_memory).map_err(|e| invalid(e.to_string()))?;
    if params.executor_key != public_key {
        return Err(invalid("executor_key is not this executor's public key".into()));
    }
    if validator_hotkey.is_empty() {
        if params.validator_key != [0; 32] {
            return Err(invalid("validator_key set without validator_hotkey".into()));
        }
    } else {
        let hotkey: Hotkey = validator_hotkey.parse().map_err(|e| invalid(format!("validator_hotkey: {e}")))?;
        if hotkey.public_key() != &params.validator_key {
            return Err(invalid("validator_key is not the key of validator_hotkey".into()));
        }
    }

    // The challenge fixed how long an `open` can be: nothing longer is read.
    reader.set_limit(open_line_limit(&params));
    let started = Instant::now();
    let threads = setup.threads;
    let p = params.clone();
    let commitment = tokio::task::spawn_blocking(move || prove::commit(&p, threads))
        .await
        .map_err(|e| ProtocolError::Io(std::io::Error::other(e)))?;
    let compute_ms = started.elapsed().as_millis() as u64;
    send(out, &Message::Commit { commitment: commitment.clone(), compute_ms }).await?;

    let samples = match next_answering_pings(&mut reader, out, "open", setup.step_timeout).await? {
        Message::Open { samples } => samples,
        other => return Err(ProtocolError::Unexpected { expected: "open", got: other.kind() }),
    };
    check_samples(&params, &samples).map_err(|e| ProtocolError::Invalid { message: "open", reason: e.to_string() })?;
    let started = Instant::now();
    let (p, s) = (params.clone(), samples.clone());
    let openings =
        tokio::task::spawn_blocking(move || s.iter().map(|x| prove::open(&p, x, threads)).collect::<Vec<_>>())
            .await
            .map_err(|e| ProtocolError::Io(std::io::Error::other(e)))?;
    let open_ms = started.elapsed().as_millis() as u64;
    send(out, &Message::Openings { openings: openings.clone() }).await?;

    let mut report = Report {
        schema_version: crate::report::SCHEMA_VERSION,
        executor_id: String::new(),
        executor_public_key: [0; 32],
        validator_hotkey,
        sample_mode: SampleMode::Interactive,
        params,
        commitment,
        samples,
        openings,
        gpus: setup.gpus,
        host: setup.host,
        binary_version: common::VERSION.to_owned(),
        timings: Timings { compute_ms, open_ms },
        backend: setup.backend,
        signature: String::new(),
    };
    report.sign(&setup.identity);
    send(out, &Message::Report { report: Box::new(report) }).await
}

/// Why the prover refuses a validator's sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    #[error("{got} sampled products; expected 1 to {max}")]
    Count { got: usize, max: usize },
    #[error("product {product} does not exist (count {count})")]
    UnknownProduct { product: u32, count: u32 },
    #[error("product {product}: r has {got} entries, expected n = {n}")]
    VectorLength { product: u32, got: usize, n: u32 },
    #[error("product {product}: r entries must be below 2^{bits}")]
    VectorBits { product: u32, bits: u32 },
    #[error("product {product}: rows must be at most 64 indices below m = {m}")]
    Rows { product: u32, m: u32 },
}

/// A sample the prover will answer: known products, vectors of n entries within the bit
/// bound, known rows, and no more than a validator needs (so `open` cannot ask for all work
/// to be redone).
pub fn check_samples(params: &Params, samples: &[ProductSample]) -> Result<(), SampleError> {
    let max = SAMPLED_PRODUCTS.max(64);
    if samples.is_empty() || samples.len() > max {
        return Err(SampleError::Count { got: samples.len(), max });
    }
    let bits = verify::vector_bits(params.k);
    let bound = 1u64 << bits;
    for s in samples {
        let product = s.index;
        if product >= params.count {
            return Err(SampleError::UnknownProduct { product, count: params.count });
        }
        if s.r.len() != params.n as usize {
            return Err(SampleError::VectorLength { product, got: s.r.len(), n: params.n });
        }
        if s.r.iter().any(|&v| u64::from(v) >= bound) {
            return Err(SampleError::VectorBits { product, bits });
        }
        if s.rows.len() > OPENED_ROWS.max(64) || s.rows.iter().any(|&i| i >= params.m) {
            return Err(SampleError::Rows { product, m: params.m });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator for the property test.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    #[test]
    fn parsing_never_panics_on_mutated_or_random_input() {
        let valid = [
            r#"{"type":"ping","id":1}"#.to_owned(),
            serde_json::to_string(&Message::Challenge {
                params: Params::plain(1, 16, 1),
                validator_hotkey: String::new(),
            })
            .unwrap(),
            serde_json::to_string(&Message::Open {
                samples: vec![ProductSample { index: 0, r: vec![1, 2, 3], rows: vec![0] }],
            })
            .unwrap(),
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
    }

    #[test]
    fn rejects_unknown_types_and_fields() {
        assert!(parse(br#"{"type":"shutdown"}"#).is_err());
        assert!(parse(br#"{"type":"ping","id":1,"extra":true}"#).is_err());
        assert!(parse(br#"{"id":1}"#).is_err());
        assert_eq!(parse(br#"{"type":"pong","id":9}"#).unwrap(), Message::Pong { id: 9 });
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

    #[test]
    fn samples_outside_the_challenge_are_refused() {
        let params = Params::plain(1, 16, 2);
        let ok = ProductSample { index: 1, r: vec![1; 16], rows: vec![0, 15] };
        check_samples(&params, std::slice::from_ref(&ok)).unwrap();
        for (bad, why) in [
            (ProductSample { index: 2, ..ok.clone() }, "does not exist"),
            (ProductSample { r: vec![1; 15], ..ok.clone() }, "r has 15"),
            (ProductSample { r: vec![1 << 20; 16], ..ok.clone() }, "below 2^20"),
            (ProductSample { rows: vec![16], ..ok.clone() }, "rows"),
        ] {
            assert!(check_samples(&params, &[bad]).unwrap_err().to_string().contains(why), "{why}");
        }
        assert!(check_samples(&params, &[]).is_err());
    }

    /// The prover reads only what a validator needs: a `ping` padded with a megabyte of JSON
    /// whitespace (valid, and what a validator never sends) ends the conversation unread.
    #[tokio::test]
    async fn the_prover_refuses_lines_longer_than_a_validator_needs() {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let (mut to_prover, prover_in) = tokio::io::duplex(1 << 16);
        let (prover_out, from_prover) = tokio::io::duplex(1 << 16);
        let setup = ProverSetup {
            identity: ExecutorIdentity::from_seed([1; 32]),
            threads: 1,
            step_timeout: Duration::from_secs(10),
            backend: BackendInfo { kind: "cpu".into(), kernel: "cpu".into(), threads: 1 },
            gpus: Vec::new(),
            host: crate::host::host(),
            available_memory: 1 << 30,
        };
        let prover = tokio::spawn(run_prover(BufReader::new(prover_in), prover_out, setup));
        let mut lines = BufReader::new(from_prover).lines();
        let hello = lines.next_line().await.unwrap().unwrap();
        assert!(hello.contains("\"hello\""), "{hello}");
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

    /// The largest `open` the prover answers fits in the limit it reads with, at the largest n.
    #[test]
    fn the_largest_open_a_prover_answers_fits_its_line_limit() {
        let params = Params::plain(1, 32768, 64);
        let sample = |index| ProductSample { index, r: vec![(1 << 20) - 1; 32768], rows: vec![32767; 64] };
        let open = Message::Open { samples: (0..64).map(sample).collect() };
        let line = serde_json::to_vec(&open).unwrap().len() + 1;
        let limit = open_line_limit(&params);
        assert!(line <= limit && limit < line + line / 8, "{line} bytes, limit {limit}");
        let challenge = Message::Challenge { params, validator_hotkey: "5".repeat(48) };
        assert!(serde_json::to_vec(&challenge).unwrap().len() < PROVER_LINE / 16);
    }
}
