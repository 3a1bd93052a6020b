//! Configuration: the TOML schema (this file) and its loading and validation
//! (`load.rs`, `validate.rs`).
//!
//! The structs here are plain data with defaults in one place. Every table
//! denies unknown keys so a typo is an error, not a silently ignored setting.
//! Cross-field rules (a device on an unknown bus, overlapping points, ...) are
//! checked in `validate.rs`; `load.rs` drives parsing and checking and
//! reports every problem with its line. Tests of both are in `tests.rs`.

pub mod alert;
mod doc;
mod load;
mod validate;

#[cfg(test)]
mod tests;

pub use load::{Diagnostic, Diagnostics};

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_PATH: &str = "/etc/c2d-gateway/config.toml";

/// A duration written as a human string: `"500ms"`, `"40s"`, `"10m"`, `"48h"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl std::ops::Deref for Dur {
    type Target = Duration;
    fn deref(&self) -> &Duration {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration {s:?}: {e} (write e.g. \"500ms\", \"40s\", \"10m\")"))
        })
    }
}

/// A string that must never reach a log line or an error message.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: GatewayConfig,
    pub hub: HubConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub buses: BTreeMap<String, BusConfig>,
    #[serde(default)]
    pub devices: BTreeMap<String, DeviceConfig>,
    #[serde(default)]
    pub methods: MethodsConfig,
    #[serde(default)]
    pub twin: TwinConfig,
}

/// `[twin]`: desired properties as setpoints (IoT Hub only).
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TwinConfig {
    /// Apply `devices.{name}.{point}` desired values and report them.
    pub enabled: bool,
}

/// `[methods]`: direct methods (IoT Hub only).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MethodsConfig {
    /// A `write` not final within this long is answered 504 (the command
    /// stays queued; its result report follows as D2C); also the longest
    /// a `read` waits. Under IoT Hub's default 30 s call timeout.
    pub timeout: Dur,
}

impl Default for MethodsConfig {
    fn default() -> Self {
        MethodsConfig { timeout: Dur::secs(25) }
    }
}

impl Config {
    /// True when `new` changes `[hub]` or `[gateway]`: those take effect
    /// only after a restart (a reload applies buses, devices and routing).
    /// Compared by value: a changed key or password counts, though both
    /// print as `***`.
    pub fn needs_restart_for(&self, new: &Config) -> bool {
        new.hub != self.hub || new.gateway != self.gateway
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Where the sled journal lives.
    pub state_dir: PathBuf,
    /// `RUST_LOG`-style filter; the `RUST_LOG` environment variable wins.
    pub log_level: Option<String>,
    /// At most this many messages in the journal (final ones included, until pruned).
    pub max_messages: usize,
    /// At most this many bytes of message bodies in the journal.
    pub max_bytes: u64,
    /// How long a final outcome is kept to recognise a redelivered message id.
    pub dedupe_window: Dur,
    /// sled's page cache in bytes.
    pub cache_capacity: u64,
    /// Bytes kept in reserve on the state directory's file system (a file
    /// `disk-reserve`): when the disk fills up, the reserve is released so
    /// the journal can finish what it holds, and no new message is taken
    /// (nor acknowledged) until there is room again. 0 turns it off.
    pub disk_reserve: u64,
    /// The control socket the `status` and `queue` verbs talk to (unix
    /// socket, mode 0660). Absent: `control.sock` in `state_dir`; `""`
    /// turns it off.
    pub control: Option<PathBuf>,
    /// `/metrics`, `/status` and the status page over HTTP on this address
    /// (`127.0.0.1:9464`). Off when absent.
    pub http: Option<String>,
    /// Telemetry readings taken while the hub is unreachable are kept on
    /// disk up to this many bytes (oldest dropped first) and sent after the
    /// reconnect. `0` drops them instead.
    pub telemetry_buffer: Size,
}

/// A size in bytes, written as a number or a string with a unit:
/// `16777216`, `"16MiB"`, `"512 KiB"`, `"1GB"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl fmt::Debug for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 =
            num.parse().map_err(|_| format!("invalid size {s:?} (write e.g. \"16MiB\", \"512KiB\", 1048576)"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => return Err(format!("invalid size {s:?}: unknown unit {other:?} (B, KiB, MiB, GiB, kB, MB, GB)")),
        };
        n.checked_mul(mult).map(Size).ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => Size::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl GatewayConfig {
    /// Where the control socket is, unless it is turned off.
    pub fn control_socket(&self) -> Option<PathBuf> {
        match &self.control {
            None => Some(self.state_dir.join("control.sock")),
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            state_dir: PathBuf::from("/var/lib/c2d-gateway"),
            log_level: None,
            max_messages: 100_000,
            max_bytes: 256 * 1024 * 1024,
            dedupe_window: Dur::secs(48 * 3600),
            cache_capacity: 4 * 1024 * 1024,
            disk_reserve: 4 * 1024 * 1024,
            control: None,
            http: None,
            telemetry_buffer: Size(16 << 20),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HubKind {
    Azure,
    Mqtt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// MQTT over TLS (port 8883 by default).
    #[default]
    Tls,
    /// Plain MQTT over TCP: only allowed towards a loopback address.
    Mqtt,
    /// MQTT over a WebSocket inside TLS (`wss://{host}:443/$iothub/websocket`):
    /// the way through plant firewalls and HTTP proxies.
    Websockets,
}

/// How an IoT Hub device proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Auth {
    /// A SAS token made from the device's key (renewed before it expires).
    #[default]
    Sas,
    /// A client certificate (`certificate_file`, `private_key_file`).
    X509,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Complete {
    /// PUBACK once the device acknowledged (or the message failed for good).
    #[default]
    AfterDevice,
    /// PUBACK as soon as the message is flushed to the journal.
    AfterJournal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Reports {
    #[default]
    All,
    Failures,
    None,
}

/// What becomes of a message that carries no id (IoT Hub sends `$.mid`
/// only when the back end set one; with `kind = "mqtt"`, a body without an
/// `id`). Such a message cannot be deduplicated: a redelivery runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MissingId {
    /// Run it under an id the gateway makes up; its report says
    /// `"deduplicated": false`.
    #[default]
    Execute,
    /// Reject it (final, reported, acknowledged in its turn).
    Reject,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    pub kind: HubKind,

    // --- kind = "azure" ---
    /// `HostName=...;DeviceId=...;SharedAccessKey=...` inline.
    pub connection_string: Option<Secret>,
    /// A file holding the connection string (first non-empty line).
    pub connection_string_file: Option<PathBuf>,
    #[serde(default)]
    pub transport: Transport,
    /// Override the port (default 8883 for TLS, 1883 for plain MQTT, 443
    /// for WebSockets).
    pub port: Option<u16>,
    /// `sas` (default; also implied by a SharedAccessKey) or `x509` (implied
    /// by `x509=true` in the connection string).
    pub auth: Option<Auth>,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Lifetime of each SAS token; the link renews at 80 % of it.
    #[serde(default = "default_sas_ttl")]
    pub sas_ttl: Dur,

    // --- kind = "mqtt" ---
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: Option<String>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// Subscription pattern; `+` stands for the device name.
    #[serde(default = "default_subscribe")]
    pub subscribe: String,
    /// Topic of result reports; `{device}` is replaced by the device name.
    #[serde(default = "default_report_topic")]
    pub report_topic: String,
    /// Topic of telemetry readings; `{device}` is replaced by the device name.
    #[serde(default = "default_telemetry_topic")]
    pub telemetry_topic: String,

    // --- both ---
    /// Trust this CA (PEM) in addition to the system store.
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM, the device's first) shown in the TLS
    /// handshake: X.509 authentication.
    pub certificate_file: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub private_key_file: Option<PathBuf>,
    /// An HTTP CONNECT proxy, `http://[user:password@]host[:port]`.
    pub proxy: Option<Secret>,
    /// Device Provisioning Service (`[hub.dps]`, kind = "azure"): the hub
    /// and device id come from DPS instead of a connection string.
    pub dps: Option<DpsConfig>,
    #[serde(default)]
    pub complete: Complete,
    #[serde(default = "default_handover_after")]
    pub handover_after: Dur,
    /// At most this many received messages stay un-acknowledged; beyond it
    /// the oldest unfinished ones are handed over early (brokers stop sending
    /// when their in-flight window is full: Mosquitto's is 20).
    #[serde(default = "default_max_unacked")]
    pub max_unacked: usize,
    #[serde(default)]
    pub reports: Reports,
    /// A message without an id: run it (`execute`) or reject it (`reject`).
    #[serde(default)]
    pub missing_id: MissingId,
    #[serde(default = "default_keep_alive")]
    pub keep_alive: Dur,
    /// Bodies larger than this are rejected (IoT Hub's limit is 64 KB).
    #[serde(default = "default_max_body")]
    pub max_body: usize,
}

/// `[hub.dps]`: how to register with the Device Provisioning Service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpsConfig {
    /// The DPS instance's id scope (`0ne...`).
    pub id_scope: String,
    /// The registration id (with X.509: the certificate's common name, the default).
    pub registration_id: Option<String>,
    /// DPS's host, or `host:port` (8883 for TLS, 443 with WebSockets by default).
    #[serde(default = "default_dps_endpoint")]
    pub global_endpoint: String,
    /// An individual enrollment's symmetric key (base64, in a file).
    pub symmetric_key_file: Option<PathBuf>,
    /// An enrollment group's key (base64, in a file): the device's key is
    /// derived from it and the registration id.
    pub enrollment_group_key_file: Option<PathBuf>,
}

fn default_dps_endpoint() -> String {
    crate::hub::dps::DEFAULT_ENDPOINT.into()
}

fn default_api_version() -> String {
    "2021-04-12".into()
}
fn default_sas_ttl() -> Dur {
    Dur::secs(3600)
}
fn default_subscribe() -> String {
    "gateway/+/c2d".into()
}
fn default_report_topic() -> String {
    "gateway/{device}/result".into()
}
fn default_telemetry_topic() -> String {
    "gateway/{device}/telemetry".into()
}
fn default_handover_after() -> Dur {
    Dur::secs(40)
}
fn default_max_unacked() -> usize {
    16
}
fn default_keep_alive() -> Dur {
    Dur::secs(60)
}
fn default_max_body() -> usize {
    64 * 1024
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Application property naming the target device.
    pub device_property: String,
    /// Device used when the property is absent.
    pub default_device: Option<String>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig { device_property: "device".into(), default_device: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BusKind {
    ModbusRtu,
    ModbusTcp,
    Serial,
}

impl BusKind {
    /// As written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            BusKind::ModbusRtu => "modbus-rtu",
            BusKind::ModbusTcp => "modbus-tcp",
            BusKind::Serial => "serial",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Framing {
    /// Body + `line_ending`; reply is one line.
    #[default]
    Line,
    /// STX body ETX; reply is STX ... ETX.
    StxEtx,
    /// Body as is; reply is whatever arrived once the line has been idle
    /// for 10 character times (at least 30 ms), until a pattern matches.
    Raw,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    pub kind: BusKind,
    /// Serial device path (`modbus-rtu`, `serial`).
    pub port: Option<PathBuf>,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default)]
    pub parity: Parity,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// `host:port` (`modbus-tcp`).
    pub address: Option<String>,
    /// Every request on this bus is bounded by this.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    // --- serial ---
    #[serde(default)]
    pub framing: Framing,
    /// Appended to each body with `framing = "line"`.
    #[serde(default = "default_line_ending")]
    pub line_ending: String,
    /// Regex a reply must match to count as an acknowledgement.
    pub ack: Option<String>,
    /// Regex a reply matches to count as a refusal (message rejected).
    pub nack: Option<String>,
    // --- circuit breaker ---
    /// Consecutive timeouts after which a device is isolated.
    #[serde(default = "default_breaker_after")]
    pub breaker_after: u32,
    /// Longest isolation of a dead device (it doubles from `timeout` up to this).
    #[serde(default = "default_breaker_max")]
    pub breaker_max: Dur,
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_timeout() -> Dur {
    Dur::secs(1)
}
fn default_line_ending() -> String {
    "\n".into()
}
fn default_breaker_after() -> u32 {
    3
}
fn default_breaker_max() -> Dur {
    Dur::secs(60)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub bus: String,
    /// Modbus unit (slave) id, 0..=247; required on Modbus buses.
    pub unit: Option<u8>,
    /// Safe to send again after a crash mid-send (absolute writes are).
    #[serde(default)]
    pub idempotent: bool,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_max_age")]
    pub max_age: Dur,
    /// Accept raw `{"fc": ..}` bodies.
    #[serde(default)]
    pub allow_raw: bool,
    #[serde(default)]
    pub points: BTreeMap<String, PointConfig>,
    /// Readings sent to the hub on a schedule (the seeds' simulated device).
    pub telemetry: Option<TelemetryConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// How often the points are read.
    pub interval: Dur,
    /// Points to read (any table); each reading carries them all.
    pub points: Vec<String>,
    /// Application properties computed from the reading, e.g.
    /// `temperatureAlert = "temperature > 30"` → `"true"` / `"false"`.
    #[serde(default)]
    pub alerts: BTreeMap<String, alert::Alert>,
}

fn default_max_attempts() -> u32 {
    5
}
fn default_max_age() -> Dur {
    Dur::secs(600)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Table {
    Coil,
    Discrete,
    Holding,
    Input,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PointType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl PointType {
    /// Registers (or coils, for bool) the point occupies.
    pub fn width(self) -> u16 {
        match self {
            PointType::Bool | PointType::U16 | PointType::I16 => 1,
            PointType::U32 | PointType::I32 | PointType::F32 => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WordOrder {
    /// High word first (Modbus convention).
    #[default]
    Big,
    /// Low word first.
    Little,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    pub table: Table,
    pub address: u16,
    #[serde(rename = "type")]
    pub ty: PointType,
    #[serde(default)]
    pub word_order: WordOrder,
    /// Engineering value = raw * scale; a written value is divided by it.
    pub scale: Option<f64>,
    /// Limits on the engineering value, enforced before anything is sent.
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// With `framing = "raw"` a reply has no end marker: it ends when the line
/// has been idle this long after its last byte. 10 character times of 11
/// bits at the bus's baud, at least 30 ms (USB serial adapters hand on
/// received bytes in bursts up to 16 ms apart). Matching `ack` / `nack`
/// on a reply still arriving would take "E" of "ERR" for an ack.
pub fn raw_idle(baud: u32) -> Duration {
    let chars = if baud == 0 { Duration::ZERO } else { Duration::from_secs_f64(10.0 * 11.0 / f64::from(baud)) };
    chars.max(Duration::from_millis(30))
}
