//! Tests of `modbus.rs`: every point type and word order with exact register
//! values, limits, every reject case, raw bodies, and property tests (no
//! panic on arbitrary input, encode/decode round trips).

use super::*;
use crate::config::WordOrder;
use proptest::prelude::*;

const DEVICE: &str = r#"
bus = "field"
unit = 3
allow_raw = true
points.setpoint = { table = "holding", address = 100, type = "f32", min = 5.0, max = 90.0 }
points.pump = { table = "coil", address = 7, type = "bool" }
points.temp = { table = "holding", address = 10, type = "u16", scale = 0.1 }
points.count = { table = "holding", address = 11, type = "u16" }
points.offset = { table = "holding", address = 12, type = "i16" }
points.total = { table = "holding", address = 20, type = "u32" }
points.total_le = { table = "holding", address = 22, type = "u32", word_order = "little" }
points.delta = { table = "holding", address = 24, type = "i32" }
points.delta_le = { table = "holding", address = 26, type = "i32", word_order = "little" }
points.level = { table = "holding", address = 28, type = "f32" }
points.level_le = { table = "holding", address = 30, type = "f32", word_order = "little" }
points.flow = { table = "holding", address = 32, type = "i32", scale = 0.01, word_order = "little" }
points.gain = { table = "holding", address = 34, type = "f32", scale = 2.0 }
points.speed = { table = "holding", address = 40, type = "u16", min = 0, max = 1500 }
points.trim = { table = "holding", address = 41, type = "i16", scale = 0.5, min = -100, max = 100 }
points.sensor = { table = "input", address = 0, type = "u16" }
points.alarm = { table = "discrete", address = 0, type = "bool" }
points.coil_word = { table = "coil", address = 9, type = "u16" }
points.holding_bool = { table = "holding", address = 50, type = "bool" }
points.edge = { table = "holding", address = 65535, type = "u32" }
points.zero_scale = { table = "holding", address = 60, type = "u16", scale = 0.0 }
"#;

/// Parsed once: TOML parsing in a debug build would dominate the property tests.
fn device() -> &'static DeviceConfig {
    static D: std::sync::LazyLock<DeviceConfig> =
        std::sync::LazyLock::new(|| toml::from_str(DEVICE).expect("test device config"));
    &D
}

fn no_raw_device() -> &'static DeviceConfig {
    static D: std::sync::LazyLock<DeviceConfig> = std::sync::LazyLock::new(|| {
        let mut d = device().clone();
        d.allow_raw = false;
        d
    });
    &D
}

fn parse(body: &str) -> Result<Vec<Write>, Reject> {
    parse_body(body.as_bytes(), "boiler", device())
}

fn ok(body: &str) -> Vec<Write> {
    parse(body).unwrap_or_else(|e| panic!("{body} rejected: {e}"))
}

/// The reject text, asserting every `needles` occurs in it.
#[track_caller]
fn rejected(body: &str, needles: &[&str]) -> String {
    match parse(body) {
        Ok(w) => panic!("{body} accepted: {w:?}"),
        Err(e) => {
            let msg = e.to_string();
            for n in needles {
                assert!(msg.contains(n), "{body}: message {msg:?} lacks {n:?}");
            }
            msg
        }
    }
}

fn regs(address: u16, values: &[u16]) -> Vec<Write> {
    vec![Write::MultipleRegisters { address, values: values.to_vec() }]
}

fn reg(address: u16, value: u16) -> Vec<Write> {
    vec![Write::SingleRegister { address, value }]
}

fn coil(address: u16, value: bool) -> Vec<Write> {
    vec![Write::SingleCoil { address, value }]
}

fn point(name: &str, value: &str) -> String {
    format!(r#"{{"point": "{name}", "value": {value}}}"#)
}

// ---- point types and word orders ----

#[test]
fn f32_both_word_orders() {
    assert_eq!(ok(&point("setpoint", "21.5")), regs(100, &[0x41AC, 0x0000]));
    assert_eq!(ok(&point("level", "21.5")), regs(28, &[0x41AC, 0x0000]));
    assert_eq!(ok(&point("level_le", "21.5")), regs(30, &[0x0000, 0x41AC]));
    assert_eq!(ok(&point("level", "-1")), regs(28, &[0xBF80, 0x0000]));
    assert_eq!(ok(&point("level_le", "0.1")), regs(30, &[0xCCCD, 0x3DCC]));
    assert_eq!(ok(&point("level", "1e-45")), regs(28, &[0x0000, 0x0001]));
}

#[test]
fn i32_both_word_orders() {
    assert_eq!(ok(&point("delta", "-2")), regs(24, &[0xFFFF, 0xFFFE]));
    assert_eq!(ok(&point("delta_le", "-2")), regs(26, &[0xFFFE, 0xFFFF]));
    assert_eq!(ok(&point("delta", "-2147483648")), regs(24, &[0x8000, 0x0000]));
    assert_eq!(ok(&point("delta_le", "2147483647")), regs(26, &[0xFFFF, 0x7FFF]));
    assert_eq!(ok(&point("delta", "65536")), regs(24, &[0x0001, 0x0000]));
}

#[test]
fn u32_both_word_orders() {
    assert_eq!(ok(&point("total", "305419896")), regs(20, &[0x1234, 0x5678]));
    assert_eq!(ok(&point("total_le", "305419896")), regs(22, &[0x5678, 0x1234]));
    assert_eq!(ok(&point("total", "4294967295")), regs(20, &[0xFFFF, 0xFFFF]));
    assert_eq!(ok(&point("total_le", "0")), regs(22, &[0, 0]));
}

#[test]
fn sixteen_bit_types_use_fc6() {
    assert_eq!(ok(&point("count", "0")), reg(11, 0));
    assert_eq!(ok(&point("count", "65535")), reg(11, 0xFFFF));
    assert_eq!(ok(&point("offset", "-1")), reg(12, 0xFFFF));
    assert_eq!(ok(&point("offset", "-32768")), reg(12, 0x8000));
    assert_eq!(ok(&point("offset", "32767")), reg(12, 0x7FFF));
    // An integral float is an integer.
    assert_eq!(ok(&point("count", "7.0")), reg(11, 7));
    assert_eq!(ok(&point("count", "1e3")), reg(11, 1000));
    assert_eq!(ok(&point("count", "-0")), reg(11, 0));
    assert_eq!(ok(&point("count", "7"))[0].function_code(), 6);
}

#[test]
fn bool_point_uses_fc5() {
    assert_eq!(ok(&point("pump", "true")), coil(7, true));
    assert_eq!(ok(&point("pump", "false")), coil(7, false));
    assert_eq!(ok(&point("pump", "true"))[0].function_code(), 5);
}

#[test]
fn scale() {
    assert_eq!(ok(&point("temp", "21.5")), reg(10, 215));
    assert_eq!(ok(&point("temp", "0.04")), reg(10, 0));
    assert_eq!(ok(&point("temp", "0.06")), reg(10, 1));
    assert_eq!(ok(&point("temp", "6553.5")), reg(10, 65535));
    assert_eq!(ok(&point("trim", "-2.5")), reg(41, (-5i16) as u16));
    assert_eq!(ok(&point("trim", "0.7")), reg(41, 1));
    assert_eq!(ok(&point("flow", "-0.02")), regs(32, &[0xFFFE, 0xFFFF]));
    assert_eq!(ok(&point("flow", "12.34")), regs(32, &[1234, 0]));
    assert_eq!(ok(&point("gain", "43")), regs(34, &[0x41AC, 0x0000]));
    rejected(&point("temp", "6553.6"), &["\"temp\"", "6553.6", "65536", "u16", "0..=65535", "scale 0.1"]);
    rejected(&point("temp", "-0.1"), &["\"temp\"", "does not fit type u16"]);
    rejected(&point("zero_scale", "1"), &["\"zero_scale\"", "scale 0", "finite"]);
}

// ---- limits ----

#[test]
fn min_max_on_engineering_value() {
    assert_eq!(ok(&point("setpoint", "5")), regs(100, &[0x40A0, 0]));
    assert_eq!(ok(&point("setpoint", "90")).len(), 1);
    let m = rejected(&point("setpoint", "95"), &["\"setpoint\"", "95", "maximum 90", "5 to 90"]);
    assert!(m.starts_with("value 95 for point \"setpoint\""), "{m}");
    rejected(&point("setpoint", "4.99"), &["\"setpoint\"", "4.99", "minimum 5", "5 to 90"]);
    rejected(&point("setpoint", "-1e300"), &["minimum 5"]);
    // Limits come before the type check: 100000 does not fit u16 either,
    // but the operator is told about the configured limit.
    rejected(&point("speed", "100000"), &["\"speed\"", "maximum 1500"]);
    rejected(&point("speed", "-1"), &["\"speed\"", "minimum 0"]);
    // ... and before the integer check.
    rejected(&point("speed", "1500.5"), &["maximum 1500"]);
    // Scaled point: limits apply to the engineering value, not the raw one.
    assert_eq!(ok(&point("trim", "100")), reg(41, 200));
    rejected(&point("trim", "100.5"), &["\"trim\"", "maximum 100", "-100 to 100"]);
}

// ---- value types ----

#[test]
fn value_json_types_are_strict() {
    rejected(&point("pump", "1"), &["\"pump\"", "true or false", "got 1", "a number"]);
    rejected(&point("pump", "\"true\""), &["\"pump\"", "true or false", "a string"]);
    rejected(&point("pump", "null"), &["\"pump\"", "null"]);
    rejected(&point("setpoint", "\"21.5\""), &["\"setpoint\"", "expects a number", "\"21.5\"", "a string"]);
    rejected(&point("count", "true"), &["\"count\"", "expects a number", "a boolean"]);
    rejected(&point("count", "[1]"), &["\"count\"", "an array"]);
    rejected(&point("count", "{\"a\": 1}"), &["\"count\"", "an object"]);
    rejected(&point("count", "2.5"), &["\"count\"", "expects an integer", "2.5", "u16"]);
    rejected(&point("total", "0.5"), &["\"total\"", "expects an integer"]);
}

#[test]
fn integer_type_ranges() {
    rejected(&point("count", "65536"), &["\"count\"", "65536", "does not fit type u16", "0..=65535"]);
    rejected(&point("count", "-1"), &["does not fit type u16"]);
    rejected(&point("offset", "32768"), &["does not fit type i16", "-32768..=32767"]);
    rejected(&point("offset", "-32769"), &["does not fit type i16"]);
    rejected(&point("total", "4294967296"), &["does not fit type u32"]);
    rejected(&point("total", "-1"), &["does not fit type u32"]);
    rejected(&point("delta", "2147483648"), &["does not fit type i32"]);
    rejected(&point("delta", "18446744073709551615"), &["does not fit type i32"]);
    rejected(&point("delta", "-9223372036854775808"), &["does not fit type i32"]);
    rejected(&point("level", "1e39"), &["\"level\"", "does not fit type f32"]);
    rejected(&point("level", "-3.5e38"), &["does not fit type f32"]);
}

#[test]
fn tables_that_cannot_be_written() {
    rejected(&point("sensor", "1"), &["\"sensor\"", "read-only input table"]);
    rejected(&point("alarm", "true"), &["\"alarm\"", "read-only discrete input table"]);
    rejected(&point("coil_word", "1"), &["\"coil_word\"", "u16", "coil table"]);
    rejected(&point("holding_bool", "true"), &["\"holding_bool\"", "bool", "holding table"]);
    rejected(&point("edge", "1"), &["\"edge\"", "65535"]);
}

// ---- several points ----

#[test]
fn points_keep_document_order() {
    let w = ok(r#"{"points": {"total": 1, "pump": true, "count": 2}}"#);
    assert_eq!(
        w,
        vec![
            Write::MultipleRegisters { address: 20, values: vec![0, 1] },
            Write::SingleCoil { address: 7, value: true },
            Write::SingleRegister { address: 11, value: 2 },
        ]
    );
    // The reverse of the sorted order, to be sure nothing sorts.
    let w = ok(r#"{"points": {"total_le": 3, "temp": 1.5, "setpoint": 21.5, "pump": false}}"#);
    let addresses: Vec<u16> = w.iter().map(Write::address).collect();
    assert_eq!(addresses, [22, 10, 100, 7]);
    assert_eq!(ok(r#"{"points": {"pump": true}}"#), coil(7, true));
}

#[test]
fn points_are_all_or_nothing() {
    rejected(r#"{"points": {"count": 1, "setpoint": 95}}"#, &["\"setpoint\"", "maximum 90"]);
    rejected(r#"{"points": {"count": 1, "pump": 1}}"#, &["\"pump\"", "true or false"]);
    // An unknown name wins over an earlier bad value.
    rejected(r#"{"points": {"count": "x", "nope": 1}}"#, &["no point \"nope\""]);
}

#[test]
fn points_rejects() {
    rejected(r#"{"points": {}}"#, &["\"points\" is empty"]);
    rejected(r#"{"points": {"count": 1, "pump": true, "count": 2}}"#, &["point \"count\" appears twice"]);
    rejected(r#"{"points": [1, 2]}"#, &["\"points\" must be an object", "an array"]);
    rejected(r#"{"points": "count"}"#, &["\"points\" must be an object", "a string"]);
    rejected(r#"{"points": {"count": 1}, "value": 3}"#, &["unknown key \"value\"", "only \"points\""]);
    rejected(r#"{"points": {"count": 1}, "point": "count"}"#, &["both \"point\" and \"points\""]);
    rejected(r#"{"point": "count", "value": 1, "points": {}}"#, &["both \"point\" and \"points\""]);
}

// ---- single point body rejects ----

#[test]
fn single_point_rejects() {
    rejected(
        r#"{"point": "count", "value": 1, "extra": 2}"#,
        &["unknown key \"extra\"", "only \"point\" and \"value\""],
    );
    rejected(r#"{"point": "count", "values": [1]}"#, &["unknown key \"values\""]);
    rejected(r#"{"point": "count"}"#, &["point \"count\"", "no \"value\""]);
    rejected(r#"{"point": 3, "value": 1}"#, &["\"point\" must be a point name", "a number"]);
    rejected(r#"{"point": "count", "value": 1, "value": 2}"#, &["key \"value\" appears twice"]);
    let m = rejected(&point("nope", "1"), &["device boiler has no point \"nope\"", "known points: "]);
    // At most 10 names, the rest counted.
    assert!(m.contains("alarm, coil_word, count, delta"), "{m}");
    assert!(m.contains(" and 11 more"), "{m}");
    assert!(!m.contains("zero_scale"), "{m}");
}

#[test]
fn unknown_point_lists_all_of_a_small_device() {
    let d: DeviceConfig = toml::from_str(
        r#"
        bus = "b"
        points.pump = { table = "coil", address = 7, type = "bool" }
        points.setpoint = { table = "holding", address = 100, type = "f32" }
        "#,
    )
    .unwrap();
    let e = parse_body(br#"{"point": "pmup", "value": true}"#, "boiler", &d).unwrap_err();
    assert_eq!(e.to_string(), "device boiler has no point \"pmup\" (known points: pump, setpoint)");
    let empty: DeviceConfig = toml::from_str("bus = \"b\"").unwrap();
    let e = parse_body(br#"{"point": "pump", "value": true}"#, "boiler", &empty).unwrap_err();
    assert!(e.to_string().contains("no points configured"), "{e}");
}

// ---- body-level rejects ----

#[test]
fn body_rejects() {
    let e = parse_body(b"{\"point\": \"a\xff\"}", "boiler", device()).unwrap_err();
    assert!(e.to_string().starts_with("body is not UTF-8"), "{e}");
    assert!(e.to_string().contains("offset 12"), "{e}");
    rejected("", &["body is empty"]);
    rejected("  \n", &["body is empty"]);
    rejected("{\"point\": ", &["not valid JSON", "EOF"]);
    rejected("setpoint=21.5", &["not valid JSON"]);
    rejected("{\"point\": \"count\", \"value\": 1} x", &["not valid JSON", "trailing"]);
    rejected("[1, 2]", &["must be a JSON object", "an array"]);
    rejected("\"hello\"", &["must be a JSON object", "\"hello\"", "a string"]);
    rejected("21.5", &["must be a JSON object", "a number"]);
    rejected("null", &["must be a JSON object", "null"]);
    rejected("{}", &["empty JSON object"]);
    rejected(r#"{"value": 1}"#, &["\"value\" but no \"point\""]);
    rejected(r#"{"address": 1, "values": [1]}"#, &["no \"fc\""]);
    rejected(r#"{"hello": 1, "world": 2}"#, &["neither a point write", "\"hello\", \"world\""]);
    // Deep nesting hits serde_json's recursion limit, not the stack.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    rejected(&deep, &["not valid JSON", "recursion limit"]);
    let deep = format!("{{\"points\": {}1{}}}", "{\"a\": ".repeat(5_000), "}".repeat(5_000));
    rejected(&deep, &["not valid JSON"]);
}

#[test]
fn long_names_are_truncated_in_messages() {
    let name = "x".repeat(10_000);
    let m = rejected(&point(&name, "1"), &["has no point"]);
    assert!(m.len() < 600, "{} chars", m.len());
    let m = rejected(&format!(r#"{{"point": "count", "value": "{name}"}}"#), &["expects a number"]);
    assert!(m.len() < 400, "{} chars", m.len());
}

// ---- raw bodies ----

#[test]
fn raw_formats() {
    assert_eq!(ok(r#"{"fc": 6, "address": 100, "value": 7}"#), reg(100, 7));
    assert_eq!(ok(r#"{"fc": 16, "address": 100, "values": [1, 2]}"#), regs(100, &[1, 2]));
    assert_eq!(ok(r#"{"fc": 5, "address": 7, "value": true}"#), coil(7, true));
    assert_eq!(
        ok(r#"{"fc": 15, "address": 7, "values": [true, false]}"#),
        vec![Write::MultipleCoils { address: 7, values: vec![true, false] }]
    );
    // Key order does not matter; integral floats are integers.
    assert_eq!(ok(r#"{"value": 65535, "address": 0, "fc": 6.0}"#), reg(0, 0xFFFF));
    assert_eq!(ok(r#"{"fc": 16, "address": 65534, "values": [0, 65535]}"#), regs(65534, &[0, 65535]));
    assert_eq!(ok(r#"{"fc": 16, "address": 9, "values": [5]}"#), regs(9, &[5]));
    assert_eq!(ok(r#"{"fc": 15, "address": 65535, "values": [true]}"#)[0].function_code(), 15);
}

#[test]
fn raw_needs_allow_raw() {
    for body in [
        r#"{"fc": 6, "address": 100, "value": 7}"#,
        r#"{"fc": 3, "address": 100, "value": 7}"#,
        r#"{"fc": 16, "address": 100, "values": "junk"}"#,
    ] {
        let e = parse_body(body.as_bytes(), "boiler", no_raw_device()).unwrap_err();
        assert_eq!(e.to_string(), "raw Modbus bodies are not allowed for device boiler (allow_raw = false)");
    }
    // Point bodies still work without allow_raw.
    let w = parse_body(point("count", "3").as_bytes(), "boiler", no_raw_device()).unwrap();
    assert_eq!(w, reg(11, 3));
}

#[test]
fn raw_function_codes() {
    for fc in 1..=4 {
        rejected(&format!(r#"{{"fc": {fc}, "address": 1, "value": 1}}"#), &["is a read function"]);
    }
    for fc in ["0", "7", "17", "22", "-6", "256"] {
        rejected(&format!(r#"{{"fc": {fc}, "address": 1, "value": 1}}"#), &["not supported", "5, 6, 15 or 16"]);
    }
    for fc in ["\"6\"", "6.5", "null", "true", "[6]"] {
        rejected(&format!(r#"{{"fc": {fc}, "address": 1, "value": 1}}"#), &["\"fc\" must be a Modbus function code"]);
    }
    rejected(r#"{"fc": 6, "point": "count", "value": 1}"#, &["mixes a raw Modbus write"]);
    rejected(r#"{"fc": 6, "address": 1, "value": 1, "unit": 3}"#, &["unknown key \"unit\""]);
}

#[test]
fn raw_address_and_values() {
    rejected(r#"{"fc": 6, "value": 1}"#, &["needs an \"address\""]);
    rejected(r#"{"fc": 6, "address": 65536, "value": 1}"#, &["\"address\" must be an integer 0..=65535", "65536"]);
    rejected(r#"{"fc": 6, "address": -1, "value": 1}"#, &["\"address\" must be an integer"]);
    rejected(r#"{"fc": 6, "address": "1", "value": 1}"#, &["\"address\" must be an integer"]);
    rejected(r#"{"fc": 6, "address": 1}"#, &["fc 6 needs \"value\""]);
    rejected(r#"{"fc": 16, "address": 1}"#, &["fc 16 needs \"values\""]);
    rejected(r#"{"fc": 6, "address": 1, "values": [1]}"#, &["unexpected key \"values\"", "use fc 16"]);
    rejected(r#"{"fc": 5, "address": 1, "values": [true]}"#, &["unexpected key \"values\"", "use fc 15"]);
    rejected(r#"{"fc": 16, "address": 1, "value": 1}"#, &["unexpected key \"value\"", "use fc 6"]);
    rejected(r#"{"fc": 15, "address": 1, "value": true}"#, &["unexpected key \"value\"", "use fc 5"]);
    rejected(r#"{"fc": 6, "address": 1, "value": 65536}"#, &["\"value\" must be an integer 0..=65535", "65536"]);
    rejected(r#"{"fc": 6, "address": 1, "value": -1}"#, &["must be an integer 0..=65535"]);
    rejected(r#"{"fc": 6, "address": 1, "value": 1.5}"#, &["must be an integer 0..=65535"]);
    rejected(r#"{"fc": 6, "address": 1, "value": true}"#, &["must be an integer 0..=65535"]);
    rejected(r#"{"fc": 5, "address": 1, "value": 1}"#, &["\"value\" must be true or false", "0/1 are not accepted"]);
    rejected(r#"{"fc": 5, "address": 1, "value": "on"}"#, &["must be true or false"]);
    rejected(
        r#"{"fc": 16, "address": 1, "values": [1, 70000]}"#,
        &["\"values\"[1] must be an integer 0..=65535", "70000"],
    );
    rejected(r#"{"fc": 16, "address": 1, "values": [1, "2"]}"#, &["\"values\"[1]"]);
    rejected(r#"{"fc": 15, "address": 1, "values": [true, 0]}"#, &["\"values\"[1] must be true or false"]);
    rejected(r#"{"fc": 16, "address": 1, "values": 5}"#, &["must be an array", "a number"]);
    rejected(r#"{"fc": 15, "address": 1, "values": []}"#, &["is empty"]);
    rejected(r#"{"fc": 16, "address": 1, "values": []}"#, &["is empty"]);
}

#[test]
fn raw_limits() {
    let body = |fc: u8, address: u32, n: usize, v: &str| {
        let values = vec![v; n].join(", ");
        format!(r#"{{"fc": {fc}, "address": {address}, "values": [{values}]}}"#)
    };
    assert_eq!(ok(&body(16, 0, 123, "1"))[0].count(), 123);
    rejected(&body(16, 0, 124, "1"), &["124 registers", "more than the 123"]);
    assert_eq!(ok(&body(15, 0, 1968, "true"))[0].count(), 1968);
    rejected(&body(15, 0, 1969, "true"), &["1969 coils", "more than the 1968"]);
    assert_eq!(ok(&body(16, 65535 - 122, 123, "1"))[0].count(), 123);
    rejected(&body(16, 65535 - 121, 123, "1"), &["runs past the last address 65535"]);
    rejected(&body(15, 65535, 2, "false"), &["runs past the last address 65535"]);
}

// ---- Write ----

#[test]
fn write_describe_and_function_code() {
    let w = |s: &str| ok(s).remove(0);
    let f = w(&point("setpoint", "21.5"));
    assert_eq!(f.describe(), "holding 100..101 = [16812, 0]");
    assert_eq!(f.function_code(), 16);
    assert_eq!(f.to_string(), f.describe());
    assert_eq!(w(&point("pump", "true")).describe(), "coil 7 = true");
    assert_eq!(w(&point("temp", "21.5")).describe(), "holding 10 = 215");
    let c = w(r#"{"fc": 15, "address": 7, "values": [true, false]}"#);
    assert_eq!(c.describe(), "coil 7..8 = [true, false]");
    assert_eq!(c.function_code(), 15);
    assert_eq!(w(r#"{"fc": 16, "address": 9, "values": [5]}"#).describe(), "holding 9 = [5]");
    let long = w(r#"{"fc": 16, "address": 0, "values": [0,1,2,3,4,5,6,7,8,9,10,11]}"#);
    assert_eq!(long.describe(), "holding 0..11 = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, … 2 more]");
    // A hand-built write at the top of the address space must not overflow.
    let top = Write::MultipleRegisters { address: 65535, values: vec![1, 2] };
    assert_eq!(top.describe(), "holding 65535..65536 = [1, 2]");
    let empty = Write::MultipleCoils { address: 3, values: vec![] };
    assert_eq!(empty.describe(), "coil 3 = []");
    assert_eq!(Reject::ValuesEmpty { fc: 16 }.to_string(), "\"values\" of fc 16 is empty; give at least one value");
}

// ---- property tests ----

/// The single write of a one-point body.
fn write_for(name: &str, value: &str) -> Write {
    let mut w = parse_body(point(name, value).as_bytes(), "boiler", device())
        .unwrap_or_else(|e| panic!("{name} = {value}: {e}"));
    assert_eq!(w.len(), 1);
    w.remove(0)
}

/// serde_json renders an f64 so that it parses back to the same f64.
fn number(v: f64) -> String {
    serde_json::to_string(&v).unwrap()
}

/// The 32-bit pattern a two-register write of point `p` carries.
fn bits(p: &PointConfig, w: &Write) -> u32 {
    let Write::MultipleRegisters { address, values } = w else {
        panic!("not FC16: {w:?}");
    };
    assert_eq!(*address, p.address);
    assert_eq!(values.len(), 2);
    super::encode::join_words([values[0], values[1]], p.word_order)
}

/// Decodes the registers of a 32-bit point back to its engineering value.
fn decode(p: &PointConfig, w: &Write) -> f64 {
    let bits = bits(p, w);
    let raw = match p.ty {
        PointType::U32 => f64::from(bits),
        PointType::I32 => f64::from(bits as i32),
        PointType::F32 => f64::from(f32::from_bits(bits)),
        other => panic!("not a 32-bit type: {other:?}"),
    };
    raw * p.scale.unwrap_or(1.0)
}

/// A JSON-ish tree rendered to text by hand, so objects can carry duplicate
/// keys and any key order.
#[derive(Debug, Clone)]
enum G {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Arr(Vec<G>),
    Obj(Vec<(String, G)>),
}

impl G {
    fn render(&self, out: &mut String) {
        match self {
            G::Null => out.push_str("null"),
            G::Bool(b) => out.push_str(&b.to_string()),
            G::Int(i) => out.push_str(&i.to_string()),
            G::UInt(u) => out.push_str(&u.to_string()),
            G::Float(f) => out.push_str(&serde_json::to_string(f).unwrap()),
            G::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
            G::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.render(out);
                }
                out.push(']');
            }
            G::Obj(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    v.render(out);
                }
                out.push('}');
            }
        }
    }
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "point", "points", "value", "values", "fc", "address", "setpoint", "pump", "temp",
            "count", "offset", "total", "total_le", "delta", "delta_le", "level", "level_le",
            "flow", "gain", "speed", "trim", "sensor", "alarm", "coil_word", "holding_bool",
            "edge", "zero_scale",
        ])
        .prop_map(String::from),
        1 => prop::collection::vec(any::<char>(), 0..6).prop_map(String::from_iter),
    ]
}

fn leaf() -> impl Strategy<Value = G> {
    prop_oneof![
        Just(G::Null),
        any::<bool>().prop_map(G::Bool),
        (-70_000i64..70_000).prop_map(G::Int),
        prop::sample::select(vec![
            0i64,
            1,
            2,
            3,
            5,
            6,
            15,
            16,
            65535,
            65536,
            -1,
            4294967295,
            4294967296,
            2147483648,
            -2147483649
        ])
        .prop_map(G::Int),
        any::<i64>().prop_map(G::Int),
        any::<u64>().prop_map(G::UInt),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(G::Float),
        (-100.0f64..100.0).prop_map(G::Float),
        key().prop_map(G::Str),
    ]
}

fn tree() -> impl Strategy<Value = G> {
    leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(G::Arr),
            prop::collection::vec((key(), inner), 0..5).prop_map(G::Obj),
        ]
    })
}

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(device().points.keys().cloned().collect::<Vec<_>>())
}

/// Bodies close to the real formats, so accepted paths get exercised too.
fn near_valid() -> impl Strategy<Value = G> {
    let field = |k: &str, g: G| (k.to_string(), g);
    prop_oneof![
        (name(), leaf()).prop_map(move |(n, v)| G::Obj(vec![field("point", G::Str(n)), field("value", v)])),
        prop::collection::vec((name(), leaf()), 0..5).prop_map(move |p| G::Obj(vec![field("points", G::Obj(p))])),
        (
            prop::sample::select(vec![5i64, 6, 15, 16, 3]),
            prop_oneof![0i64..70_000, 65_400i64..65_536],
            leaf(),
            prop::collection::vec(leaf(), 0..4),
            prop::collection::vec(any::<bool>().prop_map(G::Bool), 0..4),
            prop::collection::vec((0i64..65_536).prop_map(G::Int), 0..4),
        )
            .prop_map(move |(fc, a, v, vs, bools, ints)| {
                let mut e = vec![field("fc", G::Int(fc)), field("address", G::Int(a))];
                match fc {
                    5 | 6 => e.push(field("value", v)),
                    _ => e.push(field(
                        "values",
                        G::Arr([vs, bools, ints].into_iter().max_by_key(|x| x.len()).unwrap_or_default()),
                    )),
                }
                G::Obj(e)
            }),
    ]
}

/// Mostly objects with the keys the parser looks at.
fn body() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => tree(),
        2 => prop::collection::vec((key(), tree()), 0..5).prop_map(G::Obj),
        2 => near_valid(),
    ]
    .prop_map(|g| {
        let mut s = String::new();
        g.render(&mut s);
        s
    })
}

fn check_writes(writes: &[Write]) {
    assert!(!writes.is_empty());
    for w in writes {
        let n = w.count();
        assert!(n >= 1);
        match w {
            Write::MultipleCoils { .. } => assert!(n <= MAX_WRITE_COILS),
            Write::MultipleRegisters { .. } => assert!(n <= MAX_WRITE_REGISTERS),
            _ => assert_eq!(n, 1),
        }
        assert!(usize::from(w.address()) + n - 1 <= 65535, "{w:?}");
        assert!(!w.describe().is_empty());
    }
}

/// XorShift: the default ChaCha generator dominates run time in debug builds.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, rng_algorithm: prop::test_runner::RngAlgorithm::XorShift, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(10_000))]

    #[test]
    fn never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        for d in [device(), no_raw_device()] {
            match parse_body(&bytes, "boiler", d) {
                Ok(w) => check_writes(&w),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn never_panics_on_json(text in body()) {
        for (d, allow_raw) in [(device(), true), (no_raw_device(), false)] {
            match parse_body(text.as_bytes(), "boiler", d) {
                Ok(w) => {
                    check_writes(&w);
                    if !allow_raw {
                        prop_assert!(!text.contains("\"fc\""), "raw accepted: {text}");
                    }
                }
                Err(e) => prop_assert!(!e.to_string().is_empty() && e.to_string().len() < 1000, "{e}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn thirty_two_bit_round_trip(
        u in any::<u32>(),
        i in any::<i32>(),
        f in any::<f32>().prop_filter("finite", |f| f.is_finite()),
    ) {
        let d = device();
        // serde_json renders an f64 so that it parses back exactly.
        for (name, text, want) in [
            ("total", u.to_string(), f64::from(u)),
            ("total_le", u.to_string(), f64::from(u)),
            ("delta", i.to_string(), f64::from(i)),
            ("delta_le", i.to_string(), f64::from(i)),
        ] {
            let w = write_for(name, &text);
            prop_assert_eq!(decode(&d.points[name], &w), want, "{}", name);
        }
        for name in ["level", "level_le"] {
            let w = write_for(name, &number(f64::from(f)));
            // Bit-exact, so -0.0 and subnormals survive too.
            prop_assert_eq!(bits(&d.points[name], &w), f.to_bits(), "{}", name);
            prop_assert_eq!(decode(&d.points[name], &w), f64::from(f));
        }
    }

    #[test]
    fn scaled_round_trip(raw in any::<i32>(), g in -1e6f32..1e6) {
        let d = device();
        // flow: i32, scale 0.01, little word order.
        let value = f64::from(raw) * 0.01;
        let w = write_for("flow", &number(value));
        let p = &d.points["flow"];
        assert_eq!(p.word_order, WordOrder::Little);
        prop_assert!((decode(p, &w) - value).abs() <= 0.005 + value.abs() * 1e-12);
        prop_assert_eq!(bits(p, &w) as i32, raw);
        // gain: f32, scale 2.
        let w = write_for("gain", &number(f64::from(g)));
        prop_assert_eq!(decode(&d.points["gain"], &w), f64::from(g));
        // temp: u16, scale 0.1.
        let t = u16::try_from(raw.rem_euclid(65536)).unwrap();
        let value = f64::from(t) * 0.1;
        prop_assert_eq!(write_for("temp", &number(value)), Write::SingleRegister { address: 10, value: t });
    }
}

#[test]
fn a_message_id_field_is_ignored_in_every_body_form() {
    let dev: DeviceConfig = toml::from_str(
        "bus = \"b\"\nunit = 1\nallow_raw = true\npoints.sp = { table = \"holding\", address = 100, type = \"u16\" }",
    )
    .unwrap();
    for body in [
        r#"{"id": "m1", "point": "sp", "value": 7}"#,
        r#"{"points": {"sp": 7}, "id": 42}"#,
        r#"{"fc": 6, "address": 100, "value": 7, "id": "x"}"#,
    ] {
        assert_eq!(
            parse_body(body.as_bytes(), "d", &dev),
            Ok(vec![Write::SingleRegister { address: 100, value: 7 }]),
            "{body}"
        );
    }
}

#[test]
fn a_read_body_names_points_of_any_table_and_nothing_else() {
    let read = |body: &str| parse_command(body.as_bytes(), "boiler", device());
    match read(r#"{"read": ["sensor", "setpoint", "alarm"]}"#).unwrap() {
        Command::Read(points) => {
            let names: Vec<&str> = points.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["sensor", "setpoint", "alarm"], "in the order asked, read-only tables included");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(read(r#"{"id": "m1", "read": ["sensor"]}"#), Ok(Command::Read(_))), "id rides along (mqtt)");
    assert!(matches!(read(r#"{"point": "count", "value": 1}"#), Ok(Command::Writes(_))));
    for (body, needle) in [
        (r#"{"read": []}"#, "non-empty list"),
        (r#"{"read": "sensor"}"#, "non-empty list"),
        (r#"{"read": [1]}"#, "non-empty list"),
        (r#"{"read": ["nope"]}"#, "has no point \"nope\""),
        (r#"{"read": ["sensor", "sensor"]}"#, "appears twice"),
        (r#"{"read": ["sensor"], "point": "count", "value": 1}"#, "a read takes only"),
    ] {
        let e = read(body).unwrap_err().to_string();
        assert!(e.contains(needle), "{body}: {e}");
    }
    // parse_body is for writes: a read is not one.
    assert_eq!(parse(r#"{"read": ["sensor"]}"#), Err(Reject::ReadNotWrite));
}
