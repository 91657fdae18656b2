//! libFuzzer target `signed_metadata`: the property is `fuzz/checks/signed_metadata.rs`, which `make test` also
//! replays over the corpus as an ordinary test (`tests/tests/fuzz_corpora.rs`).
#![no_main]

#[path = "../checks/signed_metadata.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
