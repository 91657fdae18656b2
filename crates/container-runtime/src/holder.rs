//! Network holders: a tiny container kept running on each spare network, whose network
//! namespace a tenant container joins (`--network container:<holder>`). Starting a container
//! on a network of its own costs the engine a new namespace, a veth pair on the bridge and the
//! embedded DNS set-up inside it (a `docker run -d` on such a network takes about 290 ms here,
//! one that joins a namespace already there 120 ms: docs/benchmarks.md, "Network holders"); a
//! holder pays that ahead, off the create path, like the spare network itself.
//!
//! The holder runs a program of ours, 129 bytes of machine code that waits for signals for
//! ever, imported as the image [`HOLDER_IMAGE`] from memory: nothing is pulled, and nothing of
//! a tenant's image runs in it. Holders are made from the image's id, and only while its one
//! layer is our program's archive ([`ensure_image`]): a holder shares a tenant's network
//! namespace, and a name can be moved by a pull. It is named after its network
//! (`<network>-holder`), carries [`LABEL_HOLDER_OF`] (never our container labels, so no
//! listing, reaper round or event stream of tenants sees it) and goes with its network
//! (`Engine::remove_network`). A tenant joins it only when it publishes no ports (ports
//! belong to whoever owns the namespace); one with ports gets an endpoint of its own on the
//! same network, beside the holder. Only x86-64 has the program; elsewhere spare networks
//! have no holder and creates take the network the usual way.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, RemoveContainerOptions, StartContainerOptions,
};
use tokio_stream::StreamExt;

/// What the engine said about a holder (or its image), naming it.
#[derive(Debug, thiserror::Error)]
#[error("network holder {name}: {source}")]
pub struct HolderError {
    pub name: String,
    #[source]
    pub source: bollard::errors::Error,
}

fn failed(name: &str) -> impl Fn(bollard::errors::Error) -> HolderError + '_ {
    move |source| HolderError { name: name.to_owned(), source }
}

/// The name of the holders' image, made from [`program`] on first use.
pub const HOLDER_IMAGE: &str = "basilica-executor/holder:1";
/// On every holder: the executor it belongs to.
pub const LABEL_HOLDER_OF: &str = "ai.basilica.executor.holder_of";
/// The path of the program inside the image.
const PROGRAM_PATH: &str = "holder";

/// The holder of network `network`.
pub fn name(network: &str) -> String {
    format!("{network}-holder")
}

/// The network mode of a container that joins `network`'s holder.
pub fn joining(network: &str) -> String {
    format!("container:{}", name(network))
}

/// Whether a container's network mode joins another container's namespace.
pub fn joins(network_mode: Option<&str>) -> bool {
    network_mode.is_some_and(|m| m.starts_with("container:"))
}

/// Whether the container `inspect` describes joins another container's namespace.
pub fn joined(inspect: &bollard::models::ContainerInspectResponse) -> bool {
    joins(inspect.host_config.as_ref().and_then(|h| h.network_mode.as_deref()))
}

/// The holder's program for this machine: a static ELF executable whose one instruction loop
/// is `pause()` (so it sleeps until a signal, and as the init of its PID namespace it ignores
/// every signal but SIGKILL). None where there is none (not x86-64).
pub fn program() -> Option<Vec<u8>> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    // loop: mov eax, 34 (pause); syscall; jmp loop
    let code: [u8; 9] = [0xb8, 0x22, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xeb, 0xf7];
    let size = HEADERS + code.len() as u64;
    let mut elf = Vec::with_capacity(size as usize);
    // The ELF header: 64-bit, little-endian, version 1, System V, an executable for x86-64.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // e_entry: the code
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [64u16, 56, 1, 64, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        elf.extend_from_slice(&half.to_le_bytes());
    }
    // One program header: the whole file loaded at BASE, readable and executable.
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R + X
    for word in [0, BASE, BASE, size, size, 0x1000] {
        // p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.extend_from_slice(&code);
    Some(elf)
}

/// A tar archive (POSIX ustar) of one executable file `name` holding `data`, owned by root.
fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let mut put = |at: usize, field: &[u8]| header[at..at + field.len()].copy_from_slice(field);
    put(0, name.as_bytes());
    put(100, b"0000755\0");
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{:011o}\0", data.len()).as_bytes());
    put(136, b"00000000000\0");
    put(148, b"        ");
    put(156, b"0");
    put(257, b"ustar\0");
    put(263, b"00");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    tar
}

/// The holders' one image layer: the archive of [`program`]. None where there is none.
fn archive() -> Option<Vec<u8>> {
    Some(tar_of(PROGRAM_PATH, &program()?))
}

/// The digest of a layer made of `archive`, as the engine names an imported layer (`sha256:`
/// and the hex of the uncompressed archive's SHA-256).
fn digest(archive: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(archive)))
}

/// The digest of the holders' one image layer (see [`archive`]).
pub fn layer() -> Option<String> {
    archive().as_deref().map(digest)
}

/// The id of the image holders run: [`HOLDER_IMAGE`], made (again) unless the engine has it
/// with exactly [`layer`] in it. The id, not the name, is what holders are made from: a name
/// can be moved (a pull of an image of the same name), and a holder shares a tenant's network
/// namespace. None where there is no [`program`].
pub async fn ensure_image(docker: &Docker) -> Result<Option<String>, HolderError> {
    let Some(archive) = archive() else { return Ok(None) };
    let layer = digest(&archive);
    let ours = |image: &bollard::models::ImageInspect| {
        let layers = image.root_fs.as_ref().and_then(|r| r.layers.as_deref()).unwrap_or_default();
        (layers == [layer.clone()]).then(|| image.id.clone()).flatten()
    };
    if let Some(id) = docker.inspect_image(HOLDER_IMAGE).await.ok().as_ref().and_then(ours) {
        return Ok(Some(id));
    }
    let (repo, tag) = HOLDER_IMAGE.split_once(':').unwrap_or((HOLDER_IMAGE, "latest"));
    let options = CreateImageOptions {
        from_src: Some("-".to_owned()),
        repo: Some(repo.to_owned()),
        tag: Some(tag.to_owned()),
        changes: vec![format!("CMD [\"/{PROGRAM_PATH}\"]")],
        ..Default::default()
    };
    let body = bollard::body_full(archive.into());
    let mut progress = docker.create_image(Some(options), Some(body), None);
    while let Some(step) = progress.next().await {
        step.map_err(failed(HOLDER_IMAGE))?;
    }
    let image = docker.inspect_image(HOLDER_IMAGE).await.map_err(failed(HOLDER_IMAGE))?;
    let id = ours(&image);
    match &id {
        Some(id) => tracing::info!(image = HOLDER_IMAGE, id, "network holder image made"),
        None => tracing::warn!(image = HOLDER_IMAGE, "the imported holder image is not the program's layer"),
    }
    Ok(id)
}

/// Creates and starts the holder of `network` for executor `executor_id` from image `image`
/// (the id [`ensure_image`] gave), with the DNS servers `dns` (a container that joins it
/// cannot set its own).
/// Confined like nothing else: no capability, no new privileges, a read-only root, one
/// process, 16 MiB; the engine starts it again with itself (after a reboot, the tenants that
/// join it need it).
pub async fn start(
    docker: &Docker,
    image: &str,
    executor_id: &str,
    network: &str,
    dns: &[String],
) -> Result<String, HolderError> {
    let name = name(network);
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        labels: Some(HashMap::from([(LABEL_HOLDER_OF.to_owned(), executor_id.to_owned())])),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_owned()),
            dns: (!dns.is_empty()).then(|| dns.to_vec()),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            readonly_rootfs: Some(true),
            pids_limit: Some(1),
            memory: Some(16 << 20),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    };
    let options = CreateContainerOptions { name: Some(name.clone()), ..CreateContainerOptions::default() };
    docker.create_container(Some(options), body).await.map_err(failed(&name))?;
    if let Err(e) = docker.start_container(&name, None::<StartContainerOptions>).await {
        let _ = remove(docker, network).await;
        return Err(failed(&name)(e));
    }
    Ok(name)
}

/// Whether the holder of `network` runs: Some(true) running, Some(false) there but stopped,
/// None when there is none.
pub async fn state(docker: &Docker, network: &str) -> Option<bool> {
    let inspect = docker.inspect_container(&name(network), None::<InspectContainerOptions>).await.ok()?;
    Some(inspect.state.and_then(|s| s.running).unwrap_or(false))
}

/// Whether the holder a previous run left on spare `network` can serve: there, given the DNS
/// servers `dns` of the config now, and running (or started again). One that cannot is removed.
pub async fn adoptable(docker: &Docker, network: &str, dns: &[String]) -> Result<bool, HolderError> {
    let Ok(inspect) = docker.inspect_container(&name(network), None::<InspectContainerOptions>).await else {
        return Ok(false);
    };
    let had = inspect.host_config.and_then(|h| h.dns).unwrap_or_default();
    let running = inspect.state.and_then(|s| s.running).unwrap_or(false);
    if had == dns && (running || restart(docker, network).await.is_ok()) {
        return Ok(true);
    }
    remove(docker, network).await?;
    Ok(false)
}

/// Starts the holder of `network` again (a container that joins it cannot start without it);
/// one the engine started meanwhile (its restart policy) is fine.
pub async fn restart(docker: &Docker, network: &str) -> Result<(), HolderError> {
    let name = name(network);
    match docker.start_container(&name, None::<StartContainerOptions>).await {
        Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
        Err(source) => Err(HolderError { name, source }),
    }
}

/// Removes the holder of `network`, if it has one.
pub async fn remove(docker: &Docker, network: &str) -> Result<(), HolderError> {
    let name = name(network);
    let options = RemoveContainerOptions { force: true, ..Default::default() };
    match docker.remove_container(&name, Some(options)).await {
        Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        Err(source) => Err(HolderError { name, source }),
    }
}

/// Bytes received and sent by the network namespace of process `pid` (every device but the
/// loopback), from its `/proc/<pid>/net/dev`: what the engine's stats leave out for a
/// container that joins another's namespace.
pub fn namespace_bytes(pid: u32) -> Option<(u64, u64)> {
    std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok().map(|text| parse_net_dev(&text))
}

/// Sums received and sent bytes of `/proc/net/dev` text, the loopback left out.
fn parse_net_dev(text: &str) -> (u64, u64) {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(device, _)| device.trim() != "lo")
        .filter_map(|(_, counters)| {
            let fields: Vec<u64> = counters.split_whitespace().filter_map(|f| f.parse().ok()).collect();
            // receive: bytes packets errs drop fifo frame compressed multicast; then transmit bytes.
            Some((*fields.first()?, *fields.get(8)?))
        })
        .fold((0, 0), |(rx, tx), (r, t)| (rx + r, tx + t))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use common::process::ProcessSpec;

    use super::*;

    /// The program runs on this machine and waits: still there after a while, gone with SIGKILL.
    #[tokio::test]
    async fn the_program_runs_and_waits_until_killed() {
        let Some(program) = program() else {
            println!("SKIPPED: no holder program for this architecture");
            return;
        };
        assert_eq!(program.len(), 129);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PROGRAM_PATH);
        std::fs::write(&path, &program).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut child = ProcessSpec::new(&path).spawn_supervised().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(child.try_wait().unwrap().is_none(), "the holder program ended by itself");
        child.kill().await.unwrap();
        assert!(!child.wait().await.unwrap().success());
    }

    /// The archive is one ustar member a standard tar reads back byte for byte.
    #[tokio::test]
    async fn the_archive_is_read_by_tar() {
        let data = b"\x7fELF and so on";
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar");
        std::fs::write(&archive, tar_of("holder", data)).unwrap();
        let tar = |args: &[&str]| ProcessSpec::new("tar").args(args.iter().copied()).arg(&archive);
        let listed = tar(&["-tvf"]).output(Duration::from_secs(10), 1 << 16).await.unwrap();
        assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(listed.starts_with("-rwxr-xr-x") && listed.contains(" holder"), "{listed}");
        let out = tar(&["-xOf"]).arg("holder").output(Duration::from_secs(10), 1 << 16).await.unwrap();
        assert_eq!(out.stdout, data);
    }

    #[test]
    fn namespace_bytes_leave_the_loopback_out() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo:  500       5    0    0    0     0          0         0      500       5    0    0    0     0       0          0\n  \
             eth0: 1200      10    0    0    0     0          0         0      3400      20    0    0    0     0       0          0\n";
        assert_eq!(parse_net_dev(text), (1200, 3400));
        assert_eq!(namespace_bytes(std::process::id()).map(|_| ()), Some(()));
        assert_eq!(joining("basilica-n-0a"), "container:basilica-n-0a-holder");
        assert!(joins(Some("container:x")) && !joins(Some("basilica-n-0a")) && !joins(None));
    }
}
