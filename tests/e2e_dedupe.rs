//! The dedupe key end to end (hub emulator in strict ack-order mode, a
//! simulated Modbus TCP device, the real daemon): (device, message id), and
//! the same key with another command is rejected, never a false `delivered`.

mod common;

use c2d_gateway::emulator::C2dRequest;
use common::{wait_until, Gateway, Rig};
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_to_two_devices_runs_on_both() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let gw = Gateway::start(&rig.config("")).await;
    rig.send("boiler", "same-1", r#"{"point": "mode", "value": 7}"#);
    wait_until("first report", T, || rig.reports().iter().any(|r| r.0 == "same-1")).await;
    rig.send("valve", "same-1", r#"{"point": "position", "value": 5}"#);
    wait_until("two reports", T, || rig.reports().iter().filter(|r| r.0 == "same-1").count() == 2).await;
    wait_until("two completions", T, || rig.feedback_for("same-1").len() == 2).await;
    assert_eq!(rig.dev.holding(1, 10), 7);
    assert_eq!(rig.dev.holding(2, 20), 5, "the valve's command ran");
    let reports: Vec<_> = rig.reports().into_iter().filter(|r| r.0 == "same-1").collect();
    let devices: Vec<_> = reports.iter().map(|r| r.2["device"].as_str().unwrap_or("null").to_string()).collect();
    assert_eq!(devices, ["boiler", "valve"], "{reports:?}");
    assert!(reports.iter().all(|r| r.1 == "delivered"), "{reports:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_reused_for_another_command_is_rejected_never_run() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let gw = Gateway::start(&rig.config("")).await;
    rig.send("boiler", "reuse-1", r#"{"point": "mode", "value": 1}"#);
    wait_until("first report", T, || rig.reports().iter().any(|r| r.0 == "reuse-1")).await;
    // The other command, then a message behind it: acks stay in order.
    rig.send("boiler", "reuse-1", r#"{"point": "mode", "value": 2}"#);
    rig.send("boiler", "after-1", r#"{"point": "mode", "value": 3}"#);
    wait_until("all completed", T, || rig.feedback_for("reuse-1").len() == 2 && rig.feedback_for("after-1").len() == 1)
        .await;
    wait_until("reports", T, || rig.reports().iter().filter(|r| r.0 == "reuse-1").count() == 2).await;
    let reports: Vec<_> = rig.reports().into_iter().filter(|r| r.0 == "reuse-1").collect();
    assert_eq!(reports[0].1, "delivered");
    assert_eq!(reports[1].1, "rejected", "{reports:?}");
    assert_eq!(reports[1].2["detail"], "message id reuse-1 was already used for a different command");
    assert_eq!(reports[1].2["device"], "boiler");
    let values: Vec<u16> =
        rig.dev.writes().into_iter().filter(|w| w.unit == 1 && w.address == 10).map(|w| w.registers[0]).collect();
    assert_eq!(values, [1, 3], "the reused id never ran");
    // The original command sent again is still a duplicate.
    rig.send("boiler", "reuse-1", r#"{"point": "mode", "value": 1}"#);
    wait_until("third completion", T, || rig.feedback_for("reuse-1").len() == 3).await;
    wait_until("third report", T, || rig.reports().iter().filter(|r| r.0 == "reuse-1").count() == 3).await;
    assert_eq!(rig.report_for("reuse-1").unwrap().0, "delivered");
    assert_eq!(rig.dev.writes().iter().filter(|w| w.address == 10).count(), 2);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_for_the_default_device_names_it() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let cfg = rig
        .config("")
        .replace("device_property = \"device\"", "device_property = \"device\"\ndefault_device = \"boiler\"");
    let gw = Gateway::start(&cfg).await;
    let req = C2dRequest {
        body: br#"{"point": "mode", "value": 4}"#.to_vec(),
        message_id: Some("dflt-1".into()),
        ack: Some("full".into()),
        ..C2dRequest::default()
    };
    rig.emu.send("gw1", req).unwrap();
    wait_until("report", T, || rig.report_for("dflt-1").is_some()).await;
    let (status, body) = rig.report_for("dflt-1").unwrap();
    assert_eq!(status, "delivered", "{body}");
    assert_eq!(body["device"], "boiler", "{body}");
    assert_eq!(rig.dev.holding(1, 10), 4);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_never_forgets_a_message_whose_puback_waits_behind_an_older_one() {
    // The hub redelivers what it has not seen acknowledged after 3 s.
    let rig = Rig::new(Duration::from_secs(3)).await;
    let slow = r#"
[devices.slow]
bus = "plc"
unit = 3
idempotent = true
max_attempts = 1000
points.mode = { table = "holding", address = 30, type = "u16" }
"#;
    let cfg = rig.config(slow).replace("[gateway]\n", "[gateway]\nmax_messages = 2\n");
    let gw = Gateway::start(&cfg).await;
    rig.dev.set_dead(3, true);
    // A waits for its device at the head of the ack queue; B is delivered
    // and reported, its own PUBACK waits behind A's.
    rig.send("slow", "pa-a", r#"{"point": "mode", "value": 1}"#);
    rig.send("boiler", "pa-b", r#"{"point": "mode", "value": 5}"#);
    wait_until("B reported", T, || rig.report_for("pa-b").is_some()).await;
    // The journal is at its bound (A, B): C must not push B out.
    rig.send("boiler", "pa-c", r#"{"point": "mode", "value": 6}"#);
    wait_until("C reported", T, || rig.report_for("pa-c").is_some()).await;
    // The hub delivers B again (never acknowledged): recognised, not run.
    wait_until("B redelivered and answered", T, || rig.reports().iter().filter(|r| r.0 == "pa-b").count() >= 2).await;
    let fives = rig.dev.writes().iter().filter(|w| w.unit == 1 && w.address == 10 && w.registers == [5]).count();
    assert_eq!(fives, 1, "B ran {fives} times");
    let (status, body) = rig.report_for("pa-c").unwrap();
    assert_eq!(status, "rejected", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("journal full"), "{body}");
    // A's device comes back: A is delivered, every ack goes out in order.
    rig.dev.set_dead(3, false);
    wait_until("A and B completed", T, || {
        rig.feedback_for("pa-a").contains(&"Success".to_string()) && !rig.feedback_for("pa-b").is_empty()
    })
    .await;
    assert_eq!(rig.report_for("pa-a").unwrap().0, "delivered");
    gw.stop().await;
}
