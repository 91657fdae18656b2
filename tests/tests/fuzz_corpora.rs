//! The fuzz targets' properties replayed over their committed corpora as ordinary tests, so
//! `make test` keeps every input that ever found a bug (and every seed) without building
//! libFuzzer; long fuzzing runs live in `make fuzz` (docs/reliability.md).

#[path = "../../fuzz/checks/mod.rs"]
mod checks;

use std::path::PathBuf;

/// Feeds every file of `fuzz/corpus/<target>` to `check`; a panic names the input.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut inputs: Vec<PathBuf> = entries.map(|e| e.expect("corpus entry").path()).collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{}: no corpus", dir.display());
    for input in &inputs {
        let data = std::fs::read(input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{target}: the property fails on {}", input.display());
        }
    }
    println!("{target}: {} inputs replayed", inputs.len());
}

macro_rules! corpora {
    ($($target:ident),* $(,)?) => {
        $(#[test]
        fn $target() {
            replay(stringify!($target), checks::$target::check);
        })*
    };
}

corpora!(attestor_message, config, cosign_payload, image_reference, report_verify, signed_metadata, ssh_command);
