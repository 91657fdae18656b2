//! libFuzzer target `image_reference`: the property is `fuzz/checks/image_reference.rs`, which `make test` also
//! replays over the corpus as an ordinary test (`tests/tests/fuzz_corpora.rs`).
#![no_main]

#[path = "../checks/image_reference.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
