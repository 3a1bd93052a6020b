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
pub use super::reject::{Limits, RawValue, Reject};
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

/// Turns a C2D body into the writes to perform on `device`, in order.
///
/// `device_name` is only used in messages. Either every write of the body is
/// returned or the body is rejected as a whole.
pub fn parse_body(body: &[u8], device_name: &str, device: &DeviceConfig) -> Result<Vec<Write>, Reject> {
    match parse_command(body, device_name, device)? {
        Command::Writes(w) => Ok(w),
        Command::Read(_) => Err(Reject::ReadNotWrite),
    }
}

/// What a Modbus body asks for: writes, or a read of points
/// (`{"read": ["setpoint", "temperature"]}`; the report carries the values).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Writes(Vec<Write>),
    Read(Vec<(String, PointConfig)>),
}

/// [`parse_body`], reads included.
pub fn parse_command(body: &[u8], device_name: &str, device: &DeviceConfig) -> Result<Command, Reject> {
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => return Err(Reject::NotUtf8 { offset: e.valid_up_to() }),
    };
    if text.trim().is_empty() {
        return Err(Reject::Empty);
    }
    let json: Json = match serde_json::from_str(text) {
        Ok(j) => j,
        Err(e) => return Err(Reject::NotJson { error: e.to_string() }),
    };
    let entries = match json {
        Json::Object(entries) => entries,
        other => return Err(Reject::NotObject { got: show(&other), kind: kind(&other) }),
    };
    let body = Body::new(&entries)?;
    if let Some(read) = body.get("read") {
        body.only(&["read"], "a read takes only \"read\", a list of point names")?;
        return parse_read(read, device_name, device).map(Command::Read);
    }
    parse_writes(&body, &entries, device_name, device).map(Command::Writes)
}

fn parse_read(read: &Json, device_name: &str, device: &DeviceConfig) -> Result<Vec<(String, PointConfig)>, Reject> {
    let Json::Other(Value::Array(names)) = read else { return Err(Reject::BadRead) };
    if names.is_empty() {
        return Err(Reject::BadRead);
    }
    let mut out: Vec<(String, PointConfig)> = Vec::with_capacity(names.len());
    for n in names {
        let Value::String(name) = n else { return Err(Reject::BadRead) };
        if out.iter().any(|(seen, _)| seen == name) {
            return Err(Reject::DuplicatePoint { point: quote(name) });
        }
        out.push((name.clone(), lookup(name, device_name, device)?.clone()));
    }
    Ok(out)
}

fn parse_writes(
    body: &Body<'_>,
    entries: &[(String, Json)],
    device_name: &str,
    device: &DeviceConfig,
) -> Result<Vec<Write>, Reject> {
    if body.get("fc").is_some() {
        if let Some(k) = ["point", "points"].into_iter().find(|k| body.get(k).is_some()) {
            return Err(Reject::RawAndPoint { key: k });
        }
        if !device.allow_raw {
            return Err(Reject::RawNotAllowed { device: device_name.to_string() });
        }
        return parse_raw(body);
    }
    match (body.get("point"), body.get("points")) {
        (Some(_), Some(_)) => Err(Reject::PointAndPoints),
        (Some(name), None) => {
            body.only(&["point", "value"], "a point write takes only \"point\" and \"value\"")?;
            let name = match name {
                Json::Other(Value::String(s)) => s,
                other => return Err(Reject::PointNotString { got: show(other), kind: kind(other) }),
            };
            let Some(value) = body.get("value") else {
                return Err(Reject::NoValue { point: quote(name) });
            };
            let point = lookup(name, device_name, device)?;
            Ok(vec![encode_point(name, point, value)?])
        }
        (None, Some(points)) => {
            body.only(&["points"], "a multi-point write takes only \"points\", with each value inside it")?;
            let points = match points {
                Json::Object(p) => p,
                other => return Err(Reject::PointsNotObject { got: show(other), kind: kind(other) }),
            };
            if points.is_empty() {
                return Err(Reject::PointsEmpty);
            }
            if let Some(dup) = first_duplicate(points) {
                return Err(Reject::DuplicatePoint { point: quote(dup) });
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
                return Err(Reject::EmptyObject);
            }
            if body.get("value").is_some() {
                return Err(Reject::ValueWithoutPoint);
            }
            if body.get("address").is_some() || body.get("values").is_some() {
                return Err(Reject::RawWithoutFc);
            }
            Err(Reject::NeitherWrite {
                keys: entries.iter().take(LIST_POINTS).map(|(k, _)| quote(k)).collect(),
                total: entries.len(),
            })
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
            return Err(Reject::DuplicateKey { key: quote(dup) });
        }
        Ok(Body { entries })
    }

    fn get(&self, key: &str) -> Option<&'a Json> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Refuses the first key not in `allowed`. `id` is always allowed: with
    /// a plain MQTT broker it carries the message id (read by the hub link).
    fn only(&self, allowed: &[&str], hint: &'static str) -> Result<(), Reject> {
        match self.entries.iter().find(|(k, _)| k != "id" && !allowed.contains(&k.as_str())) {
            Some((k, _)) => Err(Reject::UnknownKey { key: quote(k), hint }),
            None => Ok(()),
        }
    }
}

fn first_duplicate<V>(entries: &[(String, V)]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    entries.iter().map(|(k, _)| k.as_str()).find(|k| !seen.insert(*k))
}

/// The device's point called `name`, or a message listing the known ones.
fn lookup<'d>(name: &str, device_name: &str, device: &'d DeviceConfig) -> Result<&'d PointConfig, Reject> {
    if let Some(p) = device.points.get(name) {
        return Ok(p);
    }
    if device.points.is_empty() {
        return Err(Reject::NoPoints { device: device_name.to_string(), point: quote(name) });
    }
    Err(Reject::UnknownPoint {
        device: device_name.to_string(),
        point: quote(name),
        known: device.points.keys().take(LIST_POINTS).cloned().collect(),
        more: device.points.len().saturating_sub(LIST_POINTS),
    })
}

/// The write for one point and its JSON value.
fn encode_point(name: &str, point: &PointConfig, value: &Json) -> Result<Write, Reject> {
    let qname = quote(name);
    match point.table {
        Table::Input => return Err(Reject::InputTable { point: qname }),
        Table::Discrete => return Err(Reject::DiscreteTable { point: qname }),
        Table::Coil if point.ty != PointType::Bool => return Err(Reject::CoilNotBool { point: qname, ty: point.ty }),
        Table::Holding if point.ty == PointType::Bool => return Err(Reject::BoolNotCoil { point: qname }),
        Table::Coil | Table::Holding => {}
    }
    let width = u32::from(point.ty.width());
    if u32::from(point.address) + width - 1 > u32::from(u16::MAX) {
        return Err(Reject::PointPastEnd { point: qname, address: point.address, width });
    }

    if point.ty == PointType::Bool {
        return match value {
            Json::Other(Value::Bool(b)) => Ok(Write::SingleCoil { address: point.address, value: *b }),
            other => return Err(Reject::NotBool { point: qname, got: show(other), kind: kind(other) }),
        };
    }

    let number = match value {
        Json::Other(Value::Number(n)) => n,
        other => return Err(Reject::NotNumber { point: qname, ty: point.ty, got: show(other), kind: kind(other) }),
    };
    // JSON numbers are finite; serde_json only yields None for
    // arbitrary-precision numbers, which this crate does not enable.
    let Some(v) = number.as_f64() else {
        return Err(Reject::UnusableNumber { point: qname, number: number.clone() });
    };

    // Limits apply to the engineering value, before anything else.
    let limits = Limits { min: point.min, max: point.max };
    if let Some(min) = point.min {
        if v < min {
            return Err(Reject::BelowMin { point: qname, number: number.clone(), min, limits });
        }
    }
    if let Some(max) = point.max {
        if v > max {
            return Err(Reject::AboveMax { point: qname, number: number.clone(), max, limits });
        }
    }

    let (ty, scale) = (point.ty, point.scale);
    let values = match encode::encode_number(point.ty, v, point.scale, point.word_order) {
        Ok(values) => values,
        Err(EncodeError::NotInteger) => return Err(Reject::NotInteger { point: qname, ty, number: number.clone() }),
        Err(EncodeError::NotFinite) => return Err(Reject::NoFiniteRaw { point: qname, number: number.clone(), scale }),
        Err(EncodeError::OutOfRange { raw }) => {
            return Err(Reject::DoesNotFit { point: qname, number: number.clone(), raw, scale, ty })
        }
        Err(EncodeError::NotRegisters) => return Err(Reject::NotRegisterType { point: qname, ty }),
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
            return Err(Reject::RoundedPastLimit { point: qname, number: number.clone(), raw, scale: s, limits });
        }
    }
    Ok(match values.as_slice() {
        [one] => Write::SingleRegister { address: point.address, value: *one },
        _ => Write::MultipleRegisters { address: point.address, values },
    })
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
        None => return Err(Reject::BadFc { got: show(fc_json) }),
    };
    let fc: u8 = match fc {
        5 | 6 | 15 | 16 => fc as u8,
        1..=4 => return Err(Reject::ReadFc { fc }),
        _ => return Err(Reject::UnsupportedFc { fc }),
    };

    let address = match body.get("address") {
        None => return Err(Reject::NoAddress { fc }),
        Some(a) => match integer(a) {
            Some(n) if (0..=i128::from(u16::MAX)).contains(&n) => n as u16,
            _ => return Err(Reject::BadAddress { got: show(a) }),
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
        return Err(Reject::WrongValueKey { key: other, hint });
    }
    let Some(payload) = body.get(want) else {
        return Err(Reject::NoValues { fc, key: want });
    };

    match fc {
        5 => Ok(vec![Write::SingleCoil { address, value: coil(payload, RawValue { fc, index: None })? }]),
        6 => Ok(vec![Write::SingleRegister { address, value: register(payload, RawValue { fc, index: None })? }]),
        _ => {
            let items = match payload {
                Json::Other(Value::Array(items)) => items,
                other => return Err(Reject::ValuesNotArray { fc, got: show(other), kind: kind(other) }),
            };
            let max = if fc == 15 { MAX_WRITE_COILS } else { MAX_WRITE_REGISTERS };
            let what = if fc == 15 { "coils" } else { "registers" };
            if items.is_empty() {
                return Err(Reject::ValuesEmpty { fc });
            }
            if items.len() > max {
                return Err(Reject::TooManyValues { fc, count: items.len(), what, max });
            }
            let last = u32::from(address) + items.len() as u32 - 1;
            if last > u32::from(u16::MAX) {
                return Err(Reject::RawPastEnd { fc, address, count: items.len() });
            }
            let at = |i: usize| RawValue { fc, index: Some(i) };
            if fc == 15 {
                let values = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| coil(&Json::Other(v.clone()), at(i)))
                    .collect::<Result<_, _>>()?;
                Ok(vec![Write::MultipleCoils { address, values }])
            } else {
                let values = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| register(&Json::Other(v.clone()), at(i)))
                    .collect::<Result<_, _>>()?;
                Ok(vec![Write::MultipleRegisters { address, values }])
            }
        }
    }
}

/// A raw coil value: JSON `true`/`false` only.
fn coil(v: &Json, at: RawValue) -> Result<bool, Reject> {
    match v {
        Json::Other(Value::Bool(b)) => Ok(*b),
        other => Err(Reject::NotCoilValue { at, got: show(other) }),
    }
}

/// A raw register value: an integer 0..=65535.
fn register(v: &Json, at: RawValue) -> Result<u16, Reject> {
    match integer(v) {
        Some(n) if (0..=i128::from(u16::MAX)).contains(&n) => Ok(n as u16),
        _ => Err(Reject::NotRegisterValue { at, got: show(v) }),
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
