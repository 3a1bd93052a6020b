//! Telemetry end to end: readings on schedule through the same bus worker,
//! sent as D2C JSON with the alert as an application property.

mod common;

use common::{wait_until, Gateway, Rig};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn set_temperature(rig: &Rig, t: f32) {
    let bits = t.to_bits();
    let mut m = rig.dev.mem();
    m.input.insert((1, 0), (bits >> 16) as u16);
    m.input.insert((1, 1), bits as u16);
}

fn readings(rig: &Rig) -> Vec<(Option<String>, serde_json::Value)> {
    rig.emu
        .events("gw1")
        .into_iter()
        .filter(|e| e.properties.iter().any(|(k, v)| k == "device" && v.as_deref() == Some("boiler")))
        .map(|e| {
            let alert = e.properties.iter().find(|(k, _)| k == "temperatureAlert").and_then(|(_, v)| v.clone());
            (alert, serde_json::from_str(e.body.as_deref().unwrap_or("null")).unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_arrive_each_interval_with_the_alert_property() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    set_temperature(&rig, 25.0);
    // The standard boiler, plus a temperature input and a telemetry schedule.
    let cfg = rig.config("").replace(
        "points.mode = {",
        "points.temperature = { table = \"input\", address = 0, type = \"f32\" }\n\
         telemetry = { interval = \"200ms\", points = [\"temperature\", \"setpoint\"], alerts = { temperatureAlert = \"temperature > 30\" } }\n\
         points.mode = {",
    );
    let gw = Gateway::start(&cfg).await;
    wait_until("three readings", T, || readings(&rig).len() >= 3).await;
    let (alert, body) = readings(&rig).remove(0);
    assert_eq!(alert.as_deref(), Some("false"));
    assert_eq!(body["device"], "boiler");
    assert_eq!(body["values"]["temperature"], 25.0);
    assert_eq!(body["values"]["setpoint"], 0.0);
    assert_eq!(body["alerts"]["temperatureAlert"], false);
    let events = rig.emu.events("gw1");
    let props = &events.last().unwrap().properties;
    assert!(props.contains(&("$.ct".into(), Some("application/json".into()))), "{props:?}");

    set_temperature(&rig, 31.5);
    wait_until("an alert", T, || readings(&rig).iter().any(|(a, _)| a.as_deref() == Some("true"))).await;
    let (_, hot) = readings(&rig).into_iter().find(|(a, _)| a.as_deref() == Some("true")).unwrap();
    assert_eq!(hot["values"]["temperature"], 31.5);

    // A command still goes through while the device is polled.
    rig.send("boiler", "t-write", r#"{"point": "setpoint", "value": 22.5}"#);
    wait_until("delivered", T, || rig.feedback_for("t-write") == ["Success"]).await;
    wait_until("the next reading shows it", T, || {
        readings(&rig).last().is_some_and(|(_, b)| b["values"]["setpoint"] == 22.5)
    })
    .await;

    // About one reading per interval: 5 s of 200 ms is 25; allow a noisy machine.
    let before = readings(&rig).len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = readings(&rig).len() - before;
    assert!((5..=12).contains(&n), "{n} readings in 2 s at a 200 ms interval");
    gw.stop().await;
}
