//! Inbound topics of both hub dialects: IoT Hub's devicebound topic with its
//! property bag (src/hub/azure/dialect.rs) and a plain broker's subscription
//! with a `+` device level (src/hub/mqtt.rs), plus the broker URL parser.

use crate::gens::{alphabet_string, edits, lossy_string, mutate, tricky_string};
use crate::propbag::device_id;
use crate::{check, Ctx, Property};
use c2d_gateway::config::Config;
use c2d_gateway::hub::azure::dialect::AzureDialect;
use c2d_gateway::hub::azure::propbag::{encode_devicebound, C2dProperties};
use c2d_gateway::hub::mqtt::MqttDialect;
use c2d_gateway::hub::net::{parse_url, Scheme};
use c2d_gateway::message::unix_ms;
use proptest::prelude::*;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

pub fn properties() -> Vec<Property> {
    vec![
        Property { target: "topics", name: "azure: generated message -> inbound", weight: 5, run: azure_generated },
        Property { target: "topics", name: "azure: any topic, no panic", weight: 4, run: azure_any },
        Property { target: "topics", name: "mqtt: generated topic and body", weight: 5, run: mqtt_generated },
        Property { target: "topics", name: "mqtt: any topic, matches the filter", weight: 4, run: mqtt_any },
        Property { target: "topics", name: "mqtt: broker url (mqtt, mqtts, ws, wss)", weight: 2, run: urls },
        Property { target: "topics", name: "azure: method topics, both ends", weight: 3, run: method_topics },
        Property { target: "topics", name: "azure: twin topics and patches, both ends", weight: 3, run: twin_topics },
    ]
}

const MAX_BODY: usize = 1024;
const DEVICE: &str = "gw1";

fn azure() -> &'static AzureDialect {
    static D: OnceLock<AzureDialect> = OnceLock::new();
    D.get_or_init(|| {
        let text = format!(
            "[hub]\nkind = \"azure\"\nconnection_string = \"HostName=hub.azure-devices.net;DeviceId={DEVICE};SharedAccessKey=cGFzc3dvcmQ=\"\nmax_body = {MAX_BODY}\n[routing]\ndevice_property = \"device\"\n"
        );
        let cfg = Config::parse(&text, "fuzz.toml").unwrap_or_else(|e| panic!("{e}"));
        AzureDialect::from_config(&cfg).unwrap_or_else(|e| panic!("{e}"))
    })
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => (MAX_BODY - 2..MAX_BODY + 3).prop_map(|n| vec![b'x'; n]),
    ]
}

/// Properties with the routing property `device` somewhere among the
/// application properties (or absent).
fn message() -> impl Strategy<Value = C2dProperties> {
    let opt = || proptest::option::of(tricky_string(10));
    let app = proptest::collection::vec((tricky_string(6), proptest::option::of(tricky_string(8))), 0..4);
    let device = proptest::option::of((any::<usize>(), proptest::option::weighted(0.9, tricky_string(10))));
    // Up to 9999-12-31T23:59:59Z, the last instant $.exp can carry.
    let expiry = proptest::option::of((0u64..253_402_300_800, 0u32..10_000_000));
    (opt(), opt(), expiry, app, device).prop_map(|(mid, cid, expiry, mut app, device)| {
        for (k, _) in &mut app {
            if k.starts_with("$.") || k == "iothub-ack" || k.is_empty() {
                k.insert(0, 'k');
            }
        }
        if let Some((at, v)) = device {
            app.insert(at % (app.len() + 1), ("device".to_owned(), v));
        }
        C2dProperties {
            message_id: mid,
            correlation_id: cid,
            expiry: expiry.map(|(s, h)| UNIX_EPOCH + Duration::new(s, h * 100)),
            app,
            ..C2dProperties::default()
        }
    })
}

fn azure_generated(ctx: &Ctx) -> Result<(), String> {
    check(ctx, (message(), payload()), |(p, body)| {
        let topic = encode_devicebound(DEVICE, &p);
        let m = azure().inbound(&topic, &body);
        prop_assert!(m.is_some(), "own devicebound topic ignored: {topic:?}");
        let m = m.unwrap();
        prop_assert_eq!(&m.body, &body);
        if body.len() > MAX_BODY {
            prop_assert!(m.reject.as_deref().is_some_and(|r| r.contains("exceeds max_body")), "{:?}", m.reject);
        } else {
            prop_assert_eq!(&m.reject, &None);
        }
        prop_assert_eq!(&m.id, &p.message_id.clone().filter(|s| !s.is_empty()));
        prop_assert_eq!(&m.correlation_id, &p.correlation_id);
        prop_assert_eq!(m.expires_at, p.expiry.map(unix_ms));
        let device = p.app.iter().find(|(k, _)| k == "device").and_then(|(_, v)| v.clone());
        prop_assert_eq!(&m.device, &device);
        Ok(())
    })
}

fn azure_any(ctx: &Ctx) -> Result<(), String> {
    let prefix = format!("devices/{DEVICE}/messages/devicebound/");
    let topic = prop_oneof![
        3 => (message(), edits(4)).prop_map(|(p, e)| mutate(&encode_devicebound(DEVICE, &p), &e)),
        2 => tricky_string(40).prop_map(|t| format!("devices/{DEVICE}/messages/devicebound/{t}")),
        1 => (device_id(), tricky_string(20)).prop_map(|(d, t)| format!("devices/{d}/messages/devicebound/{t}")),
        1 => lossy_string(80),
    ];
    check(ctx, (topic, payload()), |(topic, body)| {
        let m = azure().inbound(&topic, &body);
        prop_assert_eq!(m.is_some(), topic.starts_with(&prefix), "{:?}", topic);
        if let Some(m) = m {
            prop_assert_eq!(&m.body, &body);
            if let Some(r) = &m.reject {
                prop_assert!(m.id.is_none() || body.len() > MAX_BODY, "rejected yet an id: {m:?}");
                prop_assert!(r.len() < 1200, "reject reason of {} bytes", r.len());
            }
        }
        Ok(())
    })
}

/// Subscription filters the config accepts, with and without a device level.
const FILTERS: [&str; 7] = ["gateway/+/c2d", "+", "c2d/+", "a/b/c", "plant/+/cmd/set", "+/x", "x//+"];

fn mqtt(i: usize) -> &'static MqttDialect {
    static D: OnceLock<Vec<MqttDialect>> = OnceLock::new();
    &D.get_or_init(|| {
        FILTERS
            .iter()
            .map(|f| {
                let text = format!(
                    "[hub]\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\nsubscribe = \"{f}\"\nclient_id = \"t\"\nmax_body = {MAX_BODY}\n"
                );
                let cfg = Config::parse(&text, "fuzz.toml").unwrap_or_else(|e| panic!("{f}: {e}"));
                MqttDialect::from_config(&cfg).unwrap_or_else(|e| panic!("{e}"))
            })
            .collect()
    })[i]
}

/// The `id` of a plain-broker body: absent, a string, a number or another
/// JSON value.
#[derive(Debug, Clone)]
enum Id {
    None,
    Str(String),
    Int(i64),
    Float(f64),
    Other(&'static str),
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn mqtt_generated(ctx: &Ctx) -> Result<(), String> {
    let level = tricky_string(10).prop_map(|s| s.replace('/', ""));
    let id = prop_oneof![
        Just(Id::None),
        tricky_string(8).prop_map(Id::Str),
        any::<i64>().prop_map(Id::Int),
        (-1e6f64..1e6).prop_map(Id::Float),
        proptest::sample::select(&["true", "null", "[]", "{}", "\"\""][..]).prop_map(Id::Other),
    ];
    let body = (id, proptest::option::of(tricky_string(12)), any::<bool>(), any::<bool>());
    check(ctx, (0..FILTERS.len(), level, body), |(f, level, (id, text, extra, raw))| {
        let d = mqtt(f);
        let topic = FILTERS[f].replace('+', &level);
        let mut fields = Vec::new();
        match &id {
            Id::None => {}
            Id::Str(s) => fields.push(format!("\"id\": {}", json_str(s))),
            Id::Int(n) => fields.push(format!("\"id\": {n}")),
            Id::Float(x) => fields.push(format!("\"id\": {}", serde_json::Value::from(*x))),
            Id::Other(o) => fields.push(format!("\"id\": {o}")),
        }
        if let Some(t) = &text {
            fields.push(format!("\"text\": {}", json_str(t)));
        }
        if extra {
            fields.push("\"point\": \"x\"".to_owned());
        }
        let payload = if raw {
            text.clone().unwrap_or_default().into_bytes()
        } else {
            format!("{{{}}}", fields.join(", ")).into_bytes()
        };
        let m = d.inbound(&topic, &payload);
        prop_assert!(m.is_some(), "{topic:?} does not match {}", FILTERS[f]);
        let m = m.unwrap();
        let want_device = FILTERS[f].contains('+').then(|| level.clone());
        prop_assert_eq!(&m.device, &want_device);
        // A non-integer number as id is refused (rounding could make two ids one).
        let float_id = !raw && matches!(id, Id::Float(_));
        if float_id {
            prop_assert!(m.reject.as_deref().is_some_and(|r| r.contains("not a string or an integer")), "{:?}", m);
        } else {
            prop_assert_eq!(&m.reject, &None);
        }
        if raw {
            // Not a JSON object (or one by accident): no id unless it is one.
            let is_obj =
                matches!(serde_json::from_slice::<serde_json::Value>(&payload), Ok(serde_json::Value::Object(_)));
            if !is_obj {
                prop_assert_eq!(&m.id, &None);
                prop_assert_eq!(&m.body, &payload);
            }
            return Ok(());
        }
        let want_id = match &id {
            Id::Str(s) if !s.is_empty() => Some(s.clone()),
            Id::Int(n) => Some(n.to_string()),
            _ => None,
        };
        prop_assert_eq!(&m.id, &want_id);
        let want_body = match &text {
            Some(t) if !extra => t.clone().into_bytes(),
            _ => payload.clone(),
        };
        prop_assert_eq!(&m.body, &want_body);
        Ok(())
    })
}

const TOPIC_ALPHABET: &[&str] =
    &["gateway", "/", "/", "+", "#", "c2d", "a", "b", "c", "x", "plant", "cmd", "set", "é", " "];

/// Whether `topic` matches `filter` (levels equal, `+` matching any one level).
fn matches_filter(filter: &str, topic: &str) -> Option<Option<String>> {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if f.len() != t.len() {
        return None;
    }
    let mut device = None;
    for (a, b) in f.iter().zip(&t) {
        if *a == "+" {
            device = Some((*b).to_owned());
        } else if a != b {
            return None;
        }
    }
    Some(device)
}

fn mqtt_any(ctx: &Ctx) -> Result<(), String> {
    let topic = prop_oneof![3 => alphabet_string(TOPIC_ALPHABET, 8), 1 => lossy_string(30)];
    check(ctx, (0..FILTERS.len(), topic, lossy_string(40)), |(f, topic, body)| {
        let m = mqtt(f).inbound(&topic, body.as_bytes());
        let want = matches_filter(FILTERS[f], &topic);
        prop_assert_eq!(m.is_some(), want.is_some(), "{:?} against {}", topic, FILTERS[f]);
        if let (Some(m), Some(device)) = (m, want) {
            prop_assert_eq!(m.device, device);
        }
        Ok(())
    })
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => alphabet_string(&["broker", ".", "example", "-", "a", "0", "1"], 6).prop_map(|h| format!("h{h}")),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| format!("10.{a}.{b}.1")),
        1 => proptest::sample::select(&["[::1]", "[2001:db8::1]", "[::]", "localhost"][..]).prop_map(str::to_owned),
    ]
}

/// IPv6 hosts whose last group is not empty (once mistaken for a port when
/// the URL had none: see `mqtt_url_ipv6_without_port`).
fn ipv6_host() -> impl Strategy<Value = String> {
    proptest::sample::select(&["[fe80::1:2]", "[2001:db8::5]", "[::ffff:10.0.0.1]"][..]).prop_map(str::to_owned)
}

fn urls(ctx: &Ctx) -> Result<(), String> {
    let url = prop_oneof![
        4 => (0..4usize, host(), proptest::option::of(1u16..=u16::MAX), any::<bool>()),
        1 => (0..4usize, ipv6_host(), (1u16..=u16::MAX).prop_map(Some), any::<bool>()),
    ];
    let path = alphabet_string(&["mqtt", "/", "$iothub", "websocket", "?a=b", "&", "x"], 5);
    check(ctx, (url, path, tricky_string(30)), |((scheme, host, port, slash), path, junk)| {
        let _ = parse_url(&junk);
        let _ = parse_url(&format!("mqtt://{junk}"));
        let _ = parse_url(&format!("wss://{junk}"));
        let scheme = [Scheme::Mqtt, Scheme::Mqtts, Scheme::Ws, Scheme::Wss][scheme];
        let mut url = match port {
            Some(p) => format!("{}{host}:{p}", scheme.prefix()),
            None => format!("{}{host}", scheme.prefix()),
        };
        let want_port = port.unwrap_or(match scheme {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        });
        let want_path = if scheme.websocket() && !path.is_empty() {
            url.push('/');
            url.push_str(&path);
            format!("/{path}")
        } else if slash {
            url.push('/');
            String::new()
        } else {
            String::new()
        };
        let want_path = match (scheme.websocket(), want_path.as_str()) {
            (true, "") => "/".to_string(),
            _ => want_path,
        };
        let e = parse_url(&url).map_err(|e| TestCaseError::fail(format!("{url}: {e}")))?;
        prop_assert_eq!((e.scheme, &e.host, e.port, &e.path), (scheme, &host, want_port, &want_path), "{}", url);
        Ok(())
    })
}

/// Direct method topics: a request topic the gateway reads back names the
/// method and request id it was made of (the emulator's format); any
/// other string is a method call only if it has the request prefix; the
/// answer's topic parses back at the emulator.
fn method_topics(ctx: &Ctx) -> Result<(), String> {
    use c2d_gateway::emulator::methods::parse_response_topic;
    use c2d_gateway::hub::azure::methods::{parse_request_topic, response_topic};
    const NAME: &[&str] = &["a", "b", "write", "_", "-", ".", "0", "9", "é"];
    const RID: &[&str] = &["0", "1", "a", "f", "7"];
    let name = alphabet_string(NAME, 20).prop_map(|s| format!("m{s}"));
    let rid = alphabet_string(RID, 12).prop_map(|s| format!("r{s}"));
    let any = prop_oneof![
        2 => tricky_string(40).prop_map(|t| format!("$iothub/methods/POST/{t}")),
        1 => lossy_string(60),
    ];
    check(ctx, (name, rid, any, 100u16..600), |(name, rid, any, status)| {
        let topic = format!("$iothub/methods/POST/{name}/?$rid={rid}");
        prop_assert_eq!(parse_request_topic(&topic), Some((name.clone(), rid.clone())));
        prop_assert_eq!(parse_response_topic(&response_topic(status, &rid)), Ok((status, rid.clone())));
        if let Some((n, r)) = parse_request_topic(&any) {
            prop_assert!(any.starts_with("$iothub/methods/POST/") && !n.is_empty() && !r.is_empty(), "{:?}", any);
        }
        let _ = parse_response_topic(&any);
        Ok(())
    })
}

/// Twin topics and patches: any topic the emulator's twin handler gets is
/// answered or refused (never a panic), an answer's topic parses at the
/// gateway with the request id it was made for, and any patch body leaves
/// the twin valid (versions only grow, the answer is 204 or 400).
fn twin_topics(ctx: &Ctx) -> Result<(), String> {
    use c2d_gateway::emulator::twin::{answer, Twin};
    use c2d_gateway::hub::azure::methods::parse_twin_topic;
    const RID: &[&str] = &["0", "1", "a", "f"];
    let rid = alphabet_string(RID, 8).prop_map(|s| format!("r{s}"));
    let topic = prop_oneof![
        2 => Just("$iothub/twin/GET/".to_string()),
        2 => Just("$iothub/twin/PATCH/properties/reported/".to_string()),
        1 => tricky_string(30).prop_map(|t| format!("$iothub/twin/{t}")),
    ];
    let body = prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..40),
        2 => (tricky_string(8), any::<i32>(), proptest::option::of(tricky_string(6)))
            .prop_map(|(k, v, nested)| match nested {
                Some(n) => format!("{{\"{}\": {{\"{}\": {v}}}}}", k.replace(['"', '\\'], ""), n.replace(['"', '\\'], "")),
                None => format!("{{\"{}\": null, \"v\": {v}}}", k.replace(['"', '\\'], "")),
            }.into_bytes()),
    ];
    check(ctx, (topic, rid, body, lossy_string(60)), |(topic, rid, body, any)| {
        let mut twin = Twin::default();
        let full = format!("{topic}?$rid={rid}");
        let before = (twin.desired_version, twin.reported_version);
        match answer(&mut twin, &full, &body) {
            Ok((res, _)) => {
                let parsed = parse_twin_topic(&res);
                prop_assert!(
                    matches!(&parsed, Some(Some((200 | 204 | 400, r))) if *r == rid),
                    "{:?} -> {:?}",
                    res,
                    parsed
                );
            }
            Err(e) => prop_assert!(e.contains("does not have"), "{}", e),
        }
        prop_assert!(twin.desired_version >= before.0 && twin.reported_version >= before.1);
        let _ = parse_twin_topic(&any);
        Ok(())
    })
}
