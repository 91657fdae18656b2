//! `validator-access --config FILE`: runs the service alone. `validator-access gate GRANT
//! SOCKET` is the forced command of validator keys in system-sshd mode (see `front::gate::client`).

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("gate") {
        return validator_access::front::gate::client::gate_main(&args[1..]);
    }
    common::service::main::<validator_access::ValidatorAccess>()
}
