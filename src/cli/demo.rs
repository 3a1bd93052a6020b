//! `c2d-gateway demo`: the whole system in one process on loopback, no
//! set-up: the IoT Hub emulator (MQTT over TLS + HTTP), a simulated Modbus
//! TCP boiler, a simulated serial panel on a pseudo-terminal pair, and the
//! gateway in azure mode. It sends a few C2D messages and prints each one's
//! journey as observed: the gateway's own log events, the device, the hub's
//! feedback and the result report; then telemetry, and direct method calls
//! (a read, a write answered after the device acknowledged, the same write
//! repeated, a bad one), and a twin setpoint applied and reported.

use crate::config::{Config, Framing};
use crate::emulator::{C2dRequest, Emulator, EmulatorOptions};
use crate::sim::modbus::{serve_tcp, SimDevice};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// One gateway log event about a message.
#[derive(Debug, Clone)]
struct Step {
    at: SystemTime,
    what: String,
    detail: String,
}

type Steps = Arc<Mutex<BTreeMap<String, Vec<Step>>>>;

/// A tracing layer that keeps every event carrying a `message_id`.
struct Capture(Steps);

#[derive(Default)]
struct Fields {
    message: String,
    message_id: Option<String>,
    detail: String,
    state: String,
}

impl Visit for Fields {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.record_debug(f, &format_args!("{v}"));
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        let s = format!("{v:?}");
        match f.name() {
            "message" => self.message = s,
            "message_id" => self.message_id = Some(s),
            "detail" => self.detail = s,
            "state" => self.state = s,
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        if let Some(id) = f.message_id {
            let detail = if f.state.is_empty() { f.detail } else { format!("{}: {}", f.state, f.detail) };
            let step = Step { at: SystemTime::now(), what: f.message, detail };
            self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(id).or_default().push(step);
        }
    }
}

/// The serial panel: answers `OK` to a line, `ERR` to one starting with `!`.
fn spawn_panel(mut port: tokio_serial::SerialStream, shown: Arc<Mutex<Vec<String>>>) {
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            match port.read(&mut chunk).await {
                Ok(0) | Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    for line in crate::bus::serial::take_frames(Framing::Line, &mut buf) {
                        let reply: &[u8] = if line.starts_with('!') { b"ERR unknown command\r\n" } else { b"OK\r\n" };
                        shown.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                        let _ = port.write_all(reply).await;
                    }
                }
            }
        }
    });
}

/// The boiler's temperature sensor (f32 in input registers 0..1).
fn set_temperature(dev: &SimDevice, t: f32) {
    let bits = t.to_bits();
    let mut m = dev.mem();
    m.input.insert((1, 0), (bits >> 16) as u16);
    m.input.insert((1, 1), bits as u16);
}

struct Msg {
    title: &'static str,
    device: &'static str,
    id: String,
    body: &'static str,
    expect: &'static str,
    sent_at: SystemTime,
}

fn ms_since(t0: SystemTime, t: SystemTime) -> String {
    match t.duration_since(t0) {
        Ok(d) => format!("+{:>7.1} ms", d.as_secs_f64() * 1000.0),
        Err(_) => "+    0.0 ms".into(),
    }
}

fn parse_utc(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s).ok()
}

/// Telemetry messages seen by the hub since `t0`: (alert property, body).
fn telemetry_since(emu: &Emulator, t0: SystemTime) -> Vec<(Option<String>, serde_json::Value)> {
    emu.events("demo-gateway")
        .into_iter()
        .filter(|e| parse_utc(&e.received_time_utc).is_some_and(|t| t >= t0))
        .filter(|e| e.properties.iter().any(|(k, _)| k == "device"))
        .map(|e| {
            let alert = e.properties.iter().find(|(k, _)| k == "temperatureAlert").and_then(|(_, v)| v.clone());
            (alert, serde_json::from_str(e.body.as_deref().unwrap_or("null")).unwrap_or_default())
        })
        .collect()
}

pub async fn run(keep_running: bool, dps: bool) -> Result<(), String> {
    let steps: Steps = Arc::default();
    let fmt = std::env::var_os("RUST_LOG").map(|_| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(tracing_subscriber::EnvFilter::from_default_env())
    });
    let _ = tracing_subscriber::registry().with(Capture(steps.clone())).with(fmt).try_init();

    let tmp = std::env::temp_dir().join(format!("c2d-gateway-demo-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let result = run_in(&tmp, steps, keep_running, dps).await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// The demo's enrollment group at the emulator's DPS (`demo --dps`).
const DPS_SCOPE: &str = "0ne00DEMO";
const DPS_GROUP: &str = "demo-fleet";

async fn run_in(tmp: &std::path::Path, steps: Steps, keep_running: bool, dps: bool) -> Result<(), String> {
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let group_key = {
        use base64::Engine;
        let raw: [u8; 32] = std::array::from_fn(|_| fastrand::u8(..));
        base64::engine::general_purpose::STANDARD.encode(raw)
    };
    let emu = Emulator::start(EmulatorOptions {
        mqtt: None,
        tls: Some(local),
        wss: dps.then_some(local),
        http: Some(local),
        id_scope: dps.then(|| DPS_SCOPE.to_string()),
        enrollment_groups: if dps { vec![(DPS_GROUP.into(), group_key.clone())] } else { Vec::new() },
        ..EmulatorOptions::default()
    })
    .await
    .map_err(|e| format!("cannot start the hub emulator: {e}"))?;
    let ca = tmp.join("emulator-ca.pem");
    std::fs::write(&ca, emu.ca_pem().unwrap_or_default()).map_err(|e| e.to_string())?;
    // Without DPS the gateway gets a connection string; with it, only the
    // group's key, and DPS registers it at the hub.
    let hub = if dps {
        let key_file = tmp.join("enrollment-group.key");
        std::fs::write(&key_file, &group_key).map_err(|e| e.to_string())?;
        let wss = emu.wss_addr().map(|a| a.port()).unwrap_or(0);
        format!(
            "transport = \"websockets\"\nport = {wss}\nca_file = \"{ca}\"\n[hub.dps]\nid_scope = \"{DPS_SCOPE}\"\n\
             registration_id = \"demo-gateway\"\nglobal_endpoint = \"localhost:{wss}\"\nenrollment_group_key_file = \"{key}\"",
            ca = ca.display(),
            key = key_file.display()
        )
    } else {
        format!(
            "connection_string = \"{}\"\nport = {}\nca_file = \"{}\"",
            emu.add_device("demo-gateway", None),
            emu.tls_addr().map(|a| a.port()).unwrap_or(0),
            ca.display()
        )
    };

    let boiler = SimDevice::new(&[1]);
    set_temperature(&boiler, 27.0);
    let l = tokio::net::TcpListener::bind(local).await.map_err(|e| e.to_string())?;
    let boiler_addr = l.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(serve_tcp(l, boiler.clone()));

    let (master, slave) = tokio_serial::SerialStream::pair().map_err(|e| format!("cannot make a pty pair: {e}"))?;
    let pty = tokio_serial::SerialPort::name(&slave).unwrap_or_default();
    let keep = std::fs::OpenOptions::new().read(true).write(true).open(&pty).map_err(|e| e.to_string())?;
    drop(slave);
    let shown = Arc::new(Mutex::new(Vec::new()));
    spawn_panel(master, shown.clone());

    // The status page on a port free a moment ago.
    let http = std::net::TcpListener::bind(local).and_then(|l| l.local_addr()).map_err(|e| e.to_string())?;
    let cfg_text = format!(
        r#"
[gateway]
state_dir = "{state}"
http = "{http}"
[hub]
kind = "azure"
{hub}
[buses.plant]
kind = "modbus-tcp"
address = "{boiler_addr}"
timeout = "500ms"
[buses.display]
kind = "serial"
port = "{pty}"
baud = 115200
framing = "line"
line_ending = "\r\n"
ack = "^OK"
nack = "^ERR"
timeout = "500ms"
[devices.boiler]
bus = "plant"
unit = 1
idempotent = true
points.setpoint = {{ table = "holding", address = 100, type = "f32", min = 5.0, max = 90.0 }}
points.pump = {{ table = "coil", address = 7, type = "bool" }}
points.temperature = {{ table = "input", address = 0, type = "f32" }}
telemetry = {{ interval = "250ms", points = ["temperature", "setpoint"], alerts = {{ temperatureAlert = "temperature > 30" }} }}
[devices.panel]
bus = "display"
[twin]
enabled = true
"#,
        state = tmp.join("state").display(),
    );
    let cfg = Config::parse(&cfg_text, "demo.toml").map_err(|d| d.to_string())?;
    let cfg_path = tmp.join("demo.toml");
    std::fs::write(&cfg_path, &cfg_text).map_err(|e| e.to_string())?;
    let control = cfg.gateway.control_socket();
    let (stop_tx, stop_rx) = watch::channel(false);
    let gateway = tokio::spawn(crate::daemon::run(cfg, None, Some(stop_rx)));

    println!("c2d-gateway demo: everything below runs in this process, on loopback.");
    println!(
        "  hub emulator   IoT Hub's MQTT dialect over TLS at {} (HTTP API at http://{})",
        emu.tls_addr().unwrap_or(local),
        emu.http_addr().unwrap_or(local)
    );
    println!(
        "  boiler         Modbus TCP device at {boiler_addr}, unit 1 (setpoint: f32 at holding 100, pump: coil 7)"
    );
    println!("  panel          line-oriented serial device on {pty} (answers OK / ERR)");
    if dps {
        println!(
            "  provisioning   the emulator's DPS (id scope {DPS_SCOPE}, enrollment group {DPS_GROUP}) over MQTT over \
             WebSockets at wss://{}/$iothub/websocket: the gateway has the group's key, no connection string",
            emu.wss_addr().unwrap_or(local)
        );
    }
    println!("  gateway        device identity demo-gateway, journal in {}", tmp.join("state").display());
    let t_conn = tokio::time::Instant::now();
    while emu.connections() == 0 {
        if t_conn.elapsed() > Duration::from_secs(10) {
            return Err("the gateway did not connect to the emulator within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if dps {
        let registrations = emu.shared().dps().registrations;
        println!(
            "  connected      gateway → hub over MQTT over WebSockets (TLS), after {registrations} DPS registration(s); \
             SAS token from the derived key accepted\n"
        );
    } else {
        println!("  connected      gateway → hub over TLS, SAS token accepted\n");
    }

    let plan: [(&str, &str, Option<&str>, &str, &str); 6] = [
        ("setpoint 21.5 °C", "boiler", Some("demo-setpoint"), r#"{"point": "setpoint", "value": 21.5}"#, "delivered"),
        ("pump on", "boiler", Some("demo-pump"), r#"{"point": "pump", "value": true}"#, "delivered"),
        ("panel text", "panel", Some("demo-panel"), "HELLO FROM THE CLOUD", "delivered"),
        ("a bad body", "boiler", Some("demo-bad-body"), r#"{"point": "setpoint", "value": "hot"}"#, "rejected"),
        ("an unknown device", "chiller", Some("demo-unknown-device"), r#"{"point": "x", "value": 1}"#, "rejected"),
        (
            "the setpoint again, same message id",
            "boiler",
            Some("demo-setpoint"),
            r#"{"point": "setpoint", "value": 21.5}"#,
            "delivered",
        ),
    ];
    let mut msgs: Vec<Msg> = Vec::new();
    for (title, device, id, body, expect) in plan {
        let sent_at = SystemTime::now();
        let req = C2dRequest {
            body: body.as_bytes().to_vec(),
            message_id: id.map(str::to_string),
            ack: Some("full".into()),
            properties: vec![("device".into(), device.into())],
            ..C2dRequest::default()
        };
        let id = emu.send("demo-gateway", req).map_err(|e| e.to_string())?.unwrap_or_default();
        // One after the other, so the duplicate meets a finished original.
        let t = tokio::time::Instant::now();
        let reports_for = |id: &str| {
            emu.events("demo-gateway")
                .iter()
                .filter(|e| e.properties.iter().any(|(k, v)| k == "$.cid" && v.as_deref() == Some(id)))
                .count()
        };
        let want = 1 + msgs.iter().filter(|m| m.id == id).count();
        while reports_for(&id) < want || emu.feedback().iter().filter(|f| f.original_message_id == id).count() < want {
            if t.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        msgs.push(Msg { title, device, id, body, expect, sent_at });
    }

    let mut ok = true;
    let feedback = emu.feedback();
    let events = emu.events("demo-gateway");
    let steps = steps.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (i, m) in msgs.iter().enumerate() {
        let nth = msgs[..i].iter().filter(|o| o.id == m.id).count();
        println!("[{}] {} → {}    message id {}", i + 1, m.title, m.device, m.id);
        println!("    body {}", m.body);
        let t0 = m.sent_at;
        let t_next = msgs.get(i + 1).map_or(SystemTime::now(), |n| n.sent_at);
        let mut lines: Vec<(SystemTime, String)> = vec![(t0, "sent by the back end (iothub-ack: full)".into())];
        for s in steps.get(&m.id).into_iter().flatten().filter(|s| s.at >= t0 && s.at < t_next) {
            let text = match s.what.as_str() {
                "received" => "received by the gateway and journaled (flushed)".to_string(),
                "sending" => "sent to the device".to_string(),
                "delivered" => format!("device acknowledged: {}", s.detail),
                "not delivered" | "rejected" => format!("not delivered: {}", s.detail),
                "redelivered message: not executed again" => "a known message id: not executed again".to_string(),
                other => other.to_string(),
            };
            lines.push((s.at, text));
        }
        let fb: Vec<_> = feedback.iter().filter(|f| f.original_message_id == m.id).collect();
        if let Some(f) = fb.get(nth) {
            let at = parse_utc(&f.enqueued_time_utc).unwrap_or(t0);
            lines.push((at, "PUBACK: the hub completed the message".into()));
            lines.push((at, format!("feedback to the back end: {}", f.status_code)));
        }
        let reports: Vec<_> = events
            .iter()
            .filter(|e| e.properties.iter().any(|(k, v)| k == "$.cid" && v.as_deref() == Some(m.id.as_str())))
            .collect();
        let status = reports
            .get(nth)
            .and_then(|e| e.properties.iter().find(|(k, _)| k == "c2d-status").and_then(|(_, v)| v.clone()));
        if let Some(e) = reports.get(nth) {
            let at = parse_utc(&e.received_time_utc).unwrap_or(t0);
            lines.push((at, format!("result report (D2C): c2d-status = {}", status.as_deref().unwrap_or("?"))));
        }
        lines[1..].sort_by_key(|(t, _)| *t);
        for (t, text) in &lines {
            println!("    {}  {}", ms_since(t0, *t), text);
        }
        let good = status.as_deref() == Some(m.expect) && fb.get(nth).is_some();
        if !good {
            ok = false;
            println!("    !! expected {} with hub feedback, got {:?}", m.expect, status);
        }
        println!();
    }

    // Telemetry: the boiler heats up past the alert threshold.
    println!("Telemetry (every 250 ms, read through the same bus worker; commands go first):");
    let t_start = SystemTime::now();
    for (i, t) in [28.5f32, 30.5, 31.5].iter().enumerate() {
        set_temperature(&boiler, *t);
        let want = i + 1;
        let t_wait = tokio::time::Instant::now();
        while telemetry_since(&emu, t_start).iter().filter(|(_, b)| b["values"]["temperature"] == f64::from(*t)).count()
            == 0
            && t_wait.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match telemetry_since(&emu, t_start).into_iter().find(|(_, b)| b["values"]["temperature"] == f64::from(*t)) {
            Some((alert, b)) => println!(
                "  reading {want}: {}  temperatureAlert = {}",
                serde_json::to_string(&b["values"]).unwrap_or_default(),
                alert.as_deref().unwrap_or("?")
            ),
            None => {
                ok = false;
                println!("  !! no reading with temperature {t}");
            }
        }
    }
    println!();

    // Direct methods: commands that answer.
    println!("Direct methods on the gateway's identity (a back end's calls, answered by the gateway):");
    let method_writes_before = boiler.writes().iter().filter(|w| w.address == 100).count();
    let calls = [
        ("read", serde_json::json!({"device": "boiler", "points": ["temperature", "setpoint"]}), 200, None),
        (
            "write",
            serde_json::json!({"device": "boiler", "id": "demo-method-1", "point": "setpoint", "value": 23.0}),
            200,
            Some(false),
        ),
        (
            "write",
            serde_json::json!({"device": "boiler", "id": "demo-method-1", "point": "setpoint", "value": 23.0}),
            200,
            Some(true),
        ),
        ("write", serde_json::json!({"device": "boiler", "point": "setpoint", "value": 500}), 400, None),
    ];
    for (name, payload, want, duplicate) in calls {
        let t = tokio::time::Instant::now();
        let inv = crate::emulator::methods::Invocation {
            method_name: name.into(),
            payload: payload.clone(),
            response_timeout_in_seconds: 10,
            connect_timeout_in_seconds: 5,
        };
        println!("  {name} {payload}");
        match emu.shared().invoke("demo-gateway", &inv).await {
            Ok(a) => {
                let took = t.elapsed().as_secs_f64() * 1000.0;
                let what = match (name, a.status) {
                    ("read", 200) => format!("values {}", a.payload["values"]),
                    ("write", 200) => format!(
                        "{} after the device acknowledged ({}){}",
                        a.payload["status"].as_str().unwrap_or("?"),
                        a.payload["detail"].as_str().unwrap_or(""),
                        if a.payload["duplicate"] == true {
                            "; a repeated id: the stored outcome, nothing written"
                        } else {
                            ""
                        }
                    ),
                    _ => a.payload["error"].as_str().unwrap_or("").to_string(),
                };
                println!("    → {} in {took:.1} ms: {what}", a.status);
                let dup_ok = duplicate.is_none_or(|d| (a.payload["duplicate"] == true) == d);
                if a.status != want || !dup_ok {
                    ok = false;
                    println!("    !! expected {want}");
                }
            }
            Err(e) => {
                ok = false;
                println!("    !! the call failed: {e}");
            }
        }
    }
    let method_writes = boiler.writes().iter().filter(|w| w.address == 100).count() - method_writes_before;
    if method_writes != 1 {
        ok = false;
        println!("  !! the write method wrote the setpoint {method_writes} times (expected once)");
    }
    println!();

    // Twin: a setpoint kept in the cloud, applied and reported.
    println!("Twin setpoint (desired properties, applied through the journal and reported back):");
    let desired = serde_json::json!({"devices": {"boiler": {"pump": false}}});
    println!("  desired {desired}");
    let t = tokio::time::Instant::now();
    if let Err(e) = emu.shared().patch_desired("demo-gateway", &desired) {
        ok = false;
        println!("  !! {e}");
    }
    let pump_reported = || {
        emu.shared().twin("demo-gateway").ok().and_then(|t| {
            let r = &t["properties"]["reported"]["devices"]["boiler"]["pump"];
            (r["value"] == false).then(|| r.clone())
        })
    };
    while pump_reported().is_none() && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match pump_reported() {
        Some(r) => println!(
            "    → applied in {:.1} ms, reported: {r} (the device's pump coil is now {})",
            t.elapsed().as_secs_f64() * 1000.0,
            boiler.coil(1, 7)
        ),
        None => {
            ok = false;
            println!("  !! the setpoint was not reported within 10 s");
        }
    }
    if boiler.coil(1, 7) {
        ok = false;
    }
    println!();

    let setpoint_writes = boiler.writes().iter().filter(|w| w.address == 100).count() - method_writes;
    let value = f32::from_bits(((boiler.holding(1, 100) as u32) << 16) | boiler.holding(1, 101) as u32);
    println!("Devices now:");
    println!(
        "  boiler setpoint = {value} (written {setpoint_writes} time(s) for 2 C2D messages with the same id, {method_writes} time(s) for 2 write calls with the same id), pump = {} (the twin's)",
        boiler.coil(1, 7)
    );
    println!("  panel shows {:?}", shown.lock().unwrap_or_else(|p| p.into_inner()).last().cloned().unwrap_or_default());
    let by_status = msgs.iter().fold(BTreeMap::<String, usize>::new(), |mut acc, m| {
        *acc.entry(m.expect.to_string()).or_default() += 1;
        acc
    });
    let queue_left = emu.queue("demo-gateway").map(|q| q.len()).unwrap_or(0);
    println!(
        "Summary: {} messages sent, {} completed at the hub, {} result reports; expected outcomes {:?}; left in the hub queue: {queue_left}",
        msgs.len(),
        emu.feedback().len(),
        emu.events("demo-gateway")
            .iter()
            .filter(|e| e.properties.iter().any(|(k, _)| k == "c2d-status"))
            .filter(|e| e
                .properties
                .iter()
                .any(|(k, v)| k == "$.cid" && msgs.iter().any(|m| v.as_deref() == Some(m.id.as_str()))))
            .count(),
        by_status
    );
    if setpoint_writes != 1 || queue_left != 0 {
        ok = false;
    }
    println!();
    println!("Operator view (`c2d-gateway status`, over the daemon's control socket; the page at http://{http}/):");
    match control.as_deref().map(super::operator::status_text) {
        Some(Ok(text)) => text.lines().for_each(|l| println!("  {l}")),
        Some(Err(e)) => {
            println!("  !! {e}");
            ok = false;
        }
        None => ok = false,
    }

    if keep_running {
        let hub = emu.http_addr().unwrap_or(local);
        println!("\nStill running (Ctrl-C stops). Try:");
        println!("  c2d-gateway send --hub http://{hub} --device demo-gateway --ack full --property device=boiler --wait '{{\"point\": \"setpoint\", \"value\": 22}}'");
        println!("  c2d-gateway send --hub http://{hub} --device demo-gateway --property device=panel 'GOOD MORNING'");
        println!("  c2d-gateway invoke --hub http://{hub} --device demo-gateway read '{{\"device\": \"boiler\", \"points\": [\"temperature\"]}}'");
        println!("  c2d-gateway twin --hub http://{hub} --device demo-gateway set '{{\"devices\": {{\"boiler\": {{\"setpoint\": 19}}}}}}'");
        println!("  curl http://{hub}/devices/demo-gateway/events");
        println!("  c2d-gateway status --config {}", cfg_path.display());
        println!("  c2d-gateway queue list --state all --config {}", cfg_path.display());
        println!("  open http://{http}/ (the status page), curl http://{http}/metrics");
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(10), gateway).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(format!("the gateway failed: {e}")),
        _ => return Err("the gateway did not stop in time".into()),
    }
    drop(keep);
    if ok {
        println!("demo: all outcomes as expected");
        Ok(())
    } else {
        Err("demo: some outcome was not as expected (see above)".into())
    }
}
