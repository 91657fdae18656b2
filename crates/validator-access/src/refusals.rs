//! Refusals of strangers (connections from outside `allowed_source_addresses`, over the rate
//! limit or the unauthenticated caps, authentications with keys no grant has), audited off the
//! accept path. Whoever refuses only counts the metric and `try_send`s to a bounded queue; one
//! task writes the audit log: the first refusal of a peer ([`PeerKey`], an IPv6 /64 counting as
//! one) in a minute at once, with its details, and one `refused_summary` line per peer and
//! minute with the counts by reason. A flood thus writes two lines a peer a minute, never a
//! synced line a connection, and the real history is not rotated away. A full queue drops the
//! refusal and counts it (`executor_validator_access_refusals_dropped_total`, and a
//! `refusals_dropped` line with the next summaries).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::audit::Audit;
use common::peers::PeerKey;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Refusals waiting for the writer at most; more are dropped (and counted).
pub const QUEUE: usize = 1024;

/// One refusal.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub peer: IpAddr,
    /// The audit event of the first refusal a minute (`refused`, `auth_failure`, `rate_limited`).
    pub event: &'static str,
    /// Why: the reason counted in the summary (`source_address`, `no_live_grant`, …).
    pub reason: &'static str,
    /// More fields for the first line (an object), e.g. the key's fingerprint.
    pub detail: Value,
}

/// The refusing side: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct RefusalLog {
    tx: mpsc::Sender<Refusal>,
    dropped: Arc<AtomicU64>,
}

/// The writing side, for [`write()`].
#[derive(Debug)]
pub struct RefusalQueue {
    rx: mpsc::Receiver<Refusal>,
    dropped: Arc<AtomicU64>,
}

impl RefusalLog {
    /// A log and its queue of `capacity` refusals.
    pub fn new(capacity: usize) -> (Self, RefusalQueue) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        (Self { tx, dropped: dropped.clone() }, RefusalQueue { rx, dropped })
    }

    /// Hands `refusal` to the writer; when the queue is full it is dropped and counted.
    pub fn refuse(&self, refusal: Refusal) {
        if self.tx.try_send(refusal).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("executor_validator_access_refusals_dropped_total").increment(1);
        }
    }
}

/// Counts by peer for the minute being counted.
#[derive(Debug, Default)]
pub struct Tally {
    /// Unix minute (seconds / 60) being counted.
    minute: u64,
    peers: BTreeMap<PeerKey, BTreeMap<&'static str, u64>>,
}

/// An audit line to write: event and fields.
pub type Line = (&'static str, Value);

impl Tally {
    /// Counts `r` in unix minute `minute`: the lines to write now are the summaries of an
    /// earlier minute that is over, and `r` itself when it is its peer's first this minute.
    pub fn add(&mut self, r: Refusal, minute: u64) -> Vec<Line> {
        let mut lines = if minute != self.minute { self.summaries() } else { Vec::new() };
        self.minute = minute;
        let peer = PeerKey::of(r.peer);
        let counts = self.peers.entry(peer).or_default();
        if counts.is_empty() {
            let mut fields = match r.detail {
                Value::Object(fields) => fields,
                _ => Map::new(),
            };
            fields.insert("peer".into(), json!(r.peer.to_string()));
            fields.insert("reason".into(), json!(r.reason));
            fields.insert("first_this_minute".into(), json!(true));
            lines.push((r.event, Value::Object(fields)));
        }
        *counts.entry(r.reason).or_default() += 1;
        lines
    }

    /// The summaries of the minute counted if it is over by unix minute `now` (all of them
    /// when `now` is None: at shutdown); the tally starts afresh.
    pub fn flush(&mut self, now: Option<u64>) -> Vec<Line> {
        match now {
            Some(minute) if minute == self.minute => Vec::new(),
            _ => self.summaries(),
        }
    }

    fn summaries(&mut self) -> Vec<Line> {
        let minute = self.minute;
        std::mem::take(&mut self.peers)
            .into_iter()
            .map(|(peer, counts)| {
                let count: u64 = counts.values().sum();
                (
                    "refused_summary",
                    json!({"peer": peer.to_string(), "minute": minute * 60, "count": count, "reasons": counts}),
                )
            })
            .collect()
    }
}

fn unix_minute() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() / 60)
}

/// Writes the refusals of `queue` to `audit` until `shutdown`, then what is left and the last
/// summaries. Audit writes are synced, so they run on the blocking pool.
pub async fn write(mut queue: RefusalQueue, audit: Arc<Audit>, shutdown: CancellationToken) {
    let mut tally = Tally::default();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut reported_drops = 0;
    loop {
        let lines = tokio::select! {
            refusal = queue.rx.recv() => match refusal {
                Some(refusal) => tally.add(refusal, unix_minute()),
                None => break,
            },
            _ = tick.tick() => tally.flush(Some(unix_minute())),
            () = shutdown.cancelled() => break,
        };
        let dropped = queue.dropped.load(Ordering::Relaxed);
        if record(&audit, lines, dropped - reported_drops).await {
            reported_drops = dropped;
        }
    }
    let mut lines = Vec::new();
    while let Ok(refusal) = queue.rx.try_recv() {
        lines.extend(tally.add(refusal, unix_minute()));
    }
    lines.extend(tally.flush(None));
    record(&audit, lines, queue.dropped.load(Ordering::Relaxed) - reported_drops).await;
}

/// Writes `lines`, and with any summary the `dropped` refusals not reported yet; whether it
/// reported them.
async fn record(audit: &Arc<Audit>, mut lines: Vec<Line>, dropped: u64) -> bool {
    let report = lines.iter().any(|(event, _)| *event == "refused_summary");
    if report && dropped > 0 {
        lines.push(("refusals_dropped", json!({"count": dropped})));
    }
    if lines.is_empty() {
        return report;
    }
    let audit = audit.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for (event, fields) in lines {
            audit.record(event, fields);
        }
    })
    .await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(peer: &str, reason: &'static str) -> Refusal {
        Refusal { peer: peer.parse().unwrap(), event: "refused", reason, detail: json!({"what": reason}) }
    }

    #[test]
    fn one_line_at_once_and_one_summary_per_peer_and_minute() {
        let mut tally = Tally::default();
        let first = tally.add(refusal("192.0.2.1", "source_address"), 100);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0, "refused");
        assert_eq!(
            first[0].1,
            json!({"what": "source_address", "peer": "192.0.2.1", "reason": "source_address", "first_this_minute": true})
        );
        for _ in 0..999 {
            assert!(tally.add(refusal("192.0.2.1", "source_address"), 100).is_empty());
        }
        assert!(tally.add(refusal("192.0.2.1", "rate_limited"), 100).is_empty());
        // Two addresses of one IPv6 /64 are one peer.
        assert_eq!(tally.add(refusal("2001:db8::1", "no_live_grant"), 100).len(), 1);
        assert!(tally.add(refusal("2001:db8::2", "no_live_grant"), 100).is_empty());
        assert!(tally.flush(Some(100)).is_empty(), "the minute is not over");

        // The next minute: last minute's summaries, then this refusal as a first.
        let lines = tally.add(refusal("192.0.2.1", "source_address"), 101);
        let events: Vec<&str> = lines.iter().map(|(e, _)| *e).collect();
        assert_eq!(events, ["refused_summary", "refused_summary", "refused"]);
        assert_eq!(
            lines[0].1,
            json!({"peer": "192.0.2.1", "minute": 6000, "count": 1001,
                   "reasons": {"rate_limited": 1, "source_address": 1000}})
        );
        assert_eq!(lines[1].1["peer"], "2001:db8::/64");
        assert_eq!(lines[1].1["count"], 2);
        let last = tally.flush(None);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].1["count"], 1);
        assert!(tally.flush(None).is_empty());
    }

    #[tokio::test]
    async fn the_writer_drains_on_shutdown_and_reports_drops() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Arc::new(Audit::open(dir.path(), common::ServiceName::ValidatorAccess).unwrap());
        let (log, queue) = RefusalLog::new(4);
        for _ in 0..10 {
            log.refuse(refusal("192.0.2.1", "source_address"));
        }
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        write(queue, audit, shutdown).await;
        let text = std::fs::read_to_string(dir.path().join("audit/validator-access.jsonl")).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
        assert_eq!(events, ["refused", "refused_summary", "refusals_dropped"], "{text}");
        assert_eq!(lines[1]["count"], 4);
        assert_eq!(lines[2]["count"], 6);
    }
}
