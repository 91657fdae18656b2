//! `container-runtime --config FILE`: runs the service alone, or `check` for `executor validate`.

fn main() -> std::process::ExitCode {
    common::service::main::<container_runtime::ContainerRuntime>()
}
