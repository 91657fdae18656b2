//! `cargo xtask-release bench-events` (`make bench-events`): how soon a client hears of a
//! container's death (issue 22's figure: p99 from `docker kill` to the event at the client
//! under 200 ms). A release container-runtime on the real engine, the public API served in
//! this process with authentication (as `bench-api` does), and a signed `WatchEvents` stream
//! over loopback TCP. Each of [`RENTALS`] running containers is killed in turn through the
//! engine's API (`POST /containers/<id>/kill`, the call `docker kill` makes, without the CLI's
//! start-up), and two clocks stop:
//! - ours: the `DIED` event for that container arriving at the signed client;
//! - the baseline: the engine's own `die` event arriving at a client of the engine's event
//!   stream (`GET /events`), read beside it: what no executor can beat.
//!
//! Then all are started again (`Start`) and killed again, [`ROUNDS`] times.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::clock::SystemClock;
use common::config::Config;
use common::proto::runtime::v1 as pb;
use e2e::TestConfig;
use executor_api::auth::{Authenticator, Policy};
use executor_api::client::ExecutorClient;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::report::{Value, figure};

/// Containers, each on a network of its own (an engine has room for a few dozen networks).
const RENTALS: usize = 15;
/// Each is killed this many times, started again in between: `RENTALS * ROUNDS` samples.
const ROUNDS: usize = 4;

pub(crate) fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench())
}

/// One HTTP/1.0 request on the engine's socket; the answer's status line.
async fn engine_call(socket: &str, method: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = UnixStream::connect(socket).await.with_context(|| format!("connect {socket}"))?;
    let request = format!("{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut lines = tokio::io::BufReader::new(stream).lines();
    Ok(lines.next_line().await?.unwrap_or_default())
}

/// The engine's own `die` events as they arrive: (the engine's container id, when).
async fn engine_deaths(socket: String, tx: mpsc::UnboundedSender<(String, Instant)>) -> anyhow::Result<()> {
    let mut stream = UnixStream::connect(&socket).await?;
    let filters = r#"{"type":["container"],"event":["die"]}"#;
    let path = format!("/events?filters={}", filters.replace('"', "%22").replace('{', "%7B").replace('}', "%7D"));
    let request = format!("GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut lines = tokio::io::BufReader::new(stream).lines();
    while let Some(line) = lines.next_line().await? {
        let at = Instant::now();
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if let Some(id) = event["id"].as_str() {
            let _ = tx.send((id.to_owned(), at));
        }
    }
    Ok(())
}

async fn bench() -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        println!("note: debug build; run `cargo xtask-release bench-events` (make bench-events) for figures");
    }
    let root = crate::workspace_root();
    crate::build_release(&root).await?;
    anyhow::ensure!(e2e::busybox_image().await, "needs the Docker engine (and busybox-static)");
    let _metrics = common::metrics::install("executor-api")?;
    let key = e2e::keys::alice();
    // An executor identity of the bench's own, which signs the sessions it opens.
    let identity = Arc::new(common::identity::ExecutorIdentity::from_seed([9; 32]));
    let test_config = TestConfig::new("\n[logging]\nlevel = \"warn\"\n[docker]\nmax_concurrent_containers = 100\n");
    let (_runtime_child, mut runtime) = crate::start_runtime(&root, &test_config).await?;
    let config: Config = Config::load(&test_config.path).map_err(anyhow::Error::msg)?.config;
    let socket = config.docker.socket.trim_start_matches("unix://").to_owned();
    let policy = Policy::of(key.hotkey().clone(), identity.clone(), &config);
    let auth = Arc::new(Authenticator::new(policy, Arc::new(SystemClock)).map_err(anyhow::Error::msg)?);
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = config.server.clone();
    let api = crate::bench_handlers(&config, &identity, &test_config);
    let stop = shutdown.clone();
    tokio::spawn(async move { executor_api::serve_public(listener, api, Some(auth), &server, None, stop).await });
    let channel = Endpoint::from_shared(format!("http://{addr}"))?.connect().await.context("connect")?;
    let client = ExecutorClient::new(channel, key, identity.executor_id());

    let mut rentals = Vec::new();
    for _ in 0..RENTALS {
        let request = pb::CreateContainerRequest {
            image: e2e::BUSYBOX_IMAGE.into(),
            command: vec!["sleep".into(), "3600".into()],
            ..Default::default()
        };
        let c = runtime.create(request).await?.into_inner();
        runtime.start(pb::ContainerRef { id: c.id.clone() }).await?;
        rentals.push(c);
    }
    let (engine_tx, mut engine_rx) = mpsc::unbounded_channel();
    tokio::spawn(engine_deaths(socket.clone(), engine_tx));
    let (ours_tx, mut ours_rx) = mpsc::unbounded_channel();
    let mut watch = client.watch_events(pb::WatchEventsRequest { only_new: true, ..Default::default() }).await?;
    tokio::spawn(async move {
        // It ends with this process (or fails, which the next kill's wait reports).
        while let Ok(Some(event)) = watch.message().await {
            if event.kind() == pb::EventKind::Died {
                let _ = ours_tx.send((event.container_id, Instant::now()));
            }
        }
    });
    // Both streams are open before the first kill.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (mut ours, mut engine) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round > 0 {
            for c in &rentals {
                runtime.start(pb::ContainerRef { id: c.id.clone() }).await?;
            }
        }
        kill_each(&socket, &rentals, &mut engine_rx, &mut ours_rx, &mut engine, &mut ours).await?;
    }
    let ((o50, o99), (e50, e99)) = (crate::bench_doors::percentiles(&ours), crate::bench_doors::percentiles(&engine));
    println!(
        "{RENTALS} containers killed one at a time through the engine's API, {ROUNDS} rounds, {} cores:",
        num_cpus()
    );
    println!("{:<58} {:>9} {:>9}", "", "p50", "p99");
    println!("{:<58} {o50:>6.1} ms {o99:>6.1} ms", "kill to DIED at the signed WatchEvents client (ours)");
    println!("{:<58} {e50:>6.1} ms {e99:>6.1} ms", "kill to `die` at a client of the engine's events (baseline)");
    println!("{:<58} {:>8.2}x {:>8.2}x", "ours / baseline", o50 / e50, o99 / e99);
    println!("goal: p99 under 200 ms: {}", if o99 < 200.0 { "met" } else { "NOT met" });
    let baseline = "the engine's `die` event";
    figure(
        "a kill to DIED at a signed WatchEvents client, p50",
        Value(o50, "ms"),
        Some((baseline, Value(e50, "ms"))),
        "",
    )?;
    figure(
        "a kill to DIED at a signed WatchEvents client, p99",
        Value(o99, "ms"),
        Some((baseline, Value(e99, "ms"))),
        "< 200 ms",
    )?;
    shutdown.cancel();
    e2e::runtime::remove_all(&mut runtime).await;
    Ok(())
}

type Deaths = mpsc::UnboundedReceiver<(String, Instant)>;

/// Kills each of `rentals` in turn, adding to `engine` and `ours` the milliseconds until each
/// clock heard of it.
async fn kill_each(
    socket: &str,
    rentals: &[pb::Container],
    engine_rx: &mut Deaths,
    ours_rx: &mut Deaths,
    engine: &mut Vec<f64>,
    ours: &mut Vec<f64>,
) -> anyhow::Result<()> {
    for c in rentals {
        let sent = Instant::now();
        let status = engine_call(socket, "POST", &format!("/containers/{}/kill", c.docker_id)).await?;
        anyhow::ensure!(status.contains(" 204 "), "kill {}: {status}", c.id);
        let deadline = Duration::from_secs(10);
        let engine_at = loop {
            let next =
                tokio::time::timeout(deadline, engine_rx.recv()).await.context("no engine die event within 10 s")?;
            let (id, at) = next.context("engine events ended")?;
            if id == c.docker_id {
                break at;
            }
        };
        let ours_at = loop {
            let next = tokio::time::timeout(deadline, ours_rx.recv()).await.context("no DIED event within 10 s")?;
            let (id, at) = next.context("our events ended")?;
            if id == c.id {
                break at;
            }
        };
        engine.push(engine_at.duration_since(sent).as_secs_f64() * 1e3);
        ours.push(ours_at.duration_since(sent).as_secs_f64() * 1e3);
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
