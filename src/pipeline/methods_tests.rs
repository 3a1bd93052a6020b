//! Tests of `methods.rs`: payload checks (status codes and reasons), the
//! answers built from entries, and no panic on arbitrary payloads.

use super::*;
use proptest::prelude::*;

const CONFIG: &str = r#"
[hub]
kind = "mqtt"
url = "mqtt://127.0.0.1:1883"
[buses.plc]
kind = "modbus-tcp"
address = "127.0.0.1:502"
[buses.line]
kind = "serial"
port = "/dev/ttyUSB0"
[devices.boiler]
bus = "plc"
unit = 3
points.setpoint = { table = "holding", address = 100, type = "f32" }
points.temperature = { table = "input", address = 0, type = "i16", scale = 0.1 }
[devices.printer]
bus = "line"
"#;

fn cfg() -> Config {
    toml::from_str(CONFIG).expect("test config")
}

fn status_of(name: &str, payload: &str) -> u16 {
    match parse(&cfg(), name, payload.as_bytes()) {
        Ok(_) => 200,
        Err(r) => r.status,
    }
}

#[test]
fn reads_are_checked_against_the_devices_points() {
    match parse(&cfg(), "read", br#"{"device": "boiler", "points": ["temperature", "setpoint"]}"#).unwrap() {
        Call::Read { device, unit, bus, reads } => {
            assert_eq!((device.as_str(), unit, bus.as_str()), ("boiler", 3, "plc"));
            assert_eq!(reads.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["temperature", "setpoint"]);
        }
        other => panic!("{other:?}"),
    }
    for (payload, status) in [
        (r#"{"device": "boiler", "points": ["nope"]}"#, 404),
        (r#"{"device": "nobody", "points": ["setpoint"]}"#, 404),
        (r#"{"device": "boiler", "points": []}"#, 400),
        (r#"{"device": "boiler", "points": "setpoint"}"#, 400),
        (r#"{"device": "boiler", "points": [1]}"#, 400),
        (r#"{"device": "boiler"}"#, 400),
        (r#"{"points": ["setpoint"]}"#, 400),
        (r#"{"device": "boiler", "points": ["setpoint"], "extra": 1}"#, 400),
        (r#"{"device": "printer", "points": ["x"]}"#, 400),
        (r#"["boiler"]"#, 400),
        ("not json", 400),
    ] {
        assert_eq!(status_of("read", payload), status, "{payload}");
    }
}

#[test]
fn writes_are_checked_like_c2d_bodies_and_lose_their_device_and_id() {
    match parse(&cfg(), "write", br#"{"device": "boiler", "id": "w1", "point": "setpoint", "value": 21.5}"#).unwrap() {
        Call::Write { device, id, body } => {
            assert_eq!((device.as_str(), id.as_deref()), ("boiler", Some("w1")));
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body, json!({"point": "setpoint", "value": 21.5}));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse(&cfg(), "write", br#"{"device": "boiler", "point": "setpoint", "value": 1}"#),
        Ok(Call::Write { id: None, .. })
    ));
    for (payload, status) in [
        (r#"{"device": "boiler", "point": "nope", "value": 1}"#, 404),
        (r#"{"device": "nobody", "point": "setpoint", "value": 1}"#, 404),
        (r#"{"device": "boiler", "point": "setpoint", "value": "hot"}"#, 400),
        (r#"{"device": "boiler", "point": "temperature", "value": 1}"#, 400),
        (r#"{"device": "boiler", "id": 7, "point": "setpoint", "value": 1}"#, 400),
        (r#"{"device": "boiler", "id": "", "point": "setpoint", "value": 1}"#, 400),
        (r#"{"point": "setpoint", "value": 1}"#, 400),
        ("[]", 400),
    ] {
        assert_eq!(status_of("write", payload), status, "{payload}");
    }
}

#[test]
fn status_takes_any_payload_and_other_methods_are_404() {
    assert_eq!(parse(&cfg(), "status", b"null"), Ok(Call::Status));
    assert_eq!(parse(&cfg(), "status", b""), Ok(Call::Status));
    let r = parse(&cfg(), "reboot", b"{}").unwrap_err();
    assert_eq!(r.status, 404);
    assert!(r.reason.contains("write, read and status"), "{}", r.reason);
}

#[test]
fn answers_follow_the_final_state() {
    let entry = |state, f: &dyn Fn(&mut Entry)| {
        let mut e = Entry::new(1, "w1".into(), 0, state);
        e.device = Some("boiler".into());
        f(&mut e);
        e
    };
    let (s, v) = final_answer(&entry(State::Delivered, &|_| {}), false);
    assert_eq!((s, v["status"].as_str(), v["message_id"].as_str()), (200, Some("delivered"), Some("w1")));
    assert!(v.get("duplicate").is_none());
    assert_eq!(final_answer(&entry(State::Delivered, &|_| {}), true).1["duplicate"], true);
    assert_eq!(final_answer(&entry(State::Rejected, &|e| e.conflict = true), false).0, 409);
    assert_eq!(final_answer(&entry(State::Rejected, &|e| e.reject = Some("bad".into())), false).0, 400);
    assert_eq!(final_answer(&entry(State::Rejected, &|_| {}), false).0, 422);
    assert_eq!(final_answer(&entry(State::Expired, &|_| {}), false).0, 500);
    assert_eq!(final_answer(&entry(State::Uncertain, &|_| {}), false).0, 500);
    let (s, v) = pending_answer(&entry(State::Queued, &|_| {}), 504, "not final");
    assert_eq!((s, v["status"].as_str(), v.get("duplicate")), (504, Some("queued"), None));
    assert_eq!(pending_answer(&entry(State::Sending, &|_| {}), 202, "").1["duplicate"], true);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn arbitrary_payloads_never_panic(name in "(read|write|status|[a-z]{0,6})", payload in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse(&cfg(), &name, &payload);
    }

    #[test]
    fn arbitrary_json_calls_get_a_clear_status(device in "(boiler|printer|x)?", point in "(setpoint|temperature|q)?", value in any::<i32>(), id in proptest::option::of("[a-z]{0,3}")) {
        let mut m = json!({"device": device, "point": point, "value": value, "points": [point]});
        if let Some(id) = id { m["id"] = json!(id); }
        for name in ["read", "write"] {
            if let Err(r) = parse(&cfg(), name, m.to_string().as_bytes()) {
                prop_assert!([400, 404].contains(&r.status), "{} {}", r.status, r.reason);
                prop_assert!(!r.reason.is_empty());
            }
        }
    }
}
