//! Semantic checks: the rules serde cannot express (cross references, ranges,
//! keys that belong to another kind of hub or bus). They run on whatever
//! deserialized (see `load.rs`) and report each problem at the line of the
//! key or table at fault. No message quotes a secret or the hub URL (which
//! may carry a password).

use super::doc::{dotted, Doc, Parts, Report};
use super::{BusConfig, BusKind, DeviceConfig, GatewayConfig, HubConfig, HubKind, PointType};
use super::{RoutingConfig, Table};
use std::collections::BTreeMap;
use std::ops::Range;

/// Reports at the key (or the value) at a path, prefixed with the path.
struct Checker<'a, 'd> {
    doc: &'a Doc<'d>,
    report: &'a mut Report,
}

impl Checker<'_, '_> {
    fn key(&mut self, path: &[&str], msg: impl AsRef<str>) {
        let span = self.doc.key(path);
        self.report.at(span, format!("{}: {}", dotted(path), msg.as_ref()));
    }
    fn value(&mut self, path: &[&str], msg: impl AsRef<str>) {
        let span = self.doc.value(path);
        self.report.at(span, format!("{}: {}", dotted(path), msg.as_ref()));
    }
    /// Reports every key written in the table at `table` for which
    /// `belongs` says whom it is for instead (a key of another kind).
    fn foreign_keys(&mut self, table: &[&str], belongs: impl Fn(&str) -> Option<&'static str>) {
        for (key, span) in self.doc.keys(table) {
            if let Some(owner) = belongs(&key) {
                let mut path = table.to_vec();
                path.push(&key);
                let msg = format!("{}: `{key}` {owner}", dotted(&path));
                self.report.at(Some(span), msg);
            }
        }
    }
}

pub(super) fn check(parts: &Parts, doc: &Doc<'_>, report: &mut Report) {
    let mut c = Checker { doc, report };
    if let Some(g) = &parts.gateway {
        gateway(&mut c, g);
    }
    if let Some(h) = &parts.hub {
        hub(&mut c, h);
    }
    if let Some(rt) = &parts.routing {
        routing(&mut c, rt, parts);
    }
    if let (Some(t), Some(h)) = (&parts.twin, &parts.hub) {
        if t.enabled && h.kind == HubKind::Mqtt {
            c.value(&["twin", "enabled"], "twin setpoints are IoT Hub's: kind = \"mqtt\" has no twin");
        }
    }
    if let Some(m) = &parts.methods {
        let t = m.timeout.as_secs_f64();
        if !(1.0..=300.0).contains(&t) {
            c.value(&["methods", "timeout"], "must be between 1s and 300s (IoT Hub waits 5 s to 300 s for an answer)");
        }
    }
    for (name, bus) in &parts.buses {
        self::bus(&mut c, name, bus);
    }
    devices(&mut c, parts);
}

fn gateway(c: &mut Checker, g: &GatewayConfig) {
    let p = |k| ["gateway", k];
    if g.max_messages == 0 {
        c.value(&p("max_messages"), "must be at least 1");
    }
    if g.max_bytes == 0 {
        c.value(&p("max_bytes"), "must be at least 1");
    }
    if g.cache_capacity == 0 {
        c.value(&p("cache_capacity"), "must be at least 1 (bytes)");
    }
    if let Some(addr) = &g.http {
        if let Err(e) = addr.parse::<std::net::SocketAddr>() {
            c.value(&p("http"), format!("{addr:?} is not an address and port such as \"127.0.0.1:9464\": {e}"));
        }
    }
    if let Some(path) = g.control.as_ref().filter(|p| !p.as_os_str().is_empty()) {
        // sun_path holds 108 bytes with its terminating NUL.
        if path.as_os_str().len() > 107 {
            c.value(&p("control"), "a unix socket path is at most 107 bytes long");
        }
    }
    if g.dedupe_window.is_zero() {
        c.value(&p("dedupe_window"), "must be longer than 0s");
    }
}

const AZURE_ONLY: [&str; 7] =
    ["connection_string", "connection_string_file", "transport", "api_version", "sas_ttl", "auth", "dps"];
const MQTT_ONLY: [&str; 8] =
    ["url", "username", "password", "password_file", "subscribe", "report_topic", "telemetry_topic", "client_id"];

fn hub(c: &mut Checker, h: &HubConfig) {
    let p = |k| ["hub", k];
    let has = |c: &Checker, k| c.doc.has(&["hub", k]);
    match h.kind {
        HubKind::Azure => {
            c.foreign_keys(&["hub"], |k| MQTT_ONLY.contains(&k).then_some("is for kind = \"mqtt\", not \"azure\""));
            if h.connection_string.is_some() && h.connection_string_file.is_some() {
                c.key(&p("connection_string_file"), "set either connection_string or connection_string_file, not both");
            }
            if let Some(cs) = &h.connection_string {
                if let Some(missing) = connection_string_gap(cs.expose()) {
                    c.value(&p("connection_string"), missing);
                }
            }
            if let Some(d) = &h.dps {
                dps(c, h, d);
            }
            if h.sas_ttl.is_zero() {
                c.value(&p("sas_ttl"), "must be longer than 0s");
            }
        }
        HubKind::Mqtt => {
            c.foreign_keys(&["hub"], |k| AZURE_ONLY.contains(&k).then_some("is for kind = \"azure\", not \"mqtt\""));
            match &h.url {
                None => c.key(&p("url"), "kind = \"mqtt\" needs `url` (e.g. \"mqtts://broker:8883\")"),
                Some(url) => {
                    if let Err(e) = check_mqtt_url(url) {
                        c.value(&p("url"), e);
                    }
                }
            }
            if let Err(e) = check_subscribe(&h.subscribe) {
                c.value(&p("subscribe"), e);
            }
            if h.report_topic.is_empty() {
                c.value(&p("report_topic"), "must not be empty");
            } else if h.report_topic.contains(['+', '#']) {
                c.value(&p("report_topic"), "must not contain the wildcards `+` or `#`");
            }
            if h.telemetry_topic.is_empty() || h.telemetry_topic.contains(['+', '#']) {
                c.value(&p("telemetry_topic"), "must be a topic without the wildcards `+` or `#`");
            }
            if has(c, "password") && has(c, "password_file") {
                c.key(&p("password_file"), "set either password or password_file, not both");
            }
        }
    }
    if let Some(proxy) = &h.proxy {
        if let Err(e) = crate::hub::net::parse_proxy(proxy.expose()) {
            c.value(&p("proxy"), e);
        }
    }
    match (&h.certificate_file, &h.private_key_file) {
        (Some(_), None) => c.key(&p("certificate_file"), "needs hub.private_key_file (the certificate's key, PEM)"),
        (None, Some(_)) => c.key(&p("private_key_file"), "needs hub.certificate_file (the client certificate, PEM)"),
        _ => {}
    }
    if h.kind == HubKind::Azure && h.auth == Some(crate::config::Auth::X509) && h.certificate_file.is_none() {
        c.key(&p("auth"), "auth = \"x509\" needs hub.certificate_file and hub.private_key_file (PEM)");
    }
    if h.handover_after.is_zero() {
        c.value(&p("handover_after"), "must be longer than 0s");
    }
    if h.keep_alive.as_secs() > u64::from(u16::MAX) {
        c.value(&p("keep_alive"), "must be at most 65535s (MQTT limit)");
    }
    if h.max_unacked == 0 {
        c.value(&p("max_unacked"), "must be at least 1");
    }
    if !(1..=262_144).contains(&h.max_body) {
        c.value(&p("max_body"), "must be between 1 and 262144 (bytes)");
    }
}

/// `[hub.dps]`: one way to attest, an id scope, a registration id.
fn dps(c: &mut Checker, h: &HubConfig, d: &crate::config::DpsConfig) {
    let p = |k| ["hub", "dps", k];
    for k in ["connection_string", "connection_string_file"] {
        if c.doc.has(&["hub", k]) {
            c.key(&["hub", k], "is not used with [hub.dps]: DPS says which hub and device id to use");
        }
    }
    if d.id_scope.trim().is_empty() {
        c.value(&p("id_scope"), "must not be empty (the DPS instance's ID Scope, e.g. \"0ne00000A0A\")");
    }
    let x509 = h.certificate_file.is_some();
    match (&d.symmetric_key_file, &d.enrollment_group_key_file) {
        (Some(_), Some(_)) => c.key(&p("enrollment_group_key_file"), "set symmetric_key_file or enrollment_group_key_file, not both"),
        (None, None) if !x509 => c.key(
            &["hub", "dps"],
            "needs symmetric_key_file, enrollment_group_key_file, or an X.509 certificate (hub.certificate_file and hub.private_key_file)",
        ),
        _ => {}
    }
    if d.registration_id.is_none() && !x509 {
        c.key(&["hub", "dps"], "needs registration_id (with X.509 it is the certificate's common name)");
    }
    if d.registration_id.as_deref().is_some_and(|r| r.is_empty() || r.len() > 128) {
        c.value(&p("registration_id"), "must be 1 to 128 characters");
    }
}

/// What an inline connection string lacks, without quoting it. (The full
/// parse, key decoding included, happens when the hub link starts.)
fn connection_string_gap(cs: &str) -> Option<String> {
    let keys: Vec<&str> = cs.split(';').filter_map(|part| part.split_once('=').map(|(k, _)| k.trim())).collect();
    let x509 = cs.split(';').any(|part| part.trim().eq_ignore_ascii_case("x509=true"));
    let required: &[&str] = if x509 { &["HostName", "DeviceId"] } else { &["HostName", "DeviceId", "SharedAccessKey"] };
    let missing: Vec<&str> = required.iter().copied().filter(|k| !keys.contains(k)).collect();
    (!missing.is_empty()).then(|| {
        format!(
            "lacks {} (expected \"HostName=...;DeviceId=...;SharedAccessKey=...\"; value not shown)",
            missing.join(", ")
        )
    })
}

/// A broker URL (mqtt://, mqtts://, ws://, wss://); messages never quote it.
fn check_mqtt_url(url: &str) -> Result<(), String> {
    use crate::hub::net::UrlError as U;
    crate::hub::net::parse_url(url).map(|_| ()).map_err(|e| {
        match e {
            U::Scheme { .. } => "must start with mqtt://, mqtts://, ws:// or wss://",
            U::UnclosedIpv6 { .. } => "has an unclosed `[` in the host",
            U::BadPort { .. } => "has an invalid port (1..=65535)",
            U::BareIpv6 { .. } => "write an IPv6 address in brackets, e.g. mqtt://[::1]:1883",
            U::NoHost { .. } => "has no host (write e.g. \"mqtts://broker.example.com:8883\")",
            U::PathWithoutWebSocket { .. } => "has a path, which only ws:// and wss:// urls take",
            U::UserInfo { .. } => "must not hold a login: use hub.username and hub.password",
        }
        .to_string()
    })
}

/// A subscription with no wildcard or exactly one `+` level (the device).
fn check_subscribe(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("must not be empty");
    }
    if topic.contains('#') {
        return Err("must not contain `#`: use one `+` level for the device name");
    }
    let levels: Vec<&str> = topic.split('/').collect();
    if levels.iter().any(|l| l.contains('+') && *l != "+") {
        return Err("`+` must stand alone as a whole topic level, as in \"gateway/+/c2d\"");
    }
    if levels.iter().filter(|l| **l == "+").count() > 1 {
        return Err("must contain at most one `+` level (the device name)");
    }
    Ok(())
}

fn routing(c: &mut Checker, rt: &RoutingConfig, parts: &Parts) {
    if rt.device_property.is_empty() {
        c.value(&["routing", "device_property"], "must not be empty");
    }
    if let Some(d) = &rt.default_device {
        if !parts.device_names.contains(d) {
            c.value(
                &["routing", "default_device"],
                format!("names an unknown device {d:?} (no [devices.{}])", dotted(&[d])),
            );
        }
    }
}

/// Keys of a bus table and the kinds they apply to (unlisted: every kind).
fn bus_key_owner(key: &str, kind: BusKind) -> Option<&'static str> {
    const LINE: [&str; 5] = ["port", "baud", "parity", "data_bits", "stop_bits"];
    const SERIAL: [&str; 4] = ["framing", "line_ending", "ack", "nack"];
    if LINE.contains(&key) && kind == BusKind::ModbusTcp {
        Some("is for kind = \"modbus-rtu\" or \"serial\" buses, not \"modbus-tcp\"")
    } else if key == "address" && kind != BusKind::ModbusTcp {
        Some("is for kind = \"modbus-tcp\" buses only")
    } else if SERIAL.contains(&key) && kind != BusKind::Serial {
        Some("is for kind = \"serial\" buses only")
    } else {
        None
    }
}

fn bus(c: &mut Checker, name: &str, b: &BusConfig) {
    let p = |k| ["buses", name, k];
    c.foreign_keys(&["buses", name], |k| bus_key_owner(k, b.kind));
    match b.kind {
        BusKind::ModbusRtu | BusKind::Serial => {
            if b.port.is_none() {
                c.key(&p("port"), "this kind of bus needs `port` (e.g. \"/dev/ttyUSB0\")");
            }
            if b.baud == 0 {
                c.value(&p("baud"), "must be more than 0");
            }
            if !(5..=8).contains(&b.data_bits) {
                c.value(&p("data_bits"), "must be 5, 6, 7 or 8");
            }
            if !matches!(b.stop_bits, 1 | 2) {
                c.value(&p("stop_bits"), "must be 1 or 2");
            }
        }
        BusKind::ModbusTcp => match &b.address {
            None => c.key(&p("address"), "kind = \"modbus-tcp\" needs `address` (\"host:port\")"),
            Some(a) => {
                if let Err(e) = check_host_port(a) {
                    c.value(&p("address"), e);
                }
            }
        },
    }
    if b.timeout.is_zero() {
        c.value(&p("timeout"), "must be longer than 0s");
    }
    if b.breaker_after == 0 {
        c.value(&p("breaker_after"), "must be at least 1");
    }
    if b.kind == BusKind::Serial && b.framing == super::Framing::Raw && b.baud > 0 {
        let idle = super::raw_idle(b.baud);
        if !b.timeout.is_zero() && *b.timeout <= idle {
            c.value(
                &p("timeout"),
                format!(
                    "must be longer than {} ms with framing = \"raw\": a raw reply is judged only once the line \
                     has been quiet that long (10 character times at {} baud, at least 30 ms)",
                    idle.as_millis(),
                    b.baud
                ),
            );
        }
    }
    if b.kind == BusKind::Serial {
        for (key, re) in [("ack", &b.ack), ("nack", &b.nack)] {
            if let Some(Err(e)) = re.as_deref().map(regex_lite::Regex::new) {
                c.value(&p(key), format!("is not a valid regex: {e}"));
            }
        }
    }
}

fn check_host_port(a: &str) -> Result<(), String> {
    let Some((host, port)) = a.rsplit_once(':') else {
        return Err(format!("{a:?} has no port: write \"host:port\", e.g. \"192.168.1.20:502\""));
    };
    if host.trim_matches(['[', ']']).is_empty() {
        return Err(format!("{a:?} has no host: write \"host:port\""));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{a:?} has an invalid port (1..=65535)")),
    }
}

fn devices(c: &mut Checker, parts: &Parts) {
    // In file order, so a duplicate is reported at the later one.
    let mut devs: Vec<(&String, &DeviceConfig)> = parts.devices.iter().collect();
    devs.sort_by_key(|(name, _)| start(c.doc.key(&["devices", name])));
    let mut units: BTreeMap<(&str, u8), &str> = BTreeMap::new();
    for (name, d) in devs {
        let p = |k| ["devices", name, k];
        if d.max_attempts == 0 {
            c.value(&p("max_attempts"), "must be at least 1");
        }
        if d.max_age.is_zero() {
            c.value(&p("max_age"), "must be longer than 0s");
        }
        let Some(bus) = parts.buses.get(&d.bus) else {
            if !parts.bus_names.contains(&d.bus) {
                let msg = format!("names an unknown bus {:?} (no [buses.{}])", d.bus, dotted(&[&d.bus]));
                c.value(&p("bus"), msg);
            }
            continue;
        };
        if bus.kind == BusKind::Serial {
            if !d.points.is_empty() {
                c.key(&p("points"), format!("bus {:?} is a serial bus: points are for Modbus devices", d.bus));
            }
            continue;
        }
        match d.unit {
            None => c.key(&p("unit"), format!("a device on Modbus bus {:?} needs `unit` (0..=247)", d.bus)),
            Some(u) if u > 247 => c.value(&p("unit"), format!("{u} is out of range: Modbus units are 0..=247")),
            Some(u) => {
                if let Some(other) = units.insert((d.bus.as_str(), u), name) {
                    let msg = format!("unit {u} is already used by device {other:?} on bus {:?}", d.bus);
                    c.value(&p("unit"), msg);
                }
            }
        }
        points(c, name, d);
        if let Some(t) = &d.telemetry {
            telemetry(c, name, d, t);
        }
    }
}

fn telemetry(c: &mut Checker, dev: &str, d: &DeviceConfig, t: &crate::config::TelemetryConfig) {
    let p = |k| ["devices", dev, "telemetry", k];
    if *t.interval < std::time::Duration::from_millis(100) {
        c.value(&p("interval"), "must be at least 100ms");
    }
    if t.points.is_empty() {
        c.value(&p("points"), "name at least one point to read");
    }
    for name in &t.points {
        if !d.points.contains_key(name) {
            c.value(&p("points"), format!("device {dev:?} has no point {name:?}"));
        }
    }
    for (name, alert) in &t.alerts {
        let at = ["devices", dev, "telemetry", "alerts", name];
        match &alert.rule {
            Err(e) => c.value(&at, e.to_string()),
            Ok(rule) if !t.points.contains(&rule.point) => {
                c.value(&at, format!("point {:?} is not among the telemetry points", rule.point))
            }
            Ok(_) => {}
        }
    }
}

fn points(c: &mut Checker, dev: &str, d: &DeviceConfig) {
    let mut pts: Vec<_> = d.points.iter().collect();
    pts.sort_by_key(|(name, _)| start(c.doc.key(&["devices", dev, "points", name])));
    for (i, (name, pt)) in pts.iter().enumerate() {
        let p = |k| ["devices", dev, "points", name.as_str(), k];
        let bits = matches!(pt.table, Table::Coil | Table::Discrete);
        if pt.ty == PointType::Bool && !bits {
            c.value(&p("table"), "a bool point must be in table \"coil\" or \"discrete\"");
        } else if pt.ty != PointType::Bool && bits {
            c.value(&p("table"), "a numeric point must be in table \"holding\" or \"input\"");
        }
        let end = u32::from(pt.address) + u32::from(pt.ty.width()) - 1;
        if end > 65535 {
            c.value(&p("address"), format!("{} + {} registers runs past 65535", pt.address, pt.ty.width()));
        }
        for (key, v) in [("min", pt.min), ("max", pt.max)] {
            if v.is_some_and(|v| !v.is_finite()) {
                c.value(&p(key), "must be a finite number");
            }
        }
        if let (Some(min), Some(max)) = (pt.min, pt.max) {
            if min > max {
                c.value(&p("min"), format!("min {min} is greater than max {max}"));
            }
        }
        if let Some(s) = pt.scale {
            if s == 0.0 || !s.is_finite() {
                c.value(&p("scale"), "must be a finite number other than 0");
            }
        }
        let range = |a: u16, t: PointType| u32::from(a)..u32::from(a) + u32::from(t.width());
        let mine = range(pt.address, pt.ty);
        for (other, o) in &pts[..i] {
            let theirs = range(o.address, o.ty);
            if o.table == pt.table && mine.start < theirs.end && theirs.start < mine.end {
                let (first, last) = (theirs.start, theirs.end - 1);
                let table = table_name(o.table);
                let msg = format!("overlaps point {other:?} ({table} {first}..={last})");
                c.key(&["devices", dev, "points", name], msg);
            }
        }
    }
}

fn start(span: Option<Range<usize>>) -> usize {
    span.map_or(usize::MAX, |s| s.start)
}

fn table_name(t: Table) -> &'static str {
    match t {
        Table::Coil => "coil",
        Table::Discrete => "discrete",
        Table::Holding => "holding",
        Table::Input => "input",
    }
}
