//! What the gateway under test talks to, all in the bench process on
//! loopback: the hub emulator (azure dialect, plain MQTT), simulated Modbus
//! devices, the generated config, and the C2D feed.

use super::gateway::{GatewayProc, Scratch};
use crate::emulator::state::QUEUE_LIMIT;
use crate::emulator::{C2dRequest, Emulator, EmulatorOptions, Shared};
use crate::sim::modbus::{serve_tcp, SimDevice};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The gateway's identity at the hub.
pub const GW: &str = "gw";

/// A Modbus TCP simulated device on its own loopback endpoint.
pub struct TcpSim {
    pub dev: Arc<SimDevice>,
    pub addr: std::net::SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for TcpSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpSim {
    pub async fn start() -> Result<TcpSim, String> {
        let dev = SimDevice::new(&[1]);
        let l = TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        let task = tokio::spawn(serve_tcp(l, dev.clone()));
        Ok(TcpSim { dev, addr, task })
    }
}

pub enum BusSpec {
    Tcp(std::net::SocketAddr),
    Rtu {
        port: String,
        baud: u32,
    },
    /// A serial device whose port does not exist (a dead device: every
    /// message waits for it); its bodies are sent as they are.
    DeadSerial,
}

/// A gateway config: one bus per device, device `d{i}` on bus `b{i}`, unit 1,
/// point `seq` = holding 100 (u32, written with FC16).
pub struct GwConfig {
    pub max_unacked: usize,
    pub complete: &'static str,
    pub buses: Vec<BusSpec>,
    pub bus_timeout: &'static str,
}

impl GwConfig {
    pub fn toml(&self, state_dir: &Path, conn_str: &str, mqtt_port: u16) -> String {
        let mut s = format!(
            r#"[gateway]
state_dir = "{state}"
log_level = "info"
[hub]
kind = "azure"
connection_string = "{conn_str}"
transport = "mqtt"
port = {mqtt_port}
complete = "{complete}"
max_unacked = {max_unacked}
[routing]
device_property = "device"
"#,
            state = state_dir.display(),
            complete = self.complete,
            max_unacked = self.max_unacked,
        );
        for (i, b) in self.buses.iter().enumerate() {
            if let BusSpec::DeadSerial = b {
                let port = state_dir.join("no-such-tty");
                let _ = writeln!(
                    s,
                    "[buses.b{i}]\nkind = \"serial\"\nport = \"{}\"\nframing = \"line\"\nack = \"^OK\"\n\
                     timeout = \"{t}\"\n[devices.d{i}]\nbus = \"b{i}\"\nmax_attempts = 1000000\nmax_age = \"24h\"",
                    port.display(),
                    t = self.bus_timeout
                );
                continue;
            }
            match b {
                BusSpec::Tcp(a) => {
                    let _ = writeln!(s, "[buses.b{i}]\nkind = \"modbus-tcp\"\naddress = \"{a}\"");
                }
                BusSpec::Rtu { port, baud } => {
                    let _ = writeln!(s, "[buses.b{i}]\nkind = \"modbus-rtu\"\nport = \"{port}\"\nbaud = {baud}");
                }
                BusSpec::DeadSerial => unreachable!("written above"),
            }
            let _ = writeln!(
                s,
                "timeout = \"{t}\"\n[devices.d{i}]\nbus = \"b{i}\"\nunit = 1\nidempotent = true\n\
                 max_attempts = 1000000\nmax_age = \"24h\"\n\
                 points.seq = {{ table = \"holding\", address = 100, type = \"u32\" }}",
                t = self.bus_timeout
            );
        }
        s
    }
}

/// The emulator plus a scratch directory for one gateway instance.
pub struct Hub {
    pub emu: Emulator,
    pub conn_str: String,
    pub dir: Scratch,
    exe: PathBuf,
    next_seq: u64,
}

impl Hub {
    pub async fn start(base: &Path, exe: &Path) -> Result<Hub, String> {
        let emu = Emulator::start(EmulatorOptions::default()).await.map_err(|e| format!("emulator: {e}"))?;
        let conn_str = emu.add_device(GW, None);
        Ok(Hub { emu, conn_str, dir: Scratch::new(base)?, exe: exe.to_path_buf(), next_seq: 1 })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.emu.shared()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes the config and starts the gateway; waits for READY=1 and for
    /// its subscription at the hub.
    pub async fn gateway(&self, cfg: &GwConfig) -> Result<GatewayProc, String> {
        let text = cfg.toml(&self.state_dir(), &self.conn_str, self.emu.mqtt_addr().expect("mqtt").port());
        let path = self.dir.path().join("gateway.toml");
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        self.spawn().await
    }

    /// Starts the gateway on the config already written.
    pub async fn spawn(&self) -> Result<GatewayProc, String> {
        let path = self.dir.path().join("gateway.toml");
        let mut gw = GatewayProc::spawn(&self.exe, &path, &self.dir.path().join("notify.sock"))?;
        gw.wait_ready(Duration::from_secs(60)).await?;
        self.wait_subscribed(&mut gw).await?;
        Ok(gw)
    }

    pub async fn wait_subscribed(&self, gw: &mut GatewayProc) -> Result<(), String> {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = self.shared().state().devices.get(GW).is_some_and(|d| d.conn.is_some() && d.subscribed);
            if ok {
                return Ok(());
            }
            gw.alive()?;
            if Instant::now() > end {
                return Err(format!("the gateway did not subscribe at the hub within 20 s; log:\n{}", gw.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Messages in the hub's queue for the gateway (sent, not yet PUBACKed).
    pub fn queued(&self) -> usize {
        self.shared().state().devices.get(GW).map_or(0, |d| d.queue.len())
    }

    /// Result reports (D2C events) received so far.
    pub fn events(&self) -> usize {
        self.shared().state().events.len()
    }

    /// Sends one C2D message of `len` bytes (a line of text) to device
    /// `d{device}`.
    pub fn send_text(&mut self, device: usize, len: usize) -> Result<u64, String> {
        self.send_body(device, |seq| {
            let mut body = format!("SET {seq} ").into_bytes();
            body.resize(len.max(body.len()), b'x');
            body
        })
    }

    /// Sends one C2D message for device `d{device}` writing a fresh sequence
    /// number; returns it (the message id is `m{seq}`).
    pub fn send(&mut self, device: usize) -> Result<u64, String> {
        self.send_body(device, |seq| format!(r#"{{"point":"seq","value":{seq}}}"#).into_bytes())
    }

    /// Sends message `m{seq}` (the next sequence number) with this body.
    fn send_body(&mut self, device: usize, body: impl FnOnce(u64) -> Vec<u8>) -> Result<u64, String> {
        let seq = self.next_seq;
        let req = C2dRequest {
            body: body(seq),
            message_id: Some(format!("m{seq}")),
            properties: vec![("device".into(), format!("d{device}"))],
            ..C2dRequest::default()
        };
        self.shared().send(GW, req).map_err(|e| e.to_string())?;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Keeps the hub's queue full (50) with messages for devices
    /// `0..devices` round robin, until `until`; returns how many were sent.
    pub async fn saturate(&mut self, gw: &mut GatewayProc, devices: usize, until: Instant) -> Result<u64, String> {
        let mut sent = 0u64;
        let mut check = Instant::now();
        while Instant::now() < until {
            for _ in self.queued()..QUEUE_LIMIT {
                self.send(sent as usize % devices)?;
                sent += 1;
            }
            if check.elapsed() > Duration::from_millis(500) {
                gw.alive()?;
                check = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(sent)
    }

    /// Sends `n` messages round robin to devices `0..devices`, as fast as
    /// the hub's queue takes them.
    pub async fn feed(&mut self, gw: &mut GatewayProc, n: u64, devices: usize) -> Result<(), String> {
        let end = Instant::now() + Duration::from_secs(120);
        let mut sent = 0u64;
        while sent < n {
            for _ in self.queued()..QUEUE_LIMIT {
                if sent == n {
                    break;
                }
                self.send(sent as usize % devices)?;
                sent += 1;
            }
            gw.alive()?;
            if Instant::now() > end {
                return Err(format!("the hub's queue did not drain within 120 s ({sent} of {n} sent)"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Whether every message in the hub's queue was PUBLISHed to the gateway.
    pub fn all_published(&self) -> bool {
        use crate::emulator::state::C2dState;
        self.shared().state().devices.get(GW).is_some_and(|d| d.queue.iter().all(|m| m.state == C2dState::Locked))
    }

    /// Waits until `n` more reports than `base` arrived and the hub's queue
    /// is empty; returns when the last one was seen.
    pub async fn drain(&self, gw: &mut GatewayProc, base: usize, n: u64, timeout: Duration) -> Result<Instant, String> {
        let end = Instant::now() + timeout;
        loop {
            if self.events() >= base + n as usize && self.queued() == 0 {
                return Ok(Instant::now());
            }
            gw.alive()?;
            if Instant::now() > end {
                return Err(format!(
                    "only {} of {n} result reports within {timeout:?} ({} still in the hub queue); log:\n{}",
                    self.events() - base,
                    self.queued(),
                    gw.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// How many reports since `base` say `delivered`.
    pub fn delivered_since(&self, base: usize) -> usize {
        let sh = self.shared();
        let st = sh.state();
        st.events[base.min(st.events.len())..]
            .iter()
            .filter(|e| e.properties.iter().any(|(k, v)| k == "c2d-status" && v.as_deref() == Some("delivered")))
            .count()
    }
}
