//! The daemon's ways to the hub, in process against the emulator: MQTT over
//! WebSockets over TLS (`transport = "websockets"`), and X.509 devices (a
//! registered thumbprint over 8883-style TLS, a CA-signed certificate over
//! WebSockets), a wrong certificate refused. The HTTP proxy and Microsoft's
//! SDKs are in `tests/peers` and `tests/sdk`.

mod common;

use c2d_gateway::emulator::x509::{thumbprint, X509Auth};
use c2d_gateway::emulator::EmulatorOptions;
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
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "plant CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let issuer = Issuer::new(ca, ca_key);

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
