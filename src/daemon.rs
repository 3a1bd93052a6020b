//! The run loop: logging, journal, buses, hub link and pipeline wired
//! together; signals and systemd notifications at the edge.

use crate::config::Config;
use crate::hub::{link, Dialect};
use crate::journal::{Bounds, Journal};
use crate::pipeline::{Pipeline, Status};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Exit status for a configuration the daemon cannot run with (sysexits
/// EX_CONFIG); the systemd unit lists it in RestartPreventExitStatus.
pub const EXIT_CONFIG: i32 = 78;

/// Exit status after a clean stop for a restart (sysexits EX_TEMPFAIL):
/// DPS assigned another device id, which the next start takes from the
/// cached assignment. The unit's `Restart=on-failure` starts it again.
pub const EXIT_RESTART: i32 = 75;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Runtime(String),
    #[error("{0}")]
    Buses(#[from] crate::bus::SpawnError),
    /// Stopped cleanly to start again (see [`EXIT_RESTART`]).
    #[error("stopped to restart: {0}")]
    Restart(String),
}

impl DaemonError {
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_) | DaemonError::Buses(_) => EXIT_CONFIG,
            DaemonError::Runtime(_) => 1,
            DaemonError::Restart(_) => EXIT_RESTART,
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
            use std::io::IsTerminal;
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
            registry.with(fmt).try_init()
        }
    };
}

/// Opens the journal, waiting while the cause of failure is outside the
/// store (a full disk, a read-only mount, another process holding it):
/// logged once, then retried every 2 s, with the start-up timeout extended
/// and the watchdog fed, so the service neither fails nor crash-loops.
async fn open_journal_waiting(cfg: &Config, stop: &mut Option<watch::Receiver<bool>>) -> Result<Journal, DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| DaemonError::Runtime(e.to_string()))?;
    let mut logged = false;
    loop {
        match open_journal(cfg) {
            Ok(j) => {
                if logged {
                    tracing::info!("the journal opened: starting");
                }
                return Ok(j);
            }
            Err(OpenError::Waitable(why)) => {
                if !logged {
                    tracing::error!(error = %why, "cannot open the journal; waiting for the cause to go away (retrying every 2 s)");
                    logged = true;
                }
                let status = format!("waiting for the journal: {why}");
                let _ = sd_notify::notify(&[
                    sd_notify::NotifyState::Status(&status),
                    sd_notify::NotifyState::ExtendTimeoutUsec(10_000_000),
                    sd_notify::NotifyState::Watchdog,
                ]);
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                    _ = term.recv() => return Err(DaemonError::Runtime(format!("stopped while waiting for the journal: {why}"))),
                    _ = tokio::signal::ctrl_c() => return Err(DaemonError::Runtime(format!("stopped while waiting for the journal: {why}"))),
                    _ = stop_requested(stop) => {
                        return Err(DaemonError::Runtime(format!("stopped while waiting for the journal: {why}")));
                    }
                }
            }
            Err(OpenError::Fatal(e)) => return Err(e),
        }
    }
}

/// Resolves when `stop` (the in-process stop switch of tests and the demo)
/// turns true; never without one.
async fn stop_requested(stop: &mut Option<watch::Receiver<bool>>) {
    match stop.as_mut() {
        Some(s) => {
            let _ = s.wait_for(|v| *v).await;
        }
        None => std::future::pending().await,
    }
}

enum OpenError {
    Waitable(String),
    Fatal(DaemonError),
}

/// Opens the journal in `state_dir/journal`, moving a broken one aside.
fn open_journal(cfg: &Config) -> Result<Journal, OpenError> {
    let dir = cfg.gateway.state_dir.join("journal");
    std::fs::create_dir_all(&cfg.gateway.state_dir).map_err(|e| {
        OpenError::Fatal(DaemonError::Runtime(format!(
            "cannot create state_dir {}: {e}",
            cfg.gateway.state_dir.display()
        )))
    })?;
    let bounds = Bounds { max_messages: cfg.gateway.max_messages, max_bytes: cfg.gateway.max_bytes };
    let (journal, report) = Journal::open(&dir, cfg.gateway.cache_capacity, bounds).map_err(|e| {
        let msg = format!("cannot open the journal in {}: {e}", dir.display());
        if e.is_environmental() {
            OpenError::Waitable(msg)
        } else {
            OpenError::Fatal(DaemonError::Runtime(msg))
        }
    })?;
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
/// journal flushed, the last acks sent. SIGHUP reloads `config_path`: buses,
/// devices and routing change without dropping or re-running a queued
/// message; an invalid file is refused and the running config kept.
pub async fn run(
    cfg: Config,
    config_path: Option<PathBuf>,
    mut stop: Option<watch::Receiver<bool>>,
) -> Result<(), DaemonError> {
    let cfg = Arc::new(cfg);
    // Before the journal: on a full disk the reserve is released first.
    let space = crate::journal::space::Space::new(&cfg.gateway.state_dir, cfg.gateway.disk_reserve);
    let journal = open_journal_waiting(&cfg, &mut stop).await?;
    let not_configured = |e: crate::hub::HubError| {
        let msg = format!("not configured: {e}");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&msg)]);
        DaemonError::Config(msg)
    };
    let dialect = Arc::new(Dialect::from_config(&cfg).map_err(not_configured)?);
    let link_dialect = Dialect::from_config(&cfg).map_err(not_configured)?;

    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (readings_tx, readings_rx) = mpsc::unbounded_channel();
    let (hub_events_tx, hub_events_rx) = mpsc::channel(1024);
    let (hub_cmd_tx, hub_cmd_rx) = mpsc::unbounded_channel();
    let (hub_stop_tx, hub_stop_rx) = watch::channel(false);
    let (status_tx, mut status_rx) = watch::channel(Status::default());
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    let heartbeat = Arc::new(AtomicU64::new(0));
    let live = Arc::new(crate::live::Live::default());
    let (asks_tx, asks_rx) = mpsc::channel(16);
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }

    let parts = crate::pipeline::Parts {
        journal: journal.clone(),
        dialect,
        hub: hub_cmd_tx,
        done: done_tx,
        readings: readings_tx,
        status: status_tx,
        heartbeat: heartbeat.clone(),
        space,
        live: live.clone(),
    };
    let mut pipeline = Pipeline::new(cfg.clone(), parts);
    pipeline.start_buses()?;
    pipeline.recover().await.map_err(|e| DaemonError::Runtime(format!("journal recovery failed: {e}")))?;

    let (restart_tx, mut restart_rx) = watch::channel(None::<String>);
    let link_task = tokio::spawn(link::run(link_dialect, hub_events_tx, hub_cmd_rx, hub_stop_rx, restart_tx));
    let (pipe_stop_tx, pipe_stop_rx) = watch::channel(false);
    let pipe_task = tokio::spawn(pipeline.run(hub_events_rx, done_rx, readings_rx, reload_rx, asks_rx, pipe_stop_rx));
    let ctx = Arc::new(crate::operate::Ctx {
        journal: journal.clone(),
        live,
        hub: cfg.hub.kind,
        started_ms: crate::message::now_ms(),
    });
    let operator = operator_surface(&cfg, ctx, asks_tx).await;

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(buses = cfg.buses.len(), devices = cfg.devices.len(), "c2d-gateway running");

    use tokio::signal::unix::{signal, SignalKind};
    let sig = |k| signal(k).map_err(|e| DaemonError::Runtime(format!("cannot listen for signals: {e}")));
    let (mut term, mut hup) = (sig(SignalKind::terminate())?, sig(SignalKind::hangup())?);
    // The watchdog is fed only while the pipeline's loop keeps turning.
    let watchdog = sd_notify::watchdog_enabled();
    let mut wd_tick = tokio::time::interval(watchdog.map_or(std::time::Duration::from_secs(3600), |d| d / 2));
    let mut last_beat = u64::MAX;
    let mut journal_failed: Option<String> = None;
    let mut restart: Option<String> = None;
    const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
    let (mut status_due, mut last_hub) = (false, false);
    let now = tokio::time::Instant::now();
    let mut status_sent = now.checked_sub(STATUS_EVERY).unwrap_or(now);
    loop {
        tokio::select! {
            why = journal.failed() => {
                tracing::error!(error = %why, "the journal cannot be written (disk full?): stopping; nothing that is not in the journal was acknowledged, and the service manager starts the gateway again");
                journal_failed = Some(why);
                break;
            }
            Ok(()) = restart_rx.changed() => {
                if let Some(why) = restart_rx.borrow_and_update().clone() {
                    tracing::warn!(reason = %why, "stopping cleanly to restart");
                    restart = Some(why);
                    break;
                }
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); break; }
            _ = stop_requested(&mut stop) => break,
            _ = hup.recv() => match &config_path {
                Some(path) => match Config::load(path) {
                    Ok(new) => { let _ = reload_tx.send(new); }
                    Err(d) => tracing::error!(problems = %d.to_string().trim_end(), "SIGHUP: the new configuration is invalid; keeping the running one"),
                },
                None => tracing::warn!("SIGHUP: no configuration file to reload"),
            },
            _ = wd_tick.tick(), if watchdog.is_some() => {
                let beat = heartbeat.load(Ordering::Relaxed);
                if beat != last_beat {
                    last_beat = beat;
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
            // STATUS= at most once a second (one datagram to PID 1 per
            // message would be a storm), at once when the hub state flips.
            Ok(()) = status_rx.changed(), if !status_due => {
                let s = status_rx.borrow().clone();
                if s.hub_connected != last_hub || status_sent.elapsed() >= STATUS_EVERY {
                    status_rx.borrow_and_update();
                    last_hub = s.hub_connected;
                    status_sent = tokio::time::Instant::now();
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status_line(&s))]);
                } else {
                    status_due = true;
                }
            }
            _ = tokio::time::sleep_until(status_sent + STATUS_EVERY), if status_due => {
                status_due = false;
                let s = status_rx.borrow_and_update().clone();
                last_hub = s.hub_connected;
                status_sent = tokio::time::Instant::now();
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status_line(&s))]);
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    for t in operator.tasks {
        t.abort();
    }
    if let Some(socket) = operator.socket {
        socket.remove();
    }
    let _ = pipe_stop_tx.send(true);
    let hub_events = pipe_task.await.ok();
    let _ = hub_stop_tx.send(true);
    // Reports the hub acknowledged and PUBACKs written after the pipeline
    // left its loop (in its receiver, or seen by the link while stopping)
    // are recorded before the journal is sealed. The receiver is drained
    // while the link stops, so the link never blocks on a full channel.
    let stopped = drain_while_stopping(hub_events, link_task).await;
    for &seq in &stopped.reported {
        match crate::pipeline::readings::reading_key(seq) {
            Some(key) => {
                let _ = journal.unbuffer_reading(key);
            }
            None => {
                let _ = journal.mark_reported(seq);
            }
        }
    }
    for &seq in &stopped.acked {
        journal.acked(seq);
    }
    if let Some(why) = journal_failed {
        return Err(DaemonError::Runtime(format!("stopped: the journal cannot be written: {why}")));
    }
    journal.seal().await.map_err(|e| DaemonError::Runtime(format!("final flush failed: {e}")))?;
    tracing::info!(journal_flushes = journal.flushes(), "stopped");
    match restart {
        Some(why) => Err(DaemonError::Restart(why)),
        None => Ok(()),
    }
}

/// Takes the hub events nobody else reads any more until the link has
/// stopped; returns every report acknowledged and PUBACK written they and
/// the link's stop tell of.
async fn drain_while_stopping(
    events: Option<mpsc::Receiver<crate::hub::HubEvent>>,
    link_task: tokio::task::JoinHandle<link::Stopped>,
) -> link::Stopped {
    use crate::hub::HubEvent;
    let mut seen = link::Stopped::default();
    let take = |ev: HubEvent, seen: &mut link::Stopped| match ev {
        HubEvent::Reported { seq } => seen.reported.push(seq),
        HubEvent::Acked { seq } => seen.acked.push(seq),
        _ => {}
    };
    let mut link_task = std::pin::pin!(link_task);
    let at_stop = match events {
        Some(mut rx) => {
            let at_stop = loop {
                tokio::select! {
                    r = &mut link_task => break r.unwrap_or_default(),
                    Some(ev) = rx.recv() => take(ev, &mut seen),
                }
            };
            while let Ok(ev) = rx.try_recv() {
                take(ev, &mut seen);
            }
            at_stop
        }
        None => link_task.await.unwrap_or_default(),
    };
    seen.reported.extend(at_stop.reported);
    seen.acked.extend(at_stop.acked);
    seen
}

/// Starts the control socket and the HTTP server (`src/operate/`). Neither
/// is needed to deliver messages: one that cannot start is logged, and the
/// gateway runs without it.
async fn operator_surface(
    cfg: &Config,
    ctx: Arc<crate::operate::Ctx>,
    asks: mpsc::Sender<crate::pipeline::operator::Ask>,
) -> OperatorSurface {
    use crate::operate::{control, http};
    let mut surface = OperatorSurface { tasks: Vec::new(), socket: None };
    if let Some(path) = cfg.gateway.control_socket() {
        match control::bind(&path).await {
            Ok((l, bound)) => {
                surface.tasks.push(tokio::spawn(control::serve(l, path, ctx.clone(), asks)));
                surface.socket = Some(bound);
            }
            Err(e) => {
                tracing::error!(error = %e, "no control socket: the status and queue verbs cannot reach this gateway")
            }
        }
    }
    if let Some(addr) = &cfg.gateway.http {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => surface.tasks.push(tokio::spawn(http::serve(l, ctx))),
            Err(e) => tracing::error!(address = %addr, error = %e, "cannot serve the status page and /metrics"),
        }
    }
    surface
}

struct OperatorSurface {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The control socket this process made (removed at the stop).
    socket: Option<crate::operate::control::Bound>,
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
