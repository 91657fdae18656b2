//! `cargo xtask bench-doors` (`make bench-doors`): what strangers at the public port cost the
//! miner (issue 17, items 8 and 9). A real node (release build, launcher and every service);
//! in one run, the miner's calls timed with nobody else at the port, then again while
//! - [`IDLE`] idle TCP connections are held open from [`IDLE_ADDRESSES`] loopback addresses
//!   (25 each, under `max_connections_per_ip`, so every one is taken; together they fill
//!   `max_connections`; one the server closes, by eviction or at `handshake_timeout`, is opened
//!   again at once), and
//! - a flood of [`FLOOD`] calls with bad signatures (the miner's public hotkey and a
//!   well-formed signature over another call, so each is a full check) from
//!   [`FLOOD_ADDRESSES`] addresses, [`FLOOD_CONCURRENCY`] at a time.
//!
//! The miner's call is what `executor ctl identity` does: a new connection, the health check
//! that names the executor, one signed Identity call; and, beside it, a signed Identity call on
//! the miner's long-lived connection. The attacker runs in this process on the same machine,
//! so its CPU is part of what the miner pays.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use common::proto::api::v1 as api;
use common::proto::api::v1::executor_api_client::ExecutorApiClient;
use e2e::{Node, TestConfig};
use executor_api::client::ExecutorClient;
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::Endpoint;

use crate::report::{Value, figure};

/// Samples of each of the miner's calls in each phase (at least; the attacked phase lasts as
/// long as the flood).
const SAMPLES: usize = 300;
const IDLE: usize = 1000;
const IDLE_ADDRESSES: usize = 40;
const FLOOD: usize = 2000;
const FLOOD_ADDRESSES: usize = 8;
const FLOOD_CONCURRENCY: usize = 32;
const IDENTITY: &str = "/executor.api.v1.ExecutorApi/Identity";

pub(crate) fn run() -> anyhow::Result<()> {
    // Both ends of 1000 connections, and the node's own files: the soft limit up to the hard
    // one (the node inherits it).
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    ensure!(hard >= 4 * IDLE as u64, "the open-files limit is {hard}; bench-doors needs {} (ulimit -Hn)", 4 * IDLE);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench())
}

/// One round of the miner's two calls (milliseconds; `None` if it failed), and the attack
/// when it began.
struct Round {
    ctl: Option<f64>,
    kept: Option<f64>,
    /// Idle connections held.
    held: usize,
    /// Whether the flood was running.
    flooding: bool,
}

/// The idle connections of the attack.
#[derive(Default)]
struct Idle {
    /// Taken by the server and not yet closed.
    held: AtomicUsize,
    /// Holders whose first connection was taken.
    opened: AtomicUsize,
    /// Connections taken after the holder's previous one was closed.
    reopened: AtomicUsize,
}

async fn bench() -> anyhow::Result<()> {
    let root = crate::workspace_root();
    crate::build_release(&root).await?;
    let config = TestConfig::new(
        "[logging]\nlevel = \"warn\"\n[validator.access_config.rate_limits]\napi_requests_per_minute = 10000000\n",
    );
    let (grpc, metrics_port) = (config.ports.grpc, config.ports.metrics[0]);
    let _node = Node::start_from(&root.join("target/release"), config).await;
    let endpoint = format!("http://127.0.0.1:{grpc}");
    let addr: SocketAddr = ([127, 0, 0, 1], grpc).into();
    let miner = ExecutorClient::connect(&endpoint, None, e2e::keys::alice()).await?;
    miner.identity().await?;
    println!(
        "one node (release), [server] defaults: max_connections 1000, max_connections_per_ip 32, handshake_timeout 10s, \
         auth_failures_per_minute 60; {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // Warm-up, then no attack.
    let mut failed = Vec::new();
    sample(&endpoint, &miner, 50, || true, || 0, &mut failed).await;
    let calm = sample(&endpoint, &miner, SAMPLES, || true, || 0, &mut failed).await;
    let calm_failures = failed.len();

    // The attack: idle connections first, then the flood; the miner measured while it runs.
    // One holder after another, each once its first connection is taken: a thousand SYNs at
    // once would overflow the listen queue (and be retried after 1 s, 3 s, ...), which an
    // attacker who wants every slot avoids. The miner's own connection holds a slot too, so
    // from the thousandth on each newcomer takes the oldest stranger's.
    let idle = Arc::new(Idle::default());
    let mut holders = Vec::new();
    let filling = Instant::now();
    for n in 0..IDLE {
        let (taken, first) = tokio::sync::oneshot::channel();
        let source = [127, 0, 1, 1 + (n % IDLE_ADDRESSES) as u8];
        holders.push(tokio::spawn(hold_idle(addr, source, idle.clone(), taken)));
        tokio::time::timeout(Duration::from_secs(30), first)
            .await
            .context("an idle connection was not taken in 30 s")??;
    }
    let filled_in = filling.elapsed();
    let held_at_start = idle.held.load(Ordering::SeqCst);
    let flood = Flood::start(addr, miner.executor_id().to_owned()).await?;
    let flooding = flood.done.clone();
    let held_during = idle.clone();
    let attacked = sample(
        &endpoint,
        &miner,
        SAMPLES,
        move || flooding.load(Ordering::SeqCst),
        move || held_during.held.load(Ordering::SeqCst),
        &mut failed,
    )
    .await;
    let flood = flood.finish().await?;
    for holder in holders {
        holder.abort();
    }

    let (_, metrics) = e2e::http_get(metrics_port, "/metrics").await?;
    let during: Vec<&Round> = attacked.iter().filter(|r| r.flooding).collect();
    let after: Vec<&Round> = attacked.iter().filter(|r| !r.flooding).collect();
    let calm: Vec<&Round> = calm.iter().collect();
    let all: Vec<&Round> = attacked.iter().collect();
    println!("{:<62} {:>10} {:>10} {:>8}", "", "p50", "p99", "samples");
    for (name, pick) in [
        ("ctl identity (connect, health check, signed Identity)", (|r: &Round| r.ctl) as fn(&Round) -> Option<f64>),
        ("signed Identity on the miner's open connection", |r: &Round| r.kept),
    ] {
        println!("{name}:");
        let row = |label: &str, rounds: &[&Round]| {
            let values: Vec<f64> = rounds.iter().filter_map(|r| pick(r)).collect();
            let (p50, p99) = percentiles(&values);
            println!("  {label:<60} {p50:>7.2} ms {p99:>7.2} ms {:>8}", values.len());
            (p50, p99)
        };
        let base = row("no attack", &calm);
        let attacked = row("attacked: idle connections, all samples", &all);
        row("  of which during the bad-signature flood", &during);
        row("  of which after it (idle connections only)", &after);
        println!("  {:<60} {:>9.2}x {:>9.2}x", "attacked / no attack", attacked.0 / base.0, attacked.1 / base.1);
        for (what, ours, calm) in [("p50", attacked.0, base.0), ("p99", attacked.1, base.1)] {
            figure(
                &format!("{name}, {what}, under 1000 idle connections and a bad-signature flood"),
                Value(ours, "ms"),
                Some(("no attack", Value(calm, "ms"))),
                "",
            )?;
        }
    }
    println!(
        "miner calls that failed: {calm_failures} with no attack, {} attacked {:?}",
        failed.len() - calm_failures,
        failed.get(calm_failures)
    );
    let held: Vec<usize> = attacked.iter().map(|r| r.held).collect();
    let mean = held.iter().sum::<usize>() as f64 / held.len().max(1) as f64;
    println!(
        "idle connections: {IDLE} holders from {IDLE_ADDRESSES} addresses, opened one after another in {:.1} s; \
         {held_at_start} held when the flood started, {} to {} (mean {mean:.0}) while the miner was measured; {} taken in all",
        filled_in.as_secs_f64(),
        held.iter().min().unwrap_or(&0),
        held.iter().max().unwrap_or(&0),
        idle.opened.load(Ordering::SeqCst) + idle.reopened.load(Ordering::SeqCst),
    );
    println!(
        "flood: {FLOOD} calls from {FLOOD_ADDRESSES} addresses, {FLOOD_CONCURRENCY} at a time, in {:.2} s: {} bad_signature \
         (read and checked), {} too_many_failures (refused unread), {} other {:?}",
        flood.took.as_secs_f64(),
        flood.bad_signature,
        flood.too_many_failures,
        flood.other.len(),
        flood.other.first()
    );
    for series in [
        "executor_api_connections_closed_total{reason=\"evicted\"}",
        "executor_api_connections_closed_total{reason=\"handshake_timeout\"}",
        "executor_api_connections_refused_total{limit=\"max_connections\"}",
        "executor_api_connections_refused_total{limit=\"max_connections_per_ip\"}",
    ] {
        let value = metrics.lines().find(|l| l.starts_with(series)).and_then(|l| l.split_whitespace().last());
        println!("  {series} {}", value.unwrap_or("absent"));
    }
    ensure!(failed.is_empty(), "the miner's calls failed: {failed:?}");
    Ok(())
}

/// At least `count` rounds of the miner's two calls, then more until `done()`; with `held()`
/// at each. Failures are kept in `failed`.
async fn sample(
    endpoint: &str,
    miner: &ExecutorClient,
    count: usize,
    done: impl Fn() -> bool,
    held: impl Fn() -> usize,
    failed: &mut Vec<String>,
) -> Vec<Round> {
    let mut rounds = Vec::new();
    loop {
        let flooding = !done();
        if rounds.len() >= count && !flooding {
            return rounds;
        }
        let held = held();
        let started = Instant::now();
        let ctl = async {
            let client = ExecutorClient::connect(endpoint, None, e2e::keys::alice()).await?;
            client.identity().await?;
            anyhow::Ok(())
        };
        let ctl = match ctl.await {
            Ok(()) => Some(started.elapsed().as_secs_f64() * 1e3),
            Err(e) => {
                failed.push(format!("ctl identity: {e:#}"));
                None
            }
        };
        let started = Instant::now();
        let kept = match miner.identity().await {
            Ok(_) => Some(started.elapsed().as_secs_f64() * 1e3),
            Err(e) => {
                failed.push(format!("Identity: {e}"));
                None
            }
        };
        rounds.push(Round { ctl, kept, held, flooding });
    }
}

/// (p50, p99) of `values`, in their unit (NaN for none).
pub(crate) fn percentiles(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted.get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1))).copied();
    (at(0.50).unwrap_or(f64::NAN), at(0.99).unwrap_or(f64::NAN))
}

async fn connect_from(addr: SocketAddr, source: [u8; 4]) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(addr).await
}

/// One idle connection from `source`, held until the server closes it, then opened again at
/// once (until the task is aborted); `taken` is told when the first is taken.
async fn hold_idle(addr: SocketAddr, source: [u8; 4], idle: Arc<Idle>, taken: tokio::sync::oneshot::Sender<()>) {
    let mut taken = Some(taken);
    loop {
        let Ok(mut stream) = connect_from(addr, source).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // The server speaks first (its HTTP/2 SETTINGS) on a connection it took.
        let mut settings = [0u8; 9];
        if stream.read_exact(&mut settings).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        idle.held.fetch_add(1, Ordering::SeqCst);
        match taken.take() {
            Some(taken) => {
                idle.opened.fetch_add(1, Ordering::SeqCst);
                let _ = taken.send(());
            }
            None => {
                idle.reopened.fetch_add(1, Ordering::SeqCst);
            }
        }
        let mut sink = [0u8; 256];
        while let Ok(1..) = stream.read(&mut sink).await {}
        idle.held.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The bad-signature flood, running.
struct Flood {
    done: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<String>>>>,
    started: Instant,
}

/// What the flood got back.
struct FloodResult {
    took: Duration,
    bad_signature: usize,
    too_many_failures: usize,
    other: Vec<String>,
}

impl Flood {
    async fn start(addr: SocketAddr, executor_id: String) -> anyhow::Result<Flood> {
        let alice = e2e::keys::alice();
        let mut channels = Vec::new();
        for a in 0..FLOOD_ADDRESSES {
            let source = [127, 0, 2, 1 + a as u8];
            let connector = tower::service_fn(move |_: tonic::transport::Uri| async move {
                connect_from(addr, source).await.map(hyper_util::rt::TokioIo::new)
            });
            channels.push(Endpoint::from_shared(format!("http://{addr}"))?.connect_with_connector(connector).await?);
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let body = api::IdentityRequest {}.encode_to_vec();
        // Signed ahead, so that the flood is as fast as the server lets it be.
        let forged: Vec<_> = (0..FLOOD)
            .map(|_| {
                let mut headers = executor_api::auth::sign(&alice, &executor_id, IDENTITY, &body, now);
                headers[4].1 =
                    executor_api::auth::sign(&alice, &executor_id, IDENTITY, b"another call", now)[4].1.clone();
                headers
            })
            .collect();
        let done = Arc::new(AtomicBool::new(false));
        let remaining = Arc::new(AtomicUsize::new(FLOOD_CONCURRENCY));
        let forged = Arc::new(forged);
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let workers = (0..FLOOD_CONCURRENCY)
            .map(|w| {
                let mut client = ExecutorApiClient::new(channels[w % channels.len()].clone());
                let (forged, next, done, remaining) = (forged.clone(), next.clone(), done.clone(), remaining.clone());
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    while let Some(headers) = forged.get(next.fetch_add(1, Ordering::SeqCst)) {
                        let mut request = tonic::Request::new(api::IdentityRequest {});
                        for (name, value) in headers {
                            request.metadata_mut().insert(*name, value.parse()?);
                        }
                        answers.push(match client.identity(request).await {
                            Ok(_) => "answered".to_owned(),
                            Err(status) => status.message().to_owned(),
                        });
                    }
                    if remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
                        done.store(true, Ordering::SeqCst);
                    }
                    anyhow::Ok(answers)
                })
            })
            .collect();
        Ok(Flood { done, workers, started })
    }

    async fn finish(self) -> anyhow::Result<FloodResult> {
        let mut result =
            FloodResult { took: Duration::ZERO, bad_signature: 0, too_many_failures: 0, other: Vec::new() };
        for worker in self.workers {
            for answer in worker.await.context("a flood worker")?? {
                if answer.starts_with("bad_signature:") {
                    result.bad_signature += 1;
                } else if answer.starts_with("too_many_failures:") {
                    result.too_many_failures += 1;
                } else {
                    result.other.push(answer);
                }
            }
        }
        result.took = self.started.elapsed();
        Ok(result)
    }
}
