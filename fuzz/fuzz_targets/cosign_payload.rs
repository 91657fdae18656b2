//! libFuzzer target `cosign_payload`: the property is `fuzz/checks/cosign_payload.rs`, which `make test` also
//! replays over the corpus as an ordinary test (`tests/tests/fuzz_corpora.rs`).
#![no_main]

#[path = "../checks/cosign_payload.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
