//! The configuration as the operator meets it: the `check_err` table (one bad value per line,
//! the error naming key, file and what is wrong), defaults, the guide's keys, origins.

use std::path::Path;
use std::time::Duration;

use super::*;

const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";

fn load(toml: &str) -> (tempfile::TempDir, Result<LoadedConfig, ConfigError>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("executor.toml");
    std::fs::write(&path, toml).unwrap();
    let loaded = Config::load_from(&path, false);
    (dir, loaded)
}

/// `toml` must fail with one issue whose rendering contains every `expected` fragment.
fn check_err(toml: &str, expected: &[&str]) {
    let (dir, loaded) = load(toml);
    let err = loaded.expect_err(toml).to_string();
    let file = dir.path().join("executor.toml").display().to_string();
    assert!(err.contains(&file), "error does not name the file:\n{err}");
    for fragment in expected {
        assert!(err.contains(fragment), "expected `{fragment}` in:\n{err}");
    }
}

#[test]
fn bad_values_name_key_and_file() {
    check_err("unknown = 1", &["key `unknown`", "unknown key"]);
    check_err("[server]\nprot = 1", &["key `server.prot`", "unknown key", "port"]);
    check_err("[docker.resource_limits]\nmemroy_bytes = 1", &["key `docker.resource_limits.memroy_bytes`"]);
    check_err("[server]\nport = \"fifty\"", &["key `server.port`", "fifty"]);
    check_err(
        "[docker.network_config]\nenable_isolation = false\nallow_internet = true",
        &["key `docker.network_config.allow_internet`", "docker.network_config.enable_isolation = true"],
    );
    check_err("[server]\nport = 70000", &["key `server.port`", "70000"]);
    check_err(
        "[tenant_access]\nssh_port = 22",
        &["key `tenant_access.ssh_port`", "already used by `validator.ssh_port`"],
    );
    check_err("[tenant_access]\nmax_keys_per_container = 0", &["key `tenant_access.max_keys_per_container`"]);
    check_err(
        "[tenant_access]\nmax_sessions_per_container = 2\nmax_sessions_per_key = 3",
        &["key `tenant_access.max_sessions_per_key`"],
    );
    check_err("[tenant_access]\nidle_timeout = \"1s\"", &["key `tenant_access.idle_timeout`"]);
    check_err("[tenant_access]\nlogin_grace_time = \"1h\"", &["key `tenant_access.login_grace_time`"]);
    check_err("[tenant_access]\nmax_channels_per_session = 0", &["key `tenant_access.max_channels_per_session`"]);
    check_err("[tenant_access]\nssh_requests_per_minute = 0", &["key `tenant_access.ssh_requests_per_minute`"]);
    check_err(
        "[tenant_access]\nmax_unauthenticated_connections = 2\nmax_unauthenticated_per_address = 3",
        &["key `tenant_access.max_unauthenticated_per_address`"],
    );
    check_err("[tenant_access]\nshell = \"bash\"", &["key `tenant_access.shell`", "unknown key"]);
    check_err("[docker.ports]\nranges = [\"80-90\"]", &["key `docker.ports.ranges`", "below 1024"]);
    check_err("[docker.ports]\nranges = [\"40000-40010\", \"40005\"]", &["key `docker.ports.ranges`", "overlaps"]);
    check_err("[docker.ports]\nranges = [\"40010-40000\"]", &["key `docker.ports.ranges.0`", "above the last"]);
    check_err("[docker.ports]\nranges = [\"4x\"]", &["key `docker.ports.ranges.0`", "not a port range"]);
    check_err("[docker.ports]\nreserved = [\"30000\"]", &["key `docker.ports.reserved`", "in no range"]);
    check_err("[docker.ports]\nhost_ip = \"239.1.1.1\"", &["key `docker.ports.host_ip`", "multicast"]);
    check_err("[docker.ports]\nexternal_host = \"bad host!\"", &["key `docker.ports.external_host`"]);
    check_err(
        "[[docker.ports.nat]]\nhost = \"40000-40009\"\nexternal = \"50000-50008\"",
        &["key `docker.ports.nat`", "10 ports, external `50000-50008` 9"],
    );
    check_err(
        "[[docker.ports.nat]]\nhost = \"41000-41009\"\nexternal = \"50000-50009\"",
        &["key `docker.ports.nat`", "not within one range"],
    );
    check_err(
        "[[docker.ports.nat]]\nhost = \"40000\"\nexternal = \"1\"\nproto = 1",
        &["key `docker.ports.nat", "unknown"],
    );
    check_err("[docker.ports]\nrange = [\"40000\"]", &["key `docker.ports.range`", "unknown key"]);
    check_err("[tenant_access]\nciphers = []", &["key `tenant_access.ciphers`", "at least one"]);
    check_err("[tenant_access]\nciphers = [\"3des-cbc\"]", &["key `tenant_access.ciphers", "unknown variant"]);
    check_err("[docker.volumes]\nmax_volume_bytes = 1024", &["key `docker.volumes.max_volume_bytes`", "out of range"]);
    check_err(
        "[docker.volumes]\nmax_volume_bytes = 1073741824\nmax_total_bytes = 536870912",
        &["key `docker.volumes.max_total_bytes`", "out of range"],
    );
    check_err("[docker.images]\nprefetch = [\"a b\"]", &["key `docker.images.prefetch[0]`", "not an image reference"]);
    check_err("[docker.images]\nprefetch = [\"x:1\", \"x:1\"]", &["key `docker.images.prefetch[1]`", "listed twice"]);
    check_err("[docker.images]\ngc_high_water_bytes = -1", &["docker.images.gc_high_water_bytes"]);
    check_err("[docker.templates.t]\nimage = \"\"", &["key `docker.templates.t.image`", "not an image reference"]);
    check_err(
        "[docker.templates.t]\nimage = \"x:1\"\nports = [\"8888/sctp\"]",
        &["key `docker.templates.t.ports[0]`", "tcp or udp"],
    );
    check_err(
        "[docker.templates.t]\nimage = \"x:1\"\nvolume_paths = [\"data\"]",
        &["key `docker.templates.t.volume_paths[0]`", "not an absolute path"],
    );
    check_err(
        "[docker.templates.t]\nimage = \"x:1\"\nenv = { NVIDIA_VISIBLE_DEVICES = \"all\" }",
        &["key `docker.templates.t.env`", "NVIDIA_"],
    );
    check_err("[docker.templates.\"a b\"]\nimage = \"x:1\"", &["docker.templates.a b", "template name"]);
    check_err("[docker.templates.t]\nimage = \"x:1\"\nshell = \"bash\"", &["docker.templates.t.shell", "unknown"]);
    check_err("[docker.workload]\nshm_fraction = 0.0", &["key `docker.workload.shm_fraction`", "not in (0, 1]"]);
    check_err("[docker.workload]\nmemlock = -2", &["key `docker.workload.memlock`", "neither -1"]);
    check_err("[docker.workload]\nstack = 4096", &["key `docker.workload.stack`", "neither -1"]);
    check_err("[docker.workload]\nnofile = 2000000", &["key `docker.workload.nofile`", "out of range"]);
    check_err("[docker.workload]\nipc_modes = [\"shareable\"]", &["key `docker.workload.ipc_modes`", "must list"]);
    check_err("[docker.workload]\nipc_modes = [\"host\"]", &["key `docker.workload.ipc_modes", "unknown variant"]);
    check_err(
        "[docker.gpu_config]\ndriver_capabilities = [\"all\"]",
        &["key `docker.gpu_config.driver_capabilities", "unknown variant"],
    );
    check_err("[docker.gpu_config]\ndriver_capabilities = []", &["key `docker.gpu_config.driver_capabilities`"]);
    check_err("[server]\nport = 0", &["key `server.port`", "not 0"]);
    check_err("[server]\nport = -1", &["key `server.port`"]);
    check_err("[server]\nhost = \"localhost:1\"", &["key `server.host`"]);
    check_err("managing_miner_hotkey = \"5Grw\"", &["key `managing_miner_hotkey`", "decodes to"]);
    check_err("[system]\nmax_gpu_memory_usage = 120.0", &["key `system.max_gpu_memory_usage`", "out of range"]);
    check_err("[system]\nupdate_interval = \"soon\"", &["key `system.update_interval`", "not a duration"]);
    check_err("[docker.gpu_config]\nmemory_fraction = 0.0", &["key `docker.gpu_config.memory_fraction`"]);
    check_err("[docker.gpu_config]\nmemory_fraction = 1.5", &["(0, 1]"]);
    check_err("[docker.gpu_config]\nvisible_devices = \"0,x\"", &["key `docker.gpu_config.visible_devices`", "`x`"]);
    check_err(
        "[docker.gpu_config]\nvisible_devices = \"MIG-4f1e-0000\"",
        &["key `docker.gpu_config.visible_devices`", "`MIG-4f1e-0000` is a MIG instance", "rents whole GPUs"],
    );
    check_err("[docker]\nmode = \"shared\"", &["key `docker.mode`", "found `shared`"]);
    check_err(
        "[docker.gpu_config]\non_gpu_error = \"ignore\"",
        &["key `docker.gpu_config.on_gpu_error`", "found `ignore`"],
    );
    check_err("[system]\nignored_xids = [13, 0]", &["key `system.ignored_xids[1]`", "0 is not an Xid"]);
    check_err("[system]\nignored_xids = [13, 13]", &["key `system.ignored_xids[1]`", "13 is listed twice"]);
    check_err(
        "[docker.registry]\nallowed_registries = [\"https://docker.io\"]",
        &["key `docker.registry.allowed_registries`", "not a registry host"],
    );
    check_err("[docker.registry]\nallowed_registries = [\"docker.io/library\"]", &["not a registry host"]);
    check_err("[docker.registry]\nallowed_registries = []", &["at least one"]);
    // Signatures: keys needed, nothing set that would have no effect, hosts must be allowed.
    check_err(
        "[docker.registry]\nverify_signatures = true",
        &["key `docker.registry.cosign_public_keys`", "at least one key", "`docker.io`"],
    );
    check_err(
        "[docker.registry]\nsignature_mode = \"warn\"",
        &["key `docker.registry.signature_mode`", "no effect while docker.registry.verify_signatures = false"],
    );
    check_err("[docker.registry]\ncosign_public_keys = [\"k.pub\"]", &["key `docker.registry.cosign_public_keys`"]);
    check_err("[docker.registry]\nsignature_mode = \"block\"", &["signature_mode", "enforce"]);
    check_err(
        "[docker.registry.registries.\"ghcr.io\"]\nusername = \"me\"",
        &["not in docker.registry.allowed_registries", "registries.\"ghcr.io\".password_file`: required"],
    );
    check_err("[docker.registry.registries.\"docker.io\"]\ncolour = 1", &["colour"]);
    check_err("[docker.registry]\npull_timeout = \"0s\"", &["key `docker.registry.pull_timeout`"]);
    check_err(
        "[docker.network_config]\ndns_servers = [\"8.8.8\"]",
        &["key `docker.network_config.dns_servers.0`", "invalid IP"],
    );
    check_err("[docker.resource_limits]\ncpu_cores = -1.0", &["key `docker.resource_limits.cpu_cores`"]);
    check_err("[docker.resource_limits]\nmemory_bytes = 1", &["key `docker.resource_limits.memory_bytes`"]);
    check_err("[docker]\nmax_concurrent_containers = 0", &["key `docker.max_concurrent_containers`"]);
    check_err(
        "[docker]\nextra_capabilities = [\"SYS_ADMIN\"]",
        &["key `docker.extra_capabilities", "SYS_ADMIN", "DAC_OVERRIDE"],
    );
    check_err("[docker]\nextra_capabilities = [\"CAP_FOWNER\"]", &["key `docker.extra_capabilities", "CAP_FOWNER"]);
    check_err(
        "[advertised_endpoint]\ngrpc_endpoint = \"ftp://x:1\"",
        &["key `advertised_endpoint.grpc_endpoint`", "http://"],
    );
    check_err("[advertised_endpoint]\nssh_endpoint = \"http://x:22\"", &["ssh://"]);
    check_err("[advertised_endpoint]\nhealth_endpoint = \"http://bad_host:1/health\"", &["not a host name"]);
    check_err("[logging]\nformat = \"xml\"", &["key `logging.format`", "xml"]);
    check_err("[logging]\nlevel = \"info,=[\"", &["key `logging.level`"]);
    check_err(
        "[metrics]\nlauncher_port = 9090",
        &["key `metrics.launcher_port`", "already used by `metrics.executor_api_port`"],
    );
    check_err("[server]\nhealth_port = 50051", &["key `server.health_port`", "`server.port`"]);
    check_err("[validator.access_config.rate_limits]\nssh_requests_per_minute = 0", &["ssh_requests_per_minute"]);
    check_err("[validator]\ncommand_max_memory_bytes = 1024", &["key `validator.command_max_memory_bytes`"]);
    check_err("[validator]\ncommand_max_pids = 1", &["key `validator.command_max_pids`", "8 to"]);
    check_err("[validator]\ncommand_max_cpus = 0.0", &["key `validator.command_max_cpus`"]);
    let limits = "[validator.access_config.limits]";
    check_err(&format!("{limits}\nmax_channels_per_session = 0"), &["limits.max_channels_per_session`"]);
    check_err(&format!("{limits}\nmax_commands_per_session = 65"), &["limits.max_commands_per_session`"]);
    check_err(&format!("{limits}\nmax_commands_per_grant = 0"), &["limits.max_commands_per_grant`"]);
    check_err(&format!("{limits}\nmax_unauthenticated_connections = 0"), &["limits.max_unauthenticated_connections`"]);
    check_err(
        &format!("{limits}\nmax_unauthenticated_connections = 4\nmax_unauthenticated_per_address = 5"),
        &["limits.max_unauthenticated_per_address`", "1 to 4"],
    );
    check_err(&format!("{limits}\nlogin_grace_time = \"0s\""), &["limits.login_grace_time`", "between 1s and 10m"]);
    check_err("[launcher]\nrestart_backoff_max = \"1ms\"", &["key `launcher.restart_backoff_max`"]);
    check_err("not toml [", &["executor.toml"]);
    check_err("[system]\ngpu_backend = \"simulated\"", &["key `system.simulated_gpus_file`: required"]);
    check_err("[system]\nsimulated_gpus_file = \"x.json\"", &["key `system.simulated_gpus_file`: only used"]);
    check_err("[system]\ngpu_backend = \"fake\"", &["key `system.gpu_backend`"]);
    check_err("[system]\ncollector_timeout = \"10s\"", &["key `system.collector_timeout`"]);
    check_err("[server]\nauth_time_window = \"0s\"", &["key `server.auth_time_window`", "between 1s and 1h"]);
    check_err("[server]\nrequest_timeout = \"2h\"", &["key `server.request_timeout`"]);
    check_err(
        "[server]\nmax_connections = 10",
        &["key `server.max_connections_per_ip`", "32 is more than server.max_connections (10)"],
    );
    check_err("[server]\nmax_connections_per_ip = 0", &["key `server.max_connections_per_ip`", "out of range"]);
    check_err("[server]\nhandshake_timeout = \"10ms\"", &["key `server.handshake_timeout`", "between 100ms and 5m"]);
    check_err("[server]\nauth_failures_per_minute = 0", &["key `server.auth_failures_per_minute`", "out of range"]);
    check_err("[server]\nmax_connection_age = \"1s\"", &["key `server.max_connection_age`", "between 1m and 30days"]);
    check_err("[server]\nsession_ttl = \"10s\"", &["key `server.session_ttl`", "between 1m and 1day"]);
    check_err("[server]\nmax_sessions = 0", &["key `server.max_sessions`", "out of range"]);
    check_err("[server]\ntls_cert_path = \"c.pem\"", &["key `server.tls_key_path`: required"]);
    check_err("[server]\ntls_key_path = \"k.pem\"", &["key `server.tls_cert_path`: required"]);
}

#[test]
fn unusable_data_dir_names_the_key() {
    let (dir, loaded) = load("");
    let _ = loaded;
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"").unwrap();
    let (_dir2, loaded) = load(&format!("data_dir = \"{}/sub\"", blocker.display()));
    let err = loaded.unwrap().prepare_dirs().unwrap_err().to_string();
    assert!(err.contains("key `data_dir`: cannot create"), "{err}");
}

/// Issue 18 item 9: a state directory others can write (or that another user owns) was used as
/// it was; whoever writes it can swap the grants, the key or the sockets. Now start and
/// `validate` refuse it, naming the key.
#[test]
fn state_dirs_others_can_write_or_own_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    for (key, mode, expected) in [
        ("data_dir", 0o777, "is writable by group and others (mode 777): chmod go-w"),
        ("runtime_dir", 0o757, "is writable by others (mode 757)"),
        ("data_dir", 0o770, "is writable by its group (mode 770)"),
    ] {
        let (dir, _) = load("");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(mode)).unwrap();
        let (_dir2, loaded) = load(&format!("{key} = \"{}\"", state.display()));
        let err = loaded.unwrap().prepare_dirs().unwrap_err().to_string();
        assert!(err.contains(&format!("key `{key}`")) && err.contains(expected), "{err}");
    }
    // Owned by another user (the tests run as root; elsewhere chown is not ours to do).
    if nix::unistd::geteuid().is_root() {
        let (dir, _) = load("");
        let state = dir.path().join("theirs");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
        let (_dir2, loaded) = load(&format!("data_dir = \"{}\"", state.display()));
        let err = loaded.unwrap().prepare_dirs().unwrap_err().to_string();
        assert!(err.contains("is owned by uid 65534, not by the user the executor runs as (uid 0)"), "{err}");
    }
    // Tight modes are fine, and a missing directory is created tight.
    let (dir, _) = load("");
    let (_dir2, loaded) = load(&format!("data_dir = \"{}/new/data\"", dir.path().display()));
    loaded.unwrap().prepare_dirs().unwrap();
}

#[test]
fn every_issue_is_reported() {
    let (_dir, loaded) = load("[server]\nport = 0\nhealth_port = 0\n");
    assert_eq!(loaded.unwrap_err().issues.len(), 2);
}

#[test]
fn missing_file_is_an_error() {
    let err = Config::load_from(Path::new("/nonexistent/executor.toml"), false).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/executor.toml") && err.contains("cannot read"), "{err}");
}

#[test]
fn defaults_are_safe_and_miner_hotkey_is_required() {
    let (_dir, loaded) = load("");
    let loaded = loaded.unwrap();
    let c = &loaded.config;
    assert!(c.managing_miner_hotkey.is_none());
    assert!(loaded.require_miner_hotkey().unwrap_err().to_string().contains("key `managing_miner_hotkey`: missing"));
    assert!(c.validator.strict_ssh_restrictions && !c.docker.enable_gpu_passthrough);
    assert!(!c.docker.network_config.allow_internet && c.docker.network_config.enable_isolation);
    assert!(c.metrics.host.is_loopback());
    assert!(loaded.not_yet_enforced().is_empty(), "defaults are not operator settings");
}

#[test]
fn parses_the_guide_keys_and_reports_unenforced_ones() {
    let (dir, loaded) = load(&format!(
        r#"managing_miner_hotkey = "{ALICE}"
data_dir = "rel/data"
[server]
host = "0.0.0.0"
port = 50051
advertised_host = "203.0.113.7"
advertised_port = 443
advertised_tls = true
max_connections = 2000
[docker]
enable_gpu_passthrough = true
max_concurrent_containers = 20
[docker.resource_limits]
memory_bytes = 8589934592
cpu_cores = 4.0
gpu_memory_bytes = 4294967296
disk_io_bps = 104857600
network_bps = 104857600
[docker.network_config]
enable_isolation = true
allow_internet = false
dns_servers = ["8.8.8.8", "8.8.4.4"]
[docker.gpu_config]
visible_devices = "0,1,2,3"
memory_fraction = 0.8
[docker.registry]
url = "docker.io"
verify_signatures = true
cosign_public_keys = ["keys/cosign.pub"]
allowed_registries = ["docker.io", "ghcr.io", "quay.io", "127.0.0.1:5000"]
[docker.registry.registries."127.0.0.1:5000"]
signature_mode = "warn"
username = "ci"
password_file = "keys/registry-password"
[system]
enable_gpu_monitoring = true
max_gpu_memory_usage = 90.0
[validator]
enabled = true
strict_ssh_restrictions = false
ssh_port = 22
[validator.access_config.hotkey_verification]
enabled = true
challenge_timeout_seconds = 300
max_signature_attempts = 3
[validator.access_config.rate_limits]
ssh_requests_per_minute = 10
api_requests_per_minute = 100
[advertised_endpoint]
grpc_endpoint = "http://203.0.113.7:50051"
ssh_endpoint = "ssh://203.0.113.7:22"
health_endpoint = "http://203.0.113.7:50052/health"
[launcher]
shutdown_timeout = "1m 30s"
"#
    ));
    let loaded = loaded.unwrap();
    let c = &loaded.config;
    assert_eq!(loaded.require_miner_hotkey().unwrap().as_str(), ALICE);
    assert!(c.data_dir.is_absolute() && c.data_dir.ends_with("rel/data"));
    assert_eq!(c.docker.gpu_config.memory_fraction.get(), 0.8);
    assert_eq!(c.launcher.shutdown_timeout, Duration::from_secs(90));
    assert_eq!(parse_visible_devices(&c.docker.gpu_config.visible_devices).unwrap().unwrap().len(), 4);
    let pending = loaded.not_yet_enforced();
    let file = dir.path().join("executor.toml").display().to_string();
    assert!(pending.iter().all(|p| p.origin == file));
    for enforced in ["server.port", "docker.registry.verify_signatures", "advertised_endpoint.grpc_endpoint"] {
        assert!(!pending.iter().any(|p| p.key == enforced), "{enforced} is enforced");
    }
    let registry = &c.docker.registry;
    assert!(
        registry.cosign_public_keys[0].is_absolute() && registry.cosign_public_keys[0].ends_with("keys/cosign.pub")
    );
    assert_eq!(registry.mode_for("docker.io"), Some(SignatureMode::Enforce));
    assert_eq!(registry.mode_for("127.0.0.1:5000"), Some(SignatureMode::Warn));
    assert_eq!(registry.keys_for("127.0.0.1:5000"), registry.cosign_public_keys.as_slice());
    let local = &registry.registries["127.0.0.1:5000"];
    assert!(local.password_file.as_ref().unwrap().is_absolute());
}

/// Issue 18 item 3: registry hosts compare case-insensitively, and every key naming one is
/// stored in the normal form images are looked up by (`ImageRef::parse` makes the same).
#[test]
fn registry_hosts_are_normalised_when_loaded() {
    let (_dir, loaded) = load(
        r#"
[docker.registry]
url = "Index.Docker.IO"
verify_signatures = true
cosign_public_keys = ["k.pub"]
allowed_registries = ["Docker.IO", "GHCR.io", "LocalHost:5000"]
[docker.registry.registries."ghcr.IO"]
signature_mode = "warn"
cosign_public_keys = ["ghcr.pub"]
"#,
    );
    let registry = loaded.unwrap().config.docker.registry;
    assert_eq!(registry.url.as_str(), "docker.io");
    assert_eq!(registry.allowed_registries, ["docker.io", "ghcr.io", "localhost:5000"]);
    assert_eq!(registry.registries.keys().collect::<Vec<_>>(), ["ghcr.io"]);
    assert_eq!(registry.mode_for("ghcr.io"), Some(SignatureMode::Warn));
    assert!(registry.keys_for("ghcr.io")[0].ends_with("ghcr.pub"));
    assert_eq!(registry.mode_for("localhost:5000"), Some(SignatureMode::Enforce));
    assert_eq!(normalise_registry_host("[::AB]:5000"), "[::ab]:5000");
    assert_eq!(normalise_registry_host("INDEX.docker.io"), "docker.io");

    // Two keys for one registry would leave which settings apply to chance.
    check_err(
        "[docker.registry]\nallowed_registries = [\"ghcr.io\"]\n[docker.registry.registries.\"ghcr.io\"]\n[docker.registry.registries.\"GHCR.io\"]",
        &["key `docker.registry.registries.\"ghcr.io\"`", "`GHCR.io` and `ghcr.io` name one registry (`ghcr.io`)"],
    );
}

#[test]
fn every_unenforced_key_exists() {
    let value = serde_json::to_value(Config::default()).unwrap();
    for (key, _) in NOT_YET_ENFORCED {
        let found = key.split('.').try_fold(&value, |v, k| v.get(k));
        assert!(found.is_some(), "{key} is not a config key");
    }
}

/// validator-access serves validators and renters: it runs while either side is enabled, and
/// only the enabled sides' SSH ports are listeners.
#[test]
fn validator_access_runs_for_validators_or_renters() {
    use crate::ServiceName::ValidatorAccess;
    let with = |validator: bool, tenants: bool| {
        let mut c = Config::default();
        c.validator.enabled = validator;
        c.tenant_access.enabled = tenants;
        let ports: Vec<&str> = c.listeners().into_iter().map(|(key, _, _)| key).collect();
        (c.services().contains(&ValidatorAccess), ports)
    };
    let (runs, ports) = with(true, true);
    assert!(runs && ports.contains(&"validator.ssh_port") && ports.contains(&"tenant_access.ssh_port"));
    let (runs, ports) = with(false, true);
    assert!(runs && !ports.contains(&"validator.ssh_port") && ports.contains(&"tenant_access.ssh_port"));
    let (runs, ports) = with(true, false);
    assert!(runs && !ports.contains(&"tenant_access.ssh_port"));
    let (runs, ports) = with(false, false);
    assert!(!runs && !ports.contains(&"metrics.validator_access_port"));
}
