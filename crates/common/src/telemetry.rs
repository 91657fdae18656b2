//! Logging: `tracing` to stdout as pretty text or JSON lines, every line tagged with the
//! process's service name, and optionally to a size-rotated file.
//!
//! Under the launcher only the launcher writes the log file: services log to stdout, which the
//! launcher reads and copies to its own stdout and the file, so rotation has one writer.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LoggingConfig};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("log level `{level}`: {message}")]
    Filter { level: String, message: String },
    #[error("log file {path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error("a logger is already installed: {0}")]
    Installed(String),
}

/// Installs the global subscriber for `service`. `level` (from `--log-level`) overrides the
/// config; `write_file` is false for services under the launcher. Returns the log file, if
/// any, for the launcher to copy its services' output into.
pub fn init(
    service: &'static str,
    config: &LoggingConfig,
    level: Option<&str>,
    write_file: bool,
) -> Result<Option<Arc<RotatingFile>>, TelemetryError> {
    let level = level.unwrap_or(&config.level);
    let filter = EnvFilter::builder()
        .parse(level)
        .map_err(|e| TelemetryError::Filter { level: level.to_owned(), message: e.to_string() })?;
    let file = match (&config.file, write_file) {
        (Some(path), true) => Some(Arc::new(RotatingFile::open(path, config.max_file_bytes.get(), config.max_files)?)),
        _ => None,
    };
    let ansi = config.format == LogFormat::Pretty && io::stdout().is_terminal();
    let mut layers = vec![layer(config.format, ansi, Tagged { service, format: config.format, inner: Stdout })];
    if let Some(file) = &file {
        layers.push(layer(
            config.format,
            false,
            Tagged { service, format: config.format, inner: SharedFile(file.clone()) },
        ));
    }
    tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .try_init()
        .map_err(|e| TelemetryError::Installed(e.to_string()))?;
    Ok(file)
}

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

fn layer<W>(format: LogFormat, ansi: bool, writer: W) -> BoxedLayer
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Pretty => layer.boxed(),
        LogFormat::Json => layer.json().flatten_event(true).with_current_span(true).boxed(),
    }
}

/// Tags each formatted event with the service: `"service":"x",` first in a JSON object, or a
/// `[x] ` prefix on a pretty line. tracing-subscriber hands over one whole event per write.
struct Tagged<W> {
    service: &'static str,
    format: LogFormat,
    inner: W,
}

struct TaggedWriter<W> {
    service: &'static str,
    format: LogFormat,
    inner: W,
}

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for Tagged<W> {
    type Writer = TaggedWriter<W::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        TaggedWriter { service: self.service, format: self.format, inner: self.inner.make_writer() }
    }
}

impl<W: Write> Write for TaggedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut line = Vec::with_capacity(buf.len() + self.service.len() + 16);
        match (self.format, buf.first()) {
            (LogFormat::Json, Some(b'{')) => {
                line.extend_from_slice(b"{\"service\":\"");
                line.extend_from_slice(self.service.as_bytes());
                line.extend_from_slice(b"\",");
                line.extend_from_slice(&buf[1..]);
            }
            _ => {
                line.push(b'[');
                line.extend_from_slice(self.service.as_bytes());
                line.extend_from_slice(b"] ");
                line.extend_from_slice(buf);
            }
        }
        self.inner.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Stdout;

impl<'a> MakeWriter<'a> for Stdout {
    type Writer = io::Stdout;

    fn make_writer(&'a self) -> Self::Writer {
        io::stdout()
    }
}

/// A log file rotated by size: `file` → `file.1` → … → `file.N`, oldest dropped.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    state: Mutex<(File, u64)>,
}

impl RotatingFile {
    pub fn open(path: &Path, max_bytes: u64, max_files: u32) -> Result<Self, TelemetryError> {
        let err = |source| TelemetryError::File { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(err)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        Ok(Self { path: path.to_owned(), max_bytes, max_files, state: Mutex::new((file, size)) })
    }

    /// Appends whole lines; rotates first if they would pass the size limit.
    pub fn append(&self, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.1 > 0 && state.1 + bytes.len() as u64 > self.max_bytes {
            self.rotate()?;
            *state = (OpenOptions::new().create(true).append(true).open(&self.path)?, 0);
        }
        state.0.write_all(bytes)?;
        state.1 += bytes.len() as u64;
        Ok(())
    }

    /// As [`Self::append`], then waits until the bytes are on disk (audit records).
    pub fn append_durable(&self, bytes: &[u8]) -> io::Result<()> {
        self.append(bytes)?;
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0.sync_data()
    }

    fn rotate(&self) -> io::Result<()> {
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let _ = fs::remove_file(numbered(self.max_files));
        for n in (1..self.max_files).rev() {
            match fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::rename(&self.path, numbered(1))
    }
}

struct SharedFile(Arc<RotatingFile>);

impl<'a> MakeWriter<'a> for SharedFile {
    type Writer = RotatingWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        RotatingWriter(&self.0)
    }
}

/// One event's worth of writing into a [`RotatingFile`].
#[derive(Debug)]
pub struct RotatingWriter<'a>(&'a RotatingFile);

impl Write for RotatingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.append(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/executor.log");
        let file = RotatingFile::open(&path, 100, 2).unwrap();
        for i in 0..10 {
            file.append(format!("{i:039}\n").as_bytes()).unwrap();
        }
        // 40-byte lines, 100-byte files: two lines a file; 10 lines make 5 files, 3 are kept.
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), format!("{:039}\n{:039}\n", 8, 9));
        assert_eq!(read(&dir.path().join("logs/executor.log.1")), format!("{:039}\n{:039}\n", 6, 7));
        assert!(dir.path().join("logs/executor.log.2").exists());
        assert!(!dir.path().join("logs/executor.log.3").exists());
    }

    #[test]
    fn tags_json_and_pretty_lines() {
        let mut out = Vec::new();
        let mut json = TaggedWriter { service: "gpu-monitor", format: LogFormat::Json, inner: &mut out };
        json.write_all(b"{\"level\":\"INFO\"}\n").unwrap();
        let mut pretty = TaggedWriter { service: "gpu-monitor", format: LogFormat::Pretty, inner: &mut out };
        pretty.write_all(b"INFO started\n").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"service\":\"gpu-monitor\",\"level\":\"INFO\"}\n[gpu-monitor] INFO started\n"
        );
    }
}
