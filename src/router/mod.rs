//! The router: which device a message is for, and what its body asks that
//! device to do. Anything that can never succeed (unknown device, body that
//! does not parse, value out of limits) is a rejection with a clear reason.

pub mod encode;
pub mod modbus;

use crate::config::{BusConfig, BusKind, Config, DeviceConfig, Framing};
use modbus::Write;

/// What to do on the wire for one message.
#[derive(Debug, Clone)]
pub enum Request {
    Modbus(Vec<Write>),
    Serial(Vec<u8>),
}

/// A routed message: device name, its config and its bus's.
pub struct Route<'a> {
    pub device: &'a str,
    pub config: &'a DeviceConfig,
    pub bus_name: &'a str,
    pub bus: &'a BusConfig,
}

/// Finds the device: the one the message names, else the default device.
pub fn route<'a>(cfg: &'a Config, named: Option<&str>) -> Result<Route<'a>, String> {
    let name = match named {
        Some(n) => n,
        None => cfg.routing.default_device.as_deref().ok_or_else(|| {
            format!(
                "the message names no device (application property `{}`) and routing.default_device is not set",
                cfg.routing.device_property
            )
        })?,
    };
    let (device, config) = cfg.devices.get_key_value(name).ok_or_else(|| {
        let known: Vec<&str> = cfg.devices.keys().map(String::as_str).take(10).collect();
        format!("unknown device {name:?} (configured: {})", known.join(", "))
    })?;
    let (bus_name, bus) = cfg
        .buses
        .get_key_value(&config.bus)
        .ok_or_else(|| format!("device {name:?} is on bus {:?}, which is not configured", config.bus))?;
    Ok(Route { device, config, bus_name, bus })
}

/// Turns the body into the request for the device's bus.
pub fn command(route: &Route<'_>, body: &[u8]) -> Result<Request, String> {
    match route.bus.kind {
        BusKind::ModbusRtu | BusKind::ModbusTcp => {
            modbus::parse_body(body, route.device, route.config).map(Request::Modbus).map_err(|r| r.to_string())
        }
        BusKind::Serial => {
            if body.is_empty() {
                return Err("empty body: nothing to send to the serial device".into());
            }
            let bad = match route.bus.framing {
                Framing::Line if body.iter().any(|b| *b == b'\n' || *b == b'\r') => Some("a line break"),
                Framing::Line => ends_early(body, route.bus.line_ending.as_bytes()).then_some("the bus's line_ending"),
                Framing::StxEtx => body.iter().any(|b| *b == 0x02 || *b == 0x03).then_some("an STX or ETX byte"),
                Framing::Raw => None,
            };
            if let Some(what) = bad {
                return Err(format!("the body contains {what}, which would split it into several frames"));
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
