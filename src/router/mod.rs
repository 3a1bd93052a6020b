//! The router: which device a message is for, and what its body asks that
//! device to do. Anything that can never succeed (unknown device, body that
//! does not parse, value out of limits) is a rejection with a clear reason.

pub mod encode;
pub mod modbus;
mod reject;

use crate::config::{BusConfig, BusKind, Config, DeviceConfig, Framing};
use modbus::Write;

/// What to do on the wire for one message.
#[derive(Debug, Clone)]
pub enum Request {
    Modbus(Vec<Write>),
    Serial(Vec<u8>),
    /// Read these points (Modbus); the values go into the result report.
    Read(Vec<(String, crate::config::PointConfig)>),
}

/// A routed message: device name, its config and its bus's.
pub struct Route<'a> {
    pub device: &'a str,
    pub config: &'a DeviceConfig,
    pub bus_name: &'a str,
    pub bus: &'a BusConfig,
}

/// How many configured devices an "unknown device" message lists.
const LIST_DEVICES: usize = 10;

/// Why a message has no device to go to: a rejection, with this text in the
/// result report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the message names no device (application property `{property}`) and routing.default_device is not set")]
    NoDevice { property: String },
    /// `known` lists at most [`LIST_DEVICES`] of the configured devices.
    #[error("unknown device {name:?} (configured: {})", .known.join(", "))]
    UnknownDevice { name: String, known: Vec<String> },
    #[error("device {device:?} is on bus {bus:?}, which is not configured")]
    UnknownBus { device: String, bus: String },
}

/// Why a body can never be sent to its device: a rejection, with this text
/// in the result report.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Modbus(#[from] modbus::Reject),
    #[error("empty body: nothing to send to the serial device")]
    EmptySerialBody,
    #[error("the body contains {0}, which would split it into several frames")]
    SplitsFrame(FrameBreak),
}

/// What in a serial body would end its frame early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameBreak {
    /// `line` framing: a CR or LF inside the body.
    LineBreak,
    /// `line` framing: the bus's `line_ending` seen before the body's end.
    LineEnding,
    /// `stx-etx` framing: an STX or ETX byte inside the body.
    StxEtx,
}

impl std::fmt::Display for FrameBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrameBreak::LineBreak => "a line break",
            FrameBreak::LineEnding => "the bus's line_ending",
            FrameBreak::StxEtx => "an STX or ETX byte",
        })
    }
}

/// Finds the device: the one the message names, else the default device.
pub fn route<'a>(cfg: &'a Config, named: Option<&str>) -> Result<Route<'a>, RouteError> {
    let name = match named {
        Some(n) => n,
        None => cfg
            .routing
            .default_device
            .as_deref()
            .ok_or_else(|| RouteError::NoDevice { property: cfg.routing.device_property.clone() })?,
    };
    let (device, config) = cfg.devices.get_key_value(name).ok_or_else(|| RouteError::UnknownDevice {
        name: name.to_string(),
        known: cfg.devices.keys().take(LIST_DEVICES).cloned().collect(),
    })?;
    let (bus_name, bus) = cfg
        .buses
        .get_key_value(&config.bus)
        .ok_or_else(|| RouteError::UnknownBus { device: name.to_string(), bus: config.bus.clone() })?;
    Ok(Route { device, config, bus_name, bus })
}

/// Turns the body into the request for the device's bus.
pub fn command(route: &Route<'_>, body: &[u8]) -> Result<Request, CommandError> {
    match route.bus.kind {
        BusKind::ModbusRtu | BusKind::ModbusTcp => Ok(match modbus::parse_command(body, route.device, route.config)? {
            modbus::Command::Writes(w) => Request::Modbus(w),
            modbus::Command::Read(points) => Request::Read(points),
        }),
        BusKind::Serial => {
            if body.is_empty() {
                return Err(CommandError::EmptySerialBody);
            }
            let bad = match route.bus.framing {
                Framing::Line if body.iter().any(|b| *b == b'\n' || *b == b'\r') => Some(FrameBreak::LineBreak),
                Framing::Line => ends_early(body, route.bus.line_ending.as_bytes()).then_some(FrameBreak::LineEnding),
                Framing::StxEtx => body.iter().any(|b| *b == 0x02 || *b == 0x03).then_some(FrameBreak::StxEtx),
                Framing::Raw => None,
            };
            if let Some(what) = bad {
                return Err(CommandError::SplitsFrame(what));
            }
            Ok(Request::Serial(body.to_vec()))
        }
    }
}

/// Whether the device would see `line_ending` before the end of `body` once
/// it is appended (inside the body, or straddling the joint): the frame
/// would end early and the rest run as another command.
fn ends_early(body: &[u8], line_ending: &[u8]) -> bool {
    !line_ending.is_empty()
        && [body, line_ending].concat().windows(line_ending.len()).position(|w| w == line_ending) != Some(body.len())
}
