//! validator-access as a process, with the distribution's OpenSSH client: grants after a
//! signed hotkey challenge, the attestor over SSH (and `gpu-attestor check` end to end),
//! everything strict mode refuses, revocation and expiry ending access, every process a command
//! starts dying with it (cgroups), the limits of a command, a session and a grant, the signed
//! challenge binding key and TTL, lock-out, the rate limit, the caps on unauthenticated
//! connections and the login grace time, refusals audited once per peer and minute, grants
//! across `kill -9` and a torn grants file, system-sshd mode, and the audit log.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::ServiceName;
use common::process::{CapturedOutput, ProcessSpec};
use common::proto::access::v1 as pb;
use common::proto::access::v1::validator_access_client::ValidatorAccessClient;
use e2e::ssh::{Multiplexed, client_args as ssh_args};
use e2e::{TestConfig, require_tool, wait_serving};
use tonic::Code;
use tonic::transport::Channel;

type Client = ValidatorAccessClient<Channel>;

fn have_ssh() -> bool {
    require_tool(
        "OpenSSH client (ssh, ssh-keygen)",
        Path::new("/usr/bin/ssh").exists() && Path::new("/usr/bin/ssh-keygen").exists(),
    )
}

/// The service as a process, stopped with SIGTERM when dropped, as at any shutdown, so that it
/// kills the commands it runs and their cgroups go (SIGKILL, the child's own drop, would leave
/// them to the next start of the same executor, which a test never makes). It finishes on its
/// own; the test does not wait for it.
struct Service(Option<tokio::process::Child>);

impl std::ops::Deref for Service {
    type Target = tokio::process::Child;
    fn deref(&self) -> &tokio::process::Child {
        self.0.as_ref().expect("the service")
    }
}

impl std::ops::DerefMut for Service {
    fn deref_mut(&mut self) -> &mut tokio::process::Child {
        self.0.as_mut().expect("the service")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let Some(child) = self.0.take() else { return };
        if let Some(pid) = child.id() {
            let _ = common::process::send_signal(pid, nix::sys::signal::Signal::SIGTERM);
            // Not dropped: that would send SIGKILL after the SIGTERM.
            std::mem::forget(child);
        }
    }
}

async fn start(config: &TestConfig, env: &[(&str, &str)]) -> (Service, Client) {
    let mut spec = ProcessSpec::new(e2e::binary("validator-access")).arg("--config").arg(&config.path);
    for (k, v) in env {
        spec = spec.env(k, v);
    }
    let child = spec.spawn_supervised().unwrap();
    let socket = ServiceName::ValidatorAccess.socket(&config.runtime_dir());
    wait_serving(&socket, Duration::from_secs(30)).await.unwrap();
    (Service(Some(child)), ValidatorAccessClient::new(common::grpc::unix_channel(&socket)))
}

/// A validator: an sr25519 hotkey and an SSH key pair.
struct Validator {
    keypair: schnorrkel::Keypair,
    hotkey: String,
    ssh_key: PathBuf,
}

async fn validator(dir: &Path, name: &str, seed: u8) -> Validator {
    let keypair = e2e::keys::sr25519(seed);
    let hotkey = e2e::keys::hotkey_of(&keypair);
    let ssh_key = dir.join(name);
    e2e::keys::ssh_keygen(&ssh_key, name).await;
    Validator { keypair, hotkey, ssh_key }
}

impl Validator {
    fn public_key(&self) -> String {
        std::fs::read_to_string(self.ssh_key.with_extension("pub")).unwrap()
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        e2e::keys::sign(&self.keypair, message)
    }

    /// A challenge for this validator's hotkey and SSH key, for grants of up to `ttl_seconds`.
    fn challenge_request(&self, ttl_seconds: u64) -> pb::ChallengeRequest {
        pb::ChallengeRequest { validator_hotkey: self.hotkey.clone(), ssh_public_key: self.public_key(), ttl_seconds }
    }

    async fn grant(&self, client: &mut Client, ttl_seconds: u64) -> pb::Grant {
        let challenge = client.request_challenge(self.challenge_request(ttl_seconds)).await.unwrap();
        let challenge = challenge.into_inner();
        let request = pb::ProvisionRequest {
            validator_hotkey: self.hotkey.clone(),
            ssh_public_key: self.public_key(),
            ttl_seconds,
            challenge_id: challenge.challenge_id,
            signature: self.sign(&challenge.message),
        };
        client.provision(request).await.unwrap().into_inner()
    }
}

async fn ssh(port: u16, key: &Path, before: &[&str], command: &[&str]) -> CapturedOutput {
    ProcessSpec::new("ssh")
        .args(before.iter().copied())
        .args(ssh_args(port, key))
        .args(command.iter().copied())
        .output(Duration::from_secs(60), 1 << 20)
        .await
        .unwrap()
}

fn text(out: &CapturedOutput) -> (String, String) {
    (e2e::process::stdout(out), e2e::process::stderr(out))
}

/// Waits until the grant's only session is the one running `line` (the ssh client `command`),
/// revokes `grant_id`, and checks that the client ends within 2 s. Only, and running `line`: a
/// connection of the grant the test closed just before may still be listed, with commands of
/// its own, before the new one has logged in, and end on its own before the revocation.
async fn revoke_while_running(client: &mut Client, grant_id: &str, line: &str, command: &mut tokio::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sessions = client.list_sessions(pb::ListSessionsRequest {}).await.unwrap().into_inner().sessions;
        let of_grant: Vec<_> = sessions.iter().filter(|s| s.grant_id == grant_id).collect();
        if let [session] = of_grant[..]
            && session.commands.iter().any(|c| c == line)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the session never showed up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let revoked_at = Instant::now();
    let revoked = tokio::time::timeout(
        Duration::from_secs(10),
        client.revoke(pb::RevokeRequest { grant_id: grant_id.to_owned() }),
    )
    .await
    .expect("the revocation hung")
    .unwrap()
    .into_inner();
    assert_eq!(revoked.sessions_closed, 1);
    tokio::time::timeout(Duration::from_secs(10), command.wait())
        .await
        .expect("the session outlived its grant")
        .unwrap();
    let ended = revoked_at.elapsed();
    println!("revocation ended the session in {ended:?}");
    assert!(ended < Duration::from_secs(2), "session outlived its grant by {ended:?}");
}

/// What strict mode lets a validator ask besides the challenge: the attestor's facts.
const INFO: &str = "gpu-attestor info --json";

#[tokio::test]
async fn granted_keys_run_the_attestor_and_strict_mode_refuses_the_rest() {
    if !have_ssh() {
        return;
    }
    let config = TestConfig::new("[validator.access_config.rate_limits]\nssh_requests_per_minute = 1000\n");
    let port = config.ports.ssh;
    let (_service, mut client) = start(&config, &[]).await;
    let v = validator(config.dir.path(), "validator", 7).await;
    let grant = v.grant(&mut client, 600).await;
    assert!(grant.grant_id.starts_with("g-"), "{grant:?}");
    assert_eq!(grant.validator_hotkey, v.hotkey);
    assert!(grant.ssh_public_key_fingerprint.starts_with("SHA256:"));

    // The attestor's facts, as strict mode allows them: the same as locally.
    let out = ssh(port, &v.ssh_key, &[], &[INFO]).await;
    let local = e2e::process::capture(
        ProcessSpec::new(e2e::binary("gpu-attestor")).args(INFO.split_whitespace().skip(1)),
        Duration::from_secs(60),
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let facts = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_else(|e| panic!("{e}: {s}"));
    assert_eq!(facts(&stdout), facts(&e2e::process::stdout(&local)));

    // The validator's whole check, through our SSH server.
    let ssh_command = format!("ssh {}", ssh_args(port, &v.ssh_key).join(" "));
    let check = ProcessSpec::new(e2e::binary("gpu-attestor"))
        .args(["check", "--ssh", &ssh_command, "--remote-command", "gpu-attestor challenge --backend cpu"])
        .args(["--matrix-dim", "32", "--num-matrices", "4", "--dataset-items", "2048", "--hotkey", &v.hotkey])
        .output(Duration::from_secs(120), 1 << 20)
        .await
        .unwrap();
    let (stdout, stderr) = text(&check);
    // The CPU prover's proof holds and proves work, not a GPU: UNTIMED, exit 3.
    assert!(check.status.code() == Some(3) && stdout.contains("Verdict: UNTIMED"), "{stdout}{stderr}");
    assert!(stdout.contains("Checked: 16 tiles, 128 lanes"), "{stdout}");

    // Commands run as the unprivileged user with an empty environment... (`id` is not allowed
    // in strict mode, so this is read through nproc's exit and the audit log below.)
    let out = ssh(port, &v.ssh_key, &[], &["nproc"]).await;
    assert!(out.status.success(), "{:?}", text(&out));

    // ...and nothing else.
    let out = ssh(port, &v.ssh_key, &[], &["cat", "/etc/shadow"]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(126), "{stderr}");
    assert!(stderr.contains("is not allowed here"), "{stderr}");
    let shell = ssh(port, &v.ssh_key, &[], &[]).await;
    assert!(!shell.status.success(), "a shell in strict mode: {:?}", text(&shell));
    let pty = ssh(port, &v.ssh_key, &["-tt"], &["nproc"]).await;
    assert!(text(&pty).1.contains("PTY allocation request failed"), "{:?}", text(&pty));
    let forward = ssh(port, &v.ssh_key, &["-W", "127.0.0.1:22"], &[]).await;
    assert!(!forward.status.success(), "{:?}", text(&forward));
    assert!(text(&forward).1.contains("administratively prohibited"), "{:?}", text(&forward));
    let local_port = e2e::free_port().to_string();
    let forward_l = ssh(
        port,
        &v.ssh_key,
        &["-o", "ExitOnForwardFailure=yes", "-R", &format!("{local_port}:127.0.0.1:22")],
        &["nproc"],
    )
    .await;
    assert!(!forward_l.status.success(), "remote forwarding allowed: {:?}", text(&forward_l));

    // Keys without a grant, and the strict key exchange (the Terrapin fix) offered.
    let stranger = validator(config.dir.path(), "stranger", 8).await;
    let out = ssh(port, &stranger.ssh_key, &[], &["nproc"]).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out).1.contains("Permission denied (publickey)"), "{:?}", text(&out));
    let verbose = ssh(port, &v.ssh_key, &["-vv"], &["nproc"]).await;
    assert!(text(&verbose).1.contains("kex-strict-s-v00@openssh.com"), "no strict kex offered");

    // Bad requests name their field.
    for (request, code, field) in [
        (
            pb::ProvisionRequest { validator_hotkey: "5Grw".into(), ..Default::default() },
            Code::InvalidArgument,
            "validator_hotkey",
        ),
        (
            pb::ProvisionRequest {
                validator_hotkey: v.hotkey.clone(),
                ssh_public_key: "ssh-rsa AAAA".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "ssh_public_key",
        ),
        (
            pb::ProvisionRequest {
                validator_hotkey: v.hotkey.clone(),
                ssh_public_key: v.public_key(),
                ttl_seconds: 0,
                ..Default::default()
            },
            Code::InvalidArgument,
            "ttl_seconds",
        ),
        (
            pb::ProvisionRequest {
                validator_hotkey: v.hotkey.clone(),
                ssh_public_key: v.public_key(),
                ttl_seconds: 60,
                ..Default::default()
            },
            Code::InvalidArgument,
            "challenge_id",
        ),
    ] {
        let err = client.provision(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    // A signature by another key over the right challenge.
    let challenge = client.request_challenge(v.challenge_request(60)).await.unwrap().into_inner();
    let forged = pb::ProvisionRequest {
        validator_hotkey: v.hotkey.clone(),
        ssh_public_key: v.public_key(),
        ttl_seconds: 60,
        challenge_id: challenge.challenge_id,
        signature: stranger.sign(&challenge.message),
    };
    assert_eq!(client.provision(forged).await.unwrap_err().code(), Code::Unauthenticated);

    // The audit log saw it all.
    let audit = std::fs::read_to_string(config.dir.path().join("data/audit/validator-access.jsonl")).unwrap();
    for event in [
        "\"challenge\"",
        "\"grant\"",
        "\"auth_success\"",
        "\"auth_failure\"",
        "\"command\"",
        "\"refused\"",
        "\"challenge_failed\"",
    ] {
        assert!(audit.contains(&format!("\"event\":{event}")), "no {event} in the audit log:\n{audit}");
    }
    assert!(audit.contains("\"command\":\"gpu-attestor info --json\""), "{audit}");
}

/// Strict mode is a grammar, not a prefix: the attestor's `check` (which hands `--ssh` to a
/// shell) and every other subcommand or flag outside `challenge [--backend B] [--timeout D]` and
/// `info [--json]` are refused, whatever `${IFS}`, `;` or `|` the line carries, and nothing runs.
#[tokio::test]
async fn strict_mode_gives_no_shell_through_the_attestor() {
    if !have_ssh() {
        return;
    }
    let config = TestConfig::new("[validator.access_config.rate_limits]\nssh_requests_per_minute = 1000\n");
    let port = config.ports.ssh;
    let (_service, mut client) = start(&config, &[]).await;
    let v = validator(config.dir.path(), "validator", 9).await;
    v.grant(&mut client, 600).await;
    let marker = std::env::temp_dir().join(format!("basilica-escape-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let m = marker.display();
    let attacks = [
        format!("gpu-attestor check --ssh=touch${{IFS}}{m}; --matrix-dim 16 --num-matrices 1"),
        format!("gpu-attestor check --ssh touch${{IFS}}{m}| --matrix-dim 16 --num-matrices 1"),
        format!("/opt/x/gpu-attestor check --remote-command=x --ssh=touch${{IFS}}{m};"),
        format!("gpu-attestor --seed 1 --report {m}"),
        "gpu-attestor verify /etc/shadow".to_owned(),
        "gpu-attestor challenge --threads 1000000".to_owned(),
        "gpu-attestor challenge --backend sh".to_owned(),
        "gpu-attestor info --report x".to_owned(),
        "nvidia-smi --query-gpu=name;id".to_owned(),
    ];
    for attack in &attacks {
        let out = ssh(port, &v.ssh_key, &[], &[attack]).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(126), "`{attack}` ran: {stdout}{stderr}");
        assert!(stderr.contains("is not allowed here"), "`{attack}`: {stderr}");
        assert!(!marker.exists(), "`{attack}` ran a shell on the host: {} exists", marker.display());
    }
    // What strict mode is for still runs.
    let info = ssh(port, &v.ssh_key, &[], &["gpu-attestor info --json"]).await;
    assert!(info.status.success(), "{:?}", text(&info));
    assert!(text(&info).0.trim_start().starts_with('{'), "{:?}", text(&info));
}

#[tokio::test]
async fn access_ends_with_the_grant_and_grants_survive_kill_9() {
    if !have_ssh() {
        return;
    }
    let config = TestConfig::new(
        "[validator.access_config.rate_limits]\nssh_requests_per_minute = 1000\n[validator.access_config.hotkey_verification]\nmax_signature_attempts = 2\nchallenge_timeout_seconds = 2\n",
    );
    let port = config.ports.ssh;
    // Not strict: a shell and any command, as the command user.
    let env = [("EXECUTOR_VALIDATOR__STRICT_SSH_RESTRICTIONS", "false")];
    let (mut service, mut client) = start(&config, &env).await;
    let v = validator(config.dir.path(), "validator", 9).await;

    let grant = v.grant(&mut client, 600).await;
    let out = ssh(port, &v.ssh_key, &[], &["id -u; env | wc -l"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(stdout.lines().next(), Some("65534"), "{stdout}{stderr}");
    assert!(stdout.lines().nth(1).unwrap().trim().parse::<u32>().unwrap() <= 5, "environment leaked: {stdout}");

    // A channel the client closes while the server still holds output for it leaves the rest
    // of the connection working.
    let master = e2e::ssh::Multiplexed::connect(port, &v.ssh_key, config.dir.path()).await;
    let out = master.abandon_unread_then("yes", "echo second").await;
    assert_eq!(text(&out).0.trim(), "second", "{:?}", text(&out));
    drop(master);

    // Revocation ends a running command within 2 s.
    let mut sleeper =
        ProcessSpec::new("ssh").args(ssh_args(port, &v.ssh_key)).arg("sleep 60").spawn_supervised().unwrap();
    revoke_while_running(&mut client, &grant.grant_id, "sleep 60", &mut sleeper).await;
    assert_eq!(ssh(port, &v.ssh_key, &[], &["true"]).await.status.code(), Some(255));
    let err = client.revoke(pb::RevokeRequest { grant_id: grant.grant_id }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A validator who stops reading a command's output is cut off all the same: with the
    // client's window and its stdout pipe full, the SSH library takes no message for the
    // connection (a disconnect included) until the client reads again.
    let grant = v.grant(&mut client, 600).await;
    let mut unread = ProcessSpec::new("ssh").args(ssh_args(port, &v.ssh_key)).arg("yes").spawn_supervised().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(unread.try_wait().unwrap().is_none(), "the session ended by itself");
    revoke_while_running(&mut client, &grant.grant_id, "yes", &mut unread).await;

    // Expiry ends access on its own.
    v.grant(&mut client, 4).await;
    assert!(ssh(port, &v.ssh_key, &[], &["true"]).await.status.success());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(ssh(port, &v.ssh_key, &[], &["true"]).await.status.code(), Some(255));

    // An expired challenge; then too many bad signatures lock the hotkey out.
    let other = validator(config.dir.path(), "other", 10).await;
    let challenge = client.request_challenge(other.challenge_request(60)).await.unwrap().into_inner();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late = pb::ProvisionRequest {
        validator_hotkey: other.hotkey.clone(),
        ssh_public_key: other.public_key(),
        ttl_seconds: 60,
        challenge_id: challenge.challenge_id,
        signature: other.sign(&challenge.message),
    };
    let err = client.provision(late).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("expired"), "{}", err.message());
    let mut codes = Vec::new();
    for _ in 0..2 {
        let challenge = client.request_challenge(other.challenge_request(60)).await.unwrap().into_inner();
        let bad = pb::ProvisionRequest {
            validator_hotkey: other.hotkey.clone(),
            ssh_public_key: other.public_key(),
            ttl_seconds: 60,
            challenge_id: challenge.challenge_id,
            signature: vec![0; 64],
        };
        codes.push(client.provision(bad).await.unwrap_err().code());
    }
    assert_eq!(codes, [Code::Unauthenticated, Code::PermissionDenied]);
    let locked = client.request_challenge(other.challenge_request(60)).await;
    assert_eq!(locked.unwrap_err().code(), Code::PermissionDenied);

    // A grant and the host key survive kill -9.
    let kept = v.grant(&mut client, 600).await;
    let known_hosts = config.dir.path().join("known_hosts");
    let pin = format!("UserKnownHostsFile={}", known_hosts.display());
    let first = ssh(port, &v.ssh_key, &["-o", &pin], &["true"]).await;
    assert!(first.status.success(), "{:?}", text(&first));
    service.start_kill().unwrap();
    service.wait().await.unwrap();
    // ...and the grants file torn while it was down: the last good copy brings them back.
    std::fs::write(config.dir.path().join("data/validator-grants.json"), "[{\"id\": \"g-").unwrap();
    let (_service, mut client) = start(&config, &env).await;
    let grants = client.list_grants(pb::ListGrantsRequest {}).await.unwrap().into_inner().grants;
    assert_eq!(grants.iter().map(|g| g.grant_id.clone()).collect::<Vec<_>>(), vec![kept.grant_id]);
    let again = ssh(port, &v.ssh_key, &["-o", &pin, "-o", "StrictHostKeyChecking=yes"], &["true"]).await;
    assert!(again.status.success(), "host key changed or grant lost: {:?}", text(&again));
    let audit = std::fs::read_to_string(config.dir.path().join("data/audit/validator-access.jsonl")).unwrap();
    for event in ["\"revoke\"", "\"grant_expired\"", "\"disconnect\"", "\"grants_recovered\""] {
        assert!(audit.contains(&format!("\"event\":{event}")), "no {event} in the audit log:\n{audit}");
    }
    assert!(audit.contains("\"reason\":\"grant_revoked\""), "{audit}");
}

#[tokio::test]
async fn connections_past_the_rate_limit_are_closed() {
    if !have_ssh() {
        return;
    }
    let config = TestConfig::new("[validator.access_config.rate_limits]\nssh_requests_per_minute = 3\n");
    let port = config.ports.ssh;
    let (_service, mut client) = start(&config, &[]).await;
    let v = validator(config.dir.path(), "validator", 11).await;
    v.grant(&mut client, 600).await;
    let mut results = Vec::new();
    for _ in 0..5 {
        results.push(ssh(port, &v.ssh_key, &[], &["nproc"]).await.status.success());
    }
    assert_eq!(results, [true, true, true, false, false]);
    let (_, metrics) = e2e::http_get(config.ports.metrics[3], "/metrics").await.unwrap();
    assert!(metrics.contains("executor_validator_access_rate_limited_total{scope=\"ip\"} 2"), "{metrics}");
}

/// A login user for validators through the host's sshd: a shell, a password that is not set
/// but not locked (`*`, or sshd without PAM refuses the account).
async fn login_user(name: &str) {
    let exists = ProcessSpec::new("id").arg(name).output(Duration::from_secs(10), 1 << 12).await.unwrap();
    let (program, args) = if exists.status.success() {
        ("usermod", vec!["-p", "*", "-s", "/bin/sh", name])
    } else {
        ("useradd", vec!["-M", "-d", "/", "-p", "*", "-s", "/bin/sh", name])
    };
    let out = ProcessSpec::new(program).args(args).output(Duration::from_secs(30), 1 << 12).await.unwrap();
    assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn system_sshd_mode_keeps_authorized_keys_and_relays_through_the_gate() {
    let root = e2e::process::is_root();
    if !have_ssh() || !require_tool("sshd (openssh-server) and root", Path::new("/usr/sbin/sshd").exists() && root) {
        return;
    }
    const USER: &str = "bastestval";
    login_user(USER).await;
    let config = TestConfig::new("[validator.access_config.rate_limits]\nssh_requests_per_minute = 1000\n");
    let dir = config.dir.path();
    // sshd reads the keys file as the login user: the directories on the way must be open.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let keys_file = dir.join("keys/validator_authorized_keys");
    let env = [
        ("EXECUTOR_VALIDATOR__SSH_SERVER", "system"),
        ("EXECUTOR_VALIDATOR__SYSTEM_SSHD_USER", USER),
        ("EXECUTOR_VALIDATOR__AUTHORIZED_KEYS_FILE", keys_file.to_str().unwrap()),
    ];
    let (_service, mut client) = start(&config, &env).await;

    // The distribution's sshd, told to read that file for the login user, with the door limits
    // docs/validator-access.md gives operators.
    let limits = "LoginGraceTime 30\nMaxStartups 10:30:64\nPerSourceMaxStartups 8\nPerSourceNetBlockSize 32:64";
    let sshd = e2e::sshd::Sshd::start(dir, &keys_file, &format!("{limits}\nAllowUsers {USER}\nMaxSessions 2")).await;
    let port = sshd.port;

    let v = validator(dir, "validator", 12).await;
    let grant = v.grant(&mut client, 600).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&keys_file).unwrap_or_default().contains(&grant.grant_id) {
        assert!(Instant::now() < deadline, "the grant never reached {}", keys_file.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys = std::fs::read_to_string(&keys_file).unwrap();
    assert!(keys.contains("restrict,command=\"") && keys.contains("expiry-time=\""), "{keys}");
    let ssh_to = |extra: &'static [&'static str], command: &'static [&'static str]| {
        let key = v.ssh_key.clone();
        async move {
            ProcessSpec::new("ssh")
                .args(extra.iter().copied())
                .arg("-i")
                .arg(&key)
                .args([
                    "-o",
                    "IdentitiesOnly=yes",
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                ])
                .args(["-o", "BatchMode=yes", "-p", &port.to_string(), &format!("{USER}@127.0.0.1")])
                .args(command.iter().copied())
                .output(Duration::from_secs(60), 1 << 20)
                .await
                .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = ssh_to(&[], &[INFO]).await;
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await; // sshd still starting
    };
    let (stdout, stderr) = text(&out);
    assert!(out.status.success() && stdout.contains("\"host\""), "{stdout}{stderr}");
    let refused = ssh_to(&[], &["cat /etc/shadow"]).await;
    assert_eq!(refused.status.code(), Some(126), "{:?}", text(&refused));
    assert!(text(&refused).1.contains("is not allowed here"));
    let pty = ssh_to(&["-tt"], &["nproc"]).await;
    assert!(text(&pty).1.contains("PTY allocation request failed"), "{:?}", text(&pty));
    let forward = ssh_to(&["-W", "127.0.0.1:22"], &[]).await;
    assert!(!forward.status.success(), "{:?}", text(&forward));

    // Revocation ends a running relay (the prover waiting for its validator) within 2 s.
    let mut waiting = ProcessSpec::new("ssh")
        .arg("-i")
        .arg(&v.ssh_key)
        .args(["-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "BatchMode=yes", "-p", &port.to_string(), &format!("{USER}@127.0.0.1")])
        .arg("gpu-attestor challenge --backend cpu")
        .spawn_interactive()
        .unwrap();
    revoke_while_running(&mut client, &grant.grant_id, "gpu-attestor challenge --backend cpu", &mut waiting).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&keys_file).unwrap().contains(&grant.grant_id) {
        assert!(Instant::now() < deadline, "revoked key still in {}", keys_file.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ssh_to(&[], &["nproc"]).await.status.code(), Some(255));

    // Expiry: sshd's own expiry-time and the file both end it.
    // (Expiry is whole seconds: a 4 s grant lives more than 3 s, so 1.2 s in it is live.)
    v.grant(&mut client, 4).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(ssh_to(&[], &["nproc"]).await.status.success());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(ssh_to(&[], &["nproc"]).await.status.code(), Some(255));
    let audit = std::fs::read_to_string(dir.join("data/audit/validator-access.jsonl")).unwrap();
    assert!(audit.contains("\"via\":\"system_sshd\""), "{audit}");
}

/// Pids of the processes whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .filter(|pid| e2e::process_alive(*pid))
        .collect()
}

/// Polls until a process with command line `argv` runs; its pid.
async fn wait_for_process(argv: &[&str]) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = pids_running(argv).first() {
            return *pid;
        }
        assert!(Instant::now() < deadline, "`{}` never started", argv.join(" "));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks that every process with command line `argv` is gone within a second of `since`
/// (polled); kills what is left so a failing test leaves nothing behind.
async fn gone_within_a_second(argv: &[&str], since: Instant, after: &str) {
    let deadline = since + Duration::from_secs(1);
    loop {
        let left = pids_running(argv);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for pid in &left {
                let _ = common::process::send_signal(*pid, nix::sys::signal::Signal::SIGKILL);
            }
            panic!("`{}` (pid {left:?}) outlived {after} by more than a second", argv.join(" "));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A service that runs any command (not strict) with a 2 s `command_timeout`, a validator with
/// a grant, and a shell line that detaches `sleep SECONDS TAG` (`setsid` and a double fork).
struct Detaching {
    config: TestConfig,
    _service: Service,
    client: Client,
    v: Validator,
    grant: pb::Grant,
    tag: String,
}

impl Detaching {
    async fn start() -> Self {
        let config = TestConfig::new("[validator.access_config.rate_limits]\nssh_requests_per_minute = 1000\n");
        let env =
            [("EXECUTOR_VALIDATOR__STRICT_SSH_RESTRICTIONS", "false"), ("EXECUTOR_VALIDATOR__COMMAND_TIMEOUT", "2s")];
        let (_service, mut client) = start(&config, &env).await;
        let v = validator(config.dir.path(), "validator", 13).await;
        let grant = v.grant(&mut client, 600).await;
        Self { config, _service, client, v, grant, tag: std::process::id().to_string() }
    }

    /// The shell words that detach `sleep seconds tag`.
    fn detach(&self, seconds: &str) -> String {
        format!("setsid sh -c 'sleep {seconds} {} & sleep 1' </dev/null >/dev/null 2>&1 &", self.tag)
    }

    fn sleeper<'a>(&'a self, seconds: &'a str) -> [&'a str; 3] {
        ["sleep", seconds, &self.tag]
    }
}

/// A validator's command cannot leave processes behind, however they detach (`setsid`, a
/// double fork): they live in the command's cgroup, which dies whole when the command ends.
#[tokio::test]
async fn detached_processes_die_with_their_command() {
    if !have_ssh() {
        return;
    }
    let d = Detaching::start().await;
    let out = ssh(d.config.ports.ssh, &d.v.ssh_key, &[], &[&format!("{} sleep 0.5", d.detach("86401"))]).await;
    assert!(out.status.success(), "{:?}", text(&out));
    gone_within_a_second(&d.sleeper("86401"), Instant::now(), "its command").await;
}

/// ...when `command_timeout` kills the command...
#[tokio::test]
async fn detached_processes_die_with_the_command_timeout() {
    if !have_ssh() {
        return;
    }
    let d = Detaching::start().await;
    let out = ssh(d.config.ports.ssh, &d.v.ssh_key, &[], &[&format!("{} exec sleep 60", d.detach("86402"))]).await;
    assert_eq!(out.status.code(), Some(124), "{:?}", text(&out));
    gone_within_a_second(&d.sleeper("86402"), Instant::now(), "command_timeout").await;
}

/// ...and when the grant is revoked while the command runs.
#[tokio::test]
async fn detached_processes_die_with_the_revocation() {
    if !have_ssh() {
        return;
    }
    let mut d = Detaching::start().await;
    let mut running = ProcessSpec::new("ssh")
        .args(ssh_args(d.config.ports.ssh, &d.v.ssh_key))
        .arg(format!("{} exec sleep 60", d.detach("86403")))
        .spawn_supervised()
        .unwrap();
    wait_for_process(&d.sleeper("86403")).await;
    let revoked_at = Instant::now();
    d.client.revoke(pb::RevokeRequest { grant_id: d.grant.grant_id.clone() }).await.unwrap();
    gone_within_a_second(&d.sleeper("86403"), revoked_at, "the revocation").await;
    tokio::time::timeout(Duration::from_secs(10), running.wait()).await.unwrap().unwrap();
}

/// ...when the client goes away...
#[tokio::test]
async fn detached_processes_die_with_the_disconnect() {
    if !have_ssh() {
        return;
    }
    let d = Detaching::start().await;
    let mut running = ProcessSpec::new("ssh")
        .args(ssh_args(d.config.ports.ssh, &d.v.ssh_key))
        .arg(format!("{} exec sleep 60", d.detach("86404")))
        .spawn_supervised()
        .unwrap();
    wait_for_process(&d.sleeper("86404")).await;
    running.start_kill().unwrap();
    running.wait().await.unwrap();
    gone_within_a_second(&d.sleeper("86404"), Instant::now(), "the disconnect").await;
}

/// ...and when the grant expires.
#[tokio::test]
async fn detached_processes_die_with_the_expiry() {
    if !have_ssh() {
        return;
    }
    let mut d = Detaching::start().await;
    // Only a grant of 3 s for this key.
    d.client.revoke(pb::RevokeRequest { grant_id: d.grant.grant_id.clone() }).await.unwrap();
    let grant = d.v.grant(&mut d.client, 3).await;
    let mut running = ProcessSpec::new("ssh")
        .args(ssh_args(d.config.ports.ssh, &d.v.ssh_key))
        .arg(format!("{} exec sleep 60", d.detach("86405")))
        .spawn_supervised()
        .unwrap();
    wait_for_process(&d.sleeper("86405")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let grants = d.client.list_grants(pb::ListGrantsRequest {}).await.unwrap().into_inner().grants;
        if !grants.iter().any(|g| g.grant_id == grant.grant_id) {
            break;
        }
        assert!(Instant::now() < deadline, "the grant never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The reaper looks every 500 ms.
    gone_within_a_second(&d.sleeper("86405"), Instant::now(), "the expiry").await;
    tokio::time::timeout(Duration::from_secs(10), running.wait()).await.unwrap().unwrap();
}

/// The first line `child` prints on stdout, or None when it ends without one.
async fn first_line(child: &mut tokio::process::Child) -> Option<String> {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.as_mut().unwrap();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stdout);
    tokio::time::timeout(Duration::from_secs(20), reader.read_line(&mut line))
        .await
        .expect("no line within 20 s")
        .unwrap();
    (!line.is_empty()).then(|| line.trim_end().to_owned())
}

/// What `child` wrote on stderr, once it ended.
async fn ended_with_stderr(mut child: tokio::process::Child) -> (Option<i32>, String) {
    use tokio::io::AsyncReadExt;
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.unwrap().unwrap();
    (status.code(), err)
}

/// One connection holds at most `max_channels_per_session` channels, and a grant runs at most
/// `max_commands_per_grant` commands at once, whichever connections they come through.
#[tokio::test]
async fn sessions_hold_two_channels_and_grants_run_two_commands() {
    if !have_ssh() {
        return;
    }
    let config = TestConfig::new("[validator.access_config.rate_limits]\nssh_requests_per_minute = 1000\n");
    let port = config.ports.ssh;
    let (_service, mut client) = start(&config, &[("EXECUTOR_VALIDATOR__STRICT_SSH_RESTRICTIONS", "false")]).await;
    let v = validator(config.dir.path(), "validator", 14).await;
    v.grant(&mut client, 600).await;
    let mux = Multiplexed::connect(port, &v.ssh_key, config.dir.path()).await;
    let (mut first, mut second) =
        (mux.channel("echo started; exec sleep 60"), mux.channel("echo started; exec sleep 60"));
    assert_eq!(first_line(&mut first).await.as_deref(), Some("started"));
    assert_eq!(first_line(&mut second).await.as_deref(), Some("started"));

    let mut third = mux.channel("echo started; exec sleep 60");
    let line = first_line(&mut third).await;
    assert_eq!(line, None, "a third channel of one connection ran a command");
    let (code, stderr) = ended_with_stderr(third).await;
    assert_eq!(code, Some(255), "{stderr}");
    assert!(stderr.contains("refused by peer"), "{stderr}");

    // Another connection of the same grant: its command waits for none of them, it is refused.
    let out = ssh(port, &v.ssh_key, &[], &["echo started"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(126), "a third command of one grant ran: {stdout}{stderr}");
    assert!(stderr.contains("max_commands_per_grant"), "{stderr}");
}

/// One connection runs at most `max_commands_per_session` commands at once, however many
/// channels it may open.
#[tokio::test]
async fn sessions_run_two_commands_however_many_channels_they_hold() {
    if !have_ssh() {
        return;
    }
    let config = TestConfig::new("[validator.access_config.rate_limits]\nssh_requests_per_minute = 1000\n");
    let env = [
        ("EXECUTOR_VALIDATOR__STRICT_SSH_RESTRICTIONS", "false"),
        ("EXECUTOR_VALIDATOR__ACCESS_CONFIG__LIMITS__MAX_CHANNELS_PER_SESSION", "3"),
        ("EXECUTOR_VALIDATOR__ACCESS_CONFIG__LIMITS__MAX_COMMANDS_PER_GRANT", "5"),
    ];
    let (_service, mut client) = start(&config, &env).await;
    let v = validator(config.dir.path(), "validator", 19).await;
    v.grant(&mut client, 600).await;
    let mux = Multiplexed::connect(config.ports.ssh, &v.ssh_key, config.dir.path()).await;
    let (mut first, mut second) =
        (mux.channel("echo started; exec sleep 60"), mux.channel("echo started; exec sleep 60"));
    assert_eq!(first_line(&mut first).await.as_deref(), Some("started"));
    assert_eq!(first_line(&mut second).await.as_deref(), Some("started"));
    let mut third = mux.channel("echo started; exec sleep 60");
    assert_eq!(first_line(&mut third).await, None, "a third command of one connection ran");
    let (code, stderr) = ended_with_stderr(third).await;
    assert_eq!(code, Some(126), "{stderr}");
    assert!(stderr.contains("max_commands_per_session"), "{stderr}");
}

/// A command's memory and processes are capped by its cgroup: a process holding more than
/// `command_max_memory_bytes` is killed, a fork past `command_max_pids` fails, and the CPU
/// quota is `command_max_cpus`.
#[tokio::test]
async fn commands_are_held_to_their_memory_pids_and_cpu_limits() {
    if !have_ssh() {
        return;
    }
    let config = TestConfig::new("[validator.access_config.rate_limits]\nssh_requests_per_minute = 1000\n");
    let port = config.ports.ssh;
    let env = [
        ("EXECUTOR_VALIDATOR__STRICT_SSH_RESTRICTIONS", "false"),
        ("EXECUTOR_VALIDATOR__COMMAND_MAX_MEMORY_BYTES", "67108864"),
        ("EXECUTOR_VALIDATOR__COMMAND_MAX_PIDS", "32"),
        ("EXECUTOR_VALIDATOR__COMMAND_MAX_CPUS", "0.5"),
    ];
    let (_service, mut client) = start(&config, &env).await;
    let v = validator(config.dir.path(), "validator", 15).await;
    v.grant(&mut client, 600).await;

    // `tail` holds a whole line of 256 MiB of zeros before it prints it.
    let out = ssh(port, &v.ssh_key, &[], &["head -c 268435456 /dev/zero | tail | wc -c"]).await;
    let (stdout, stderr) = text(&out);
    assert_ne!(stdout.trim(), "268435456", "a command held 256 MiB: {stderr}");

    let out = ssh(
        port,
        &v.ssh_key,
        &[],
        &["n=0; while [ $n -lt 100 ]; do sleep 30 >/dev/null 2>&1 & n=$((n+1)); done; echo $n"],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_ne!(stdout.trim(), "100", "a command started 100 processes: {stderr}");
    assert!(stderr.contains("fork"), "{stdout}{stderr}");

    let quota = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/cpu.max"
    } else {
        "cat /sys/fs/cgroup/cpu$(grep :cpu: /proc/self/cgroup | cut -d: -f3)/cpu.cfs_quota_us"
    };
    let out = ssh(port, &v.ssh_key, &[], &[quota]).await;
    let (stdout, stderr) = text(&out);
    assert!(["50000 100000", "50000"].contains(&stdout.trim()), "cpu quota {stdout}{stderr}");
}

/// The signed challenge names the SSH key and the longest TTL: whoever relays the signature
/// cannot attach another key or a longer grant.
#[tokio::test]
async fn a_signed_challenge_binds_the_ssh_key_and_the_ttl() {
    if !have_ssh() {
        return;
    }
    let config = TestConfig::new("");
    let (_service, mut client) = start(&config, &[]).await;
    let v = validator(config.dir.path(), "validator", 16).await;
    let relay = validator(config.dir.path(), "relay", 17).await;
    let challenge = client.request_challenge(v.challenge_request(600)).await.unwrap().into_inner();
    let text = String::from_utf8(challenge.message.clone()).unwrap();
    let fingerprint = ProcessSpec::new("ssh-keygen").arg("-lf").arg(v.ssh_key.with_extension("pub"));
    let fingerprint = e2e::process::stdout(&fingerprint.output(Duration::from_secs(10), 4096).await.unwrap());
    let fingerprint = fingerprint.split_whitespace().nth(1).unwrap().to_owned();
    assert!(text.contains(&format!("\nssh-key: {fingerprint}\nmax-ttl: 600s\n")), "{text}");
    let signature = v.sign(&challenge.message);
    let provision = |ssh_public_key: String, ttl_seconds| pb::ProvisionRequest {
        validator_hotkey: v.hotkey.clone(),
        ssh_public_key,
        ttl_seconds,
        challenge_id: challenge.challenge_id.clone(),
        signature: signature.clone(),
    };
    for (request, field, attack) in [
        (provision(relay.public_key(), 600), "ssh_public_key: ", "a key the validator never signed for"),
        (provision(v.public_key(), 86_400), "ttl_seconds: 86400 is more than the 600 s", "a longer TTL than signed"),
    ] {
        match client.provision(request).await {
            Ok(grant) => panic!("a grant for {attack}: {:?}", grant.into_inner()),
            Err(e) => {
                assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
                assert!(e.message().starts_with(field), "{}", e.message());
            }
        }
    }
    // The relay's mistakes used neither the challenge nor an attempt: the signed terms work.
    let grant = client.provision(provision(v.public_key(), 600)).await.unwrap().into_inner();
    assert_eq!(grant.ssh_public_key_fingerprint, fingerprint);
    assert_eq!(grant.expires_at - grant.created_at, 600);
    // A challenge needs the key.
    let keyless = pb::ChallengeRequest { validator_hotkey: v.hotkey.clone(), ..Default::default() };
    let err = client.request_challenge(keyless).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("ssh_public_key: required"), "{}", err.message());
}

/// Refused connections are counted per peer and audited off the accept loop: a flood writes one
/// line at once and one summary per peer and minute, not a line each.
#[tokio::test]
async fn refused_connections_are_audited_once_per_peer_and_minute() {
    if !have_ssh() {
        return;
    }
    let config = TestConfig::new("");
    let port = config.ports.ssh;
    let env = [("EXECUTOR_VALIDATOR__ALLOWED_SOURCE_ADDRESSES", "[\"10.0.0.0/8\"]")];
    let (mut service, _client) = start(&config, &env).await;
    const FLOOD: u64 = 200;
    for _ in 0..FLOOD {
        use tokio::io::AsyncReadExt;
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "a refused connection was answered");
    }
    // The last summaries are written at shutdown.
    common::process::send_signal(service.id().unwrap(), nix::sys::signal::Signal::SIGTERM).unwrap();
    tokio::time::timeout(Duration::from_secs(20), service.wait()).await.unwrap().unwrap();
    let audit = std::fs::read_to_string(config.dir.path().join("data/audit/validator-access.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> =
        audit.lines().filter(|l| l.contains("source_address")).map(|l| serde_json::from_str(l).unwrap()).collect();
    let summaries: Vec<&serde_json::Value> = lines.iter().filter(|l| l["event"] == "refused_summary").collect();
    // One line at once and one summary per minute (the flood may straddle a minute's end).
    assert!(
        (1..=2).contains(&summaries.len()) && lines.len() == 2 * summaries.len(),
        "{FLOOD} refused connections wrote {} audit lines:\n{audit}",
        lines.len()
    );
    let counted: u64 = summaries.iter().map(|s| s["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, FLOOD, "{audit}");
    assert!(summaries.iter().all(|s| s["peer"] == "127.0.0.1"), "{audit}");
}

/// A TCP connection to `port` from `source` (a loopback address); whether the SSH server
/// answered it with its banner (false: closed at once).
async fn banner_from(source: &str, port: u16) -> (bool, tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap_or(0);
    (n > 0 && buf.starts_with(b"SSH-"), stream)
}

/// Connections that have not authenticated are capped per address (an IPv6 /64 counts as one)
/// and in all; a validator from elsewhere still gets in while one address holds its share.
#[tokio::test]
async fn unauthenticated_connections_are_capped_per_address_and_in_all() {
    if !have_ssh() {
        return;
    }
    let config = TestConfig::new("[validator.access_config.rate_limits]\nssh_requests_per_minute = 1000\n");
    let port = config.ports.ssh;
    let env = [
        ("EXECUTOR_VALIDATOR__ACCESS_CONFIG__LIMITS__MAX_UNAUTHENTICATED_CONNECTIONS", "8"),
        ("EXECUTOR_VALIDATOR__ACCESS_CONFIG__LIMITS__MAX_UNAUTHENTICATED_PER_ADDRESS", "4"),
    ];
    let (_service, mut client) = start(&config, &env).await;
    let v = validator(config.dir.path(), "validator", 18).await;
    v.grant(&mut client, 600).await;
    let mut held = Vec::new();
    for i in 1..=5 {
        let (answered, stream) = banner_from("127.0.0.2", port).await;
        assert_eq!(answered, i <= 4, "unauthenticated connection {i} from 127.0.0.2");
        held.push(stream);
    }
    let out = ssh(port, &v.ssh_key, &["-b", "127.0.0.1"], &["nproc"]).await;
    assert!(out.status.success(), "the validator was kept out: {:?}", text(&out));
    for i in 1..=4 {
        let (answered, stream) = banner_from("127.0.0.3", port).await;
        assert!(answered, "unauthenticated connection {i} from 127.0.0.3");
        held.push(stream);
    }
    // 8 held in all: a third address is refused too, until one of them goes.
    let (answered, _) = banner_from("127.0.0.4", port).await;
    assert!(!answered, "a ninth unauthenticated connection was served");
    held.remove(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !banner_from("127.0.0.4", port).await.0 {
        assert!(Instant::now() < deadline, "a closed connection never gave its place back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection that has not authenticated within `login_grace_time` is closed.
#[tokio::test]
async fn connections_that_never_authenticate_are_closed_after_the_login_grace_time() {
    if !have_ssh() {
        return;
    }
    use tokio::io::AsyncReadExt;
    let config = TestConfig::new("");
    let env = [("EXECUTOR_VALIDATOR__ACCESS_CONFIG__LIMITS__LOGIN_GRACE_TIME", "1s")];
    let (_service, _client) = start(&config, &env).await;
    let (answered, mut stream) = banner_from("127.0.0.1", config.ports.ssh).await;
    assert!(answered);
    let mut buf = [0u8; 256];
    let closed =
        tokio::time::timeout(Duration::from_secs(10), async { while stream.read(&mut buf).await.unwrap_or(0) > 0 {} });
    assert!(closed.await.is_ok(), "a connection that never authenticated was still open after 10 s");
}
