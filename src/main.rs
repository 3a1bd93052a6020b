//! The `c2d-gateway` command line.

use c2d_gateway::config::{Config, DEFAULT_PATH};
use c2d_gateway::daemon;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "c2d-gateway",
    version,
    about = "Cloud-to-device gateway: IoT Hub / MQTT to Modbus and serial devices, never losing or repeating a command"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Check the configuration: prints every problem with its line; exit 0 when valid.
    CheckConfig {
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(cfg) => {
                println!("{}: ok: {}", config.display(), cfg.summary());
                ExitCode::SUCCESS
            }
            Err(d) => {
                eprint!("{d}");
                eprintln!("{}: {} problem(s)", config.display(), d.problems.len());
                ExitCode::from(1)
            }
        },
        Command::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(d) => {
                    eprint!("{d}");
                    return ExitCode::from(daemon::EXIT_CONFIG as u8);
                }
            };
            daemon::init_logging(cfg.gateway.log_level.as_deref());
            let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(daemon::run(cfg, None)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "c2d-gateway stopped on an error");
                    eprintln!("c2d-gateway: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
    }
}
