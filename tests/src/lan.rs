//! A network namespace reached through a veth pair, standing in for the provider's LAN and the
//! internet, for tests of what an online tenant can reach: [`PUBLIC`] and every address of
//! [`BLOCKED`] answer `hello` on port 8080 from inside it, routed from the host (the routes go
//! with the link). Removed on drop.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::sync::Arc;
use std::time::Duration;

use common::process::ProcessSpec;

use crate::process::sh;

/// A public address (TEST-NET-2) that tenants with `allow_internet = true` reach. The link is a
/// /30: routing a whole /24 to the namespace would also capture whatever else of the machine's
/// lives there (the package registries of this workplace answer on TEST-NET-3, 203.0.113.80,
/// and a /24 of it here cut them off from every other test while a LAN existed).
pub const PUBLIC: &str = "198.51.100.2";
/// The host's end of the link: the node's address as the namespace sees it.
pub const HOST_END: &str = "198.51.100.1";

/// Addresses no tenant may reach, one per kind: private, cloud metadata (169.254.169.254),
/// Azure's platform address, benchmarking, "this network" and the reserved block above
/// multicast.
pub const BLOCKED: [&str; 6] = ["10.211.0.2", "169.254.169.254", "168.63.129.16", "198.18.0.2", "0.1.2.3", "240.0.0.2"];

/// The namespace and its listener.
#[derive(Debug)]
pub struct Lan {
    name: String,
    host_if: String,
    listener: Option<tokio::process::Child>,
    /// One at a time in a test process: they share addresses and routes.
    _one_at_a_time: tokio::sync::OwnedMutexGuard<()>,
    /// And one at a time on the machine: test binaries run in parallel, and two LANs' routes to
    /// the same blocked addresses would send one test's probes into the other's namespace.
    _machine_lock: std::fs::File,
}

/// The file whose exclusive lock is held while a LAN exists.
const MACHINE_LOCK: &str = "/run/lock/basilica-test-lan.lock";

static ONE_AT_A_TIME: std::sync::LazyLock<Arc<tokio::sync::Mutex<()>>> = std::sync::LazyLock::new(Arc::default);

impl Lan {
    /// Sets it up (as root), once the test process's previous one is gone; one that a crashed
    /// run left behind is removed.
    pub async fn new() -> Self {
        let one_at_a_time = ONE_AT_A_TIME.clone().lock_owned().await;
        let machine_lock = tokio::task::spawn_blocking(|| {
            std::fs::create_dir_all("/run/lock").unwrap();
            let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(MACHINE_LOCK).unwrap();
            // Released when the file closes, even if this process dies.
            file.lock().unwrap();
            file
        })
        .await
        .unwrap();
        let pid = std::process::id();
        let (name, host_if, ns_if) = (format!("btlan{pid}"), format!("btl{pid}h"), format!("btl{pid}n"));
        // Left behind by a process that is gone (a running test's own stays): its routes would clash.
        let gone = |tag: &str| tag.parse::<u32>().is_ok_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists());
        for entry in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
            let stale = entry.file_name().to_string_lossy().into_owned();
            if stale.strip_prefix("btl").and_then(|s| s.strip_suffix('h')).is_some_and(gone) {
                sh("ip", &["link", "del", &stale]).await;
            }
        }
        let (_, namespaces) = sh("ip", &["netns", "list"]).await;
        for stale in namespaces.split_whitespace().filter(|n| n.strip_prefix("btlan").is_some_and(gone)) {
            sh("ip", &["netns", "del", stale]).await;
        }
        let mut steps: Vec<Vec<String>> = [
            vec!["netns", "add", &name],
            vec!["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if],
            vec!["link", "set", &ns_if, "netns", &name],
            vec!["addr", "add", &format!("{HOST_END}/30"), "dev", &host_if],
            vec!["link", "set", &host_if, "up"],
            vec!["-n", &name, "addr", "add", &format!("{PUBLIC}/30"), "dev", &ns_if],
            vec!["-n", &name, "link", "set", &ns_if, "up"],
            vec!["-n", &name, "link", "set", "lo", "up"],
            vec!["-n", &name, "route", "add", "default", "via", HOST_END],
        ]
        .iter()
        .map(|step| step.iter().map(|s| (*s).to_owned()).collect())
        .collect();
        for address in BLOCKED {
            let host = format!("{address}/32");
            steps.push(["-n", &name, "addr", "add", &host, "dev", &ns_if].map(str::to_owned).to_vec());
            steps.push(["route", "replace", &host, "via", PUBLIC].map(str::to_owned).to_vec());
        }
        for step in steps {
            let step: Vec<&str> = step.iter().map(String::as_str).collect();
            let (ok, out) = sh("ip", &step).await;
            assert!(ok, "ip {}: {out}", step.join(" "));
        }
        let mut lan = Self {
            name: name.clone(),
            host_if,
            listener: None,
            _one_at_a_time: one_at_a_time,
            _machine_lock: machine_lock,
        };
        let listener = ProcessSpec::new("ip")
            .args(["netns", "exec", &name, "busybox", "nc", "-ll", "-p", "8080", "-e", "echo", "hello"])
            .spawn_supervised()
            .unwrap();
        lan.listener = Some(listener);
        tokio::time::sleep(Duration::from_millis(300)).await;
        lan
    }

    /// Starts `args` inside the namespace, stdout piped and stdin held open (`nc` half-closes
    /// its connection when its stdin ends); killed by the caller or when this test process dies.
    pub fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        ProcessSpec::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args.iter().copied())
            .spawn_interactive()
            .unwrap()
    }

    /// Takes it down.
    pub async fn remove(mut self) {
        if let Some(mut child) = self.listener.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        sh("ip", &["link", "del", &self.host_if]).await;
        sh("ip", &["netns", "del", &self.name]).await;
        self.name.clear();
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if let Some(child) = &mut self.listener {
            let _ = child.start_kill();
        }
        if self.name.is_empty() {
            return;
        }
        // A failed test: Drop cannot wait for a process, so these run detached (and the next
        // run removes what they miss).
        for args in [vec!["link", "del", self.host_if.as_str()], vec!["netns", "del", self.name.as_str()]] {
            let _ = ProcessSpec::new("ip").args(args).spawn_supervised();
        }
    }
}
