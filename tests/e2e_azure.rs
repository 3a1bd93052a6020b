//! The daemon end to end, in process: IoT Hub emulator (azure dialect) →
//! journal → Modbus TCP simulated device → PUBACK → feedback and reports.

mod common;

use common::{wait_until, Gateway, Rig};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setpoint_lands_in_the_right_registers_and_is_completed_and_reported() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let gw = Gateway::start(&rig.config("")).await;
    rig.send("boiler", "m-1", r#"{"point": "setpoint", "value": 21.5}"#);
    wait_until("feedback Success", T, || rig.feedback_for("m-1") == ["Success"]).await;
    assert_eq!(rig.dev.holding(1, 100), 0x41AC);
    assert_eq!(rig.dev.holding(1, 101), 0x0000);
    wait_until("a report", T, || rig.report_for("m-1").is_some()).await;
    let (status, body) = rig.report_for("m-1").unwrap();
    assert_eq!(status, "delivered");
    assert_eq!(body["message_id"], "m-1");
    assert_eq!(body["device"], "boiler");
    assert_eq!(body["attempts"], 1);
    assert!(body["detail"].as_str().unwrap().contains("holding 100..101"), "{body}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puback_waits_until_the_device_has_acknowledged() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    rig.dev.set_dead(1, true);
    let gw = Gateway::start(&rig.config("")).await;
    rig.send("boiler", "m-wait", r#"{"points": {"mode": 3, "pump": true}}"#);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let q = rig.emu.queue("gw1").unwrap();
    assert_eq!(q.len(), 1, "still at the hub: not completed while the device is silent");
    assert!(rig.feedback_for("m-wait").is_empty());
    rig.dev.set_dead(1, false);
    wait_until("feedback Success once the device answers", T, || rig.feedback_for("m-wait") == ["Success"]).await;
    assert_eq!(rig.dev.holding(1, 10), 3);
    assert!(rig.dev.coil(1, 7));
    wait_until("report", T, || rig.report_for("m-wait").is_some()).await;
    let (status, body) = rig.report_for("m-wait").unwrap();
    assert_eq!(status, "delivered");
    assert!(body["attempts"].as_u64().unwrap() >= 2, "{body}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_message_id_is_acknowledged_and_reported_but_not_run_again() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let gw = Gateway::start(&rig.config("")).await;
    rig.send("boiler", "dup-1", r#"{"point": "mode", "value": 7}"#);
    wait_until("first completion", T, || rig.feedback_for("dup-1").len() == 1).await;
    rig.send("boiler", "dup-1", r#"{"point": "mode", "value": 7}"#);
    wait_until("second completion", T, || rig.feedback_for("dup-1").len() == 2).await;
    wait_until("two reports", T, || rig.reports().iter().filter(|r| r.0 == "dup-1").count() == 2).await;
    let writes: Vec<_> = rig.dev.writes().into_iter().filter(|w| w.address == 10).collect();
    assert_eq!(writes.len(), 1, "executed once: {writes:?}");
    assert!(rig.reports().iter().filter(|r| r.0 == "dup-1").all(|r| r.1 == "delivered"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_a_clear_reason_and_completed() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let gw = Gateway::start(&rig.config("")).await;
    let cases = [
        ("nobody", "b-unknown-device", r#"{"point": "mode", "value": 1}"#, "unknown device"),
        ("boiler", "b-not-json", "this is not json", "JSON"),
        ("boiler", "b-range", r#"{"point": "setpoint", "value": 500}"#, "maximum"),
        ("boiler", "b-point", r#"{"point": "nope", "value": 1}"#, "no point"),
        ("boiler", "b-raw", r#"{"fc": 6, "address": 1, "value": 1}"#, "allow_raw"),
        ("boiler", "b-type", r#"{"point": "pump", "value": 3}"#, "pump"),
    ];
    for (dev, id, body, _) in &cases {
        rig.send(dev, id, body);
    }
    for (_, id, _, why) in &cases {
        wait_until(&format!("report for {id}"), T, || rig.report_for(id).is_some()).await;
        let (status, body) = rig.report_for(id).unwrap();
        assert_eq!(status, "rejected", "{id}: {body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(why), "{id}: {detail:?} should mention {why:?}");
        wait_until("completed at the hub", T, || rig.feedback_for(id) == ["Success"]).await;
    }
    assert!(rig.dev.writes().is_empty(), "nothing reached the device: {:?}", rig.dev.writes());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modbus_exception_rejects_the_message_naming_the_exception() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let extra =
        "[devices.far]\nbus = \"plc\"\nunit = 3\npoints.x = { table = \"holding\", address = 5000, type = \"u16\" }\n";
    let gw = Gateway::start(&rig.config(extra)).await;
    rig.send("far", "exc-1", r#"{"point": "x", "value": 1}"#);
    wait_until("report", T, || rig.report_for("exc-1").is_some()).await;
    let (status, body) = rig.report_for("exc-1").unwrap();
    assert_eq!(status, "rejected");
    assert!(body["detail"].as_str().unwrap().contains("illegal data address"), "{body}");
    assert_eq!(body["attempts"], 1, "an exception is not retried");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_stay_in_order_while_devices_finish_out_of_order() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    // Unit 3 is silent for a while (idempotent: retried); the boiler's
    // messages finish first but their PUBACKs wait. Strict mode would drop
    // the connection otherwise.
    let extra = "[devices.slow]\nbus = \"plc\"\nunit = 3\nidempotent = true\npoints.x = { table = \"holding\", address = 30, type = \"i16\" }\n";
    let gw = Gateway::start(&rig.config(extra)).await;
    wait_until("connected", T, || rig.emu.connections() == 1).await;
    rig.dev.set_dead(3, true);
    rig.send("slow", "slow-1", r#"{"point": "x", "value": -5}"#);
    for i in 0..5 {
        rig.send("boiler", &format!("fast-{i}"), &format!(r#"{{"point": "mode", "value": {i}}}"#));
    }
    wait_until("fast ones written", T, || rig.dev.writes().len() == 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rig.emu.feedback().is_empty(), "nothing completed before the first message");
    rig.dev.set_dead(3, false);
    wait_until("all six completed", T, || rig.emu.feedback().len() == 6).await;
    let order: Vec<String> = rig.emu.feedback().into_iter().map(|f| f.original_message_id).collect();
    assert_eq!(order[0], "slow-1");
    assert_eq!(rig.emu.connections(), 1, "strict mode never had to drop the connection");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_queued_messages_and_dedupes_the_hubs_redelivery() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    rig.dev.set_dead(1, true);
    let gw = Gateway::start(&rig.config("")).await;
    rig.send("boiler", "r-1", r#"{"point": "mode", "value": 11}"#);
    rig.send("boiler", "r-2", r#"{"point": "mode", "value": 12}"#);
    tokio::time::sleep(Duration::from_millis(800)).await;
    gw.stop().await;
    assert_eq!(rig.emu.queue("gw1").unwrap().len(), 2, "not completed: still at the hub");
    rig.dev.set_dead(1, false);
    let gw = Gateway::start(&rig.config("")).await;
    wait_until("both completed", T, || rig.feedback_for("r-1").len() == 1 && rig.feedback_for("r-2").len() == 1).await;
    let writes: Vec<u16> = rig.dev.writes().into_iter().filter(|w| w.address == 10).map(|w| w.registers[0]).collect();
    assert_eq!(writes, vec![11, 12], "each once, in order");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_hub_connection_loses_nothing() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    rig.dev.set_dead(1, true);
    let gw = Gateway::start(&rig.config("")).await;
    wait_until("connected", T, || rig.emu.connections() == 1).await;
    rig.send("boiler", "d-1", r#"{"point": "mode", "value": 21}"#);
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.emu.drop_connection("gw1");
    wait_until("reconnected", Duration::from_secs(15), || rig.emu.connections() >= 2).await;
    rig.dev.set_dead(1, false);
    wait_until("completed after the reconnect", Duration::from_secs(15), || rig.feedback_for("d-1") == ["Success"])
        .await;
    let writes = rig.dev.writes().into_iter().filter(|w| w.address == 10).count();
    assert_eq!(writes, 1, "redelivery after reconnect deduplicated");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_non_idempotent_device_gets_uncertain_not_a_resend() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    rig.dev.set_dead(2, true);
    let gw = Gateway::start(&rig.config("")).await;
    rig.send("valve", "u-1", r#"{"point": "position", "value": 4}"#);
    wait_until("report", T, || rig.report_for("u-1").is_some()).await;
    let (status, body) = rig.report_for("u-1").unwrap();
    assert_eq!(status, "uncertain", "{body}");
    assert_eq!(body["attempts"], 1, "sent once, never again");
    assert!(body["detail"].as_str().unwrap().contains("not idempotent"), "{body}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sas_token_renewal_reconnects_without_losing_or_repeating_messages() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let cfg = rig.config("").replace("handover_after = \"30s\"", "handover_after = \"30s\"\nsas_ttl = \"3s\"");
    let gw = Gateway::start(&cfg).await;
    wait_until("connected", T, || rig.emu.connections() == 1).await;
    // Messages keep coming across several token lifetimes.
    for i in 0..40u16 {
        rig.send("boiler", &format!("sas-{i}"), &format!(r#"{{"point": "mode", "value": {i}}}"#));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_until("all completed", Duration::from_secs(20), || {
        (0..40).all(|i| rig.feedback_for(&format!("sas-{i}")) == ["Success"])
    })
    .await;
    assert!(rig.emu.connections() >= 3, "renewed by reconnecting: {} connections", rig.emu.connections());
    let values: Vec<u16> = rig.dev.writes().into_iter().filter(|w| w.address == 10).map(|w| w.registers[0]).collect();
    assert_eq!(values, (0..40).collect::<Vec<_>>(), "each once, in order");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_message_is_handed_over_then_delivered_and_reported_later() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    rig.dev.set_dead(1, true);
    let cfg = rig.config("").replace("handover_after = \"30s\"", "handover_after = \"1s\"");
    let gw = Gateway::start(&cfg).await;
    rig.send("boiler", "h-1", r#"{"point": "mode", "value": 5}"#);
    // Completed at the hub after handover_after, while the device is still silent.
    wait_until("handed over", T, || rig.feedback_for("h-1") == ["Success"]).await;
    assert!(rig.report_for("h-1").is_none(), "no outcome yet");
    assert!(rig.dev.writes().is_empty());
    rig.dev.set_dead(1, false);
    wait_until("delivered later", T, || rig.report_for("h-1").is_some()).await;
    let (status, body) = rig.report_for("h-1").unwrap();
    assert_eq!(status, "delivered", "{body}");
    assert_eq!(rig.dev.holding(1, 10), 5);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_message_is_reported_expired_and_never_sent() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    rig.dev.set_dead(1, true);
    let cfg = rig.config("").replace("max_age = \"1m\"", "max_age = \"1500ms\"");
    let gw = Gateway::start(&cfg).await;
    rig.send("boiler", "x-1", r#"{"point": "mode", "value": 9}"#);
    wait_until("report", T, || rig.report_for("x-1").is_some()).await;
    let (status, body) = rig.report_for("x-1").unwrap();
    assert_eq!(status, "expired", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("max_age"), "{body}");
    rig.dev.set_dead(1, false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rig.dev.writes().is_empty(), "an expired message is not sent afterwards");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_journal_completes_at_once_and_still_delivers() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    rig.dev.set_dead(1, true);
    let cfg =
        rig.config("").replace("handover_after = \"30s\"", "handover_after = \"30s\"\ncomplete = \"after-journal\"");
    let gw = Gateway::start(&cfg).await;
    rig.send("boiler", "aj-1", r#"{"point": "mode", "value": 6}"#);
    wait_until("completed once journaled", Duration::from_secs(2), || rig.feedback_for("aj-1") == ["Success"]).await;
    assert!(rig.dev.writes().is_empty(), "completed before the device saw it");
    rig.dev.set_dead(1, false);
    wait_until("delivered", T, || rig.report_for("aj-1").is_some_and(|(s, _)| s == "delivered")).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_failures_only_skips_delivered_outcomes() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let cfg = rig.config("").replace("handover_after = \"30s\"", "handover_after = \"30s\"\nreports = \"failures\"");
    let gw = Gateway::start(&cfg).await;
    rig.send("boiler", "rf-ok", r#"{"point": "mode", "value": 1}"#);
    rig.send("boiler", "rf-bad", r#"{"point": "mode", "value": "x"}"#);
    wait_until("both completed", T, || rig.feedback_for("rf-ok").len() == 1 && rig.feedback_for("rf-bad").len() == 1)
        .await;
    wait_until("failure reported", T, || rig.report_for("rf-bad").is_some()).await;
    assert!(rig.report_for("rf-ok").is_none(), "no report for a delivered message");
    gw.stop().await;
}
