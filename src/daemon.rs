//! The run loop: logging, journal, buses, hub link and pipeline wired
//! together; signals and systemd notifications at the edge.

use crate::bus::modbus::{ModbusLink, Target};
use crate::bus::port::{rtu_gap, serial_opener};
use crate::bus::serial::SerialLink;
use crate::bus::worker::{self, BusHandle, BusSettings, Link};
use crate::config::{BusKind, Config};
use crate::hub::{link, Dialect};
use crate::journal::{Bounds, Journal};
use crate::pipeline::{Pipeline, Status};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Exit status for a configuration the daemon cannot run with (sysexits
/// EX_CONFIG); the systemd unit lists it in RestartPreventExitStatus.
pub const EXIT_CONFIG: i32 = 78;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Runtime(String),
}

impl DaemonError {
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_) => EXIT_CONFIG,
            DaemonError::Runtime(_) => 1,
        }
    }
}

/// Sets up tracing: journald when stderr is connected to the journal
/// (systemd sets JOURNAL_STREAM), plain stderr otherwise. `RUST_LOG` wins
/// over the config's `log_level`.
pub fn init_logging(level: Option<&str>) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some().then(|| tracing_journald::layer().ok()).flatten();
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match journald {
        Some(j) => registry.with(j).try_init(),
        None => {
            registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false)).try_init()
        }
    };
}

/// Starts one worker per configured bus.
pub fn spawn_buses(
    cfg: &Config,
    journal: &Journal,
    done: &mpsc::UnboundedSender<crate::bus::Done>,
    shutdown: &watch::Receiver<bool>,
) -> Result<HashMap<String, BusHandle>, DaemonError> {
    let mut buses = HashMap::new();
    for (name, bus) in &cfg.buses {
        let link = match bus.kind {
            BusKind::ModbusTcp => Link::Modbus(ModbusLink::new(
                Target::Tcp { address: bus.address.clone().unwrap_or_default() },
                *bus.timeout,
            )),
            BusKind::ModbusRtu => Link::Modbus(ModbusLink::new(
                Target::Rtu { opener: serial_opener(bus), gap: rtu_gap(bus.baud) },
                *bus.timeout,
            )),
            BusKind::Serial => Link::Serial(
                SerialLink::new(serial_opener(bus), bus)
                    .map_err(|e| DaemonError::Config(format!("bus {name}: {e}")))?,
            ),
        };
        let settings =
            BusSettings { timeout: *bus.timeout, breaker_after: bus.breaker_after, breaker_max: *bus.breaker_max };
        buses.insert(
            name.clone(),
            worker::spawn(name.clone(), link, settings, journal.clone(), done.clone(), shutdown.clone()),
        );
    }
    Ok(buses)
}

/// Opens the journal in `state_dir/journal`, moving a broken one aside.
pub fn open_journal(cfg: &Config) -> Result<Journal, DaemonError> {
    let dir = cfg.gateway.state_dir.join("journal");
    std::fs::create_dir_all(&cfg.gateway.state_dir).map_err(|e| {
        DaemonError::Runtime(format!("cannot create state_dir {}: {e}", cfg.gateway.state_dir.display()))
    })?;
    let bounds = Bounds { max_messages: cfg.gateway.max_messages, max_bytes: cfg.gateway.max_bytes };
    let (journal, report) = Journal::open(&dir, cfg.gateway.cache_capacity, bounds)
        .map_err(|e| DaemonError::Runtime(format!("cannot open the journal in {}: {e}", dir.display())))?;
    if let Some((aside, why)) = &report.moved_aside {
        tracing::error!(
            moved_to = %aside.display(),
            reason = %why,
            "THE JOURNAL WAS UNREADABLE: it was moved aside and an empty one started; messages it held are not resumed"
        );
    }
    for d in &report.dropped_entries {
        tracing::error!(entry = %d, "dropped an unreadable journal entry");
    }
    Ok(journal)
}

/// The daemon: runs until SIGTERM or SIGINT (or `stop` turns true), then
/// stops cleanly: no new messages, the request on the wire finished, the
/// journal flushed, the last acks sent.
pub async fn run(cfg: Config, mut stop: Option<watch::Receiver<bool>>) -> Result<(), DaemonError> {
    let cfg = Arc::new(cfg);
    let journal = open_journal(&cfg)?;
    let dialect = Arc::new(Dialect::from_config(&cfg).map_err(|e| DaemonError::Config(e.to_string()))?);
    let link_dialect = Dialect::from_config(&cfg).map_err(|e| DaemonError::Config(e.to_string()))?;

    let (bus_stop_tx, bus_stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let buses = spawn_buses(&cfg, &journal, &done_tx, &bus_stop_rx)?;
    drop(done_tx);

    let (hub_events_tx, hub_events_rx) = mpsc::channel(1024);
    let (hub_cmd_tx, hub_cmd_rx) = mpsc::unbounded_channel();
    let (hub_stop_tx, hub_stop_rx) = watch::channel(false);
    let (status_tx, mut status_rx) = watch::channel(Status::default());

    let (readings_tx, readings_rx) = mpsc::unbounded_channel();
    let senders = buses.iter().map(|(k, b)| (k.clone(), b.jobs.clone())).collect();
    crate::telemetry::spawn(&cfg, &senders, readings_tx, bus_stop_rx.clone());
    drop(senders);
    let mut pipeline = Pipeline::new(cfg.clone(), journal.clone(), dialect.clone(), hub_cmd_tx, buses, status_tx);
    pipeline.recover().await.map_err(|e| DaemonError::Runtime(format!("journal recovery failed: {e}")))?;

    let link_task = tokio::spawn(link::run(link_dialect, hub_events_tx, hub_cmd_rx, hub_stop_rx));
    let (pipe_stop_tx, pipe_stop_rx) = watch::channel(false);
    let pipe_task = tokio::spawn(pipeline.run(hub_events_rx, done_rx, readings_rx, pipe_stop_rx, bus_stop_tx));

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(buses = cfg.buses.len(), devices = cfg.devices.len(), "c2d-gateway running");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| DaemonError::Runtime(format!("cannot listen for SIGTERM: {e}")))?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); break; }
            _ = async { match stop.as_mut() { Some(s) => { let _ = s.wait_for(|v| *v).await; } None => std::future::pending().await } } => break,
            Ok(()) = status_rx.changed() => {
                let s = status_rx.borrow_and_update().clone();
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status_line(&s))]);
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = pipe_stop_tx.send(true);
    let _ = pipe_task.await;
    let _ = hub_stop_tx.send(true);
    let _ = link_task.await;
    journal.flush().await.map_err(|e| DaemonError::Runtime(format!("final flush failed: {e}")))?;
    tracing::info!("stopped");
    Ok(())
}

pub fn status_line(s: &Status) -> String {
    let hub = if s.hub_connected { "hub connected" } else { "hub disconnected" };
    match s.oldest_queued_ms {
        Some(t) if s.queued > 0 => {
            let age = crate::message::now_ms().saturating_sub(t) / 1000;
            format!("{hub}, {} queued, oldest {age}s", s.queued)
        }
        _ => format!("{hub}, {} queued", s.queued),
    }
}
