//! Direct methods end to end: a back end's calls through the hub emulator
//! (`Shared::invoke`, what `POST /twins/{id}/methods` does), the real
//! daemon, a simulated Modbus TCP device. `write` answers with the result
//! report once the device acknowledged; a repeated id returns the stored
//! outcome and writes nothing, also after a 504; `read` returns what the
//! device holds; bad payloads are answered without touching the wire.

mod common;

use c2d_gateway::emulator::methods::{Answer, Invocation, InvokeError};
use common::{wait_until, Gateway, Rig};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

async fn call(rig: &Rig, method: &str, payload: Value) -> Answer {
    try_call(rig, method, payload).await.expect("the call completes")
}

async fn try_call(rig: &Rig, method: &str, payload: Value) -> Result<Answer, InvokeError> {
    let inv = Invocation {
        method_name: method.into(),
        payload,
        response_timeout_in_seconds: 10,
        connect_timeout_in_seconds: 10,
    };
    rig.emu.shared().invoke("gw1", &inv).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_answers_with_the_report_once_the_device_acknowledged_and_a_repeat_writes_nothing() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let gw = Gateway::start(&rig.config("")).await;
    let a = call(&rig, "write", json!({"device": "boiler", "id": "w-1", "point": "mode", "value": 7})).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.payload["status"], "delivered");
    assert_eq!(a.payload["message_id"], "w-1");
    assert_eq!(a.payload["device"], "boiler");
    assert_eq!(a.payload["detail"], "holding 10 = 7");
    assert!(a.payload.get("duplicate").is_none());
    assert_eq!(rig.dev.holding(1, 10), 7);
    // The result report goes as D2C too.
    wait_until("the D2C report", T, || rig.report_for("w-1").is_some()).await;

    let again = call(&rig, "write", json!({"device": "boiler", "id": "w-1", "point": "mode", "value": 7})).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.payload["duplicate"], true);
    assert_eq!(again.payload["status"], "delivered");
    let other = call(&rig, "write", json!({"device": "boiler", "id": "w-1", "point": "mode", "value": 8})).await;
    assert_eq!(other.status, 409, "{other:?}");
    assert_eq!(rig.dev.writes().iter().filter(|w| w.address == 10).count(), 1, "written once");
    assert_eq!(rig.dev.holding(1, 10), 7);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_times_out_stays_queued_and_its_repeat_never_writes_twice() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let gw = Gateway::start(&rig.config("[methods]\ntimeout = \"1s\"\n")).await;
    rig.dev.set_dead(1, true);
    let a = call(&rig, "write", json!({"device": "boiler", "id": "slow-1", "point": "mode", "value": 3})).await;
    assert_eq!(a.status, 504, "{a:?}");
    assert_eq!(a.payload["message_id"], "slow-1");
    assert!(a.payload["detail"].as_str().unwrap().contains("stays queued"), "{a:?}");
    // The back end retries while it is still queued: in progress, nothing new.
    let busy = call(&rig, "write", json!({"device": "boiler", "id": "slow-1", "point": "mode", "value": 3})).await;
    assert_eq!((busy.status, &busy.payload["duplicate"]), (202, &json!(true)), "{busy:?}");
    rig.dev.set_dead(1, false);
    wait_until("the D2C report", T, || rig.report_for("slow-1").is_some()).await;
    let done = call(&rig, "write", json!({"device": "boiler", "id": "slow-1", "point": "mode", "value": 3})).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!((&done.payload["status"], &done.payload["duplicate"]), (&json!("delivered"), &json!(true)));
    let writes = rig.dev.writes().iter().filter(|w| w.unit == 1 && w.address == 10).count();
    assert_eq!(writes, 1, "the device acted once");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_returns_what_the_device_holds_and_status_the_gateways_state() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let gw = Gateway::start(&rig.config("")).await;
    {
        let mut m = rig.dev.mem();
        m.holding.insert((1, 10), 42);
        let [hi, lo] = [(21.5f32.to_bits() >> 16) as u16, 21.5f32.to_bits() as u16];
        m.holding.insert((1, 100), hi);
        m.holding.insert((1, 101), lo);
        m.coils.insert((1, 7), true);
    }
    let a = call(&rig, "read", json!({"device": "boiler", "points": ["mode", "setpoint", "pump"]})).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.payload["device"], "boiler");
    assert_eq!(a.payload["values"], json!({"mode": 42, "setpoint": 21.5, "pump": true}));
    assert!(a.payload["read_at"].as_str().unwrap().ends_with('Z'));
    assert!(rig.dev.writes().is_empty(), "a read writes nothing");

    let s = call(&rig, "status", Value::Null).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.payload["hub"]["connected"], true, "{s:?}");
    assert_eq!(s.payload["queued"], 0);
    let devices: Vec<&String> = s.payload["devices"].as_object().unwrap().keys().collect();
    assert_eq!(devices, ["boiler", "valve"]);
    assert_eq!(s.payload["devices"]["boiler"]["bus"], "plc", "{s:?}");
    assert_eq!(s.payload["unresolved"], json!({"uncertain": 0, "expired": 0}));

    rig.dev.set_dead(1, true);
    let dead = call(&rig, "read", json!({"device": "boiler", "points": ["mode"]})).await;
    assert_eq!(dead.status, 502, "{dead:?}");
    assert!(dead.payload["error"].as_str().unwrap().contains("mode"), "{dead:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_are_refused_with_a_reason_and_reach_neither_journal_nor_wire() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let gw = Gateway::start(&rig.config("")).await;
    for (method, payload, status, says) in [
        ("write", json!({"device": "boiler", "point": "nope", "value": 1}), 404, "no point"),
        ("write", json!({"device": "ghost", "point": "mode", "value": 1}), 404, "unknown device"),
        ("write", json!({"device": "boiler", "point": "setpoint", "value": 500}), 400, "above"),
        ("write", json!("text"), 400, "JSON object"),
        ("read", json!({"device": "boiler", "points": ["nope"]}), 404, "no point"),
        ("reboot", json!({}), 404, "write, read and status"),
    ] {
        let a = call(&rig, method, payload.clone()).await;
        assert_eq!(a.status, status, "{method} {payload}: {a:?}");
        let why = a.payload["error"].as_str().unwrap_or_default();
        assert!(why.contains(says), "{method} {payload}: {why}");
    }
    let s = call(&rig, "status", Value::Null).await;
    assert_eq!(s.payload["journal_entries"], 0, "nothing journaled");
    assert!(rig.dev.writes().is_empty());
    assert!(rig.reports().is_empty(), "no report for a refused call");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c2d_read_reports_the_values_and_writes_nothing() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let gw = Gateway::start(&rig.config("")).await;
    rig.dev.mem().holding.insert((1, 10), 42);
    rig.dev.mem().coils.insert((1, 7), true);
    rig.send("boiler", "read-1", r#"{"read": ["mode", "pump"]}"#);
    wait_until("the read's report", T, || rig.report_for("read-1").is_some()).await;
    let (status, report) = rig.report_for("read-1").unwrap();
    assert_eq!(status, "delivered", "{report}");
    assert_eq!(report["values"], json!({"mode": 42, "pump": true}), "{report}");
    assert_eq!(report["detail"], "read mode, pump");
    wait_until("completed at the hub", T, || rig.feedback_for("read-1").len() == 1).await;
    // A bad read is rejected with a reason, like a bad write.
    rig.send("boiler", "read-2", r#"{"read": ["nope"]}"#);
    wait_until("the bad read's report", T, || rig.report_for("read-2").is_some()).await;
    let (status, report) = rig.report_for("read-2").unwrap();
    assert_eq!(status, "rejected");
    assert!(report["detail"].as_str().unwrap().contains("has no point \"nope\""), "{report}");
    assert!(report.get("values").is_none());
    assert!(rig.dev.writes().is_empty(), "a read writes nothing");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_hub_gave_up_on_is_not_written_again_when_the_back_end_calls_again() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let gw = Gateway::start(&rig.config("")).await; // methods.timeout 25 s: the hub's 5 s run out first
    rig.dev.set_dead(1, true);
    let payload = json!({"device": "boiler", "id": "hub-504", "point": "mode", "value": 9});
    let inv = Invocation {
        method_name: "write".into(),
        payload: payload.clone(),
        response_timeout_in_seconds: 5,
        connect_timeout_in_seconds: 10,
    };
    assert_eq!(rig.emu.shared().invoke("gw1", &inv).await, Err(InvokeError::Timeout("gw1".into())));
    rig.dev.set_dead(1, false);
    wait_until("the D2C report", T, || rig.report_for("hub-504").is_some()).await;
    // The back end retries with the same id: the stored outcome, no write.
    let again = call(&rig, "write", payload).await;
    assert_eq!((again.status, &again.payload["duplicate"]), (200, &json!(true)), "{again:?}");
    let writes = rig.dev.writes().iter().filter(|w| w.unit == 1 && w.address == 10).count();
    assert_eq!(writes, 1, "the device acted once");
    gw.stop().await;
}
