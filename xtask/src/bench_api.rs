//! `cargo xtask-release bench-api`: what authentication costs a unary call.
//!
//! One process serves the public API twice on loopback, through the same [`serve_public`] (same
//! layer, metrics recorder, limits and handlers): once with the authenticator, once without it.
//! Clients call `Identity` (answered from memory, so the API's own path is all there is to
//! measure) with `CLIENTS` concurrent callers over `CONNECTIONS` connections, `CALLS` calls per
//! phase, the two modes alternating twice. Requests are signed before a phase starts, so the
//! figures are the server's cost; what signing costs the client is printed on its own line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::clock::SystemClock;
use common::config::Config;
use common::hotkey::HotkeyPair;
use common::proto::api::v1 as api;
use executor_api::api::Api;
use executor_api::auth::Authenticator;
use executor_api::client::ExecutorClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

const ALICE_SEED: &str = "0xe5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a";
const CLIENTS: usize = 64;
const CONNECTIONS: usize = 8;
const CALLS: usize = 20_000;
const ROUNDS: usize = 2;

pub(crate) fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench())
}

struct Phase {
    latencies_ms: Vec<f64>,
    elapsed: Duration,
}

async fn bench() -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        println!("note: debug build; run `cargo xtask-release bench-api` (make bench-api) for figures");
    }
    let _metrics = common::metrics::install("executor-api")?;
    let key = HotkeyPair::parse(ALICE_SEED)?;
    let dir = std::env::temp_dir().join(format!("bench-api-{}", std::process::id()));
    let mut config = Config {
        managing_miner_hotkey: Some(key.hotkey().clone()),
        runtime_dir: dir.join("run"),
        data_dir: dir.join("data"),
        ..Default::default()
    };
    config.server.max_connections = 10_000;
    let handlers = || Api::new(&config, "bench".into(), [0; 32], dir.join("gpu-attestor"), dir.join("key"));
    // The limit is far above what the bench sends: this measures authentication, not refusal.
    let auth = Arc::new(Authenticator::new(
        key.hotkey().clone(),
        config.server.auth_time_window,
        u32::MAX / 2,
        Arc::new(SystemClock),
    ));
    let shutdown = CancellationToken::new();
    let mut endpoints = Vec::new();
    for auth in [None, Some(auth)] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        endpoints.push(listener.local_addr()?);
        let server = config.server.clone();
        let api = handlers();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { executor_api::serve_public(listener, api, auth, &server, None, shutdown).await });
    }
    let off = connect(endpoints[0]).await?;
    let on = connect(endpoints[1]).await?;
    let client = ExecutorClient::new(on[0].clone(), HotkeyPair::parse(ALICE_SEED)?);

    // Warm-up: connections, allocators, the CPU's caches.
    phase(&off, &client, false, 2_000).await?;
    phase(&on, &client, true, 2_000).await?;
    let (mut plain, mut signed) = (Vec::new(), Vec::new());
    let mut sign_time = Duration::ZERO;
    for _ in 0..ROUNDS {
        plain.push(phase(&off, &client, false, CALLS).await?);
        let started = Instant::now();
        let requests = prepare(&client, true, CALLS);
        sign_time += started.elapsed();
        signed.push(run_phase(&on, requests).await?);
    }
    shutdown.cancel();
    let (p, s) = (summary(&plain), summary(&signed));
    println!(
        "unary Identity, {CLIENTS} concurrent clients over {CONNECTIONS} connections, {ROUNDS} x {CALLS} calls per mode, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{:<22} {:>10} {:>10} {:>14}", "", "p50", "p99", "throughput");
    for (name, (p50, p99, rate)) in [("authentication off", p), ("authentication on", s)] {
        println!("{name:<22} {p50:>7.3} ms {p99:>7.3} ms {rate:>10.0} /s");
    }
    println!("{:<22} {:>9.2}x {:>9.2}x {:>13.2}x", "ratio on / off", s.0 / p.0, s.1 / p.1, p.2 / s.2);
    println!(
        "client-side signing (not in the figures above): {:.1} us per request",
        sign_time.as_secs_f64() * 1e6 / (ROUNDS * CALLS) as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn connect(addr: SocketAddr) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(Endpoint::from_shared(format!("http://{addr}"))?.connect().await.context("connect")?);
    }
    Ok(channels)
}

fn prepare(client: &ExecutorClient, sign: bool, calls: usize) -> Vec<tonic::Request<api::IdentityRequest>> {
    (0..calls)
        .map(|_| {
            if sign {
                client.signed("Identity", api::IdentityRequest {})
            } else {
                tonic::Request::new(api::IdentityRequest {})
            }
        })
        .collect()
}

async fn phase(channels: &[Channel], client: &ExecutorClient, sign: bool, calls: usize) -> anyhow::Result<Phase> {
    run_phase(channels, prepare(client, sign, calls)).await
}

/// Sends `requests` with [`CLIENTS`] callers, each waiting for its answer before the next call.
async fn run_phase(channels: &[Channel], requests: Vec<tonic::Request<api::IdentityRequest>>) -> anyhow::Result<Phase> {
    let mut shares: Vec<Vec<_>> = (0..CLIENTS).map(|_| Vec::new()).collect();
    for (i, request) in requests.into_iter().enumerate() {
        shares[i % CLIENTS].push(request);
    }
    let started = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(i, share)| {
            let mut api = api::executor_api_client::ExecutorApiClient::new(channels[i % channels.len()].clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(share.len());
                for request in share {
                    let t = Instant::now();
                    api.identity(request).await?;
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
fn summary(phases: &[Phase]) -> (f64, f64, f64) {
    let mut all: Vec<f64> = phases.iter().flat_map(|p| p.latencies_ms.iter().copied()).collect();
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    let calls = all.len() as f64;
    let seconds: f64 = phases.iter().map(|p| p.elapsed.as_secs_f64()).sum();
    (at(0.50), at(0.99), calls / seconds)
}
