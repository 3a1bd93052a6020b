//! The `c2d-gateway` command line.

use c2d_gateway::config::{Config, DEFAULT_PATH};
use c2d_gateway::{cli, daemon};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    },
    /// A local stand-in for Azure IoT Hub (MQTT, MQTT over TLS, HTTP back-end API).
    HubEmulator {
        /// Plain MQTT listener, e.g. 127.0.0.1:1883.
        #[arg(long)]
        mqtt: Option<SocketAddr>,
        /// MQTT over TLS listener (certificate generated at start).
        #[arg(long, default_value = "127.0.0.1:8883")]
        tls: Option<SocketAddr>,
        /// HTTP back-end API listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: Option<SocketAddr>,
        /// Write the emulator's CA certificate (PEM) here.
        #[arg(long)]
        ca_out: Option<PathBuf>,
        /// Register a device: ID or ID:BASE64KEY (a key is generated and printed when omitted).
        #[arg(long = "device", value_name = "ID[:KEY]")]
        devices: Vec<String>,
        #[arg(long, default_value = "localhost")]
        host_name: String,
        /// How long a delivered message stays locked before it is delivered again.
        #[arg(long, default_value = "60s", value_parser = cli::duration)]
        lock_timeout: Duration,
        /// Time to live of messages sent without iothub-expiry.
        #[arg(long, default_value = "1h", value_parser = cli::duration)]
        default_ttl: Duration,
        /// Drop a connection that acknowledges out of order.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        strict_ack_order: bool,
    },
    /// Send a cloud-to-device message through the emulator's HTTP API; prints its id.
    Send {
        #[arg(long)]
        device: String,
        /// none | positive | negative | full
        #[arg(long)]
        ack: Option<String>,
        /// Application property, repeatable.
        #[arg(long = "property", value_name = "K=V", value_parser = cli::key_value)]
        properties: Vec<(String, String)>,
        #[arg(long)]
        message_id: Option<String>,
        #[arg(long)]
        correlation_id: Option<String>,
        /// Time to live, e.g. 10m.
        #[arg(long, value_parser = cli::duration)]
        expiry: Option<Duration>,
        /// Wait for the feedback record and print it.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "60s", value_parser = cli::duration)]
        timeout: Duration,
        /// The emulator's HTTP API.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        hub: String,
        /// The body, or - for standard input.
        body: String,
    },
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
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(daemon::run(cfg, Some(config.clone()), None)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "c2d-gateway stopped on an error");
                    eprintln!("c2d-gateway: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
        Command::Demo { keep_running } => block_on(cli::demo::run(keep_running)),
        Command::HubEmulator {
            mqtt,
            tls,
            http,
            ca_out,
            devices,
            host_name,
            lock_timeout,
            default_ttl,
            strict_ack_order,
        } => {
            daemon::init_logging(None);
            let args = cli::emulator::Args {
                mqtt,
                tls,
                http,
                ca_out,
                devices,
                host_name,
                lock_timeout,
                default_ttl,
                strict_ack_order,
            };
            block_on(cli::emulator::run(args))
        }
        Command::Send { device, ack, properties, message_id, correlation_id, expiry, wait, timeout, hub, body } => {
            report(cli::send::run(cli::send::Args {
                hub,
                device,
                ack,
                properties,
                message_id,
                correlation_id,
                expiry,
                wait,
                timeout,
                body,
            }))
        }
    }
}
