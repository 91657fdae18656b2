//! Running programs in tests: capture with a deadline, the output as text, and whether a tool
//! is installed. Everything goes through `common::process::ProcessSpec`, as in the node.

use std::path::Path;
use std::time::Duration;

use common::process::{CapturedOutput, ProcessSpec};

/// Output kept per run: more than any test reads.
const OUTPUT_CAP: usize = 16 << 20;

/// Runs `spec` to completion within `timeout`; panics (naming the program) if it cannot start
/// or runs over.
pub async fn capture(spec: ProcessSpec, timeout: Duration) -> CapturedOutput {
    let program = spec.program().display().to_string();
    spec.output(timeout, OUTPUT_CAP).await.unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// `cargo` (the one that runs us, where one does) as a person runs it from a shell: without the
/// variables cargo gives the program it runs or tests (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...).
/// ring's build script reruns when those change, and everything above ring with it, so a nested
/// build carrying a test's or xtask's own variables would compile the tree again, and the next
/// ordinary build again (`make test` spent minutes on that between its steps).
pub fn cargo() -> ProcessSpec {
    let unset: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| set_by_cargo_for_its_program(name))
        .flat_map(|name| ["-u".to_owned(), name])
        .collect();
    ProcessSpec::new("env").args(unset).arg(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Whether cargo sets the variable `name` for a program it runs (`cargo run`, `cargo test`): the
/// package's own description, not the caller's environment.
fn set_by_cargo_for_its_program(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_TARGET_TMPDIR"
        )
}

/// Runs `program args...` for at most two minutes: (success, stdout and stderr as text).
pub async fn sh(program: &str, args: &[&str]) -> (bool, String) {
    let out = capture(ProcessSpec::new(program).args(args.iter().copied()), Duration::from_secs(120)).await;
    (out.status.success(), text(&out))
}

/// Standard output then standard error, as text.
pub fn text(out: &CapturedOutput) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

/// Standard output as text.
pub fn stdout(out: &CapturedOutput) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(out: &CapturedOutput) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether `program` is on the PATH (or is an existing path).
pub fn which(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Whether the tests run as root (Docker's firewall, `tc`, sshd and user changes need it).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_package_variables_cargo_sets_are_dropped_and_the_callers_kept() {
        for name in ["CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_PKG_NAME", "CARGO_PKG_VERSION_MAJOR"] {
            assert!(super::set_by_cargo_for_its_program(name), "{name}");
        }
        for name in ["CARGO", "CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_INCREMENTAL", "PATH", "RUSTFLAGS"] {
            assert!(!super::set_by_cargo_for_its_program(name), "{name}");
        }
    }
}
