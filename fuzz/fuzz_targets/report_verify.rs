//! libFuzzer target `report_verify`: the property is `fuzz/checks/report_verify.rs`, which `make test` also
//! replays over the corpus as an ordinary test (`tests/tests/fuzz_corpora.rs`).
#![no_main]

#[path = "../checks/report_verify.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
