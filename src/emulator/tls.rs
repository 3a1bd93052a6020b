//! TLS for the emulator: a throw-away CA and a server certificate for
//! `localhost` / 127.0.0.1 / ::1, made at start (rcgen). Device SDKs insist
//! on TLS; they trust the CA the emulator writes out (`--ca-out`).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::sync::Arc;

pub struct Certs {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
    /// Judges the client certificates the server config asks for.
    pub clients: Arc<super::x509::Verifier>,
}

/// Why the emulator's certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Tls(#[from] rustls::Error),
}

/// A CA and server certificate for `host_name`; clients are asked for a
/// certificate (X.509 devices), `x509_ca` is the CA whose signature makes a
/// device known by its common name.
pub fn generate(host_name: &str, x509_ca: Option<rustls::RootCertStore>) -> Result<Certs, CertError> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "c2d-gateway hub emulator CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if !names.iter().any(|n| n == host_name) {
        names.push(host_name.to_string());
    }
    let mut leaf = CertificateParams::new(names)?;
    leaf.distinguished_name.push(DnType::CommonName, host_name);
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let clients = Arc::new(super::x509::Verifier::new(provider.clone(), x509_ca)?);
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(clients.clone())
        .with_single_cert(vec![leaf_cert.der().clone(), ca_cert.der().clone()], key)?;
    Ok(Certs { ca_pem: ca_cert.pem(), server: Arc::new(server), clients })
}
