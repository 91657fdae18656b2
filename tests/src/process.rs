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
