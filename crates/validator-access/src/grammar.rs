//! The command grammar: which command lines a validator may run and the argv each becomes.
//! It decides only *what* runs; how it runs (user, limits, output) is the `command` module.
//!
//! Strict mode (`strict_ssh_restrictions`) allows this executor's `gpu-attestor` and a few
//! read-only facts (`nvidia-smi` queries, `uname`, `nproc`, `cat /proc/cpuinfo|meminfo`). The
//! line is split on whitespace and never given to a shell. Without strict mode anything else
//! goes to `sh -c` as the command user, and an empty line is a shell.

use std::path::{Path, PathBuf};

/// A command a validator may run, as it will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub argv: Vec<String>,
    /// `gpu-attestor challenge`: it signs with the executor's key, which the command user must
    /// never read, so it runs as root with every capability dropped, the key path given by us
    /// and no path from the validator.
    pub signs: bool,
}

impl Planned {
    fn plain(argv: Vec<String>) -> Self {
        Self { argv, signs: false }
    }
}

/// Why a command line may not run; the text is shown to the validator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandRefused {
    #[error("`{line}` is not allowed here (strict_ssh_restrictions): only gpu-attestor and read-only facts")]
    NotAllowed { line: String },
    #[error("gpu-attestor challenge: --identity is chosen by the executor")]
    IdentityChosen,
    #[error("no shell here (strict_ssh_restrictions); run gpu-attestor")]
    NoShell,
}

/// What strict mode lets a validator run, or why not. `attestor` is this executor's own
/// `gpu-attestor`, `identity` the key `gpu-attestor challenge` signs with.
pub fn allowed_command(line: &str, attestor: &Path, identity: &Path) -> Result<Planned, CommandRefused> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let refuse = || Err(CommandRefused::NotAllowed { line: line.to_owned() });
    let Some((first, rest)) = words.split_first() else { return refuse() };
    let args: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
    let name = first.rsplit('/').next().unwrap_or(first);
    if name == "gpu-attestor" {
        let argv = std::iter::once(attestor.display().to_string()).chain(args.iter().cloned());
        if rest.first() != Some(&"challenge") {
            return Ok(Planned::plain(argv.collect()));
        }
        if rest.iter().any(|a| a.starts_with("--identity")) {
            return Err(CommandRefused::IdentityChosen);
        }
        let key = ["--identity".to_owned(), identity.display().to_string()];
        return Ok(Planned { argv: argv.chain(key).collect(), signs: true });
    }
    let allowed = match name {
        "nvidia-smi" => rest.iter().all(|a| {
            matches!(*a, "-L" | "-q" | "--list-gpus" | "--query")
                || a.starts_with("--query-")
                || a.starts_with("--format=")
        }),
        "uname" => rest.iter().all(|a| matches!(*a, "-a" | "-r" | "-m" | "-s")),
        "nproc" => rest.is_empty(),
        "cat" => matches!(rest, ["/proc/cpuinfo"] | ["/proc/meminfo"]),
        _ => false,
    };
    if allowed { Ok(Planned::plain(std::iter::once(name.to_owned()).chain(args).collect())) } else { refuse() }
}

/// The grammar of one executor: its strictness and its paths.
#[derive(Debug, Clone)]
pub struct CommandGrammar {
    strict: bool,
    attestor: PathBuf,
    identity_key: PathBuf,
}

impl CommandGrammar {
    /// `attestor`: this executor's gpu-attestor binary; `identity_key`: the executor's identity
    /// key, for `gpu-attestor challenge`.
    pub fn new(strict: bool, attestor: PathBuf, identity_key: PathBuf) -> Self {
        Self { strict, attestor, identity_key }
    }

    /// The command a validator's line becomes: the allow-list first in both modes (so
    /// `gpu-attestor challenge` signs either way); without strict restrictions anything else
    /// goes to `sh -c` (an empty line: a shell).
    pub fn plan(&self, line: &str) -> Result<Planned, CommandRefused> {
        if line.trim().is_empty() {
            if self.strict {
                return Err(CommandRefused::NoShell);
            }
            return Ok(Planned::plain(vec!["sh".to_owned()]));
        }
        match allowed_command(line, &self.attestor, &self.identity_key) {
            Err(_) if !self.strict => Ok(Planned::plain(vec!["sh".to_owned(), "-c".to_owned(), line.to_owned()])),
            planned => planned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATTESTOR: &str = "/opt/basilica/bin/gpu-attestor";
    const KEY: &str = "/opt/basilica/data/executor_identity.key";

    #[test]
    fn strict_mode_allows_the_attestor_and_read_only_facts() {
        let allowed = |line: &str| allowed_command(line, Path::new(ATTESTOR), Path::new(KEY));
        let run = allowed("gpu-attestor --backend cpu --seed 1").unwrap();
        assert_eq!(run.argv, ["/opt/basilica/bin/gpu-attestor", "--backend", "cpu", "--seed", "1"]);
        assert!(!run.signs);
        assert_eq!(allowed("/usr/bin/gpu-attestor info").unwrap().argv[0], "/opt/basilica/bin/gpu-attestor");
        let challenge = allowed("gpu-attestor challenge --backend cpu").unwrap();
        assert!(challenge.signs);
        assert_eq!(challenge.argv[4..], ["--identity", "/opt/basilica/data/executor_identity.key"]);
        assert!(allowed("gpu-attestor challenge --identity /tmp/mine").is_err());
        assert!(allowed("nvidia-smi --query-gpu=name --format=csv").is_ok());
        assert!(allowed("nproc").is_ok());
        assert!(allowed("cat /proc/cpuinfo").is_ok());
        for refused in ["sh", "bash -c id", "cat /etc/shadow", "nvidia-smi -r", "nproc; id", "", "uname -a && id"] {
            assert!(allowed(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn without_strict_mode_other_lines_go_to_a_shell() {
        let grammar = |strict| CommandGrammar::new(strict, ATTESTOR.into(), KEY.into());
        let check = |strict: bool, line: &str, expected: Result<&[&str], CommandRefused>| {
            let got = grammar(strict).plan(line).map(|p| p.argv);
            let expected = expected.map(|argv| argv.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>());
            assert_eq!(got, expected, "strict={strict} {line:?}");
        };
        check(true, "  ", Err(CommandRefused::NoShell));
        check(false, "  ", Ok(&["sh"]));
        check(false, "id; ls", Ok(&["sh", "-c", "id; ls"]));
        check(true, "id; ls", Err(CommandRefused::NotAllowed { line: "id; ls".into() }));
        check(false, "nproc", Ok(&["nproc"]));
        // The attestor signs with our key in both modes.
        assert!(grammar(false).plan("gpu-attestor challenge").unwrap().signs);
        check(false, "gpu-attestor challenge --identity /x", Ok(&["sh", "-c", "gpu-attestor challenge --identity /x"]));
    }
}
