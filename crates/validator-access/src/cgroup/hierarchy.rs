//! Where this process's cgroups are: cgroup v2 (the unified hierarchy) or v1 (the pids,
//! memory, cpu and freezer hierarchies, also on hybrid hosts), from `/proc/self/mountinfo` and
//! `/proc/self/cgroup`, and whether they can be used, before anything is changed.

use std::path::{Path, PathBuf};

use super::{COMMANDS_DIR, CgroupError, NODE_DIR, V1_CONTROLLERS, V2_CONTROLLERS, read};

/// The cgroup versions this host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy: our cgroup's directory.
    V2 { ours: PathBuf },
    /// v1: our cgroup's directory in each of the pids, memory, cpu and freezer hierarchies
    /// (one directory for controllers mounted together).
    V1 { ours: Vec<(String, PathBuf)> },
}

/// One line of `/proc/self/mountinfo` that mounts a cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mount {
    /// The path inside the hierarchy that is mounted (a container sees its own cgroup as `/`).
    pub(super) root: String,
    pub(super) point: PathBuf,
    /// `None` for cgroup2; the controllers of a v1 hierarchy.
    pub(super) controllers: Option<Vec<String>>,
}

/// The cgroup mounts of a `mountinfo` text.
pub(super) fn mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let (fstype, _source, options) = (right.next()?, right.next()?, right.next()?);
            let (root, point) = (unescape(fields.get(3)?), PathBuf::from(unescape(fields.get(4)?)));
            match fstype {
                "cgroup2" => Some(Mount { root, point, controllers: None }),
                "cgroup" => {
                    let controllers = options.split(',').filter(|o| V1_CONTROLLERS.contains(o)).map(str::to_owned);
                    Some(Mount { root, point, controllers: Some(controllers.collect()) })
                }
                _ => None,
            }
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match u8::from_str_radix(rest.get(i + 1..i + 4).unwrap_or(""), 8) {
            Ok(byte) => {
                out.push(char::from(byte));
                rest = &rest[i + 4..];
            }
            Err(_) => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `mount.point` joined with `path` (from `/proc/self/cgroup`) made relative to the mount's
/// root.
fn dir_of(mount: &Mount, path: &str) -> PathBuf {
    let relative = path.strip_prefix(mount.root.as_str()).unwrap_or(path);
    let mut dir = mount.point.clone();
    dir.extend(relative.split('/').filter(|c| !c.is_empty()));
    dir
}

/// Where this process's cgroups are, from the texts of `/proc/self/mountinfo` and
/// `/proc/self/cgroup`: v1 when the pids, memory, cpu and freezer controllers are all on v1
/// hierarchies (legacy and hybrid hosts), else v2.
fn find(mountinfo: &str, cgroup: &str) -> Result<Hierarchy, CgroupError> {
    let mounts = mounts(mountinfo);
    let paths: Vec<(Vec<&str>, &str)> = cgroup
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((controllers.split(',').filter(|c| !c.is_empty()).collect(), path))
        })
        .collect();
    let mut v1 = Vec::new();
    let mut missing = Vec::new();
    for controller in V1_CONTROLLERS {
        let mount = mounts.iter().find(|m| m.controllers.as_ref().is_some_and(|c| c.iter().any(|c| c == controller)));
        let path = paths.iter().find(|(c, _)| c.contains(&controller)).map(|(_, p)| *p);
        match (mount, path) {
            (Some(mount), Some(path)) => v1.push((controller.to_owned(), dir_of(mount, path))),
            _ => missing.push(controller),
        }
    }
    if missing.is_empty() {
        return Ok(Hierarchy::V1 { ours: v1 });
    }
    let unified = mounts
        .iter()
        .filter(|m| m.controllers.is_none())
        .min_by_key(|m| m.point != Path::new("/sys/fs/cgroup"))
        .zip(paths.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| *p));
    match unified {
        Some((mount, path)) => {
            let mut ours = dir_of(mount, path);
            // After a restart we are already in the node's leaf: our cgroup is its parent.
            if ours.file_name().is_some_and(|n| n == NODE_DIR)
                && let Some(parent) = ours.parent()
            {
                ours = parent.to_owned();
            }
            Ok(Hierarchy::V2 { ours })
        }
        None => Err(CgroupError::NoHierarchy { missing: missing.join(", ") }),
    }
}

impl Hierarchy {
    /// This process's cgroups.
    pub fn of_this_process() -> Result<Self, CgroupError> {
        find(&read(Path::new("/proc/self/mountinfo"))?, &read(Path::new("/proc/self/cgroup"))?)
    }

    /// Says what is wrong before anything is changed (for `executor validate`): a controller
    /// the v2 cgroup does not have, or a directory this process cannot write.
    pub fn probe(&self) -> Result<String, CgroupError> {
        let writable = |dir: &Path| {
            nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK)
                .map_err(|e| CgroupError::Io { path: dir.to_owned(), source: e.into() })
        };
        match self {
            Hierarchy::V2 { ours } => {
                let available = read(&ours.join("cgroup.controllers"))?;
                for controller in V2_CONTROLLERS {
                    if !available.split_whitespace().any(|c| c == controller) {
                        let controller = controller.to_owned();
                        return Err(CgroupError::NotDelegated { path: ours.clone(), controller });
                    }
                }
                writable(ours)?;
                Ok(format!("cgroup v2: {}/{COMMANDS_DIR}", ours.display()))
            }
            Hierarchy::V1 { ours } => {
                for (_, dir) in ours {
                    writable(dir)?;
                }
                let dirs: Vec<String> = ours.iter().map(|(c, d)| format!("{c} {}", d.display())).collect();
                Ok(format!("cgroup v1 under {COMMANDS_DIR}: {}", dirs.join(", ")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_are_found_on_v2_hybrid_and_container_hosts() {
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            find(v2, "0::/system.slice/basilica-executor.service\n").unwrap(),
            Hierarchy::V2 { ours: "/sys/fs/cgroup/system.slice/basilica-executor.service".into() }
        );
        // Restarted after its processes moved to the node's leaf: the same cgroup.
        assert_eq!(
            find(v2, "0::/system.slice/basilica-executor.service/basilica-node\n").unwrap(),
            Hierarchy::V2 { ours: "/sys/fs/cgroup/system.slice/basilica-executor.service".into() }
        );
        // A container with its own cgroup namespace: its cgroup is the mount's root.
        assert_eq!(find(v2, "0::/\n").unwrap(), Hierarchy::V2 { ours: "/sys/fs/cgroup".into() });

        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
            32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
            35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
            37 31 0:34 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer\n\
            39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let cgroup = "8:pids:/a\n4:memory:/docker/abc\n2:cpu,cpuacct:/\n6:freezer:/a\n0::/\n";
        let Hierarchy::V1 { ours } = find(hybrid, cgroup).unwrap() else { panic!("not v1") };
        assert_eq!(
            ours,
            [
                ("pids".to_owned(), PathBuf::from("/sys/fs/cgroup/pids/a")),
                ("memory".to_owned(), PathBuf::from("/sys/fs/cgroup/memory")),
                ("cpu".to_owned(), PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")),
                ("freezer".to_owned(), PathBuf::from("/sys/fs/cgroup/freezer/a")),
            ]
        );
        // Hybrid without a v1 freezer: the unified hierarchy.
        let no_freezer: String = hybrid.lines().filter(|l| !l.contains("freezer")).map(|l| format!("{l}\n")).collect();
        assert_eq!(find(&no_freezer, cgroup).unwrap(), Hierarchy::V2 { ours: "/sys/fs/cgroup/unified".into() });
        let err = find("", "").unwrap_err().to_string();
        assert!(err.contains("missing: pids, memory, cpu, freezer"), "{err}");
        assert_eq!(unescape(r"/a\040b\\"), r"/a b\\");
    }
}
