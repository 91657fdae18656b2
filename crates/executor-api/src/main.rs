//! `executor-api --config FILE`: runs the service alone.

fn main() -> std::process::ExitCode {
    common::service::main::<executor_api::ExecutorApi>()
}
