//! Tests of config loading and checking (`load.rs`, `validate.rs`).
//!
//! Expected lines are found by searching the test text for a snippet, so the
//! snippets below must be unique in their text.

use super::*;

const EXAMPLE: &str = include_str!("../../config/example.toml");

/// A valid hub and one bus of each kind, for tests to extend.
const BASE: &str = r#"[hub]
kind = "azure"

[buses.field]
kind = "modbus-rtu"
port = "/dev/ttyUSB0"

[buses.plc]
kind = "modbus-tcp"
address = "10.0.0.2:502"

[buses.display]
kind = "serial"
port = "/dev/ttyS1"
"#;

fn problems(text: &str) -> Vec<Diagnostic> {
    match Config::parse(text, "test.toml") {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(d) => d.problems,
    }
}

fn line_of(text: &str, snippet: &str) -> usize {
    let mut hits = text.lines().enumerate().filter(|(_, l)| l.contains(snippet));
    let (i, _) = hits.next().unwrap_or_else(|| panic!("{snippet:?} not in the text"));
    assert!(hits.next().is_none(), "{snippet:?} is not unique in the text");
    i + 1
}

/// Asserts that `text` has exactly one problem, on the line holding `at`,
/// whose message contains `msg`.
fn one(text: &str, at: &str, msg: &str) {
    let ps = problems(text);
    let line = line_of(text, at);
    assert!(
        ps.len() == 1 && ps[0].line == Some(line) && ps[0].message.contains(msg),
        "wanted only {msg:?} at line {line}, got {ps:#?}\nin:\n{text}"
    );
    assert!(ps[0].column.is_some());
}

/// `one` for each case, each appended to `BASE`.
fn each_one(cases: &[(&str, &str, &str)]) {
    for (extra, at, msg) in cases {
        one(&format!("{BASE}{extra}"), at, msg);
    }
}

fn ok(text: &str) -> Config {
    Config::parse(text, "test.toml").unwrap_or_else(|d| panic!("unexpected problems:\n{d}"))
}

#[test]
fn example_is_valid() {
    let c = ok(EXAMPLE);
    assert_eq!(c.summary(), "hub azure, 3 buses, 3 devices, 7 points");
    assert_eq!(c.hub.kind, HubKind::Azure);
    assert!(c.hub.connection_string_file.is_some());
    assert_eq!(c.buses["field"].timeout, Dur::millis(500));
    assert_eq!(c.buses["display"].framing, Framing::Line);
    assert_eq!(c.buses["display"].line_ending, "\r\n");
    let speed = &c.devices["press"].points["speed"];
    assert_eq!((speed.ty, speed.word_order, speed.scale), (PointType::I32, WordOrder::Little, Some(0.1)));
    assert_eq!(c.devices["boiler"].points["mode"].max, Some(3.0));
    assert_eq!(c.routing.default_device.as_deref(), Some("panel"));
}

#[test]
fn minimal_config_takes_defaults() {
    let c = ok("[hub]\nkind = \"mqtt\"\nurl = \"mqtt://localhost\"\n");
    assert_eq!(c.gateway.max_messages, 100_000);
    assert_eq!(c.hub.handover_after, Dur::secs(40));
    assert_eq!(c.hub.subscribe, "gateway/+/c2d");
    assert_eq!(c.routing.device_property, "device");
    assert_eq!(c.summary(), "hub mqtt, 0 buses, 0 devices, 0 points");
}

#[test]
fn load_reads_a_file_and_reports_a_missing_one() {
    let dir = std::env::temp_dir().join(format!("c2d-gateway-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, EXAMPLE).unwrap();
    assert!(Config::load(&path).is_ok());
    std::fs::write(&path, "[hub]\nkind = \"cloud\"\n").unwrap();
    let err = Config::load(&path).unwrap_err();
    assert_eq!(err.file, path.display().to_string());
    assert!(err.to_string().starts_with(&format!("{}:2:8: hub.kind: unknown variant", path.display())));
    std::fs::remove_dir_all(&dir).unwrap();

    let err = Config::load(&dir.join("absent.toml")).unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert_eq!(err.problems[0].line, None);
    assert!(err.problems[0].message.contains("cannot read"));
}

#[test]
fn display_prints_one_problem_a_line() {
    let d = Diagnostics {
        file: "c.toml".into(),
        problems: vec![
            Diagnostic { line: Some(3), column: Some(7), message: "bad".into() },
            Diagnostic { line: Some(4), column: None, message: "worse".into() },
            Diagnostic { line: None, column: None, message: "worst".into() },
        ],
    };
    assert_eq!(d.to_string(), "c.toml:3:7: bad\nc.toml:4: worse\nc.toml: worst\n");
}

#[test]
fn syntax_error_is_reported_alone_with_its_line() {
    let text = "[hub]\nkind = \"azure\"\n\n[devices.a]\nbus = \"field\nunit = 300\n";
    let ps = problems(text);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_eq!(ps[0].line, Some(5));
    assert!(ps[0].message.starts_with("TOML syntax error"), "{}", ps[0].message);
    // A key written twice is a syntax error too.
    one("[hub]\nkind = \"azure\"\nkind = \"mqtt\"\n", "kind = \"mqtt\"", "duplicate key");
}

#[test]
fn unknown_keys_are_reported_with_their_line() {
    each_one(&[
        ("[gateway]\nstate_dri = \"/x\"\n", "state_dri", "unknown field `state_dri`"),
        ("[devices.a]\nbus = \"field\"\nunit = 1\nretries = 3\n", "retries", "devices.a.retries: unknown field"),
        (
            "[devices.a]\nbus = \"field\"\nunit = 1\npoints.p = { table = \"coil\", address = 1, type = \"bool\", sign = 1 }\n",
            "points.p",
            "devices.a.points.p.sign: unknown field `sign`",
        ),
    ]);
    one(&format!("colour = \"red\"\n{BASE}"), "colour", "unknown section `colour`");
    one("[hub]\nkind = \"azure\"\nhostname = \"x\"\n", "hostname", "hub.hostname: unknown field");
}

#[test]
fn a_bad_duration_points_at_its_value() {
    let text = format!("{BASE}[devices.a]\nbus = \"field\"\nunit = 1\nmax_age = \"10 parsecs\"\n");
    one(&text, "parsecs", "devices.a.max_age: invalid duration \"10 parsecs\"");
    let col = problems(&text)[0].column;
    assert_eq!(col, Some("max_age = ".len() + 1));
    one("[gateway]\ndedupe_window = \"soon\"\n[hub]\nkind = \"azure\"\n", "soon", "invalid duration");
}

#[test]
fn a_missing_hub_is_reported() {
    let ps = problems("[gateway]\nstate_dir = \"/tmp\"\n");
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].line, None);
    assert!(ps[0].message.contains("missing [hub]"));
}

#[test]
fn devices_name_known_buses_and_modbus_units() {
    each_one(&[
        ("[devices.a]\nbus = \"nowhere\"\n", "nowhere", "names an unknown bus \"nowhere\""),
        ("[devices.a]\nbus = \"field\"\n", "[devices.a]", "devices.a.unit: a device on Modbus bus \"field\" needs `unit`"),
        ("[devices.a]\nbus = \"plc\"\nunit = 248\n", "unit = 248", "248 is out of range"),
        ("[devices.a]\nbus = \"field\"\nunit = 256\n", "unit = 256", "devices.a.unit: invalid value"),
        (
            "[devices.a]\nbus = \"field\"\nunit = 5\n[devices.b]\nbus = \"plc\"\nunit = 5\n[devices.c]\nbus = \"field\"\nunit = 5 # again\n",
            "again",
            "devices.c.unit: unit 5 is already used by device \"a\" on bus \"field\"",
        ),
        ("[devices.a]\nbus = \"field\"\nunit = 1\nmax_attempts = 0\n", "max_attempts", "must be at least 1"),
    ]);
    // `unit` on a serial bus is ignored; two serial devices may share it.
    ok(&format!("{BASE}[devices.a]\nbus = \"display\"\nunit = 250\n[devices.b]\nbus = \"display\"\n"));
    ok(&format!("{BASE}[devices.a]\nbus = \"display\"\nunit = 3\n[devices.b]\nbus = \"display\"\nunit = 3\n"));
    // A bus whose own table is broken is not also "unknown".
    one("[hub]\nkind = \"azure\"\n[buses.x]\nkind = \"can\"\n[devices.a]\nbus = \"x\"\n", "\"can\"", "unknown variant");
}

#[test]
fn points_are_checked() {
    let dev = "[devices.a]\nbus = \"field\"\nunit = 1\n";
    let cases = [
        ("points.p = { table = \"holding\", address = 1, type = \"bool\" }\n", "points.p", "a bool point must be in table \"coil\" or \"discrete\""),
        ("points.p = { table = \"discrete\", address = 1, type = \"u16\" }\n", "points.p", "a numeric point must be in table \"holding\" or \"input\""),
        ("points.p = { table = \"holding\", address = 65535, type = \"f32\" }\n", "points.p", "65535 + 2 registers runs past 65535"),
        ("points.p = { table = \"holding\", address = 1, type = \"f32\", min = 9.0, max = 1.0 }\n", "points.p", "min 9 is greater than max 1"),
        ("points.p = { table = \"holding\", address = 1, type = \"u16\", scale = 0.0 }\n", "points.p", "scale: must be a finite number other than 0"),
        ("points.p = { table = \"holding\", address = 1, type = \"u16\", scale = nan }\n", "points.p", "scale: must be a finite number other than 0"),
        ("points.p = { table = \"holding\", address = 1, type = \"u16\", max = inf }\n", "points.p", "points.p.max: must be a finite number"),
        ("points.p = { table = \"holding\", address = 1, type = \"u16\", min = -inf }\n", "points.p", "points.p.min: must be a finite number"),
        (
            "points.p = { table = \"holding\", address = 10, type = \"u32\" }\npoints.q = { table = \"holding\", address = 11, type = \"u16\" }\n",
            "points.q",
            "devices.a.points.q: overlaps point \"p\" (holding 10..=11)",
        ),
        (
            "[devices.a.points.z]\ntable = \"coil\"\naddress = 3\ntype = \"bool\"\n[devices.a.points.b]\ntable = \"coil\"\naddress = 3 # same\ntype = \"bool\"\n",
            "[devices.a.points.b]",
            "overlaps point \"z\" (coil 3..=3)",
        ),
    ];
    for (points, at, msg) in cases {
        one(&format!("{BASE}{dev}{points}"), at, msg);
    }
    // Adjacent points, the same address in another table, the last register.
    ok(&format!(
        "{BASE}{dev}points.p = {{ table = \"holding\", address = 10, type = \"u32\" }}\n\
         points.q = {{ table = \"holding\", address = 12, type = \"i16\" }}\n\
         points.r = {{ table = \"input\", address = 10, type = \"f32\" }}\n\
         points.s = {{ table = \"coil\", address = 10, type = \"bool\" }}\n\
         points.t = {{ table = \"holding\", address = 65534, type = \"i32\" }}\n"
    ));
    each_one(&[(
        "[devices.a]\nbus = \"display\"\npoints.p = { table = \"coil\", address = 1, type = \"bool\" }\n",
        "points.p",
        "devices.a.points: bus \"display\" is a serial bus: points are for Modbus devices",
    )]);
}

#[test]
fn buses_are_checked_by_kind() {
    let hub = "[hub]\nkind = \"azure\"\n";
    let cases = [
        ("[buses.b]\nkind = \"modbus-rtu\"\n", "[buses.b]", "buses.b.port: this kind of bus needs `port`"),
        ("[buses.b]\nkind = \"serial\"\n", "[buses.b]", "buses.b.port: this kind of bus needs `port`"),
        ("[buses.b]\nkind = \"modbus-tcp\"\n", "[buses.b]", "needs `address`"),
        ("[buses.b]\nkind = \"modbus-tcp\"\naddress = \"plc.local\"\n", "plc.local", "has no port"),
        ("[buses.b]\nkind = \"modbus-tcp\"\naddress = \"plc.local:http\"\n", "plc.local", "invalid port"),
        ("[buses.b]\nkind = \"modbus-tcp\"\naddress = \":502\"\n", ":502", "has no host"),
        ("[buses.b]\nkind = \"modbus-rtu\"\nport = \"/dev/x\"\nbaud = 0\n", "baud", "must be more than 0"),
        ("[buses.b]\nkind = \"serial\"\nport = \"/dev/x\"\ndata_bits = 9\n", "data_bits", "must be 5, 6, 7 or 8"),
        ("[buses.b]\nkind = \"modbus-rtu\"\nport = \"/dev/x\"\nstop_bits = 3\n", "stop_bits", "must be 1 or 2"),
        (
            "[buses.b]\nkind = \"modbus-tcp\"\naddress = \"h:502\"\ntimeout = \"0s\"\n",
            "timeout",
            "must be longer than 0s",
        ),
        (
            "[buses.b]\nkind = \"serial\"\nport = \"/dev/x\"\nack = \"(OK\"\n",
            "ack",
            "buses.b.ack: is not a valid regex",
        ),
        (
            "[buses.b]\nkind = \"serial\"\nport = \"/dev/x\"\nnack = \"[\"\n",
            "nack",
            "buses.b.nack: is not a valid regex",
        ),
        (
            "[buses.b]\nkind = \"serial\"\nport = \"/dev/x\"\naddress = \"h:1\"\n",
            "address",
            "`address` is for kind = \"modbus-tcp\" buses only",
        ),
        (
            "[buses.b]\nkind = \"modbus-rtu\"\nport = \"/dev/x\"\nframing = \"raw\"\n",
            "framing",
            "`framing` is for kind = \"serial\" buses only",
        ),
        (
            "[buses.b]\nkind = \"serial\"\nport = \"/dev/x\"\nframing = \"raw\"\nbaud = 1200\ntimeout = \"50ms\"\n",
            "timeout",
            "buses.b.timeout: must be longer than 91 ms with framing = \"raw\"",
        ),
        ("[buses.b]\nkind = \"modbus-tcp\"\naddress = \"h:1\"\nbaud = 9600\n", "baud", "not \"modbus-tcp\""),
        ("[buses.b]\nkind = \"modbus-tcp\"\naddress = \"h:1\"\nbreaker_after = 0\n", "breaker", "must be at least 1"),
    ];
    for (bus, at, msg) in cases {
        one(&format!("{hub}{bus}"), at, msg);
    }
    ok(&format!("{hub}[buses.b]\nkind = \"modbus-tcp\"\naddress = \"[::1]:502\"\n"));
    ok(&format!("{hub}[buses.b]\nkind = \"serial\"\nport = \"/dev/x\"\nframing = \"raw\"\ntimeout = \"40ms\"\n"));
}

#[test]
fn the_hub_is_checked_by_kind() {
    let azure = "[hub]\nkind = \"azure\"\n";
    let mqtt = "[hub]\nkind = \"mqtt\"\nurl = \"mqtts://broker:8883\"\n";
    let cases = [
        (
            azure,
            "connection_string = \"HostName=h;DeviceId=d;SharedAccessKey=k\"\nconnection_string_file = \"/f\"\n",
            "_file",
            "not both",
        ),
        (azure, "connection_string = \"HostName=h;SharedAccessKey=k\"\n", "connection_string", "lacks DeviceId"),
        (azure, "url = \"mqtt://x\"\n", "url", "hub.url: `url` is for kind = \"mqtt\", not \"azure\""),
        (azure, "subscribe = \"a/+\"\n", "subscribe", "is for kind = \"mqtt\""),
        (azure, "sas_ttl = \"0s\"\n", "sas_ttl", "must be longer than 0s"),
        (mqtt, "sas_ttl = \"1h\"\n", "sas_ttl", "is for kind = \"azure\", not \"mqtt\""),
        (mqtt, "connection_string_file = \"/f\"\n", "connection_string_file", "is for kind = \"azure\""),
        ("[hub]\nkind = \"mqtt\"\n", "", "[hub]", "kind = \"mqtt\" needs `url`"),
        (
            "[hub]\nkind = \"mqtt\"\nurl = \"http://broker\"\n",
            "",
            "http",
            "must start with mqtt://, mqtts://, ws:// or wss://",
        ),
        ("[hub]\nkind = \"mqtt\"\nurl = \"mqtt://user:hunter2@b\"\n", "", "url", "must not hold a login"),
        ("[hub]\nkind = \"mqtt\"\nurl = \"mqtts://b/mqtt\"\n", "", "url", "only ws:// and wss://"),
        (mqtt, "proxy = \"socks5://u:hunter2@p:1080\"\n", "proxy", "must start with http:// or https://"),
        (azure, "proxy = \"http://p:port\"\n", "proxy", "invalid port"),
        (mqtt, "certificate_file = \"/c.pem\"\n", "certificate_file", "needs hub.private_key_file"),
        (azure, "private_key_file = \"/k.pem\"\n", "private_key_file", "needs hub.certificate_file"),
        (azure, "auth = \"x509\"\n", "auth", "needs hub.certificate_file"),
        (mqtt, "auth = \"x509\"\n", "auth", "is for kind = \"azure\""),
        (azure, "transport = \"ws\"\n", "transport", "expected one of `tls`, `mqtt`, `websockets`"),
        ("[hub]\nkind = \"mqtt\"\nurl = \"mqtt://:1883\"\n", "", "url", "has no host"),
        ("[hub]\nkind = \"mqtt\"\nurl = \"mqtt://b:99999\"\n", "", "url", "invalid port"),
        (mqtt, "subscribe = \"gw/+/c2d/+\"\n", "subscribe", "at most one `+` level"),
        (mqtt, "subscribe = \"gw/#\"\n", "subscribe", "must not contain `#`"),
        (mqtt, "subscribe = \"gw/dev+/c2d\"\n", "subscribe", "`+` must stand alone"),
        (mqtt, "report_topic = \"gw/+/result\"\n", "report_topic", "must not contain the wildcards"),
        (mqtt, "password = \"pw\"\npassword_file = \"/f\"\n", "password_file", "not both"),
        (azure, "handover_after = \"0s\"\n", "handover", "must be longer than 0s"),
        (azure, "max_body = 0\n", "max_body", "between 1 and 262144"),
        (mqtt, "max_body = 262145\n", "max_body", "between 1 and 262144"),
        (azure, "keep_alive = \"1day\"\n", "keep_alive", "at most 65535s"),
        (azure, "missing_id = \"drop\"\n", "missing_id", "unknown variant `drop`, expected `execute` or `reject`"),
        (mqtt, "missing_id = true\n", "missing_id", "hub.missing_id"),
    ];
    for (hub, extra, at, msg) in cases {
        one(&format!("{hub}{extra}"), at, msg);
    }
    // Neither connection string key: taken from the environment at run time.
    ok(azure);
    ok(&format!("{azure}connection_string = \"HostName=h;DeviceId=d;SharedAccessKey=k\"\n"));
    ok(&format!("{mqtt}subscribe = \"gw/commands\"\nmax_body = 262144\npassword = \"pw\"\n"));
    ok("[hub]\nkind = \"mqtt\"\nurl = \"mqtt://[::1]:1883/\"\n");
    ok("[hub]\nkind = \"mqtt\"\nurl = \"wss://[::1]/mqtt\"\nproxy = \"http://u:pw@127.0.0.1:3128\"\n");
    let c = ok(&format!(
        "{azure}transport = \"websockets\"\nauth = \"x509\"\ncertificate_file = \"/c\"\nprivate_key_file = \"/k\"\n"
    ));
    assert_eq!(c.hub.transport, crate::config::Transport::Websockets);
    ok(&format!("{azure}connection_string = \"HostName=h;DeviceId=d;x509=true\"\ncertificate_file = \"/c\"\nprivate_key_file = \"/k\"\n"));
    // The proxy's password is not in any message about it.
    for p in problems(&format!("{mqtt}proxy = \"http://u:hunter2@p:x\"\n")) {
        assert!(!p.message.contains("hunter2"), "{p:?}");
    }
    assert_eq!(ok(azure).hub.missing_id, MissingId::Execute, "the default");
    assert_eq!(ok(&format!("{azure}missing_id = \"reject\"\n")).hub.missing_id, MissingId::Reject);
    assert_eq!(ok(&format!("{mqtt}missing_id = \"execute\"\n")).hub.missing_id, MissingId::Execute);
    // [methods]
    assert_eq!(*ok(azure).methods.timeout, std::time::Duration::from_secs(25), "the default");
    assert_eq!(
        *ok(&format!("{azure}[methods]\ntimeout = \"10s\"\n")).methods.timeout,
        std::time::Duration::from_secs(10)
    );
    one(&format!("{azure}[methods]\ntimeout = \"0s\"\n"), "timeout", "between 1s and 300s");
    one(&format!("{azure}[methods]\ntimeout = \"10m\"\n"), "timeout", "between 1s and 300s");
    one(&format!("{azure}[methods]\nwait = \"1s\"\n"), "wait", "unknown field");
    // [twin]
    assert!(!ok(azure).twin.enabled, "off by default");
    assert!(ok(&format!("{azure}[twin]\nenabled = true\n")).twin.enabled);
    one(&format!("{mqtt}[twin]\nenabled = true\n"), "enabled", "kind = \"mqtt\" has no twin");
}

#[test]
fn routing_and_gateway_are_checked() {
    each_one(&[
        (
            "[routing]\ndefault_device = \"ghost\"\n",
            "ghost",
            "routing.default_device: names an unknown device \"ghost\"",
        ),
        ("[routing]\ndevice_property = \"\"\n", "device_property", "must not be empty"),
        ("[gateway]\nmax_messages = 0\n", "max_messages", "gateway.max_messages: must be at least 1"),
        ("[gateway]\ncache_capacity = 0\n", "cache_capacity", "must be at least 1"),
        ("[gateway]\nmax_bytes = 0\n", "max_bytes", "must be at least 1"),
        ("[gateway]\ndedupe_window = \"0s\"\n", "dedupe_window", "must be longer than 0s"),
    ]);
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let text = format!(
        "{BASE}[devices.a]\nbus = \"nowhere\"\n\
         [devices.b]\nbus = \"field\"\nunit = 1\nmax_age = \"forever\"\n\
         [devices.c]\nbus = \"field\"\nunit = \"one\"\n\
         [routing]\ndefault_device = \"ghost\"\n"
    );
    let ps = problems(&text);
    let got: Vec<_> = ps.iter().map(|p| p.line.unwrap()).collect();
    let want: Vec<_> = ["nowhere", "forever", "\"one\"", "ghost"].iter().map(|s| line_of(&text, s)).collect();
    assert_eq!(got, want, "{ps:#?}");

    // Three bad points of one device, and its bad unit: four problems.
    let text = format!(
        "{BASE}[devices.d]\nbus = \"plc\"\nunit = 250\n\
         points.p = {{ table = \"holding\", address = 1, type = \"u64\" }}\n\
         points.q = {{ table = \"holding\", type = \"u16\" }}\n\
         points.r = {{ table = \"coil\", address = 1, type = \"u16\" }}\n"
    );
    assert_eq!(problems(&text).len(), 4, "{:#?}", problems(&text));
}

#[test]
fn no_secret_in_any_message() {
    let key = "c2VjcmV0LWtleS1ub3QtdG8tYmUtc2hvd24=";
    let texts = [
        // Secrets of the wrong type: serde would quote them.
        "[hub]\nkind = \"azure\"\nconnection_string = 8675309123\n".to_string(),
        "[hub]\nkind = \"mqtt\"\nurl = \"mqtt://b\"\npassword = 8675309123\n".to_string(),
        "[hub]\nkind = \"mqtt\"\nurl = \"mqtt://b\"\npassword = 8675309123.5\n".to_string(),
        // A secret under the wrong kind, with other errors around it.
        format!("[hub]\nkind = \"mqtt\"\nconnection_string = \"HostName=h;DeviceId=d;SharedAccessKey={key}\"\n"),
        format!("[hub]\nkind = \"azure\"\npassword = \"{key}\"\nport = \"{key}\"\n"),
        // The key pasted into another field whose error quotes its value.
        format!("[hub]\nkind = \"azure\"\nconnection_string = \"HostName=h;DeviceId=d;SharedAccessKey={key}\"\nsas_ttl = \"{key}\"\n"),
        // A password in the URL of a bad URL.
        format!("[hub]\nkind = \"mqtt\"\nurl = \"mqtt://user:{key}@\"\n"),
        // An inline connection string lacking a part.
        format!("[hub]\nkind = \"azure\"\nconnection_string = \"HostName=h;SharedAccessKey={key}\"\n"),
    ];
    for text in &texts {
        let err = Config::parse(text, "t.toml").unwrap_err();
        let shown = err.to_string();
        assert!(!shown.is_empty());
        for secret in [key, "8675309123"] {
            assert!(!shown.contains(secret), "secret shown:\n{shown}");
        }
    }
    let c =
        ok(&format!("[hub]\nkind = \"azure\"\nconnection_string = \"HostName=h;DeviceId=d;SharedAccessKey={key}\"\n"));
    assert!(!c.summary().contains(key) && !format!("{c:?}").contains(key));
    assert!(c.hub.connection_string.as_ref().is_some_and(|s| s.expose().ends_with(key)));
}

#[test]
fn key_paths_are_quoted_when_needed() {
    let text = format!("{BASE}[devices.\"front door\"]\nbus = \"nowhere\"\n");
    one(&text, "nowhere", "devices.\"front door\".bus: names an unknown bus");
}

#[test]
fn telemetry_points_and_alerts_are_checked() {
    let base = include_str!("../../config/example.toml");
    let bad = format!(
        "{base}\n[devices.tele]\nbus = \"plc\"\nunit = 77\npoints.t = {{ table = \"input\", address = 0, type = \"f32\" }}\n\
         telemetry = {{ interval = \"10ms\", points = [\"t\", \"nope\"], alerts = {{ hot = \"t >\", cold = \"x < 3\" }} }}\n"
    );
    let err = Config::parse(&bad, "t.toml").unwrap_err().to_string();
    for want in ["at least 100ms", "no point \"nope\"", "is not `POINT OP NUMBER`", "point \"x\" is not among"] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn a_changed_secret_needs_a_restart_though_it_prints_the_same() {
    let mqtt = "[hub]\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\nusername = \"u\"\n";
    let old = ok(&format!("{mqtt}password = \"old\"\n"));
    let new = ok(&format!("{mqtt}password = \"new\"\n"));
    assert_eq!(format!("{:?}", old.hub), format!("{:?}", new.hub), "secrets print as ***");
    assert!(old.needs_restart_for(&new), "a changed password");
    let azure = |key: &str| {
        ok(&format!("[hub]\nkind = \"azure\"\nconnection_string = \"HostName=h;DeviceId=d;SharedAccessKey={key}\"\n"))
    };
    assert!(azure("a2V5MQ==").needs_restart_for(&azure("a2V5Mg==")), "a changed device key");
    assert!(!azure("a2V5MQ==").needs_restart_for(&azure("a2V5MQ==")));
    // Routing (like buses and devices) is applied by a reload.
    let routed = ok(&format!("{mqtt}password = \"old\"\n[routing]\ndevice_property = \"target\"\n"));
    assert!(!old.needs_restart_for(&routed));
    let moved = ok(&format!("{mqtt}password = \"old\"\n[gateway]\nstate_dir = \"/elsewhere\"\n"));
    assert!(old.needs_restart_for(&moved));
}

#[test]
fn the_operator_surface_takes_a_socket_path_and_an_address_and_warns_off_loopback() {
    let c = ok(&format!("[gateway]\nstate_dir = \"/var/lib/gw\"\n{BASE}"));
    assert_eq!(c.gateway.control_socket(), Some(std::path::PathBuf::from("/var/lib/gw/control.sock")));
    assert_eq!(c.gateway.http, None, "HTTP is off unless asked for");
    assert!(c.warnings().is_empty());
    let c = ok(&format!("[gateway]\ncontrol = \"\"\nhttp = \"127.0.0.1:9464\"\n{BASE}"));
    assert_eq!(c.gateway.control_socket(), None, "\"\" turns the socket off");
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let c = ok(&format!("[gateway]\nhttp = \"0.0.0.0:9464\"\n{BASE}"));
    let w = c.warnings();
    assert!(
        w.len() == 1 && w[0].contains("not a loopback address") && w[0].contains("without authentication"),
        "{w:?}"
    );
    each_one(&[
        ("[gateway]\nhttp = \"localhost:9464\"\n", "http = ", "is not an address and port"),
        ("[gateway]\nhttp = \"9464\"\n", "http = ", "is not an address and port"),
        (&format!("[gateway]\ncontrol = \"/{}/c.sock\"\n", "x".repeat(120)), "control = ", "at most 107 bytes"),
    ]);
}

#[test]
fn sizes_take_numbers_and_units() {
    assert_eq!(Size::parse("16MiB"), Ok(Size(16 << 20)));
    assert_eq!(Size::parse("512 KiB"), Ok(Size(512 << 10)));
    assert_eq!(Size::parse("2kB"), Ok(Size(2000)));
    assert_eq!(Size::parse("0"), Ok(Size(0)));
    assert!(Size::parse("lots").unwrap_err().contains("invalid size"));
    assert!(Size::parse("3 parsecs").unwrap_err().contains("unknown unit"));
    assert_eq!(ok(&format!("[gateway]\ntelemetry_buffer = \"1MiB\"\n{BASE}")).gateway.telemetry_buffer, Size(1 << 20));
    assert_eq!(ok(&format!("[gateway]\ntelemetry_buffer = 4096\n{BASE}")).gateway.telemetry_buffer, Size(4096));
    assert_eq!(ok(BASE).gateway.telemetry_buffer, Size(16 << 20), "16 MiB by default");
    each_one(&[("[gateway]\ntelemetry_buffer = \"much\"\n", "telemetry_buffer", "invalid size")]);
}
