//! `executor ctl ...`: the public API from the command line, signed with the miner's hotkey,
//! for operators and tests. Answers are printed as JSON (one object, or one per line for
//! lists); container logs, and the output of `containers exec`, are written raw to stdout and
//! stderr.
//!
//! The secret comes from `--key-file FILE` (a hex seed, a hex 64-byte secret key, or a
//! Bittensor hotkey file) or from the environment variable `MINER_HOTKEY_SECRET` (the same
//! forms); never from the command line, where other users could read it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use common::config::{CONFIG_ERROR_EXIT_CODE, Config, ConfigError};
use common::hotkey::{HotkeyPair, SecretError};
use common::proto::access::v1 as access;
use common::proto::api::v1 as api;
use common::proto::gpu::v1 as gpu;
use common::proto::runtime::v1 as runtime;
use executor_api::client::{ClientError, ExecutorClient};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

/// The environment variable holding the miner hotkey's secret when `--key-file` is not given.
pub const SECRET_ENV: &str = "MINER_HOTKEY_SECRET";

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The executor's public API, e.g. `http://203.0.113.7:50051`; default: this machine's,
    /// from `--config` (`[server] port`, https when TLS is configured).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// File with the miner hotkey's secret (hex seed or Bittensor hotkey file); otherwise the
    /// environment variable MINER_HOTKEY_SECRET.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// CA certificate (PEM) for an https endpoint with a private CA or a self-signed certificate.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// The executor id the endpoint must have (`executor-...`, from `identity`); calls are
    /// signed for it alone. Default: the id the endpoint names.
    #[arg(long, value_name = "ID")]
    pub executor_id: Option<String>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Executor id, public key, managing hotkey, advertised endpoints, version.
    Identity,
    /// Each service, Docker, GPU count; exit 1 unless healthy.
    Health,
    /// GPU inventory and the latest telemetry snapshot.
    Profile,
    /// Tenant containers.
    #[command(subcommand)]
    Containers(ContainersCommand),
    /// Validator SSH grants.
    #[command(subcommand)]
    Grants(GrantsCommand),
    /// Published ports: `ports check` listens on a spare port of `[docker.ports] ranges` and
    /// connects to it through the external host; exit 1 unless TCP and UDP both got through.
    #[command(subcommand)]
    Ports(PortsCommand),
    /// Named volumes with a hard size (`containers create --volume NAME:/path`).
    #[command(subcommand)]
    Volumes(VolumesCommand),
    /// The image cache: pull ahead of creates, list (with `[docker.images] prefetch`), remove.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// Ready-made creates of `[docker.templates]` (`containers create --template NAME`).
    #[command(subcommand)]
    Templates(TemplatesCommand),
    /// Take no new containers (running ones are left alone; `/readyz` answers 503) until
    /// `undrain`; kept across restarts.
    Drain {
        /// Why, shown with the state.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Take new containers again.
    Undrain,
    /// GPUs, CPU, memory, disk, volume bytes, ports and containers: total, allocated, free.
    Capacity,
    /// The node's events, one JSON object a line: those kept after `--after` (all kept ones
    /// by default), then each as it happens, until interrupted.
    Events {
        /// The last sequence number already seen.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only events from now on.
        #[arg(long)]
        new: bool,
        /// Only this container's events.
        #[arg(long, default_value = "")]
        container: String,
    },
    /// Take a GPU out of rentals, or put it back.
    #[command(subcommand)]
    Gpus(GpusCommand),
    /// Run the proof of work here and print the signed report.
    Attest {
        #[arg(long, default_value_t = 256)]
        matrix_dim: u32,
        #[arg(long, default_value_t = 16)]
        num_matrices: u32,
        /// Phase B dataset items (a multiple of 32).
        #[arg(long, default_value_t = 4096)]
        dataset_items: u64,
        /// Challenge seed (u64).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Your nonce, 64 hex digits (not all zero), bound into the report; random when absent.
        #[arg(long, value_name = "HEX")]
        nonce: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum VolumesCommand {
    /// Make a volume: `volumes create NAME --size-bytes N`.
    Create {
        name: String,
        #[arg(long)]
        size_bytes: u64,
    },
    /// One line per volume, with its use and the containers that have it.
    List,
    /// Delete a volume no container has; its bytes are wiped.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Pull an image as a create would (allow-list, signature policy): the engine's steps on
    /// stderr, the image as JSON on stdout.
    Pull { image: String },
    /// One line per cached image (least recently used first), then prefetch-listed images not
    /// there yet, then the cache's total against its high-water mark.
    List,
    /// Remove a cached image no container has and `prefetch` does not list.
    Remove { image: String },
}

#[derive(Debug, Subcommand)]
pub enum GpusCommand {
    /// Take GPU `UUID` out of rentals until released (kept across restarts); a container
    /// running on it is handled as for an unhealthy GPU (`on_gpu_error`).
    Quarantine {
        uuid: String,
        /// Why, shown with its health.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Put GPU `UUID` back: its quarantine and any unhealthy state end (after a reset, a
    /// reboot or a swap).
    Release { uuid: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum TemplatesCommand {
    /// One line per template.
    List,
}

#[derive(Debug, Subcommand)]
pub enum PortsCommand {
    /// Whether renters can reach published ports, from this host's own view.
    Check,
}

/// The workload options of `containers create` (`CreateContainerRequest.workload`).
#[derive(Debug, clap::Args)]
pub struct WorkloadArgs {
    /// Size of /dev/shm, bytes (0: `[docker.workload] shm_fraction` of the memory).
    #[arg(long, default_value_t = 0)]
    pub shm_bytes: u64,
    /// A ulimit, repeatable: `memlock=BYTES`, `nofile=N`, `stack=BYTES` (-1: unlimited for
    /// memlock and stack); unset ones get `[docker.workload]`'s values.
    #[arg(long = "ulimit", value_name = "NAME=VALUE", value_parser = ulimit)]
    pub ulimits: Vec<(String, i64)>,
    /// IPC namespace: `private` (the default) or `shareable`.
    #[arg(long)]
    pub ipc: Option<String>,
    /// Run this instead of the image's ENTRYPOINT (the command after `--` is its arguments).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Working directory (absolute).
    #[arg(long)]
    pub workdir: Option<String>,
    /// `uid[:gid]` or `name[:group]` to run as.
    #[arg(long)]
    pub user: Option<String>,
    /// An NVIDIA driver capability (`compute`, `utility`, `video`, ...), repeatable; unset:
    /// compute and utility.
    #[arg(long = "driver-capability", value_name = "CAPABILITY")]
    pub driver_capabilities: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ContainersCommand {
    /// One line per container.
    List {
        /// Exited containers too.
        #[arg(long)]
        all: bool,
    },
    /// Create a container (started only with --start): `containers create --image IMG -- CMD ARGS...`,
    /// or `containers create --template NAME` (see `templates list`).
    Create {
        /// The image; may be left out with --template.
        #[arg(long, required_unless_present = "template", default_value = "")]
        image: String,
        /// A template of `[docker.templates]`: it fills what the other options leave empty.
        #[arg(long)]
        template: Option<String>,
        /// Memory limit, bytes (0: the configured maximum).
        #[arg(long, default_value_t = 0)]
        memory_bytes: u64,
        /// CPU cores (0: the configured maximum).
        #[arg(long, default_value_t = 0.0)]
        cpu_cores: f64,
        /// Writable-layer limit, bytes (0: the configured maximum); over it the container is
        /// stopped (`disk_quota`).
        #[arg(long, default_value_t = 0)]
        disk_bytes: u64,
        #[arg(long, default_value_t = 0)]
        gpus: u32,
        /// Seconds until it is reaped; 0: never.
        #[arg(long, default_value_t = 0)]
        ttl_seconds: u64,
        /// `KEY=VALUE`, repeatable.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Start it right away.
        #[arg(long)]
        start: bool,
        /// A renter's SSH public key (an OpenSSH line or a `.pub` file), repeatable: it opens
        /// `ssh -p <tenant_access.ssh_port> <id>@host` into this container.
        #[arg(long = "ssh-key", value_name = "KEY")]
        ssh_keys: Vec<String>,
        /// Publish a container port, repeatable: `8888`, `53/udp`, or `8888=40010` for that
        /// host port of `[docker.ports] ranges` (else the lowest free one). The host port and
        /// the `host:port` renters use are in `ports` of the answer.
        #[arg(long = "port", value_name = "PORT[/udp][=HOST_PORT]", value_parser = port_mapping)]
        ports: Vec<runtime::PortMapping>,
        /// The host port of the one `--port` given (as `--port PORT=HOST_PORT`).
        #[arg(long)]
        host_port: Option<u16>,
        /// A volume (`volumes create`), repeatable: `NAME:/path`, or `NAME:/path:ro` read-only;
        /// `NAME` alone goes to the template's next `volume_paths` entry.
        #[arg(long = "volume", value_name = "NAME:/PATH[:ro]", value_parser = volume_mount)]
        volumes: Vec<runtime::VolumeMount>,
        #[command(flatten)]
        workload: Box<WorkloadArgs>,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Renters' SSH keys of a container.
    #[command(subcommand, name = "ssh-key")]
    SshKey(SshKeyCommand),
    /// Start a created container.
    Start { id: String },
    /// A new TTL (`--ttl-seconds N` from now, 0: never reaped), more published ports
    /// (`--add-port`: the container is made again with the same id, volumes, keys and GPUs,
    /// started again if it ran; its writable layer starts fresh from its image), or both.
    Update {
        id: String,
        #[arg(long, required_unless_present = "add_ports")]
        ttl_seconds: Option<u64>,
        /// A container port to publish as well, repeatable, as `create --port`.
        #[arg(long = "add-port", value_name = "PORT[/udp][=HOST_PORT]", value_parser = port_mapping)]
        add_ports: Vec<runtime::PortMapping>,
    },
    /// Stop a running container (SIGTERM, then SIGKILL).
    Stop {
        id: String,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(long, default_value_t = 10)]
        timeout_seconds: u32,
    },
    /// One container.
    Get { id: String },
    /// CPU, memory, network, block I/O and pids of a container.
    Stats { id: String },
    /// Remove a container.
    Remove {
        id: String,
        /// Remove a running container too.
        #[arg(long)]
        force: bool,
    },
    /// Run a command in a running container: `containers exec ID -- CMD ARGS...`. Its output
    /// goes to stdout/stderr as it comes; exits with its exit code (124 past the timeout, as
    /// `timeout(1)` does; 1 when the output cap stopped it).
    Exec {
        id: String,
        /// Seconds it may run, 1 to 3600 (0: 60).
        #[arg(long, default_value_t = 0)]
        timeout_seconds: u32,
        /// Stdout and stderr together at most, up to 256 MiB (0: 16 MiB).
        #[arg(long, default_value_t = 0)]
        max_output_bytes: u64,
        /// `KEY=VALUE`, repeatable.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Logs to stdout/stderr as the container wrote them.
    Logs {
        id: String,
        #[arg(long)]
        follow: bool,
        /// Lines from the end; 0: all.
        #[arg(long, default_value_t = 0)]
        tail: u64,
    },
}

/// `executor ctl containers ssh-key ...`.
#[derive(Debug, Subcommand)]
pub enum SshKeyCommand {
    /// Add keys (OpenSSH lines or `.pub` files) to a container.
    Add {
        id: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Remove a key (its fingerprint `SHA256:...`, its line, or its `.pub` file); its open
    /// sessions close.
    Remove { id: String, key: String },
    /// The container's keys and the `ssh` command renters type.
    List { id: String },
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// Every grant.
    List,
    /// Ask for a challenge the validator signs with its hotkey; it names the SSH key and the
    /// longest TTL, and the grant must be for that key and no longer.
    Challenge {
        validator_hotkey: String,
        /// OpenSSH public key line of the key the grant will be for.
        #[arg(long)]
        ssh_public_key: String,
        /// The longest grant the validator signs for (0: validator.max_grant_ttl).
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
    },
    /// Grant a validator SSH access with its signed challenge.
    Provision {
        #[arg(long)]
        validator_hotkey: String,
        /// OpenSSH public key line.
        #[arg(long)]
        ssh_public_key: String,
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
        #[arg(long)]
        challenge_id: String,
        /// Hex of the validator's signature over the challenge message.
        #[arg(long)]
        signature: String,
    },
    /// Revoke a grant (its SSH sessions are closed).
    Revoke { grant_id: String },
}

/// Why the miner's secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("--key-file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("needs the miner hotkey's secret: --key-file FILE or the environment variable {}", SECRET_ENV)]
    Missing,
    /// `origin` is `--key-file FILE` or the environment variable.
    #[error("{origin}: {source}")]
    Parse { origin: String, source: SecretError },
}

/// Why a ctl command failed, as printed after `executor ctl: `.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}\n(or give --endpoint URL)")]
    LocalEndpoint(#[source] ConfigError),
    #[error("--ca-cert {}: {source}", path.display())]
    CaCert { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// The executor's answer: its status code and message.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("--env `{0}` is not KEY=VALUE")]
    Env(String),
    #[error("--port `{0}` is not PORT[/tcp|/udp][=HOST_PORT] (ports 1 to 65535)")]
    Port(String),
    #[error("--host-port goes with exactly one --port (for several, write --port PORT=HOST_PORT)")]
    HostPort,
    #[error("--volume `{0}` is not NAME:/PATH, NAME:/PATH:ro or NAME (the path from --template)")]
    Volume(String),
    #[error("--ulimit `{0}` is not memlock=BYTES, nofile=N or stack=BYTES (-1: unlimited)")]
    Ulimit(String),
    #[error("--signature is not hex")]
    SignatureNotHex,
    #[error("--nonce: expected 64 hex digits")]
    Nonce,
    /// The executor's stream ended without the command's end.
    #[error("the executor ended the exec's stream without its exit code")]
    ExecUnfinished,
    #[error("SSH key file {}: {source}", path.display())]
    KeyFile { path: PathBuf, source: std::io::Error },
}

/// Bytes of a hex string (`0x` optional), or None when it is not hex.
fn from_hex(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

/// Why ctl could not run a command before calling the executor (exit code 2).
fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("executor ctl: {message}");
    ExitCode::from(CONFIG_ERROR_EXIT_CODE as u8)
}

/// Reads the miner's secret from `--key-file` or [`SECRET_ENV`].
pub fn load_key(key_file: Option<&Path>) -> Result<HotkeyPair, KeyError> {
    let (text, origin) = match key_file {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?,
            format!("--key-file {}", path.display()),
        ),
        None => match std::env::var(SECRET_ENV) {
            Ok(text) => (text, SECRET_ENV.to_owned()),
            Err(_) => return Err(KeyError::Missing),
        },
    };
    HotkeyPair::parse(&text).map_err(|source| KeyError::Parse { origin, source })
}

/// This machine's endpoint from the config file.
fn local_endpoint(config_path: &Path) -> Result<String, CtlError> {
    let loaded = Config::load(config_path).map_err(CtlError::LocalEndpoint)?;
    let server = &loaded.config.server;
    let host = if server.host.is_unspecified() { "127.0.0.1".to_owned() } else { server.host.to_string() };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let scheme = if server.tls_cert_path.is_some() { "https" } else { "http" };
    Ok(format!("{scheme}://{host}:{}", server.port))
}

/// `executor ctl ...`.
pub fn ctl_command(config_path: &Path, args: CtlArgs) -> ExitCode {
    let key = match load_key(args.key_file.as_deref()) {
        Ok(key) => key,
        Err(e) => return usage(e),
    };
    let endpoint = match args.endpoint.clone().map_or_else(|| local_endpoint(config_path), Ok) {
        Ok(endpoint) => endpoint,
        Err(e) => return usage(e),
    };
    let ca = match &args.ca_cert {
        Some(path) => match std::fs::read(path) {
            Ok(pem) => Some(pem),
            Err(source) => return usage(CtlError::CaCert { path: path.clone(), source }),
        },
        None => None,
    };
    let result = crate::block_on(async move {
        let client = ExecutorClient::connect_pinned(&endpoint, ca, key, args.executor_id.as_deref()).await?;
        run(&client, args.command).await
    });
    match result {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("executor ctl: {e}");
            ExitCode::FAILURE
        }
        Err(code) => code,
    }
}

/// One event as `executor ctl events` prints it: the fields that are set.
fn event_json(e: &runtime::Event) -> Value {
    let kind = e.kind().as_str_name().trim_start_matches("EVENT_KIND_").to_ascii_lowercase();
    let mut v = json!({"seq": e.seq, "time_ms": e.time_ms, "kind": kind});
    let map = v.as_object_mut().expect("an object");
    for (key, value) in [
        ("container_id", &e.container_id),
        ("owner", &e.owner),
        ("image", &e.image),
        ("reason", &e.reason),
        ("by", &e.by),
        ("gpu_uuid", &e.gpu_uuid),
        ("gpu_state", &e.gpu_state),
    ] {
        if !value.is_empty() {
            map.insert(key.to_owned(), json!(value));
        }
    }
    if e.kind() == runtime::EventKind::Died {
        map.insert("exit_code".to_owned(), json!(e.exit_code));
    }
    if e.kind() == runtime::EventKind::Drain {
        map.insert("draining".to_owned(), json!(e.draining));
    }
    v
}

fn print(value: &Value) {
    println!("{value}");
}

async fn run(client: &ExecutorClient, command: CtlCommand) -> Result<ExitCode, CtlError> {
    match command {
        CtlCommand::Identity => {
            let id = client.identity().await?;
            let e = id.endpoints.unwrap_or_default();
            print(&json!({
                "executor_id": id.executor_id,
                "public_key": hex_of(&id.public_key),
                "managing_miner_hotkey": id.managing_miner_hotkey,
                "version": id.version,
                "endpoints": {
                    "grpc": e.grpc_endpoint, "ssh": e.ssh_endpoint, "health": e.health_endpoint,
                    "advertised_host": e.advertised_host, "advertised_port": e.advertised_port,
                    "advertised_tls": e.advertised_tls,
                },
            }));
        }
        CtlCommand::Health => {
            let h = client.detailed_health().await?;
            let components: BTreeMap<String, Value> = h
                .components
                .iter()
                .map(|c| (c.name.clone(), json!({"serving": c.serving, "detail": c.detail})))
                .collect();
            print(&json!({
                "healthy": h.healthy, "version": h.version, "gpu_count": h.gpu_count, "draining": h.draining,
                "components": components,
            }));
            if !h.healthy {
                return Ok(ExitCode::FAILURE);
            }
        }
        CtlCommand::Profile => {
            let p = client.system_profile().await?;
            let inventory = p.inventory.unwrap_or_default();
            let gpus: Vec<Value> = inventory
                .gpus
                .iter()
                .map(|g| json!({"index": g.index, "uuid": g.uuid, "name": g.name, "memory_total_bytes": g.memory_total_bytes}))
                .collect();
            print(&json!({
                "gpus": gpus,
                "driver_version": inventory.driver_version,
                "cuda_version": inventory.cuda_version,
                "gpu_unavailable_reason": inventory.gpu_unavailable_reason,
            }));
        }
        CtlCommand::Containers(command) => return containers(client, command).await,
        CtlCommand::Grants(command) => grants(client, command).await?,
        CtlCommand::Volumes(command) => {
            let volume = |v: &runtime::Volume| {
                json!({"name": v.name, "size_bytes": v.size_bytes, "used_bytes": v.used_bytes,
                       "created_at": v.created_at, "containers": v.containers})
            };
            match command {
                VolumesCommand::Create { name, size_bytes } => {
                    print(&volume(&client.create_volume(runtime::CreateVolumeRequest { name, size_bytes }).await?))
                }
                VolumesCommand::List => {
                    for v in &client.list_volumes(runtime::ListVolumesRequest {}).await?.volumes {
                        print(&volume(v));
                    }
                }
                VolumesCommand::Delete { name } => {
                    client.delete_volume(runtime::DeleteVolumeRequest { name: name.clone() }).await?;
                    print(&json!({"deleted": name}));
                }
            }
        }
        CtlCommand::Images(command) => images(client, command).await?,
        CtlCommand::Drain { reason } => {
            let s = client.drain(api::DrainRequest { reason }).await?;
            print(&json!({"draining": s.draining, "reason": s.reason, "since": s.since}));
        }
        CtlCommand::Events { after, new, container } => {
            let request = runtime::WatchEventsRequest { after_seq: after, only_new: new, container_id: container };
            let mut stream = client.watch_events(request).await?;
            while let Some(event) = stream.next().await {
                use std::io::Write;
                let line = format!("{}\n", event_json(&event?));
                // A closed pipe (`| head`) ends the command quietly.
                if std::io::stdout().write_all(line.as_bytes()).and_then(|()| std::io::stdout().flush()).is_err() {
                    break;
                }
            }
        }
        CtlCommand::Capacity => {
            let c = client.capacity(runtime::CapacityRequest {}).await?;
            let amount = |a: &Option<runtime::Amount>| match a {
                Some(a) => json!({"total": a.total, "allocated": a.allocated, "free": a.free}),
                None => Value::Null,
            };
            let slots: Vec<Value> = c
                .gpu_slots
                .iter()
                .map(|g| {
                    json!({"uuid": g.uuid, "index": g.index, "name": g.name, "container": g.container,
                           "health": g.health, "health_reason": g.health_reason})
                })
                .collect();
            print(&json!({
                "gpus": amount(&c.gpus), "gpus_healthy": c.gpus_healthy, "gpu_slots": slots, "cpu_cores": amount(&c.cpu_cores),
                "memory_bytes": amount(&c.memory_bytes), "disk_bytes": amount(&c.disk_bytes),
                "volume_bytes": amount(&c.volume_bytes), "ports": amount(&c.ports),
                "containers": amount(&c.containers), "note": c.note,
            }));
        }
        CtlCommand::Gpus(command) => {
            let h = match command {
                GpusCommand::Quarantine { uuid, reason } => {
                    client.quarantine_gpu(gpu::QuarantineGpuRequest { uuid, reason }).await?
                }
                GpusCommand::Release { uuid } => client.release_gpu(gpu::ReleaseGpuRequest { uuid }).await?,
            };
            print(&json!({"uuid": h.uuid, "index": h.index, "state": h.state, "reason": h.reason,
                          "since": h.since, "quarantined": h.quarantined}));
        }
        CtlCommand::Undrain => {
            let s = client.undrain(api::UndrainRequest {}).await?;
            print(&json!({"draining": s.draining, "reason": s.reason, "since": s.since}));
        }
        CtlCommand::Templates(TemplatesCommand::List) => {
            for t in client.list_templates(runtime::ListTemplatesRequest {}).await?.templates {
                let ports: Vec<String> =
                    t.ports.iter().map(|p| format!("{}/{}", p.container_port, p.protocol)).collect();
                print(&json!({
                    "name": t.name, "image": t.image, "command": t.command, "env": t.env, "ports": ports,
                    "shm_bytes": t.shm_bytes, "volume_paths": t.volume_paths,
                }));
            }
        }
        CtlCommand::Ports(PortsCommand::Check) => {
            let r = client.check_ports(runtime::CheckPortsRequest {}).await?;
            print(&json!({
                "host_port": r.host_port, "target": r.target, "tcp_reachable": r.tcp_reachable,
                "udp_reachable": r.udp_reachable, "tcp_error": r.tcp_error, "udp_error": r.udp_error,
                "note": r.note, "pool_size": r.pool_size, "allocated": r.allocated,
            }));
            if !(r.tcp_reachable && r.udp_reachable) {
                return Ok(ExitCode::FAILURE);
            }
        }
        CtlCommand::Attest { matrix_dim, num_matrices, dataset_items, seed, nonce } => {
            let mut seed_bytes = seed.to_le_bytes().to_vec();
            seed_bytes.resize(32, 0);
            let nonce = match nonce {
                Some(text) => from_hex(&text).filter(|n| n.len() == 32).ok_or(CtlError::Nonce)?,
                None => Vec::new(),
            };
            let request = api::AttestationRequest { seed: seed_bytes, matrix_dim, num_matrices, nonce, dataset_items };
            let report = client.run_attestation(request).await?;
            println!("{}", report.report_json);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A container as one JSON object.
pub fn container_json(c: &runtime::Container) -> Value {
    json!({
        "id": c.id,
        "image": c.image,
        "state": c.state().as_str_name().trim_start_matches("CONTAINER_STATE_").to_lowercase(),
        "owner": c.owner,
        "gpu_uuids": c.gpu_uuids,
        "created_at": c.created_at,
        "expires_at": c.expires_at,
        "exit_code": c.exit_code,
        "stop_reason": c.stop_reason,
        "template": c.template,
        "recreated_at": c.recreated_at,
        "ports": c.ports.iter().map(|p| json!({
            "container_port": p.container_port, "protocol": p.protocol, "host_port": p.host_port,
            "external_port": p.external_port, "external_endpoint": p.external_endpoint,
        })).collect::<Vec<_>>(),
        "volumes": c.volumes.iter().map(|v| json!({
            "volume": v.volume, "container_path": v.container_path, "read_only": v.read_only,
        })).collect::<Vec<_>>(),
        "workload": c.workload.as_ref().map(|w| json!({
            "shm_bytes": w.shm_bytes, "memlock": w.memlock, "nofile": w.nofile, "stack": w.stack,
            "ipc": w.ipc, "entrypoint": w.entrypoint, "working_dir": w.working_dir, "user": w.user,
            "driver_capabilities": w.driver_capabilities,
        })),
    })
}

/// The workload options of `containers create` as the request's.
fn workload(options: WorkloadArgs) -> Result<runtime::Workload, CtlError> {
    let WorkloadArgs { shm_bytes, ulimits, ipc, entrypoint, workdir, user, driver_capabilities } = options;
    let mut w = runtime::Workload {
        shm_bytes,
        ipc: ipc.unwrap_or_default(),
        entrypoint: entrypoint.into_iter().collect(),
        working_dir: workdir.unwrap_or_default(),
        user: user.unwrap_or_default(),
        driver_capabilities,
        ..Default::default()
    };
    for (name, value) in ulimits {
        match name.as_str() {
            "memlock" => w.memlock = value,
            "stack" => w.stack = value,
            _ => w.nofile = u64::try_from(value).map_err(|_| CtlError::Ulimit(format!("{name}={value}")))?,
        }
    }
    Ok(w)
}

fn image_json(i: &runtime::Image) -> Value {
    json!({
        "reference": i.reference, "pulled": i.pulled, "id": i.id, "size_bytes": i.size_bytes,
        "pulled_at": i.pulled_at, "last_used_at": i.last_used_at, "containers": i.containers,
        "prefetch": i.prefetch, "state": i.state, "signature": i.signature,
    })
}

async fn images(client: &ExecutorClient, command: ImagesCommand) -> Result<(), CtlError> {
    match command {
        ImagesCommand::Pull { image } => {
            let mut steps = client.pull_image(runtime::PullImageRequest { image, owner: String::new() }).await?;
            while let Some(step) = steps.next().await {
                let step = step?;
                match &step.image {
                    Some(image) => print(&image_json(image)),
                    None if step.total_bytes > 0 => {
                        eprintln!("{} {} {}/{}", step.layer, step.status, step.current_bytes, step.total_bytes)
                    }
                    None => eprintln!("{} {}", step.layer, step.status),
                }
            }
        }
        ImagesCommand::List => {
            let list = client.list_images(runtime::ListImagesRequest {}).await?;
            for image in &list.images {
                print(&image_json(image));
            }
            print(&json!({"cache_bytes": list.cache_bytes, "high_water_bytes": list.high_water_bytes}));
        }
        ImagesCommand::Remove { image } => {
            client.remove_image(runtime::RemoveImageRequest { image: image.clone() }).await?;
            print(&json!({"removed": image}));
        }
    }
    Ok(())
}

/// `--volume NAME:/PATH[:ro]`.
fn volume_mount(text: &str) -> Result<runtime::VolumeMount, CtlError> {
    let bad = || CtlError::Volume(text.to_owned());
    let Some((volume, rest)) = text.split_once(':') else {
        // The path from the template's `volume_paths`.
        if text.is_empty() || text.contains('/') {
            return Err(bad());
        }
        return Ok(runtime::VolumeMount { volume: text.to_owned(), ..Default::default() });
    };
    let (path, read_only) = match rest.strip_suffix(":ro") {
        Some(path) => (path, true),
        None => (rest.strip_suffix(":rw").unwrap_or(rest), false),
    };
    if volume.is_empty() || !path.starts_with('/') {
        return Err(bad());
    }
    Ok(runtime::VolumeMount { volume: volume.to_owned(), container_path: path.to_owned(), read_only })
}

/// `--ulimit NAME=VALUE`, a name the workload has and a number.
fn ulimit(text: &str) -> Result<(String, i64), CtlError> {
    let bad = || CtlError::Ulimit(text.to_owned());
    let (name, value) = text.split_once('=').ok_or_else(bad)?;
    if !matches!(name, "memlock" | "nofile" | "stack") {
        return Err(bad());
    }
    Ok((name.to_owned(), value.parse().map_err(|_| bad())?))
}

/// `--port PORT[/tcp|/udp][=HOST_PORT]` as a mapping (host port 0: the pool chooses).
fn port_mapping(text: &str) -> Result<runtime::PortMapping, CtlError> {
    let bad = || CtlError::Port(text.to_owned());
    let (spec, host) = text.split_once('=').map_or((text, None), |(s, h)| (s, Some(h)));
    let (port, protocol) = spec.split_once('/').unwrap_or((spec, "tcp"));
    if !matches!(protocol, "tcp" | "udp") {
        return Err(bad());
    }
    let number = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
    Ok(runtime::PortMapping {
        container_port: number(port)?.into(),
        host_port: host.map(number).transpose()?.map_or(0, u32::from),
        protocol: protocol.to_owned(),
        ..Default::default()
    })
}

async fn containers(client: &ExecutorClient, command: ContainersCommand) -> Result<ExitCode, CtlError> {
    use ContainersCommand::*;
    let container = |c: Result<runtime::Container, tonic::Status>| c.map(|c| print(&container_json(&c)));
    match command {
        List { all } => {
            let list = client.list_containers(runtime::ListContainersRequest { all, owner: String::new() }).await?;
            for c in &list.containers {
                print(&container_json(c));
            }
        }
        Create {
            image,
            template,
            memory_bytes,
            cpu_cores,
            disk_bytes,
            gpus,
            ttl_seconds,
            env,
            start,
            ssh_keys,
            ports,
            host_port,
            workload: options,
            volumes,
            command,
        } => {
            let mut vars = std::collections::HashMap::new();
            for pair in env {
                let (k, v) = pair.split_once('=').ok_or_else(|| CtlError::Env(pair.clone()))?;
                vars.insert(k.to_owned(), v.to_owned());
            }
            let mut ports = ports;
            if let Some(host_port) = host_port {
                match ports.as_mut_slice() {
                    [only] if only.host_port == 0 => only.host_port = host_port.into(),
                    _ => return Err(CtlError::HostPort),
                }
            }
            let request = runtime::CreateContainerRequest {
                image,
                command,
                env: vars,
                resources: Some(runtime::ResourceRequest { memory_bytes, cpu_cores, disk_bytes, ..Default::default() }),
                gpu_count: gpus,
                ttl_seconds,
                ssh_public_keys: ssh_keys.iter().map(|k| key_line(k)).collect::<Result<_, _>>()?,
                ports,
                workload: Some(workload(*options)?),
                volumes,
                template: template.unwrap_or_default(),
                ..Default::default()
            };
            let created = client.create_container(request).await?;
            if start {
                container(client.start_container(runtime::ContainerRef { id: created.id }).await)?;
            } else {
                print(&container_json(&created));
            }
        }
        Start { id } => container(client.start_container(runtime::ContainerRef { id }).await)?,
        Update { id, ttl_seconds, add_ports } => {
            container(client.update_container(runtime::UpdateContainerRequest { id, ttl_seconds, add_ports }).await)?
        }
        Stop { id, timeout_seconds } => container(
            client.stop_container(runtime::StopContainerRequest { id, timeout_seconds, ..Default::default() }).await,
        )?,
        Get { id } => container(client.get_container(runtime::ContainerRef { id }).await)?,
        Stats { id } => {
            let s = client.container_stats(runtime::ContainerRef { id }).await?;
            print(&json!({
                "id": s.id, "cpu_percent": s.cpu_percent, "memory_usage_bytes": s.memory_usage_bytes,
                "memory_limit_bytes": s.memory_limit_bytes, "network_rx_bytes": s.network_rx_bytes,
                "network_tx_bytes": s.network_tx_bytes, "block_read_bytes": s.block_read_bytes,
                "block_write_bytes": s.block_write_bytes, "pids": s.pids,
                "writable_layer_bytes": s.writable_layer_bytes,
                "writable_layer_limit_bytes": s.writable_layer_limit_bytes,
                "volumes": s.volumes.iter().map(|v| json!({
                    "volume": v.volume, "container_path": v.container_path,
                    "size_bytes": v.size_bytes, "used_bytes": v.used_bytes,
                })).collect::<Vec<_>>(),
            }));
        }
        Remove { id, force } => {
            client.remove_container(runtime::RemoveContainerRequest { id: id.clone(), force }).await?;
            print(&json!({"removed": id}));
        }
        SshKey(SshKeyCommand::Add { id, keys }) => {
            let ssh_public_keys = keys.iter().map(|k| key_line(k)).collect::<Result<_, _>>()?;
            let keys = client.add_container_key(access::AddContainerKeyRequest { container_id: id, ssh_public_keys });
            print(&keys_json(&keys.await?));
        }
        SshKey(SshKeyCommand::Remove { id, key }) => {
            let ssh_public_key = if key.starts_with("SHA256:") { key } else { key_line(&key)? };
            let request = access::RemoveContainerKeyRequest { container_id: id, ssh_public_key };
            print(&keys_json(&client.remove_container_key(request).await?));
        }
        SshKey(SshKeyCommand::List { id }) => {
            let request = access::ListContainerKeysRequest { container_id: id };
            print(&keys_json(&client.list_container_keys(request).await?));
        }
        Exec { id, timeout_seconds, max_output_bytes, env, command } => {
            let request =
                api::ExecContainerRequest { id, command, timeout_seconds, max_output_bytes, stdin: Vec::new(), env };
            return exec(client, request).await;
        }
        Logs { id, follow, tail } => {
            use std::io::Write;
            let mut stream = client.stream_logs(runtime::LogsRequest { id, follow, tail, since: 0 }).await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                let written = if chunk.stream() == runtime::LogStream::Stderr {
                    std::io::stderr().write_all(&chunk.data)
                } else {
                    std::io::stdout().write_all(&chunk.data).and_then(|()| std::io::stdout().flush())
                };
                // A closed pipe (`| head`) ends the command quietly.
                if written.is_err() {
                    break;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit code of `containers exec` when the command ran past its timeout, as `timeout(1)`.
pub const EXEC_TIMED_OUT: u8 = 124;

/// `containers exec`: the output written as it comes, then the command's exit code (124 when
/// it timed out; 1 when it was stopped at the output cap or the executor cannot say).
async fn exec(client: &ExecutorClient, request: api::ExecContainerRequest) -> Result<ExitCode, CtlError> {
    use std::io::Write;

    use api::exec_container_output::Output;
    let mut stream = client.exec_container(request).await?;
    while let Some(message) = stream.next().await {
        // A closed pipe (`| head`) stops writing, not reading: the end is still to come.
        match message?.output {
            Some(Output::Stdout(bytes)) => {
                let _ = std::io::stdout().write_all(&bytes).and_then(|()| std::io::stdout().flush());
            }
            Some(Output::Stderr(bytes)) => {
                let _ = std::io::stderr().write_all(&bytes);
            }
            Some(Output::End(end)) => {
                if end.timed_out {
                    eprintln!("executor ctl: the command ran past its timeout and was stopped");
                    return Ok(ExitCode::from(EXEC_TIMED_OUT));
                }
                if end.truncated {
                    eprintln!("executor ctl: the output reached --max-output-bytes; the command was stopped");
                    return Ok(ExitCode::FAILURE);
                }
                return Ok(u8::try_from(end.exit_code).map_or(ExitCode::FAILURE, ExitCode::from));
            }
            None => {}
        }
    }
    Err(CtlError::ExecUnfinished)
}

/// A key argument: an OpenSSH line as given, or the line of a `.pub` file.
fn key_line(arg: &str) -> Result<String, CtlError> {
    let path = Path::new(arg);
    if arg.starts_with("ssh-") || arg.starts_with("ecdsa-") || !path.exists() {
        return Ok(arg.to_owned());
    }
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|source| CtlError::KeyFile { path: path.to_owned(), source })
}

fn keys_json(k: &access::ContainerKeys) -> Value {
    let keys: Vec<Value> = k
        .keys
        .iter()
        .map(|key| json!({"fingerprint": key.fingerprint, "comment": key.comment, "added_at": key.added_at}))
        .collect();
    json!({"container": k.container_id, "keys": keys, "ssh": k.ssh_command, "sessions_closed": k.sessions_closed})
}

fn grant_json(g: &access::Grant) -> Value {
    json!({
        "grant_id": g.grant_id, "validator_hotkey": g.validator_hotkey,
        "ssh_public_key_fingerprint": g.ssh_public_key_fingerprint, "created_at": g.created_at,
        "expires_at": g.expires_at, "ssh_user": g.ssh_user, "ssh_endpoint": g.ssh_endpoint,
    })
}

async fn grants(client: &ExecutorClient, command: GrantsCommand) -> Result<(), CtlError> {
    match command {
        GrantsCommand::List => {
            let list = client.list_validator_grants(access::ListGrantsRequest {}).await?;
            for g in &list.grants {
                print(&grant_json(g));
            }
        }
        GrantsCommand::Challenge { validator_hotkey, ssh_public_key, ttl_seconds } => {
            let request = access::ChallengeRequest { validator_hotkey, ssh_public_key, ttl_seconds };
            let c = client.request_validator_challenge(request).await?;
            print(&json!({"challenge_id": c.challenge_id, "message": hex_of(&c.message), "expires_at": c.expires_at}));
        }
        GrantsCommand::Provision { validator_hotkey, ssh_public_key, ttl_seconds, challenge_id, signature } => {
            let signature = from_hex(&signature).ok_or(CtlError::SignatureNotHex)?;
            let grant = client
                .provision_validator_access(access::ProvisionRequest {
                    validator_hotkey,
                    ssh_public_key,
                    ttl_seconds,
                    challenge_id,
                    signature,
                })
                .await?;
            print(&grant_json(&grant));
        }
        GrantsCommand::Revoke { grant_id } => {
            let r = client.revoke_validator_access(access::RevokeRequest { grant_id }).await?;
            print(&json!({"sessions_closed": r.sessions_closed}));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_as_written() {
        let read = |t: &str| port_mapping(t).map(|p| (p.container_port, p.protocol, p.host_port));
        assert_eq!(read("8888").unwrap(), (8888, "tcp".to_owned(), 0));
        assert_eq!(read("53/udp").unwrap(), (53, "udp".to_owned(), 0));
        assert_eq!(read("8888/tcp=40010").unwrap(), (8888, "tcp".to_owned(), 40010));
        for bad in ["", "0", "70000", "80/sctp", "80=", "80=x", "x"] {
            let err = read(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("--port `{bad}` is not")), "{err}");
        }
    }

    /// What `executor ctl: ...` prints for each error, as before the errors were typed.
    #[test]
    fn errors_print_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "not a key").unwrap();
        let not_found = format!("--key-file {}: No such file or directory (os error 2)", missing.display());
        for (got, want) in [
            (load_key(Some(&missing)).unwrap_err().to_string(), not_found.as_str()),
            (
                KeyError::Missing.to_string(),
                "needs the miner hotkey's secret: --key-file FILE or the environment variable MINER_HOTKEY_SECRET",
            ),
            (CtlError::Status(tonic::Status::not_found("no container x")).to_string(), "NotFound: no container x"),
            (CtlError::Env("A".into()).to_string(), "--env `A` is not KEY=VALUE"),
            (CtlError::SignatureNotHex.to_string(), "--signature is not hex"),
        ] {
            assert_eq!(got, want);
        }
        let parse = load_key(Some(&bad)).unwrap_err();
        assert!(matches!(parse, KeyError::Parse { .. }), "{parse:?}");
        assert!(parse.to_string().starts_with(&format!("--key-file {}: ", bad.display())), "{parse}");
    }
}
