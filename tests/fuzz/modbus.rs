//! C2D bodies for Modbus devices: src/router/modbus.rs (`parse_body`) and
//! src/router/encode.rs. Every body is checked against a randomly generated
//! device: nothing panics; with `allow_raw = false` every write produced is
//! exactly one of the device's writable points (no raw write gets through);
//! every register written for a point with `min`/`max`, decoded back to its
//! engineering value, lies within them; raw writes stay inside the Modbus
//! limits. Values of every type survive value -> registers -> value.

use crate::gens::{edits_between, lossy_string, mutate, tricky_string};
use crate::{check, Ctx, Property};
use c2d_gateway::config::{DeviceConfig, PointConfig, PointType, Table, WordOrder};
use c2d_gateway::router::encode::{encode_number, join_words};
use c2d_gateway::router::modbus::{parse_body, Write, MAX_WRITE_COILS, MAX_WRITE_REGISTERS};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::OnceLock;

pub fn properties() -> Vec<Property> {
    vec![
        Property { target: "modbus", name: "any body: no panic, no raw write, limits", weight: 24, run: bodies },
        Property { target: "modbus", name: "value -> registers -> value, each type", weight: 6, run: encoding },
    ]
}

const DEVICE: &str = "dev";

fn base_device() -> &'static DeviceConfig {
    static D: OnceLock<DeviceConfig> = OnceLock::new();
    D.get_or_init(|| toml::from_str("bus = \"plc\"\nunit = 1").expect("device"))
}

const TYPES: [PointType; 6] =
    [PointType::Bool, PointType::U16, PointType::I16, PointType::U32, PointType::I32, PointType::F32];
const TABLES: [Table; 4] = [Table::Coil, Table::Discrete, Table::Holding, Table::Input];
const NAMES: &[&str] = &["setpoint", "pump", "mode", "speed", "p4", "sét", "a\"b", "", "x y", "id"];
const LIMITS: &[f64] = &[
    -1500.0,
    0.0,
    5.0,
    90.0,
    10.06,
    3.0,
    65535.0,
    -32768.0,
    0.1,
    1e9,
    -1e9,
    2147483647.0,
    4294967295.0,
    1.0,
    -0.5,
    21.55,
    1e-3,
    123.456,
];
const SCALES: &[f64] = &[0.1, 0.5, 2.0, 10.0, -0.1, 0.001, 0.25, 1.0, 3.0, 1e-6, 1e6, 0.3, -2.0];

fn limit() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => proptest::sample::select(LIMITS),
        1 => -1e6f64..1e6,
        1 => (-70_000i64..70_000).prop_map(|n| n as f64),
    ]
}

fn point() -> impl Strategy<Value = PointConfig> {
    let ty = proptest::sample::select(&TYPES[..]);
    let table = proptest::option::weighted(0.15, proptest::sample::select(&TABLES[..]));
    let address = prop_oneof![3 => 0u16..200, 1 => 65530u16..=65535, 1 => any::<u16>()];
    let scale = proptest::option::weighted(
        0.45,
        prop_oneof![3 => proptest::sample::select(SCALES), 1 => 1e-3f64..1e3, 1 => -1e3f64..-1e-3],
    );
    let limits = (proptest::option::weighted(0.6, limit()), proptest::option::weighted(0.6, limit()));
    (ty, table, address, any::<bool>(), scale, limits).prop_map(|(ty, table, address, little, scale, (lo, hi))| {
        let table = table.unwrap_or(if ty == PointType::Bool { Table::Coil } else { Table::Holding });
        // As the config check demands: min <= max.
        let (min, max) = match (lo, hi) {
            (Some(a), Some(b)) if a > b => (Some(b), Some(a)),
            other => other,
        };
        PointConfig {
            table,
            address,
            ty,
            word_order: if little { WordOrder::Little } else { WordOrder::Big },
            scale,
            min,
            max,
        }
    })
}

fn device() -> impl Strategy<Value = DeviceConfig> {
    let points = proptest::collection::vec((proptest::sample::select(NAMES), point()), 0..6);
    (points, any::<bool>()).prop_map(|(points, allow_raw)| {
        let mut d = base_device().clone();
        d.points = points.into_iter().map(|(n, p)| (n.to_owned(), p)).collect::<BTreeMap<_, _>>();
        d.allow_raw = allow_raw;
        d
    })
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// A finite f64 as JSON text (Rust's shortest round-trip form).
fn num(v: f64) -> String {
    format!("{v:?}")
}

fn next_up(v: f64) -> f64 {
    if v == 0.0 {
        f64::from_bits(1)
    } else if v > 0.0 {
        f64::from_bits(v.to_bits() + 1)
    } else {
        f64::from_bits(v.to_bits() - 1)
    }
}

fn next_down(v: f64) -> f64 {
    -next_up(-v)
}

/// Numbers that matter for `device`: each point's limits and just past them,
/// values that round onto or past a limit through `scale`, type bounds.
fn interesting(device: &DeviceConfig) -> Vec<f64> {
    let mut out: Vec<f64> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        21.5,
        0.5,
        65535.0,
        65536.0,
        -32768.0,
        -32769.0,
        32767.0,
        4294967295.0,
        4294967296.0,
        2147483647.0,
        2147483648.0,
        -2147483648.0,
        -2147483649.0,
        1e300,
        -1e300,
        1e-300,
        5e-324,
        3.4028235e38,
        3.5e38,
        1e18,
        9007199254740993.0,
    ];
    for p in device.points.values() {
        let s = p.scale.unwrap_or(1.0);
        for b in [p.min, p.max].into_iter().flatten() {
            out.extend([b, next_up(b), next_down(b), b + s.abs() * 0.49, b - s.abs() * 0.49, b + s.abs() * 0.51]);
            out.extend([b - s.abs() * 0.51, (b / s).round() * s, (b / s).floor() * s, (b / s).ceil() * s]);
        }
        if let (Some(lo), Some(hi)) = (p.min, p.max) {
            out.push(lo / 2.0 + hi / 2.0);
        }
    }
    out.retain(|v| v.is_finite());
    out
}

/// Number texts JSON readers disagree on or that overflow.
const NUMBER_TOKENS: &[&str] = &[
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e400",
    "-1e400",
    "1E2",
    "-0",
    "0.0000001",
    "100000000000000000000000000000",
    "12.50",
];

const KEYS: &[&str] =
    &["point", "points", "value", "values", "fc", "address", "id", "x", "", "setpoint", "pump", "Point"];

/// A JSON value, to be written out against a device (`Pick` and `Name`
/// index that device's numbers and point names). Generated independently of
/// the device so no strategy is built per case.
#[derive(Debug, Clone)]
enum J {
    Pick(usize),
    Float(f64),
    Int(i64),
    Lit(&'static str),
    Name(usize),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(&'static str, J)>),
}

/// What a body looks like before it is written out for a device.
#[derive(Debug, Clone)]
enum Body {
    Point { name: usize, v: J, id: Option<&'static str>, extra: Option<(&'static str, J)>, swap: bool },
    Points { pts: Vec<(usize, J)>, extra: Option<(&'static str, J)> },
    Raw { fc: &'static str, address: String, payload: Payload, plural: bool, extra: Option<(&'static str, J)> },
    Any(J),
}

/// What a raw write carries: any value, a short list, or a long list of
/// `n` items drawn from `items` by the bits of a number (long lists as
/// proptest vectors would cost a value tree per item).
#[derive(Debug, Clone)]
enum Payload {
    Json(J),
    List(Vec<&'static str>),
    Many(usize, u64, &'static [&'static str]),
}

#[derive(Debug, Clone)]
enum Input {
    Text(Body),
    Damaged(Body, Vec<(usize, u8, u8)>),
    Bytes(Vec<u8>),
}

fn json() -> BoxedStrategy<J> {
    let leaf = prop_oneof![
        6 => any::<usize>().prop_map(J::Pick),
        2 => any::<f64>().prop_map(J::Float),
        3 => (-70_000i64..70_000).prop_map(J::Int),
        1 => any::<i64>().prop_map(J::Int),
        2 => proptest::sample::select(&["true", "false", "null", "\"21.5\""][..]).prop_map(J::Lit),
        1 => any::<usize>().prop_map(J::Name),
        1 => tricky_string(6).prop_map(J::Str),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..4).prop_map(J::Obj),
        ]
    })
    .boxed()
}

fn input() -> impl Strategy<Value = Input> {
    let v = json();
    let extra = proptest::option::weighted(0.1, (proptest::sample::select(KEYS), v.clone()));
    let id = proptest::option::weighted(0.2, proptest::sample::select(&["\"m1\"", "7", "null"][..]));
    let point = (any::<usize>(), v.clone(), id, extra.clone(), any::<bool>())
        .prop_map(|(name, v, id, extra, swap)| Body::Point { name, v, id, extra, swap });
    let points = (proptest::collection::vec((any::<usize>(), v.clone()), 0..5), extra.clone())
        .prop_map(|(pts, extra)| Body::Points { pts, extra });
    let fc =
        proptest::sample::select(&["5", "6", "15", "16", "1", "3", "0", "17", "-1", "5.0", "\"5\"", "null", "6e0"][..]);
    let address = prop_oneof![
        3 => (0u32..=65536).prop_map(|a| a.to_string()),
        1 => proptest::sample::select(&["-1", "1.5", "\"1\"", "65535", "65535.0", "1e5"][..]).prop_map(str::to_owned),
    ];
    let coils = prop_oneof![
        4 => proptest::collection::vec(proptest::sample::select(&["true", "false"][..]), 0..12).prop_map(Payload::List),
        1 => (1960usize..1975, any::<u64>()).prop_map(|(n, bits)| Payload::Many(n, bits, &["true", "false", "1"])),
    ];
    let registers = prop_oneof![
        4 => proptest::collection::vec(
            proptest::sample::select(&["0", "1", "65535", "65536", "-1", "7.0", "7.5", "true"][..]),
            0..12
        )
        .prop_map(Payload::List),
        1 => (118usize..130, any::<u64>()).prop_map(|(n, bits)| Payload::Many(n, bits, &["0", "1", "65535"])),
    ];
    let payload = prop_oneof![v.clone().prop_map(Payload::Json), coils, registers];
    let raw = (fc, address, payload, any::<bool>(), extra)
        .prop_map(|(fc, address, payload, plural, extra)| Body::Raw { fc, address, payload, plural, extra });
    let body = prop_oneof![4 => point, 3 => points, 3 => raw, 2 => v.prop_map(Body::Any)];
    prop_oneof![
        12 => body.clone().prop_map(Input::Text),
        3 => (body, edits_between(1, 4)).prop_map(|(b, e)| Input::Damaged(b, e)),
        1 => proptest::collection::vec(any::<u8>(), 0..48).prop_map(Input::Bytes),
        1 => lossy_string(48).prop_map(|s| Input::Bytes(s.into_bytes())),
    ]
}

/// Writes recipes out as JSON text for one device.
struct Writer {
    numbers: Vec<f64>,
    names: Vec<String>,
}

impl Writer {
    fn new(device: &DeviceConfig) -> Self {
        let names = device.points.keys().cloned().chain(["nope".to_owned()]).collect();
        Writer { numbers: interesting(device), names }
    }

    fn name(&self, i: usize) -> &str {
        // Mostly the device's own points, sometimes any known name.
        if i % 8 == 7 {
            NAMES[i / 8 % NAMES.len()]
        } else {
            &self.names[i % self.names.len()]
        }
    }

    fn json(&self, j: &J) -> String {
        match j {
            J::Pick(i) => {
                let i = i % (self.numbers.len() + NUMBER_TOKENS.len());
                match self.numbers.get(i) {
                    Some(v) => num(*v),
                    None => NUMBER_TOKENS[i - self.numbers.len()].to_owned(),
                }
            }
            J::Float(v) if v.is_finite() => num(*v),
            J::Float(_) => "0".to_owned(),
            J::Int(n) => n.to_string(),
            J::Lit(l) => (*l).to_owned(),
            J::Name(i) => json_str(self.name(*i)),
            J::Str(s) => json_str(s),
            J::Arr(items) => format!("[{}]", items.iter().map(|j| self.json(j)).collect::<Vec<_>>().join(",")),
            J::Obj(entries) => object(entries.iter().map(|(k, v)| ((*k).to_owned(), self.json(v)))),
        }
    }

    fn body(&self, b: &Body) -> String {
        let extra = |e: &Option<(&'static str, J)>| e.as_ref().map(|(k, v)| ((*k).to_owned(), self.json(v)));
        match b {
            Body::Point { name, v, id, extra: x, swap } => {
                let mut e = vec![("point".to_owned(), json_str(self.name(*name))), ("value".to_owned(), self.json(v))];
                if *swap {
                    e.reverse();
                }
                e.extend(id.map(|i| ("id".to_owned(), i.to_owned())));
                e.extend(extra(x));
                object(e)
            }
            Body::Points { pts, extra: x } => {
                let inner = object(pts.iter().map(|(n, v)| (self.name(*n).to_owned(), self.json(v))));
                object([("points".to_owned(), inner)].into_iter().chain(extra(x)))
            }
            Body::Raw { fc, address, payload, plural, extra: x } => {
                let payload = match payload {
                    Payload::Json(j) => self.json(j),
                    Payload::List(list) => format!("[{}]", list.join(",")),
                    Payload::Many(n, bits, items) => {
                        // The first two items in turn; the third at one place
                        // when the low bit is set.
                        let odd = (bits & 1 == 1).then_some((bits >> 1) as usize % n);
                        let pick = |i: usize| if odd == Some(i) { items[2] } else { items[i % 2] };
                        format!("[{}]", (0..*n).map(pick).collect::<Vec<_>>().join(","))
                    }
                };
                let key = if *plural { "values" } else { "value" };
                let e = [("fc".to_owned(), (*fc).to_owned()), ("address".to_owned(), address.clone())];
                object(e.into_iter().chain([(key.to_owned(), payload)]).chain(extra(x)))
            }
            Body::Any(j) => self.json(j),
        }
    }

    fn input(&self, i: &Input) -> Vec<u8> {
        match i {
            Input::Text(b) => self.body(b).into_bytes(),
            Input::Damaged(b, e) => mutate(&self.body(b), e).into_bytes(),
            Input::Bytes(b) => b.clone(),
        }
    }
}

fn object(entries: impl IntoIterator<Item = (String, String)>) -> String {
    let inner: Vec<String> = entries.into_iter().map(|(k, v)| format!("{}:{v}", json_str(&k))).collect();
    format!("{{{}}}", inner.join(","))
}

/// The engineering value a register write for `p` carries, decoded the way
/// the device reads it.
fn decode(p: &PointConfig, regs: &[u16]) -> Option<f64> {
    let raw = match (p.ty, regs) {
        (PointType::U16, [r]) => f64::from(*r),
        (PointType::I16, [r]) => f64::from(*r as i16),
        (PointType::U32, [a, b]) => f64::from(join_words([*a, *b], p.word_order)),
        (PointType::I32, [a, b]) => f64::from(join_words([*a, *b], p.word_order) as i32),
        (PointType::F32, [a, b]) => f64::from(f32::from_bits(join_words([*a, *b], p.word_order))),
        _ => return None,
    };
    Some(raw * p.scale.unwrap_or(1.0))
}

/// Whether the decoded value `eng` is within the point's limits, allowing
/// only floating-point noise: for integer types a millionth of a scale step,
/// for f32 its own precision. Anything more is a write past a limit.
fn within_limits(p: &PointConfig, eng: f64) -> bool {
    let s = p.scale.unwrap_or(1.0).abs();
    let tol = |bound: f64| match p.ty {
        PointType::F32 => (bound.abs().max(eng.abs())) * 2f64.powi(-22) + f64::from(f32::MIN_POSITIVE) * s * 2.0,
        _ => s * 1e-6 + bound.abs() * 1e-12,
    };
    p.min.is_none_or(|lo| eng >= lo - tol(lo)) && p.max.is_none_or(|hi| eng <= hi + tol(hi))
}

/// Whether `w` is what a point write of `p` produces (address, function,
/// width) and its value respects the point's limits.
fn justified_by(w: &Write, p: &PointConfig) -> Result<(), String> {
    let writable = match p.ty {
        PointType::Bool => p.table == Table::Coil,
        _ => p.table == Table::Holding,
    };
    if !writable || w.address() != p.address {
        return Err("not this point".into());
    }
    let regs: Vec<u16> = match (w, p.ty) {
        (Write::SingleCoil { .. }, PointType::Bool) => return Ok(()),
        (Write::SingleRegister { value, .. }, PointType::U16 | PointType::I16) => vec![*value],
        (Write::MultipleRegisters { values, .. }, PointType::U32 | PointType::I32 | PointType::F32)
            if values.len() == 2 =>
        {
            values.clone()
        }
        _ => return Err("not this point's function or width".into()),
    };
    let eng = decode(p, &regs).ok_or("undecodable")?;
    if !within_limits(p, eng) {
        return Err(format!("decodes to {eng}, outside min {:?} / max {:?} (scale {:?})", p.min, p.max, p.scale));
    }
    Ok(())
}

fn bodies(ctx: &Ctx) -> Result<(), String> {
    check(ctx, (device(), input()), |(device, input)| {
        let body = Writer::new(&device).input(&input);
        let mut strict = device.clone();
        strict.allow_raw = false;
        let mut lax = device;
        lax.allow_raw = true;
        let r_strict = parse_body(&body, DEVICE, &strict);
        let r_lax = parse_body(&body, DEVICE, &lax);
        for r in [&r_strict, &r_lax] {
            match r {
                Ok(writes) => {
                    prop_assert!(!writes.is_empty(), "accepted with nothing to write");
                    for w in writes {
                        let _ = w.describe();
                    }
                }
                Err(e) => {
                    prop_assert!(e.to_string().len() < 2000, "reject reason of {} bytes: {e}", e.to_string().len())
                }
            }
        }
        if let Ok(writes) = &r_strict {
            // allow_raw = false: every write is one of the points, in limits.
            for w in writes {
                let why: Vec<String> = strict.points.values().filter_map(|p| justified_by(w, p).err()).collect();
                prop_assert!(
                    why.len() < strict.points.len(),
                    "write {w:?} from body {:?} is no point's write ({why:?})",
                    String::from_utf8_lossy(&body)
                );
            }
            // allow_raw only adds raw bodies.
            prop_assert_eq!(&r_lax, &r_strict);
        }
        match (&r_lax, &r_strict) {
            (Ok(writes), Err(e)) => {
                prop_assert!(e.to_string().contains("allow_raw = false"), "strict reason: {e}");
                prop_assert_eq!(writes.len(), 1);
                let w = &writes[0];
                let max = match w {
                    Write::MultipleCoils { .. } => MAX_WRITE_COILS,
                    Write::MultipleRegisters { .. } => MAX_WRITE_REGISTERS,
                    _ => 1,
                };
                prop_assert!((1..=max).contains(&w.count()), "{w:?}: count {}", w.count());
                prop_assert!(usize::from(w.address()) + w.count() <= 65536, "{w:?} runs past 65535");
            }
            (Err(a), Err(b)) => prop_assert!(a == b || b.to_string().contains("allow_raw = false"), "{a} / {b}"),
            _ => {}
        }
        Ok(())
    })
}

/// A raw value of each type, its engineering value through an optional
/// scale, and the body writing it: the registers hold exactly that raw value
/// (f32 bit for bit, -0.0 and subnormals included).
fn encoding(ctx: &Ctx) -> Result<(), String> {
    let ty = proptest::sample::select(&TYPES[1..]);
    let bits = prop_oneof![
        3 => any::<u32>(),
        1 => 0u32..4,
        1 => proptest::sample::select(&[0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x8000, 0x7FFF, 0xFFFF, 1, 0x7F7F_FFFF][..]),
    ];
    let scale = proptest::option::weighted(0.5, proptest::sample::select(SCALES));
    check(ctx, (ty, bits, scale, any::<bool>()), |(ty, bits, scale, little)| {
        let order = if little { WordOrder::Little } else { WordOrder::Big };
        // The raw value this case writes, and the registers that hold it.
        let (raw, want): (f64, Vec<u16>) = match ty {
            PointType::U16 => (f64::from(bits as u16), vec![bits as u16]),
            PointType::I16 => (f64::from(bits as u16 as i16), vec![bits as u16]),
            PointType::U32 => (f64::from(bits), split(bits, order)),
            PointType::I32 => (f64::from(bits as i32), split(bits, order)),
            _ => {
                let bits = if f32::from_bits(bits).is_finite() { bits } else { bits & 0x807F_FFFF };
                (f64::from(f32::from_bits(bits)), split(bits, order))
            }
        };
        let value = raw * scale.unwrap_or(1.0);
        let regs = encode_number(ty, value, scale, order);
        prop_assert_eq!(regs.as_ref(), Ok(&want), "{:?} {} (raw {}, scale {:?})", ty, value, raw, scale);
        let p = PointConfig { table: Table::Holding, address: 10, ty, word_order: order, scale, min: None, max: None };
        let back = decode(&PointConfig { scale: None, ..p.clone() }, &want).expect("decodes");
        prop_assert_eq!(back.to_bits(), raw.to_bits(), "{:?}: {} -> {:?} -> {}", ty, raw, want, back);
        // The same through a body: {"point": "p", "value": <value>}.
        let mut d = base_device().clone();
        d.points = BTreeMap::from([("p".to_owned(), p)]);
        let body = format!("{{\"point\": \"p\", \"value\": {}}}", num(value));
        let writes =
            parse_body(body.as_bytes(), DEVICE, &d).map_err(|e| TestCaseError::fail(format!("{body}: {e}")))?;
        let want = match want.as_slice() {
            [one] => Write::SingleRegister { address: 10, value: *one },
            _ => Write::MultipleRegisters { address: 10, values: want.clone() },
        };
        prop_assert_eq!(writes, vec![want], "{}", body);
        Ok(())
    })
}

fn split(bits: u32, order: WordOrder) -> Vec<u16> {
    c2d_gateway::router::encode::split_words(bits, order).to_vec()
}
