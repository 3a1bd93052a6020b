//! IoT Hub MQTT property bags and the topics that carry them.
//!
//! IoT Hub puts a message's properties into the last level of its MQTT topic
//! as `k=v&k=v`, each key and value percent-encoded (a key without `=` has no
//! value, `+` is a literal plus). This module parses and builds those bags,
//! maps the device-bound system properties (`$.mid`, `$.exp`, `iothub-ack`,
//! ...) to [`C2dProperties`], and formats and parses the ISO 8601 expiry IoT
//! Hub uses. The hub emulator uses the encoding half, the hub link the parsing
//! half. Parsing is strict: a malformed escape, invalid UTF-8 or a bad `$.exp`
//! is an error rather than something silently passed on.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Everything except the RFC 3986 unreserved characters `A-Za-z0-9-._~` is
/// percent-encoded (`/` → `%2F`, `+` → `%2B`, `=` → `%3D`, `$` → `%24`).
pub const STRICT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Errors from parsing a property bag or a device-bound topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropBagError {
    #[error("topic {topic:?} is not this device's device-bound topic: expected it to start with {expected:?}")]
    WrongTopic { topic: String, expected: String },
    #[error("malformed percent escape at byte {offset} of property {segment:?} (expected '%' and two hex digits)")]
    BadEscape { segment: String, offset: usize },
    #[error("property {segment:?} is not valid UTF-8 once percent-decoded")]
    NotUtf8 { segment: String },
    #[error("property {segment:?} has an empty name")]
    EmptyKey { segment: String },
    #[error("system property {key} appears more than once in the property bag")]
    DuplicateSystemProperty { key: &'static str },
    #[error("invalid $.exp {value:?}: {reason} (expected UTC like 2024-01-31T12:00:00.0000000Z)")]
    BadExpiry { value: String, reason: &'static str },
}

/// Percent-encodes one key or value with [`STRICT`].
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, STRICT).to_string()
}

/// Why [`decode_component`] failed. Carries no part of the input, so callers
/// handling secrets can report it without leaking them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// `%` not followed by two hex digits, at this byte offset.
    BadEscape(usize),
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

/// Strict percent-decoding: `%XX` (either hex case) becomes the byte, every
/// other character (including `+`) stays as it is; a malformed escape or
/// invalid UTF-8 is an error.
pub(crate) fn decode_component(raw: &str) -> Result<String, DecodeError> {
    let b = raw.as_bytes();
    if !b.contains(&b'%') {
        return Ok(raw.to_owned());
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = b.get(i + 1).and_then(|c| hex_value(*c));
            let lo = b.get(i + 2).and_then(|c| hex_value(*c));
            match (hi, lo) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                _ => return Err(DecodeError::BadEscape(i)),
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::NotUtf8)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A raw property for error messages, cut to a length fit for a log line.
fn snippet(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Parses a property bag `k=v&k&k=v`. Keys and values are percent-decoded,
/// `+` stays a plus, a key without `=` gets `None`, empty segments (`a=1&&`)
/// are skipped, the order is kept, repeated keys are all kept.
pub fn parse(bag: &str) -> Result<Vec<(String, Option<String>)>, PropBagError> {
    let mut props = Vec::new();
    for segment in bag.split('&').filter(|s| !s.is_empty()) {
        let (raw_key, raw_value) = match segment.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (segment, None),
        };
        let decode = |raw: &str, base: usize| {
            decode_component(raw).map_err(|e| match e {
                DecodeError::BadEscape(offset) => {
                    PropBagError::BadEscape { segment: snippet(segment), offset: base + offset }
                }
                DecodeError::NotUtf8 => PropBagError::NotUtf8 { segment: snippet(segment) },
            })
        };
        let key = decode(raw_key, 0)?;
        if key.is_empty() {
            return Err(PropBagError::EmptyKey { segment: snippet(segment) });
        }
        let value = raw_value.map(|v| decode(v, raw_key.len() + 1)).transpose()?;
        props.push((key, value));
    }
    Ok(props)
}

/// Builds a property bag with strict percent-encoding. Keys must be
/// non-empty (an empty key cannot be parsed back). `Some("")` gives `k=`,
/// `None` gives `k`.
pub fn encode(props: &[(String, Option<String>)]) -> String {
    let mut out = String::new();
    for (i, (key, value)) in props.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.extend(utf8_percent_encode(key, STRICT));
        if let Some(value) = value {
            out.push('=');
            out.extend(utf8_percent_encode(value, STRICT));
        }
    }
    out
}

/// System property keys of a device-bound (C2D) message.
pub mod keys {
    pub const MESSAGE_ID: &str = "$.mid";
    pub const CORRELATION_ID: &str = "$.cid";
    pub const CONTENT_TYPE: &str = "$.ct";
    pub const CONTENT_ENCODING: &str = "$.ce";
    pub const EXPIRY: &str = "$.exp";
    pub const USER_ID: &str = "$.uid";
    pub const TO: &str = "$.to";
    pub const ACK: &str = "iothub-ack";
}

/// The properties of a cloud-to-device message: system properties in their
/// own fields, everything else in `app` (in topic order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct C2dProperties {
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub expiry: Option<SystemTime>,
    /// `iothub-ack`: `none`, `positive`, `negative` or `full`.
    pub ack: Option<String>,
    pub user_id: Option<String>,
    pub to: Option<String>,
    pub app: Vec<(String, Option<String>)>,
}

/// The topic filter to subscribe to for C2D messages (QoS 1).
pub fn devicebound_filter(device_id: &str) -> String {
    format!("devices/{device_id}/messages/devicebound/#")
}

fn devicebound_prefix(device_id: &str) -> String {
    format!("devices/{device_id}/messages/devicebound/")
}

/// Parses the topic of a delivered C2D message,
/// `devices/{device_id}/messages/devicebound/{property bag}`.
///
/// A system property given twice is an error (the message id must be
/// unambiguous); a system property without `=` counts as absent. Any other key
/// (including unknown `$.`/`iothub-` keys) is an application property.
pub fn parse_devicebound(topic: &str, device_id: &str) -> Result<C2dProperties, PropBagError> {
    let expected = devicebound_prefix(device_id);
    let bag = topic
        .strip_prefix(expected.as_str())
        .ok_or_else(|| PropBagError::WrongTopic { topic: snippet(topic), expected })?;
    let mut p = C2dProperties::default();
    let mut seen: Vec<&'static str> = Vec::new();
    for (key, value) in parse(bag)? {
        let (name, slot): (&'static str, &mut Option<String>) = match key.as_str() {
            keys::MESSAGE_ID => (keys::MESSAGE_ID, &mut p.message_id),
            keys::CORRELATION_ID => (keys::CORRELATION_ID, &mut p.correlation_id),
            keys::CONTENT_TYPE => (keys::CONTENT_TYPE, &mut p.content_type),
            keys::CONTENT_ENCODING => (keys::CONTENT_ENCODING, &mut p.content_encoding),
            keys::USER_ID => (keys::USER_ID, &mut p.user_id),
            keys::TO => (keys::TO, &mut p.to),
            keys::ACK => (keys::ACK, &mut p.ack),
            keys::EXPIRY => {
                if seen.contains(&keys::EXPIRY) {
                    return Err(PropBagError::DuplicateSystemProperty { key: keys::EXPIRY });
                }
                seen.push(keys::EXPIRY);
                p.expiry = value.as_deref().map(parse_expiry).transpose()?;
                continue;
            }
            _ => {
                p.app.push((key, value));
                continue;
            }
        };
        if seen.contains(&name) {
            return Err(PropBagError::DuplicateSystemProperty { key: name });
        }
        seen.push(name);
        *slot = value;
    }
    Ok(p)
}

/// Builds the topic IoT Hub would deliver `p` on: system properties first
/// (those that are set), then the application properties. Inverse of
/// [`parse_devicebound`], provided no application key is a system key.
pub fn encode_devicebound(device_id: &str, p: &C2dProperties) -> String {
    let mut props: Vec<(String, Option<String>)> = Vec::with_capacity(8 + p.app.len());
    let mut push = |key: &str, value: &Option<String>| {
        if let Some(v) = value {
            props.push((key.to_owned(), Some(v.clone())));
        }
    };
    push(keys::MESSAGE_ID, &p.message_id);
    push(keys::CORRELATION_ID, &p.correlation_id);
    push(keys::CONTENT_TYPE, &p.content_type);
    push(keys::CONTENT_ENCODING, &p.content_encoding);
    push(keys::EXPIRY, &p.expiry.map(format_expiry));
    push(keys::USER_ID, &p.user_id);
    push(keys::TO, &p.to);
    push(keys::ACK, &p.ack);
    props.extend(p.app.iter().cloned());
    let mut topic = devicebound_prefix(device_id);
    topic.push_str(&encode(&props));
    topic
}

/// The device-to-cloud topic: `devices/{id}/messages/events/{bag}` (ends with
/// `/` when there are no properties).
pub fn events_topic(device_id: &str, props: &[(String, Option<String>)]) -> String {
    format!("devices/{device_id}/messages/events/{}", encode(props))
}

// ---------------------------------------------------------------------------
// $.exp: ISO 8601 UTC timestamps.
//
// Written by hand rather than with humantime: humantime's parser is lenient
// (trailing text after `Z` is accepted, `Z` is optional) and on 32-bit Linux
// targets it rejects anything after 2038, while IoT Hub uses dates such as
// 3237-07-19 and this daemon runs on 32-bit ARM gateways too.

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// First and last representable second (0000-01-01 .. 9999-12-31T23:59:59).
fn expiry_bounds() -> (i64, i64) {
    (days_from_civil(0, 1, 1) * 86_400, days_from_civil(9999, 12, 31) * 86_400 + 86_399)
}

/// Formats a time like IoT Hub: `YYYY-MM-DDTHH:MM:SS.fffffffZ` (UTC, 100 ns
/// precision, truncated). Times outside years 0000..=9999 are clamped to the
/// nearest bound.
pub fn format_expiry(t: SystemTime) -> String {
    let (mut secs, mut nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-s, 0),
                n => (-s - 1, 1_000_000_000 - n),
            }
        }
    };
    let (min, max) = expiry_bounds();
    if secs < min {
        (secs, nanos) = (min, 0);
    } else if secs > max {
        (secs, nanos) = (max, 999_999_999);
    }
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:07}Z", sod / 3600, sod / 60 % 60, sod % 60, nanos / 100)
}

/// Parses an ISO 8601 / RFC 3339 UTC timestamp as IoT Hub writes `$.exp`:
/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`. A numeric offset (`+02:00`) is also
/// accepted and applied; nothing may follow it.
pub fn parse_expiry(value: &str) -> Result<SystemTime, PropBagError> {
    parse_timestamp(value).map_err(|reason| PropBagError::BadExpiry { value: snippet(value), reason })
}

fn parse_timestamp(s: &str) -> Result<SystemTime, &'static str> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Result<i64, &'static str> {
        let digits = b.get(range).ok_or("too short")?;
        digits.iter().try_fold(0i64, |acc, &c| {
            if c.is_ascii_digit() {
                Ok(acc * 10 + i64::from(c - b'0'))
            } else {
                Err("not of the form YYYY-MM-DDTHH:MM:SS")
            }
        })
    };
    let sep = |i: usize, allowed: &[u8]| -> Result<(), &'static str> {
        match b.get(i) {
            Some(c) if allowed.contains(c) => Ok(()),
            Some(_) => Err("not of the form YYYY-MM-DDTHH:MM:SS"),
            None => Err("too short"),
        }
    };
    let year = num(0..4)?;
    sep(4, b"-")?;
    let month = num(5..7)?;
    sep(7, b"-")?;
    let day = num(8..10)?;
    sep(10, b"Tt")?;
    let hour = num(11..13)?;
    sep(13, b":")?;
    let minute = num(14..16)?;
    sep(16, b":")?;
    let second = num(17..19)?;
    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err("day out of range");
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err("time of day out of range");
    }

    let mut i = 19;
    let mut nanos: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        let mut scale = 100_000_000;
        while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            if i - start == 9 {
                return Err("more than 9 fractional digits");
            }
            nanos += i64::from(c - b'0') * scale;
            scale /= 10;
            i += 1;
        }
        if i == start {
            return Err("no digits after the decimal point");
        }
    }
    let offset_secs = match &b[i..] {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), rest @ ..] if rest.len() == 5 && rest[2] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return Err("UTC offset out of range");
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        [] => return Err("no time zone (expected Z)"),
        _ => return Err("unexpected text after the time"),
    };

    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let total = i128::from(secs) * i128::from(NANOS_PER_SEC) + i128::from(nanos);
    let out_of_range = "out of the range this system can represent";
    if total >= 0 {
        let d = Duration::new(
            u64::try_from(total / i128::from(NANOS_PER_SEC)).map_err(|_| out_of_range)?,
            (total % i128::from(NANOS_PER_SEC)) as u32,
        );
        UNIX_EPOCH.checked_add(d).ok_or(out_of_range)
    } else {
        let neg = -total;
        let d = Duration::new(
            u64::try_from(neg / i128::from(NANOS_PER_SEC)).map_err(|_| out_of_range)?,
            (neg % i128::from(NANOS_PER_SEC)) as u32,
        );
        UNIX_EPOCH.checked_sub(d).ok_or(out_of_range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kv(k: &str, v: Option<&str>) -> (String, Option<String>) {
        (k.to_owned(), v.map(str::to_owned))
    }

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    const SYSTEM_TOPIC: &str = "devices/fake_device/messages/devicebound/%24.exp=3237-07-19T23%3A06%3A40.0000000Z&%24.cid=fake_corid&%24.mid=6b822696-f75a-46f5-8b02-0680db65abf5&%24.to=%2Fdevices%2Ffake_device%2Fmessages%2Fdevicebound&%24.ct=fake_content_type&%24.ce=utf-8&iothub-ack=positive";
    const APP_TOPIC: &str = "devices/d/messages/devicebound/custom%2A=value%23&custom%26=value%24&custom%25=value%40";

    // --- doc vectors ------------------------------------------------------

    #[test]
    fn system_properties_vector() {
        let p = parse_devicebound(SYSTEM_TOPIC, "fake_device").unwrap();
        assert_eq!(p.message_id.as_deref(), Some("6b822696-f75a-46f5-8b02-0680db65abf5"));
        assert_eq!(p.correlation_id.as_deref(), Some("fake_corid"));
        assert_eq!(p.content_type.as_deref(), Some("fake_content_type"));
        assert_eq!(p.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(p.ack.as_deref(), Some("positive"));
        assert_eq!(p.to.as_deref(), Some("/devices/fake_device/messages/devicebound"));
        assert_eq!(p.user_id, None);
        // 3237-07-19T23:06:40Z
        assert_eq!(p.expiry, Some(at(40_000_000_000, 0)));
        assert_eq!(format_expiry(p.expiry.unwrap()), "3237-07-19T23:06:40.0000000Z");
        assert!(p.app.is_empty());
    }

    #[test]
    fn application_properties_vector() {
        let p = parse_devicebound(APP_TOPIC, "d").unwrap();
        assert_eq!(
            p.app,
            vec![kv("custom*", Some("value#")), kv("custom&", Some("value$")), kv("custom%", Some("value@")),]
        );
        assert_eq!(p.message_id, None);
        assert_eq!(p.expiry, None);
    }

    #[test]
    fn plus_is_a_literal_plus() {
        assert_eq!(parse("a+b=c+d").unwrap(), vec![kv("a+b", Some("c+d"))]);
        let p = parse_devicebound("devices/d/messages/devicebound/a+b=c+d", "d").unwrap();
        assert_eq!(p.app, vec![kv("a+b", Some("c+d"))]);
    }

    // --- parse ------------------------------------------------------------

    #[test]
    fn parse_basics() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("&&&").unwrap(), vec![]);
        assert_eq!(
            parse("a=1&b&c=&a=2&").unwrap(),
            vec![kv("a", Some("1")), kv("b", None), kv("c", Some("")), kv("a", Some("2"))]
        );
        // Only the first '=' separates; lowercase hex is fine.
        assert_eq!(parse("k=a=b%3d").unwrap(), vec![kv("k", Some("a=b="))]);
        // Non-ASCII, raw or encoded.
        assert_eq!(parse("%C3%A9t%C3%A9=%E2%82%AC&été=€").unwrap(), vec![kv("été", Some("€")), kv("été", Some("€"))]);
        // A decoded '&' or '=' does not split.
        assert_eq!(parse("a%26b=c%3Dd").unwrap(), vec![kv("a&b", Some("c=d"))]);
    }

    #[test]
    fn parse_rejects_bad_escapes() {
        for bag in ["k=%zz", "k=%4", "k=%", "%g1=v", "a=1&b=%%41", "k=%4x"] {
            let err = parse(bag).unwrap_err();
            assert!(matches!(err, PropBagError::BadEscape { .. }), "{bag}: {err:?}");
        }
        let err = parse("ok=1&key=ab%zz").unwrap_err();
        assert_eq!(err, PropBagError::BadEscape { segment: "key=ab%zz".into(), offset: 6 });
        assert_eq!(
            err.to_string(),
            "malformed percent escape at byte 6 of property \"key=ab%zz\" (expected '%' and two hex digits)"
        );
    }

    #[test]
    fn parse_rejects_invalid_utf8_and_empty_keys() {
        assert!(matches!(parse("k=%FF"), Err(PropBagError::NotUtf8 { .. })));
        assert!(matches!(parse("%C3=v"), Err(PropBagError::NotUtf8 { .. })));
        assert!(matches!(parse("=v"), Err(PropBagError::EmptyKey { .. })));
        assert!(matches!(parse("a=1&="), Err(PropBagError::EmptyKey { .. })));
        assert_eq!(parse("=v").unwrap_err().to_string(), "property \"=v\" has an empty name");
    }

    #[test]
    fn long_segments_are_cut_in_errors() {
        let long = format!("{}=%zz", "é".repeat(100));
        let msg = parse(&long).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.contains("..."));
    }

    // --- encode -----------------------------------------------------------

    #[test]
    fn encode_is_strict() {
        assert_eq!(encode(&[]), "");
        assert_eq!(
            encode(&[kv("$.ct", Some("application/json")), kv("$.ce", Some("utf-8"))]),
            "%24.ct=application%2Fjson&%24.ce=utf-8"
        );
        assert_eq!(encode(&[kv("a+b", Some("c d")), kv("flag", None), kv("e", Some(""))]), "a%2Bb=c%20d&flag&e=");
        assert_eq!(encode(&[kv("x", Some("-._~=&%é"))]), "x=-._~%3D%26%25%C3%A9");
        assert_eq!(encode_component("a/b+c=="), "a%2Fb%2Bc%3D%3D");
    }

    // --- topics -----------------------------------------------------------

    #[test]
    fn topics() {
        assert_eq!(devicebound_filter("dev-1"), "devices/dev-1/messages/devicebound/#");
        assert_eq!(events_topic("dev-1", &[]), "devices/dev-1/messages/events/");
        assert_eq!(
            events_topic(
                "dev-1",
                &[
                    kv("$.cid", Some("m-1")),
                    kv("$.ct", Some("application/json")),
                    kv("$.ce", Some("utf-8")),
                    kv("c2d-status", Some("delivered")),
                ]
            ),
            "devices/dev-1/messages/events/%24.cid=m-1&%24.ct=application%2Fjson&%24.ce=utf-8&c2d-status=delivered"
        );
    }

    #[test]
    fn devicebound_with_empty_bag() {
        let p = parse_devicebound("devices/d/messages/devicebound/", "d").unwrap();
        assert_eq!(p, C2dProperties::default());
    }

    #[test]
    fn devicebound_wrong_topic() {
        for topic in [
            "devices/other/messages/devicebound/a=1",
            "devices/d/messages/devicebound",
            "devices/d/messages/events/a=1",
            "devices/dd/messages/devicebound/",
            "",
        ] {
            let err = parse_devicebound(topic, "d").unwrap_err();
            assert!(matches!(err, PropBagError::WrongTopic { .. }), "{topic}");
        }
        let err = parse_devicebound("devices/x/messages/devicebound/", "d").unwrap_err();
        assert_eq!(
            err.to_string(),
            "topic \"devices/x/messages/devicebound/\" is not this device's device-bound topic: expected it to start with \"devices/d/messages/devicebound/\""
        );
    }

    #[test]
    fn devicebound_all_system_properties() {
        let topic = "devices/d/messages/devicebound/%24.mid=m&%24.cid=c&%24.ct=t&%24.ce=e&%24.exp=2024-02-29T12%3A34%3A56.1234567Z&%24.uid=u&%24.to=%2Fx&iothub-ack=full&device=boiler&%24.other=1&flag";
        let p = parse_devicebound(topic, "d").unwrap();
        assert_eq!(
            p,
            C2dProperties {
                message_id: Some("m".into()),
                correlation_id: Some("c".into()),
                content_type: Some("t".into()),
                content_encoding: Some("e".into()),
                expiry: Some(at(1_709_210_096, 123_456_700)),
                ack: Some("full".into()),
                user_id: Some("u".into()),
                to: Some("/x".into()),
                app: vec![kv("device", Some("boiler")), kv("$.other", Some("1")), kv("flag", None)],
            }
        );
        assert_eq!(encode_devicebound("d", &p), topic);
        assert_eq!(parse_devicebound(&encode_devicebound("d", &p), "d").unwrap(), p);
    }

    #[test]
    fn devicebound_duplicate_system_property() {
        let err = parse_devicebound("devices/d/messages/devicebound/%24.mid=a&%24.mid=b", "d").unwrap_err();
        assert_eq!(err, PropBagError::DuplicateSystemProperty { key: "$.mid" });
        assert_eq!(err.to_string(), "system property $.mid appears more than once in the property bag");
        let err = parse_devicebound(
            "devices/d/messages/devicebound/%24.exp=2024-01-01T00%3A00%3A00Z&%24.exp=2024-01-01T00%3A00%3A00Z",
            "d",
        )
        .unwrap_err();
        assert_eq!(err, PropBagError::DuplicateSystemProperty { key: "$.exp" });
    }

    #[test]
    fn devicebound_system_property_without_value_is_absent() {
        let p = parse_devicebound("devices/d/messages/devicebound/%24.mid&%24.exp", "d").unwrap();
        assert_eq!(p.message_id, None);
        assert_eq!(p.expiry, None);
    }

    #[test]
    fn devicebound_bad_expiry() {
        let err = parse_devicebound("devices/d/messages/devicebound/%24.exp=tomorrow", "d").unwrap_err();
        assert!(matches!(err, PropBagError::BadExpiry { .. }));
        assert!(err.to_string().starts_with("invalid $.exp \"tomorrow\": "), "{err}");
    }

    #[test]
    fn encode_devicebound_shape() {
        let p = C2dProperties {
            message_id: Some("m 1".into()),
            expiry: Some(at(1_700_000_000, 5)),
            ack: Some("full".into()),
            app: vec![kv("device", Some("boiler"))],
            ..Default::default()
        };
        assert_eq!(
            encode_devicebound("dev", &p),
            "devices/dev/messages/devicebound/%24.mid=m%201&%24.exp=2023-11-14T22%3A13%3A20.0000000Z&iothub-ack=full&device=boiler"
        );
        assert_eq!(encode_devicebound("dev", &C2dProperties::default()), "devices/dev/messages/devicebound/");
    }

    // --- expiry -----------------------------------------------------------

    #[test]
    fn expiry_formats() {
        assert_eq!(format_expiry(UNIX_EPOCH), "1970-01-01T00:00:00.0000000Z");
        assert_eq!(format_expiry(at(1_709_210_096, 123_456_789)), "2024-02-29T12:34:56.1234567Z");
        assert_eq!(format_expiry(at(253_402_300_799, 999_999_999)), "9999-12-31T23:59:59.9999999Z");
        // Clamped beyond year 9999.
        assert_eq!(format_expiry(at(300_000_000_000, 0)), "9999-12-31T23:59:59.9999999Z");
        // Before the epoch.
        assert_eq!(format_expiry(UNIX_EPOCH - Duration::from_nanos(100)), "1969-12-31T23:59:59.9999999Z");
        assert_eq!(format_expiry(UNIX_EPOCH - Duration::from_secs(86_400 * 365)), "1969-01-01T00:00:00.0000000Z");
    }

    #[test]
    fn expiry_parses() {
        let t = |s: &str| parse_expiry(s).unwrap();
        assert_eq!(t("1970-01-01T00:00:00Z"), UNIX_EPOCH);
        assert_eq!(t("3237-07-19T23:06:40.0000000Z"), at(40_000_000_000, 0));
        assert_eq!(t("2024-02-29T12:34:56.1Z"), at(1_709_210_096, 100_000_000));
        assert_eq!(t("2024-02-29T12:34:56.123456789Z"), at(1_709_210_096, 123_456_789));
        assert_eq!(t("2024-02-29t12:34:56z"), at(1_709_210_096, 0));
        assert_eq!(t("2024-02-29T14:34:56+02:00"), at(1_709_210_096, 0));
        assert_eq!(t("2024-02-29T10:04:56-02:30"), at(1_709_210_096, 0));
        assert_eq!(t("2000-03-01T00:00:00Z"), at(951_868_800, 0));
        assert_eq!(t("9999-12-31T23:59:59.9999999Z"), at(253_402_300_799, 999_999_900));
        assert_eq!(t("1969-12-31T23:59:59.5Z"), UNIX_EPOCH - Duration::from_millis(500));
    }

    #[test]
    fn expiry_rejects() {
        for s in [
            "",
            "2024",
            "2024-02-29",
            "2024-02-29T12:34:56",             // no zone
            "2024-02-29 12:34:56Z",            // space separator
            "2024-02-29T12:34:56Zjunk",        // trailing text
            "2024-02-29T12:34:56.Z",           // empty fraction
            "2024-02-29T12:34:56.1234567890Z", // 10 digits
            "2023-02-29T00:00:00Z",            // not a leap year
            "1900-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-00-01T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-01-00T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:60:00Z",
            "2024-01-01T00:00:60Z",
            "2024-01-01T00:00:00+24:00",
            "2024-01-01T00:00:00+0100",
            "+2024-01-01T00:00:00Z",
            "2024-1-01T00:00:00Z",
            "１２３４-01-01T00:00:00Z",
            "2024-01-01T00:00:00.５Z",
        ] {
            assert!(parse_expiry(s).is_err(), "{s:?} should be rejected");
        }
        assert_eq!(
            parse_expiry("2023-02-29T00:00:00Z").unwrap_err().to_string(),
            "invalid $.exp \"2023-02-29T00:00:00Z\": day out of range (expected UTC like 2024-01-31T12:00:00.0000000Z)"
        );
    }

    #[test]
    fn civil_conversions_agree_over_a_long_range() {
        // Every day from 0000-01-01 to 9999-12-31 maps back to itself, and
        // consecutive days are consecutive dates.
        let (min, max) = expiry_bounds();
        let mut prev = civil_from_days(min / 86_400 - 1);
        for days in min / 86_400..=max / 86_400 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            assert!((y, m, d) > prev);
            prev = (y, m, d);
        }
        assert_eq!(civil_from_days(min / 86_400), (0, 1, 1));
        assert_eq!(civil_from_days(max / 86_400), (9999, 12, 31));
    }

    // --- properties ---------------------------------------------------------

    /// Strings biased towards the characters that matter to the encoding.
    /// Each character comes from one `u32` (cheap to generate and shrink):
    /// 30 % separators, escapes and non-ASCII favourites, 50 % ASCII letters
    /// and digits, 20 % any Unicode scalar value.
    fn text(min: usize, max: usize) -> impl Strategy<Value = String> {
        const SPECIAL: [char; 18] =
            ['%', '&', '=', '+', '$', '.', '#', '/', '?', ' ', '~', '*', '-', '_', '\u{0}', 'é', '€', '😀'];
        const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let pick = |x: u32| {
            let (class, n) = (x % 10, x / 10);
            match class {
                0..=2 => SPECIAL[n as usize % SPECIAL.len()],
                3..=7 => char::from(ALNUM[n as usize % ALNUM.len()]),
                _ => char::from_u32(n % 0x11_0000).unwrap_or('\u{FFFD}'),
            }
        };
        proptest::collection::vec(any::<u32>(), min..=max).prop_map(move |v| v.into_iter().map(pick).collect())
    }

    fn props_strategy() -> impl Strategy<Value = Vec<(String, Option<String>)>> {
        proptest::collection::vec((text(1, 10), proptest::option::of(text(0, 10))), 0..6)
    }

    /// Raw text that looks like a bag: escapes (good and bad), separators.
    fn raw_bag() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            text(0, 4),
            any::<u8>().prop_map(|b| format!("%{b:02X}")),
            any::<u8>().prop_map(|b| format!("%{b:02x}")),
            proptest::sample::select(vec!["%", "%4", "%zz", "%%", "%4g", "%C3", "%FF"]).prop_map(str::to_owned),
            proptest::sample::select(vec!["&", "=", "%24.exp=", "%24.mid=", "iothub-ack="]).prop_map(str::to_owned),
        ];
        proptest::collection::vec(piece, 0..10).prop_map(|v| v.concat())
    }

    fn time_strategy() -> impl Strategy<Value = SystemTime> {
        let (min, max) = expiry_bounds();
        (min..=max, 0u32..10_000_000).prop_map(|(secs, ticks)| {
            let base = if secs >= 0 {
                UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            };
            base + Duration::from_nanos(u64::from(ticks) * 100)
        })
    }

    fn app_strategy() -> impl Strategy<Value = Vec<(String, Option<String>)>> {
        const SYSTEM: [&str; 8] = [
            keys::MESSAGE_ID,
            keys::CORRELATION_ID,
            keys::CONTENT_TYPE,
            keys::CONTENT_ENCODING,
            keys::EXPIRY,
            keys::USER_ID,
            keys::TO,
            keys::ACK,
        ];
        props_strategy().prop_map(|v| v.into_iter().filter(|(k, _)| !SYSTEM.contains(&k.as_str())).collect())
    }

    fn c2d_strategy() -> impl Strategy<Value = C2dProperties> {
        let s = || proptest::option::of(text(0, 8));
        ((s(), s(), s(), s()), proptest::option::of(time_strategy()), (s(), s(), s()), app_strategy()).prop_map(
            |((message_id, correlation_id, content_type, content_encoding), expiry, (ack, user_id, to), app)| {
                C2dProperties {
                    message_id,
                    correlation_id,
                    content_type,
                    content_encoding,
                    expiry,
                    ack,
                    user_id,
                    to,
                    app,
                }
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn bag_round_trips(props in props_strategy()) {
            let bag = encode(&props);
            prop_assert!(bag.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%&=".contains(&b)));
            prop_assert_eq!(parse(&bag).unwrap(), props);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn devicebound_round_trips(p in c2d_strategy(), id in "[A-Za-z0-9_.:-]{1,12}") {
            let topic = encode_devicebound(&id, &p);
            prop_assert_eq!(parse_devicebound(&topic, &id).unwrap(), p);
        }

        #[test]
        fn expiry_round_trips(t in time_strategy()) {
            let s = format_expiry(t);
            prop_assert_eq!(s.len(), 28);
            prop_assert_eq!(parse_expiry(&s).unwrap(), t);
        }

        #[test]
        fn parse_never_panics(s in text(0, 40), bag in raw_bag()) {
            let _ = parse(&s);
            let _ = parse(&bag);
        }

        #[test]
        fn parse_devicebound_never_panics(s in text(0, 40), bag in raw_bag()) {
            let _ = parse_devicebound(&s, "d");
            let _ = parse_devicebound(&format!("devices/d/messages/devicebound/{bag}"), "d");
        }

        #[test]
        fn parse_expiry_never_panics(s in text(0, 40), t in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,11})?([Zz]|[+-][0-9]{2}:[0-9]{2})?.{0,2}") {
            let _ = parse_expiry(&s);
            let _ = parse_expiry(&t);
        }

        #[test]
        fn decode_agrees_with_percent_encoding_on_valid_input(props in props_strategy()) {
            // For well-formed input, our strict decoder and the crate's lenient
            // one agree.
            let bag = encode(&props);
            let ours = decode_component(&bag).unwrap();
            let theirs = percent_encoding::percent_decode_str(&bag).decode_utf8().unwrap();
            prop_assert_eq!(ours, theirs.into_owned());
        }
    }
}
