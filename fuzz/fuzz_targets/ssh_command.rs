//! libFuzzer target `ssh_command`: the property is `fuzz/checks/ssh_command.rs`, which `make test` also
//! replays over the corpus as an ordinary test (`tests/tests/fuzz_corpora.rs`).
#![no_main]

#[path = "../checks/ssh_command.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
