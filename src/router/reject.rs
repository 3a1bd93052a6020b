//! Why a Modbus body can never succeed ([`Reject`]): it becomes a `rejected`
//! outcome with the Display text as the result report's `detail`, so each
//! message is written for an operator and names what to send instead.
//!
//! Fragments of the body are kept as they are quoted (truncated, see
//! `quote` and `show` in the parent module): a reject carries what the
//! operator reads, never a whole body.

use super::encode;
use crate::config::PointType;
use serde_json::Number;
use std::fmt;

const POINT_EXAMPLE: &str = r#"{"point": "NAME", "value": 21.5}"#;
const POINTS_EXAMPLE: &str = r#"{"points": {"NAME": 21.5, "OTHER": true}}"#;

/// Why a body can never succeed: becomes a `rejected` outcome with this text.
///
/// `point` and `key` hold names quoted as in the text and `got` a body
/// fragment as shown (both truncated); `kind` says what JSON type it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Reject {
    // ---- the body as a whole ----
    #[error("body is not UTF-8 text (invalid byte at offset {offset}); expected JSON such as {POINT_EXAMPLE}")]
    NotUtf8 { offset: usize },
    #[error("body is empty; expected JSON such as {POINT_EXAMPLE}")]
    Empty,
    /// `error` is serde_json's description (it is not `Clone`).
    #[error("body is not valid JSON ({error}); expected e.g. {POINT_EXAMPLE}")]
    NotJson { error: String },
    #[error("body must be a JSON object such as {POINT_EXAMPLE}, got {got} ({kind})")]
    NotObject { got: String, kind: &'static str },
    #[error("key {key} appears twice in the body")]
    DuplicateKey { key: String },
    #[error("unknown key {key} in the body ({hint})")]
    UnknownKey { key: String, hint: &'static str },
    #[error("body mixes a raw Modbus write (\"fc\") with a point write ({key:?}); send one or the other")]
    RawAndPoint { key: &'static str },
    #[error("raw Modbus bodies are not allowed for device {device} (allow_raw = false)")]
    RawNotAllowed { device: String },
    #[error("body has both \"point\" and \"points\"; use either {POINT_EXAMPLE} or {POINTS_EXAMPLE}")]
    PointAndPoints,
    #[error("body is an empty JSON object; expected e.g. {POINT_EXAMPLE}")]
    EmptyObject,
    #[error("body has a \"value\" but no \"point\" naming what to write, e.g. {POINT_EXAMPLE}")]
    ValueWithoutPoint,
    #[error("body looks like a raw Modbus write but has no \"fc\" (function code 5, 6, 15 or 16)")]
    RawWithoutFc,
    /// `keys`: the first few keys, quoted; `total`: how many the body has.
    #[error(
        "body is neither a point write ({POINT_EXAMPLE} or {POINTS_EXAMPLE}) nor a raw Modbus write ({{\"fc\": 6, \"address\": 100, \"value\": 7}}); it has the key(s) {}",
        key_list(.keys, *.total)
    )]
    NeitherWrite { keys: Vec<String>, total: usize },

    // ---- point writes ----
    #[error("\"point\" must be a point name (a string), got {got} ({kind})")]
    PointNotString { got: String, kind: &'static str },
    #[error("body names point {point} but has no \"value\"")]
    NoValue { point: String },
    #[error("\"points\" must be an object of point names and values such as {POINTS_EXAMPLE}, got {got} ({kind})")]
    PointsNotObject { got: String, kind: &'static str },
    #[error("\"points\" is empty; name at least one point, e.g. {POINTS_EXAMPLE}")]
    PointsEmpty,
    #[error("\"read\" must be a non-empty list of point names, e.g. {{\"read\": [\"temperature\"]}}")]
    BadRead,
    #[error("a read, not a write")]
    ReadNotWrite,
    #[error("point {point} appears twice in \"points\"")]
    DuplicatePoint { point: String },
    #[error("device {device} has no point {point}: it has no points configured")]
    NoPoints { device: String, point: String },
    /// `known`: the first few point names; `more`: how many are not listed.
    #[error("device {device} has no point {point} (known points: {}{})", .known.join(", "), and_more(*.more))]
    UnknownPoint { device: String, point: String, known: Vec<String>, more: usize },
    #[error("point {point} is in the read-only input table and cannot be written")]
    InputTable { point: String },
    #[error("point {point} is in the read-only discrete input table and cannot be written")]
    DiscreteTable { point: String },
    #[error("point {point} has type {} but is in the coil table; only bool points can be coils", type_name(*.ty))]
    CoilNotBool { point: String, ty: PointType },
    #[error("point {point} has type bool but is in the holding table; bool points must be coils")]
    BoolNotCoil { point: String },
    #[error("point {point} at address {address} needs {width} registers and runs past the last address 65535")]
    PointPastEnd { point: String, address: u16, width: u32 },
    #[error("point {point} is a coil and expects true or false, got {got} ({kind})")]
    NotBool { point: String, got: String, kind: &'static str },
    #[error("point {point} (type {}) expects a number, got {got} ({kind})", type_name(*.ty))]
    NotNumber { point: String, ty: PointType, got: String, kind: &'static str },
    #[error("point {point}: value {number} is not a number this gateway can handle")]
    UnusableNumber { point: String, number: Number },
    #[error("value {number} for point {point} is below its minimum {min} ({limits})")]
    BelowMin { point: String, number: Number, min: f64, limits: Limits },
    #[error("value {number} for point {point} is above its maximum {max} ({limits})")]
    AboveMax { point: String, number: Number, max: f64, limits: Limits },
    #[error("point {point} (type {}) expects an integer, got {number}", type_name(*.ty))]
    NotInteger { point: String, ty: PointType, number: Number },
    #[error("value {number} for point {point}{} gives no finite raw value", scaled(*.scale))]
    NoFiniteRaw { point: String, number: Number, scale: Option<f64> },
    /// `raw`: the raw value, shown when the point has a scale.
    #[error(
        "value {number} for point {point}{} does not fit type {} ({})",
        raw_text(*.raw, *.scale),
        type_name(*.ty),
        encode::range_text(*.ty)
    )]
    DoesNotFit { point: String, number: Number, raw: f64, scale: Option<f64>, ty: PointType },
    #[error("point {point} has type {}, which is not a register type", type_name(*.ty))]
    NotRegisterType { point: String, ty: PointType },
    /// With a scale the raw value is rounded: what the device would hold
    /// (`raw * scale`) lies past a limit.
    #[error(
        "value {number} for point {point} would be written as raw {raw} (= {} with scale {scale}), outside its limits ({limits})",
        .raw * .scale
    )]
    RoundedPastLimit { point: String, number: Number, raw: f64, scale: f64, limits: Limits },

    // ---- raw writes ----
    /// `got`: the `fc` as shown (null when absent).
    #[error("\"fc\" must be a Modbus function code (5, 6, 15 or 16), got {got}")]
    BadFc { got: String },
    #[error("fc {fc} is a read function; only writes are accepted (fc 5, 6, 15 or 16)")]
    ReadFc { fc: i128 },
    #[error("fc {fc} is not supported; use fc 5, 6, 15 or 16")]
    UnsupportedFc { fc: i128 },
    #[error("raw write fc {fc} needs an \"address\" (0..=65535)")]
    NoAddress { fc: u8 },
    #[error("\"address\" must be an integer 0..=65535, got {got}")]
    BadAddress { got: String },
    /// `value` given where `values` belongs, or the other way round.
    #[error("unexpected key {key:?} ({hint})")]
    WrongValueKey { key: &'static str, hint: &'static str },
    #[error("raw write fc {fc} needs {key:?}")]
    NoValues { fc: u8, key: &'static str },
    #[error("\"values\" of fc {fc} must be an array, got {got} ({kind})")]
    ValuesNotArray { fc: u8, got: String, kind: &'static str },
    #[error("\"values\" of fc {fc} is empty; give at least one value")]
    ValuesEmpty { fc: u8 },
    /// `what`: "coils" or "registers".
    #[error("\"values\" of fc {fc} has {count} {what}, more than the {max} one request can carry")]
    TooManyValues { fc: u8, count: usize, what: &'static str, max: usize },
    #[error("fc {fc} at address {address} with {count} values runs past the last address 65535")]
    RawPastEnd { fc: u8, address: u16, count: usize },
    #[error("{at} must be true or false (numbers such as 0/1 are not accepted), got {got}")]
    NotCoilValue { at: RawValue, got: String },
    #[error("{at} must be an integer 0..=65535, got {got}")]
    NotRegisterValue { at: RawValue, got: String },
}

/// A point's `min` / `max`, as a reject states them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.min, self.max) {
            (Some(lo), Some(hi)) => write!(f, "allowed {lo} to {hi}"),
            (Some(lo), None) => write!(f, "allowed at least {lo}"),
            (None, Some(hi)) => write!(f, "allowed at most {hi}"),
            (None, None) => Ok(()),
        }
    }
}

/// Which value of a raw write: `fc 6 "value"`, or `fc 16 "values"[3]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawValue {
    pub fc: u8,
    /// Index into `"values"`; `None`: the single `"value"`.
    pub index: Option<usize>,
}

impl fmt::Display for RawValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            None => write!(f, "fc {} \"value\"", self.fc),
            Some(i) => write!(f, "fc {} \"values\"[{i}]", self.fc),
        }
    }
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

fn key_list(keys: &[String], total: usize) -> String {
    let mut names = keys.to_vec();
    if total > keys.len() {
        names.push(format!("and {} more", total - keys.len()));
    }
    names.join(", ")
}

fn and_more(more: usize) -> String {
    if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    }
}

fn scaled(scale: Option<f64>) -> String {
    match scale {
        Some(s) => format!(" with scale {s}"),
        None => String::new(),
    }
}

fn raw_text(raw: f64, scale: Option<f64>) -> String {
    if scale.is_some() {
        format!(" (raw {raw}{})", scaled(scale))
    } else {
        String::new()
    }
}
