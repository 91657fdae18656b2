//! Checks over this crate's own source, so that its structure holds without a reviewer: public
//! statuses are built only in [`crate::errors`], and modules import only modules below them.

use std::path::{Path, PathBuf};

/// Each module's rank: a module may use only modules of a lower rank (no circles).
const RANKS: &[(&str, u8)] = &[
    ("auth", 0),
    ("connections", 0),
    ("probes", 0),
    ("errors", 1),
    ("attest", 2),
    ("client", 2),
    ("exec", 2),
    ("layer", 2),
    ("api", 3),
    ("lib", 4),
    ("main", 4),
];

/// Every `.rs` file under `dir`, with its module (`auth/batch.rs` is `auth`).
fn sources(dir: &Path, module: Option<&str>, out: &mut Vec<(String, PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let owner = module.map_or(stem.clone(), str::to_owned);
        if path.is_dir() {
            sources(&path, Some(&owner), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((owner, path));
        }
    }
}

/// The code lines of each file: comments and doc comments left out.
fn code() -> Vec<(String, PathBuf, Vec<String>)> {
    let mut files = Vec::new();
    sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), None, &mut files);
    assert!(files.len() > 10, "{files:?}");
    files
        .into_iter()
        .map(|(module, path)| {
            let text = std::fs::read_to_string(&path).unwrap();
            let lines = text.lines().filter(|l| !l.trim_start().starts_with("//")).map(str::to_owned).collect();
            (module, path, lines)
        })
        .collect()
}

fn rank(module: &str) -> u8 {
    RANKS.iter().find(|(m, _)| *m == module).unwrap_or_else(|| panic!("module `{module}` has no rank in RANKS")).1
}

#[test]
fn modules_use_only_lower_modules() {
    for (module, path, lines) in code() {
        if module == "invariants" {
            continue; // its strings name the patterns
        }
        for line in lines {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let used: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                assert!(!used.is_empty(), "{}: name the module in `{line}`", path.display());
                assert!(
                    used == module || rank(&used) < rank(&module),
                    "{}: `{module}` uses `{used}`, which is not below it: `{line}`",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn public_statuses_are_built_only_in_errors() {
    // Reading a status (from headers) is fine; building one is the errors module's.
    const READS: &[&str] = &["from_header_map"];
    for (module, path, lines) in code() {
        if module == "errors" || module == "invariants" {
            continue;
        }
        for line in lines {
            for (at, _) in line.match_indices("Status::") {
                let before = line[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue; // ServingStatus::, CheckStatus::
                }
                let call: String = line[at + 8..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                assert!(
                    READS.contains(&call.as_str()),
                    "{}: a status built outside errors.rs: `{line}`",
                    path.display()
                );
            }
        }
    }
}
