//! TLS for the hub connection: rustls with the system's CA store, plus an
//! optional CA file (the emulator's, or a private broker's). Verification
//! can't be switched off.

use super::HubError;
use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;

pub fn transport(ca_file: Option<&Path>) -> Result<Transport, HubError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| HubError::Config(format!("cannot read ca_file {}: {e}", path.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| HubError::Config(format!("ca_file {} is not PEM: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(HubError::Config(format!("ca_file {} holds no certificate", path.display())));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| HubError::Config(format!("ca_file {}: {e}", path.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(HubError::Config("no trusted CA certificates: install ca-certificates or set hub.ca_file".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HubError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(config))))
}
