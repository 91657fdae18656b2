//! Report verification (gpu-attestor `Report::verify`): any JSON either is not a report or
//! verifies to `Ok`/`Err`, never a panic. Reports are also re-signed with a test key so the
//! fuzzer reaches the proof checks behind the signature; the untouched seed report verifies.

use std::sync::OnceLock;

use common::identity::ExecutorIdentity;
use gpu_attestor::report::Report;

/// Dimensions above this are skipped after re-signing: verification is O(n²) per sampled
/// product by design, and the fuzzer should spend its time on shapes, not arithmetic.
const MAX_FUZZ_DIM: u32 = 128;

fn identity() -> &'static ExecutorIdentity {
    static IDENTITY: OnceLock<ExecutorIdentity> = OnceLock::new();
    IDENTITY.get_or_init(|| ExecutorIdentity::from_seed([7; 32]))
}

pub(crate) fn check(data: &[u8]) {
    let Ok(mut report) = serde_json::from_slice::<Report>(data) else { return };
    let as_given = report.verify();

    let line = serde_json::to_vec(&report).expect("a report serializes");
    let again: Report = serde_json::from_slice(&line).expect("a serialized report parses");
    assert_eq!(again, report);
    assert_eq!(again.verify(), as_given);

    let p = &report.params;
    if [p.m, p.n, p.k].iter().any(|&d| d > MAX_FUZZ_DIM) {
        return;
    }
    let signed_by_us = report.executor_public_key == identity().public_key();
    if report.params.executor_key != [0; 32] {
        report.params.executor_key = identity().public_key();
    }
    report.sign(identity());
    let resigned = report.verify();
    if signed_by_us && as_given.is_ok() {
        assert_eq!(resigned, Ok(()), "a valid report stops verifying once re-signed");
    }
    // A signature over other bytes never verifies.
    report.binary_version.push('!');
    assert!(report.verify().is_err(), "a tampered report verifies");
}
