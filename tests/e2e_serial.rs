//! The daemon end to end over pseudo-terminals: a line-oriented serial panel
//! and a Modbus RTU bus with a live and a dead unit, the gateway opening the
//! pty by path exactly as it opens /dev/ttyUSB0.

mod common;

use c2d_gateway::bus::serial::take_frames;
use c2d_gateway::config::Framing;
use c2d_gateway::sim::modbus::{serve_rtu, SimDevice};
use common::{wait_until, Gateway, Rig};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPort, SerialStream};

const T: Duration = Duration::from_secs(15);

/// A pty pair: the test keeps the master, the gateway opens the slave's
/// path. A plain, never-read handle on the slave stays open so the master
/// does not read EIO ("unplugged") before the gateway opens the port.
fn pty() -> (SerialStream, String, std::fs::File) {
    use std::os::unix::fs::OpenOptionsExt;
    let (master, slave) = SerialStream::pair().expect("pty pair");
    let path = slave.name().expect("slave has a path");
    let keep = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc_o_noctty())
        .open(&path)
        .expect("open slave");
    drop(slave);
    (master, path, keep)
}

fn libc_o_noctty() -> i32 {
    0o400 // O_NOCTTY on Linux
}

/// A panel that answers OK, ERR for "BAD", nothing for "MUTE"; records frames.
fn panel(mut port: SerialStream) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            let n = match port.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    // The other side is not open yet (or reopening): wait.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            for frame in take_frames(Framing::Line, &mut buf) {
                log.lock().unwrap().push(frame.clone());
                let reply: &[u8] = if frame.contains("BAD") {
                    b"ERR bad text\r\n"
                } else if frame.contains("MUTE") {
                    b""
                } else {
                    b"OK\r\n"
                };
                let _ = port.write_all(reply).await;
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_panel_gets_its_text_and_ack_nack_and_silence_are_reported() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let (master, path, _keep) = pty();
    let seen = panel(master);
    let extra = format!(
        "[buses.display]\nkind = \"serial\"\nport = \"{path}\"\nbaud = 115200\nframing = \"line\"\nline_ending = \"\\r\\n\"\nack = \"^OK\"\nnack = \"^ERR\"\ntimeout = \"300ms\"\n\
         [devices.panel]\nbus = \"display\"\nmax_attempts = 2\n"
    );
    let gw = Gateway::start(&rig.config(&extra)).await;
    rig.send("panel", "s-ok", "HELLO WORLD");
    rig.send("panel", "s-bad", "BAD TEXT");
    rig.send("panel", "s-mute", "MUTE ME");
    rig.send("panel", "s-split", "TWO\nLINES");
    for (id, want) in [("s-ok", "delivered"), ("s-bad", "rejected"), ("s-mute", "uncertain"), ("s-split", "rejected")] {
        wait_until(&format!("report {id}"), T, || rig.report_for(id).is_some()).await;
        let (status, body) = rig.report_for(id).unwrap();
        assert_eq!(status, want, "{id}: {body}");
    }
    let (_, bad) = rig.report_for("s-bad").unwrap();
    assert!(bad["detail"].as_str().unwrap().contains("ERR bad text"), "{bad}");
    let (_, split) = rig.report_for("s-split").unwrap();
    assert!(split["detail"].as_str().unwrap().contains("line break"), "{split}");
    assert_eq!(*seen.lock().unwrap(), vec!["HELLO WORLD", "BAD TEXT", "MUTE ME"], "each frame once");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_rtu_unit_does_not_stall_the_live_one_on_the_same_bus() {
    let rig = Rig::new(Duration::from_secs(60)).await;
    let (master, path, _keep) = pty();
    let dev = SimDevice::new(&[5]); // unit 6 never answers
    let rtu = tokio::spawn(serve_rtu(master, dev.clone()));
    let extra = format!(
        "[buses.field]\nkind = \"modbus-rtu\"\nport = \"{path}\"\nbaud = 19200\ntimeout = \"200ms\"\nbreaker_after = 2\n\
         [devices.live]\nbus = \"field\"\nunit = 5\nidempotent = true\npoints.sp = {{ table = \"holding\", address = 1, type = \"u16\" }}\n\
         [devices.dead]\nbus = \"field\"\nunit = 6\nidempotent = true\nmax_age = \"20s\"\nmax_attempts = 1000\npoints.sp = {{ table = \"holding\", address = 1, type = \"u16\" }}\n"
    );
    let gw = Gateway::start(&rig.config(&extra)).await;
    for i in 0..5 {
        rig.send("dead", &format!("dead-{i}"), &format!(r#"{{"point": "sp", "value": {i}}}"#));
    }
    // Let the breaker open on the dead unit, then time the live one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let start = tokio::time::Instant::now();
    for i in 0..20u16 {
        rig.send("live", &format!("live-{i}"), &format!(r#"{{"point": "sp", "value": {i}}}"#));
    }
    wait_until("20 live writes", T, || dev.writes().iter().filter(|w| w.unit == 5).count() == 20).await;
    let took = start.elapsed();
    eprintln!("20 live writes beside a dead unit took {took:?}");
    let values: Vec<u16> = dev.writes().iter().filter(|w| w.unit == 5).map(|w| w.registers[0]).collect();
    assert_eq!(values, (0..20).collect::<Vec<_>>(), "in order, each once");
    // Without isolation each live write would wait behind a 200 ms timeout
    // of the dead unit (>= 4 s for 20). With the breaker open, the dead unit
    // costs at most one timeout per open period.
    assert!(took < Duration::from_secs(3), "live unit stalled: {took:?}");
    assert!(dev.writes().iter().all(|w| w.unit == 5), "the dead unit received nothing it answered");
    gw.stop().await;
    rtu.abort();
}
