//! TLS for the hub connection: rustls with the system's CA store, plus an
//! optional CA file (the emulator's, or a private broker's), and an optional
//! client certificate (X.509 device authentication). Verification can't be
//! switched off.

use super::net::ClientCert;
use super::HubError;
use rumqttc::TlsConfiguration;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// A client TLS configuration trusting the system's CAs and `ca_file`,
/// showing `client_cert` when given.
pub fn client_config(ca_file: Option<&Path>, client_cert: Option<&ClientCert>) -> Result<TlsConfiguration, HubError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        for cert in read_certificates(path, "ca_file")? {
            roots.add(cert).map_err(|e| HubError::Config(format!("ca_file {}: {e}", path.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(HubError::Config("no trusted CA certificates: install ca-certificates or set hub.ca_file".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HubError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let (chain, key) = read_identity(c)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                HubError::Config(format!(
                    "hub.certificate_file {} and hub.private_key_file {} do not go together: {e}",
                    c.certificate_file.display(),
                    c.private_key_file.display()
                ))
            })?
        }
    };
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// The certificates (PEM) in `path`; at least one. `what` names the key.
pub fn read_certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, HubError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| HubError::Config(format!("cannot read {what} {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| HubError::Config(format!("{what} {} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(HubError::Config(format!("{what} {} holds no certificate", path.display())));
    }
    Ok(certs)
}

/// The certificate chain and private key of a client certificate. Errors
/// name the files, never their contents.
pub fn read_identity(c: &ClientCert) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), HubError> {
    let chain = read_certificates(&c.certificate_file, "hub.certificate_file")?;
    let key = PrivateKeyDer::from_pem_file(&c.private_key_file).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::Io(e) => format!("cannot read it: {e}"),
            rustls::pki_types::pem::Error::NoItemsFound => "it holds no PEM private key".to_string(),
            _ => "it is not a PEM private key (PKCS#8, PKCS#1 or SEC1)".to_string(),
        };
        HubError::Config(format!("hub.private_key_file {}: {why}", c.private_key_file.display()))
    })?;
    Ok((chain, key))
}

/// The subject's common name of a certificate (DER).
pub fn common_name(cert: &[u8]) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = c.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_certificate_and_its_key_make_a_config_and_errors_name_only_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["dev1".into()]).unwrap().self_signed(&key).unwrap();
        let (cf, kf) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cf, cert.pem()).unwrap();
        std::fs::write(&kf, key.serialize_pem()).unwrap();
        let cc = ClientCert { certificate_file: cf.clone(), private_key_file: kf.clone() };
        client_config(Some(&cf), Some(&cc)).unwrap();

        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&kf, other.serialize_pem()).unwrap();
        let e = client_config(Some(&cf), Some(&cc)).unwrap_err().to_string();
        assert!(e.contains("do not go together"), "{e}");

        std::fs::write(&kf, "-----BEGIN PRIVATE KEY-----\nnot base64 at all!!\n-----END PRIVATE KEY-----\n").unwrap();
        let e = client_config(Some(&cf), Some(&cc)).unwrap_err().to_string();
        assert!(e.contains("private_key_file") && !e.contains("not base64"), "{e}");
        std::fs::write(&kf, "nothing").unwrap();
        assert!(client_config(Some(&cf), Some(&cc)).unwrap_err().to_string().contains("no PEM private key"));
        let secret = other.serialize_pem();
        std::fs::write(&cf, &secret).unwrap();
        let e = client_config(None, Some(&cc)).unwrap_err().to_string();
        assert!(e.contains("holds no certificate") && !e.contains(&secret[40..80]), "{e}");
    }
}
