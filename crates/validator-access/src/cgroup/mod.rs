//! A cgroup for each validator command: the command enters it before it execs
//! ([`common::process::ProcessSpec::in_cgroup`]), so everything it starts lives there however
//! it detaches (`setsid`, a double fork), held to the memory, process and CPU limits of
//! `[validator]`; and the cgroup is killed whole when the command ends, times out, or its
//! session ends (revocation, expiry, disconnect).
//!
//! Both cgroup versions, detected at start from `/proc/self/mountinfo` and `/proc/self/cgroup`:
//! - **v2** (one unified hierarchy, `/sys/fs/cgroup` on current distributions): commands go in
//!   `<our cgroup>/basilica-validator/<instance>-<command>`. cgroup v2 lets a cgroup hand its controllers
//!   to children only while it holds no process itself, so when the node's own processes share
//!   our cgroup (systemd's `Delegate=yes` unit, a container's cgroup namespace) they are moved
//!   to the leaf `<our cgroup>/basilica-node` first. Killed with `cgroup.kill` (Linux 5.14), or
//!   by freezing it and sending SIGKILL to each process.
//! - **v1** (the `pids`, `memory`, `cpu` and `freezer` hierarchies, also on hybrid hosts):
//!   `<our cgroup in each>/basilica-validator/<instance>-<command>`; killed by freezing it, SIGKILL to each
//!   process, thawing.
//!
//! Either way the kill waits until the cgroup is empty, then removes it. Cgroups an earlier run
//! left behind (a crash, `kill -9`) are killed at start. Without usable cgroups the service
//! does not start: validator commands never run unconfined. Finding the hierarchies is
//! [`hierarchy`]'s; making, limiting and killing cgroups is this module's.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

pub use hierarchy::Hierarchy;

pub mod hierarchy;

/// The directory of validator commands under our cgroup.
pub const COMMANDS_DIR: &str = "basilica-validator";
/// The leaf the node's own processes move to (cgroup v2) so that our cgroup holds none.
pub const NODE_DIR: &str = "basilica-node";
/// The v2 controllers a command's limits need.
pub(crate) const V2_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// The v1 hierarchies a command joins: its limits, and the freezer that makes a kill race-free.
pub(crate) const V1_CONTROLLERS: [&str; 4] = ["pids", "memory", "cpu", "freezer"];
/// The CFS period of `cpu.max` / `cpu.cfs_period_us`.
const CPU_PERIOD_US: u64 = 100_000;
/// Longest wait for a killed cgroup to empty, or for a freeze to take.
const KILL_DEADLINE: Duration = Duration::from_secs(2);

/// What a validator command may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u32,
    /// Cores' worth of CPU time.
    pub cpus: f64,
}

impl Limits {
    /// The CFS quota of `cpus`, in microseconds per [`CPU_PERIOD_US`] (at least 1 ms).
    fn cpu_quota_us(&self) -> u64 {
        ((self.cpus * CPU_PERIOD_US as f64).round() as u64).max(1000)
    }
}

/// Why cgroups cannot be used, or a cgroup cannot be made or killed; names the path.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "no cgroup hierarchy for validator commands: neither cgroup v2 with the memory, pids and cpu controllers nor cgroup v1 pids, memory, cpu and freezer hierarchies are mounted (missing: {missing})"
    )]
    NoHierarchy { missing: String },
    #[error(
        "{path}: the `{controller}` controller is not available to this service; delegate it (systemd: Delegate=yes)"
    )]
    NotDelegated { path: PathBuf, controller: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: processes {pids:?} still there {waited:?} after SIGKILL")]
    NotEmpty { path: PathBuf, pids: Vec<u32>, waited: Duration },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.to_owned(), source }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.to_owned(), source })
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io(path))
}

/// The cgroups of validator commands: made ready at start, one made per command.
#[derive(Debug)]
pub struct Cgroups {
    version: Version,
    /// v2: one directory; v1: one per hierarchy (distinct mounts only).
    parents: Vec<PathBuf>,
    /// `<instance>-`, the start of the name of each command's cgroup.
    prefix: String,
    limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

impl Cgroups {
    /// Makes `hierarchy` ready for the commands of `instance` (on v2: moves the node's
    /// processes out of our cgroup and enables the controllers), and kills what an earlier run
    /// of the same instance left. `instance` (`[A-Za-z0-9-]`, this executor's id) starts the
    /// name of each command's cgroup, which keeps the commands of two services on one host
    /// (tests) apart.
    pub fn set_up(hierarchy: &Hierarchy, instance: &str, limits: Limits) -> Result<Self, CgroupError> {
        match hierarchy {
            Hierarchy::V2 { ours } => Self::set_up_v2(ours, instance, &V2_CONTROLLERS, limits),
            Hierarchy::V1 { ours } => {
                let mut parents: Vec<PathBuf> = Vec::new();
                for (_, dir) in ours {
                    let parent = dir.join(COMMANDS_DIR);
                    if !parents.contains(&parent) {
                        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
                        parents.push(parent);
                    }
                }
                let cgroups = Self { version: Version::V1, parents, prefix: format!("{instance}-"), limits };
                cgroups.sweep()?;
                Ok(cgroups)
            }
        }
    }

    /// [`Self::set_up`] on this process's hierarchy.
    pub fn for_this_process(instance: &str, limits: Limits) -> Result<Self, CgroupError> {
        Self::set_up(&Hierarchy::of_this_process()?, instance, limits)
    }

    /// v2 under `ours` with `controllers` enabled for the commands (tests run it on a hierarchy
    /// without controllers).
    pub fn set_up_v2(ours: &Path, instance: &str, controllers: &[&str], limits: Limits) -> Result<Self, CgroupError> {
        let wanted: String = controllers.iter().map(|c| format!("+{c} ")).collect();
        let enable = |dir: &Path| -> Result<(), CgroupError> {
            let subtree = dir.join("cgroup.subtree_control");
            let enabled = read(&subtree)?;
            if controllers.iter().all(|c| enabled.split_whitespace().any(|e| e == *c)) {
                return Ok(());
            }
            write(&subtree, wanted.trim_end())
        };
        let available = read(&ours.join("cgroup.controllers"))?;
        for controller in controllers {
            if !available.split_whitespace().any(|c| c == *controller) {
                return Err(CgroupError::NotDelegated { path: ours.to_owned(), controller: (*controller).to_owned() });
            }
        }
        if let Err(e) = enable(ours) {
            // EBUSY: our cgroup holds processes (ours, the launcher's, its other services'):
            // they move to a leaf beside the commands' directory.
            if !matches!(&e, CgroupError::Io { source, .. } if source.raw_os_error() == Some(nix::libc::EBUSY)) {
                return Err(e);
            }
            evacuate(ours, &ours.join(NODE_DIR))?;
            enable(ours)?;
        }
        let parent = ours.join(COMMANDS_DIR);
        match std::fs::create_dir(&parent) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(io(&parent)(e)),
            _ => {}
        }
        enable(&parent)?;
        let cgroups = Self { version: Version::V2, parents: vec![parent], prefix: format!("{instance}-"), limits };
        cgroups.sweep()?;
        Ok(cgroups)
    }

    /// Kills every command's cgroup: at shutdown. (The commands' directory stays: another
    /// instance may be using it.)
    pub fn close(&self) -> Result<(), CgroupError> {
        self.sweep()
    }

    /// Kills and removes every cgroup of this instance's commands there is: at start, those of
    /// an earlier run.
    fn sweep(&self) -> Result<(), CgroupError> {
        let mut names = BTreeSet::new();
        for parent in &self.parents {
            for entry in std::fs::read_dir(parent).map_err(io(parent))? {
                let entry = entry.map_err(io(parent))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.file_type().is_ok_and(|t| t.is_dir()) && name.starts_with(&self.prefix) {
                    names.insert(name);
                }
            }
        }
        for name in names {
            let dirs = self.parents.iter().map(|p| p.join(&name)).collect();
            let leftover = CommandCgroup::new(self.version, dirs);
            tracing::warn!(cgroup = %name, "killing the cgroup of a validator command an earlier run left");
            leftover.kill()?;
        }
        Ok(())
    }

    /// A new cgroup `<instance>-<name>` (`name`: `[A-Za-z0-9-]`) with the limits, its
    /// `cgroup.procs` files open.
    pub fn create(&self, name: &str) -> Result<CommandCgroup, CgroupError> {
        debug_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'), "{name}");
        let name = format!("{}{name}", self.prefix);
        let dirs: Vec<PathBuf> = self.parents.iter().map(|p| p.join(&name)).collect();
        for (i, dir) in dirs.iter().enumerate() {
            if let Err(e) = std::fs::create_dir(dir) {
                for made in &dirs[..i] {
                    let _ = std::fs::remove_dir(made);
                }
                return Err(io(dir)(e));
            }
        }
        // From here on, dropping `cgroup` (an error below) removes what was made.
        let mut cgroup = CommandCgroup::new(self.version, dirs);
        self.limit(&cgroup.dirs)?;
        for dir in &cgroup.dirs {
            let path = dir.join("cgroup.procs");
            let file = OpenOptions::new().write(true).open(&path).map_err(io(&path))?;
            cgroup.procs.push(Arc::new(OwnedFd::from(file)));
        }
        Ok(cgroup)
    }

    /// Writes the limits into a new command's directories.
    fn limit(&self, dirs: &[PathBuf]) -> Result<(), CgroupError> {
        let l = self.limits;
        let quota = l.cpu_quota_us();
        for dir in dirs {
            let has = |file: &str| dir.join(file).exists();
            let set = |file: &str, value: String| write(&dir.join(file), &value);
            match self.version {
                Version::V2 => {
                    // A hierarchy without a controller (tests) has no file for it.
                    if has("memory.max") {
                        set("memory.max", l.memory_bytes.to_string())?;
                    }
                    if has("memory.swap.max") {
                        set("memory.swap.max", "0".into())?;
                    }
                    if has("pids.max") {
                        set("pids.max", l.pids.to_string())?;
                    }
                    if has("cpu.max") {
                        set("cpu.max", format!("{quota} {CPU_PERIOD_US}"))?;
                    }
                }
                Version::V1 => {
                    if has("memory.limit_in_bytes") {
                        set("memory.limit_in_bytes", l.memory_bytes.to_string())?;
                        // Swap accounting on: memory and swap together within the same bound.
                        if has("memory.memsw.limit_in_bytes") {
                            set("memory.memsw.limit_in_bytes", l.memory_bytes.to_string())?;
                        }
                    }
                    if has("pids.max") {
                        set("pids.max", l.pids.to_string())?;
                    }
                    if has("cpu.cfs_quota_us") {
                        set("cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
                        set("cpu.cfs_quota_us", quota.to_string())?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Moves every process of `from` into `to` (made if missing), until `from` holds none.
fn evacuate(from: &Path, to: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(to) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(io(to)(e)),
        _ => {}
    }
    let target = to.join("cgroup.procs");
    let deadline = Instant::now() + KILL_DEADLINE;
    loop {
        let pids = pids_in(from)?;
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CgroupError::NotEmpty { path: from.to_owned(), pids, waited: KILL_DEADLINE });
        }
        for pid in pids {
            match std::fs::write(&target, pid.to_string()) {
                // Gone meanwhile.
                Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => {}
                other => other.map_err(io(&target))?,
            }
        }
    }
}

/// The processes in cgroup `dir` (its `cgroup.procs`); none when it is gone.
fn pids_in(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).filter(|p| *p > 0).collect()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(&path)(e)),
    }
}

/// The cgroup of one command.
#[derive(Debug)]
pub struct CommandCgroup {
    version: Version,
    /// v2: one directory; v1: one per hierarchy.
    dirs: Vec<PathBuf>,
    /// Its `cgroup.procs` files, open for the child to enter.
    procs: Vec<Arc<OwnedFd>>,
    /// Killed and removed already; held while a kill runs, so two never interleave.
    killed: Mutex<bool>,
    /// A kill was tried (it may have failed: then the next start's sweep finishes it).
    tried: AtomicBool,
}

impl CommandCgroup {
    fn new(version: Version, dirs: Vec<PathBuf>) -> Self {
        Self { version, dirs, procs: Vec::new(), killed: Mutex::new(false), tried: AtomicBool::new(false) }
    }

    /// The open `cgroup.procs` files, for [`common::process::ProcessSpec::in_cgroup`].
    pub fn procs_files(&self) -> Vec<Arc<OwnedFd>> {
        self.procs.clone()
    }

    /// The directories (v2: one; v1: one per hierarchy).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The processes in it now.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        self.dirs.first().map_or(Ok(Vec::new()), |d| pids_in(d))
    }

    /// Kills everything in the cgroup, waits until it is empty, and removes it; once done,
    /// later calls do nothing. Blocking (it polls for a few milliseconds).
    pub fn kill(&self) -> Result<(), CgroupError> {
        let mut killed = self.killed.lock().unwrap_or_else(|e| e.into_inner());
        if *killed {
            return Ok(());
        }
        self.tried.store(true, Ordering::Relaxed);
        let Some(main) = self.dirs.first() else { return Ok(()) };
        let deadline = Instant::now() + KILL_DEADLINE;
        match self.version {
            Version::V2 if main.join("cgroup.kill").exists() => match std::fs::write(main.join("cgroup.kill"), "1") {
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                other => other.map_err(io(main))?,
            },
            Version::V2 => self.freeze_and_kill(main, "cgroup.freeze", ("1", "0"), deadline)?,
            Version::V1 => {
                let freezer = self.dirs.iter().find(|d| d.join("freezer.state").exists()).unwrap_or(main);
                self.freeze_and_kill(freezer, "freezer.state", ("FROZEN", "THAWED"), deadline)?;
            }
        }
        loop {
            let pids = pids_in(main)?;
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(CgroupError::NotEmpty { path: main.clone(), pids, waited: KILL_DEADLINE });
            }
            // A process that was between fork and entering the cgroup when the kill came.
            for pid in pids {
                let _ = common::process::send_signal(pid, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        for dir in &self.dirs {
            match std::fs::remove_dir(dir) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(io(dir)(e)),
                _ => {}
            }
        }
        *killed = true;
        Ok(())
    }

    /// Freezes `dir` (so nothing forks while the kill goes round), sends SIGKILL to every
    /// process, thaws it (a frozen v1 process dies only once thawed).
    fn freeze_and_kill(
        &self,
        dir: &Path,
        file: &str,
        (freeze, thaw): (&str, &str),
        deadline: Instant,
    ) -> Result<(), CgroupError> {
        let control = dir.join(file);
        match std::fs::write(&control, freeze) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            other => other.map_err(io(&control))?,
        }
        while !self.frozen(dir)? && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        for pid in pids_in(dir)? {
            let _ = common::process::send_signal(pid, Signal::SIGKILL);
        }
        write(&control, thaw)
    }

    fn frozen(&self, dir: &Path) -> Result<bool, CgroupError> {
        Ok(match self.version {
            Version::V2 => read(&dir.join("cgroup.events"))?.lines().any(|l| l.trim() == "frozen 1"),
            Version::V1 => read(&dir.join("freezer.state"))?.trim() == "FROZEN",
        })
    }
}

impl Drop for CommandCgroup {
    /// A cgroup nobody killed (its command never started) is removed; one with processes is
    /// killed first. One whose kill failed is left to the next start's sweep (the error was
    /// reported then; trying again here would block for as long once more).
    fn drop(&mut self) {
        if self.tried.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.kill() {
            tracing::error!(error = %e, "cannot remove the cgroup of a validator command");
        }
    }
}

/// Cgroups for unit tests: a fresh instance on this host's hierarchy, swept when dropped.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Generous limits: what a test command needs.
    pub(crate) const LIMITS: Limits = Limits { memory_bytes: 1 << 30, pids: 256, cpus: 2.0 };

    /// Kills what is left of its instance when dropped.
    #[derive(Debug)]
    pub(crate) struct TestCgroups(pub(crate) Arc<Cgroups>);

    impl std::ops::Deref for TestCgroups {
        type Target = Arc<Cgroups>;
        fn deref(&self) -> &Arc<Cgroups> {
            &self.0
        }
    }

    impl Drop for TestCgroups {
        fn drop(&mut self) {
            let _ = self.0.close();
        }
    }

    /// Cgroups of a new instance, or None (the test is skipped; failed under
    /// `REQUIRE_TEST_TOOLS`) without root.
    pub(crate) fn cgroups() -> Option<TestCgroups> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        if !e2e::require_tool("root, to make cgroups", nix::unistd::Uid::effective().is_root()) {
            return None;
        }
        let instance = format!("test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        Some(TestCgroups(Arc::new(Cgroups::for_this_process(&instance, LIMITS).unwrap())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { memory_bytes: 64 << 20, pids: 32, cpus: 0.5 };

    /// The v2 file layout, on a directory that stands for the hierarchy: controllers enabled
    /// down to the commands' directory, the node's processes moved out first when our cgroup
    /// held them, the limits written.
    #[test]
    fn v2_layout_on_a_fake_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let ours = root.path();
        std::fs::write(ours.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        std::fs::write(ours.join("cgroup.subtree_control"), "").unwrap();
        // The fake cannot refuse the write with EBUSY, so nothing is moved here; the move is
        // checked on a real hierarchy below.
        let parent = ours.join(COMMANDS_DIR);
        std::fs::create_dir_all(&parent).unwrap();
        std::fs::write(parent.join("cgroup.subtree_control"), "").unwrap();
        let cgroups = Cgroups::set_up_v2(ours, "e-1", &V2_CONTROLLERS, LIMITS).unwrap();
        for dir in [ours, &parent] {
            let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap();
            assert_eq!(enabled, "+memory +pids +cpu", "{}", dir.display());
        }
        // A real kernel makes these files with the directory; the fake gets them by hand.
        let dir = parent.join("e-1-s-1-1");
        let make = || {
            std::fs::create_dir(&dir).unwrap();
            for file in ["memory.max", "memory.swap.max", "pids.max", "cpu.max", "cgroup.procs"] {
                std::fs::write(dir.join(file), "").unwrap();
            }
        };
        make();
        let err = cgroups.create("s-1-1").unwrap_err().to_string();
        assert!(err.contains("basilica-validator/e-1-s-1-1") && err.contains("exists"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        // Written through a cgroup made by hand, as create would write it.
        make();
        cgroups.limit(std::slice::from_ref(&dir)).unwrap();
        let file = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(
            [file("memory.max"), file("memory.swap.max"), file("pids.max"), file("cpu.max")],
            ["67108864", "0", "32", "50000 100000"]
        );
        let missing = tempfile::tempdir().unwrap();
        std::fs::write(missing.path().join("cgroup.controllers"), "cpu pids\n").unwrap();
        let err = Cgroups::set_up_v2(missing.path(), "e-1", &V2_CONTROLLERS, LIMITS).unwrap_err().to_string();
        assert!(err.contains("`memory` controller is not available") && err.contains("Delegate=yes"), "{err}");
    }

    /// Root and a writable cgroup hierarchy, or the test is skipped (failed under
    /// `REQUIRE_TEST_TOOLS`).
    fn can_make_cgroups() -> bool {
        e2e::require_tool("root, to make cgroups", nix::unistd::Uid::effective().is_root())
    }

    /// A command started in its cgroup, with two detached grandchildren (`setsid` and a
    /// double fork): every one is in the cgroup, and one kill ends them all and removes it.
    async fn kill_takes_every_process(cgroups: &Cgroups) {
        let cgroup = cgroups.create("s-test-1").unwrap();
        let script = "setsid sh -c 'sleep 1000 & sleep 1000' </dev/null >/dev/null 2>&1 & exec sleep 1000";
        let mut child = common::process::ProcessSpec::new("sh")
            .args(["-c", script])
            .in_cgroup(cgroup.procs_files())
            .spawn_interactive()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pids = cgroup.pids().unwrap();
        while pids.len() < 4 {
            assert!(Instant::now() < deadline, "not all in the cgroup: {pids:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
            pids = cgroup.pids().unwrap();
        }
        assert!(pids.contains(&child.id().unwrap()), "{pids:?}");
        cgroup.kill().unwrap();
        for pid in pids {
            assert!(!e2e::process_alive(pid), "{pid} outlived the kill");
        }
        assert!(!child.wait().await.unwrap().success());
        for dir in cgroup.dirs() {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }

    /// The hierarchy this host gives this process (v1 here, v2 on current distributions).
    #[tokio::test]
    async fn commands_die_whole_in_this_host_s_cgroups() {
        if !can_make_cgroups() {
            return;
        }
        let hierarchy = Hierarchy::of_this_process().unwrap();
        hierarchy.probe().unwrap();
        let instance = format!("test-{}", std::process::id());
        let cgroups = Cgroups::set_up(&hierarchy, &instance, LIMITS).unwrap();
        // The limits, as the kernel shows them.
        let cgroup = cgroups.create("s-limits-1").unwrap();
        let shown: Vec<String> = cgroup
            .dirs()
            .iter()
            .flat_map(|d| {
                ["memory.max", "memory.limit_in_bytes", "pids.max", "cpu.max", "cpu.cfs_quota_us"]
                    .iter()
                    .filter_map(move |f| std::fs::read_to_string(d.join(f)).ok())
            })
            .map(|v| v.trim().to_owned())
            .collect();
        for value in ["67108864", "32"] {
            assert!(shown.iter().any(|s| s == value), "{value} not in {shown:?}");
        }
        assert!(shown.iter().any(|s| s == "50000" || s == "50000 100000"), "{shown:?}");
        drop(cgroup);
        kill_takes_every_process(&cgroups).await;
        // A cgroup left by an earlier run is killed when the next one sets up.
        let left = cgroups.create("s-left-1").unwrap();
        let mut child = common::process::ProcessSpec::new("sleep")
            .arg("1000")
            .in_cgroup(left.procs_files())
            .spawn_interactive()
            .unwrap();
        std::mem::forget(left);
        let again = Cgroups::set_up(&hierarchy, &instance, LIMITS).unwrap();
        assert!(!child.wait().await.unwrap().success());
        again.close().unwrap();
        for parent in &again.parents {
            let ours = std::fs::read_dir(parent).unwrap().filter_map(|e| e.ok()?.file_name().into_string().ok());
            let left: Vec<String> = ours.filter(|n| n.starts_with(&instance)).collect();
            assert!(left.is_empty(), "{left:?} left behind in {}", parent.display());
        }
    }

    /// cgroup v2 on the real kernel when the host mounts it (here: the hybrid host's unified
    /// hierarchy, which has no controllers, so `cgroup.kill`, the move of the node's processes
    /// and the layout are checked, the limits by the fake above).
    #[tokio::test]
    async fn v2_kill_and_move_on_the_kernel_s_unified_hierarchy() {
        let mountinfo = read(Path::new("/proc/self/mountinfo")).unwrap();
        let unified = hierarchy::mounts(&mountinfo).into_iter().find(|m| m.controllers.is_none() && m.root == "/");
        let Some(unified) = unified.map(|m| m.point) else {
            e2e::require_tool("a cgroup v2 hierarchy", false);
            return;
        };
        if !can_make_cgroups() {
            return;
        }
        let ours = unified.join(format!("basilica-test-{}", std::process::id()));
        std::fs::create_dir(&ours).unwrap();
        // A process of "the node" in our cgroup moves to the leaf.
        let mut node = common::process::ProcessSpec::new("sleep").arg("1000").spawn_interactive().unwrap();
        let pid = node.id().unwrap();
        std::fs::write(ours.join("cgroup.procs"), pid.to_string()).unwrap();
        evacuate(&ours, &ours.join(NODE_DIR)).unwrap();
        assert_eq!(pids_in(&ours).unwrap(), Vec::<u32>::new());
        assert_eq!(pids_in(&ours.join(NODE_DIR)).unwrap(), vec![pid]);
        let cgroups = Cgroups::set_up_v2(&ours, "e-1", &[], LIMITS).unwrap();
        kill_takes_every_process(&cgroups).await;
        cgroups.close().unwrap();
        node.start_kill().unwrap();
        node.wait().await.unwrap();
        let left: Vec<_> = std::fs::read_dir(ours.join(COMMANDS_DIR)).unwrap().filter_map(|e| e.ok()).collect();
        assert!(left.iter().all(|e| !e.path().is_dir()), "close left {left:?}");
        for dir in [ours.join(NODE_DIR), ours.join(COMMANDS_DIR), ours.clone()] {
            std::fs::remove_dir(&dir).unwrap();
        }
    }
}
