//! Report verification (gpu-attestor `Report::verify`, schema 2): any JSON either is not a report
//! or verifies to `Ok`/`Err`, never a panic. Small reports are also re-signed with a test key so
//! the fuzzer reaches the checks behind the executor's signature; the seed reports verify.

use std::sync::OnceLock;

use common::identity::ExecutorIdentity;
use gpu_attestor::gpow2::Isa;
use gpu_attestor::report::Report;

/// Work above these is not re-signed: the fuzzer should spend its time on shapes, not arithmetic.
const MAX_FUZZ_DIM: u32 = 128;
const MAX_FUZZ_COUNT: u32 = 64;
const MAX_FUZZ_ITEMS: u64 = 4096;

fn identity() -> &'static ExecutorIdentity {
    static IDENTITY: OnceLock<ExecutorIdentity> = OnceLock::new();
    IDENTITY.get_or_init(|| ExecutorIdentity::from_seed([7; 32]))
}

pub(crate) fn check(data: &[u8]) {
    let Ok(mut report) = serde_json::from_slice::<Report>(data) else { return };
    let small = report.challenge.gpus.len() <= 4
        && report.challenge.gpus.iter().all(|w| {
            [w.m, w.n, w.k].iter().all(|&d| d <= MAX_FUZZ_DIM) && w.count <= MAX_FUZZ_COUNT && w.items <= MAX_FUZZ_ITEMS
        });
    if !small {
        // Parsing and the signature check alone: both are cheap whatever the sizes claim.
        let _ = report.check_signature();
        return;
    }
    let as_given = report.verify(Isa::best(), 1);

    let line = serde_json::to_vec(&report).expect("a report serializes");
    let again: Report = serde_json::from_slice(&line).expect("a serialized report parses");
    assert_eq!(again, report);
    assert_eq!(again.verify(Isa::best(), 1), as_given);

    let signed_by_us = report.executor_public_key == identity().public_key();
    report.challenge.executor_key = identity().public_key();
    report.sign(identity());
    let resigned = report.check_signature();
    if signed_by_us && as_given.is_ok() {
        assert_eq!(resigned, Ok(()), "a valid report stops verifying once re-signed");
    }
    let _ = report.verify(Isa::best(), 1);
    // A signature over other bytes never verifies.
    report.binary_version.push('!');
    assert!(report.check_signature().is_err(), "a tampered report verifies");
}
