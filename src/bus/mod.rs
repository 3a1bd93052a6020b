//! Buses: one task owns each serial port or Modbus TCP endpoint and is the
//! only one that talks on it. The pipeline hands it jobs; it reports each
//! message's final outcome back.

mod commit;
pub use commit::MAX_AHEAD;
pub mod modbus;
pub mod port;
pub mod schedule;
mod seen;
pub mod serial;
pub mod worker;

use crate::config::{BusKind, Config};
use crate::journal::Journal;
use crate::message::Outcome;
pub use crate::router::Request;
use modbus::{ModbusLink, Target};
use port::{rtu_gap, serial_opener};
use serial::SerialLink;
use std::collections::HashMap;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use worker::{BusHandle, BusSettings, Link};

/// One message handed to a bus worker.
#[derive(Debug)]
pub struct Job {
    pub seq: u64,
    pub id: String,
    pub device: String,
    pub unit: u8,
    pub idempotent: bool,
    pub request: Request,
    /// Give up at this moment, with this reason (`$.exp` or `max_age`).
    pub deadline: Option<(Instant, String)>,
    pub max_attempts: u32,
    /// Attempts already made (from the journal: they survive restarts).
    pub attempts: u32,
    /// Modbus writes of this message already acknowledged.
    pub progress: usize,
    /// What the acknowledged writes did (for the report).
    pub acked: Vec<String>,
    pub last_error: Option<String>,
    /// An attempt may have reached the device without a clear answer: the
    /// next one is a resend (recorded in the journal, said in the report).
    pub unconfirmed: bool,
}

/// What the pipeline hands a bus worker.
#[derive(Debug)]
pub enum Work {
    /// A C2D message to deliver.
    Write(Job),
    /// Read telemetry points (served only when no write is waiting).
    Poll(Poll),
    /// An operator's `queue drop` of a message this worker may hold.
    Drop(DropJob),
}

/// Take message `seq` out of the queue (`rejected`, "dropped by
/// operator"), if this worker holds it; the reply says what became of it.
#[derive(Debug)]
pub struct DropJob {
    pub seq: u64,
    pub asked: crate::journal::operator::Asked,
    /// The entry as dropped; `Err` with why not (`None`: not held here).
    pub reply: tokio::sync::oneshot::Sender<Result<crate::message::Entry, Option<String>>>,
}

/// A read of one device's points: a telemetry poll, or a `read` method.
#[derive(Debug)]
pub struct Poll {
    pub device: String,
    pub unit: u8,
    pub reads: Vec<(String, crate::config::PointConfig)>,
    pub reply: Reply,
}

/// Where a read's values go.
#[derive(Debug)]
pub enum Reply {
    /// Telemetry: a failed poll is skipped (the next one comes), and a newer
    /// poll of the device replaces one still waiting.
    Telemetry(tokio::sync::mpsc::UnboundedSender<crate::message::Reading>),
    /// A caller waiting for this read: gets the values or why not.
    Caller(tokio::sync::oneshot::Sender<Result<crate::message::Reading, String>>),
}

impl Poll {
    pub(crate) fn is_telemetry(&self) -> bool {
        matches!(self.reply, Reply::Telemetry(_))
    }
}

/// A message a bus worker has finished with.
#[derive(Debug)]
pub struct Done {
    pub seq: u64,
    pub device: String,
    pub outcome: Outcome,
    pub attempts: u32,
    /// The outcome is already flushed to the journal (a flush of the worker
    /// covered it): no flush needed before the ack.
    pub durable: bool,
    /// The entry as the worker's record left it (final), if it could
    /// record it: the pipeline need not read it back.
    pub entry: Option<crate::message::Entry>,
}

/// How one attempt on the wire ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// The device acknowledged; the detail says what was done.
    Acked(String),
    /// The device refused (Modbus exception, serial nack): final.
    Refused(String),
    /// Nothing was written: safe to try again, whatever the device.
    NotSent(String),
    /// The device (or a Modbus gateway in front of it) answered that it did
    /// not run the request and that it may later (Modbus exceptions 0x06
    /// busy, 0x0A / 0x0B gateway path or target): safe to try again,
    /// whatever the device. `timeout` tells the breaker (0x0B: the target
    /// behind the gateway did not answer).
    NotRun { reason: String, timeout: bool },
    /// Written, but no valid confirmation came back (`timeout` tells the breaker).
    Unconfirmed { reason: String, timeout: bool },
}

/// Why a bus cannot be reached. Nothing was sent; connecting is tried
/// again before the next request.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {address} timed out after {after:?}")]
    TimedOut { address: String, after: std::time::Duration },
    #[error("cannot connect to {address}: {source}")]
    Tcp { address: String, source: std::io::Error },
    /// Setting up a connected TCP socket failed.
    #[error("{0}")]
    Socket(std::io::Error),
    /// The bus's serial port (or other stream) did not open; the opener's
    /// error names the port.
    #[error("{0}")]
    Open(std::io::Error),
}

/// Why the buses of a configuration cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("bus {bus}: {source}")]
    Serial { bus: String, source: serial::PatternError },
}

/// Starts one worker per configured bus.
pub fn spawn_all(
    cfg: &Config,
    journal: &Journal,
    live: &std::sync::Arc<crate::live::Live>,
    done: &mpsc::UnboundedSender<Done>,
    shutdown: &watch::Receiver<bool>,
) -> Result<HashMap<String, BusHandle>, SpawnError> {
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
                    .map_err(|source| SpawnError::Serial { bus: name.clone(), source })?,
            ),
        };
        let settings = BusSettings {
            timeout: *bus.timeout,
            breaker_after: bus.breaker_after,
            breaker_max: *bus.breaker_max,
            live: live.clone(),
        };
        buses.insert(
            name.clone(),
            worker::spawn(name.clone(), link, settings, journal.clone(), done.clone(), shutdown.clone()),
        );
    }
    Ok(buses)
}
