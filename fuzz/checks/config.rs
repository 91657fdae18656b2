//! The config loader (common `Config::load_from`) on arbitrary TOML text: every input loads or
//! is a `ConfigError` naming at least one issue; a loaded config serializes and deserializes
//! to itself and still validates. The text goes through a file because the loader reads one.

use std::path::PathBuf;
use std::sync::OnceLock;

use common::config::Config;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir =
            if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        dir.join(format!("executor-fuzz-config-{}.toml", std::process::id()))
    })
}

pub(crate) fn check(data: &[u8]) {
    let path = scratch();
    if std::fs::write(path, data).is_err() {
        return;
    }
    match Config::load_from(path, false) {
        Ok(loaded) => {
            let value = serde_json::to_value(&loaded.config).expect("a loaded config serializes");
            let again: Config = serde_json::from_value(value.clone())
                .unwrap_or_else(|e| panic!("a loaded config does not deserialize again: {e}\n{value}"));
            assert_eq!(serde_json::to_value(&again).expect("serializes"), value);
            assert_eq!(again.validate(), Vec::new(), "a loaded config no longer validates");
        }
        Err(error) => {
            assert!(!error.issues.is_empty(), "an error without issues");
            assert!(!error.to_string().is_empty());
        }
    }
}
