//! Direct methods on the gateway's identity (IoT Hub): `status`, `read`
//! and `write` (see `../shared/design.md`, "Commands with answers").
//!
//! - `write`: a C2D body plus `"device"` and an optional `"id"`: journaled
//!   and delivered like a C2D message (key (device, id)); answered once
//!   its outcome is durable with the result report's JSON: 200 delivered,
//!   409 id reused for a different command, 422 refused by the device,
//!   500 expired or uncertain (the report says which); 504 when not final
//!   within `methods.timeout` (the command stays queued, its report follows
//!   as D2C). A call repeating an id gets the stored outcome with
//!   `"duplicate": true` and writes nothing; one still in progress gets 202
//!   with its state.
//! - `read`: `{"device", "points": [...]}` → 200 `{"device", "values",
//!   "read_at"}`, read by the device's bus worker when no write is ready.
//! - `status`: the gateway's status.
//!
//! A payload that cannot be a command is a 400 (404 for an unknown device
//! or point) and nothing reaches the journal or the wire.

use crate::config::{BusKind, Config, PointConfig};
use crate::message::{Entry, State};
use serde_json::{json, Map, Value};

/// A call, checked against the configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Status,
    Read { device: String, unit: u8, bus: String, reads: Vec<(String, PointConfig)> },
    Write { device: String, id: Option<String>, body: Vec<u8> },
}

/// Why a call is answered without running: status and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

fn refuse<T>(status: u16, reason: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal { status, reason: reason.into() })
}

/// Parses and checks a call.
pub fn parse(cfg: &Config, name: &str, payload: &[u8]) -> Result<Call, Refusal> {
    match name {
        "status" => Ok(Call::Status),
        "read" => parse_read(cfg, object(payload)?),
        "write" => parse_write(cfg, object(payload)?),
        other => refuse(404, format!("no method {other:?} (the gateway has write, read and status)")),
    }
}

fn object(payload: &[u8]) -> Result<Map<String, Value>, Refusal> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => refuse(400, "the payload must be a JSON object"),
        Err(e) => refuse(400, format!("the payload is not JSON: {e}")),
    }
}

fn device_of<'a>(
    cfg: &'a Config,
    m: &Map<String, Value>,
) -> Result<(String, &'a crate::config::DeviceConfig), Refusal> {
    let name = match m.get("device") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return refuse(400, "\"device\" must be a device name"),
        None => return refuse(400, "the payload names no \"device\""),
    };
    match cfg.devices.get(&name) {
        Some(d) => Ok((name, d)),
        None => refuse(404, format!("unknown device {name:?}")),
    }
}

fn parse_read(cfg: &Config, m: Map<String, Value>) -> Result<Call, Refusal> {
    let (device, dc) = device_of(cfg, &m)?;
    if let Some(k) = m.keys().find(|k| !["device", "points"].contains(&k.as_str())) {
        return refuse(400, format!("unknown field {k:?} (a read takes \"device\" and \"points\")"));
    }
    let Some(Value::Array(names)) = m.get("points") else {
        return refuse(400, "\"points\" must be a list of point names");
    };
    if names.is_empty() {
        return refuse(400, "\"points\" is empty");
    }
    let bus = cfg
        .buses
        .get(&dc.bus)
        .ok_or_else(|| Refusal { status: 404, reason: format!("bus {:?} is not configured", dc.bus) })?;
    if bus.kind == BusKind::Serial {
        return refuse(400, format!("device {device:?} is on a serial bus: it has no points to read"));
    }
    let mut reads = Vec::with_capacity(names.len());
    for n in names {
        let Value::String(n) = n else { return refuse(400, "\"points\" must be a list of point names") };
        match dc.points.get(n) {
            Some(p) => reads.push((n.clone(), p.clone())),
            None => return refuse(404, format!("device {device:?} has no point {n:?}")),
        }
    }
    Ok(Call::Read { unit: dc.unit.unwrap_or(0), bus: dc.bus.clone(), device, reads })
}

fn parse_write(cfg: &Config, mut m: Map<String, Value>) -> Result<Call, Refusal> {
    let (device, _) = device_of(cfg, &m)?;
    let id = match m.remove("id") {
        None => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => Some(s),
        Some(_) => return refuse(400, "\"id\" must be a string of 1 to 128 characters"),
    };
    m.remove("device");
    let body = serde_json::to_vec(&Value::Object(m)).expect("a JSON object serialises");
    check_command(cfg, &device, &body)?;
    Ok(Call::Write { device, id, body })
}

/// The checks a C2D message meets at dispatch, made before anything is
/// journaled (a `write` call, a twin setpoint): a bad command never reaches
/// the journal or the wire. 404 for an unknown device or point, else 400.
pub fn check_command(cfg: &Config, device: &str, body: &[u8]) -> Result<(), Refusal> {
    let route = crate::router::route(cfg, Some(device)).map_err(|e| Refusal { status: 404, reason: e.to_string() })?;
    if let Err(e) = crate::router::command(&route, body) {
        use crate::router::modbus::Reject;
        use crate::router::CommandError;
        let status = match &e {
            CommandError::Modbus(Reject::UnknownPoint { .. } | Reject::NoPoints { .. }) => 404,
            _ => 400,
        };
        return refuse(status, e.to_string());
    }
    Ok(())
}

/// The answer to a `write` whose outcome is durable: status and the result
/// report's JSON (with `"duplicate": true` for a repeated id).
pub fn final_answer(e: &Entry, duplicate: bool) -> (u16, Value) {
    let status = match e.state {
        State::Delivered => 200,
        State::Rejected if e.conflict => 409,
        State::Rejected if e.reject.is_some() => 400,
        State::Rejected => 422,
        _ => 500,
    };
    let mut report: Value = serde_json::from_slice(&crate::report::body(e)).unwrap_or_else(|_| json!({}));
    if duplicate {
        report["duplicate"] = Value::Bool(true);
    }
    (status, report)
}

/// The answer to a `write` not final yet: 202 for a repeated id still in
/// progress, 504 when `methods.timeout` ran out.
pub fn pending_answer(e: &Entry, status: u16, detail: &str) -> (u16, Value) {
    let mut v = json!({"message_id": e.id, "device": e.device, "status": e.state.as_str(), "detail": detail});
    if status == 202 {
        v["duplicate"] = Value::Bool(true);
    }
    (status, v)
}

#[cfg(test)]
#[path = "methods_tests.rs"]
mod tests;
