//! A container's workload options (issue 21 item 1): `/dev/shm`, ulimits, IPC mode,
//! entrypoint, working directory, user and NVIDIA driver capabilities, as a create asked for
//! them ([`pb::Workload`], zero meaning "the default"), resolved against `[docker.workload]` and
//! `[docker.gpu_config] driver_capabilities` ([`Workload::resolve`]), put into Docker's create
//! body ([`Workload::apply`]) and read back from the engine ([`from_inspect`]).

use bollard::models::{ContainerCreateBody, ContainerInspectResponse, ResourcesUlimits};
use common::config::workload::{MAX_NOFILE, MIN_NOFILE, MIN_RLIMIT_BYTES, rlimit_bytes_ok};
use common::config::{DriverCapability, IpcMode, WorkloadConfig};
use common::proto::runtime::v1 as pb;

/// A workload option that cannot be honoured, naming the field (`workload.…`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct WorkloadError {
    pub field: String,
    pub message: String,
}

/// The least `/dev/shm` a create may ask for: Docker's own default is 64 MiB.
pub const MIN_SHM_BYTES: u64 = 1 << 20;
/// The capabilities a create gets when it asks for none (those the config allows).
const DEFAULT_CAPABILITIES: [DriverCapability; 2] = [DriverCapability::Compute, DriverCapability::Utility];
/// The longest user name or group a create may give.
const MAX_NAME: usize = 32;
/// The longest working directory.
const MAX_PATH: usize = 4096;

/// What a container runs with, every field decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub shm_bytes: u64,
    /// Bytes, -1 unlimited.
    pub memlock: i64,
    pub nofile: u64,
    /// Bytes, -1 unlimited.
    pub stack: i64,
    pub ipc: IpcMode,
    /// Empty: the image's.
    pub entrypoint: Vec<String>,
    /// Empty: the image's.
    pub working_dir: String,
    /// Empty: the image's.
    pub user: String,
    pub driver_capabilities: Vec<DriverCapability>,
}

impl Default for Workload {
    /// What [`Workload::resolve`] gives an empty request under the default config, for a
    /// container of `shm_bytes` 64 MiB.
    fn default() -> Self {
        let config = WorkloadConfig::default();
        Self {
            shm_bytes: 64 << 20,
            memlock: config.memlock,
            nofile: config.nofile,
            stack: config.stack,
            ipc: IpcMode::Private,
            entrypoint: Vec::new(),
            working_dir: String::new(),
            user: String::new(),
            driver_capabilities: DEFAULT_CAPABILITIES.to_vec(),
        }
    }
}

fn error(field: &str, message: impl Into<String>) -> WorkloadError {
    WorkloadError { field: format!("workload.{field}"), message: message.into() }
}

/// The most this host lets the engine give a container, per rlimit (None: no bound of its
/// own). Raising a hard limit past one's own takes CAP_SYS_RESOURCE: where container-runtime
/// lacks it (a host that withholds it from everything, as some sandboxes and nested
/// containers do), the engine, started the same way, lacks it too, and runc fails to start a
/// container asking for more ("error setting rlimits ... operation not permitted"). There,
/// container-runtime's own hard limits are the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostLimits {
    pub memlock: Option<u64>,
    pub nofile: Option<u64>,
    pub stack: Option<u64>,
}

/// CAP_SYS_RESOURCE's bit in `/proc/self/status` `CapEff`.
const CAP_SYS_RESOURCE: u32 = 24;

impl HostLimits {
    /// This process's: none when it may raise hard limits, its own hard limits when not.
    pub fn probe() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let may_raise = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0);
        if may_raise {
            return Self::default();
        }
        use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
        let hard = |r: Resource| getrlimit(r).ok().map(|(_, hard)| hard).filter(|h| *h != RLIM_INFINITY);
        Self {
            memlock: hard(Resource::RLIMIT_MEMLOCK),
            nofile: hard(Resource::RLIMIT_NOFILE),
            stack: hard(Resource::RLIMIT_STACK),
        }
    }
}

/// One rlimit's bound: the configured one, or the host's where that is lower.
#[derive(Debug, Clone, Copy)]
struct Bound {
    /// None: unlimited.
    value: Option<u64>,
    /// Whether the host's is the lower.
    host: bool,
}

impl Bound {
    /// `configured` in the config's terms (-1 unlimited).
    fn new(configured: i64, host: Option<u64>) -> Self {
        let configured = u64::try_from(configured).ok();
        match (configured, host) {
            (Some(c), Some(h)) if h < c => Self { value: Some(h), host: true },
            (None, Some(h)) => Self { value: Some(h), host: true },
            _ => Self { value: configured, host: false },
        }
    }

    fn as_rlimit(self) -> i64 {
        self.value.map_or(-1, |v| v as i64)
    }

    fn whose(self) -> &'static str {
        if self.host {
            "this host's hard limit (container-runtime lacks CAP_SYS_RESOURCE, so the engine cannot raise it)"
        } else {
            "this executor's limit"
        }
    }
}

/// An rlimit in bytes as asked (`0` the default, `-1` unlimited) against its bound, which is
/// also the default.
fn rlimit_bytes(field: &str, asked: i64, bound: Bound) -> Result<i64, WorkloadError> {
    let shown = |v: i64| if v == -1 { "unlimited".to_owned() } else { v.to_string() };
    match (asked, bound.value) {
        (0, _) => Ok(bound.as_rlimit()),
        _ if !rlimit_bytes_ok(asked) => {
            Err(error(field, format!("{asked} is neither -1 (unlimited) nor at least {MIN_RLIMIT_BYTES} bytes")))
        }
        (_, Some(most)) if asked == -1 || asked as u64 > most => {
            Err(error(field, format!("{} is more than {} of {most}", shown(asked), bound.whose())))
        }
        _ => Ok(asked),
    }
}

/// `uid[:gid]` or `name[:group]`: letters, digits, `_`, `.`, `-`, not starting with `-` or `.`.
fn user_ok(user: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= MAX_NAME
            && !p.starts_with(['-', '.'])
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    };
    match user.split_once(':') {
        Some((name, group)) => part(name) && part(group),
        None => part(user),
    }
}

impl Workload {
    /// Checks `asked` against the config and fills in what it left empty. `memory_bytes` is
    /// the container's memory (the limits applied), which bounds its `/dev/shm`. Errors name
    /// the field `workload.…`.
    pub fn resolve(
        asked: &pb::Workload,
        memory_bytes: u64,
        config: &WorkloadConfig,
        host: &HostLimits,
        allowed_capabilities: &[DriverCapability],
    ) -> Result<Self, WorkloadError> {
        let shm_bytes = match asked.shm_bytes {
            0 => ((memory_bytes as f64 * config.shm_fraction.get()) as u64).max(MIN_SHM_BYTES).min(memory_bytes),
            n if n > memory_bytes => {
                return Err(error(
                    "shm_bytes",
                    format!(
                        "{n} is more than the container's memory ({memory_bytes} bytes): /dev/shm is memory and counts against it"
                    ),
                ));
            }
            n if n < MIN_SHM_BYTES => {
                return Err(error("shm_bytes", format!("{n} is less than the least of {MIN_SHM_BYTES} bytes")));
            }
            n => n,
        };
        let memlock = rlimit_bytes("memlock", asked.memlock, Bound::new(config.memlock, host.memlock))?;
        let stack = rlimit_bytes("stack", asked.stack, Bound::new(config.stack, host.stack))?;
        let bound = Bound::new(config.nofile.min(MAX_NOFILE) as i64, host.nofile);
        let most = bound.value.unwrap_or(MAX_NOFILE);
        let nofile = match asked.nofile {
            0 => most,
            n if n > most => return Err(error("nofile", format!("{n} is more than {} of {most}", bound.whose()))),
            n if n < MIN_NOFILE => return Err(error("nofile", format!("{n} is less than the least of {MIN_NOFILE}"))),
            n => n,
        };
        let ipc = match asked.ipc.as_str() {
            "" => IpcMode::Private,
            name => match IpcMode::parse(name) {
                Some(mode) if config.ipc_modes.contains(&mode) => mode,
                Some(_) => {
                    return Err(error(
                        "ipc",
                        format!("`{name}` is not allowed on this executor (docker.workload.ipc_modes)"),
                    ));
                }
                None => return Err(error("ipc", format!("`{name}` is not an IPC mode (`private` or `shareable`)"))),
            },
        };
        if asked.entrypoint.iter().any(|a| a.contains('\0')) {
            return Err(error("entrypoint", "arguments may not contain NUL"));
        }
        let dir = &asked.working_dir;
        if !dir.is_empty()
            && (!dir.starts_with('/')
                || dir.len() > MAX_PATH
                || dir.contains('\0')
                || dir.split('/').any(|c| c == ".."))
        {
            return Err(error("working_dir", format!("`{dir}` is not an absolute path without `..`")));
        }
        if !asked.user.is_empty() && !user_ok(&asked.user) {
            return Err(error(
                "user",
                format!("`{}` is not `uid[:gid]` or `name[:group]` (letters, digits, `_`, `.`, `-`)", asked.user),
            ));
        }
        let driver_capabilities = if asked.driver_capabilities.is_empty() {
            DEFAULT_CAPABILITIES.into_iter().filter(|c| allowed_capabilities.contains(c)).collect()
        } else {
            let mut wanted = Vec::new();
            for name in &asked.driver_capabilities {
                let Some(capability) = DriverCapability::parse(name) else {
                    let known: Vec<&str> = DriverCapability::ALL.iter().map(|c| c.as_str()).collect();
                    return Err(error(
                        "driver_capabilities",
                        format!("`{name}` is not a driver capability (one of {})", known.join(", ")),
                    ));
                };
                if !allowed_capabilities.contains(&capability) {
                    let allowed: Vec<&str> = allowed_capabilities.iter().map(|c| c.as_str()).collect();
                    return Err(error(
                        "driver_capabilities",
                        format!(
                            "`{name}` is not allowed on this executor (docker.gpu_config.driver_capabilities = {})",
                            allowed.join(", ")
                        ),
                    ));
                }
                wanted.push(capability);
            }
            wanted.sort();
            wanted.dedup();
            wanted
        };
        Ok(Self {
            shm_bytes,
            memlock,
            nofile,
            stack,
            ipc,
            entrypoint: asked.entrypoint.clone(),
            working_dir: asked.working_dir.clone(),
            user: asked.user.clone(),
            driver_capabilities,
        })
    }

    /// `NVIDIA_DRIVER_CAPABILITIES`'s value.
    pub fn driver_capabilities_env(&self) -> String {
        self.driver_capabilities.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(",")
    }

    /// Puts it into Docker's create body (the environment variable is the spec's, which
    /// writes every `NVIDIA_*` variable).
    pub fn apply(&self, body: &mut ContainerCreateBody) {
        let limit =
            |name: &str, value: i64| ResourcesUlimits { name: Some(name.into()), soft: Some(value), hard: Some(value) };
        if !self.entrypoint.is_empty() {
            body.entrypoint = Some(self.entrypoint.clone());
        }
        if !self.working_dir.is_empty() {
            body.working_dir = Some(self.working_dir.clone());
        }
        if !self.user.is_empty() {
            body.user = Some(self.user.clone());
        }
        let host = body.host_config.get_or_insert_with(Default::default);
        host.shm_size = Some(self.shm_bytes as i64);
        host.ipc_mode = Some(self.ipc.as_str().to_owned());
        host.ulimits =
            Some(vec![limit("memlock", self.memlock), limit("nofile", self.nofile as i64), limit("stack", self.stack)]);
    }
}

/// What the engine says a container runs with. Containers made before workload options read
/// as Docker made them (its 64 MiB `/dev/shm`, no ulimits of ours: zero).
pub fn from_inspect(inspect: &ContainerInspectResponse) -> pb::Workload {
    let host = inspect.host_config.as_ref();
    let config = inspect.config.as_ref();
    let ulimit = |name: &str| {
        host.and_then(|h| h.ulimits.as_ref())
            .and_then(|u| u.iter().find(|l| l.name.as_deref() == Some(name)))
            .and_then(|l| l.hard)
            .unwrap_or(0)
    };
    let env = config.and_then(|c| c.env.as_ref());
    let capabilities = env
        .and_then(|e| e.iter().rev().find_map(|v| v.strip_prefix("NVIDIA_DRIVER_CAPABILITIES=")))
        .map(|v| v.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    pb::Workload {
        shm_bytes: host.and_then(|h| h.shm_size).unwrap_or(0).max(0) as u64,
        memlock: ulimit("memlock"),
        nofile: ulimit("nofile").max(0) as u64,
        stack: ulimit("stack"),
        ipc: host.and_then(|h| h.ipc_mode.clone()).unwrap_or_default(),
        entrypoint: config.and_then(|c| c.entrypoint.clone()).unwrap_or_default(),
        working_dir: config.and_then(|c| c.working_dir.clone()).unwrap_or_default(),
        user: config.and_then(|c| c.user.clone()).unwrap_or_default(),
        driver_capabilities: capabilities,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn resolve(asked: pb::Workload) -> Result<Workload, WorkloadError> {
        let allowed = [DriverCapability::Compute, DriverCapability::Utility, DriverCapability::Video];
        Workload::resolve(&asked, 8 * GIB, &WorkloadConfig::default(), &HostLimits::default(), &allowed)
    }

    fn refusal(asked: pb::Workload) -> String {
        let e = resolve(asked).unwrap_err();
        format!("{}: {}", e.field, e.message)
    }

    #[test]
    fn an_empty_request_gets_the_configured_values() {
        let w = resolve(pb::Workload::default()).unwrap();
        assert_eq!(w.shm_bytes, 4 * GIB, "half the memory");
        assert_eq!((w.memlock, w.nofile, w.stack), (-1, 1 << 20, 64 << 20));
        assert_eq!(w.ipc, IpcMode::Private);
        assert_eq!(w.driver_capabilities_env(), "compute,utility");
        // A small container still gets a usable /dev/shm, never more than its memory.
        let small = Workload::resolve(
            &pb::Workload::default(),
            1 << 20,
            &WorkloadConfig::default(),
            &HostLimits::default(),
            &[],
        )
        .unwrap();
        assert_eq!(small.shm_bytes, 1 << 20);
        assert!(small.driver_capabilities.is_empty(), "none allowed, none given");
    }

    #[test]
    fn requests_within_bounds_are_kept() {
        let w = resolve(pb::Workload {
            shm_bytes: 8 * GIB,
            memlock: 1 << 30,
            nofile: 4096,
            stack: 8 << 20,
            ipc: "shareable".into(),
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            working_dir: "/workspace".into(),
            user: "1000:1000".into(),
            driver_capabilities: vec!["video".into(), "compute".into(), "compute".into()],
        })
        .unwrap();
        assert_eq!((w.shm_bytes, w.memlock, w.nofile, w.stack), (8 * GIB, 1 << 30, 4096, 8 << 20));
        assert_eq!(w.ipc, IpcMode::Shareable);
        assert_eq!(w.driver_capabilities_env(), "compute,video");
        let mut body = ContainerCreateBody::default();
        w.apply(&mut body);
        let host = body.host_config.unwrap();
        assert_eq!(host.shm_size, Some(8 * GIB as i64));
        assert_eq!(host.ipc_mode.as_deref(), Some("shareable"));
        let limits: Vec<(String, i64, i64)> =
            host.ulimits.unwrap().into_iter().map(|l| (l.name.unwrap(), l.soft.unwrap(), l.hard.unwrap())).collect();
        assert_eq!(
            limits,
            [("memlock".into(), 1 << 30, 1 << 30), ("nofile".into(), 4096, 4096), ("stack".into(), 8 << 20, 8 << 20)]
        );
        assert_eq!(body.entrypoint.unwrap(), ["/bin/sh", "-c"]);
        assert_eq!(body.working_dir.as_deref(), Some("/workspace"));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
    }

    #[test]
    fn requests_past_their_bounds_are_refused_by_name() {
        let cases = [
            (
                pb::Workload { shm_bytes: 9 * GIB, ..Default::default() },
                "workload.shm_bytes: 9663676416 is more than the container's memory",
            ),
            (pb::Workload { shm_bytes: 4096, ..Default::default() }, "workload.shm_bytes: 4096 is less than"),
            (pb::Workload { memlock: -2, ..Default::default() }, "workload.memlock: -2 is neither -1"),
            (pb::Workload { stack: 100, ..Default::default() }, "workload.stack: 100 is neither -1"),
            (
                pb::Workload { nofile: 2 << 20, ..Default::default() },
                "workload.nofile: 2097152 is more than this executor's limit of 1048576",
            ),
            (pb::Workload { nofile: 3, ..Default::default() }, "workload.nofile: 3 is less than"),
            (pb::Workload { ipc: "host".into(), ..Default::default() }, "workload.ipc: `host` is not an IPC mode"),
            (
                pb::Workload { ipc: "container:abc".into(), ..Default::default() },
                "workload.ipc: `container:abc` is not an IPC mode",
            ),
            (
                pb::Workload { entrypoint: vec!["a\0b".into()], ..Default::default() },
                "workload.entrypoint: arguments may not contain NUL",
            ),
            (
                pb::Workload { working_dir: "work".into(), ..Default::default() },
                "workload.working_dir: `work` is not an absolute path",
            ),
            (
                pb::Workload { working_dir: "/a/../etc".into(), ..Default::default() },
                "workload.working_dir: `/a/../etc`",
            ),
            (pb::Workload { user: "root;rm".into(), ..Default::default() }, "workload.user: `root;rm` is not"),
            (pb::Workload { user: "a:".into(), ..Default::default() }, "workload.user: `a:` is not"),
            (pb::Workload { user: "-x".into(), ..Default::default() }, "workload.user: `-x` is not"),
            (
                pb::Workload { driver_capabilities: vec!["all".into()], ..Default::default() },
                "workload.driver_capabilities: `all` is not a driver capability",
            ),
            (
                pb::Workload { driver_capabilities: vec!["graphics".into()], ..Default::default() },
                "workload.driver_capabilities: `graphics` is not allowed on this executor (docker.gpu_config.driver_capabilities = compute, utility, video)",
            ),
        ];
        for (asked, expected) in cases {
            let got = refusal(asked);
            assert!(got.starts_with(expected), "{got:?} does not start with {expected:?}");
        }
        // Bounds come from the config: a node that caps memlock refuses unlimited and more.
        let config =
            WorkloadConfig { memlock: 1 << 20, ipc_modes: vec![IpcMode::Private], ..WorkloadConfig::default() };
        let capped = |asked: pb::Workload| {
            Workload::resolve(&asked, 8 * GIB, &config, &HostLimits::default(), &[]).map_err(|e| e.to_string())
        };
        assert_eq!(
            capped(pb::Workload { memlock: -1, ..Default::default() }).unwrap_err(),
            "workload.memlock: unlimited is more than this executor's limit of 1048576"
        );
        assert!(capped(pb::Workload { memlock: 2 << 20, ..Default::default() }).is_err());
        assert_eq!(capped(pb::Workload { memlock: 1 << 19, ..Default::default() }).unwrap().memlock, 1 << 19);
        assert_eq!(
            capped(pb::Workload { ipc: "shareable".into(), ..Default::default() }).unwrap_err(),
            "workload.ipc: `shareable` is not allowed on this executor (docker.workload.ipc_modes)"
        );
    }

    /// A host whose hard limits are lower than the config's (no CAP_SYS_RESOURCE): they are
    /// the defaults and the bounds, and a refusal says it is the host's.
    #[test]
    fn the_hosts_hard_limits_bound_the_config() {
        let host = HostLimits { memlock: Some(8 << 20), nofile: Some(20_000), stack: None };
        let resolve = |asked: pb::Workload| Workload::resolve(&asked, 8 * GIB, &WorkloadConfig::default(), &host, &[]);
        let w = resolve(pb::Workload::default()).unwrap();
        assert_eq!((w.memlock, w.nofile, w.stack), (8 << 20, 20_000, 64 << 20));
        let e = resolve(pb::Workload { memlock: -1, ..Default::default() }).unwrap_err();
        assert!(e.to_string().starts_with("workload.memlock: unlimited is more than this host's hard limit"), "{e}");
        let e = resolve(pb::Workload { nofile: 20_001, ..Default::default() }).unwrap_err();
        assert!(e.to_string().starts_with("workload.nofile: 20001 is more than this host's hard limit"), "{e}");
        assert_eq!(resolve(pb::Workload { nofile: 20_000, ..Default::default() }).unwrap().nofile, 20_000);
        // A config lower than the host's is the bound, in its own words.
        let config = WorkloadConfig { nofile: 1024, ..WorkloadConfig::default() };
        let e = Workload::resolve(&pb::Workload { nofile: 2048, ..Default::default() }, GIB, &config, &host, &[])
            .unwrap_err();
        assert_eq!(e.to_string(), "workload.nofile: 2048 is more than this executor's limit of 1024");
    }
}
