//! `validator-access --config FILE`: runs the service alone.

fn main() -> std::process::ExitCode {
    common::service::main::<validator_access::ValidatorAccess>()
}
