//! Renters get into their container (issue 19): the real launcher and every service, the real
//! Docker engine with busybox-static images (no sshd inside, no passwd entry for anyone), keys
//! given through the signed public API, and the stock OpenSSH client on
//! `[tenant_access] ssh_port`.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::hotkey::HotkeyPair;
use common::process::{CapturedOutput, ProcessSpec};
use common::proto::access::v1 as access;
use common::proto::runtime::v1 as pb;
use e2e::keys::ssh_keygen;
use e2e::process::{stdout, text, which};
use e2e::ssh::client_args_as;
use e2e::{BUSYBOX_IMAGE, Node, TestConfig, busybox_image, require_tool};
use executor_api::client::ExecutorClient;
use tonic::Code;

async fn client(node: &Node) -> ExecutorClient {
    let endpoint = format!("http://127.0.0.1:{}", node.config.ports.grpc);
    ExecutorClient::connect(&endpoint, None, HotkeyPair::parse(e2e::ALICE_SEED).unwrap()).await.unwrap()
}

/// A renter's key pair in `dir`: its private key file and public line.
async fn renter_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let line = ssh_keygen(&path, &format!("{name}@laptop")).await;
    (path, line)
}

/// A running busybox container with `keys`.
async fn rented(client: &ExecutorClient, keys: &[&str]) -> String {
    let created = client
        .create_container(pb::CreateContainerRequest {
            image: BUSYBOX_IMAGE.into(),
            command: vec!["sleep".into(), "600".into()],
            ttl_seconds: 600,
            ssh_public_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    client.start_container(pb::ContainerRef { id: created.id.clone() }).await.unwrap();
    created.id
}

/// A node, one renter's key, and a running container holding it.
struct Rental {
    node: Node,
    client: ExecutorClient,
    /// Holds the key files: bind it (`dir: _dir`, never `_` or `..`) for as long as the key is used.
    dir: tempfile::TempDir,
    key: PathBuf,
    line: String,
    id: String,
}

impl Rental {
    async fn start(config: TestConfig) -> Self {
        let node = Node::start(config).await;
        let client = client(&node).await;
        let dir = tempfile::tempdir().unwrap();
        let (key, line) = renter_key(dir.path(), "a").await;
        let id = rented(&client, &[&line]).await;
        Self { node, client, dir, key, line, id }
    }
}

/// `ssh` as the renter of `container` with `key`, running `command` (none: the login shell),
/// with `extra` options before the destination and `input` on stdin.
fn ssh(node: &Node, key: &Path, container: &str, extra: &[&str], command: Option<&str>) -> ProcessSpec {
    let mut args = client_args_as(node.config.ports.tenant_ssh, key, container);
    let destination = args.pop().unwrap();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(destination);
    args.extend(command.map(str::to_owned));
    ProcessSpec::new("ssh").args(args)
}

async fn output(spec: ProcessSpec, input: &[u8]) -> CapturedOutput {
    use tokio::io::AsyncWriteExt;
    let mut child = spec.spawn_interactive().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
    CapturedOutput { status: out.status, stdout: out.stdout, stderr: out.stderr, truncated: false }
}

/// Waits for `child` to exit at most `limit` after `since`; how long after `since` it did.
async fn exits_within(child: &mut tokio::process::Child, since: Instant, limit: Duration) -> Duration {
    let left = limit.saturating_sub(since.elapsed());
    tokio::time::timeout(left, child.wait()).await.expect("the session was not cut off in time").unwrap();
    since.elapsed()
}

/// Starts `sleep 300` through SSH and waits until the container runs it.
async fn open_session(node: &Node, key: &Path, container: &str) -> tokio::process::Child {
    run_inside(node, key, container, "sleep 300", "sleep 300").await
}

#[tokio::test]
async fn a_renter_gets_a_terminal_and_commands_in_their_container_and_nothing_else() {
    if !busybox_image().await || !require_tool("ssh", which("ssh")) {
        return;
    }
    let node = Node::start(TestConfig::new("")).await;
    let client = client(&node).await;
    let dir = tempfile::tempdir().unwrap();
    let (key_a, line_a) = renter_key(dir.path(), "a").await;
    let (key_b, line_b) = renter_key(dir.path(), "b").await;
    let first = rented(&client, &[&line_a]).await;
    let second = rented(&client, &[&line_b]).await;

    // A command, without a terminal: the container's environment, its exit status.
    let out = output(ssh(&node, &key_a, &first, &[], Some("echo $((6*7)) $HOSTNAME; tty; exit 3")), b"").await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines[0].split(' ').next(), Some("42"), "{lines:?}");
    assert_eq!(lines[1], "not a tty", "{lines:?}");
    // By default only AES-GCM is offered: the stock client settles on it, and a client that
    // insists on ChaCha20-Poly1305 or AES-CTR is told there is no match.
    let out = output(ssh(&node, &key_a, &first, &["-v"], Some("true")), b"").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cipher: aes128-gcm@openssh.com MAC: <implicit>"), "{stderr}");
    let out = output(ssh(&node, &key_a, &first, &["-c", "aes256-gcm@openssh.com"], Some("echo gcm")), b"").await;
    assert_eq!(stdout(&out).trim(), "gcm", "{}", text(&out));
    for cipher in ["chacha20-poly1305@openssh.com", "aes128-ctr"] {
        let out = output(ssh(&node, &key_a, &first, &["-c", cipher], Some("true")), b"").await;
        assert_eq!(out.status.code(), Some(255), "{}", text(&out));
        assert!(text(&out).contains("no matching cipher found"), "{}", text(&out));
    }
    // Standard input reaches it, and its end is the command's end of file.
    let out = output(ssh(&node, &key_a, &first, &[], Some("wc -c")), &[b'x'; 100_000]).await;
    assert_eq!(stdout(&out).trim(), "100000", "{}", text(&out));

    // A login shell on a terminal (the image has no bash and no passwd entry).
    let out = output(ssh(&node, &key_a, &first, &["-tt"], None), b"tty; stty size; exit 6\n").await;
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    assert!(stdout(&out).contains("/dev/pts/"), "{}", text(&out));

    // Ctrl-C reaches what runs on the terminal, and the shell goes on.
    {
        use tokio::io::AsyncWriteExt;
        let mut child = ssh(&node, &key_a, &first, &["-tt"], None).spawn_interactive().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"sleep 100\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        stdin.write_all(b"\x03").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stdin.write_all(b"exit 9\n").await.unwrap();
        // Without the interrupt, `sleep 100` would outlast the timeout.
        let status =
            tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("Ctrl-C did not interrupt sleep");
        assert_eq!(status.unwrap().code(), Some(9));
    }

    // Another key, another container, a key on the wrong container: refused.
    for (key, container) in [(&key_b, &first), (&key_a, &second)] {
        let out = output(ssh(&node, key, container, &[], Some("true")), b"").await;
        assert_eq!(out.status.code(), Some(255), "{}", text(&out));
        assert!(text(&out).contains("Permission denied"), "{}", text(&out));
    }
    let out = output(ssh(&node, &key_a, "c-000000000000", &[], Some("true")), b"").await;
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    // No forwarding of any kind, no agent.
    let out = output(
        ssh(&node, &key_a, &first, &["-R", "0:127.0.0.1:1", "-o", "ExitOnForwardFailure=yes"], Some("true")),
        b"",
    )
    .await;
    assert_ne!(out.status.code(), Some(0), "remote forwarding was accepted: {}", text(&out));

    // The keys through the API: listed, added, removed.
    let keys =
        client.list_container_keys(access::ListContainerKeysRequest { container_id: first.clone() }).await.unwrap();
    assert_eq!(keys.keys.len(), 1, "{keys:?}");
    assert_eq!(keys.keys[0].comment, "a@laptop");
    assert!(keys.ssh_command.starts_with(&format!("ssh -p {} {first}@", node.config.ports.tenant_ssh)), "{keys:?}");
    let added = client
        .add_container_key(access::AddContainerKeyRequest {
            container_id: first.clone(),
            ssh_public_keys: vec![line_b.clone()],
        })
        .await
        .unwrap();
    assert_eq!(added.keys.len(), 2);
    let out = output(ssh(&node, &key_b, &first, &[], Some("echo in")), b"").await;
    assert_eq!(stdout(&out).trim(), "in", "{}", text(&out));

    // Removing a key cuts its open session off within a second, and takes what it started.
    let mut session = open_session(&node, &key_a, &first).await;
    let asked = Instant::now();
    let removed = client
        .remove_container_key(access::RemoveContainerKeyRequest {
            container_id: first.clone(),
            ssh_public_key: keys.keys[0].fingerprint.clone(),
        })
        .await
        .unwrap();
    assert_eq!(removed.sessions_closed, 1, "{removed:?}");
    let took = exits_within(&mut session, asked, Duration::from_secs(1)).await;
    println!("key removal asked to session end: {took:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, top) = e2e::process::sh("docker", &["top", &first]).await;
    assert!(!top.contains("sleep 300"), "the session's command outlived it: {top}");
    let out = output(ssh(&node, &key_a, &first, &[], Some("true")), b"").await;
    assert_eq!(out.status.code(), Some(255), "a removed key still logs in: {}", text(&out));

    // Stopping the container cuts its sessions off; the second tenant is unaffected.
    let mut session = open_session(&node, &key_b, &first).await;
    let mut other = open_session(&node, &key_b, &second).await;
    let asked = Instant::now();
    client
        .stop_container(pb::StopContainerRequest { id: first.clone(), timeout_seconds: 0, ..Default::default() })
        .await
        .unwrap();
    let stopped = asked.elapsed();
    let took = exits_within(&mut session, asked, stopped + Duration::from_secs(1)).await;
    println!("stop asked to session end: {took:?} (the stop itself took {stopped:?})");
    assert!(other.try_wait().unwrap().is_none(), "the other tenant's session ended too");
    let out = output(ssh(&node, &key_b, &first, &[], Some("true")), b"").await;
    assert_eq!(out.status.code(), Some(255), "a stopped container still logs in: {}", text(&out));
    let _ = other.start_kill();

    // Bad keys name their field; unknown containers are not found.
    let bad = client
        .add_container_key(access::AddContainerKeyRequest {
            container_id: second.clone(),
            ssh_public_keys: vec![line_a.clone(), "ssh-ed25519 AAAA".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().starts_with("ssh_public_keys[1]: "), "{bad:?}");
    let missing = client
        .add_container_key(access::AddContainerKeyRequest {
            container_id: "c-404".into(),
            ssh_public_keys: vec![line_a.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let bad_create = client
        .create_container(pb::CreateContainerRequest {
            image: BUSYBOX_IMAGE.into(),
            command: vec!["sleep".into(), "600".into()],
            ssh_public_keys: vec!["ssh-dss AAAA".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(bad_create.message().starts_with("ssh_public_keys[0]: "), "{bad_create:?}");

    // Keys go with their container.
    client.remove_container(pb::RemoveContainerRequest { id: first.clone(), force: true }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let gone = client.list_container_keys(access::ListContainerKeysRequest { container_id: first.clone() }).await;
        if gone.as_ref().is_err_and(|s| s.code() == Code::NotFound) {
            break;
        }
        assert!(Instant::now() < deadline, "the keys of a removed container stayed: {gone:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every login, command and end is in the audit log.
    let audit = std::fs::read_to_string(node.config.dir.path().join("data/audit/validator-access.jsonl")).unwrap();
    for event in
        ["tenant_login", "tenant_command", "tenant_session_closed", "tenant_auth_failure", "tenant_keys_dropped"]
    {
        assert!(audit.contains(event), "{event} not audited");
    }
    // Removing a container cuts its sessions off too.
    let mut session = open_session(&node, &key_b, &second).await;
    let asked = Instant::now();
    client.remove_container(pb::RemoveContainerRequest { id: second, force: true }).await.unwrap();
    let removed = asked.elapsed();
    let took = exits_within(&mut session, asked, removed + Duration::from_secs(1)).await;
    println!("remove asked to session end: {took:?} (the remove itself took {removed:?})");
}

/// A renter who stops reading a command's output is still cut off within a second: with the
/// client's window and its stdout pipe full, the server holds output it cannot send, and the
/// SSH library takes no message for the connection (a disconnect included) until the client
/// reads again. The cut-off must not wait on the client.
#[tokio::test]
async fn a_renter_who_stops_reading_is_cut_off_all_the_same() {
    if !busybox_image().await || !require_tool("ssh", which("ssh")) {
        return;
    }
    let Rental { node, client, dir: _dir, key, line: _, id } = Rental::start(TestConfig::new("")).await;
    let fingerprint =
        client.list_container_keys(access::ListContainerKeysRequest { container_id: id.clone() }).await.unwrap().keys
            [0]
        .fingerprint
        .clone();
    // `yes` into a pipe this test never reads (spawn_supervised pipes stdout).
    let mut session = run_inside(&node, &key, &id, "yes", "yes").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(session.try_wait().unwrap().is_none(), "the session ended by itself");

    let asked = Instant::now();
    let removed = client
        .remove_container_key(access::RemoveContainerKeyRequest {
            container_id: id.clone(),
            ssh_public_key: fingerprint,
        })
        .await
        .unwrap();
    assert_eq!(removed.sessions_closed, 1, "{removed:?}");
    let took = exits_within(&mut session, asked, Duration::from_secs(1)).await;
    println!("key removal asked to the end of a session that stopped reading: {took:?}");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (_, top) = e2e::process::sh("docker", &["top", &id]).await;
        if !top.lines().any(|l| l.ends_with(" yes")) {
            break;
        }
        assert!(Instant::now() < deadline, "the session's command outlived it: {top}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A channel the client closes while the server still holds output for it leaves the rest of
/// the connection working: `yes` on one channel of a shared connection (OpenSSH's multiplexing
/// master, as editors' remote plugins use), its client killed unread, then another command on
/// the same connection.
#[tokio::test]
async fn a_channel_closed_with_output_waiting_leaves_the_connection_working() {
    if !busybox_image().await || !require_tool("ssh", which("ssh")) {
        return;
    }
    let Rental { node, client: _client, dir, key, line: _, id } = Rental::start(TestConfig::new("")).await;
    let master = e2e::ssh::Multiplexed::connect_as(node.config.ports.tenant_ssh, &key, &id, dir.path()).await;
    let out = master.output("echo first").await;
    assert_eq!(stdout(&out).trim(), "first", "{}", text(&out));
    let out = master.abandon_unread_then("yes", "echo second").await;
    assert_eq!(stdout(&out).trim(), "second", "{}", text(&out));
}

/// `max_sessions_per_key` and `max_sessions_per_container` refuse logins past them, and a
/// container's TTL ends its sessions within a second.
#[tokio::test]
async fn session_limits_hold_and_the_ttl_ends_sessions() {
    if !busybox_image().await || !require_tool("ssh", which("ssh")) {
        return;
    }
    let node =
        Node::start(TestConfig::with_tenant_access("max_sessions_per_container = 2\nmax_sessions_per_key = 1", ""))
            .await;
    let client = client(&node).await;
    let dir = tempfile::tempdir().unwrap();
    let (key_a, line_a) = renter_key(dir.path(), "a").await;
    let (key_b, line_b) = renter_key(dir.path(), "b").await;
    let (key_c, line_c) = renter_key(dir.path(), "c").await;
    let created = client
        .create_container(pb::CreateContainerRequest {
            image: BUSYBOX_IMAGE.into(),
            command: vec!["sleep".into(), "600".into()],
            ttl_seconds: 6,
            ssh_public_keys: vec![line_a, line_b, line_c],
            ..Default::default()
        })
        .await
        .unwrap();
    let id = created.id.clone();
    client.start_container(pb::ContainerRef { id: id.clone() }).await.unwrap();

    let mut first = open_session(&node, &key_a, &id).await;
    let out = output(ssh(&node, &key_a, &id, &[], Some("true")), b"").await;
    assert_eq!(out.status.code(), Some(255), "a second session of one key: {}", text(&out));
    let mut second = run_inside(&node, &key_b, &id, "sleep 299", "sleep 299").await;
    let out = output(ssh(&node, &key_c, &id, &[], Some("true")), b"").await;
    assert_eq!(out.status.code(), Some(255), "a third session of the container: {}", text(&out));
    let audit = std::fs::read_to_string(node.config.dir.path().join("data/audit/validator-access.jsonl")).unwrap();
    assert!(audit.contains("sessions_per_key") && audit.contains("sessions_per_container"), "{audit}");

    // The TTL: both sessions end within a second of it.
    let expires = std::time::UNIX_EPOCH + Duration::from_secs(created.expires_at.try_into().unwrap());
    let until = expires.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    let since = Instant::now() + until;
    tokio::time::sleep(until).await;
    for session in [&mut first, &mut second] {
        let took = exits_within(session, since, Duration::from_secs(1)).await;
        println!("TTL to session end: {took:?}");
    }
    client.remove_container(pb::RemoveContainerRequest { id, force: true }).await.ok();
}

/// `scp` (over SFTP, as OpenSSH 9 does) and `sftp` into the container's filesystem, with no
/// helper in the image; paths stay inside its root whatever `..` and symlinks say.
#[tokio::test]
async fn files_move_with_scp_and_sftp_inside_the_container_only() {
    if !busybox_image().await || !require_tool("ssh, scp, sftp", which("scp") && which("sftp")) {
        return;
    }
    let Rental { node, client, dir, key, id, .. } = Rental::start(TestConfig::new("")).await;
    let port = node.config.ports.tenant_ssh.to_string();
    let options = |tool: &str| {
        let mut args = vec!["-i".to_owned(), key.display().to_string()];
        for option in
            ["IdentitiesOnly=yes", "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "BatchMode=yes"]
        {
            args.extend(["-o".to_owned(), option.to_owned()]);
        }
        args.extend(["-P".to_owned(), port.clone()]);
        ProcessSpec::new(tool).args(args)
    };
    let remote = |path: &str| format!("{id}@127.0.0.1:{path}");

    // 10 MiB both ways, checksums equal, owned by the container's root.
    let big = dir.path().join("big");
    let data: Vec<u8> = (0..10u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&big, &data).unwrap();
    let out = e2e::process::capture(options("scp").arg(&big).arg(remote("/tmp/big")), Duration::from_secs(60)).await;
    assert!(out.status.success(), "scp up: {}", text(&out));
    let out = output(ssh(&node, &key, &id, &[], Some("sha256sum /tmp/big; stat -c %u:%g /tmp/big")), b"").await;
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    let inside = stdout(&out);
    assert!(inside.starts_with(&expected), "{inside}");
    assert!(inside.contains("\n0:0"), "{inside}");
    let back = dir.path().join("back");
    let out = e2e::process::capture(options("scp").arg(remote("/tmp/big")).arg(&back), Duration::from_secs(60)).await;
    assert!(out.status.success(), "scp down: {}", text(&out));
    assert!(std::fs::read(&back).unwrap() == data, "the file came back changed");

    // sftp: ls, put, get, rename, rm, mkdir, rmdir.
    let batch = dir.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "mkdir /tmp/d\nput {big} /tmp/d/x\nrename /tmp/d/x /tmp/d/y\nls -l /tmp/d\nget /tmp/d/y {got}\nrm /tmp/d/y\nrmdir /tmp/d\n",
            big = big.display(),
            got = dir.path().join("got").display()
        ),
    )
    .unwrap();
    let out = e2e::process::capture(
        options("sftp").arg("-b").arg(&batch).arg(format!("{id}@127.0.0.1")),
        Duration::from_secs(60),
    )
    .await;
    assert!(out.status.success(), "sftp: {}", text(&out));
    assert!(stdout(&out).contains(" y"), "{}", text(&out));
    assert!(std::fs::read(dir.path().join("got")).unwrap() == data);
    let out = output(ssh(&node, &key, &id, &[], Some("ls /tmp/d 2>&1; true")), b"").await;
    assert!(stdout(&out).contains("No such file"), "{}", text(&out));

    // A full file system fails the upload as a local disk would, although writes are gathered
    // and written behind the answers (the error comes with a later write or the close).
    let fill = "rm -f /tmp/big; dd if=/dev/zero of=/tmp/fill bs=1M count=250 2>/dev/null; df -k /tmp | tail -1";
    let out = output(ssh(&node, &key, &id, &[], Some(fill)), b"").await;
    assert!(out.status.success(), "{}", text(&out));
    let out = e2e::process::capture(options("scp").arg(&big).arg(remote("/tmp/full")), Duration::from_secs(60)).await;
    assert!(!out.status.success(), "an upload onto a full disk succeeded: {}", text(&out));
    assert!(text(&out).contains("failed to upload"), "{}", text(&out));
    let out = output(ssh(&node, &key, &id, &[], Some("rm /tmp/fill /tmp/full")), b"").await;
    assert!(out.status.success(), "{}", text(&out));

    // Escapes: `..` past the root, and symlinks to `/` and to host paths, stay inside.
    let marker = format!("/tmp/basilica-host-marker-{}", std::process::id());
    std::fs::write(&marker, "host\n").unwrap();
    let out = output(
        ssh(&node, &key, &id, &[], Some("ln -s / /tmp/hostroot; ln -s /etc /tmp/etc-link; echo container > /tmp/mine")),
        b"",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    for (path, readable) in [
        (format!("../../../..{marker}"), false),
        (format!("/tmp/hostroot{marker}"), false),
        ("/tmp/hostroot/tmp/mine".to_owned(), true),
        ("/../../tmp/mine".to_owned(), true),
    ] {
        let local = dir.path().join("escape");
        let _ = std::fs::remove_file(&local);
        let out = e2e::process::capture(options("scp").arg(remote(&path)).arg(&local), Duration::from_secs(30)).await;
        assert_eq!(out.status.success(), readable, "{path}: {}", text(&out));
        if readable {
            assert_eq!(std::fs::read_to_string(&local).unwrap(), "container\n", "{path}");
        }
    }
    // Writing through a symlink to `/` lands in the container, not on the host.
    let out = e2e::process::capture(
        options("scp").arg(&big).arg(remote(&format!("/tmp/hostroot{marker}"))),
        Duration::from_secs(30),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "host\n", "a renter wrote a host file");
    std::fs::remove_file(&marker).unwrap();

    let audit = std::fs::read_to_string(node.config.dir.path().join("data/audit/validator-access.jsonl")).unwrap();
    assert!(audit.contains("\"written_bytes\":10485760"), "the upload is not audited with its size");
    assert!(audit.contains("\"op\":\"rename\""), "the rename is not audited");
    client.remove_container(pb::RemoveContainerRequest { id, force: true }).await.unwrap();
}

/// Starts `command` inside `container` through SSH, left running, and waits until the
/// container runs it (`marker` is in `docker top`).
async fn run_inside(node: &Node, key: &Path, container: &str, command: &str, marker: &str) -> tokio::process::Child {
    let child = ssh(node, key, container, &[], Some(command)).spawn_supervised().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !e2e::process::sh("docker", &["top", container]).await.1.contains(marker) {
        assert!(Instant::now() < deadline, "`{command}` never started in {container}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child
}

/// What a connection to the local end of a forward on `port` gets after sending `send` and
/// half-closing: everything until the far side closes (None: it did not within 15 s).
async fn through(port: u16, send: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(send).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut got)).await.ok()?;
    // A refused forward's local end may be reset rather than closed: nothing came either way.
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    Some(got)
}

/// `ssh -N -L` as the renter of `container`, a free local port for each of `targets`, once it
/// listens; tried again with other ports when one was taken before ssh bound it.
async fn forwarding(
    node: &Node,
    key: &Path,
    container: &str,
    targets: &[(String, u16)],
) -> (tokio::process::Child, Vec<u16>) {
    for _ in 0..3 {
        let locals: Vec<u16> = targets.iter().map(|_| e2e::free_port()).collect();
        let mut options = vec!["-N".to_owned(), "-o".to_owned(), "ExitOnForwardFailure=yes".to_owned()];
        for ((host, port), local) in targets.iter().zip(&locals) {
            let host = if host.contains(':') { format!("[{host}]") } else { host.clone() };
            options.extend(["-L".to_owned(), format!("{local}:{host}:{port}")]);
        }
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        let mut child = ssh(node, key, container, &options, None).spawn_supervised().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", locals[0])).await.is_ok() {
                return (child, locals);
            }
            if child.try_wait().unwrap().is_some() {
                println!("ssh -L exited (a local port taken?); again");
                break;
            }
            assert!(Instant::now() < deadline, "ssh -L never listened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("ssh -L exited three times");
}

/// The node's output, once stopped: what a test that hangs shows.
async fn node_log(mut node: Node) -> String {
    node.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10)).await.1
}

/// `ssh -L` reaches servers on the container's own loopback (not the host's, which listens on
/// the same port), carries bytes both ways with half-close, and refuses every other target:
/// the host (docker0 and the container's gateway), another container, the metadata address,
/// `0.0.0.0`; a port where nothing listens fails to connect. All of it is audited.
#[tokio::test]
async fn a_renter_forwards_to_the_containers_loopback_and_nowhere_else() {
    if !busybox_image().await || !require_tool("ssh", which("ssh")) {
        return;
    }
    let Rental { node, client, dir: _dir, key, line, id: first } = Rental::start(TestConfig::new("")).await;
    let second = rented(&client, &[&line]).await;

    // The host listens on its own loopback on the port the container's server will use: a
    // forward made from the host's namespace would reach it.
    let host = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = host.local_addr().unwrap().port();
    let host_server = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut socket, _)) = host.accept().await {
            let _ = socket.write_all(b"hello-from-the-host\n").await;
        }
    });
    let echo_port = e2e::free_port();
    let mut greeter = run_inside(
        &node,
        &key,
        &first,
        &format!("nc -ll -p {port} -e echo hello-from-inside"),
        &format!("nc -ll -p {port}"),
    )
    .await;
    let mut echo =
        run_inside(&node, &key, &first, &format!("nc -ll -p {echo_port} -e cat"), &format!("nc -ll -p {echo_port}"))
            .await;
    let mut other = run_inside(&node, &key, &second, "nc -ll -p 8888 -e echo hello-from-other", "nc -ll -p 8888").await;
    let ip_of = |id: String, what: &'static str| async move {
        let format = format!("{{{{range .NetworkSettings.Networks}}}}{{{{.{what}}}}}{{{{end}}}}");
        e2e::process::sh("docker", &["inspect", "-f", &format, &id]).await.1.trim().to_owned()
    };
    let gateway = ip_of(first.clone(), "Gateway").await;
    let other_ip = ip_of(second.clone(), "IPAddress").await;
    println!("the container's gateway {gateway:?}, the other container {other_ip:?}");

    let allowed = [("localhost", port), ("127.0.0.1", port), ("localhost", echo_port)];
    let mut refused = vec![
        ("172.17.0.1".to_owned(), 22),
        ("169.254.169.254".to_owned(), 80),
        ("0.0.0.0".to_owned(), port),
        ("example.com".to_owned(), 80),
    ];
    refused.extend([(gateway, port), (other_ip, 8888)].into_iter().filter(|(ip, _)| !ip.is_empty()));
    let nothing_listens = ("localhost".to_owned(), 1);
    let targets: Vec<(String, u16)> = allowed
        .iter()
        .map(|(h, p)| ((*h).to_owned(), *p))
        .chain(refused.iter().cloned())
        .chain([nothing_listens.clone()])
        .collect();
    let (mut forwarder, locals) = forwarding(&node, &key, &first, &targets).await;

    // The container's loopback, by name and by address: the container's server, not the host's.
    for local in &locals[..2] {
        let got = through(*local, b"").await;
        let got = match got {
            Some(got) => got,
            None => panic!("the forward neither answered nor closed\n{}", node_log(node).await),
        };
        assert_eq!(String::from_utf8_lossy(&got), "hello-from-inside\n");
    }
    // Both ways, large, with the client's end of file reaching the server.
    let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    let echoed = through(locals[2], &sent).await.expect("the echo neither answered nor closed");
    println!("300 kB echoed through the forward in {:?}", started.elapsed());
    assert!(echoed == sent, "echoed {} bytes of {}", echoed.len(), sent.len());
    // Anything else: the local connection closes with nothing.
    for (local, target) in locals[3..].iter().zip(&targets[3..]) {
        assert_eq!(through(*local, b"").await.unwrap(), b"", "{target:?} was forwarded");
    }
    assert!(forwarder.try_wait().unwrap().is_none(), "refused forwards ended the SSH session");

    let audit = std::fs::read_to_string(node.config.dir.path().join("data/audit/validator-access.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // The three above, and the connections made while waiting for `ssh -L` to listen.
    let forwards: Vec<_> = events.iter().filter(|e| audit_event(e) == "tenant_forward").collect();
    assert!(forwards.len() >= 3, "{audit}");
    assert!(forwards.iter().all(|e| field(e, "address").as_str().unwrap().starts_with("127.0.0.1:")), "{audit}");
    for (host, target_port) in &refused {
        let refusal = events.iter().find(|e| {
            audit_event(e) == "tenant_refused"
                && field(e, "host") == host.as_str()
                && field(e, "port") == u64::from(*target_port)
        });
        let refusal = refusal.unwrap_or_else(|| panic!("no refusal of {host}:{target_port} audited: {audit}"));
        assert_eq!(field(refusal, "what"), "port_forwarding", "{refusal}");
        assert_eq!(field(refusal, "reason"), "not_permitted", "{refusal}");
    }
    let failed = events
        .iter()
        .find(|e| audit_event(e) == "tenant_refused" && field(e, "port") == 1)
        .unwrap_or_else(|| panic!("no failed connect audited: {audit}"));
    assert_eq!(field(failed, "reason"), "wrong_state", "{failed}");
    assert!(field(failed, "detail").as_str().unwrap().contains("nothing listens on 127.0.0.1:1"), "{failed}");

    for child in [&mut forwarder, &mut greeter, &mut echo, &mut other] {
        let _ = child.start_kill();
    }
    host_server.abort();
    for id in [first, second] {
        client.remove_container(pb::RemoveContainerRequest { id, force: true }).await.unwrap();
    }
}

/// The name of an audit event.
fn audit_event(event: &serde_json::Value) -> &str {
    event.get("event").and_then(serde_json::Value::as_str).unwrap_or_default()
}

/// The field `name` of an audit event (null where it has none).
fn field(event: &serde_json::Value, name: &str) -> serde_json::Value {
    event.get(name).cloned().unwrap_or_default()
}

/// The pre-login caps, the login grace time, the channel limit and the idle timeout of
/// `[tenant_access]`, and the per-address rate limit last (it spends the address's minute).
#[tokio::test]
async fn pre_login_caps_grace_channels_idle_and_rate_limit_hold() {
    use tokio::io::AsyncReadExt;
    if !busybox_image().await || !require_tool("ssh", which("ssh")) {
        return;
    }
    let tenant = "max_unauthenticated_connections = 4\nmax_unauthenticated_per_address = 2\nlogin_grace_time = \"2s\"\nmax_channels_per_session = 1\nidle_timeout = \"10s\"\nssh_requests_per_minute = 12\nciphers = [\"aes128-ctr\", \"chacha20-poly1305@openssh.com\"]";
    let Rental { node, client, dir, key, id, .. } = Rental::start(TestConfig::with_tenant_access(tenant, "")).await;
    let port = node.config.ports.tenant_ssh;

    // Silent connections: two from one address hold its two places (a third from it is closed
    // at once), two from another fill the four in all (one from a third address is closed at
    // once), and all are closed when the grace time is over.
    let from = |source: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        socket.connect(format!("127.0.0.1:{port}").parse().unwrap()).await.unwrap()
    };
    let closed_at_once = |mut stream: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await.expect("not closed at once");
        assert_eq!(n.unwrap_or(0), 0, "got a banner");
    };
    let mut held = vec![from("127.0.0.1").await, from("127.0.0.1").await];
    tokio::time::sleep(Duration::from_millis(200)).await;
    closed_at_once(from("127.0.0.1").await).await;
    held.extend([from("127.0.0.2").await, from("127.0.0.2").await]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    closed_at_once(from("127.0.0.3").await).await;
    let since = Instant::now();
    for stream in &mut held {
        // The server's banner, then the end at the grace time.
        let mut all = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all)).await;
        assert!(read.is_ok(), "a silent connection outlived login_grace_time");
    }
    assert!(since.elapsed() >= Duration::from_millis(1500), "closed before the grace time: {:?}", since.elapsed());

    // One channel per connection: a second channel on a multiplexed connection is refused.
    let mut args = client_args_as(port, &key, &id);
    let destination = args.pop().unwrap();
    let control = dir.path().join("mux");
    let mut master = ProcessSpec::new("ssh")
        .args(["-M", "-N", "-S"])
        .arg(&control)
        .args(args.clone())
        .arg(&destination)
        .spawn_supervised()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !control.exists() {
        assert!(Instant::now() < deadline, "the master never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A refused channel makes ssh fall back to a connection of its own: pointed at port 1,
    // where nothing answers, a refusal stays one.
    let channel = |command: &str| {
        ProcessSpec::new("ssh")
            .args(["-o", "ControlMaster=no", "-S"])
            .arg(&control)
            .args(client_args_as(1, &key, &id))
            .arg(command.to_owned())
    };
    let mut first = channel("sleep 3").spawn_supervised().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = e2e::process::capture(channel("echo second"), Duration::from_secs(20)).await;
    assert!(!stdout(&second).contains("second"), "a second channel ran: {}", text(&second));
    assert!(first.wait().await.unwrap().success());

    // The idle timeout: the master, with no channel and no traffic, is closed.
    let idle_since = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), master.wait())
        .await
        .expect("an idle connection stayed open")
        .unwrap();
    println!("idle connection closed after {:?}", idle_since.elapsed());

    // `ciphers`: what is listed is offered (the stock client takes ChaCha20-Poly1305 first),
    // what is not is refused.
    let out = output(ssh(&node, &key, &id, &["-v"], Some("true")), b"").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cipher: chacha20-poly1305@openssh.com"), "{stderr}");
    let out = output(ssh(&node, &key, &id, &["-c", "aes256-gcm@openssh.com"], Some("true")), b"").await;
    assert!(text(&out).contains("no matching cipher found"), "{}", text(&out));

    // The rate limit: this address's connections within the minute run out.
    let mut refused = false;
    for _ in 0..12 {
        let out = output(ssh(&node, &key, &id, &[], Some("true")), b"").await;
        if !out.status.success() {
            refused = true;
            break;
        }
    }
    assert!(refused, "ssh_requests_per_minute let every connection in");
    let audit = std::fs::read_to_string(node.config.dir.path().join("data/audit/validator-access.jsonl")).unwrap();
    assert!(audit.contains("channel_limit"), "the refused channel is not audited");
    client.remove_container(pb::RemoveContainerRequest { id, force: true }).await.ok();
}

/// `executor ctl containers create --ssh-key`, `ssh-key add|list|remove`.
#[tokio::test]
async fn executor_ctl_manages_renters_keys() {
    if !busybox_image().await || !require_tool("ssh", which("ssh")) {
        return;
    }
    let node = Node::start(TestConfig::new("")).await;
    let seed = node.config.dir.path().join("miner.seed");
    std::fs::write(&seed, format!("{}\n", e2e::ALICE_SEED)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key_a, _) = renter_key(dir.path(), "a").await;
    let (key_b, line_b) = renter_key(dir.path(), "b").await;
    let ctl = |args: Vec<String>| {
        let config = node.config.path.display().to_string();
        let seed = seed.display().to_string();
        async move {
            let mut all = vec!["ctl".to_owned(), "--config".into(), config, "--key-file".into(), seed];
            all.extend(args);
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            let out = e2e::run("executor", &all, &[]).await;
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        }
    };
    let pub_a = key_a.with_extension("pub").display().to_string();
    let created =
        ctl(["containers", "create", "--image", BUSYBOX_IMAGE, "--ssh-key", &pub_a, "--start", "--", "sleep", "600"]
            .map(str::to_owned)
            .to_vec())
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let out = output(ssh(&node, &key_a, &id, &[], Some("echo a")), b"").await;
    assert_eq!(stdout(&out).trim(), "a", "{}", text(&out));
    let added = ctl(vec!["containers".into(), "ssh-key".into(), "add".into(), id.clone(), line_b]).await;
    assert_eq!(added["keys"].as_array().unwrap().len(), 2, "{added}");
    let listed = ctl(vec!["containers".into(), "ssh-key".into(), "list".into(), id.clone()]).await;
    assert!(listed["ssh"].as_str().unwrap().contains(&id), "{listed}");
    let fingerprint = listed["keys"][0]["fingerprint"].as_str().unwrap().to_owned();
    let removed = ctl(vec!["containers".into(), "ssh-key".into(), "remove".into(), id.clone(), fingerprint]).await;
    assert_eq!(removed["keys"].as_array().unwrap().len(), 1, "{removed}");
    let out = output(ssh(&node, &key_a, &id, &[], Some("true")), b"").await;
    assert_eq!(out.status.code(), Some(255), "a removed key still logs in");
    let out = output(ssh(&node, &key_b, &id, &[], Some("echo b")), b"").await;
    assert_eq!(stdout(&out).trim(), "b", "{}", text(&out));
    // Issue 22 item 2: a port added makes the container again; the renter's key still opens it.
    let args = ["containers", "update", &id, "--add-port", "8080"].map(str::to_owned).to_vec();
    let updated = ctl(args).await;
    assert!(updated["recreated_at"].as_i64().unwrap() > 0, "{updated}");
    assert_eq!(
        (&updated["state"], &updated["ports"][0]["container_port"]),
        (&serde_json::json!("running"), &serde_json::json!(8080))
    );
    let out = output(ssh(&node, &key_b, &id, &[], Some("echo again")), b"").await;
    assert_eq!(stdout(&out).trim(), "again", "{}", text(&out));
    ctl(vec!["containers".into(), "remove".into(), "--force".into(), id]).await;
}

/// The OpenSSH client on a real terminal (a pseudo-terminal Python's `pty` gives it): the
/// login shell sees the client's size, and a resize of the client's terminal reaches it.
#[tokio::test]
async fn a_terminal_resize_reaches_the_shell() {
    if !busybox_image().await || !require_tool("ssh and python3", which("ssh") && which("python3")) {
        return;
    }
    let Rental { node, client, dir: _dir, key, id, .. } = Rental::start(TestConfig::new("")).await;
    // ssh runs on a pty of 30x100; the steps ask `stty size`, resize the pty to 50x120 (the
    // kernel signals ssh, which sends window-change), ask again, and exit 4.
    let steps = r#"
pump(2)
os.write(fd, b"echo first $(stty size)\n")
pump(1.5)
size(fd, 50, 120)
pump(1)
os.write(fd, b"echo second $(stty size); exit 4\n")
"#;
    let text = ssh_on_a_terminal(&node, &key, &id, (30, 100), steps).await;
    assert!(text.contains("first 30 100"), "{text}");
    assert!(text.contains("second 50 120"), "{text}");
    assert!(text.contains("status 4"), "{text}");
    client.remove_container(pb::RemoveContainerRequest { id, force: true }).await.ok();
}

/// `ssh` as the renter of `container` with `key` on a pseudo-terminal of `rows` x `cols`
/// (Python's `pty`), driven by the Python statements `steps` (`pump(seconds)` reads what the
/// terminal shows meanwhile, `size(fd, rows, cols)` resizes it, `os.write(fd, ...)` types),
/// then read to its end: everything it showed, and `status N`, ssh's exit status.
async fn ssh_on_a_terminal(node: &Node, key: &Path, container: &str, (rows, cols): (u16, u16), steps: &str) -> String {
    let mut args = client_args_as(node.config.ports.tenant_ssh, key, container);
    args.insert(0, "ssh".to_owned());
    let script = format!(
        r#"
import fcntl, os, pty, select, struct, sys, termios, time
def size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
pid, fd = pty.fork()
if pid == 0:
    size(0, {rows}, {cols})
    os.execvp("ssh", sys.argv[1:])
out = b""
def pump(seconds):
    global out
    end = time.time() + seconds
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            out += chunk
{steps}
pump(20)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.stdout.write("\nstatus %d\n" % os.waitstatus_to_exitcode(status))
"#
    );
    let spec = ProcessSpec::new("python3").arg("-c").arg(script).args(args);
    stdout(&e2e::process::capture(spec, Duration::from_secs(40)).await)
}

/// The pid of the node's validator-access (its command line names the node's config).
fn validator_access_pid(node: &Node) -> u32 {
    validator_access_pid_now(node).expect("validator-access runs")
}

/// The pid of the node's validator-access, if one runs now.
fn validator_access_pid_now(node: &Node) -> Option<u32> {
    let config = node.config.path.display().to_string();
    std::fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()).find(
        |pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("validator-access") && cmdline.contains(&config)
        },
    )
}

/// 1000 connections at once from 125 addresses: refused cleanly (the caps and the rate limit),
/// nothing leaks once they are gone, and a renter still gets in.
#[tokio::test]
async fn a_thousand_connections_at_once_leave_nothing_behind() {
    if !busybox_image().await || !require_tool("ssh", which("ssh")) {
        return;
    }
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    if !require_tool("4096 open files", hard >= 4096) {
        return;
    }
    let Rental { node, client, dir: _dir, key, id, .. } = Rental::start(TestConfig::new("")).await;
    let port = node.config.ports.tenant_ssh;
    let pid = validator_access_pid(&node);
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let before = fds();

    let connect = |n: usize| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("127.0.0.{}:0", 10 + n / 8).parse().unwrap()).unwrap();
        socket.connect(format!("127.0.0.1:{port}").parse().unwrap()).await
    };
    let streams: Vec<_> = futures_join_all((0..1000).map(connect)).await;
    let connected = streams.iter().filter(|s| s.is_ok()).count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("{connected} of 1000 connected; validator-access holds {} descriptors (had {before})", fds());
    assert!(fds() < before + 200, "validator-access holds a descriptor per connection past the caps");
    drop(streams);

    // A renter gets in, and once the strangers are gone so are their descriptors.
    let out = output(ssh(&node, &key, &id, &[], Some("echo in")), b"").await;
    assert_eq!(stdout(&out).trim(), "in", "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    while fds() > before + 8 {
        assert!(Instant::now() < deadline, "descriptors leaked: {} now, {before} before", fds());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client.remove_container(pb::RemoveContainerRequest { id, force: true }).await.ok();
}

/// Every future of `futures`, at once.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// An image with the host's rsync (and the libraries it links) over the busybox test image.
async fn rsync_image() -> &'static str {
    const TAG: &str = "basilica-test/rsync:latest";
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let rsync = which_path("rsync");
    let (_, ldd) = e2e::process::sh("ldd", &[rsync.to_str().unwrap()]).await;
    let libraries = ldd.split_whitespace().filter(|w| w.starts_with('/')).map(PathBuf::from);
    for file in std::iter::once(rsync.clone()).chain(libraries) {
        let target = root.join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(std::fs::canonicalize(&file).unwrap(), &target).unwrap();
    }
    std::fs::write(dir.path().join("Dockerfile"), format!("FROM {BUSYBOX_IMAGE}\nCOPY root/ /\n")).unwrap();
    let out = ProcessSpec::new("docker")
        .args(["build", "-q", "-t", TAG])
        .arg(dir.path())
        .output(Duration::from_secs(300), 1 << 20)
        .await
        .unwrap();
    assert!(out.status.success(), "docker build: {}", text(&out));
    TAG
}

fn which_path(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join(tool)).find(|p| p.is_file()).unwrap())
        .unwrap()
}

/// `rsync -e ssh` both ways where the image has rsync: the remote rsync is a command the SSH
/// server runs in the container, speaking its protocol over the session.
#[tokio::test]
async fn rsync_works_where_the_image_has_it() {
    if !busybox_image().await || !require_tool("ssh, rsync", which("ssh") && which("rsync") && which("ldd")) {
        return;
    }
    let image = rsync_image().await;
    let node = Node::start(TestConfig::new("")).await;
    let client = client(&node).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, line) = renter_key(dir.path(), "a").await;
    let created = client
        .create_container(pb::CreateContainerRequest {
            image: image.into(),
            command: vec!["sleep".into(), "600".into()],
            ssh_public_keys: vec![line],
            ..Default::default()
        })
        .await
        .unwrap();
    let id = created.id;
    client.start_container(pb::ContainerRef { id: id.clone() }).await.unwrap();
    let local = dir.path().join("tree");
    std::fs::create_dir_all(local.join("sub")).unwrap();
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
    std::fs::write(local.join("sub/data.bin"), &data).unwrap();
    std::fs::write(local.join("notes.txt"), "renter's notes\n").unwrap();
    let transport = format!(
        "ssh -p {} -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes",
        node.config.ports.tenant_ssh,
        key.display()
    );
    let rsync = |from: String, to: String, extra: &[&str]| {
        ProcessSpec::new("rsync").args(["-a", "-e", transport.as_str()]).args(extra.iter().copied()).arg(from).arg(to)
    };
    let out = e2e::process::capture(
        rsync(format!("{}/", local.display()), format!("{id}@127.0.0.1:/tmp/tree/"), &[]),
        Duration::from_secs(60),
    )
    .await;
    assert!(out.status.success(), "rsync up: {}", text(&out));
    let out =
        output(ssh(&node, &key, &id, &[], Some("cat /tmp/tree/notes.txt; wc -c < /tmp/tree/sub/data.bin")), b"").await;
    assert_eq!(stdout(&out), format!("renter's notes\n{}\n", data.len()), "{}", text(&out));
    let back = dir.path().join("back");
    let out = e2e::process::capture(
        rsync(format!("{id}@127.0.0.1:/tmp/tree/"), format!("{}/", back.display()), &[]),
        Duration::from_secs(60),
    )
    .await;
    assert!(out.status.success(), "rsync down: {}", text(&out));
    assert!(std::fs::read(back.join("sub/data.bin")).unwrap() == data, "the tree came back changed");
    // A second run sends nothing that did not change.
    let out = e2e::process::capture(
        rsync(format!("{}/", local.display()), format!("{id}@127.0.0.1:/tmp/tree/"), &["--stats"]),
        Duration::from_secs(60),
    )
    .await;
    assert!(stdout(&out).contains("Number of regular files transferred: 0"), "{}", text(&out));
    client.remove_container(pb::RemoveContainerRequest { id, force: true }).await.unwrap();
}

/// What a session cannot do is refused in it, with the reason, and audited: a login or a
/// command in an image with no shell, a terminal of absurd size (the command runs without it).
#[tokio::test]
async fn what_cannot_be_done_is_refused_in_the_session_and_audited() {
    if !busybox_image().await || !require_tool("ssh and python3", which("ssh") && which("python3")) {
        return;
    }
    let image = "basilica-test/no-shell:latest";
    e2e::derived_image(
        image,
        "RUN [\"/bin/busybox\", \"rm\", \"/bin/sh\"]\nCMD [\"/bin/busybox\", \"sleep\", \"600\"]",
    )
    .await;
    let Rental { node, client, dir: _dir, key, line, id } = Rental::start(TestConfig::new("")).await;
    let created = client
        .create_container(pb::CreateContainerRequest {
            image: image.into(),
            ttl_seconds: 600,
            ssh_public_keys: vec![line],
            ..Default::default()
        })
        .await
        .unwrap();
    client.start_container(pb::ContainerRef { id: created.id.clone() }).await.unwrap();
    let no_shell = created.id;

    // No shell: neither a login nor a command (`/bin/sh -c`), each told why.
    let login = output(ssh(&node, &key, &no_shell, &["-tt"], None), b"").await;
    assert_eq!(login.status.code(), Some(127), "{}", text(&login));
    assert!(text(&login).contains("the image has no shell (/bin/bash or /bin/sh)"), "{}", text(&login));
    let command = output(ssh(&node, &key, &no_shell, &[], Some("echo hi")), b"").await;
    assert_eq!(command.status.code(), Some(127), "{}", text(&command));
    assert!(text(&command).contains("/bin/sh is not an executable file in the container"), "{}", text(&command));

    // A terminal 2000 columns wide (ssh on a terminal asks for one by itself): refused, and
    // the login shell runs without one (`ssh -t` would give up instead).
    let steps = r#"
pump(1.5)
os.write(fd, b"tty; echo ran; exit 5\n")
"#;
    let shown = ssh_on_a_terminal(&node, &key, &id, (30, 2000), steps).await;
    assert!(shown.contains("PTY allocation request failed"), "{shown}");
    assert!(shown.contains("not a tty") && shown.contains("ran"), "{shown}");
    assert!(shown.contains("status 5"), "{shown}");

    let audit = std::fs::read_to_string(node.config.dir.path().join("data/audit/validator-access.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let failed: Vec<_> = events
        .iter()
        .filter(|e| audit_event(e) == "tenant_command_failed" && field(e, "container") == no_shell.as_str())
        .collect();
    assert_eq!(failed.len(), 2, "{audit}");
    assert!(field(failed[0], "message").as_str().unwrap().contains("no shell"), "{audit}");
    assert_eq!(field(failed[0], "command"), "(login shell)", "{audit}");
    assert_eq!(field(failed[1], "command"), "echo hi", "{audit}");
    assert!(
        events.iter().any(|e| audit_event(e) == "tenant_refused" && field(e, "what") == "pty_size"),
        "no pty_size refusal audited: {audit}"
    );
    for id in [id, no_shell] {
        client.remove_container(pb::RemoveContainerRequest { id, force: true }).await.ok();
    }
}

/// A renter's keys survive validator-access killed with SIGKILL (the launcher restarts it)
/// and the node stopped and started again: the same key logs in to the same container.
#[tokio::test]
async fn keys_survive_a_killed_service_and_a_restarted_node() {
    if !busybox_image().await || !require_tool("ssh", which("ssh")) {
        return;
    }
    let Rental { mut node, client, dir: _dir, key, id, .. } = Rental::start(TestConfig::new("")).await;
    let echo = |node: &Node, word: &'static str| {
        let command = format!("echo {word}");
        let spec = ssh(node, &key, &id, &[], Some(command.as_str()));
        async move {
            let out = output(spec, b"").await;
            assert_eq!(stdout(&out).trim(), word, "{}", text(&out));
        }
    };
    echo(&node, "before").await;

    let killed = validator_access_pid(&node);
    common::process::send_signal(killed, nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while validator_access_pid_now(&node).is_none_or(|pid| pid == killed) {
        assert!(Instant::now() < deadline, "validator-access was not restarted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.wait_until(Duration::from_secs(20), e2e::all_serving).await;
    echo(&node, "after-kill").await;

    let (status, log) = node.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(20)).await;
    assert!(status.success(), "{log}");
    let node = Node::start(node.config).await;
    let client_again = self::client(&node).await;
    let keys =
        client_again.list_container_keys(access::ListContainerKeysRequest { container_id: id.clone() }).await.unwrap();
    assert_eq!(keys.keys.len(), 1, "{keys:?}");
    echo(&node, "after-restart").await;
    drop(client);
    client_again.remove_container(pb::RemoveContainerRequest { id, force: true }).await.ok();
}
