//! Shared harness for the in-process end-to-end tests: the hub emulator, a
//! simulated Modbus TCP device, and the real daemon loop, all on loopback.
#![allow(dead_code)]

use c2d_gateway::config::Config;
use c2d_gateway::daemon::{self, DaemonError};
use c2d_gateway::emulator::{C2dRequest, Emulator, EmulatorOptions};
use c2d_gateway::sim::modbus::{serve_tcp, SimDevice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Gateway {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), DaemonError>>,
}

impl Gateway {
    pub async fn start(cfg_text: &str) -> Gateway {
        let cfg = Config::parse(cfg_text, "test.toml").unwrap_or_else(|d| panic!("{d}\n{cfg_text}"));
        daemon::init_logging(None);
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(daemon::run(cfg, None, Some(rx)));
        Gateway { stop, task }
    }

    /// Like `start`, with the config written to `path` so SIGHUP reloads it.
    pub async fn start_from_file(path: &std::path::Path, cfg_text: &str) -> Gateway {
        std::fs::write(path, cfg_text).unwrap();
        daemon::init_logging(None);
        let cfg = Config::load(path).unwrap_or_else(|d| panic!("{d}"));
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(daemon::run(cfg, Some(path.to_path_buf()), Some(rx)));
        Gateway { stop, task }
    }

    /// Waits (at most `within`) for the gateway to stop by itself.
    pub async fn ended(self, within: Duration) -> Result<(), DaemonError> {
        tokio::time::timeout(within, self.task).await.expect("the gateway stops by itself").expect("task")
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("gateway stops within 10 s")
            .expect("task")
            .expect("clean exit");
    }
}

pub struct Rig {
    pub emu: Emulator,
    pub dev: Arc<SimDevice>,
    pub modbus: SocketAddr,
    pub conn_str: String,
    pub state: tempfile::TempDir,
    device_task: JoinHandle<std::io::Result<()>>,
}

impl Rig {
    pub async fn new(lock: Duration) -> Rig {
        Rig::with(EmulatorOptions { lock_timeout: lock, ..EmulatorOptions::default() }).await
    }

    /// A rig whose emulator has these options (listeners, an X.509 CA).
    pub async fn with(opts: EmulatorOptions) -> Rig {
        let emu = Emulator::start(opts).await.unwrap();
        let conn_str = emu.add_device("gw1", None);
        let dev = SimDevice::new(&[1, 2, 3]);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let modbus = l.local_addr().unwrap();
        let device_task = tokio::spawn(serve_tcp(l, dev.clone()));
        Rig { emu, dev, modbus, conn_str, state: tempfile::tempdir().unwrap(), device_task }
    }

    /// The standard test config; `extra` is appended (more buses, devices).
    pub fn config(&self, extra: &str) -> String {
        let hub = format!(
            "connection_string = \"{}\"\ntransport = \"mqtt\"\nport = {}",
            self.conn_str,
            self.emu.mqtt_addr().unwrap().port()
        );
        self.config_hub(&hub, extra)
    }

    /// The standard test config with these `[hub]` lines (kind = "azure" and
    /// handover_after are given).
    pub fn config_hub(&self, hub: &str, extra: &str) -> String {
        format!(
            r#"
[gateway]
state_dir = "{state}"
[hub]
kind = "azure"
handover_after = "30s"
{hub}
[routing]
device_property = "device"
[buses.plc]
kind = "modbus-tcp"
address = "{modbus}"
timeout = "300ms"
[devices.boiler]
bus = "plc"
unit = 1
idempotent = true
max_age = "1m"
max_attempts = 50
points.setpoint = {{ table = "holding", address = 100, type = "f32", min = 5.0, max = 90.0 }}
points.pump = {{ table = "coil", address = 7, type = "bool" }}
points.mode = {{ table = "holding", address = 10, type = "u16" }}
[devices.valve]
bus = "plc"
unit = 2
points.position = {{ table = "holding", address = 20, type = "i16" }}
{extra}
"#,
            state = self.state.path().display(),
            modbus = self.modbus,
        )
    }

    pub fn send(&self, device: &str, id: &str, body: &str) -> String {
        self.emu
            .send(
                "gw1",
                C2dRequest {
                    body: body.as_bytes().to_vec(),
                    message_id: Some(id.to_string()),
                    ack: Some("full".into()),
                    properties: vec![("device".into(), device.into())],
                    ..C2dRequest::default()
                },
            )
            .unwrap()
            .expect("the message id given")
    }

    /// Result reports published by the gateway: (message id, status, body).
    pub fn reports(&self) -> Vec<(String, String, serde_json::Value)> {
        self.emu
            .events("gw1")
            .into_iter()
            .filter_map(|e| {
                let get = |k: &str| e.properties.iter().find(|(n, _)| n == k).and_then(|(_, v)| v.clone());
                let status = get("c2d-status")?;
                let body = serde_json::from_str(e.body.as_deref()?).ok()?;
                Some((get("$.cid")?, status, body))
            })
            .collect()
    }

    pub fn report_for(&self, id: &str) -> Option<(String, serde_json::Value)> {
        self.reports().into_iter().rev().find(|(i, _, _)| i == id).map(|(_, s, b)| (s, b))
    }

    pub fn feedback_for(&self, id: &str) -> Vec<String> {
        self.emu.feedback().into_iter().filter(|f| f.original_message_id == id).map(|f| f.status_code).collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.device_task.abort();
    }
}

pub async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + timeout;
    while !f() {
        if tokio::time::Instant::now() > end {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
