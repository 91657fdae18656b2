//! The node's events (`WatchEvents`): containers created, started, ended (and why), stopped
//! (by whom), removed, reaped and recreated, GPU health changes, drain. Each gets the next
//! sequence number and is appended to `data_dir/events.jsonl` (one JSON object a line,
//! fsynced before anyone sees it) before it goes to the watchers, so a number is never given
//! twice, a watcher that lost its stream asks again with the last number it has and misses
//! nothing, and a restart of the service or the host keeps them. The last [`KEEP`] are kept
//! (in memory, and in the file, which is rewritten with those when it holds twice as many).
//!
//! A line that cannot be read back (a crash in the middle of an append leaves half a line at
//! the end; a damaged disk) is skipped with a warning: the lines around it still count.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use common::proto::runtime::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// How many events are kept for watchers that come back.
pub const KEEP: usize = 10_000;

/// How many new events a watcher may be behind before it reads them from what is kept.
const LIVE_QUEUE: usize = 1024;

/// The file under `data_dir`.
const FILE: &str = "events.jsonl";

/// Why a watch cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error(
        "after_seq {after}: events up to {gone} are no longer kept (the node keeps the last {KEEP}); \
         list the containers again and watch with after_seq = {gone}"
    )]
    Gone { after: u64, gone: u64 },
    #[error("after_seq {after} is past the newest event, {newest} (was data_dir/{FILE} removed?)")]
    Future { after: u64, newest: u64 },
}

/// The events, their file and the watchers.
#[derive(Debug, Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// [`KEEP`], less in tests.
    keep: usize,
    /// Held across an append, so the file, the numbers and the watchers see one order.
    order: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    file: Mutex<Journal>,
    live: broadcast::Sender<pb::Event>,
}

#[derive(Debug)]
struct State {
    kept: VecDeque<pb::Event>,
    /// The number the next event gets.
    next: u64,
}

#[derive(Debug)]
struct Journal {
    file: std::fs::File,
    /// Lines in the file, to know when to rewrite it.
    lines: usize,
}

/// One line of the file: an event with its kind by name.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    seq: u64,
    time_ms: i64,
    kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    container_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    owner: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    image: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    exit_code: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    gpu_uuid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    gpu_state: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    draining: bool,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// `created` for `EVENT_KIND_CREATED`.
fn kind_name(kind: i32) -> String {
    let name = pb::EventKind::try_from(kind).unwrap_or_default().as_str_name();
    name.trim_start_matches("EVENT_KIND_").to_ascii_lowercase()
}

impl From<&pb::Event> for Line {
    fn from(e: &pb::Event) -> Self {
        Self {
            seq: e.seq,
            time_ms: e.time_ms,
            kind: kind_name(e.kind),
            container_id: e.container_id.clone(),
            owner: e.owner.clone(),
            image: e.image.clone(),
            exit_code: e.exit_code,
            reason: e.reason.clone(),
            by: e.by.clone(),
            gpu_uuid: e.gpu_uuid.clone(),
            gpu_state: e.gpu_state.clone(),
            draining: e.draining,
        }
    }
}

impl Line {
    fn event(self) -> Option<pb::Event> {
        let kind = pb::EventKind::from_str_name(&format!("EVENT_KIND_{}", self.kind.to_ascii_uppercase()))?;
        Some(pb::Event {
            seq: self.seq,
            time_ms: self.time_ms,
            kind: kind as i32,
            container_id: self.container_id,
            owner: self.owner,
            image: self.image,
            exit_code: self.exit_code,
            reason: self.reason,
            by: self.by,
            gpu_uuid: self.gpu_uuid,
            gpu_state: self.gpu_state,
            draining: self.draining,
        })
    }
}

impl Events {
    /// The events kept in `data_dir/events.jsonl` (none when there is no file yet).
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        Self::open_keeping(data_dir, KEEP)
    }

    fn open_keeping(data_dir: &Path, keep: usize) -> std::io::Result<Self> {
        let path = data_dir.join(FILE);
        let text = match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut kept = VecDeque::new();
        let mut lines = 0;
        let mut next = 1;
        let mut skipped = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            lines += 1;
            match serde_json::from_str::<Line>(line).ok().and_then(Line::event) {
                Some(event) if event.seq >= next => {
                    next = event.seq + 1;
                    kept.push_back(event);
                    if kept.len() > keep {
                        kept.pop_front();
                    }
                }
                _ => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!(path = %path.display(), skipped, "event lines that cannot be read (a torn append, damage) are skipped");
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        // Half a line left by a crash: what comes next starts on a line of its own.
        if !text.is_empty() && !text.ends_with('\n') {
            file.write_all(b"\n")?;
        }
        let (live, _) = broadcast::channel(LIVE_QUEUE);
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                keep,
                order: tokio::sync::Mutex::new(()),
                state: Mutex::new(State { kept, next }),
                file: Mutex::new(Journal { file, lines }),
                live,
            }),
        })
    }

    /// Numbers `event`, stamps it with the time, writes it and hands it to the watchers. An
    /// event that cannot be written is still handed out (and the failure logged): watchers
    /// are not kept from what happened because the disk is full.
    pub async fn record(&self, mut event: pb::Event) {
        let _order = self.inner.order.lock().await;
        event.seq = self.inner.state.lock().unwrap_or_else(PoisonError::into_inner).next;
        event.time_ms = now_ms();
        let inner = Arc::clone(&self.inner);
        let line = Line::from(&event);
        let written = tokio::task::spawn_blocking(move || inner.append(&line)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(seq = event.seq, error = %e, "cannot write an event to data_dir/{FILE}"),
            Err(e) => tracing::error!(seq = event.seq, error = %e, "the event writer failed"),
        }
        tracing::debug!(seq = event.seq, kind = kind_name(event.kind), id = event.container_id, "event");
        let mut state = self.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.next = event.seq + 1;
        state.kept.push_back(event.clone());
        if state.kept.len() > self.inner.keep {
            state.kept.pop_front();
        }
        // Nobody watching is fine.
        let _ = self.inner.live.send(event);
    }

    /// The events kept after `after` and the new ones from then on, with nothing between
    /// them lost or given twice.
    fn subscribe(&self, after: u64) -> Result<(Vec<pb::Event>, broadcast::Receiver<pb::Event>), WatchError> {
        let state = self.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        let newest = state.next - 1;
        if after > newest {
            return Err(WatchError::Future { after, newest });
        }
        if let Some(oldest) = state.kept.front()
            && after != 0
            && after + 1 < oldest.seq
        {
            return Err(WatchError::Gone { after, gone: oldest.seq - 1 });
        }
        let backlog = state.kept.iter().filter(|e| e.seq > after).cloned().collect();
        Ok((backlog, self.inner.live.subscribe()))
    }

    /// The number of the newest event (0: none yet).
    pub fn newest(&self) -> u64 {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner).next - 1
    }

    /// A watch for `request`: the events it asks for are sent to `tx` in order until the
    /// receiver goes; refused at once when what it asks for is gone (see [`WatchError`]).
    pub fn watch(
        &self,
        request: &pb::WatchEventsRequest,
        tx: tokio::sync::mpsc::Sender<pb::Event>,
    ) -> Result<impl std::future::Future<Output = ()> + Send + 'static, WatchError> {
        let after = if request.only_new { self.newest() } else { request.after_seq };
        let first = self.subscribe(after)?;
        let events = self.clone();
        let only = request.container_id.clone();
        Ok(async move {
            let mut last = after;
            let (mut backlog, mut live) = first;
            loop {
                for event in backlog.drain(..) {
                    if !send(&tx, event, &only, &mut last).await {
                        return;
                    }
                }
                loop {
                    tokio::select! {
                        received = live.recv() => match received {
                            Ok(event) if event.seq > last => {
                                if !send(&tx, event, &only, &mut last).await {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            // Behind by more than the queue: read on from what is kept.
                            Err(broadcast::error::RecvError::Lagged(_)) => break,
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                        () = tx.closed() => return,
                    }
                }
                match events.subscribe(last) {
                    Ok(next) => (backlog, live) = next,
                    Err(e) => {
                        tracing::warn!(error = %e, "a watcher fell too far behind; its stream ends");
                        return;
                    }
                }
            }
        })
    }
}

/// Sends `event` to `tx` when it is `only`'s (or `only` is empty); false when the
/// receiver went.
async fn send(tx: &tokio::sync::mpsc::Sender<pb::Event>, event: pb::Event, only: &str, last: &mut u64) -> bool {
    *last = event.seq;
    if !only.is_empty() && event.container_id != only {
        return true;
    }
    tx.send(event).await.is_ok()
}

impl Inner {
    /// Appends `line` and syncs it; rewrites the file with the kept events (and this one)
    /// when it holds twice [`KEEP`].
    fn append(&self, line: &Line) -> std::io::Result<()> {
        let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
        text.push('\n');
        let mut journal = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if journal.lines + 1 >= 2 * self.keep {
            let mut all = String::new();
            {
                let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                let skip = (state.kept.len() + 1).saturating_sub(self.keep);
                for event in state.kept.iter().skip(skip) {
                    all.push_str(&serde_json::to_string(&Line::from(event)).map_err(std::io::Error::other)?);
                    all.push('\n');
                }
            }
            all.push_str(&text);
            common::durable::write_atomically(&self.path, all.as_bytes(), Some(0o600))?;
            let file = std::fs::OpenOptions::new().append(true).open(&self.path)?;
            *journal = Journal { file, lines: all.lines().count() };
            return Ok(());
        }
        journal.file.write_all(text.as_bytes())?;
        journal.file.sync_data()?;
        journal.lines += 1;
        Ok(())
    }
}

/// The last GPU health each GPU's events told (uuid → state and reason).
pub fn last_gpu_health(events: &Events) -> std::collections::BTreeMap<String, (String, String)> {
    let state = events.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
    state
        .kept
        .iter()
        .filter(|e| e.kind == pb::EventKind::GpuHealth as i32)
        .map(|e| (e.gpu_uuid.clone(), (e.gpu_state.clone(), e.reason.clone())))
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn died(id: &str, code: i64) -> pb::Event {
        pb::Event {
            kind: pb::EventKind::Died as i32,
            container_id: id.into(),
            exit_code: code,
            reason: format!("exited with code {code}"),
            ..Default::default()
        }
    }

    async fn collect(events: &Events, request: pb::WatchEventsRequest, n: usize) -> Vec<pb::Event> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(events.watch(&request, tx).unwrap());
        let mut got = Vec::new();
        while got.len() < n {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await;
            got.push(next.expect("an event within 5 s").expect("the stream is open"));
        }
        got
    }

    #[tokio::test]
    async fn numbers_survive_a_reopen_and_a_watch_resumes_after_the_last_seen() {
        let dir = tempfile::tempdir().unwrap();
        let events = Events::open(dir.path()).unwrap();
        for code in 0..3 {
            events.record(died("a", code)).await;
        }
        let events = Events::open(dir.path()).unwrap();
        assert_eq!(events.newest(), 3);
        events.record(died("b", 9)).await;
        let got = collect(&events, pb::WatchEventsRequest { after_seq: 2, ..Default::default() }, 2).await;
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!((got[1].container_id.as_str(), got[1].exit_code), ("b", 9));
        assert!(got[1].time_ms > 0);
    }

    #[tokio::test]
    async fn a_watch_gets_new_events_of_its_container_only() {
        let dir = tempfile::tempdir().unwrap();
        let events = Events::open(dir.path()).unwrap();
        events.record(died("a", 1)).await;
        let request = pb::WatchEventsRequest { only_new: true, container_id: "b".into(), ..Default::default() };
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(events.watch(&request, tx).unwrap());
        events.record(died("a", 2)).await;
        events.record(died("b", 3)).await;
        let got = rx.recv().await.unwrap();
        assert_eq!((got.seq, got.container_id.as_str()), (3, "b"));
    }

    #[tokio::test]
    async fn a_torn_last_line_is_skipped_and_the_next_event_starts_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let events = Events::open(dir.path()).unwrap();
        events.record(died("a", 1)).await;
        drop(events);
        let path = dir.path().join(FILE);
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"seq":2,"time_ms":1,"kind":"di"#).unwrap();
        let events = Events::open(dir.path()).unwrap();
        assert_eq!(events.newest(), 1);
        events.record(died("a", 2)).await;
        let events = Events::open(dir.path()).unwrap();
        assert_eq!(events.newest(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    #[tokio::test]
    async fn asking_for_what_is_gone_or_not_yet_there_is_refused_with_the_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let events = Events::open_keeping(dir.path(), 10).unwrap();
        for code in 0..15 {
            events.record(died("a", code)).await;
        }
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let gone = events.watch(&pb::WatchEventsRequest { after_seq: 3, ..Default::default() }, tx.clone());
        assert_eq!(gone.err(), Some(WatchError::Gone { after: 3, gone: 5 }));
        let future = events.watch(&pb::WatchEventsRequest { after_seq: 99_999, ..Default::default() }, tx.clone());
        assert_eq!(future.err(), Some(WatchError::Future { after: 99_999, newest: 15 }));
        assert!(events.watch(&pb::WatchEventsRequest { after_seq: 5, ..Default::default() }, tx).is_ok());
        // The file was rewritten with the kept ones once it held twice as many.
        for code in 15..20 {
            events.record(died("a", code)).await;
        }
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(text.lines().count(), 10, "{text}");
        let events = Events::open_keeping(dir.path(), 10).unwrap();
        assert_eq!(events.newest(), 20);
    }

    #[test]
    fn kinds_are_written_by_name() {
        let line = Line::from(&died("a", 137));
        assert_eq!(line.kind, "died");
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.contains(r#""kind":"died""#) && !text.contains("gpu_uuid"), "{text}");
        assert_eq!(serde_json::from_str::<Line>(&text).unwrap().event().unwrap().exit_code, 137);
    }
}
