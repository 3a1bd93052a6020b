//! IoT Hub property bags (`k=v&k=v`, percent-encoded), devicebound topics and
//! `$.exp` timestamps: src/hub/azure/propbag.rs.

use crate::gens::{alphabet_string, edits, lossy_string, mutate, tricky_string, tricky_string_between};
use crate::{check, Ctx, Property};
use c2d_gateway::hub::azure::propbag::{
    encode, encode_devicebound, format_expiry, keys, parse, parse_devicebound, parse_expiry, C2dProperties,
    PropBagError,
};
use proptest::prelude::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn properties() -> Vec<Property> {
    vec![
        Property { target: "propbag", name: "parse: any text, no panic, canonical", weight: 6, run: parse_any },
        Property { target: "propbag", name: "encode -> parse round trip", weight: 6, run: round_trip },
        Property { target: "propbag", name: "devicebound topic round trip", weight: 4, run: devicebound_round_trip },
        Property { target: "propbag", name: "devicebound: any topic, no panic", weight: 4, run: devicebound_any },
        Property { target: "propbag", name: "$.exp format -> parse, offsets", weight: 3, run: expiry_round_trip },
        Property { target: "propbag", name: "$.exp: any text, no panic", weight: 3, run: expiry_any },
    ]
}

type Props = Vec<(String, Option<String>)>;

/// Text that looks like a bag: escapes (good, truncated, invalid UTF-8),
/// separators, pluses and Unicode.
const BAG_ALPHABET: &[&str] = &[
    "%",
    "2",
    "5",
    "4",
    "1",
    "a",
    "F",
    "g",
    "&",
    "=",
    "+",
    "é",
    "%C3",
    "%A9",
    "%FF",
    "%E2%82",
    "%AC",
    "%0",
    "%%",
    "%26",
    "%3D",
    "%24.mid",
    "$.exp",
    "k",
    "v",
    "&&",
    "%ed%a0%80",
];

fn bag_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => alphabet_string(BAG_ALPHABET, 24),
        2 => tricky_string(48),
        2 => lossy_string(64),
        1 => lossy_string(600),
    ]
}

/// A parsed bag survives encoding and parsing again unchanged.
fn canonical(props: &Props) -> Result<(), TestCaseError> {
    for (k, _) in props {
        prop_assert!(!k.is_empty(), "empty key accepted: {props:?}");
    }
    let again = parse(&encode(props));
    prop_assert_eq!(again.as_ref(), Ok(props));
    Ok(())
}

/// Error text is bounded (a huge malicious topic must not become a huge log
/// line) and renders without panicking.
fn bounded(e: &PropBagError) -> Result<(), TestCaseError> {
    let text = e.to_string();
    let dbg = format!("{e:?}");
    prop_assert!(text.len() < 1200 && dbg.len() < 1200, "unbounded error text ({} bytes): {text}", text.len());
    Ok(())
}

fn parse_any(ctx: &Ctx) -> Result<(), String> {
    check(ctx, bag_text(), |s| {
        match parse(&s) {
            Ok(props) => canonical(&props)?,
            Err(e) => bounded(&e)?,
        }
        Ok(())
    })
}

fn key() -> impl Strategy<Value = String> {
    tricky_string_between(1, 10)
}

fn props(max: usize) -> impl Strategy<Value = Props> {
    proptest::collection::vec((key(), proptest::option::weighted(0.8, tricky_string(14))), 0..=max)
}

fn round_trip(ctx: &Ctx) -> Result<(), String> {
    check(ctx, props(8), |props| {
        let bag = encode(&props);
        // Strict encoding: only unreserved characters, escapes and separators.
        prop_assert!(
            bag.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%&=".contains(&b)),
            "not strictly encoded: {bag:?}"
        );
        prop_assert_eq!(parse(&bag), Ok(props));
        Ok(())
    })
}

const SYSTEM_KEYS: [&str; 8] = [
    keys::MESSAGE_ID,
    keys::CORRELATION_ID,
    keys::CONTENT_TYPE,
    keys::CONTENT_ENCODING,
    keys::EXPIRY,
    keys::USER_ID,
    keys::TO,
    keys::ACK,
];

/// IoT Hub device ids: ASCII letters, digits and `-:.+%_#*?!(),=@;$'`.
pub fn device_id() -> impl Strategy<Value = String> {
    alphabet_string(
        &[
            "a", "Z", "0", "9", "-", ":", ".", "+", "%", "_", "#", "*", "?", "!", "(", ")", ",", "=", "@", ";", "$",
            "'", "dev", "gw1",
        ],
        12,
    )
    .prop_map(|s| if s.is_empty() { "d".to_owned() } else { s })
}

/// Years 0000..=9999, whole 100 ns (IoT Hub's precision).
const MIN: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z

/// Within what `format_expiry` writes without clamping.
fn in_range(t: SystemTime) -> bool {
    at(MIN, 0) <= t && t <= at(MAX, 999_999_999)
}

fn expiry_time() -> impl Strategy<Value = SystemTime> {
    let secs = prop_oneof![
        3 => 1_500_000_000i64..2_200_000_000,
        2 => MIN..=MAX,
        1 => proptest::sample::select(&[MIN, MAX, 0, -1, 1, 951_782_400, 4_107_542_400, 40_000_000_000][..]),
    ];
    (secs, 0u32..10_000_000).prop_map(|(s, hundreds)| at(s, hundreds * 100))
}

fn at(secs: i64, nanos: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(u64::from(nanos))
    }
}

/// `t` rounded down to a whole 100 ns, as `format_expiry` writes it.
fn to_100ns(t: SystemTime) -> SystemTime {
    let ns: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    let floor = ns.div_euclid(100) * 100;
    let (secs, nanos) = (floor.div_euclid(1_000_000_000), floor.rem_euclid(1_000_000_000));
    at(secs as i64, nanos as u32)
}

fn c2d_properties() -> impl Strategy<Value = C2dProperties> {
    let opt = || proptest::option::of(tricky_string(12));
    ((opt(), opt(), opt(), opt()), proptest::option::of(expiry_time()), (opt(), opt(), opt()), props(5)).prop_map(
        |((mid, cid, ct, ce), expiry, (ack, uid, to), mut app)| {
            // A system key as an application key would come back as the
            // system property (documented): rename it.
            for (k, _) in &mut app {
                if SYSTEM_KEYS.contains(&k.as_str()) {
                    k.insert_str(0, "app");
                }
            }
            C2dProperties {
                message_id: mid,
                correlation_id: cid,
                content_type: ct,
                content_encoding: ce,
                expiry,
                ack,
                user_id: uid,
                to,
                app,
            }
        },
    )
}

fn devicebound_round_trip(ctx: &Ctx) -> Result<(), String> {
    check(ctx, (device_id(), c2d_properties()), |(device, p)| {
        let topic = encode_devicebound(&device, &p);
        prop_assert_eq!(parse_devicebound(&topic, &device), Ok(p));
        let other = format!("{device}x");
        let wrong = matches!(parse_devicebound(&topic, &other), Err(PropBagError::WrongTopic { .. }));
        prop_assert!(wrong, "{topic:?} accepted for device {other:?}");
        Ok(())
    })
}

/// Topics from IoT Hub's own shape, damaged, or arbitrary.
fn devicebound_any(ctx: &Ctx) -> Result<(), String> {
    let topic = prop_oneof![
        3 => (bag_text(), proptest::collection::vec(proptest::sample::select(&SYSTEM_KEYS[..]), 0..4))
            .prop_map(|(bag, sys)| {
                let mut t = "devices/d/messages/devicebound/".to_owned();
                for k in sys {
                    t.push_str(&k.replace('$', "%24"));
                    t.push_str("=x&");
                }
                t.push_str(&bag);
                t
            }),
        2 => (c2d_properties(), edits(4)).prop_map(|(p, e)| mutate(&encode_devicebound("d", &p), &e)),
        1 => lossy_string(120),
    ];
    check(ctx, topic, |t| {
        match parse_devicebound(&t, "d") {
            Ok(mut p) => {
                // Whatever was accepted encodes back to an equivalent topic
                // ($.exp to IoT Hub's 100 ns: finer digits are dropped).
                let again = parse_devicebound(&encode_devicebound("d", &p), "d");
                p.expiry = p.expiry.map(to_100ns);
                prop_assert_eq!(again, Ok(p));
            }
            Err(e) => bounded(&e)?,
        }
        Ok(())
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.f]` of `t` in UTC (`format_expiry` minus the `Z`),
/// with 0 to 9 fractional digits.
fn civil(t: SystemTime, digits: usize) -> String {
    let s = format_expiry(t); // ...SS.fffffffZ
    let (base, frac) = s.trim_end_matches('Z').split_once('.').expect("fraction");
    let frac = format!("{frac}00");
    if digits == 0 {
        base.to_owned()
    } else {
        format!("{base}.{}", &frac[..digits])
    }
}

fn expiry_round_trip(ctx: &Ctx) -> Result<(), String> {
    let offset = (any::<bool>(), 0i64..24, 0i64..60);
    check(ctx, (expiry_time(), offset, 7usize..=9), |(t, (plus, oh, om), digits)| {
        let s = format_expiry(t);
        prop_assert_eq!(parse_expiry(&s), Ok(t), "{}", s);
        // The same instant written with a UTC offset and 7 to 9 digits.
        let off = Duration::from_secs((oh * 3600 + om * 60) as u64);
        let local = if plus { t.checked_add(off) } else { t.checked_sub(off) };
        // Only where the local time is in 0000..=9999 as well.
        let Some(local) = local.filter(|l| in_range(*l)) else { return Ok(()) };
        let text = format!("{}{}{oh:02}:{om:02}", civil(local, digits), if plus { '+' } else { '-' });
        prop_assert_eq!(parse_expiry(&text), Ok(t), "{}", text);
        Ok(())
    })
}

const TS_ALPHABET: &[&str] =
    &["0", "1", "2", "9", "-", ":", "T", "t", "Z", "z", ".", "+", " ", "60", "99", "12", "31", "29", "02", "é"];

fn expiry_any(ctx: &Ctx) -> Result<(), String> {
    let text = prop_oneof![
        3 => (expiry_time(), edits(3)).prop_map(|(t, e)| mutate(&format_expiry(t), &e)),
        2 => alphabet_string(TS_ALPHABET, 32),
        1 => (0u32..=9999, 0u32..=99, 0u32..=99, 0u32..=99, 0u32..=99, 0u32..=99, tricky_string(12)).prop_map(
            |(y, mo, d, h, mi, s, tail)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{tail}")
        ),
        1 => lossy_string(40),
    ];
    check(ctx, text, |s| {
        match parse_expiry(&s) {
            Ok(t) if !in_range(t) => {} // an offset took it past 0000/9999: formatting clamps
            Ok(t) => {
                // Anything accepted is a real instant that formats and parses
                // back to itself (to IoT Hub's 100 ns).
                let f = format_expiry(t);
                let back = parse_expiry(&f);
                prop_assert!(back.is_ok(), "{s:?} -> {f:?} does not parse: {back:?}");
                let back = back.unwrap();
                let diff = match back.duration_since(t) {
                    Ok(d) => d,
                    Err(e) => e.duration(),
                };
                prop_assert!(diff < Duration::from_nanos(100), "{s:?} -> {f:?} -> {back:?} != {t:?}");
            }
            Err(e) => bounded(&e)?,
        }
        Ok(())
    })
}
