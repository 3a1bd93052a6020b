//! The daemon's ways to the hub, in process against the emulator: MQTT over
//! WebSockets over TLS (`transport = "websockets"`), and X.509 devices (a
//! registered thumbprint over 8883-style TLS, a CA-signed certificate over
//! WebSockets), a wrong certificate refused; the Device Provisioning Service
//! (an individual key, a group member's derived key over WebSockets, a
//! CA-signed certificate), with a device moved and provisioned again. The HTTP proxy and Microsoft's
//! SDKs are in `tests/peers` and `tests/sdk`.

mod common;

use c2d_gateway::emulator::dps::Enrollment;
use c2d_gateway::emulator::x509::{thumbprint, X509Auth};
use c2d_gateway::emulator::{C2dRequest, EmulatorOptions};
use common::{wait_until, Gateway, Rig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

fn local() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 0)))
}

async fn rig(x509_ca: Option<rustls::RootCertStore>) -> Rig {
    Rig::with(EmulatorOptions { tls: local(), wss: local(), x509_ca, ..EmulatorOptions::default() }).await
}

/// Writes the emulator's CA where the gateway reads it.
fn ca_file(rig: &Rig) -> PathBuf {
    let path = rig.state.path().join("hub-ca.pem");
    std::fs::write(&path, rig.emu.ca_pem().unwrap()).unwrap();
    path
}

/// A device certificate with common name `cn` (self-signed, or signed by
/// `issuer`), written as PEM files; returns (certificate der, cert file, key file).
fn device_cert(dir: &Path, cn: &str, issuer: Option<&Issuer<'_, KeyPair>>) -> (Vec<u8>, PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let cert = match issuer {
        Some(i) => params.signed_by(&key, i).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    let (c, k) = (dir.join(format!("{cn}-{}.pem", fastrand::u32(..))), dir.join(format!("{cn}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (cert.der().to_vec(), c, k)
}

/// A CA (as the emulator trusts it, and as it signs device certificates).
fn plant_ca(cn: &str) -> (rustls::RootCertStore, Issuer<'static, KeyPair>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, cn);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    (roots, Issuer::new(ca, ca_key))
}

async fn delivers(rig: &Rig, gw: Gateway, id: &str) {
    rig.send("boiler", id, r#"{"point": "mode", "value": 4}"#);
    wait_until("feedback Success", T, || rig.feedback_for(id) == ["Success"]).await;
    wait_until("a report", T, || rig.report_for(id).is_some_and(|(s, _)| s == "delivered")).await;
    assert_eq!(rig.dev.holding(1, 10), 4);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_websockets_a_command_is_delivered_and_reported() {
    let rig = rig(None).await;
    let hub = format!(
        "connection_string = \"{}\"\ntransport = \"websockets\"\nport = {}\nca_file = \"{}\"",
        rig.conn_str,
        rig.emu.wss_addr().unwrap().port(),
        ca_file(&rig).display()
    );
    let gw = Gateway::start(&rig.config_hub(&hub, "")).await;
    delivers(&rig, gw, "ws-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x509_device_known_by_its_thumbprint_connects_without_a_key() {
    let rig = rig(None).await;
    let (der, cert, key) = device_cert(rig.state.path(), "gw-x", None);
    let cs = rig.emu.add_x509_device("gw1", X509Auth::Thumbprint(thumbprint(&der.into())));
    assert!(cs.ends_with(";x509=true"), "{cs}");
    let hub = format!(
        "connection_string = \"{cs}\"\nport = {}\nca_file = \"{}\"\ncertificate_file = \"{}\"\nprivate_key_file = \"{}\"",
        rig.emu.tls_addr().unwrap().port(),
        ca_file(&rig).display(),
        cert.display(),
        key.display()
    );
    let gw = Gateway::start(&rig.config_hub(&hub, "")).await;
    delivers(&rig, gw, "x509-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_signed_device_connects_over_websockets_and_a_stranger_certificate_is_refused() {
    let (roots, issuer) = plant_ca("plant CA");

    let rig = rig(Some(roots)).await;
    let cs = rig.emu.add_x509_device("gw1", X509Auth::Ca);
    let hub = |cert: &Path, key: &Path| {
        format!(
            "connection_string = \"{cs}\"\nauth = \"x509\"\ntransport = \"websockets\"\nport = {}\nca_file = \"{}\"\n\
             certificate_file = \"{}\"\nprivate_key_file = \"{}\"",
            rig.emu.wss_addr().unwrap().port(),
            ca_file(&rig).display(),
            cert.display(),
            key.display()
        )
    };
    // Self-signed with the right name: not the CA's, refused.
    let (_, cert, key) = device_cert(rig.state.path(), "gw1", None);
    let gw = Gateway::start(&rig.config_hub(&hub(&cert, &key), "")).await;
    wait_until("a refusal", T, || rig.emu.refusals() == 1).await;
    assert!(rig.emu.shared().state().devices["gw1"].conn.is_none(), "a stranger's certificate was let in");
    gw.stop().await;
    // Signed by the CA, for another device: refused too.
    let (_, cert, key) = device_cert(rig.state.path(), "gw2", Some(&issuer));
    let gw = Gateway::start(&rig.config_hub(&hub(&cert, &key), "")).await;
    wait_until("a second refusal", T, || rig.emu.refusals() == 2).await;
    assert!(rig.emu.shared().state().devices["gw1"].conn.is_none(), "gw2's certificate let in as gw1");
    gw.stop().await;
    // Signed by the CA for this device: in.
    let (_, cert, key) = device_cert(rig.state.path(), "gw1", Some(&issuer));
    let gw = Gateway::start(&rig.config_hub(&hub(&cert, &key), "")).await;
    delivers(&rig, gw, "ca-1").await;
}

const SCOPE: &str = "0ne00E2E";
const KEY: &str = "ZHBzLWRldmljZS1rZXktZm9yLXRoZS1lMmUtdGVzdHM=";
const GROUP_KEY: &str = "Z3JvdXAta2V5LWZvci10aGUtZTJlLXRlc3RzLWJhc2U2NA==";

fn dps_rig_options(extra: EmulatorOptions) -> EmulatorOptions {
    EmulatorOptions {
        mqtt: local(),
        tls: local(),
        wss: local(),
        id_scope: Some(SCOPE.into()),
        enrollments: vec![("gw-dps".into(), Enrollment::Key(KEY.into()))],
        enrollment_groups: vec![("plant-7".into(), GROUP_KEY.into())],
        ..extra
    }
}

fn secret_file(rig: &Rig, name: &str, text: &str) -> PathBuf {
    let path = rig.state.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Sends `id` to `boiler` through device `hub_device` at the emulator.
fn send_to(rig: &Rig, hub_device: &str, id: &str, value: u16) {
    let req = C2dRequest {
        body: format!(r#"{{"point": "mode", "value": {value}}}"#).into_bytes(),
        message_id: Some(id.into()),
        ack: Some("full".into()),
        properties: vec![("device".into(), "boiler".into())],
        ..C2dRequest::default()
    };
    rig.emu.send(hub_device, req).unwrap();
}

fn delivered_reports(rig: &Rig, hub_device: &str) -> Vec<String> {
    rig.emu
        .events(hub_device)
        .into_iter()
        .filter(|e| e.properties.iter().any(|(k, v)| k == "c2d-status" && v.as_deref() == Some("delivered")))
        .filter_map(|e| e.properties.iter().find(|(k, _)| k == "$.cid").and_then(|(_, v)| v.clone()))
        .collect()
}

fn mode_writes(rig: &Rig) -> Vec<u16> {
    rig.dev.writes().into_iter().filter(|w| w.address == 10).flat_map(|w| w.registers).collect()
}

/// A rig with DPS and the gateway's config for registration `gw-dps` by
/// its individual key, over plain MQTT to the emulator (DPS on the same port).
async fn dps_only_rig() -> (Rig, String) {
    let rig = Rig::with(dps_rig_options(EmulatorOptions::default())).await;
    let hub = format!(
        "transport = \"mqtt\"\nport = {port}\n[hub.dps]\nid_scope = \"{SCOPE}\"\nregistration_id = \"gw-dps\"\n\
         global_endpoint = \"127.0.0.1:{port}\"\nsymmetric_key_file = \"{key}\"",
        port = rig.emu.mqtt_addr().unwrap().port(),
        key = secret_file(&rig, "dps.key", &format!("{KEY}\n")).display()
    );
    let cfg = rig.config_hub(&hub, "");
    (rig, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_only_dps_provisions_delivers_and_provisions_again_when_moved() {
    let (rig, cfg) = dps_only_rig().await;
    let gw = Gateway::start(&cfg).await;
    wait_until("registered at DPS", T, || rig.emu.shared().dps().registrations == 1).await;
    send_to(&rig, "gw-dps", "d-1", 101);
    wait_until("d-1 delivered", T, || delivered_reports(&rig, "gw-dps") == ["d-1"]).await;
    let cache = std::fs::read_to_string(rig.state.path().join("dps-assignment.json")).unwrap();
    assert!(cache.contains("\"assigned_hub\": \"localhost\"") && !cache.contains(KEY), "{cache}");
    gw.stop().await;

    // A restart takes the cached assignment: no second registration.
    let gw = Gateway::start(&cfg).await;
    send_to(&rig, "gw-dps", "d-2", 102);
    wait_until("d-2 delivered", T, || delivered_reports(&rig, "gw-dps").len() == 2).await;
    assert_eq!(rig.emu.shared().dps().registrations, 1);

    // Moved: the hub refuses the old credentials; messages sent meanwhile
    // wait at the hub, and arrive once the gateway has provisioned again.
    assert!(rig.emu.shared().move_device("gw-dps"));
    send_to(&rig, "gw-dps", "d-3", 103);
    wait_until("registered again", Duration::from_secs(20), || rig.emu.shared().dps().registrations == 2).await;
    wait_until("d-3 delivered", T, || delivered_reports(&rig, "gw-dps").len() == 3).await;
    assert_eq!(mode_writes(&rig), [101, 102, 103], "each command written once");
    gw.stop().await;
}

/// DPS assigns another device id (a custom allocation policy, a device
/// enrolled again under a new id): the gateway stops cleanly (the journal
/// sealed, as on SIGTERM) with the restart status 75, and the restart runs
/// as the new device from the cached assignment; nothing runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_id_from_dps_stops_the_gateway_cleanly_and_the_restart_runs_as_it() {
    let (rig, cfg) = dps_only_rig().await;
    let gw = Gateway::start(&cfg).await;
    wait_until("registered at DPS", T, || rig.emu.shared().dps().registrations == 1).await;
    send_to(&rig, "gw-dps", "n-1", 201);
    wait_until("n-1 delivered", T, || delivered_reports(&rig, "gw-dps") == ["n-1"]).await;

    // Moved, and DPS now assigns the registration another device id.
    rig.emu.shared().dps().device_ids.insert("gw-dps".into(), "gw-dps-2".into());
    assert!(rig.emu.shared().move_device("gw-dps"));
    let err = gw.ended(Duration::from_secs(30)).await.expect_err("a restart is asked for");
    assert!(matches!(err, c2d_gateway::daemon::DaemonError::Restart(_)), "{err}");
    assert_eq!(err.exit_code(), 75);
    assert!(err.to_string().contains("gw-dps-2"), "{err}");
    assert!(rig.state.path().join("journal").join("c2d-sealed").exists(), "stopped cleanly: the journal is sealed");
    let cache = std::fs::read_to_string(rig.state.path().join("dps-assignment.json")).unwrap();
    assert!(cache.contains("gw-dps-2"), "{cache}");

    // The restart connects as the new device without registering again.
    let gw = Gateway::start(&cfg).await;
    send_to(&rig, "gw-dps-2", "n-2", 202);
    wait_until("n-2 delivered as gw-dps-2", T, || delivered_reports(&rig, "gw-dps-2") == ["n-2"]).await;
    assert_eq!(rig.emu.shared().dps().registrations, 2);
    assert_eq!(mode_writes(&rig), [201, 202], "each command written once");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_provisions_over_websockets_with_its_derived_key() {
    let rig = Rig::with(dps_rig_options(EmulatorOptions::default())).await;
    let wss = rig.emu.wss_addr().unwrap().port();
    let hub = format!(
        "transport = \"websockets\"\nport = {wss}\nca_file = \"{ca}\"\n[hub.dps]\nid_scope = \"{SCOPE}\"\n\
         registration_id = \"line-4-gw\"\nglobal_endpoint = \"localhost:{wss}\"\nenrollment_group_key_file = \"{key}\"",
        ca = ca_file(&rig).display(),
        key = secret_file(&rig, "group.key", GROUP_KEY).display()
    );
    let gw = Gateway::start(&rig.config_hub(&hub, "")).await;
    wait_until("registered at DPS", T, || rig.emu.shared().dps().registrations == 1).await;
    send_to(&rig, "line-4-gw", "g-1", 201);
    wait_until("g-1 delivered", T, || delivered_reports(&rig, "line-4-gw") == ["g-1"]).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x509_device_provisions_by_its_ca_signed_certificate() {
    let (roots, issuer) = plant_ca("fleet CA");
    let rig = Rig::with(dps_rig_options(EmulatorOptions { x509_ca: Some(roots), ..EmulatorOptions::default() })).await;
    let (_, cert, key) = device_cert(rig.state.path(), "cert-gw-9", Some(&issuer));
    let tls = rig.emu.tls_addr().unwrap().port();
    let hub = format!(
        "port = {tls}\nca_file = \"{ca}\"\ncertificate_file = \"{c}\"\nprivate_key_file = \"{k}\"\n[hub.dps]\n\
         id_scope = \"{SCOPE}\"\nglobal_endpoint = \"localhost:{tls}\"",
        ca = ca_file(&rig).display(),
        c = cert.display(),
        k = key.display()
    );
    let gw = Gateway::start(&rig.config_hub(&hub, "")).await;
    wait_until("registered at DPS", T, || rig.emu.shared().dps().registrations == 1).await;
    send_to(&rig, "cert-gw-9", "x-1", 301);
    wait_until("x-1 delivered", T, || delivered_reports(&rig, "cert-gw-9") == ["x-1"]).await;
    gw.stop().await;
}
