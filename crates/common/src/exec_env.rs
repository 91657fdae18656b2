//! The environment a command inside a container may be given (ExecContainer on the public API,
//! Attach on container-runtime): `KEY=VALUE` entries, keys as shells take them, bounded in
//! number and length. One grammar for both, so a request executor-api lets through is one
//! container-runtime takes; each caller words the refusal for its own fields.

/// The most entries, and the longest one in bytes.
pub const MAX_ENTRIES: usize = 64;
pub const MAX_ENTRY_BYTES: usize = 32 << 10;

/// What is wrong with an environment: the first problem found, entry by entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvProblem {
    /// More than [`MAX_ENTRIES`] entries (how many).
    TooMany(usize),
    /// Entry `index` has no `=`.
    NotKeyValue { index: usize },
    /// Entry `index`'s key is not `[A-Za-z_][A-Za-z0-9_]*`.
    BadKey { index: usize },
    /// Entry `index`'s key starts with the prefix the caller forbids.
    Forbidden { index: usize, key: String },
    /// Entry `index` contains NUL.
    Nul { index: usize, key: String },
    /// Entry `index` is longer than [`MAX_ENTRY_BYTES`].
    TooLong { index: usize, key: String },
}

/// A variable name as shells take it: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_variable_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks `env` entry by entry; a key starting with `forbidden` (when given) is refused.
/// Values are never part of the problem, only keys.
pub fn check(env: &[String], forbidden: Option<&str>) -> Result<(), EnvProblem> {
    if env.len() > MAX_ENTRIES {
        return Err(EnvProblem::TooMany(env.len()));
    }
    for (index, entry) in env.iter().enumerate() {
        let Some((key, _)) = entry.split_once('=') else { return Err(EnvProblem::NotKeyValue { index }) };
        if !is_variable_name(key) {
            return Err(EnvProblem::BadKey { index });
        }
        let key = key.to_owned();
        if forbidden.is_some_and(|prefix| key.starts_with(prefix)) {
            return Err(EnvProblem::Forbidden { index, key });
        }
        if entry.contains('\0') {
            return Err(EnvProblem::Nul { index, key });
        }
        if entry.len() > MAX_ENTRY_BYTES {
            return Err(EnvProblem::TooLong { index, key });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_checked_in_order_and_the_first_problem_named() {
        let check = |entries: &[&str], forbidden| {
            check(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>(), forbidden)
        };
        assert_eq!(check(&["A=1", "_b2=x=y", "EMPTY="], Some("NVIDIA_")), Ok(()));
        assert_eq!(check(&["A=1", "B"], None), Err(EnvProblem::NotKeyValue { index: 1 }));
        for bad in ["1A=x", "A-B=x", "=x", "A B=x"] {
            assert_eq!(check(&[bad], None), Err(EnvProblem::BadKey { index: 0 }), "{bad}");
        }
        let key = || "NVIDIA_X".to_owned();
        assert_eq!(check(&["NVIDIA_X=\0"], Some("NVIDIA_")), Err(EnvProblem::Forbidden { index: 0, key: key() }));
        assert_eq!(check(&["NVIDIA_X=\0"], None), Err(EnvProblem::Nul { index: 0, key: key() }));
        let long = format!("A={}", "x".repeat(MAX_ENTRY_BYTES));
        assert_eq!(check(&[&long], None), Err(EnvProblem::TooLong { index: 0, key: "A".into() }));
        let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("V{i}=x")).collect();
        assert_eq!(super::check(&many, None), Err(EnvProblem::TooMany(MAX_ENTRIES + 1)));
        assert_eq!(super::check(&many[..MAX_ENTRIES], None), Ok(()));
    }
}
