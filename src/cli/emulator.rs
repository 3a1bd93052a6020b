//! `c2d-gateway hub-emulator`: runs the IoT Hub emulator until Ctrl-C.

use crate::emulator::{Emulator, EmulatorOptions};
use crate::hub::is_loopback;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub struct Args {
    pub mqtt: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub ca_out: Option<PathBuf>,
    pub devices: Vec<String>,
    pub host_name: String,
    pub lock_timeout: Duration,
    pub default_ttl: Duration,
    pub strict_ack_order: bool,
}

pub async fn run(a: Args) -> Result<(), String> {
    for addr in [a.mqtt, a.tls, a.http].into_iter().flatten() {
        if !addr.ip().is_loopback() {
            return Err(format!("{addr}: the emulator only listens on loopback addresses"));
        }
    }
    if !is_loopback(&a.host_name) {
        return Err(format!("--host-name {}: use localhost or a loopback address", a.host_name));
    }
    let emu = Emulator::start(EmulatorOptions {
        host_name: a.host_name.clone(),
        mqtt: a.mqtt,
        tls: a.tls,
        http: a.http,
        lock_timeout: a.lock_timeout,
        default_ttl: a.default_ttl,
        strict_ack_order: a.strict_ack_order,
    })
    .await
    .map_err(|e| format!("cannot start the emulator: {e}"))?;
    if let (Some(path), Some(pem)) = (&a.ca_out, emu.ca_pem()) {
        std::fs::write(path, pem).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("CA certificate written to {}", path.display());
    }
    for spec in &a.devices {
        let (id, key) = match spec.split_once(':') {
            Some((id, key)) => (id, Some(key)),
            None => (spec.as_str(), None),
        };
        if id.is_empty() {
            return Err(format!("--device {spec:?}: empty device id"));
        }
        if let Some(k) = key {
            use base64::Engine;
            if base64::engine::general_purpose::STANDARD.decode(k).is_err() {
                return Err(format!("--device {id}: the key is not base64"));
            }
        }
        let cs = emu.add_device(id, key);
        // The emulator's own test credentials: printed so they can be used.
        println!("device {id}: {cs}");
    }
    if let Some(a) = emu.mqtt_addr() {
        println!("MQTT     mqtt://{a}");
    }
    if let Some(a) = emu.tls_addr() {
        println!("MQTT/TLS mqtts://{a}");
    }
    if let Some(a) = emu.http_addr() {
        println!("HTTP     http://{a}  (POST /devices/ID/messages, GET /feedback, GET /devices/ID/events ...)");
    }
    println!("hub emulator running; Ctrl-C stops it");
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
