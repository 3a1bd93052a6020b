//! SIGHUP reloads the device map without dropping or re-running queued
//! messages; an invalid file is refused and the running config kept. (Its own
//! test binary: a signal reaches the whole process.)

mod common;

use common::{wait_until, Gateway, Rig};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn sighup() {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_device_map_and_refuses_a_broken_file() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    rig.dev.set_dead(1, true);
    let path = rig.state.path().join("config.toml");
    let old = rig.config("");
    let gw = Gateway::start_from_file(&path, &old).await;
    rig.send("boiler", "rl-1", r#"{"point": "mode", "value": 42}"#);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(rig.dev.writes().is_empty(), "unit 1 is silent: queued");

    // The boiler moves to unit 3 (alive): the queued message follows it.
    std::fs::write(&path, old.replacen("unit = 1", "unit = 3", 1)).unwrap();
    sighup();
    wait_until("delivered to the new unit", T, || rig.feedback_for("rl-1") == ["Success"]).await;
    let writes = rig.dev.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!((writes[0].unit, writes[0].registers[0]), (3, 42));

    // A broken file is refused; the running map stays.
    std::fs::write(&path, "this is [ not toml").unwrap();
    sighup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.send("boiler", "rl-2", r#"{"point": "mode", "value": 43}"#);
    wait_until("still delivering with the last good map", T, || rig.feedback_for("rl-2") == ["Success"]).await;
    assert_eq!(rig.dev.writes().last().map(|w| (w.unit, w.registers[0])), Some((3, 43)));
    assert_eq!(rig.dev.writes().len(), 2, "nothing ran twice across reloads");
    gw.stop().await;
}
