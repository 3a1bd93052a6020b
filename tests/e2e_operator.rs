//! The operator surface end to end, in-process: the real daemon with its
//! control socket and HTTP server, the hub emulator, a simulated Modbus
//! device. Requests go over the socket as the verbs send them; a dead unit
//! makes one message `uncertain` (not idempotent) and holds others in the
//! bus worker's back-off (idempotent), where `drop` must take them out.
//! (tests/peers/test_operator.py does the same against Mosquitto, pymodbus
//! and the CLI, and the status page in Chromium.)

mod common;

use common::{wait_until, Gateway, Rig};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const T: Duration = Duration::from_secs(15);

/// One request over the control socket; the answer.
async fn ask(socket: &Path, req: Value) -> Value {
    let mut s = tokio::net::UnixStream::connect(socket).await.expect("the control socket");
    s.write_all(format!("{req}\n").as_bytes()).await.unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await.unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// An action, asked again while the gateway says to try again in a
/// moment (a report the hub has not acknowledged yet).
async fn act(socket: &Path, req: Value) -> Value {
    let until = tokio::time::Instant::now() + T;
    loop {
        let r = ask(socket, req.clone()).await;
        let later = r["error"].as_str().is_some_and(|e| e.contains("try again"));
        if !later || tokio::time::Instant::now() > until {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut r = agent.get(format!("http://127.0.0.1:{port}{path}")).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// The value of one sample line of the metrics text (`name{labels} value`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_resolve_and_drop_over_the_control_socket_and_what_http_shows() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = rig.config("").replacen("[gateway]\n", &format!("[gateway]\nhttp = \"127.0.0.1:{port}\"\n"), 1);
    let socket = rig.state.path().join("control.sock");
    let gw = Gateway::start(&cfg).await;
    wait_until("the control socket", T, || socket.exists()).await;

    // valve (unit 2, not idempotent) does not answer: uncertain. boiler
    // (unit 1, idempotent) does not either: its messages wait in back-off.
    rig.dev.set_dead(1, true);
    rig.dev.set_dead(2, true);
    rig.send("valve", "v-1", r#"{"point": "position", "value": 5}"#);
    rig.send("valve", "v-2", r#"{"point": "position", "value": 6}"#);
    wait_until("v-1 and v-2 uncertain", T, || {
        rig.report_for("v-1").is_some_and(|(s, _)| s == "uncertain") && rig.report_for("v-2").is_some()
    })
    .await;
    rig.send("boiler", "b-1", r#"{"point": "mode", "value": 1}"#);
    rig.send("boiler", "b-2", r#"{"point": "mode", "value": 2}"#);
    let until = tokio::time::Instant::now() + T;
    while ask(&socket, json!({"verb": "status"})).await["result"]["devices"]["boiler"]["queued"] != 2 {
        assert!(tokio::time::Instant::now() < until, "b-1 and b-2 never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let listed = ask(&socket, json!({"verb": "list"})).await;
    let ids: Vec<&str> =
        listed["result"]["messages"].as_array().unwrap().iter().map(|m| m["message_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["v-1", "v-2", "b-1", "b-2"], "{listed}");
    let status = ask(&socket, json!({"verb": "status"})).await["result"].clone();
    assert_eq!(status["unresolved"], json!({"uncertain": 2, "expired": 0}), "{status}");
    assert_eq!(status["devices"]["boiler"]["queued"], 2);

    // b-2 waits in the bus worker's back-off: the worker drops it.
    let dropped = act(&socket, json!({"verb": "drop", "id": "b-2", "note": "superseded"})).await;
    assert_eq!(dropped["ok"], true, "{dropped}");
    wait_until("b-2's report", T, || rig.report_for("b-2").is_some()).await;
    let (st, body) = rig.report_for("b-2").unwrap();
    assert_eq!(
        (st.as_str(), &body["dropped_by"], &body["note"]),
        ("rejected", &json!("operator"), &json!("superseded"))
    );

    // The devices come back: v-1 retried (written once), v-2 resolved by hand.
    rig.dev.set_dead(1, false);
    rig.dev.set_dead(2, false);
    let retried = act(&socket, json!({"verb": "retry", "id": "v-1", "note": "checked"})).await;
    assert_eq!(retried["ok"], true, "{retried}");
    wait_until("v-1 delivered", T, || rig.reports().iter().any(|(id, s, _)| id == "v-1" && s == "delivered")).await;
    let again = rig.reports().into_iter().find(|(id, s, _)| id == "v-1" && s == "delivered").unwrap().2;
    assert_eq!((&again["retried_by"], &again["note"]), (&json!("operator"), &json!("checked")));
    let resolved = act(&socket, json!({"verb": "resolve", "id": "v-2", "as": "rejected", "note": "left shut"})).await;
    assert_eq!(resolved["ok"], true, "{resolved}");
    wait_until("v-2 rejected", T, || rig.reports().iter().any(|(id, s, _)| id == "v-2" && s == "rejected")).await;
    wait_until("b-1 delivered", T, || rig.report_for("b-1").is_some_and(|(s, _)| s == "delivered")).await;

    let writes = rig.dev.writes();
    let count = |unit: u8, address: u16, value: u16| {
        writes.iter().filter(|w| w.unit == unit && w.address == address && w.registers == [value]).count()
    };
    assert_eq!(count(2, 20, 5), 1, "v-1 written once, by the retry: {writes:?}");
    assert_eq!(count(2, 20, 6), 0, "v-2 resolved, never written");
    assert_eq!((count(1, 10, 1), count(1, 10, 2)), (1, 0), "b-1 written, b-2 dropped");

    // Refusals, with a reason.
    for (req, says) in [
        (json!({"verb": "retry", "id": "v-1"}), "it is delivered: only uncertain or expired messages are retried"),
        (json!({"verb": "drop", "id": "b-1"}), "it is delivered already"),
        (json!({"verb": "resolve", "id": "v-2", "as": "queued"}), "delivered or rejected"),
        (json!({"verb": "show", "id": "nope"}), "no message with id \"nope\""),
        (json!({"verb": "explode"}), "not a request"),
        (json!({"verb": "retry", "id": "v-1", "note": "x".repeat(2000)}), "at most 1024 bytes"),
    ] {
        let r = ask(&socket, req.clone()).await;
        assert!(r["ok"] == false && r["error"].as_str().unwrap().contains(says), "{req}: {r}");
    }

    // HTTP: the same state, in the Prometheus text format and as JSON.
    let (code, metrics) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(sample(&metrics, r#"c2d_gateway_messages_total{outcome="uncertain"}"#), Some(2.0), "{metrics}");
    assert_eq!(sample(&metrics, r#"c2d_gateway_messages_total{outcome="delivered"}"#), Some(2.0), "v-1, b-1");
    assert_eq!(sample(&metrics, r#"c2d_gateway_messages_total{outcome="rejected"}"#), Some(2.0), "b-2, v-2");
    assert_eq!(sample(&metrics, r#"c2d_gateway_unresolved_messages{state="uncertain"}"#), Some(0.0));
    assert_eq!(sample(&metrics, "c2d_gateway_queue_depth"), Some(0.0));
    assert_eq!(sample(&metrics, r#"c2d_gateway_device_isolated{device="valve"}"#), Some(0.0));
    assert!(metrics.contains("# TYPE c2d_gateway_device_request_duration_seconds histogram"));
    let (code, status) = http_get(port, "/status");
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["devices"]["valve"]["last"]["message_id"], "v-2", "{status}");
    let (code, page) = http_get(port, "/");
    assert!(code == 200 && page.contains("<title>c2d-gateway</title>") && !page.contains("http://"), "self-contained");
    gw.stop().await;
    assert!(!socket.exists(), "the socket goes with the daemon");
}
