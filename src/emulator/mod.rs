//! A local stand-in for Azure IoT Hub, good enough for the gateway's tests,
//! the demo, and Microsoft's own device SDK: MQTT with SAS validation,
//! per-device C2D queues with locks, redelivery and TTL, delivery feedback,
//! and a D2C event store.

pub mod dps;
pub mod http;
pub mod methods;
pub mod mqtt;
pub mod probe;
pub mod state;
pub mod tls;
pub mod twin;
pub mod ws;
pub mod x509;

use crate::hub::azure::propbag::C2dProperties;
use mqtt::ConnMsg;
use state::{Event, Feedback, HubState, QueuedView, SendError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// IoT Hub's limit on a C2D message body.
pub const MAX_C2D_BODY: usize = 64 * 1024;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// The hub's host name as devices see it (SAS resource, username).
    pub host_name: String,
    /// Plain MQTT listener (e.g. 127.0.0.1:0).
    pub mqtt: Option<SocketAddr>,
    /// MQTT over TLS listener (IoT Hub's port is 8883).
    pub tls: Option<SocketAddr>,
    /// MQTT over WebSockets over TLS (`/$iothub/websocket`; IoT Hub's port is 443).
    pub wss: Option<SocketAddr>,
    /// The CA whose signature makes an X.509 device known by its common name.
    pub x509_ca: Option<rustls::RootCertStore>,
    /// DPS: its id scope (none: no DPS), individual enrollments and groups
    /// (name, key).
    pub id_scope: Option<String>,
    pub enrollments: Vec<(String, dps::Enrollment)>,
    pub enrollment_groups: Vec<(String, String)>,
    /// HTTP API listener.
    pub http: Option<SocketAddr>,
    pub lock_timeout: Duration,
    pub default_ttl: Duration,
    pub strict_ack_order: bool,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            host_name: "localhost".into(),
            mqtt: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            tls: None,
            wss: None,
            x509_ca: None,
            id_scope: None,
            enrollments: Vec::new(),
            enrollment_groups: Vec::new(),
            http: None,
            lock_timeout: Duration::from_secs(60),
            default_ttl: Duration::from_secs(3600),
            strict_ack_order: true,
        }
    }
}

/// A C2D message as a back end sends it.
#[derive(Debug, Clone, Default)]
pub struct C2dRequest {
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub ack: Option<String>,
    pub ttl: Option<Duration>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub properties: Vec<(String, String)>,
}

pub struct Shared {
    pub host_name: String,
    strict: bool,
    default_ttl: Duration,
    state: Mutex<HubState>,
    conns: Mutex<HashMap<u64, mpsc::UnboundedSender<ConnMsg>>>,
    next_conn: AtomicU64,
    /// CONNECTs refused (unknown device, bad credentials).
    refused: AtomicU64,
    /// Timestamps for `bench` (see `probe.rs`), when `probing`.
    probing: AtomicBool,
    probe: Mutex<probe::Probe>,
    /// Direct method calls waiting for their answer.
    methods: Mutex<methods::Pending>,
    /// The Device Provisioning Service's enrollments and operations.
    dps: Mutex<dps::DpsState>,
}

impl Shared {
    /// Starts recording PUBLISH and PUBACK times (clears earlier ones).
    pub fn start_probe(&self) {
        *self.probe.lock().unwrap_or_else(|p| p.into_inner()) = probe::Probe::default();
        self.probing.store(true, Ordering::Relaxed);
    }

    /// Stops recording and returns what was recorded.
    pub fn take_probe(&self) -> probe::Probe {
        self.probing.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.probe.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn probing(&self) -> bool {
        self.probing.load(Ordering::Relaxed)
    }

    pub(crate) fn probe(&self) -> MutexGuard<'_, probe::Probe> {
        self.probe.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn dps(&self) -> MutexGuard<'_, dps::DpsState> {
        self.dps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hub forgets the device's credentials and drops its connection,
    /// as when DPS moved it to another hub: only a new registration brings
    /// it back (its queue and twin stay). False for an unknown device.
    pub fn move_device(&self, device: &str) -> bool {
        let conn = {
            let mut st = self.state();
            let Some(d) = st.devices.get_mut(device) else { return false };
            d.key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0x5a; 32]);
            if d.x509.is_some() {
                d.x509 = Some(x509::X509Auth::Thumbprint("0".repeat(64)));
            }
            d.conn
        };
        if let Some(tx) = conn.and_then(|c| self.conns().get(&c).cloned()) {
            let _ = tx.send(ConnMsg::Close("the device was moved (DPS)"));
        }
        true
    }

    pub fn state(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<ConnMsg>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection for `device`; an older one is closed (IoT Hub keeps
    /// one). Returns the connection id and whether a session was present.
    pub fn register(&self, device: &str, tx: mpsc::UnboundedSender<ConnMsg>, clean_session: bool) -> (u64, bool) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
        let (old, present) = {
            let mut st = self.state();
            let d = st.devices.get_mut(device).expect("registered device");
            let old = d.conn.replace(id);
            let present = !clean_session && d.has_session;
            if !present {
                d.subscribed = false;
            }
            d.has_session = !clean_session;
            (old, present)
        };
        if let Some(old) = old {
            if let Some(tx) = self.conns().remove(&old) {
                let _ = tx.send(ConnMsg::Close("another connection with the same device id"));
            }
            self.state().disconnected(device, old);
            // disconnected() cleared the new conn if it matched; restore it.
            self.state().devices.get_mut(device).expect("device").conn = Some(id);
        }
        self.conns().insert(id, tx);
        (id, present)
    }

    pub fn unregister(&self, device: &str, conn: u64) {
        self.conns().remove(&conn);
        self.state().disconnected(device, conn);
        self.pump();
    }

    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn subscribed(&self, device: &str, conn: u64) {
        if let Some(d) = self.state().devices.get_mut(device) {
            if d.conn == Some(conn) {
                d.subscribed = true;
            }
        }
    }

    pub fn complete(&self, device: &str, conn: u64, pkid: u16) -> bool {
        self.state().complete(device, conn, pkid, self.strict)
    }

    /// Enqueues a C2D message, like the service SDK's `SendAsync`. Returns
    /// the message id the back end set, if any (none is made up: IoT Hub
    /// delivers such a message without `$.mid`).
    pub fn send(&self, device: &str, req: C2dRequest) -> Result<Option<String>, SendError> {
        if req.body.len() > MAX_C2D_BODY {
            return Err(SendError::TooLarge(req.body.len()));
        }
        let now = SystemTime::now();
        let props = C2dProperties {
            message_id: req.message_id,
            // `$.exp` only when the back end set an expiry, as IoT Hub does.
            expiry: req.ttl.map(|ttl| now + ttl),
            correlation_id: req.correlation_id,
            content_type: req.content_type,
            content_encoding: req.content_encoding,
            ack: req.ack,
            app: req.properties.into_iter().map(|(k, v)| (k, Some(v))).collect(),
            ..C2dProperties::default()
        };
        let id = self.state().enqueue(device, props, req.body, self.default_ttl, now)?;
        self.pump();
        Ok(id)
    }

    /// Delivers whatever can be delivered now.
    pub fn pump(&self) {
        let out = self.state().pump(SystemTime::now());
        if out.is_empty() {
            return;
        }
        let conns = self.conns();
        for d in out {
            if let Some(tx) = conns.get(&d.conn) {
                let _ = tx.send(ConnMsg::Deliver { pkid: d.pkid, topic: d.topic, body: d.body });
            }
        }
    }
}

pub struct Emulator {
    shared: Arc<Shared>,
    mqtt_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    wss_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    ca_pem: Option<String>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Emulator {
    pub async fn start(opts: EmulatorOptions) -> std::io::Result<Emulator> {
        let shared = Arc::new(Shared {
            host_name: opts.host_name.clone(),
            strict: opts.strict_ack_order,
            default_ttl: opts.default_ttl,
            state: Mutex::new(HubState::new(opts.lock_timeout)),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            probe: Mutex::new(probe::Probe::default()),
            methods: Mutex::new(methods::Pending::default()),
            dps: Mutex::new(dps::DpsState {
                id_scope: opts.id_scope.clone(),
                individual: opts.enrollments.iter().cloned().collect(),
                groups: opts.enrollment_groups.clone(),
                ..dps::DpsState::default()
            }),
        });
        let mut tasks = Vec::new();
        let mut mqtt_addr = None;
        if let Some(addr) = opts.mqtt {
            let l = TcpListener::bind(addr).await?;
            mqtt_addr = Some(l.local_addr()?);
            let sh = shared.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(mqtt::serve(s, sh.clone(), x509::Peer::default()));
                }
            }));
        }
        let (mut tls_addr, mut wss_addr, mut ca_pem) = (None, None, None);
        if opts.tls.is_some() || opts.wss.is_some() {
            let certs = tls::generate(&opts.host_name, opts.x509_ca.clone()).map_err(std::io::Error::other)?;
            ca_pem = Some(certs.ca_pem.clone());
            let certs = Arc::new(certs);
            for (addr, websocket) in [(opts.tls, false), (opts.wss, true)] {
                let Some(addr) = addr else { continue };
                let l = TcpListener::bind(addr).await?;
                *(if websocket { &mut wss_addr } else { &mut tls_addr }) = Some(l.local_addr()?);
                tasks.push(tokio::spawn(ws::listen_tls(l, certs.clone(), shared.clone(), websocket)));
            }
        }
        let mut http_addr = None;
        if let Some(addr) = opts.http {
            let l = TcpListener::bind(addr).await?;
            http_addr = Some(l.local_addr()?);
            let app = http::router(shared.clone());
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(l, app).await;
            }));
        }
        // Lock ends and TTL expiry.
        let sh = shared.clone();
        let tick = (opts.lock_timeout / 4).clamp(Duration::from_millis(20), Duration::from_millis(500));
        tasks.push(tokio::spawn(async move {
            let mut t = tokio::time::interval(tick);
            loop {
                t.tick().await;
                sh.pump();
            }
        }));
        Ok(Emulator { shared, mqtt_addr, tls_addr, wss_addr, http_addr, ca_pem, tasks })
    }

    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The MQTT-over-WebSockets listener (TLS).
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss_addr
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The CA certificate (PEM) devices must trust for the TLS listener.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Registers a device (a key is generated when none is given) and
    /// returns its connection string.
    pub fn add_device(&self, id: &str, key: Option<&str>) -> String {
        use base64::Engine;
        let key = key.map(str::to_string).unwrap_or_else(|| {
            let raw: [u8; 32] = std::array::from_fn(|_| fastrand::u8(..));
            base64::engine::general_purpose::STANDARD.encode(raw)
        });
        self.shared
            .state()
            .devices
            .insert(id.to_string(), state::Device { key: key.clone(), ..state::Device::default() });
        format!("HostName={};DeviceId={id};SharedAccessKey={key}", self.shared.host_name)
    }

    /// Registers an X.509 device and returns its connection string
    /// (`x509=true`: the device shows its certificate on a TLS listener).
    pub fn add_x509_device(&self, id: &str, auth: x509::X509Auth) -> String {
        self.shared
            .state()
            .devices
            .insert(id.to_string(), state::Device { x509: Some(auth), ..state::Device::default() });
        format!("HostName={};DeviceId={id};x509=true", self.shared.host_name)
    }

    /// Enqueues a C2D message, like the service SDK's `SendAsync`; see [`Shared::send`].
    pub fn send(&self, device: &str, req: C2dRequest) -> Result<Option<String>, SendError> {
        self.shared.send(device, req)
    }

    pub fn queue(&self, device: &str) -> Result<Vec<QueuedView>, SendError> {
        self.shared.state().queue_view(device)
    }

    pub fn feedback(&self) -> Vec<Feedback> {
        self.shared.state().feedback.clone()
    }

    pub fn events(&self, device: &str) -> Vec<Event> {
        self.shared.state().events.iter().filter(|e| e.device_id == device).cloned().collect()
    }

    pub fn purge(&self, device: &str) -> Result<usize, SendError> {
        self.shared.state().purge(device)
    }

    /// How many connections were accepted so far (a reconnect shows here).
    pub fn connections(&self) -> u64 {
        self.shared.next_conn.load(Ordering::Relaxed)
    }

    /// How many CONNECTs were refused so far (credentials, unknown ids).
    pub fn refusals(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Drops the device's connection, as a network fault would.
    pub fn drop_connection(&self, device: &str) {
        let conn = self.shared.state().devices.get(device).and_then(|d| d.conn);
        if let Some(c) = conn {
            if let Some(tx) = self.shared.conns().get(&c) {
                let _ = tx.send(ConnMsg::Close("dropped by the test"));
            }
        }
    }
}
