//! Loading: defaults, then the TOML file, then `EXECUTOR_SECTION__KEY` environment variables
//! (figment); paths made absolute; figment's errors and the validation issues turned into
//! [`ConfigError`]s naming the key and where its value came from. Also the state directories
//! a loaded configuration prepares.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};

use super::error::{ConfigError, ConfigIssue};
use super::values::{Hotkey, InvalidValue};
use super::{Config, ENV_PREFIX, NOT_YET_ENFORCED};

/// A loaded, validated configuration and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    /// Absolute path of the file it was read from.
    pub path: PathBuf,
    figment: Figment,
}

impl LoadedConfig {
    /// Where the value of `key` came from: the file, an environment variable, or the default.
    pub fn origin(&self, key: &str) -> String {
        describe_origin(self.figment.find_metadata(key), key, &self.path)
    }

    /// Keys set in the file or environment that this build does not act on yet.
    pub fn not_yet_enforced(&self) -> Vec<ConfigIssue> {
        NOT_YET_ENFORCED
            .iter()
            .filter(|(key, _)| {
                self.figment.find_metadata(key).is_some_and(|m| {
                    matches!(m.source, Some(figment::Source::File(_))) || m.name.contains("environment")
                })
            })
            .map(|(key, part)| ConfigIssue {
                key: (*key).to_owned(),
                origin: self.origin(key),
                message: format!("set, but not enforced by this build yet (needs {part}); it has no effect"),
            })
            .collect()
    }

    /// Creates `data_dir` (mode 0700) and `runtime_dir` (mode 0750) if needed and checks that
    /// both are writable directories; a failure names the key and where its value came from.
    pub fn prepare_dirs(&self) -> Result<(), ConfigError> {
        let issues: Vec<ConfigIssue> =
            [("data_dir", &self.config.data_dir, 0o700), ("runtime_dir", &self.config.runtime_dir, 0o750)]
                .into_iter()
                .filter_map(|(key, dir, mode)| {
                    check_writable_dir(dir, mode).err().map(|e| ConfigIssue {
                        key: key.to_owned(),
                        origin: self.origin(key),
                        message: e.to_string(),
                    })
                })
                .collect();
        if issues.is_empty() { Ok(()) } else { Err(ConfigError { issues }) }
    }

    /// `--server` mode needs a managing miner hotkey; there is no default.
    pub fn require_miner_hotkey(&self) -> Result<&Hotkey, ConfigError> {
        self.config.managing_miner_hotkey.as_ref().ok_or_else(|| ConfigError {
            issues: vec![ConfigIssue {
                key: "managing_miner_hotkey".to_owned(),
                origin: self.path.display().to_string(),
                message: "missing: set the SS58 address of the miner hotkey that manages this executor".to_owned(),
            }],
        })
    }
}

impl Config {
    /// Reads `path`, applies `EXECUTOR_*` overrides from the process environment, validates.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        Self::load_from(path, true)
    }

    /// As [`Config::load`]; `with_env = false` ignores the environment (unit tests).
    pub fn load_from(path: &Path, with_env: bool) -> Result<LoadedConfig, ConfigError> {
        let file_issue = |message: String| ConfigError {
            issues: vec![ConfigIssue { key: String::new(), origin: path.display().to_string(), message }],
        };
        let path = std::path::absolute(path).map_err(|e| file_issue(format!("bad path: {e}")))?;
        // figment skips a missing file silently; a missing config must be an error.
        if let Err(e) = std::fs::File::open(&path) {
            return Err(file_issue(format!("cannot read config file: {e}")));
        }
        let figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::file(&path));
        let figment = if with_env { figment.merge(Env::prefixed(ENV_PREFIX).split("__")) } else { figment };
        let mut config: Config = figment.extract().map_err(|e| from_figment(e, &path))?;
        let cwd = std::env::current_dir().map_err(|e| file_issue(format!("no working directory: {e}")))?;
        config.absolutize(&cwd);
        let mut normalising = super::error::Issues::default();
        config.docker.registry.normalise_hosts(&mut normalising);
        let loaded = LoadedConfig { config, path, figment };
        let mut issues = normalising.0;
        issues.extend(loaded.config.validate());
        if issues.is_empty() {
            Ok(loaded)
        } else {
            Err(ConfigError {
                issues: issues
                    .into_iter()
                    .map(|(key, message)| ConfigIssue { origin: loaded.origin(&key), key, message })
                    .collect(),
            })
        }
    }

    fn absolutize(&mut self, cwd: &Path) {
        for path in [&mut self.data_dir, &mut self.runtime_dir] {
            if path.is_relative() {
                *path = cwd.join(&*path);
            }
        }
        let registry = &mut self.docker.registry;
        let per_registry = registry
            .registries
            .values_mut()
            .flat_map(|r| r.cosign_public_keys.iter_mut().flatten().chain(r.password_file.iter_mut()));
        for file in registry.cosign_public_keys.iter_mut().chain(per_registry) {
            if file.is_relative() {
                *file = cwd.join(&*file);
            }
        }
        for file in [
            &mut self.logging.file,
            &mut self.system.simulated_gpus_file,
            &mut self.server.tls_cert_path,
            &mut self.server.tls_key_path,
            &mut self.docker.registry.docker_config_file,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = cwd.join(&*file);
            }
        }
    }
}

/// Creates `dir` with `mode` if missing; then checks that it is owned by the user this process
/// runs as (root in production) and writable by nobody else, since whoever can write a state
/// directory can replace the grants, the identity key or the sockets; then proves it writable
/// by creating a file in it.
pub fn check_writable_dir(dir: &Path, mode: u32) -> Result<(), InvalidValue> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| InvalidValue::new(format!("cannot create {}: {e}", dir.display())))?;
    let meta = std::fs::metadata(dir).map_err(|e| InvalidValue::new(format!("{}: {e}", dir.display())))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(InvalidValue::new(format!(
            "{} is owned by uid {}, not by the user the executor runs as (uid {me}): chown it",
            dir.display(),
            meta.uid()
        )));
    }
    let loose = meta.mode() & 0o022;
    if loose != 0 {
        return Err(InvalidValue::new(format!(
            "{} is writable by {} (mode {:o}): chmod go-w {}",
            dir.display(),
            if loose == 0o022 {
                "group and others"
            } else if loose == 0o020 {
                "its group"
            } else {
                "others"
            },
            meta.mode() & 0o7777,
            dir.display()
        )));
    }
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| InvalidValue::new(format!("{} is not writable: {e}", dir.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Where a value came from, as an operator names it: the file, or the environment variable
/// that sets `key`; values from defaults are blamed on the file.
fn describe_origin(meta: Option<&figment::Metadata>, key: &str, file: &Path) -> String {
    match meta.and_then(|m| m.source.as_ref()) {
        Some(figment::Source::File(path)) => path.display().to_string(),
        _ if meta.is_some_and(|m| m.name.contains("environment")) => {
            format!("environment variable {ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
        }
        _ => file.display().to_string(),
    }
}

/// Turns figment's errors (unknown key, wrong type, bad value) into issues naming key and origin.
fn from_figment(error: figment::Error, file: &Path) -> ConfigError {
    let issues = error
        .into_iter()
        .map(|e| {
            let mut key = e.path.join(".");
            let message = match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => {
                    if e.path.last() != Some(field) {
                        key = if key.is_empty() { field.clone() } else { format!("{key}.{field}") };
                    }
                    format!("unknown key (expected one of: {})", expected.join(", "))
                }
                kind => kind.to_string(),
            };
            let origin = describe_origin(e.metadata.as_ref(), &key, file);
            ConfigIssue { key, origin, message }
        })
        .collect();
    ConfigError { issues }
}
