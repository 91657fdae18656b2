//! `cargo xtask-release bench-api`: what authentication costs a unary call.
//!
//! One process serves the public API twice on loopback, through the same [`serve_public`] (same
//! layer, metrics recorder, limits and handlers): once with the authenticator, once without it.
//! [`CLIENTS`] concurrent callers over [`CONNECTIONS`] connections, three modes alternating
//! [`ROUNDS`] times (no authentication; each call signed on its own, scheme v2; calls in one
//! signed session, scheme v3), for two calls:
//! - `Identity`, answered from memory: the API's own path is all there is, so this is the worst
//!   case for the relative cost of a signature check;
//! - `ListContainers`, forwarded to a real container-runtime (release build) and Docker: a call
//!   that does something.
//!
//! Requests are signed before a phase starts, so the figures are the server's cost; what signing
//! costs the client is printed on its own line. In the session mode each caller has a session
//! of its own (64, `max_sessions`' default), its calls MACed in the order it sends them: made
//! long before, one shared session's counters could fall behind its window as callers drift.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::clock::SystemClock;
use common::config::Config;
use common::proto::api::v1 as api;
use common::proto::api::v1::executor_api_client::ExecutorApiClient;
use common::proto::runtime::v1 as runtime;
use e2e::TestConfig;
use executor_api::auth::{Authenticator, Policy};
use executor_api::client::ExecutorClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::report::{Value, figure};

const CLIENTS: usize = 64;
const CONNECTIONS: usize = 8;
const ROUNDS: usize = 2;

pub(crate) fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench())
}

/// The two calls measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Identity,
    ListContainers,
}

enum Call {
    Identity(tonic::Request<api::IdentityRequest>),
    List(tonic::Request<runtime::ListContainersRequest>),
}

/// How calls are authenticated in a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    PerCall,
    Session,
}

struct Phase {
    latencies_ms: Vec<f64>,
    elapsed: Duration,
}

async fn bench() -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        println!("note: debug build; run `cargo xtask-release bench-api` (make bench-api) for figures");
    }
    let root = crate::workspace_root();
    crate::build_release(&root).await?;
    anyhow::ensure!(e2e::busybox_image().await, "needs the Docker engine (and busybox-static)");
    let _metrics = common::metrics::install("executor-api")?;
    let key = e2e::keys::alice();
    // An executor identity of the bench's own, which signs the sessions it opens.
    let identity = Arc::new(common::identity::ExecutorIdentity::from_seed([9; 32]));
    // A real container-runtime for the forwarded call; quiet logs.
    let test_config = TestConfig::new("\n[logging]\nlevel = \"warn\"\n");
    let (_runtime_child, _) = crate::start_runtime(&root, &test_config).await?;
    let mut config: Config = Config::load(&test_config.path).map_err(anyhow::Error::msg)?.config;
    config.server.max_connections = 10_000;
    // The limit is far above what the bench sends: this measures authentication, not refusal.
    let policy = Policy { per_minute: u32::MAX / 2, ..Policy::of(key.hotkey().clone(), identity.clone(), &config) };
    let auth = Arc::new(Authenticator::new(policy, Arc::new(SystemClock)).map_err(anyhow::Error::msg)?);
    let shutdown = CancellationToken::new();
    let mut endpoints = Vec::new();
    for auth in [None, Some(auth)] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        endpoints.push(listener.local_addr()?);
        let server = config.server.clone();
        let api = crate::bench_handlers(&config, &identity, &test_config);
        let shutdown = shutdown.clone();
        tokio::spawn(async move { executor_api::serve_public(listener, api, auth, &server, None, shutdown).await });
    }
    let mut channels = Vec::new();
    for addr in &endpoints {
        let mut set = Vec::new();
        for _ in 0..CONNECTIONS {
            set.push(Endpoint::from_shared(format!("http://{addr}"))?.connect().await.context("connect")?);
        }
        channels.push(set);
    }
    let client = ExecutorClient::new(channels[1][0].clone(), e2e::keys::alice(), identity.executor_id());
    // A session per caller, opened before the figures.
    let mut callers = Vec::new();
    for _ in 0..CLIENTS {
        let caller = ExecutorClient::new(channels[1][0].clone(), e2e::keys::alice(), identity.executor_id());
        caller.identity().await.context("open a session")?;
        callers.push(caller);
    }
    println!(
        "{CLIENTS} concurrent clients over {CONNECTIONS} connections, {ROUNDS} rounds per mode, {} cores, same process",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{:<36} {:>10} {:>10} {:>13}", "", "p50", "p99", "throughput");
    let mut sign_time = Duration::ZERO;
    let mut signed_calls = 0;
    let mut mac_time = Duration::ZERO;
    for (workload, calls) in [(Workload::Identity, 20_000), (Workload::ListContainers, 2_000)] {
        // Warm-up: connections, allocators, caches.
        for mode in [Mode::Off, Mode::PerCall, Mode::Session] {
            let channels = if mode == Mode::Off { &channels[0] } else { &channels[1] };
            run_phase(channels, prepare(&client, &callers, mode, workload, calls / 10).await?).await?;
        }
        let (mut plain, mut signed, mut session) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            plain.push(run_phase(&channels[0], prepare(&client, &callers, Mode::Off, workload, calls).await?).await?);
            let started = Instant::now();
            let requests = prepare(&client, &callers, Mode::PerCall, workload, calls).await?;
            sign_time += started.elapsed();
            signed_calls += calls;
            signed.push(run_phase(&channels[1], requests).await?);
            let started = Instant::now();
            let requests = prepare(&client, &callers, Mode::Session, workload, calls).await?;
            mac_time += started.elapsed();
            session.push(run_phase(&channels[1], requests).await?);
        }
        let (p, s, v) = (summary(&plain), summary(&signed), summary(&session));
        println!("{workload:?}, {calls} calls a round:");
        let rows = [("authentication off", p), ("signed per call (v2)", s), ("signed session (v3)", v)];
        for (mode, (p50, p99, rate)) in rows {
            println!("  {mode:<34} {p50:>7.3} ms {p99:>7.3} ms {rate:>9.0} /s");
        }
        record(workload, calls, p, s, v)?;
        for (label, on, off) in [
            ("per call / off (throughput: off / on)", s, p),
            ("session / off (throughput: off / on)", v, p),
            ("session / per call", v, s),
        ] {
            println!("  {label:<34} {:>9.2}x {:>9.2}x {:>12.2}x", on.0 / off.0, on.1 / off.1, off.2 / on.2);
        }
    }
    shutdown.cancel();
    println!(
        "client-side signing (not in the figures above): {:.1} us per request signed, {:.1} us per request in a session",
        sign_time.as_secs_f64() * 1e6 / signed_calls as f64,
        mac_time.as_secs_f64() * 1e6 / signed_calls as f64
    );
    Ok(())
}

/// The table's figures of one workload: the session and the per-call signature, each beside
/// no authentication (p50, p99 and throughput: off / on, so higher is slower, as for latency).
fn record(workload: Workload, calls: usize, off: Summary, per_call: Summary, session: Summary) -> anyhow::Result<()> {
    let goal = if workload == Workload::Identity { "≤ 1.3" } else { "" };
    for (mode, on, goal) in [("signed session (v3)", session, goal), ("signed per call (v2)", per_call, "")] {
        for (what, ours, base) in [("p50", on.0, off.0), ("p99", on.1, off.1)] {
            figure(
                &format!("{workload:?}, {mode}, {what} of {calls} calls, 64 clients"),
                Value(ours, "ms"),
                Some(("authentication off", Value(base, "ms"))),
                goal,
            )?;
        }
        // Throughput as time a call (1/rate), so that its ratio reads like the others.
        figure(
            &format!("{workload:?}, {mode}, throughput as time a call (1 / calls a second), 64 clients"),
            Value(1e6 / on.2, "us"),
            Some(("authentication off", Value(1e6 / off.2, "us"))),
            goal,
        )?;
    }
    Ok(())
}

/// `calls` requests; in a session, call `i` is in the session of caller `i % CLIENTS`, which
/// [`run_phase`] gives it to, in order.
async fn prepare(
    client: &ExecutorClient,
    callers: &[ExecutorClient],
    mode: Mode,
    workload: Workload,
    calls: usize,
) -> anyhow::Result<Vec<Call>> {
    if mode == Mode::Session {
        let mut out = Vec::with_capacity(calls);
        for i in 0..calls {
            let caller = &callers[i % CLIENTS];
            out.push(match workload {
                Workload::Identity => Call::Identity(caller.authorized("Identity", api::IdentityRequest {}).await?),
                Workload::ListContainers => {
                    let m = runtime::ListContainersRequest { all: true, owner: String::new() };
                    Call::List(caller.authorized("ListContainers", m).await?)
                }
            });
        }
        return Ok(out);
    }
    let sign = mode == Mode::PerCall;
    Ok((0..calls)
        .map(|_| match workload {
            Workload::Identity => {
                let m = api::IdentityRequest {};
                Call::Identity(if sign { client.signed("Identity", m) } else { tonic::Request::new(m) })
            }
            Workload::ListContainers => {
                let m = runtime::ListContainersRequest { all: true, owner: String::new() };
                Call::List(if sign { client.signed("ListContainers", m) } else { tonic::Request::new(m) })
            }
        })
        .collect())
}

/// Sends `calls` with [`CLIENTS`] callers, each waiting for its answer before the next call.
async fn run_phase(channels: &[Channel], calls: Vec<Call>) -> anyhow::Result<Phase> {
    let mut shares: Vec<Vec<Call>> = (0..CLIENTS).map(|_| Vec::new()).collect();
    for (i, call) in calls.into_iter().enumerate() {
        shares[i % CLIENTS].push(call);
    }
    let started = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(i, share)| {
            let mut api = ExecutorApiClient::new(channels[i % channels.len()].clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(share.len());
                for call in share {
                    let t = Instant::now();
                    match call {
                        Call::Identity(r) => drop(api.identity(r).await?),
                        Call::List(r) => drop(api.list_containers(r).await?),
                    }
                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                }
                Ok::<_, tonic::Status>(latencies)
            })
        })
        .collect();
    let mut latencies_ms = Vec::new();
    for task in tasks {
        latencies_ms.extend(task.await??);
    }
    Ok(Phase { latencies_ms, elapsed: started.elapsed() })
}

/// (p50 ms, p99 ms, calls per second) over all phases of one mode.
/// p50 and p99 in ms, throughput in calls a second.
type Summary = (f64, f64, f64);

fn summary(phases: &[Phase]) -> Summary {
    let mut all: Vec<f64> = phases.iter().flat_map(|p| p.latencies_ms.iter().copied()).collect();
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    let seconds: f64 = phases.iter().map(|p| p.elapsed.as_secs_f64()).sum();
    (at(0.50), at(0.99), all.len() as f64 / seconds)
}
