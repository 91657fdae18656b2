//! The strict-mode command allow-list (validator-access `grammar::allowed_command`): any line is
//! either refused with a message or becomes an argv that is one of the allowed programs with
//! allowed arguments; the attestor only as `challenge [--backend B] [--timeout D]` (which signs,
//! with our key path only) or `info [--json]`.

use std::path::Path;

use validator_access::grammar::allowed_command;

const ATTESTOR: &str = "/opt/basilica/bin/gpu-attestor";
const IDENTITY: &str = "/opt/basilica/data/executor_identity.key";

pub(crate) fn check(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else { return };
    let planned = match allowed_command(line, Path::new(ATTESTOR), Path::new(IDENTITY)) {
        Ok(planned) => planned,
        Err(refused) => {
            assert!(!refused.to_string().is_empty());
            return;
        }
    };
    let argv = &planned.argv;
    assert!(!argv.is_empty(), "{line:?}");
    assert!(argv.iter().all(|a| !a.is_empty() && !a.contains(char::is_whitespace)), "{line:?}: {argv:?}");
    let args = &argv[1..];
    match argv[0].as_str() {
        ATTESTOR => match args.first().map(String::as_str) {
            // Only the prover's flags, each once, and exactly one identity, ours, appended last.
            Some("challenge") => {
                assert!(planned.signs, "{line:?}");
                assert_eq!(&args[args.len() - 2..], ["--identity", IDENTITY], "{line:?}");
                let flags = &args[1..args.len() - 2];
                assert!(flags.len() % 2 == 0 && flags.len() <= 4, "{line:?}: {argv:?}");
                for pair in flags.chunks(2) {
                    assert!(matches!(pair[0].as_str(), "--backend" | "--timeout"), "{line:?}: {argv:?}");
                }
            }
            Some("info") => {
                assert!(!planned.signs, "{line:?}");
                assert!(matches!(&args[1..], [] | [_]) && args[1..].iter().all(|a| a == "--json"), "{line:?}");
            }
            _ => panic!("{line:?} runs the attestor as {argv:?}, which strict mode does not allow"),
        },
        "nvidia-smi" => assert!(!args.iter().any(|a| matches!(a.as_str(), "-r" | "--gpu-reset" | "-pm"))),
        "uname" => assert!(args.iter().all(|a| matches!(a.as_str(), "-a" | "-r" | "-m" | "-s"))),
        "nproc" => assert!(args.is_empty(), "{line:?}"),
        "cat" => assert!(matches!(args, [f] if f == "/proc/cpuinfo" || f == "/proc/meminfo"), "{line:?}"),
        other => panic!("{line:?} runs `{other}`, which is not on the allow-list"),
    }
    assert!(argv[0] == ATTESTOR || !planned.signs, "{line:?}");
}
