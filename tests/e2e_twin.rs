//! Twin setpoints end to end: desired properties set at the hub emulator
//! (as a back end's `PATCH /twins/{id}`), the real daemon with `[twin]
//! enabled`, a simulated Modbus TCP device. Applied once, reported with
//! status, value and version; a change made while the gateway was down is
//! applied once after it comes back; a restart with nothing changed writes
//! nothing; a point that cannot be written is reported with its reason.

mod common;

use common::{wait_until, Gateway, Rig};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(15);

fn reported(rig: &Rig) -> Value {
    rig.emu.shared().twin("gw1").unwrap()["properties"]["reported"].clone()
}

fn mode_writes(rig: &Rig) -> Vec<u16> {
    rig.dev.writes().into_iter().filter(|w| w.unit == 1 && w.address == 10).map(|w| w.registers[0]).collect()
}

/// Starts the gateway and waits until it reported its status and had time
/// to reconcile.
async fn start(rig: &Rig, cfg: &str) -> Gateway {
    let before = reported(rig)["$version"].as_u64().unwrap();
    let gw = Gateway::start(cfg).await;
    wait_until("the gateway's status in reported", T, || reported(rig)["$version"].as_u64().unwrap() > before).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setpoints_are_applied_once_across_restarts_and_reported() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let cfg = rig.config("[twin]\nenabled = true\n");
    let hub = rig.emu.shared();
    hub.patch_desired("gw1", &json!({"devices": {"boiler": {"mode": 5}}})).unwrap();

    let gw = start(&rig, &cfg).await;
    wait_until("mode applied and reported", T, || reported(&rig)["devices"]["boiler"]["mode"]["status"] == "delivered")
        .await;
    let r = reported(&rig);
    assert_eq!(r["devices"]["boiler"]["mode"]["value"], 5);
    assert_eq!(r["devices"]["boiler"]["mode"]["desired_version"], 2);
    assert_eq!(r["gateway"]["hub"], "connected");
    assert_eq!(mode_writes(&rig), [5]);
    gw.stop().await;

    // A restart with nothing changed writes nothing.
    let gw = start(&rig, &cfg).await;
    assert_eq!(mode_writes(&rig), [5], "an applied setpoint is not written again");
    gw.stop().await;

    // Changed while the gateway was down: applied once when it is back.
    hub.patch_desired("gw1", &json!({"devices": {"boiler": {"mode": 6}}})).unwrap();
    let gw = start(&rig, &cfg).await;
    wait_until("the new mode", T, || reported(&rig)["devices"]["boiler"]["mode"]["value"] == 6).await;
    assert_eq!(reported(&rig)["devices"]["boiler"]["mode"]["desired_version"], 3);
    gw.stop().await;
    let gw = start(&rig, &cfg).await;
    assert_eq!(mode_writes(&rig), [5, 6]);

    // While connected: pushed, applied; a point that cannot be written is
    // reported with its reason, and not tried again.
    hub.patch_desired("gw1", &json!({"devices": {"boiler": {"pump": true, "nope": 1}, "valve": {"position": 7}}}))
        .unwrap();
    wait_until("pump and valve applied", T, || {
        let r = reported(&rig);
        r["devices"]["boiler"]["pump"]["status"] == "delivered"
            && r["devices"]["valve"]["position"]["status"] == "delivered"
    })
    .await;
    assert!(rig.dev.coil(1, 7));
    assert_eq!(rig.dev.holding(2, 20), 7);
    wait_until("the bad point reported", T, || reported(&rig)["devices"]["boiler"]["nope"]["status"] == "rejected")
        .await;
    let detail = reported(&rig)["devices"]["boiler"]["nope"]["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("has no point \"nope\""), "{detail}");
    assert_eq!(mode_writes(&rig), [5, 6], "mode untouched by the other changes");
    gw.stop().await;
}
