//! `executor`: `--server` runs the node; `validate` checks a machine; `status` reports on a
//! running node; `ctl` calls its public API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Where the production config lives when `--config` is not given.
const DEFAULT_CONFIG: &str = "/opt/basilica/config/executor.toml";

/// The executor node of the Basilica GPU compute network.
#[derive(Debug, Parser)]
#[command(name = "executor", version = common::VERSION)]
struct Cli {
    /// Run the node: start every service and supervise it until SIGTERM/SIGINT.
    #[arg(long)]
    server: bool,
    /// The executor config file (TOML).
    #[arg(long, short = 'c', value_name = "FILE", default_value = DEFAULT_CONFIG, global = true)]
    config: PathBuf,
    /// Log filter, overriding `[logging] level`, passed on to every service.
    #[arg(long, value_name = "FILTER", global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the config and this machine (data dir, ports, Docker, NVML); exit 1 on a failure.
    Validate,
    /// Show the services of the running node; exit 1 unless all are SERVING, 3 if it is not running.
    Status,
    /// Call an executor's public API, signed with the miner hotkey (--key-file or MINER_HOTKEY_SECRET).
    Ctl(Box<executor::ctl::CtlArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match (cli.server, cli.command) {
        (true, None) => executor::run_server(&cli.config, cli.log_level.as_deref()),
        (false, Some(Command::Validate)) => executor::validate::validate_command(&cli.config),
        (false, Some(Command::Status)) => executor::status::status_command(&cli.config),
        (false, Some(Command::Ctl(args))) => executor::ctl::ctl_command(&cli.config, *args),
        (true, Some(_)) => {
            eprintln!("executor: --server cannot be combined with a subcommand");
            ExitCode::from(2)
        }
        (false, None) => {
            let _ = Cli::command().print_help();
            ExitCode::from(2)
        }
    }
}
