//! `c2d-gateway demo` as a user runs it: exit 0 and the key lines.

use std::process::Command;

#[test]
fn the_demo_runs_on_its_own_and_everything_turns_out_as_expected() {
    let out = Command::new(env!("CARGO_BIN_EXE_c2d-gateway")).arg("demo").output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{stderr}", out.status);
    for line in [
        "connected      gateway → hub over TLS, SAS token accepted",
        "device acknowledged: holding 100..101 = [16812, 0]",
        "device acknowledged: coil 7 = true",
        "device acknowledged: device replied \"OK\"",
        "result report (D2C): c2d-status = rejected",
        "unknown device \"chiller\"",
        "a known message id: not executed again",
        "boiler setpoint = 23 (written 1 time(s) for 2 C2D messages with the same id, 1 time(s) for 2 write calls with the same id)",
        "→ 200 in",
        "values {\"setpoint\":21.5,\"temperature\":31.5}",
        "delivered after the device acknowledged (holding 100..101 = [16824, 0])",
        "a repeated id: the stored outcome, nothing written",
        "→ 400 in",
        "desired_version\":2,\"status\":\"delivered\",\"value\":false}",
        "pump = false (the twin's)",
        "panel shows \"HELLO FROM THE CLOUD\"",
        "6 messages sent, 6 completed at the hub, 6 result reports",
        "left in the hub queue: 0",
        "temperatureAlert = false",
        "temperatureAlert = true",
        "Operator view (`c2d-gateway status`",
        "queue:   0 queued; 0 uncertain, 0 expired",
        "demo: all outcomes as expected",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("SharedAccessKey") && !stderr.contains("SharedAccessKey"), "no key printed");
}

#[test]
fn the_dps_flavour_provisions_over_websockets_and_runs_the_same_demo() {
    let out = Command::new(env!("CARGO_BIN_EXE_c2d-gateway")).args(["demo", "--dps"]).output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{stderr}", out.status);
    for line in [
        "provisioning   the emulator's DPS (id scope 0ne00DEMO, enrollment group demo-fleet) over MQTT over WebSockets",
        "connected      gateway → hub over MQTT over WebSockets (TLS), after 1 DPS registration(s)",
        "6 messages sent, 6 completed at the hub, 6 result reports",
        "demo: all outcomes as expected",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}
