//! The command grammar: which command lines a validator may run and the argv each becomes.
//! It decides only *what* runs; how it runs (user, limits, output) is the `command` module.
//!
//! Strict mode (`strict_ssh_restrictions`) allows exactly `gpu-attestor challenge [--backend B]
//! [--timeout D]`, `gpu-attestor info [--json]` and a few read-only facts (`nvidia-smi` queries,
//! `uname`, `nproc`, `cat /proc/cpuinfo|meminfo`). A line is split on whitespace and parsed:
//! every word must be a known flag with a value of its shape (never a prefix match), and
//! nothing is given to a shell. The attestor's other modes stay out: `check` hands `--ssh` to a
//! shell, guide mode writes `--report` files, `--threads` sizes a root process. Without strict
//! mode anything else goes to `sh -c` as the command user, and an empty line is a shell.

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
    let refused = || CommandRefused::NotAllowed { line: line.to_owned() };
    let Some((first, rest)) = words.split_first() else { return Err(refused()) };
    let name = first.rsplit('/').next().unwrap_or(first);
    if name == "gpu-attestor" {
        let (signs, args) = attestor_args(rest)?.ok_or_else(refused)?;
        let mut argv = vec![attestor.display().to_string()];
        argv.extend(args);
        if signs {
            argv.extend(["--identity".to_owned(), identity.display().to_string()]);
        }
        return Ok(Planned { argv, signs });
    }
    let allowed = match name {
        "nvidia-smi" => !rest.is_empty() && rest.iter().all(|a| nvidia_smi_flag(a)),
        "uname" => rest.iter().all(|a| matches!(*a, "-a" | "-r" | "-m" | "-s")),
        "nproc" => rest.is_empty(),
        "cat" => matches!(rest, ["/proc/cpuinfo"] | ["/proc/meminfo"]),
        _ => false,
    };
    if !allowed {
        return Err(refused());
    }
    Ok(Planned::plain(std::iter::once(name).chain(rest.iter().copied()).map(str::to_owned).collect()))
}

/// The attestor's words after its name: `Some((signs, argv))` for `challenge [--backend B]
/// [--timeout D]` (each flag once, `--flag value` or `--flag=value`) and `info [--json]`;
/// `None` for anything else.
fn attestor_args(rest: &[&str]) -> Result<Option<(bool, Vec<String>)>, CommandRefused> {
    let Some((subcommand, flags)) = rest.split_first() else { return Ok(None) };
    match *subcommand {
        "info" => Ok(matches!(flags, [] | ["--json"]).then(|| (false, rest.iter().map(|a| (*a).to_owned()).collect()))),
        "challenge" => {
            let mut argv = vec!["challenge".to_owned()];
            let mut seen: Vec<&str> = Vec::new();
            let mut words = flags.iter();
            while let Some(word) = words.next() {
                let (flag, inline) = match word.split_once('=') {
                    Some((flag, value)) => (flag, Some(value)),
                    None => (*word, None),
                };
                if flag.starts_with("--identity") {
                    return Err(CommandRefused::IdentityChosen);
                }
                let shape: fn(&str) -> bool = match flag {
                    "--backend" => |v| matches!(v, "auto" | "cuda" | "cpu"),
                    "--timeout" => is_duration,
                    _ => return Ok(None),
                };
                let Some(value) = inline.or_else(|| words.next().copied()) else { return Ok(None) };
                if seen.contains(&flag) || !shape(value) {
                    return Ok(None);
                }
                seen.push(flag);
                argv.extend([flag.to_owned(), value.to_owned()]);
            }
            Ok(Some((true, argv)))
        }
        _ => Ok(None),
    }
}

/// A duration as the attestor reads it, in a shape a validator needs: `90s`, `2m`, `500ms`,
/// `1m30s` (digits and units, at most 16 characters).
fn is_duration(value: &str) -> bool {
    let mut rest = value;
    if value.is_empty() || value.len() > 16 {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let after = &rest[digits..];
        let unit = ["ms", "s", "m", "h"].into_iter().find(|u| after.starts_with(u));
        match unit {
            Some(unit) if digits > 0 => rest = &after[unit.len()..],
            _ => return false,
        }
    }
    true
}

/// The `nvidia-smi` flags of read-only queries: `-L`, `-q`, `--list-gpus`, `--query`,
/// `--query-gpu=FIELDS`, `--query-compute-apps=FIELDS` (fields are lower-case names with `.`
/// and `_`, comma-separated) and `--format=csv[,noheader][,nounits]`.
fn nvidia_smi_flag(word: &str) -> bool {
    let fields = |list: &str| {
        list.len() <= 512
            && list.split(',').all(|f| {
                !f.is_empty()
                    && f.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
            })
    };
    match word.split_once('=') {
        None => matches!(word, "-L" | "-q" | "--list-gpus" | "--query"),
        Some(("--query-gpu" | "--query-compute-apps", list)) => fields(list),
        Some(("--format", format)) => {
            let mut parts = format.split(',');
            parts.next() == Some("csv") && parts.all(|p| matches!(p, "noheader" | "nounits"))
        }
        Some(_) => false,
    }
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
        let argv = |line: &str| allowed(line).map(|p| p.argv.join(" "));
        let info = allowed("/usr/bin/gpu-attestor info").unwrap();
        assert_eq!(info.argv, [ATTESTOR, "info"]);
        assert!(!info.signs);
        assert_eq!(argv("gpu-attestor info --json").unwrap(), format!("{ATTESTOR} info --json"));
        let challenge = allowed("gpu-attestor challenge --backend cpu").unwrap();
        assert!(challenge.signs);
        assert_eq!(challenge.argv, [ATTESTOR, "challenge", "--backend", "cpu", "--identity", KEY]);
        assert_eq!(
            argv("gpu-attestor challenge --timeout=1m30s --backend=cuda").unwrap(),
            format!("{ATTESTOR} challenge --timeout 1m30s --backend cuda --identity {KEY}")
        );
        assert_eq!(allowed("gpu-attestor challenge --identity /tmp/mine"), Err(CommandRefused::IdentityChosen));
        assert_eq!(allowed("gpu-attestor challenge --identity=/tmp/mine"), Err(CommandRefused::IdentityChosen));
        assert!(allowed("nvidia-smi --query-gpu=name,memory.total --format=csv,noheader").is_ok());
        assert!(allowed("nvidia-smi -L").is_ok());
        assert!(allowed("nproc").is_ok());
        assert!(allowed("cat /proc/cpuinfo").is_ok());
    }

    #[test]
    fn strict_mode_refuses_every_other_word() {
        let allowed = |line: &str| allowed_command(line, Path::new(ATTESTOR), Path::new(KEY));
        for refused in [
            "sh",
            "bash -c id",
            "cat /etc/shadow",
            "nvidia-smi -r",
            "nvidia-smi",
            "nvidia-smi --query-gpu=name;id",
            "nvidia-smi --query-gpu=$(id)",
            "nvidia-smi --format=csv;id",
            "nvidia-smi --query-gpuX=name",
            "nproc; id",
            "",
            "uname -a && id",
            // The attestor's modes that are not the prover's.
            "gpu-attestor",
            "gpu-attestor --seed 1 --matrix-dim 16",
            "gpu-attestor --seed 1 --report /tmp/x",
            "gpu-attestor check --ssh=touch${IFS}/tmp/x;",
            "gpu-attestor check --ssh touch${IFS}/tmp/x|",
            "gpu-attestor verify /etc/shadow",
            "gpu-attestor info --report /tmp/x",
            "gpu-attestor info --json --json",
            // Challenge flags outside the grammar, repeated, or with values of another shape.
            "gpu-attestor challenge --threads 1000000",
            "gpu-attestor challenge --backend sh",
            "gpu-attestor challenge --backend",
            "gpu-attestor challenge --backend cpu --backend cuda",
            "gpu-attestor challenge --timeout 1d",
            "gpu-attestor challenge --timeout 60s;id",
            "gpu-attestor challenge --timeout 99999999999999999s",
            "gpu-attestor challenge extra",
            "gpu-attestor challenge --json",
        ] {
            assert!(matches!(allowed(refused), Err(CommandRefused::NotAllowed { .. })), "{refused}");
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
