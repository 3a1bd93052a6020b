//! IoT Hub shared access signature (SAS) tokens.
//!
//! A device authenticates with a token signed by its symmetric key:
//! `SharedAccessSignature sr={urlencode(resource)}&sig={urlencode(sig)}&se={expiry}`
//! where `sig = base64(HMAC-SHA256(base64decode(key), urlencode(resource) + "\n" + expiry))`.
//! The hub link creates tokens (the MQTT password) and the hub emulator checks
//! them, so both directions live here. Errors never contain the key or a
//! signature.

use super::propbag::{decode_component, encode_component};
use crate::config::Secret;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "SharedAccessSignature ";

/// Errors from creating, parsing or checking a SAS token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    #[error("the shared access key is not valid base64")]
    InvalidKey,
    #[error("the shared access key is empty")]
    EmptyKey,
    #[error("not a SAS token: it must start with \"SharedAccessSignature \"")]
    NotSas,
    #[error("malformed SAS token: {0}")]
    Malformed(&'static str),
    #[error("SAS token has no {0} field")]
    MissingField(&'static str),
    #[error("SAS token has more than one {0} field")]
    DuplicateField(&'static str),
    #[error("SAS token field {0} has a malformed percent escape or is not UTF-8 once decoded")]
    BadEncoding(&'static str),
    #[error("SAS token expiry (se) is not a whole number of seconds")]
    BadExpiry,
    #[error("SAS token is for resource {actual:?}, expected {expected:?}")]
    ResourceMismatch { expected: String, actual: String },
    #[error("SAS token expired at {expiry} (unix seconds; now {now})")]
    Expired { expiry: u64, now: u64 },
    #[error("SAS token signature is not valid base64")]
    MalformedSignature,
    #[error("SAS token signature does not match the device key")]
    SignatureMismatch,
}

/// A parsed token. `Debug` hides the signature.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedToken {
    /// The `sr` field, percent-decoded.
    pub resource: String,
    /// The `sig` field, percent-decoded (base64 text).
    pub signature: String,
    /// The `se` field, unix seconds.
    pub expiry: u64,
    /// The `skn` field, if present and not empty.
    pub key_name: Option<String>,
}

impl fmt::Debug for ParsedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedToken")
            .field("resource", &self.resource)
            .field("signature", &"***")
            .field("expiry", &self.expiry)
            .field("key_name", &self.key_name)
            .finish()
    }
}

fn mac(key_b64: &str) -> Result<HmacSha256, SasError> {
    if key_b64.is_empty() {
        return Err(SasError::EmptyKey);
    }
    // The decode error is dropped on purpose: it names the offending byte.
    let key = STANDARD.decode(key_b64).map_err(|_| SasError::InvalidKey)?;
    if key.is_empty() {
        return Err(SasError::EmptyKey);
    }
    Ok(HmacSha256::new_from_slice(&key).expect("HMAC accepts keys of any length"))
}

/// `base64(HMAC-SHA256(base64decode(key_b64), data))`.
pub fn sign(key_b64: &str, data: &str) -> Result<String, SasError> {
    let mut mac = mac(key_b64)?;
    mac.update(data.as_bytes());
    Ok(STANDARD.encode(mac.finalize().into_bytes()))
}

/// Creates a token for `resource` (e.g. `{HostName}/devices/{DeviceId}`, no
/// scheme) valid until `expiry_unix`. `key_name` (a policy name) is appended
/// as `skn` when given and not empty; device tokens have none.
pub fn token(resource: &str, key_b64: &str, expiry_unix: u64, key_name: Option<&str>) -> Result<Secret, SasError> {
    let sr = encode_component(resource);
    let sig = sign(key_b64, &format!("{sr}\n{expiry_unix}"))?;
    let mut token = format!("{PREFIX}sr={sr}&sig={}&se={expiry_unix}", encode_component(&sig));
    if let Some(name) = key_name.filter(|n| !n.is_empty()) {
        token.push_str("&skn=");
        token.push_str(&encode_component(name));
    }
    Ok(Secret(token))
}

/// The fields of a token as they appear in it, before decoding. The signature
/// covers the raw `sr` and `se` text, so a verifier must keep it: SDKs differ
/// in which characters they escape and in the case of the hex digits.
struct RawToken<'a> {
    sr: &'a str,
    sig: &'a str,
    se: &'a str,
    skn: Option<&'a str>,
}

fn split_token(token: &str) -> Result<RawToken<'_>, SasError> {
    let fields = token.strip_prefix(PREFIX).ok_or(SasError::NotSas)?;
    if fields.chars().any(char::is_whitespace) {
        return Err(SasError::Malformed("whitespace inside the fields"));
    }
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    // Like IoT Hub: field names are case-insensitive, empty fields are
    // skipped, unknown fields are ignored.
    for field in fields.split('&').filter(|f| !f.is_empty()) {
        let (name, value) = field.split_once('=').ok_or(SasError::Malformed("a field without '='"))?;
        let (slot, canonical) = if name.eq_ignore_ascii_case("sr") {
            (&mut sr, "sr")
        } else if name.eq_ignore_ascii_case("sig") {
            (&mut sig, "sig")
        } else if name.eq_ignore_ascii_case("se") {
            (&mut se, "se")
        } else if name.eq_ignore_ascii_case("skn") {
            (&mut skn, "skn")
        } else {
            continue;
        };
        if slot.replace(value).is_some() {
            return Err(SasError::DuplicateField(canonical));
        }
    }
    Ok(RawToken {
        sr: sr.ok_or(SasError::MissingField("sr"))?,
        sig: sig.ok_or(SasError::MissingField("sig"))?,
        se: se.ok_or(SasError::MissingField("se"))?,
        skn,
    })
}

fn decode_field(raw: &str, name: &'static str) -> Result<String, SasError> {
    decode_component(raw).map_err(|_| SasError::BadEncoding(name))
}

fn parse_expiry(se: &str) -> Result<u64, SasError> {
    if se.is_empty() || !se.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SasError::BadExpiry);
    }
    se.parse().map_err(|_| SasError::BadExpiry)
}

/// Parses a token into its decoded fields. Checks the form only, not the
/// signature or the expiry (see [`verify`]).
pub fn parse_token(token: &str) -> Result<ParsedToken, SasError> {
    decode_token(&split_token(token)?)
}

fn decode_token(raw: &RawToken<'_>) -> Result<ParsedToken, SasError> {
    let resource = decode_field(raw.sr, "sr")?;
    if resource.is_empty() {
        return Err(SasError::Malformed("empty resource (sr)"));
    }
    let signature = decode_field(raw.sig, "sig")?;
    if signature.is_empty() {
        return Err(SasError::Malformed("empty signature (sig)"));
    }
    let expiry = parse_expiry(raw.se)?;
    let key_name = raw.skn.map(|s| decode_field(s, "skn")).transpose()?.filter(|s| !s.is_empty());
    Ok(ParsedToken { resource, signature, expiry, key_name })
}

/// Checks a token as IoT Hub would: the resource equals `expected_resource`
/// (ASCII case-insensitively), the signature matches `key_b64` (constant-time
/// comparison), and it has not expired (`expiry > now_unix`). Returns the
/// expiry.
pub fn verify(token: &str, key_b64: &str, expected_resource: &str, now_unix: u64) -> Result<u64, SasError> {
    let raw = split_token(token)?;
    let parsed = decode_token(&raw)?;
    if !parsed.resource.eq_ignore_ascii_case(expected_resource) {
        return Err(SasError::ResourceMismatch { expected: expected_resource.to_owned(), actual: parsed.resource });
    }
    let claimed = STANDARD.decode(&parsed.signature).map_err(|_| SasError::MalformedSignature)?;
    let mut mac = mac(key_b64)?;
    mac.update(raw.sr.as_bytes());
    mac.update(b"\n");
    mac.update(raw.se.as_bytes());
    mac.verify_slice(&claimed).map_err(|_| SasError::SignatureMismatch)?;
    if parsed.expiry <= now_unix {
        return Err(SasError::Expired { expiry: parsed.expiry, now: now_unix });
    }
    Ok(parsed.expiry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=";
    const RESOURCE: &str = "myiothub.azure-devices.net/devices/my_device";
    const EXPIRY: u64 = 1_578_941_692;
    const TOKEN: &str = "SharedAccessSignature sr=myiothub.azure-devices.net%2Fdevices%2Fmy_device&sig=dIMMdDDBGFR8eqAfYkiMxoOphaFMPtMgj7Wg%2FYB1AvU%3D&se=1578941692";
    const SIG: &str = "dIMMdDDBGFR8eqAfYkiMxoOphaFMPtMgj7Wg/YB1AvU=";
    const OTHER_KEY: &str = "cGFzc3dvcmQ=";

    /// Every error's text and debug form, checked for secrets.
    fn assert_no_leak(err: &SasError, secrets: &[&str]) {
        for text in [err.to_string(), format!("{err:?}")] {
            for secret in secrets {
                assert!(!text.contains(secret), "{text:?} leaks {secret:?}");
            }
        }
    }

    #[test]
    fn hmac_vectors() {
        assert_eq!(sign(KEY, "sign this message").unwrap(), "8NJRMT83CcplGrAGaUVIUM/md5914KpWVNngSVoF9/M=");
        assert_eq!(sign("cGFzc3dvcmQ=", "string-to-sign").unwrap(), "o1n1hiIVgzVA2+krq9ty1Z4xsIJKJZP3dYT8MOi65Y4=");
    }

    #[test]
    fn token_vector() {
        let t = token(RESOURCE, KEY, EXPIRY, None).unwrap();
        assert_eq!(t.expose(), TOKEN);
        assert_eq!(format!("{t:?}"), "Secret(***)");
        // An empty key name is the same as none.
        assert_eq!(token(RESOURCE, KEY, EXPIRY, Some("")).unwrap().expose(), TOKEN);
    }

    #[test]
    fn token_with_key_name() {
        let t = token("hub.azure-devices.net", KEY, 42, Some("iothubowner")).unwrap();
        assert!(t.expose().ends_with("&se=42&skn=iothubowner"), "{}", t.expose());
        let p = parse_token(t.expose()).unwrap();
        assert_eq!(p.key_name.as_deref(), Some("iothubowner"));
        assert_eq!(p.resource, "hub.azure-devices.net");
    }

    #[test]
    fn parse_vector() {
        let p = parse_token(TOKEN).unwrap();
        assert_eq!(p, ParsedToken { resource: RESOURCE.into(), signature: SIG.into(), expiry: EXPIRY, key_name: None });
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("dIMMdDDBGFR8"), "{dbg}");
        assert!(dbg.contains(RESOURCE));
    }

    #[test]
    fn verify_vector() {
        assert_eq!(verify(TOKEN, KEY, RESOURCE, EXPIRY - 1), Ok(EXPIRY));
        assert_eq!(verify(TOKEN, KEY, RESOURCE, 0), Ok(EXPIRY));
    }

    #[test]
    fn verify_wrong_key() {
        let err = verify(TOKEN, OTHER_KEY, RESOURCE, EXPIRY - 1).unwrap_err();
        assert_eq!(err, SasError::SignatureMismatch);
        assert_eq!(err.to_string(), "SAS token signature does not match the device key");
        assert_no_leak(&err, &[KEY, OTHER_KEY, SIG, "dIMMdDDBGFR8"]);
    }

    #[test]
    fn verify_expired() {
        for now in [EXPIRY, EXPIRY + 1, u64::MAX] {
            let err = verify(TOKEN, KEY, RESOURCE, now).unwrap_err();
            assert_eq!(err, SasError::Expired { expiry: EXPIRY, now });
        }
        assert_eq!(
            verify(TOKEN, KEY, RESOURCE, EXPIRY).unwrap_err().to_string(),
            "SAS token expired at 1578941692 (unix seconds; now 1578941692)"
        );
    }

    #[test]
    fn verify_wrong_resource() {
        let err = verify(TOKEN, KEY, "myiothub.azure-devices.net/devices/other", 0).unwrap_err();
        assert_eq!(
            err,
            SasError::ResourceMismatch {
                expected: "myiothub.azure-devices.net/devices/other".into(),
                actual: RESOURCE.into(),
            }
        );
        assert_no_leak(&err, &[KEY, SIG, "dIMMdDDBGFR8"]);
    }

    #[test]
    fn verify_resource_is_case_insensitive() {
        assert_eq!(verify(TOKEN, KEY, "MyIotHub.Azure-Devices.NET/devices/MY_DEVICE", 0), Ok(EXPIRY));
    }

    #[test]
    fn verify_uses_the_raw_resource_text() {
        // An SDK that leaves '/' unescaped, or writes lowercase hex, signs
        // what it sends; the check must follow the text, not re-encode.
        for sr in ["myiothub.azure-devices.net/devices/my_device", "myiothub.azure-devices.net%2fdevices%2fmy_device"] {
            let sig = sign(KEY, &format!("{sr}\n{EXPIRY}")).unwrap();
            let t = format!("SharedAccessSignature sr={sr}&sig={}&se={EXPIRY}", encode_component(&sig));
            assert_eq!(verify(&t, KEY, RESOURCE, 0), Ok(EXPIRY), "{t}");
        }
    }

    #[test]
    fn verify_rejects_tampering() {
        // Expiry pushed forward without re-signing.
        let t = TOKEN.replace("se=1578941692", "se=1578941693");
        assert_eq!(verify(&t, KEY, RESOURCE, 0), Err(SasError::SignatureMismatch));
        // Signature of another token.
        let other = token(RESOURCE, KEY, EXPIRY + 1, None).unwrap();
        let other_sig = other.expose().split("&sig=").nth(1).unwrap().split('&').next().unwrap();
        let t = format!(
            "SharedAccessSignature sr=myiothub.azure-devices.net%2Fdevices%2Fmy_device&sig={other_sig}&se={EXPIRY}"
        );
        assert_eq!(verify(&t, KEY, RESOURCE, 0), Err(SasError::SignatureMismatch));
        // Truncated signature.
        let t = TOKEN.replace("AvU%3D", "Av");
        assert!(verify(&t, KEY, RESOURCE, 0).is_err());
        // Signature that is not base64.
        let t = TOKEN.replace("dIMMdDDB", "dIMM!!DB");
        let err = verify(&t, KEY, RESOURCE, 0).unwrap_err();
        assert_eq!(err, SasError::MalformedSignature);
        assert_no_leak(&err, &["dIMM"]);
    }

    #[test]
    fn parse_accepts_field_variants() {
        // Any order, case-insensitive names, unknown and empty fields, empty skn.
        let t = "SharedAccessSignature SE=1578941692&&x-extra=1&Sig=dIMMdDDBGFR8eqAfYkiMxoOphaFMPtMgj7Wg%2FYB1AvU%3D&sr=myiothub.azure-devices.net%2Fdevices%2Fmy_device&skn=";
        let p = parse_token(t).unwrap();
        assert_eq!(p.resource, RESOURCE);
        assert_eq!(p.signature, SIG);
        assert_eq!(p.expiry, EXPIRY);
        assert_eq!(p.key_name, None);
        assert_eq!(verify(t, KEY, RESOURCE, 0), Ok(EXPIRY));
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, SasError)] = &[
            ("", SasError::NotSas),
            ("sr=a&sig=b&se=1", SasError::NotSas),
            ("sharedaccesssignature sr=a&sig=b&se=1", SasError::NotSas),
            ("SharedAccessSignature  sr=a&sig=b&se=1", SasError::Malformed("whitespace inside the fields")),
            ("SharedAccessSignature sr=a&sig=b&se=1 ", SasError::Malformed("whitespace inside the fields")),
            ("SharedAccessSignature sr=a&sig&se=1", SasError::Malformed("a field without '='")),
            ("SharedAccessSignature sig=b&se=1", SasError::MissingField("sr")),
            ("SharedAccessSignature sr=a&se=1", SasError::MissingField("sig")),
            ("SharedAccessSignature sr=a&sig=b", SasError::MissingField("se")),
            ("SharedAccessSignature sr=a&sig=b&se=1&SR=c", SasError::DuplicateField("sr")),
            ("SharedAccessSignature sr=a&sig=b&se=", SasError::BadExpiry),
            ("SharedAccessSignature sr=a&sig=b&se=-1", SasError::BadExpiry),
            ("SharedAccessSignature sr=a&sig=b&se=+1", SasError::BadExpiry),
            ("SharedAccessSignature sr=a&sig=b&se=1.5", SasError::BadExpiry),
            ("SharedAccessSignature sr=a&sig=b&se=99999999999999999999999", SasError::BadExpiry),
            ("SharedAccessSignature sr=a%zz&sig=b&se=1", SasError::BadEncoding("sr")),
            ("SharedAccessSignature sr=a&sig=b%2&se=1", SasError::BadEncoding("sig")),
            ("SharedAccessSignature sr=a&sig=b&se=1&skn=%FF", SasError::BadEncoding("skn")),
            ("SharedAccessSignature sr=&sig=b&se=1", SasError::Malformed("empty resource (sr)")),
            ("SharedAccessSignature sr=a&sig=&se=1", SasError::Malformed("empty signature (sig)")),
        ];
        for (t, want) in cases {
            assert_eq!(&parse_token(t).unwrap_err(), want, "{t:?}");
            assert_eq!(&verify(t, KEY, "a", 0).unwrap_err(), want, "{t:?}");
        }
    }

    #[test]
    fn error_messages_never_show_signature_or_key() {
        let secret_sig = "S3cr3tS1gnatur3Xyz";
        let tokens = [
            format!("SharedAccessSignature sr=a&sig={secret_sig}%zz&se=1"),
            format!("SharedAccessSignature sr=a&sig={secret_sig}&sig={secret_sig}&se=1"),
            format!("SharedAccessSignature sr=a&{secret_sig}&se=1"),
            format!("SharedAccessSignature sr=a&sig={secret_sig}"),
            format!("SharedAccessSignature sr=a&sig={secret_sig}&se=x{secret_sig}"),
            format!("SharedAccessSignature sr=a&sig={secret_sig}&se=1"),
            format!("Bearer {secret_sig}"),
        ];
        for t in &tokens {
            let err = verify(t, KEY, "a", 0).unwrap_err();
            assert_no_leak(&err, &[secret_sig, KEY]);
        }
        for key in ["Zm9v!S3cr3tK3y", "S3cr3tK3y", ""] {
            let err = sign(key, "x").unwrap_err();
            assert_no_leak(&err, &["S3cr3tK3y"]);
            let err = token(RESOURCE, key, 1, None).unwrap_err();
            assert_no_leak(&err, &["S3cr3tK3y"]);
            let err = verify(TOKEN, key, RESOURCE, 0).unwrap_err();
            assert_no_leak(&err, &["S3cr3tK3y", "dIMMdDDBGFR8"]);
        }
        assert_eq!(sign("", "x"), Err(SasError::EmptyKey));
        assert_eq!(sign("not base64!", "x"), Err(SasError::InvalidKey));
        assert_eq!(sign("not base64!", "x").unwrap_err().to_string(), "the shared access key is not valid base64");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn round_trip(
            resource in "(?s).{1,40}",
            key in proptest::collection::vec(any::<u8>(), 1..64),
            expiry in 1u64..u64::MAX,
            key_name in proptest::option::of("[A-Za-z0-9 +/=&%-]{1,12}"),
        ) {
            let key_b64 = STANDARD.encode(&key);
            let t = token(&resource, &key_b64, expiry, key_name.as_deref()).unwrap();
            let p = parse_token(t.expose()).unwrap();
            prop_assert_eq!(&p.resource, &resource);
            prop_assert_eq!(p.expiry, expiry);
            prop_assert_eq!(&p.key_name, &key_name);
            prop_assert_eq!(verify(t.expose(), &key_b64, &resource, expiry - 1), Ok(expiry));
            prop_assert_eq!(verify(t.expose(), &key_b64, &resource, expiry), Err(SasError::Expired { expiry, now: expiry }));
            let other_key = STANDARD.encode([&key[..], b"x"].concat());
            prop_assert_eq!(verify(t.expose(), &other_key, &resource, 0), Err(SasError::SignatureMismatch));
        }

        #[test]
        fn parse_and_verify_never_panic(s in "(?s).{0,80}", fields in "[a-zA-Z%0-9=&+/ ]{0,60}") {
            let _ = parse_token(&s);
            let _ = verify(&s, KEY, RESOURCE, 0);
            let t = format!("SharedAccessSignature {fields}");
            let _ = parse_token(&t);
            let _ = verify(&t, KEY, RESOURCE, 0);
        }
    }
}
