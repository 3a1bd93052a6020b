//! X.509 devices at the emulator, as IoT Hub knows them: a device whose
//! certificate's SHA-256 thumbprint was registered (self-signed certificates
//! do), or one whose certificate a CA the hub trusts signed, with the device
//! id as its common name. The TLS listeners ask every client for a
//! certificate without requiring one (SAS devices send none); a certificate
//! sent must be proven by the handshake's signature, and is judged per
//! device after the CONNECT names it.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// How an X.509 device is recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum X509Auth {
    /// SHA-256 of the certificate (DER), upper-case hex.
    Thumbprint(String),
    /// Signed by the emulator's trusted CA (`--x509-ca`), CN = device id.
    Ca,
}

/// What a client proved in the TLS handshake.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The end-entity certificate's SHA-256 thumbprint (upper-case hex).
    pub thumbprint: Option<String>,
    /// The certificate's common name, when a CA the emulator trusts signed it.
    pub ca_signed_cn: Option<String>,
}

/// Normalises a thumbprint as given on the command line: hex, colons and
/// case ignored. None when it is not 64 hex digits.
pub fn parse_thumbprint(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| *c != ':').collect::<String>().to_ascii_uppercase();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

pub fn thumbprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref()).iter().map(|b| format!("{b:02X}")).collect()
}

pub use crate::hub::tls::common_name;

/// Accepts any certificate whose key signed the handshake; who it belongs
/// to is decided later, per device (see [`Verifier::peer`]).
#[derive(Debug)]
pub struct Verifier {
    provider: Arc<CryptoProvider>,
    /// The CA-signed check, when the emulator trusts a CA.
    ca: Option<Arc<dyn ClientCertVerifier>>,
}

impl Verifier {
    pub fn new(provider: Arc<CryptoProvider>, ca: Option<RootCertStore>) -> Result<Verifier, rustls::Error> {
        let ca = match ca {
            Some(roots) => Some(
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Verifier { provider, ca })
    }

    /// What the certificates a client showed prove.
    pub fn peer(&self, certs: Option<&[CertificateDer<'_>]>) -> Peer {
        let Some((leaf, rest)) = certs.and_then(|c| c.split_first()) else {
            return Peer::default();
        };
        let ca_signed = self.ca.as_ref().is_some_and(|v| v.verify_client_cert(leaf, rest, UnixTime::now()).is_ok());
        Peer { thumbprint: Some(thumbprint(leaf)), ca_signed_cn: ca_signed.then(|| common_name(leaf)).flatten() }
    }
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Whether `peer` is X.509 device `device` registered with `auth`; Err says
/// why not (for the emulator's log).
pub fn check(auth: &X509Auth, device: &str, peer: &Peer) -> Result<(), String> {
    match auth {
        X509Auth::Thumbprint(want) => match &peer.thumbprint {
            None => Err("an X.509 device sent no client certificate".into()),
            Some(got) if got == want => Ok(()),
            Some(got) => Err(format!("the client certificate's thumbprint {got} is not the device's")),
        },
        X509Auth::Ca => match &peer.ca_signed_cn {
            Some(cn) if cn == device => Ok(()),
            Some(cn) => Err(format!("the CA-signed certificate is for {cn:?}, not {device:?}")),
            None if peer.thumbprint.is_none() => Err("an X.509 device sent no client certificate".into()),
            None => Err("the client certificate is not signed by the CA the emulator trusts".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_and_names() {
        let t = "ab:".repeat(31) + "ab";
        assert_eq!(parse_thumbprint(&t).map(|s| s.len()), Some(64));
        assert_eq!(parse_thumbprint(&"Z".repeat(64)), None);
        assert_eq!(parse_thumbprint("abcd"), None);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "dev-7");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("dev-7"));
        assert_eq!(thumbprint(cert.der()).len(), 64);
        let peer = Peer { thumbprint: Some(thumbprint(cert.der())), ca_signed_cn: None };
        assert!(check(&X509Auth::Thumbprint(thumbprint(cert.der())), "dev-7", &peer).is_ok());
        assert!(check(&X509Auth::Thumbprint("0".repeat(64)), "dev-7", &peer).is_err());
        assert!(check(&X509Auth::Ca, "dev-7", &peer).unwrap_err().contains("not signed by the CA"));
        assert!(check(&X509Auth::Ca, "dev-7", &Peer::default()).unwrap_err().contains("no client certificate"));
    }
}
