//! The `c2d-gateway` command line.

use c2d_gateway::config::{Config, DEFAULT_PATH};
use c2d_gateway::{bench, cli, daemon};
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
    /// The whole system on loopback: hub emulator, simulated devices, gateway; sends a few messages and shows each one's journey.
    Demo {
        /// Leave everything running afterwards and print how to use `send` against it.
        #[arg(long)]
        keep_running: bool,
        /// Provision the gateway through the emulator's Device Provisioning Service (an enrollment group's
        /// derived key) and connect over MQTT over WebSockets: no connection string at all.
        #[arg(long)]
        dps: bool,
    },
    /// A local stand-in for Azure IoT Hub (MQTT, MQTT over TLS and over WebSockets, X.509 devices, DPS, HTTP back-end API).
    HubEmulator(cli::emulator::Args),
    /// Send a cloud-to-device message through the emulator's HTTP API; prints its id.
    Send(cli::send::Args),
    /// Invoke a direct method through the emulator's HTTP API; prints the status and the answer.
    Invoke(cli::invoke::Args),
    /// Show a device twin through the emulator's HTTP API, or `set` its desired properties.
    Twin(cli::twin::Args),
    /// The running gateway's state: hub link, queue, buses, devices, messages waiting for an operator.
    Status(cli::operator::StatusArgs),
    /// List, show, retry, resolve or drop messages in the running gateway's journal.
    Queue(cli::operator::QueueArgs),
    /// Measure the gateway (a separate process) against the emulator and simulated devices; prints a table.
    Bench(bench::Args),
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| {
        eprintln!("cannot start the runtime: {e}");
        ExitCode::from(1)
    })
}

/// Runs a subcommand's future on a fresh runtime; its error is printed.
fn block_on(fut: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    match runtime() {
        Ok(rt) => report(rt.block_on(fut)),
        Err(code) => code,
    }
}

fn report(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("c2d-gateway: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(cfg) => {
                for w in cfg.warnings().into_iter().chain(c2d_gateway::hub::check_files(&cfg)) {
                    eprintln!("warning: {w}");
                }
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
            // One thread: the daemon waits on the network, the devices and
            // the disk (fsyncs run on tokio's blocking pool), and a single
            // thread spares every hand-over between tasks a wake-up of
            // another thread (measured: a third less CPU per message).
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(daemon::run(cfg, Some(config.clone()), None)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // A restart asked for (exit 75) is logged by the daemon.
                    if !matches!(e, daemon::DaemonError::Restart(_)) {
                        tracing::error!(error = %e, "c2d-gateway stopped on an error");
                    }
                    eprintln!("c2d-gateway: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
        Command::Demo { keep_running, dps } => block_on(cli::demo::run(keep_running, dps)),
        Command::HubEmulator(args) => {
            daemon::init_logging(None);
            block_on(cli::emulator::run(args))
        }
        Command::Send(args) => report(cli::send::run(args)),
        Command::Invoke(args) => report(cli::invoke::run(args)),
        Command::Twin(args) => report(cli::twin::run(args)),
        Command::Bench(args) => block_on(bench::run(args)),
        Command::Status(args) => report(cli::operator::status(args)),
        Command::Queue(args) => report(cli::operator::queue(args)),
    }
}
