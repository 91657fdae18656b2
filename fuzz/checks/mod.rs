//! The fuzz targets' properties, one module each: `fuzz/fuzz_targets/` runs them under libFuzzer
//! (`make fuzz`) and `tests/tests/fuzz_corpora.rs` replays the corpora through them in `make test`.

pub(crate) mod attestor_message;
pub(crate) mod config;
pub(crate) mod cosign_payload;
pub(crate) mod image_reference;
pub(crate) mod report_verify;
pub(crate) mod signed_metadata;
pub(crate) mod ssh_command;
