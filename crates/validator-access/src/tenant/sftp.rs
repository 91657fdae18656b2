//! File transfer for renters: the SFTP subsystem (`sftp`, and `scp`, which OpenSSH 9 runs over
//! SFTP) inside their container's filesystem, with no helper in the image. The protocol is
//! russh-sftp's; every file operation is ours and resolves inside the container's root:
//! `/proc/<init pid>/root` is opened once, and every path is first made absolute and `..`-free
//! by its text, then opened with `openat2` and `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS` from
//! that root, so neither `..` nor a symlink (absolute or relative) leads outside it. Operations
//! on an entry itself (remove, rename, mkdir, lstat, readlink, symlink) open its parent that way
//! and act on the last component without following it. Files are created as the host's root,
//! which is the container's root (no user-namespace remapping on tenant containers).
//!
//! Every file closed is audited with its path and the bytes read and written; every change
//! (remove, rename, mkdir, rmdir, setstat, symlink) with its paths.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode};
use russh_sftp::protocol::{Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version};
use russh_sftp::server::StatusReply;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::tenant::access::Tenants;

/// The most files and directories one SFTP session may hold open.
const MAX_HANDLES: usize = 256;
/// The most bytes one read answers with.
const MAX_READ: u32 = 256 << 10;
/// How often `openat2` is retried when a concurrent rename makes it answer EAGAIN.
const RETRIES: u32 = 8;

/// Why the container's root cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("container-runtime: {0}")]
    Runtime(tonic::Status),
    #[error("/proc/{pid}/root: {source}")]
    Open { pid: u32, source: Errno },
    #[error("the container restarted while its root was opened")]
    Moved,
}

/// The root directory of running container `container`, opened (`O_PATH`). Its init's PID is
/// asked again once the root is open: a PID reused in between is caught.
pub async fn open_root(tenants: &Tenants, container: &str) -> Result<OwnedFd, RootError> {
    let pid = || async {
        let r = tenants.runtime().pid(common::proto::runtime::v1::ContainerRef { id: container.to_owned() }).await;
        r.map(|r| r.into_inner().pid).map_err(RootError::Runtime)
    };
    let before = pid().await?;
    let path = format!("/proc/{before}/root");
    let root = nix::fcntl::open(path.as_str(), OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|source| RootError::Open { pid: before, source })?;
    if pid().await? != before {
        return Err(RootError::Moved);
    }
    Ok(root)
}

/// Makes `path` absolute (relative to `cwd`) and free of `.`, `..` and repeated slashes, by
/// its text; `..` at the root stays at the root, as the kernel does there.
pub fn normalise(cwd: &str, path: &str) -> String {
    let joined = if path.starts_with('/') { path.to_owned() } else { format!("{cwd}/{path}") };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The status of an OS error.
fn reply(e: Errno) -> StatusReply {
    let code = match e {
        Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP => StatusCode::NoSuchFile,
        Errno::EACCES | Errno::EPERM | Errno::EROFS | Errno::EXDEV => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    code.with_message(e.desc())
}

fn io_reply(e: &std::io::Error) -> StatusReply {
    reply(e.raw_os_error().map_or(Errno::EIO, Errno::from_raw))
}

/// Attributes of a `stat`.
fn attributes(s: &FileStat) -> FileAttributes {
    FileAttributes {
        size: u64::try_from(s.st_size).ok(),
        uid: Some(s.st_uid),
        gid: Some(s.st_gid),
        permissions: Some(s.st_mode),
        atime: u32::try_from(s.st_atime).ok(),
        mtime: u32::try_from(s.st_mtime).ok(),
        ..Default::default()
    }
}

/// `ls -l`'s line for an entry, which clients show as is: type and mode, links, owner, size,
/// modification time (UTC) and name.
fn long_name(name: &str, s: &FileStat) -> String {
    let kind = match s.st_mode & libc_mode::S_IFMT {
        libc_mode::S_IFDIR => 'd',
        libc_mode::S_IFLNK => 'l',
        libc_mode::S_IFREG => '-',
        libc_mode::S_IFCHR => 'c',
        libc_mode::S_IFBLK => 'b',
        libc_mode::S_IFIFO => 'p',
        _ => 's',
    };
    let mut mode = String::from(kind);
    for (bit, c) in [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o40, 'r'),
        (0o20, 'w'),
        (0o10, 'x'),
        (0o4, 'r'),
        (0o2, 'w'),
        (0o1, 'x'),
    ] {
        mode.push(if s.st_mode & bit != 0 { c } else { '-' });
    }
    let t = crate::time::civil(s.st_mtime);
    format!(
        "{mode} {:>4} {:<8} {:<8} {:>12} {:04}-{:02}-{:02} {:02}:{:02} {name}",
        s.st_nlink, s.st_uid, s.st_gid, s.st_size, t.year, t.month, t.day, t.hour, t.minute
    )
}

/// The file type bits of `st_mode`.
mod libc_mode {
    pub(super) const S_IFMT: u32 = 0o170000;
    pub(super) const S_IFDIR: u32 = 0o040000;
    pub(super) const S_IFLNK: u32 = 0o120000;
    pub(super) const S_IFREG: u32 = 0o100000;
    pub(super) const S_IFCHR: u32 = 0o020000;
    pub(super) const S_IFBLK: u32 = 0o060000;
    pub(super) const S_IFIFO: u32 = 0o010000;
}

/// The answer of a request that succeeded with nothing to return.
fn ok(id: u32) -> Status {
    Status { id, status_code: StatusCode::Ok, error_message: "Ok".into(), language_tag: "en-US".into() }
}

/// An open handle.
enum Open {
    File(OpenFile),
    Dir { entries: Option<Vec<File>> },
}

/// Contiguous writes are gathered up to this before they reach the file, and written on
/// blocking threads while the next ones arrive: OpenSSH sends 32 KiB at a time, and on an
/// overlay filesystem served through FUSE (fuse-overlayfs, rootless engines) every `pwrite` is a
/// round trip to the FUSE daemon or two (a privilege check, then the write); written one by one
/// in line, uploads took 4 times as long as `docker cp`.
const GATHER: usize = 1 << 20;

/// Gathered writes of one file under way at once, while the client streams it front to back.
/// A write anywhere else waits for all of them first, so no two writes under way overlap.
const IN_FLIGHT: usize = 4;

/// An open file, with the writes not yet written.
struct OpenFile {
    file: Arc<std::fs::File>,
    path: String,
    read: u64,
    written: u64,
    /// Bytes for offset `pending_at` onwards, not yet handed to a writer.
    pending: Vec<u8>,
    pending_at: u64,
    /// The writes under way, oldest first, and where the last of them ends.
    in_flight: std::collections::VecDeque<tokio::task::JoinHandle<std::io::Result<()>>>,
    in_flight_end: u64,
    /// A write that failed after its requests were answered: the next write, read or the close
    /// reports it (as a local file system reports a failed write-back at close).
    failed: Option<std::io::Error>,
}

impl OpenFile {
    fn new(file: std::fs::File, path: String) -> Self {
        Self {
            file: Arc::new(file),
            path,
            read: 0,
            written: 0,
            pending: Vec::new(),
            pending_at: 0,
            in_flight: Default::default(),
            in_flight_end: 0,
            failed: None,
        }
    }

    /// Waits for the oldest write under way; a failure is kept for [`Self::settle`].
    async fn wait_oldest(&mut self) {
        if let Some(write) = self.in_flight.pop_front() {
            let done = write.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if let Err(e) = done {
                self.failed.get_or_insert(e);
            }
        }
    }

    /// Waits for every write under way.
    async fn wait(&mut self) {
        while !self.in_flight.is_empty() {
            self.wait_oldest().await;
        }
    }

    /// Hands what is pending to a writer: beside the writes under way when it continues them
    /// and there is room, else once they are done.
    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if self.pending_at != self.in_flight_end {
            self.wait().await;
        }
        while self.in_flight.len() >= IN_FLIGHT {
            self.wait_oldest().await;
        }
        let (file, data, at) = (self.file.clone(), std::mem::take(&mut self.pending), self.pending_at);
        self.in_flight_end = at + data.len() as u64;
        self.in_flight.push_back(tokio::task::spawn_blocking(move || file.write_all_at(&data, at)));
    }

    /// Everything written; the first failure since the last call, if any.
    async fn settle(&mut self) -> Result<(), StatusReply> {
        self.flush().await;
        self.wait().await;
        self.failed.take().map_or(Ok(()), |e| Err(io_reply(&e)))
    }

    /// `data` at `offset`: gathered when it continues what is pending, else after a flush.
    async fn write(&mut self, offset: u64, data: Vec<u8>) -> Result<(), StatusReply> {
        if let Some(e) = self.failed.take() {
            return Err(io_reply(&e));
        }
        let continues = offset == self.pending_at + self.pending.len() as u64;
        let gathers = continues && self.pending.len() + data.len() <= GATHER;
        if !self.pending.is_empty() && !gathers {
            self.flush().await;
        }
        if self.pending.is_empty() {
            self.pending_at = offset;
            self.pending.reserve(GATHER);
        }
        self.pending.extend_from_slice(&data);
        if self.pending.len() >= GATHER {
            self.flush().await;
        }
        Ok(())
    }

    /// For a session that ends with the file open: what is pending is written after the writes
    /// under way, in the background.
    fn finish_in_background(mut self) {
        let (in_flight, pending) = (std::mem::take(&mut self.in_flight), std::mem::take(&mut self.pending));
        let (file, at) = (self.file.clone(), self.pending_at);
        if pending.is_empty() && in_flight.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (never so in the service): the in-flight write finishes on its own.
            let _ = file.write_all_at(&pending, at);
            return;
        };
        runtime.spawn(async move {
            for write in in_flight {
                let _ = write.await;
            }
            if !pending.is_empty() {
                let _ = tokio::task::spawn_blocking(move || file.write_all_at(&pending, at)).await;
            }
        });
    }
}

/// One SFTP session in one container.
pub struct ContainerFiles {
    tenants: Arc<Tenants>,
    session: String,
    container: String,
    root: OwnedFd,
    /// Where relative paths start: `/root` where the image has it, else `/`.
    home: String,
    handles: HashMap<String, Open>,
    next: u64,
}

impl ContainerFiles {
    pub fn new(tenants: Arc<Tenants>, session: String, container: String, root: OwnedFd) -> Self {
        let mut files =
            Self { tenants, session, container, root, home: "/".to_owned(), handles: HashMap::new(), next: 0 };
        if files.resolve("/root", OFlag::O_PATH | OFlag::O_DIRECTORY, 0).is_ok() {
            files.home = "/root".to_owned();
        }
        files
    }

    fn path(&self, path: &str) -> String {
        normalise(&self.home, path)
    }

    /// Opens `path` (absolute, normalised) inside the root with `flags`.
    fn resolve(&self, path: &str, flags: OFlag, mode: u32) -> Result<OwnedFd, StatusReply> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let relative = path.trim_start_matches('/');
        let relative = if relative.is_empty() { "." } else { relative };
        let mut tries = 0;
        loop {
            match nix::fcntl::openat2(self.root.as_fd(), relative, how) {
                Ok(fd) => return Ok(fd),
                Err(Errno::EAGAIN) if tries < RETRIES => tries += 1,
                Err(e) => return Err(reply(e)),
            }
        }
    }

    /// The parent directory of `path` (opened) and its last component.
    fn parent(&self, path: &str) -> Result<(OwnedFd, String), StatusReply> {
        let path = self.path(path);
        let Some((parent, name)) = path.rsplit_once('/').filter(|(_, name)| !name.is_empty()) else {
            return Err(StatusCode::PermissionDenied.with_message("the root itself"));
        };
        let dir = self.resolve(if parent.is_empty() { "/" } else { parent }, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
        Ok((dir, name.to_owned()))
    }

    /// Writes out every file's gathered writes, so that what any other request sees (a stat,
    /// a rename, a second handle on the same file) is what the client wrote. A failure stays
    /// with its file, for its next write or its close.
    async fn flush_all(&mut self) {
        for open in self.handles.values_mut() {
            if let Open::File(f) = open
                && (!f.in_flight.is_empty() || !f.pending.is_empty())
            {
                f.flush().await;
                f.wait().await;
            }
        }
    }

    fn handle(&mut self, open: Open) -> Result<String, StatusReply> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(StatusCode::Failure.with_message(format!("at most {MAX_HANDLES} open files")));
        }
        self.next += 1;
        let handle = self.next.to_string();
        self.handles.insert(handle.clone(), open);
        Ok(handle)
    }

    fn audit(&self, event: &str, fields: serde_json::Value) {
        let serde_json::Value::Object(mut fields) = fields else { return };
        fields.insert("session".into(), json!(self.session));
        fields.insert("container".into(), json!(self.container));
        self.tenants.audit().record(event, serde_json::Value::Object(fields));
    }

    /// Applies `attrs` to the open file `fd`.
    fn apply(fd: &OwnedFd, attrs: &FileAttributes) -> Result<(), StatusReply> {
        if let Some(size) = attrs.size {
            nix::unistd::ftruncate(fd, i64::try_from(size).unwrap_or(i64::MAX)).map_err(reply)?;
        }
        if let Some(permissions) = attrs.permissions {
            nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(permissions & 0o7777)).map_err(reply)?;
        }
        if attrs.uid.is_some() || attrs.gid.is_some() {
            let (uid, gid) = (attrs.uid.map(nix::unistd::Uid::from_raw), attrs.gid.map(nix::unistd::Gid::from_raw));
            nix::unistd::fchown(fd, uid, gid).map_err(reply)?;
        }
        if let (Some(atime), Some(mtime)) = (attrs.atime, attrs.mtime) {
            let spec = |t: u32| nix::sys::time::TimeSpec::new(i64::from(t), 0);
            nix::sys::stat::futimens(fd, &spec(atime), &spec(mtime)).map_err(reply)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for ContainerFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerFiles")
            .field("container", &self.container)
            .field("session", &self.session)
            .field("handles", &self.handles.len())
            .finish_non_exhaustive()
    }
}

impl Drop for ContainerFiles {
    /// Files left open by a client that went away are written out and audited like closed ones.
    fn drop(&mut self) {
        let open: Vec<String> = self.handles.keys().cloned().collect();
        for handle in open {
            if let Some(Open::File(f)) = self.handles.remove(&handle) {
                self.audit("tenant_file", json!({"path": f.path, "read_bytes": f.read, "written_bytes": f.written}));
                f.finish_in_background();
            }
        }
    }
}

impl russh_sftp::server::Handler for ContainerFiles {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.into()
    }

    async fn init(&mut self, _version: u32, _extensions: HashMap<String, String>) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        self.flush_all().await;
        let path = self.path(&filename);
        let mut flags = match (pflags.contains(OpenFlags::READ), pflags.contains(OpenFlags::WRITE)) {
            (true, true) => OFlag::O_RDWR,
            (false, true) => OFlag::O_WRONLY,
            _ => OFlag::O_RDONLY,
        };
        for (sftp, os) in [
            (OpenFlags::APPEND, OFlag::O_APPEND),
            (OpenFlags::CREATE, OFlag::O_CREAT),
            (OpenFlags::TRUNCATE, OFlag::O_TRUNC),
            (OpenFlags::EXCLUDE, OFlag::O_EXCL),
        ] {
            if pflags.contains(sftp) {
                flags |= os;
            }
        }
        // Never block on a FIFO, never take a terminal.
        flags |= OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
        // openat2 takes a mode only with O_CREAT.
        let mode = if flags.contains(OFlag::O_CREAT) { attrs.permissions.map_or(0o644, |p| p & 0o7777) } else { 0 };
        let fd = self.resolve(&path, flags, mode)?;
        let stat = nix::sys::stat::fstat(&fd).map_err(reply)?;
        if stat.st_mode & libc_mode::S_IFMT != libc_mode::S_IFREG {
            return Err(StatusCode::Failure.with_message("not a regular file"));
        }
        let handle = self.handle(Open::File(OpenFile::new(std::fs::File::from(fd), path)))?;
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(Open::File(mut f)) => {
                let written = f.settle().await;
                self.audit("tenant_file", json!({"path": f.path, "read_bytes": f.read, "written_bytes": f.written}));
                written?;
            }
            Some(Open::Dir { .. }) => {}
            None => return Err(StatusCode::Failure.with_message("no such handle")),
        }
        Ok(ok(id))
    }

    async fn read(&mut self, id: u32, handle: String, offset: u64, len: u32) -> Result<Data, Self::Error> {
        self.flush_all().await;
        let Some(Open::File(f)) = self.handles.get_mut(&handle) else {
            return Err(StatusCode::Failure.with_message("no such file handle"));
        };
        f.settle().await?;
        let mut data = vec![0u8; len.min(MAX_READ) as usize];
        let n = f.file.read_at(&mut data, offset).map_err(|e| io_reply(&e))?;
        if n == 0 && !data.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        data.truncate(n);
        f.read += n as u64;
        metrics::counter!("executor_validator_access_tenant_file_bytes_total", "direction" => "download")
            .increment(n as u64);
        Ok(Data { id, data })
    }

    async fn write(&mut self, id: u32, handle: String, offset: u64, data: Vec<u8>) -> Result<Status, Self::Error> {
        let Some(Open::File(f)) = self.handles.get_mut(&handle) else {
            return Err(StatusCode::Failure.with_message("no such file handle"));
        };
        let n = data.len() as u64;
        f.write(offset, data).await?;
        f.written += n;
        metrics::counter!("executor_validator_access_tenant_file_bytes_total", "direction" => "upload").increment(n);
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.flush_all().await;
        let (dir, name) = self.parent(&path)?;
        let stat = nix::sys::stat::fstatat(&dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(reply)?;
        Ok(Attrs { id, attrs: attributes(&stat) })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.flush_all().await;
        let fd = self.resolve(&self.path(&path), OFlag::O_PATH, 0)?;
        let stat = nix::sys::stat::fstat(&fd).map_err(reply)?;
        Ok(Attrs { id, attrs: attributes(&stat) })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        self.flush_all().await;
        let Some(Open::File(f)) = self.handles.get(&handle) else {
            return Err(StatusCode::Failure.with_message("no such file handle"));
        };
        let stat = nix::sys::stat::fstat(&f.file).map_err(reply)?;
        Ok(Attrs { id, attrs: attributes(&stat) })
    }

    async fn setstat(&mut self, id: u32, path: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        self.flush_all().await;
        let path = self.path(&path);
        let access = if attrs.size.is_some() { OFlag::O_WRONLY } else { OFlag::O_RDONLY };
        let fd = self.resolve(&path, access | OFlag::O_NONBLOCK | OFlag::O_NOCTTY, 0)?;
        Self::apply(&fd, &attrs)?;
        self.audit("tenant_file_op", json!({"op": "setstat", "path": path}));
        Ok(ok(id))
    }

    async fn fsetstat(&mut self, id: u32, handle: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        self.flush_all().await;
        let Some(Open::File(f)) = self.handles.get(&handle) else {
            return Err(StatusCode::Failure.with_message("no such file handle"));
        };
        let fd = f.file.try_clone().map_err(|e| io_reply(&e))?;
        Self::apply(&OwnedFd::from(fd), &attrs)?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        self.flush_all().await;
        let fd = self.resolve(&self.path(&path), OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
        let dir_fd = fd.try_clone().map_err(|e| io_reply(&e))?;
        let mut dir = nix::dir::Dir::from_fd(dir_fd).map_err(reply)?;
        let mut entries = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(reply)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(stat) = nix::sys::stat::fstatat(&fd, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else { continue };
            entries.push(File { longname: long_name(&name, &stat), filename: name, attrs: attributes(&stat) });
        }
        let handle = self.handle(Open::Dir { entries: Some(entries) })?;
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        match self.handles.get_mut(&handle) {
            Some(Open::Dir { entries }) => match entries.take() {
                Some(files) => Ok(Name { id, files }),
                None => Err(StatusCode::Eof.into()),
            },
            _ => Err(StatusCode::Failure.with_message("no such directory handle")),
        }
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        self.flush_all().await;
        let (dir, name) = self.parent(&filename)?;
        nix::unistd::unlinkat(&dir, name.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir).map_err(reply)?;
        self.audit("tenant_file_op", json!({"op": "remove", "path": self.path(&filename)}));
        Ok(ok(id))
    }

    async fn mkdir(&mut self, id: u32, path: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        self.flush_all().await;
        let (dir, name) = self.parent(&path)?;
        let mode = Mode::from_bits_truncate(attrs.permissions.map_or(0o755, |p| p & 0o7777));
        nix::sys::stat::mkdirat(&dir, name.as_str(), mode).map_err(reply)?;
        self.audit("tenant_file_op", json!({"op": "mkdir", "path": self.path(&path)}));
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        self.flush_all().await;
        let (dir, name) = self.parent(&path)?;
        nix::unistd::unlinkat(&dir, name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir).map_err(reply)?;
        self.audit("tenant_file_op", json!({"op": "rmdir", "path": self.path(&path)}));
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        Ok(Name { id, files: vec![File::dummy(self.path(&path))] })
    }

    async fn rename(&mut self, id: u32, oldpath: String, newpath: String) -> Result<Status, Self::Error> {
        self.flush_all().await;
        let (from_dir, from) = self.parent(&oldpath)?;
        let (to_dir, to) = self.parent(&newpath)?;
        nix::fcntl::renameat(&from_dir, from.as_str(), &to_dir, to.as_str()).map_err(reply)?;
        self.audit("tenant_file_op", json!({"op": "rename", "path": self.path(&oldpath), "to": self.path(&newpath)}));
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        self.flush_all().await;
        let (dir, name) = self.parent(&path)?;
        let target = nix::fcntl::readlinkat(&dir, name.as_str()).map_err(reply)?;
        Ok(Name { id, files: vec![File::dummy(target.to_string_lossy())] })
    }

    /// OpenSSH sends the link's target first and the new link second (the reverse of the
    /// draft's names, which russh-sftp keeps), as OpenSSH's own server reads them.
    async fn symlink(&mut self, id: u32, linkpath: String, targetpath: String) -> Result<Status, Self::Error> {
        self.flush_all().await;
        let (target, link) = (linkpath, targetpath);
        let (dir, name) = self.parent(&link)?;
        nix::unistd::symlinkat(target.as_str(), &dir, name.as_str()).map_err(reply)?;
        self.audit("tenant_file_op", json!({"op": "symlink", "path": self.path(&link), "target": target}));
        Ok(ok(id))
    }
}

/// What runs when a stream's input ends, before the end is passed on.
type OnEnd = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A stream that ends for good at its first error, so that the SFTP loop, which goes on after
/// errors other than the end of the stream, always ends; and that, when the client closes its
/// side, runs `on_end` (the channel's exit status) before passing the end on: the SFTP loop
/// drops the stream at its end, which closes the channel, and an exit status sent after that
/// would be lost (OpenSSH's `scp` takes a session without one for a failure).
pub struct Fused<S> {
    inner: S,
    failed: bool,
    on_end: Option<OnEnd>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Fused<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fused").field("inner", &self.inner).field("failed", &self.failed).finish_non_exhaustive()
    }
}

impl<S> Fused<S> {
    pub fn new(inner: S, on_end: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Self { inner, failed: false, on_end: Some(Box::pin(on_end)) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Fused<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.failed {
            // The end: first what must precede it, once.
            if let Some(on_end) = self.on_end.as_mut() {
                if on_end.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.on_end = None;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Err(e)) => {
                self.failed = true;
                self.on_end = None;
                Poll::Ready(Err(e))
            }
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                self.failed = true;
                self.poll_read(cx, buf)
            }
            polled => polled,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Fused<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Err(_))) {
            self.failed = true;
            self.on_end = None;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(polled, Poll::Ready(Err(_))) {
            self.failed = true;
            self.on_end = None;
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_made_absolute_and_dot_dot_free_by_their_text() {
        assert_eq!(normalise("/root", "x"), "/root/x");
        assert_eq!(normalise("/root", "."), "/root");
        assert_eq!(normalise("/root", "../../../../etc/passwd"), "/etc/passwd");
        assert_eq!(normalise("/", "/a//b/./c/.."), "/a/b");
        assert_eq!(normalise("/", ".."), "/");
        assert_eq!(normalise("/", ""), "/");
    }
}
