//! `c2d-gateway hub-emulator`: runs the IoT Hub emulator until Ctrl-C.

use crate::emulator::dps::Enrollment;
use crate::emulator::x509::{parse_thumbprint, X509Auth};
use crate::emulator::{Emulator, EmulatorOptions};
use crate::hub::is_loopback;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Plain MQTT listener, e.g. 127.0.0.1:1883.
    #[arg(long)]
    pub mqtt: Option<SocketAddr>,
    /// MQTT over TLS listener (certificate generated at start).
    #[arg(long, default_value = "127.0.0.1:8883")]
    pub tls: Option<SocketAddr>,
    /// MQTT over WebSockets over TLS listener, at /$iothub/websocket
    /// (Microsoft's SDK only uses 443 for it), e.g. 127.0.0.1:443.
    #[arg(long)]
    pub wss: Option<SocketAddr>,
    /// Trust this CA (PEM) for X.509 devices registered as ID:x509-ca (the
    /// certificate's common name is the device id).
    #[arg(long, value_name = "PEM")]
    pub x509_ca: Option<PathBuf>,
    /// Serve a Device Provisioning Service with this id scope (on the MQTT,
    /// TLS and WebSocket listeners, told apart by the CONNECT's user name).
    #[arg(long, visible_alias = "dps", value_name = "SCOPE")]
    pub id_scope: Option<String>,
    /// A DPS individual enrollment: REGISTRATION_ID:BASE64KEY, or
    /// REGISTRATION_ID:x509=SHA256-THUMBPRINT.
    #[arg(long = "enrollment", value_name = "ID:KEY")]
    pub enrollments: Vec<String>,
    /// A DPS enrollment group: NAME:BASE64KEY (each device's key is derived
    /// from it and its registration id).
    #[arg(long = "enrollment-group", value_name = "NAME:KEY")]
    pub enrollment_groups: Vec<String>,
    /// HTTP back-end API listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: Option<SocketAddr>,
    /// Write the emulator's CA certificate (PEM) here.
    #[arg(long)]
    pub ca_out: Option<PathBuf>,
    /// Register a device: ID or ID:BASE64KEY (a key is generated and printed
    /// when omitted); ID:x509=SHA256-THUMBPRINT (hex) or ID:x509-ca for an
    /// X.509 device.
    #[arg(long = "device", value_name = "ID[:KEY]")]
    pub devices: Vec<String>,
    #[arg(long, default_value = "localhost")]
    pub host_name: String,
    /// How long a delivered message stays locked before it is delivered again.
    #[arg(long, default_value = "60s", value_parser = super::duration)]
    pub lock_timeout: Duration,
    /// Time to live of messages sent without iothub-expiry.
    #[arg(long, default_value = "1h", value_parser = super::duration)]
    pub default_ttl: Duration,
    /// Drop a connection that acknowledges out of order.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub strict_ack_order: bool,
}

pub async fn run(a: Args) -> Result<(), String> {
    for addr in [a.mqtt, a.tls, a.wss, a.http].into_iter().flatten() {
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
        wss: a.wss,
        x509_ca: a.x509_ca.as_deref().map(read_ca).transpose()?,
        id_scope: a.id_scope.clone(),
        enrollments: a.enrollments.iter().map(|e| enrollment(e)).collect::<Result<_, _>>()?,
        enrollment_groups: a
            .enrollment_groups
            .iter()
            .map(|g| match g.split_once(':') {
                Some((name, key)) if !name.is_empty() && is_base64(key) => Ok((name.to_string(), key.to_string())),
                _ => Err(format!("--enrollment-group {g:?}: NAME:BASE64KEY")),
            })
            .collect::<Result<_, _>>()?,
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
        if let Some(auth) = key.and_then(|k| x509_auth(id, k).transpose()) {
            let cs = emu.add_x509_device(id, auth?);
            println!("device {id}: {cs}");
            continue;
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
    if let Some(a) = emu.wss_addr() {
        println!("MQTT/WSS wss://{a}{}", crate::emulator::ws::PATH);
    }
    if let Some(a) = emu.http_addr() {
        println!("HTTP     http://{a}  (POST /devices/ID/messages, GET /feedback, GET /devices/ID/events ...)");
    }
    if let Some(scope) = &a.id_scope {
        println!("DPS      id scope {scope} on the MQTT, TLS and WebSocket listeners");
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

/// `x509=THUMBPRINT` or `x509-ca` after a device id; None for a SAS key.
fn x509_auth(id: &str, spec: &str) -> Result<Option<X509Auth>, String> {
    if spec == "x509-ca" {
        return Ok(Some(X509Auth::Ca));
    }
    match spec.strip_prefix("x509=") {
        None => Ok(None),
        Some(t) => parse_thumbprint(t)
            .map(|t| Some(X509Auth::Thumbprint(t)))
            .ok_or_else(|| format!("--device {id}: x509= takes the certificate's SHA-256 thumbprint (64 hex digits)")),
    }
}

fn read_ca(path: &std::path::Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = crate::hub::tls::read_certificates(path, "--x509-ca").map_err(|e| e.to_string())?;
    for c in certs {
        roots.add(c).map_err(|e| format!("--x509-ca {}: {e}", path.display()))?;
    }
    Ok(roots)
}

fn is_base64(s: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).is_ok_and(|k| !k.is_empty())
}

/// `ID:KEY` or `ID:x509=THUMBPRINT`.
fn enrollment(spec: &str) -> Result<(String, Enrollment), String> {
    let bad = || format!("--enrollment {spec:?}: REGISTRATION_ID:BASE64KEY or REGISTRATION_ID:x509=SHA256-THUMBPRINT");
    let (id, rest) = spec.split_once(':').filter(|(id, _)| !id.is_empty()).ok_or_else(bad)?;
    let e = match rest.strip_prefix("x509=") {
        Some(t) => Enrollment::X509(parse_thumbprint(t).ok_or_else(bad)?),
        None if is_base64(rest) => Enrollment::Key(rest.to_string()),
        None => return Err(bad()),
    };
    Ok((id.to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollments_and_x509_devices_are_read_or_refused_with_the_form_expected() {
        let t = "AB".repeat(32);
        assert_eq!(enrollment("r1:c2VjcmV0").unwrap(), ("r1".into(), Enrollment::Key("c2VjcmV0".into())));
        assert_eq!(enrollment(&format!("r2:x509={t}")).unwrap().1, Enrollment::X509(t.clone()));
        for bad in ["r1", ":c2VjcmV0", "r1:not base64!", "r1:x509=abc", "r1:"] {
            assert!(enrollment(bad).unwrap_err().contains("REGISTRATION_ID:BASE64KEY"), "{bad}");
        }
        assert_eq!(x509_auth("d", "x509-ca").unwrap(), Some(X509Auth::Ca));
        assert_eq!(x509_auth("d", &format!("x509={t}")).unwrap(), Some(X509Auth::Thumbprint(t)));
        assert_eq!(x509_auth("d", "c2VjcmV0").unwrap(), None, "a SAS key");
        assert!(x509_auth("d", "x509=12").unwrap_err().contains("64 hex digits"));
    }
}
