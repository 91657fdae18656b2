//! The processes an exec started inside a container, seen from the host: the service runs as
//! root in the host's PID namespace, so the engine's host PID of an exec is a process here,
//! and its descendants are found by walking `/proc`. A process is known by its PID and its
//! start time, so a PID used again by another process is never mistaken for it.
//!
//! An exec's processes live in the container's cgroup, which cannot be killed without the
//! container, so [`kill_tree`] kills the tree itself: it freezes it with SIGSTOP until a walk
//! finds nothing new (a frozen process cannot fork, and its children cannot escape to the
//! container's init by outliving it), then sends SIGKILL to all of it. Only processes in the
//! container's PID namespace are ever signalled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use nix::sys::signal::Signal;

/// How many walks [`kill_tree`] makes at most while the tree still grows: a fork bomb faster
/// than the walks is still killed, all but what it forked in the last round.
const MAX_WALKS: usize = 16;

/// One process on the host: its PID and its start time (clock ticks after boot), which
/// together name it even after the PID is used again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostProcess {
    pub pid: u32,
    start: u64,
}

/// What `/proc/<pid>/stat` says that matters here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    ppid: u32,
    start: u64,
    zombie: bool,
}

/// Parses `/proc/<pid>/stat`: the command name is in parentheses and may contain anything,
/// so the fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 3 (state), 4 (ppid) and 22 (starttime), counted from 1 in proc(5).
    Some(Stat {
        zombie: matches!(*fields.first()?, "Z" | "X"),
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

impl HostProcess {
    /// The process that has `pid` now, if one does.
    pub fn of(pid: u32) -> Option<Self> {
        stat(pid).map(|s| Self { pid, start: s.start })
    }

    /// Whether it still runs: the PID is there, the same process, and not a zombie.
    pub fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.start == self.start && !s.zombie)
    }
}

/// The PID namespace of a process (the target of `/proc/<pid>/ns/pid`).
fn pid_namespace(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Every process on the host and its parent.
fn parents() -> BTreeMap<u32, u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return BTreeMap::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?.ppid)))
        .collect()
}

/// `root` and its descendants, from one walk of `/proc`.
fn tree(root: u32) -> BTreeSet<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (pid, ppid) in parents() {
        children.entry(ppid).or_default().push(pid);
    }
    let mut found = BTreeSet::from([root]);
    let mut next = vec![root];
    while let Some(pid) = next.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            if found.insert(child) {
                next.push(child);
            }
        }
    }
    found
}

/// Kills `root` and all its descendants that share the PID namespace of `namespace_of` (the
/// container's init): frozen first, then killed. Returns how many were signalled; a root
/// that is gone (or is no longer the same process) kills nothing.
pub fn kill_tree(root: HostProcess, namespace_of: u32) -> usize {
    let Some(namespace) = pid_namespace(namespace_of) else { return 0 };
    if !root.alive() || pid_namespace(root.pid).as_ref() != Some(&namespace) {
        return 0;
    }
    let mut frozen = BTreeSet::new();
    for _ in 0..MAX_WALKS {
        let new: Vec<u32> = tree(root.pid)
            .into_iter()
            .filter(|pid| !frozen.contains(pid) && pid_namespace(*pid).as_ref() == Some(&namespace))
            .collect();
        if new.is_empty() {
            break;
        }
        for pid in new {
            if let Err(e) = common::process::send_signal(pid, Signal::SIGSTOP) {
                tracing::warn!(pid, error = %e, "cannot stop a process of an exec");
            }
            frozen.insert(pid);
        }
    }
    for &pid in &frozen {
        if let Err(e) = common::process::send_signal(pid, Signal::SIGKILL) {
            tracing::warn!(pid, error = %e, "cannot kill a process of an exec");
        }
    }
    frozen.len()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn stat_is_read_past_a_command_name_with_parentheses_and_spaces() {
        let line = "4242 (a) b (c) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(line), Some(Stat { ppid: 17, start: 987654, zombie: false }));
        let zombie = "7 (sh) Z 1 7 7 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 55 0 0";
        assert_eq!(parse_stat(zombie).map(|s| s.zombie), Some(true));
        assert_eq!(parse_stat("7 (sh) S"), None);
    }

    /// A shell with children and a grandchild dies whole; nothing else does.
    #[tokio::test]
    async fn a_tree_dies_whole() {
        let mut shell = common::process::ProcessSpec::new("sh")
            .args(["-c", "sleep 300 & (sleep 301 & wait) & wait"])
            .spawn_supervised()
            .unwrap();
        let mut bystander = common::process::ProcessSpec::new("sleep").arg("302").spawn_supervised().unwrap();
        let root = HostProcess::of(shell.id().unwrap()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tree(root.pid).len() < 4 {
            assert!(std::time::Instant::now() < deadline, "the tree never grew: {:?}", tree(root.pid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let members: Vec<HostProcess> = tree(root.pid).into_iter().filter_map(HostProcess::of).collect();
        assert_eq!(kill_tree(root, std::process::id()), members.len());
        shell.wait().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while members.iter().any(HostProcess::alive) {
            assert!(std::time::Instant::now() < deadline, "survivors: {members:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(HostProcess::of(bystander.id().unwrap()).unwrap().alive());
        // Gone is gone: a second kill signals nothing.
        assert_eq!(kill_tree(root, std::process::id()), 0);
        bystander.kill().await.unwrap();
    }
}
