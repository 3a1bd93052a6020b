//! C2D body → Modbus writes, for a device on a Modbus bus.
//!
//! Pure (no I/O): [`parse_body`] turns a message body into the [`Write`]
//! requests the bus worker performs, in order, or a [`Reject`] explaining why
//! the body can never succeed (it becomes a `rejected` outcome with that text
//! in the result report, so messages are written for an operator).
//!
//! Body formats (design.md, "C2D bodies"):
//! - `{"point": "setpoint", "value": 21.5}`
//! - `{"points": {"setpoint": 21.5, "pump": true}}`, written in document order
//!   (one write per point);
//! - raw, only with `allow_raw = true`: `{"fc": 5|6, "address": A, "value": V}`
//!   or `{"fc": 15|16, "address": A, "values": [..]}`.
//!
//! serde_json's `Map` is sorted unless its `preserve_order` feature is on, so
//! the body is read through [`Json`], which keeps object entries in document
//! order and lets duplicated keys be rejected instead of silently merged.
//! Nothing is written unless the whole body is valid.

use super::encode::{self, EncodeError};
use crate::config::{DeviceConfig, PointConfig, PointType, Table};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// FC16 carries at most this many registers (Modbus spec).
pub const MAX_WRITE_REGISTERS: usize = 123;
/// FC15 carries at most this many coils (Modbus spec).
pub const MAX_WRITE_COILS: usize = 1968;

/// How many known point names an "unknown point" message lists.
const LIST_POINTS: usize = 10;
/// How many values [`Write::describe`] shows before eliding the rest.
const DESCRIBE_VALUES: usize = 10;
/// Longest rendering of a body fragment quoted in a message.
const QUOTE_CHARS: usize = 60;

const POINT_EXAMPLE: &str = r#"{"point": "NAME", "value": 21.5}"#;
const POINTS_EXAMPLE: &str = r#"{"points": {"NAME": 21.5, "OTHER": true}}"#;

/// One Modbus write request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Write {
    /// FC5, Write Single Coil.
    SingleCoil { address: u16, value: bool },
    /// FC6, Write Single Register.
    SingleRegister { address: u16, value: u16 },
    /// FC15, Write Multiple Coils.
    MultipleCoils { address: u16, values: Vec<bool> },
    /// FC16, Write Multiple Registers.
    MultipleRegisters { address: u16, values: Vec<u16> },
}

impl Write {
    /// The Modbus function code of this request.
    pub fn function_code(&self) -> u8 {
        match self {
            Write::SingleCoil { .. } => 5,
            Write::SingleRegister { .. } => 6,
            Write::MultipleCoils { .. } => 15,
            Write::MultipleRegisters { .. } => 16,
        }
    }

    /// First coil or register written.
    pub fn address(&self) -> u16 {
        match self {
            Write::SingleCoil { address, .. }
            | Write::SingleRegister { address, .. }
            | Write::MultipleCoils { address, .. }
            | Write::MultipleRegisters { address, .. } => *address,
        }
    }

    /// Number of coils or registers written.
    pub fn count(&self) -> usize {
        match self {
            Write::SingleCoil { .. } | Write::SingleRegister { .. } => 1,
            Write::MultipleCoils { values, .. } => values.len(),
            Write::MultipleRegisters { values, .. } => values.len(),
        }
    }

    /// Short human text for reports and logs: `"coil 7 = true"`,
    /// `"holding 100 = 215"`, `"holding 100..101 = [16812, 0]"`.
    pub fn describe(&self) -> String {
        let (table, values) = match self {
            Write::SingleCoil { value, .. } => ("coil", value.to_string()),
            Write::SingleRegister { value, .. } => ("holding", value.to_string()),
            Write::MultipleCoils { values, .. } => ("coil", list(values)),
            Write::MultipleRegisters { values, .. } => ("holding", list(values)),
        };
        let first = u32::from(self.address());
        let last = first + (self.count().max(1) as u32) - 1;
        if last == first {
            format!("{table} {first} = {values}")
        } else {
            format!("{table} {first}..{last} = {values}")
        }
    }
}

impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// `[a, b, c]`, eliding after [`DESCRIBE_VALUES`] values.
fn list<T: fmt::Display>(values: &[T]) -> String {
    let mut s = String::from("[");
    for (i, v) in values.iter().take(DESCRIBE_VALUES).enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&v.to_string());
    }
    if values.len() > DESCRIBE_VALUES {
        s.push_str(&format!(", … {} more", values.len() - DESCRIBE_VALUES));
    }
    s.push(']');
    s
}

/// Why a body can never succeed: becomes a `rejected` outcome with this text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject(pub String);

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Reject {}

macro_rules! reject {
    ($($arg:tt)*) => {
        return Err(Reject(format!($($arg)*)))
    };
}

/// Turns a C2D body into the writes to perform on `device`, in order.
///
/// `device_name` is only used in messages. Either every write of the body is
/// returned or the body is rejected as a whole.
pub fn parse_body(body: &[u8], device_name: &str, device: &DeviceConfig) -> Result<Vec<Write>, Reject> {
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => reject!(
            "body is not UTF-8 text (invalid byte at offset {}); expected JSON such as {POINT_EXAMPLE}",
            e.valid_up_to()
        ),
    };
    if text.trim().is_empty() {
        reject!("body is empty; expected JSON such as {POINT_EXAMPLE}");
    }
    let json: Json = match serde_json::from_str(text) {
        Ok(j) => j,
        Err(e) => reject!("body is not valid JSON ({e}); expected e.g. {POINT_EXAMPLE}"),
    };
    let entries = match json {
        Json::Object(entries) => entries,
        other => reject!("body must be a JSON object such as {POINT_EXAMPLE}, got {} ({})", show(&other), kind(&other)),
    };
    let body = Body::new(&entries)?;

    if body.get("fc").is_some() {
        if let Some(k) = ["point", "points"].into_iter().find(|k| body.get(k).is_some()) {
            reject!("body mixes a raw Modbus write (\"fc\") with a point write ({k:?}); send one or the other");
        }
        if !device.allow_raw {
            reject!("raw Modbus bodies are not allowed for device {device_name} (allow_raw = false)");
        }
        return parse_raw(&body);
    }
    match (body.get("point"), body.get("points")) {
        (Some(_), Some(_)) => {
            reject!("body has both \"point\" and \"points\"; use either {POINT_EXAMPLE} or {POINTS_EXAMPLE}")
        }
        (Some(name), None) => {
            body.only(&["point", "value"], "a point write takes only \"point\" and \"value\"")?;
            let name = match name {
                Json::Other(Value::String(s)) => s,
                other => reject!("\"point\" must be a point name (a string), got {} ({})", show(other), kind(other)),
            };
            let Some(value) = body.get("value") else {
                reject!("body names point {} but has no \"value\"", quote(name));
            };
            let point = lookup(name, device_name, device)?;
            Ok(vec![encode_point(name, point, value)?])
        }
        (None, Some(points)) => {
            body.only(&["points"], "a multi-point write takes only \"points\", with each value inside it")?;
            let points = match points {
                Json::Object(p) => p,
                other => reject!(
                    "\"points\" must be an object of point names and values such as {POINTS_EXAMPLE}, got {} ({})",
                    show(other),
                    kind(other)
                ),
            };
            if points.is_empty() {
                reject!("\"points\" is empty; name at least one point, e.g. {POINTS_EXAMPLE}");
            }
            if let Some(dup) = first_duplicate(points) {
                reject!("point {} appears twice in \"points\"", quote(dup));
            }
            // Look every name up before encoding, so an unknown name is
            // reported as such even after an invalid value.
            let points = points
                .iter()
                .map(|(name, value)| Ok((name, lookup(name, device_name, device)?, value)))
                .collect::<Result<Vec<_>, Reject>>()?;
            points.into_iter().map(|(name, point, value)| encode_point(name, point, value)).collect()
        }
        (None, None) => {
            if entries.is_empty() {
                reject!("body is an empty JSON object; expected e.g. {POINT_EXAMPLE}");
            }
            if body.get("value").is_some() {
                reject!("body has a \"value\" but no \"point\" naming what to write, e.g. {POINT_EXAMPLE}");
            }
            if body.get("address").is_some() || body.get("values").is_some() {
                reject!("body looks like a raw Modbus write but has no \"fc\" (function code 5, 6, 15 or 16)");
            }
            reject!(
                "body is neither a point write ({POINT_EXAMPLE} or {POINTS_EXAMPLE}) nor a raw Modbus write ({{\"fc\": 6, \"address\": 100, \"value\": 7}}); it has the key(s) {}",
                key_list(&entries)
            )
        }
    }
}

/// The top-level object of a body, duplicates already refused.
struct Body<'a> {
    entries: &'a [(String, Json)],
}

impl<'a> Body<'a> {
    fn new(entries: &'a [(String, Json)]) -> Result<Self, Reject> {
        if let Some(dup) = first_duplicate(entries) {
            reject!("key {} appears twice in the body", quote(dup));
        }
        Ok(Body { entries })
    }

    fn get(&self, key: &str) -> Option<&'a Json> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Refuses the first key not in `allowed`. `id` is always allowed: with
    /// a plain MQTT broker it carries the message id (read by the hub link).
    fn only(&self, allowed: &[&str], hint: &str) -> Result<(), Reject> {
        match self.entries.iter().find(|(k, _)| k != "id" && !allowed.contains(&k.as_str())) {
            Some((k, _)) => reject!("unknown key {} in the body ({hint})", quote(k)),
            None => Ok(()),
        }
    }
}

fn first_duplicate<V>(entries: &[(String, V)]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    entries.iter().map(|(k, _)| k.as_str()).find(|k| !seen.insert(*k))
}

fn key_list(entries: &[(String, Json)]) -> String {
    let mut names: Vec<String> = entries.iter().take(LIST_POINTS).map(|(k, _)| quote(k)).collect();
    if entries.len() > LIST_POINTS {
        names.push(format!("and {} more", entries.len() - LIST_POINTS));
    }
    names.join(", ")
}

/// The device's point called `name`, or a message listing the known ones.
fn lookup<'d>(name: &str, device_name: &str, device: &'d DeviceConfig) -> Result<&'d PointConfig, Reject> {
    if let Some(p) = device.points.get(name) {
        return Ok(p);
    }
    if device.points.is_empty() {
        reject!("device {device_name} has no point {}: it has no points configured", quote(name));
    }
    let known: Vec<&str> = device.points.keys().take(LIST_POINTS).map(String::as_str).collect();
    let more = device.points.len().saturating_sub(LIST_POINTS);
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    reject!("device {device_name} has no point {} (known points: {}{more})", quote(name), known.join(", "))
}

/// The write for one point and its JSON value.
fn encode_point(name: &str, point: &PointConfig, value: &Json) -> Result<Write, Reject> {
    let qname = quote(name);
    match point.table {
        Table::Input => {
            reject!("point {qname} is in the read-only input table and cannot be written")
        }
        Table::Discrete => {
            reject!("point {qname} is in the read-only discrete input table and cannot be written")
        }
        Table::Coil if point.ty != PointType::Bool => reject!(
            "point {qname} has type {} but is in the coil table; only bool points can be coils",
            type_name(point.ty)
        ),
        Table::Holding if point.ty == PointType::Bool => {
            reject!("point {qname} has type bool but is in the holding table; bool points must be coils")
        }
        Table::Coil | Table::Holding => {}
    }
    let width = u32::from(point.ty.width());
    if u32::from(point.address) + width - 1 > u32::from(u16::MAX) {
        reject!(
            "point {qname} at address {} needs {width} registers and runs past the last address 65535",
            point.address
        );
    }

    if point.ty == PointType::Bool {
        return match value {
            Json::Other(Value::Bool(b)) => Ok(Write::SingleCoil { address: point.address, value: *b }),
            other => {
                reject!("point {qname} is a coil and expects true or false, got {} ({})", show(other), kind(other))
            }
        };
    }

    let number = match value {
        Json::Other(Value::Number(n)) => n,
        other => reject!(
            "point {qname} (type {}) expects a number, got {} ({})",
            type_name(point.ty),
            show(other),
            kind(other)
        ),
    };
    // JSON numbers are finite; serde_json only yields None for
    // arbitrary-precision numbers, which this crate does not enable.
    let Some(v) = number.as_f64() else {
        reject!("point {qname}: value {number} is not a number this gateway can handle");
    };

    // Limits apply to the engineering value, before anything else.
    let limits = || match (point.min, point.max) {
        (Some(lo), Some(hi)) => format!("allowed {lo} to {hi}"),
        (Some(lo), None) => format!("allowed at least {lo}"),
        (None, Some(hi)) => format!("allowed at most {hi}"),
        (None, None) => String::new(),
    };
    if let Some(lo) = point.min {
        if v < lo {
            reject!("value {number} for point {qname} is below its minimum {lo} ({})", limits());
        }
    }
    if let Some(hi) = point.max {
        if v > hi {
            reject!("value {number} for point {qname} is above its maximum {hi} ({})", limits());
        }
    }

    let ty = type_name(point.ty);
    let scaled = || match point.scale {
        Some(s) => format!(" with scale {s}"),
        None => String::new(),
    };
    let values = match encode::encode_number(point.ty, v, point.scale, point.word_order) {
        Ok(values) => values,
        Err(EncodeError::NotInteger) => {
            reject!("point {qname} (type {ty}) expects an integer, got {number}")
        }
        Err(EncodeError::NotFinite) => {
            reject!("value {number} for point {qname}{} gives no finite raw value", scaled())
        }
        Err(EncodeError::OutOfRange { raw }) => {
            let raw = if point.scale.is_some() { format!(" (raw {raw}{})", scaled()) } else { String::new() };
            reject!("value {number} for point {qname}{raw} does not fit type {ty} ({})", encode::range_text(point.ty))
        }
        Err(EncodeError::NotRegisters) => {
            reject!("point {qname} has type {ty}, which is not a register type")
        }
    };
    // With a scale the raw value is rounded, so the value the device ends up
    // with (raw * scale) can lie past a limit that is not a multiple of the
    // scale: the limits bound what is written, not only what was asked for.
    if let (Some(s), Some(_)) = (point.scale, encode::integer_range(point.ty)) {
        let raw = (v / s).round();
        // The limit in raw units, allowing a millionth of a step of noise;
        // dividing by a negative scale turns "above" into "below".
        let past = |bound: f64, upper: bool| {
            let b = bound / s;
            let tol = 1e-6 + b.abs() * 1e-12;
            if (s > 0.0) == upper {
                raw > b + tol
            } else {
                raw < b - tol
            }
        };
        if point.max.is_some_and(|hi| past(hi, true)) || point.min.is_some_and(|lo| past(lo, false)) {
            reject!(
                "value {number} for point {qname} would be written as raw {raw} (= {} with scale {s}), outside its limits ({})",
                raw * s,
                limits()
            );
        }
    }
    Ok(match values.as_slice() {
        [one] => Write::SingleRegister { address: point.address, value: *one },
        _ => Write::MultipleRegisters { address: point.address, values },
    })
}

fn type_name(ty: PointType) -> &'static str {
    match ty {
        PointType::Bool => "bool",
        PointType::U16 => "u16",
        PointType::I16 => "i16",
        PointType::U32 => "u32",
        PointType::I32 => "i32",
        PointType::F32 => "f32",
    }
}

/// A raw `{"fc": ..}` body (the caller checked `allow_raw`).
fn parse_raw(body: &Body) -> Result<Vec<Write>, Reject> {
    body.only(
        &["fc", "address", "value", "values"],
        "a raw write takes only \"fc\", \"address\" and \"value\" or \"values\"",
    )?;
    let fc_json = body.get("fc").unwrap_or(&Json::Other(Value::Null));
    let fc = match integer(fc_json) {
        Some(fc) => fc,
        None => reject!("\"fc\" must be a Modbus function code (5, 6, 15 or 16), got {}", show(fc_json)),
    };
    match fc {
        5 | 6 | 15 | 16 => {}
        1..=4 => {
            reject!("fc {fc} is a read function; only writes are accepted (fc 5, 6, 15 or 16)")
        }
        _ => reject!("fc {fc} is not supported; use fc 5, 6, 15 or 16"),
    }

    let address = match body.get("address") {
        None => reject!("raw write fc {fc} needs an \"address\" (0..=65535)"),
        Some(a) => match integer(a) {
            Some(n) if (0..=i128::from(u16::MAX)).contains(&n) => n as u16,
            _ => reject!("\"address\" must be an integer 0..=65535, got {}", show(a)),
        },
    };

    let single = fc == 5 || fc == 6;
    let (want, other) = if single { ("value", "values") } else { ("values", "value") };
    if body.get(other).is_some() {
        let hint = match fc {
            5 => "fc 5 writes one coil with \"value\"; use fc 15 with \"values\" for several",
            6 => "fc 6 writes one register with \"value\"; use fc 16 with \"values\" for several",
            15 => "fc 15 writes coils from a \"values\" array; use fc 5 with \"value\" for one",
            _ => "fc 16 writes registers from a \"values\" array; use fc 6 with \"value\" for one",
        };
        reject!("unexpected key {other:?} ({hint})");
    }
    let Some(payload) = body.get(want) else {
        reject!("raw write fc {fc} needs {want:?}");
    };

    match fc {
        5 => Ok(vec![Write::SingleCoil { address, value: coil(payload, "fc 5 \"value\"")? }]),
        6 => Ok(vec![Write::SingleRegister { address, value: register(payload, "fc 6 \"value\"")? }]),
        _ => {
            let items = match payload {
                Json::Other(Value::Array(items)) => items,
                other => reject!("\"values\" of fc {fc} must be an array, got {} ({})", show(other), kind(other)),
            };
            let max = if fc == 15 { MAX_WRITE_COILS } else { MAX_WRITE_REGISTERS };
            let what = if fc == 15 { "coils" } else { "registers" };
            if items.is_empty() {
                reject!("\"values\" of fc {fc} is empty; give at least one value");
            }
            if items.len() > max {
                reject!("\"values\" of fc {fc} has {} {what}, more than the {max} one request can carry", items.len());
            }
            let last = u32::from(address) + items.len() as u32 - 1;
            if last > u32::from(u16::MAX) {
                reject!("fc {fc} at address {address} with {} values runs past the last address 65535", items.len());
            }
            let at = |i: usize| format!("fc {fc} \"values\"[{i}]");
            if fc == 15 {
                let values = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| coil(&Json::Other(v.clone()), &at(i)))
                    .collect::<Result<_, _>>()?;
                Ok(vec![Write::MultipleCoils { address, values }])
            } else {
                let values = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| register(&Json::Other(v.clone()), &at(i)))
                    .collect::<Result<_, _>>()?;
                Ok(vec![Write::MultipleRegisters { address, values }])
            }
        }
    }
}

/// A raw coil value: JSON `true`/`false` only.
fn coil(v: &Json, what: &str) -> Result<bool, Reject> {
    match v {
        Json::Other(Value::Bool(b)) => Ok(*b),
        other => reject!("{what} must be true or false (numbers such as 0/1 are not accepted), got {}", show(other)),
    }
}

/// A raw register value: an integer 0..=65535.
fn register(v: &Json, what: &str) -> Result<u16, Reject> {
    match integer(v) {
        Some(n) if (0..=i128::from(u16::MAX)).contains(&n) => Ok(n as u16),
        _ => reject!("{what} must be an integer 0..=65535, got {}", show(v)),
    }
}

/// A JSON number with an integer value (`7` or `7.0`), else `None`.
fn integer(v: &Json) -> Option<i128> {
    let Json::Other(Value::Number(n)) = v else {
        return None;
    };
    if let Some(u) = n.as_u64() {
        return Some(i128::from(u));
    }
    if let Some(i) = n.as_i64() {
        return Some(i128::from(i));
    }
    let f = n.as_f64()?;
    // Bounded well inside i128; anything larger is out of every range here.
    (f.fract() == 0.0 && f.abs() < 1e18).then_some(f as i128)
}

/// A body fragment for a message, truncated.
fn show(v: &Json) -> String {
    match v {
        Json::Object(_) => "an object".to_string(),
        Json::Other(v) => truncate(&v.to_string()),
    }
}

/// A name from the body, quoted and truncated.
fn quote(s: &str) -> String {
    truncate(&format!("{s:?}"))
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Object(_) => "an object",
        Json::Other(Value::Null) => "null",
        Json::Other(Value::Bool(_)) => "a boolean",
        Json::Other(Value::Number(_)) => "a number",
        Json::Other(Value::String(_)) => "a string",
        Json::Other(Value::Array(_)) => "an array",
        Json::Other(Value::Object(_)) => "an object",
    }
}

/// A JSON value whose objects keep their entries in document order,
/// duplicates included. Non-object values are plain `serde_json` values
/// (objects nested in arrays are not ordered, nothing here needs them).
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Object(Vec<(String, Json)>),
    Other(Value),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Other(Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Other(Value::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Other(Value::from(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        // from_f64 is None only for NaN and infinities, which JSON cannot hold.
        Ok(Json::Other(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Other(Value::String(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::Other(Value::String(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Other(Value::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Other(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        Json::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<Value>()? {
            items.push(v);
        }
        Ok(Json::Other(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<Json>()?;
            entries.push((key, value));
        }
        Ok(Json::Object(entries))
    }
}

#[cfg(test)]
#[path = "modbus_tests.rs"]
mod tests;
