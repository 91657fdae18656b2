//! What is wrong with a configuration: [`ConfigIssue`] (one key, where its value came from,
//! the message), [`ConfigError`] (all of them, reported together), and [`Issues`], the list the
//! section checks add to.

use std::fmt;

use super::values::{InvalidValue, Validate, in_range};

/// Exit code for configuration errors (usage errors, like clap's).
pub const CONFIG_ERROR_EXIT_CODE: i32 = 2;

/// One problem with the configuration, naming the key and where its value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key, e.g. `server.port`; empty for problems with the file as a whole.
    pub key: String,
    /// The file or environment variable the value came from.
    pub origin: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: key `{}`: {}", self.origin, self.key, self.message)
        }
    }
}

/// Everything wrong with a configuration, reported together.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "config error: {issue}")?;
        }
        Ok(())
    }
}

/// The problems found so far, as `(key, message)`; the loader adds where each value came from.
#[derive(Debug, Default)]
pub(crate) struct Issues(pub(crate) Vec<(String, String)>);

impl Issues {
    pub(crate) fn fail(&mut self, key: &str, message: impl fmt::Display) {
        self.0.push((key.to_owned(), message.to_string()));
    }

    /// An issue on `key` when `result` is an error.
    pub(crate) fn result(&mut self, key: &str, result: Result<(), InvalidValue>) {
        if let Err(e) = result {
            self.fail(key, e);
        }
    }

    /// The value's own check ([`Validate`]).
    pub(crate) fn check(&mut self, key: &str, value: &impl Validate) {
        self.result(key, value.validate());
    }

    /// A number within `[min, max]`.
    pub(crate) fn range(&mut self, key: &str, value: f64, min: f64, max: f64) {
        self.result(key, in_range(value, min, max));
    }
}
