//! `[logging]`: the log filter, the line format and the rotated log file, with their checks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::Issues;
use super::values::ByteSize;

/// `[logging]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// `tracing` filter: a level (`info`) or directives (`info,container_runtime=debug`).
    /// `--log-level` overrides it.
    pub level: String,
    /// `pretty` (human) or `json` (one object a line).
    pub format: LogFormat,
    /// Also write logs to this file, rotated by size. The launcher is its only writer.
    pub file: Option<PathBuf>,
    /// Rotate the log file when it reaches this many bytes.
    pub max_file_bytes: ByteSize,
    /// Rotated files kept (`executor.log.1` .. `.N`).
    pub max_files: u32,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Pretty,
            file: None,
            max_file_bytes: ByteSize::new(100 << 20),
            max_files: 5,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl LoggingConfig {
    pub(super) fn validate(&self, v: &mut Issues) {
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.level) {
            v.fail("logging.level", format!("`{}` is not a log filter: {e}", self.level));
        }
        if self.max_file_bytes.get() < 4096 {
            v.fail("logging.max_file_bytes", "must be at least 4096");
        }
        v.range("logging.max_files", self.max_files as f64, 1.0, 1000.0);
    }
}
