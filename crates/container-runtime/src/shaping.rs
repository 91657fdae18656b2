//! `network_bps`: Docker has no network rate limit, so container-runtime shapes each running
//! container's host-side veth with `tc`, both directions, with token buckets (`tbf`):
//! - to the container: `tbf` on the veth's egress;
//! - from the container: the veth's ingress is redirected (`u32` match-all, `mirred`) to an IFB
//!   device of the container's own (`bif-…`), whose egress carries the second `tbf`. A policer
//!   would only drop; the IFB queues, so TCP sees a real rate, as the CNI bandwidth plugin does.
//!
//! The veth is found from inside: `/proc/<pid>/root/sys/class/net/eth0/iflink` is the host
//! ifindex of its peer (the container's sysfs is mounted in its own network namespace). Every
//! command is idempotent (`replace`, delete-then-add), so shaping is applied again after a
//! restart of the service without stacking anything.
//!
//! A start pays for this after the engine has started the container, so it is kept short: the
//! IFB device needs no container and is made while the engine starts it ([`prepare`]), and the
//! four `tc` commands go to one `tc -batch -` ([`shape`]): two processes in all, one of them
//! beside the engine's start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::ProcessSpec;

/// Prefix of the IFB devices that carry a container's upload shaping.
pub const IFB_PREFIX: &str = "bif-";

/// Why a container cannot be shaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resources.network_bps: cannot shape the container's traffic: {0}")]
pub struct ShapingError(pub String);

/// The IFB device of a container: `bif-` and the last 11 characters of its id.
pub fn ifb_name(id: &str) -> String {
    let tail: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
    format!("{IFB_PREFIX}{}", &tail[tail.len().saturating_sub(11)..])
}

/// Bucket size for `rate` bytes/s: 50 ms of traffic, at least 32 KiB (a few full frames plus
/// what the timer granularity needs), at most 1 GiB (`tc` takes a 32-bit burst: at the rates
/// the config allows, up to 10 TB/s, 50 ms would not fit).
pub fn burst_bytes(rate: u64) -> u64 {
    (rate / 20).clamp(32 << 10, 1 << 30)
}

/// The `tc` argument lists that shape `veth` (and its `ifb`) to `rate` bytes/s each way, in order.
pub fn commands(veth: &str, ifb: &str, rate: u64) -> Vec<Vec<String>> {
    let bits = format!("{}bit", rate.saturating_mul(8));
    let burst = burst_bytes(rate).to_string();
    let tbf = |dev: &str| {
        ["qdisc", "replace", "dev", dev, "root", "tbf", "rate", &bits, "burst", &burst, "latency", "100ms"]
            .map(str::to_owned)
            .to_vec()
    };
    vec![
        tbf(veth),
        tbf(ifb),
        ["qdisc", "replace", "dev", veth, "handle", "ffff:", "ingress"].map(str::to_owned).to_vec(),
        [
            "filter", "replace", "dev", veth, "parent", "ffff:", "protocol", "all", "prio", "1", "handle", "800::1",
            "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb,
        ]
        .map(str::to_owned)
        .to_vec(),
    ]
}

/// Runs `program -batch -` with `lines`, one command each; the first that fails stops it.
async fn run_batch(program: &str, lines: &[Vec<String>]) -> Result<(), ShapingError> {
    let input: String = lines.iter().map(|l| l.join(" ") + "\n").collect();
    let out = ProcessSpec::new(program)
        .args(["-batch", "-"])
        .output_with_input(Some(input.as_bytes()), Duration::from_secs(20), 1 << 14)
        .await
        .map_err(|e| ShapingError(format!("`{program}`: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(ShapingError(format!("`{program} -batch` of `{}`: {}", input.trim().replace('\n', "; "), stderr.trim())))
    }
}

async fn run(program: &str, args: &[String]) -> Result<(), ShapingError> {
    let out = ProcessSpec::new(program)
        .args(args.iter().cloned())
        .output(Duration::from_secs(20), 1 << 14)
        .await
        .map_err(|e| ShapingError(format!("`{program}`: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ShapingError(format!("`{program} {}`: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// The host interface whose ifindex is `index`.
fn interface_with_index(index: u32, sys_class_net: &Path) -> Option<String> {
    std::fs::read_dir(sys_class_net).ok()?.flatten().find_map(|entry| {
        let found = std::fs::read_to_string(entry.path().join("ifindex")).ok()?.trim().parse::<u32>().ok()?;
        (found == index).then(|| entry.file_name().to_string_lossy().into_owned())
    })
}

/// The host-side veth of the container whose init process is `pid`.
pub fn host_veth(pid: i64) -> Result<String, ShapingError> {
    let iflink: PathBuf = format!("/proc/{pid}/root/sys/class/net/eth0/iflink").into();
    let index = std::fs::read_to_string(&iflink)
        .map_err(|e| ShapingError(format!("{}: {e} (does the container have a network?)", iflink.display())))?
        .trim()
        .parse::<u32>()
        .map_err(|e| ShapingError(format!("{}: {e}", iflink.display())))?;
    interface_with_index(index, Path::new("/sys/class/net"))
        .ok_or_else(|| ShapingError(format!("no host interface has ifindex {index} (the container's veth peer)")))
}

/// Makes the IFB device of container `id` (if it is not there) and sets it up, with
/// `executor_id` as its alias, so only this executor ever removes it; one `ip -batch -`.
/// Needs no container: a start does it while the engine starts the container. Returns its name.
pub async fn prepare(id: &str, executor_id: &str) -> Result<String, ShapingError> {
    let ifb = ifb_name(id);
    let mut lines = Vec::new();
    if !Path::new("/sys/class/net").join(&ifb).exists() {
        lines.push(["link", "add", &ifb, "type", "ifb"].map(str::to_owned).to_vec());
    }
    lines.push(["link", "set", "dev", &ifb, "alias", executor_id, "up"].map(str::to_owned).to_vec());
    run_batch("ip", &lines).await?;
    Ok(ifb)
}

/// Shapes the running container whose init process is `pid` to `rate` bytes/s each way, its
/// upload through `ifb` (from [`prepare`]); one `tc -batch -`. Returns the host veth.
pub async fn shape(pid: i64, ifb: &str, rate: u64) -> Result<String, ShapingError> {
    let veth = host_veth(pid)?;
    run_batch("tc", &commands(&veth, ifb, rate)).await?;
    Ok(veth)
}

/// [`prepare`] then [`shape`]: a running container `id` shaped from nothing (after a restart
/// of the service, or of the container by the engine).
pub async fn apply(id: &str, pid: i64, rate: u64, executor_id: &str) -> Result<String, ShapingError> {
    let ifb = prepare(id, executor_id).await?;
    shape(pid, &ifb, rate).await
}

/// Removes a container's IFB device; one that is not there is fine.
pub async fn release(id: &str) -> Result<(), ShapingError> {
    let ifb = ifb_name(id);
    if !Path::new("/sys/class/net").join(&ifb).exists() {
        return Ok(());
    }
    run("ip", &["link", "del", "dev", &ifb].map(str::to_owned)).await
}

/// This executor's IFB devices (by alias) whose container is not among `live` (our ids).
pub fn orphans(executor_id: &str, live: &std::collections::HashSet<String>, sys_class_net: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sys_class_net) else { return Vec::new() };
    let wanted: std::collections::HashSet<String> = live.iter().map(|id| ifb_name(id)).collect();
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let alias = std::fs::read_to_string(e.path().join("ifalias")).unwrap_or_default();
            (name.starts_with(IFB_PREFIX) && alias.trim() == executor_id && !wanted.contains(&name)).then_some(name)
        })
        .collect()
}

/// Removes an IFB device by name.
pub async fn remove_device(name: &str) -> Result<(), ShapingError> {
    run("ip", &["link", "del", "dev", name].map(str::to_owned)).await
}

/// Whether this host can shape at all (root, `ip` and `tc`, IFB devices, `tbf`, `mirred`): a
/// throwaway veth pair is shaped and removed. The error says what is missing. Three processes
/// (the devices made in one `ip -batch`, shaped in one `tc -batch`, removed in one `ip -batch`):
/// the service is not SERVING before this ends.
pub async fn probe() -> Result<(), ShapingError> {
    let [veth, peer, ifb] = probe_devices();
    let add = [
        ["link", "add", &veth, "type", "veth", "peer", "name", &peer].map(str::to_owned).to_vec(),
        ["link", "add", &ifb, "type", "ifb"].map(str::to_owned).to_vec(),
    ];
    let mut result = run_batch("ip", &add).await;
    if result.is_ok() {
        // As a start does it: one batch.
        result = run_batch("tc", &commands(&veth, &ifb, 1 << 20)).await;
    }
    // What the batch made, whichever command of it failed (the peer goes with the veth).
    let made: Vec<Vec<String>> = [&veth, &ifb]
        .into_iter()
        .filter(|name| Path::new("/sys/class/net").join(name).exists())
        .map(|name| ["link", "del", "dev", name].map(str::to_owned).to_vec())
        .collect();
    if !made.is_empty()
        && let Err(e) = run_batch("ip", &made).await
    {
        tracing::warn!(error = %e, "cannot remove the devices of the shaping probe");
    }
    result
}

/// The probe's veth pair and IFB device, named after this process.
fn probe_devices() -> [String; 3] {
    let tag = format!("{:05}", std::process::id() % 100_000);
    [format!("bprobe{tag}a"), format!("bprobe{tag}b"), format!("{IFB_PREFIX}probe{tag}")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_buckets_scale() {
        assert_eq!(ifb_name("c-0123456789ab"), "bif-123456789ab");
        assert!(ifb_name("c-0123456789ab").len() <= 15);
        assert_eq!(burst_bytes(1 << 20), 52_428);
        assert_eq!(burst_bytes(1000), 32 << 10);
        assert_eq!(burst_bytes(10_000_000_000_000), 1 << 30, "the most the config allows fits tc's 32 bits");
    }

    /// A batch stops at its first failing command, and the error names the batch and what
    /// `tc` said.
    #[tokio::test]
    async fn a_failing_batch_says_which_commands_and_why() {
        if ProcessSpec::new("tc").arg("-V").output(Duration::from_secs(5), 1024).await.is_err() {
            println!("SKIPPED: no `tc` on this host (iproute2)");
            return;
        }
        let lines = [
            ["qdisc", "show", "dev", "lo"].map(str::to_owned).to_vec(),
            [
                "qdisc",
                "replace",
                "dev",
                "bnosuchdev0",
                "root",
                "tbf",
                "rate",
                "8bit",
                "burst",
                "4096",
                "latency",
                "1ms",
            ]
            .map(str::to_owned)
            .to_vec(),
        ];
        let error = run_batch("tc", &lines).await.unwrap_err().to_string();
        assert!(error.contains("`tc -batch` of `qdisc show dev lo; qdisc replace dev bnosuchdev0"), "{error}");
        assert!(error.contains("bnosuchdev0"), "{error}");
        run_batch("tc", &lines[..1]).await.unwrap();
    }

    /// The probe passes on a host that can shape (root, iproute2, IFB) and leaves no device.
    #[tokio::test]
    async fn the_probe_shapes_a_throwaway_pair_and_removes_it() {
        if !nix::unistd::Uid::effective().is_root() || !Path::new("/sys/class/net").exists() {
            println!("SKIPPED: the probe makes network devices: needs root and sysfs");
            return;
        }
        probe().await.unwrap();
        for name in probe_devices() {
            assert!(!Path::new("/sys/class/net").join(&name).exists(), "{name} left behind");
        }
    }

    #[test]
    fn both_directions_get_a_token_bucket() {
        let c = commands("veth1", "bif-1", 1 << 20);
        assert_eq!(c[0].join(" "), "qdisc replace dev veth1 root tbf rate 8388608bit burst 52428 latency 100ms");
        assert_eq!(c[1].join(" "), "qdisc replace dev bif-1 root tbf rate 8388608bit burst 52428 latency 100ms");
        assert!(c[3].join(" ").ends_with("action mirred egress redirect dev bif-1"), "{:?}", c[3]);
    }

    #[test]
    fn orphans_are_ours_without_a_container() {
        let dir = tempfile::tempdir().unwrap();
        for (name, alias) in [
            ("bif-aaaaaaaaaaa", "executor-1"),
            ("bif-bbbbbbbbbbb", "executor-1"),
            ("bif-ccccccccccc", "executor-2"),
            ("eth0", ""),
        ] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("ifalias"), format!("{alias}\n")).unwrap();
        }
        let live = std::collections::HashSet::from(["c-0aaaaaaaaaaa".to_owned()]);
        assert_eq!(orphans("executor-1", &live, dir.path()), vec!["bif-bbbbbbbbbbb".to_owned()]);
        assert!(orphans("executor-3", &live, dir.path()).is_empty());
    }

    #[test]
    fn finds_interfaces_by_index() {
        let dir = tempfile::tempdir().unwrap();
        for (name, index) in [("lo", 1), ("veth9", 17)] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("ifindex"), format!("{index}\n")).unwrap();
        }
        assert_eq!(interface_with_index(17, dir.path()).as_deref(), Some("veth9"));
        assert_eq!(interface_with_index(5, dir.path()), None);
    }
}
