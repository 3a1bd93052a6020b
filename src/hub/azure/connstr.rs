//! IoT Hub device connection strings.
//!
//! `HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey=base64key` is what
//! an operator copies from the Azure portal into the gateway's configuration.
//! This module parses it into a [`ConnectionString`] and derives the MQTT
//! client id, user name and SAS resource from it. Connection strings we cannot
//! use (service/policy strings, ready-made tokens, IoT Edge gateways) are
//! refused with an error saying why. `x509=true` strings carry no key: the
//! device shows a client certificate instead. No error message and no `Debug` output ever contains the
//! key or any part of it.

use crate::config::Secret;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::fmt;

/// A parsed device connection string.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub host_name: String,
    pub device_id: String,
    pub module_id: Option<String>,
    /// The device's shared access key, base64 as in the connection string;
    /// None for an X.509 device (`x509=true`: it shows a client certificate).
    pub key: Option<Secret>,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("device_id", &self.device_id)
            .field("module_id", &self.module_id)
            .field("key", &"***")
            .finish()
    }
}

/// Why a connection string was refused. Never carries the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnStrError {
    #[error("connection string is empty")]
    Empty,
    #[error("connection string part #{index} is not of the form Name=Value")]
    MalformedPart { index: usize },
    #[error("connection string part #{index} has an unknown name (a device connection string has HostName, DeviceId, SharedAccessKey and optionally ModuleId)")]
    UnknownPart { index: usize },
    #[error("connection string has more than one {0} part")]
    Duplicate(&'static str),
    #[error("connection string part {0} has an empty value")]
    EmptyValue(&'static str),
    #[error("connection string has no {0} part")]
    Missing(&'static str),
    #[error("this is a service/policy connection string (it has SharedAccessKeyName), not a device one: use the device's own connection string (IoT Hub > Devices > the device > Primary connection string)")]
    ServiceString,
    #[error("the connection string says x509=true and also has a SharedAccessKey: keep one of the two")]
    X509WithKey,
    #[error("connection string part x509 must be true or false")]
    BadX509Value,
    #[error("connecting through an IoT Edge gateway (GatewayHostName) is not supported")]
    GatewayUnsupported,
    #[error("connection strings carrying a ready-made SharedAccessSignature are not supported; use one with SharedAccessKey")]
    TokenUnsupported,
    #[error("SharedAccessKey is not valid base64")]
    BadKey,
    // The two below describe the problem without echoing the value: a
    // missing `;` can glue the key onto it.
    #[error("{part} is not a valid IoT Hub identity: {reason} (allowed: at most 128 ASCII letters, digits and - : . + % _ # * ? ! ( ) , = @ ; $ ')")]
    BadIdentity { part: &'static str, reason: String },
    #[error("HostName must be a bare host name such as myhub.azure-devices.net, without scheme, port or path: {0}")]
    BadHostName(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    HostName,
    DeviceId,
    ModuleId,
    SharedAccessKey,
    SharedAccessKeyName,
    SharedAccessSignature,
    X509,
    GatewayHostName,
}

impl Part {
    const ALL: [Part; 8] = [
        Part::HostName,
        Part::DeviceId,
        Part::ModuleId,
        Part::SharedAccessKey,
        Part::SharedAccessKeyName,
        Part::SharedAccessSignature,
        Part::X509,
        Part::GatewayHostName,
    ];

    fn name(self) -> &'static str {
        match self {
            Part::HostName => "HostName",
            Part::DeviceId => "DeviceId",
            Part::ModuleId => "ModuleId",
            Part::SharedAccessKey => "SharedAccessKey",
            Part::SharedAccessKeyName => "SharedAccessKeyName",
            Part::SharedAccessSignature => "SharedAccessSignature",
            Part::X509 => "x509",
            Part::GatewayHostName => "GatewayHostName",
        }
    }

    /// Names are matched ASCII case-insensitively.
    fn from_name(name: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(name))
    }
}

/// Characters IoT Hub allows in device and module ids besides ASCII letters
/// and digits.
const ID_SPECIALS: &[u8] = b"-:.+%_#*?!(),=@;$'";

/// The first character of `value` that `allowed` refuses, described by its
/// position (1-based, in characters).
fn first_disallowed(value: &str, allowed: impl Fn(char) -> bool) -> Option<String> {
    value
        .chars()
        .enumerate()
        .find(|(_, c)| !allowed(*c))
        .map(|(i, c)| format!("character {c:?} at position {} is not allowed", i + 1))
}

fn check_identity(part: &'static str, id: &str) -> Result<(), ConnStrError> {
    let reason = if id.len() > 128 {
        Some("it is longer than 128 characters".to_owned())
    } else {
        first_disallowed(id, |c| c.is_ascii_alphanumeric() || (c.is_ascii() && ID_SPECIALS.contains(&(c as u8))))
    };
    match reason {
        Some(reason) => Err(ConnStrError::BadIdentity { part, reason }),
        None => Ok(()),
    }
}

fn check_host_name(host: &str) -> Result<(), ConnStrError> {
    let reason = if host.len() > 253 {
        Some("it is longer than 253 characters".to_owned())
    } else if let Some(r) = first_disallowed(host, |c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        Some(r)
    } else if host.split('.').any(|label| label.is_empty() || label.starts_with('-') || label.ends_with('-')) {
        Some("it has an empty label or a label starting or ending with '-'".to_owned())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ConnStrError::BadHostName(reason)),
        None => Ok(()),
    }
}

/// Parses a device connection string: `Name=Value` parts separated by `;`, in
/// any order, whitespace around names and values ignored, empty parts (a
/// trailing `;`) skipped, names case-insensitive. The value is everything
/// after the first `=`, so base64 padding is kept.
pub fn parse(s: &str) -> Result<ConnectionString, ConnStrError> {
    let mut values: [Option<&str>; Part::ALL.len()] = [None; Part::ALL.len()];
    let mut any = false;
    for (i, part) in s.split(';').enumerate() {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        any = true;
        let index = i + 1;
        // Neither a malformed nor an unknown part is echoed: it may be (part
        // of) the key pasted without its name.
        let (name, value) = part.split_once('=').ok_or(ConnStrError::MalformedPart { index })?;
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() {
            return Err(ConnStrError::MalformedPart { index });
        }
        let p = Part::from_name(name).ok_or(ConnStrError::UnknownPart { index })?;
        let slot = &mut values[p as usize];
        if slot.is_some() {
            return Err(ConnStrError::Duplicate(p.name()));
        }
        *slot = Some(value);
    }
    if !any {
        return Err(ConnStrError::Empty);
    }
    let get = |p: Part| values[p as usize];

    // What kind of string is this? Say so before complaining about parts.
    if get(Part::SharedAccessKeyName).is_some() {
        return Err(ConnStrError::ServiceString);
    }
    if get(Part::GatewayHostName).is_some() {
        return Err(ConnStrError::GatewayUnsupported);
    }
    let x509 = match get(Part::X509) {
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(_) => return Err(ConnStrError::BadX509Value),
        None => false,
    };
    if x509 && get(Part::SharedAccessKey).is_some() {
        return Err(ConnStrError::X509WithKey);
    }
    if get(Part::SharedAccessSignature).is_some() {
        return Err(ConnStrError::TokenUnsupported);
    }

    let required = |p: Part| match get(p) {
        None => Err(ConnStrError::Missing(p.name())),
        Some("") => Err(ConnStrError::EmptyValue(p.name())),
        Some(v) => Ok(v),
    };
    let host_name = required(Part::HostName)?;
    let device_id = required(Part::DeviceId)?;
    let key = if x509 { None } else { Some(required(Part::SharedAccessKey)?) };
    let module_id = match get(Part::ModuleId) {
        Some("") => return Err(ConnStrError::EmptyValue("ModuleId")),
        m => m,
    };

    check_host_name(host_name)?;
    check_identity("DeviceId", device_id)?;
    if let Some(m) = module_id {
        check_identity("ModuleId", m)?;
    }
    // The decode error is dropped on purpose: it names the offending byte.
    if let Some(key) = key {
        match STANDARD.decode(key) {
            Ok(bytes) if !bytes.is_empty() => {}
            _ => return Err(ConnStrError::BadKey),
        }
    }

    Ok(ConnectionString {
        host_name: host_name.to_owned(),
        device_id: device_id.to_owned(),
        module_id: module_id.map(str::to_owned),
        key: key.map(|k| Secret(k.to_owned())),
    })
}

impl ConnectionString {
    /// The MQTT user name: `{HostName}/{DeviceId}/?api-version={v}`, or
    /// `{HostName}/{DeviceId}/{ModuleId}/?api-version={v}` for a module.
    pub fn username(&self, api_version: &str) -> String {
        match &self.module_id {
            None => format!("{}/{}/?api-version={api_version}", self.host_name, self.device_id),
            Some(m) => format!("{}/{}/{m}/?api-version={api_version}", self.host_name, self.device_id),
        }
    }

    /// The MQTT client id: the device id, or `{DeviceId}/{ModuleId}`.
    pub fn client_id(&self) -> String {
        match &self.module_id {
            None => self.device_id.clone(),
            Some(m) => format!("{}/{m}", self.device_id),
        }
    }

    /// The SAS token resource: `{HostName}/devices/{DeviceId}`, plus
    /// `/modules/{ModuleId}` for a module.
    pub fn resource(&self) -> String {
        match &self.module_id {
            None => format!("{}/devices/{}", self.host_name, self.device_id),
            Some(m) => format!("{}/devices/{}/modules/{m}", self.host_name, self.device_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Distinctive enough that any leak of a piece of it shows.
    const KEY: &str = "Zm9vYmFyS2V5TGVha0NhbmFyeTEyMzQ1Njc4OTBhYmM=";
    const KEY_PIECES: [&str; 4] = ["Zm9vYmFy", "S2V5TGVha", "0NhbmFyeT", "OTBhYmM="];

    fn ok(s: &str) -> ConnectionString {
        parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn err(s: &str) -> ConnStrError {
        let e = parse(s).expect_err(s);
        assert_no_leak(&e);
        e
    }

    fn assert_no_leak(e: &ConnStrError) {
        for text in [e.to_string(), format!("{e:?}")] {
            for piece in KEY_PIECES {
                assert!(!text.contains(piece), "{text:?} leaks the key");
            }
        }
    }

    #[test]
    fn parses_a_device_string() {
        let c = ok(&format!("HostName=h.azure-devices.net;DeviceId=dev-1;SharedAccessKey={KEY}"));
        assert_eq!(c.host_name, "h.azure-devices.net");
        assert_eq!(c.device_id, "dev-1");
        assert_eq!(c.module_id, None);
        assert_eq!(c.key.as_ref().unwrap().expose(), KEY);
    }

    #[test]
    fn order_whitespace_case_and_trailing_separator() {
        let want = ok(&format!("HostName=h.azure-devices.net;DeviceId=dev-1;SharedAccessKey={KEY}"));
        for s in [
            format!("SharedAccessKey={KEY};DeviceId=dev-1;HostName=h.azure-devices.net"),
            format!("  HostName = h.azure-devices.net ;\tDeviceId=dev-1 ; SharedAccessKey={KEY} ;\n"),
            format!("hostname=h.azure-devices.net;DEVICEID=dev-1;sharedaccesskey={KEY};;"),
            format!("HostName=h.azure-devices.net;DeviceId=dev-1;SharedAccessKey={KEY};x509=false"),
        ] {
            assert_eq!(ok(&s), want, "{s:?}");
        }
    }

    #[test]
    fn value_may_contain_equals() {
        let c = ok("HostName=h;DeviceId=a=b;SharedAccessKey=cGFzc3dvcmQ=");
        assert_eq!(c.device_id, "a=b");
        assert_eq!(c.key.as_ref().unwrap().expose(), "cGFzc3dvcmQ=");
    }

    #[test]
    fn module_strings() {
        let c = ok(&format!("HostName=h.azure-devices.net;DeviceId=edge1;ModuleId=filter;SharedAccessKey={KEY}"));
        assert_eq!(c.module_id.as_deref(), Some("filter"));
        assert_eq!(c.username("2021-04-12"), "h.azure-devices.net/edge1/filter/?api-version=2021-04-12");
        assert_eq!(c.client_id(), "edge1/filter");
        assert_eq!(c.resource(), "h.azure-devices.net/devices/edge1/modules/filter");
    }

    #[test]
    fn derived_names() {
        let c = ok(&format!("HostName=myhub.azure-devices.net;DeviceId=my_device;SharedAccessKey={KEY}"));
        assert_eq!(c.username("2021-04-12"), "myhub.azure-devices.net/my_device/?api-version=2021-04-12");
        assert_eq!(c.client_id(), "my_device");
        assert_eq!(c.resource(), "myhub.azure-devices.net/devices/my_device");
    }

    #[test]
    fn debug_hides_the_key() {
        let c = ok(&format!("HostName=h;DeviceId=d;SharedAccessKey={KEY}"));
        let dbg = format!("{c:?}");
        assert!(dbg.contains("\"d\""), "{dbg}");
        for piece in KEY_PIECES {
            assert!(!dbg.contains(piece), "{dbg}");
        }
        let dbg = format!("{c:#?}");
        assert!(!dbg.contains(KEY_PIECES[0]), "{dbg}");
    }

    #[test]
    fn missing_parts_are_named() {
        assert_eq!(err(&format!("DeviceId=d;SharedAccessKey={KEY}")), ConnStrError::Missing("HostName"));
        assert_eq!(err(&format!("HostName=h;SharedAccessKey={KEY}")), ConnStrError::Missing("DeviceId"));
        let e = err("HostName=h;DeviceId=d");
        assert_eq!(e, ConnStrError::Missing("SharedAccessKey"));
        assert_eq!(e.to_string(), "connection string has no SharedAccessKey part");
        assert_eq!(err(""), ConnStrError::Empty);
        assert_eq!(err(" ; ;\n"), ConnStrError::Empty);
    }

    #[test]
    fn empty_values() {
        assert_eq!(err(&format!("HostName=;DeviceId=d;SharedAccessKey={KEY}")), ConnStrError::EmptyValue("HostName"));
        assert_eq!(err(&format!("HostName=h;DeviceId= ;SharedAccessKey={KEY}")), ConnStrError::EmptyValue("DeviceId"));
        assert_eq!(err("HostName=h;DeviceId=d;SharedAccessKey="), ConnStrError::EmptyValue("SharedAccessKey"));
        assert_eq!(
            err(&format!("HostName=h;DeviceId=d;ModuleId=;SharedAccessKey={KEY}")),
            ConnStrError::EmptyValue("ModuleId")
        );
    }

    #[test]
    fn duplicates() {
        let e = err(&format!("HostName=h;DeviceId=d;deviceid=e;SharedAccessKey={KEY}"));
        assert_eq!(e, ConnStrError::Duplicate("DeviceId"));
        assert_eq!(e.to_string(), "connection string has more than one DeviceId part");
        assert_eq!(
            err(&format!("HostName=h;DeviceId=d;SharedAccessKey={KEY};SharedAccessKey={KEY}")),
            ConnStrError::Duplicate("SharedAccessKey")
        );
    }

    #[test]
    fn unknown_and_malformed_parts_do_not_echo_their_text() {
        // The key pasted without its name: split at '=' the "name" is the key.
        let e = err(&format!("HostName=h;DeviceId=d;{KEY}"));
        assert_eq!(e, ConnStrError::UnknownPart { index: 3 });
        assert_eq!(
            e.to_string(),
            "connection string part #3 has an unknown name (a device connection string has HostName, DeviceId, SharedAccessKey and optionally ModuleId)"
        );
        // Without padding there is no '=' at all.
        let e = err(&format!("HostName=h;{};DeviceId=d", KEY.trim_end_matches('=')));
        assert_eq!(e, ConnStrError::MalformedPart { index: 2 });
        assert_eq!(e.to_string(), "connection string part #2 is not of the form Name=Value");
        assert_eq!(
            err(&format!("HostName=h;DeviceId=d;SharedAccessKey={KEY};Foo=bar")),
            ConnStrError::UnknownPart { index: 4 }
        );
        assert_eq!(err(&format!("HostName=h;=d;SharedAccessKey={KEY}")), ConnStrError::MalformedPart { index: 2 });
        // Part numbers count empty parts too, so they match what the user sees.
        assert_eq!(err("HostName=h;;oops"), ConnStrError::MalformedPart { index: 3 });
    }

    #[test]
    fn unsupported_kinds() {
        let e = err(&format!("HostName=h.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"));
        assert_eq!(e, ConnStrError::ServiceString);
        assert!(e.to_string().starts_with("this is a service/policy connection string"));

        let c = parse("HostName=h;DeviceId=d;x509=true").unwrap();
        assert_eq!((c.device_id.as_str(), c.key.is_none()), ("d", true));
        assert!(parse("HostName=h;DeviceId=d;X509=TRUE").unwrap().key.is_none());
        assert_eq!(err(&format!("HostName=h;DeviceId=d;SharedAccessKey={KEY};x509=true")), ConnStrError::X509WithKey);
        assert_eq!(err(&format!("HostName=h;DeviceId=d;SharedAccessKey={KEY};x509=maybe")), ConnStrError::BadX509Value);

        let e = err(&format!("HostName=h;DeviceId=d;SharedAccessKey={KEY};GatewayHostName=edge.local"));
        assert_eq!(e, ConnStrError::GatewayUnsupported);
        assert_eq!(e.to_string(), "connecting through an IoT Edge gateway (GatewayHostName) is not supported");

        let e = err(&format!("HostName=h;DeviceId=d;SharedAccessSignature=SharedAccessSignature sr=h&sig={KEY}&se=1"));
        assert_eq!(e, ConnStrError::TokenUnsupported);
    }

    #[test]
    fn bad_key() {
        for key in [
            "Zm9vYmFyS2V5TGVha0NhbmFyeT!xMjM0NTY3ODkwYWJj",
            "Zm9vYmFyS2V5TGVha0NhbmFyeTEyMzQ1Njc4OTBhYmM", // padding missing
            "Zm9vYmFyS2V5TGVha0NhbmFyeTEyMzQ1Njc4OTBhYmM===",
            "Zm9vYmFyS2V5 TGVha0NhbmFyeTEyMzQ1Njc4OTBhYmM=",
            "=",
        ] {
            let e = err(&format!("HostName=h;DeviceId=d;SharedAccessKey={key}"));
            assert_eq!(e, ConnStrError::BadKey, "{key}");
            assert_eq!(e.to_string(), "SharedAccessKey is not valid base64");
        }
    }

    #[test]
    fn bad_identities_and_hosts() {
        for id in ["a/b", "a b", "dév", &"x".repeat(129)] {
            let e = err(&format!("HostName=h;DeviceId={id};SharedAccessKey={KEY}"));
            assert!(matches!(e, ConnStrError::BadIdentity { part: "DeviceId", .. }), "{id}: {e:?}");
        }
        let e = err(&format!("HostName=h;DeviceId=dév;SharedAccessKey={KEY}"));
        assert_eq!(
            e.to_string(),
            "DeviceId is not a valid IoT Hub identity: character 'é' at position 2 is not allowed (allowed: at most 128 ASCII letters, digits and - : . + % _ # * ? ! ( ) , = @ ; $ ')"
        );
        ok(&format!("HostName=h;DeviceId=A-z0:9.+%_#*?!(),=@$';SharedAccessKey={KEY}"));
        ok(&format!("HostName=h;DeviceId={};SharedAccessKey={KEY}", "x".repeat(128)));
        let e = err(&format!("HostName=h;DeviceId=d;ModuleId=m/x;SharedAccessKey={KEY}"));
        assert!(matches!(e, ConnStrError::BadIdentity { part: "ModuleId", .. }), "{e:?}");
        for host in [
            "https://h.azure-devices.net",
            "h.azure-devices.net/",
            "h..net",
            ".h",
            "h.",
            "-h.net",
            "h-.net",
            "h:8883",
            "h h",
        ] {
            let e = err(&format!("HostName={host};DeviceId=d;SharedAccessKey={KEY}"));
            assert!(matches!(e, ConnStrError::BadHostName(_)), "{host}: {e:?}");
        }
        assert_eq!(
            err(&format!("HostName=https://h.azure-devices.net;DeviceId=d;SharedAccessKey={KEY}")).to_string(),
            "HostName must be a bare host name such as myhub.azure-devices.net, without scheme, port or path: character ':' at position 6 is not allowed"
        );
        ok(&format!("HostName=localhost;DeviceId=d;SharedAccessKey={KEY}"));
        ok(&format!("HostName=127.0.0.1;DeviceId=d;SharedAccessKey={KEY}"));
    }

    #[test]
    fn a_missing_separator_does_not_leak_the_key() {
        // The key glued onto another value must not be echoed.
        let e = err(&format!("HostName=h;DeviceId=d SharedAccessKey={KEY};SharedAccessKey={KEY}"));
        assert!(matches!(e, ConnStrError::BadIdentity { .. }), "{e:?}");
        let e = err(&format!("HostName=h SharedAccessKey={KEY};DeviceId=d;SharedAccessKey={KEY}"));
        assert!(matches!(e, ConnStrError::BadHostName(_)), "{e:?}");
        let e = err(&format!("HostName=h;DeviceId=d SharedAccessKey={KEY}"));
        assert_eq!(e, ConnStrError::Missing("SharedAccessKey"));
    }

    #[test]
    fn the_key_never_appears_in_any_error() {
        // Every error path, with the distinctive key present somewhere.
        let cases = [
            format!("SharedAccessKey={KEY}"),
            format!("SharedAccessKey={KEY};HostName=h"),
            format!("SharedAccessKey={KEY};HostName=;DeviceId=d"),
            format!("SharedAccessKey={KEY};SharedAccessKey={KEY}"),
            format!("SharedAccessKey={KEY};{KEY}"),
            format!("SharedAccessKey={KEY};SharedAccessKeyName=owner;HostName=h"),
            format!("SharedAccessKey={KEY};x509=true"),
            format!("SharedAccessKey={KEY};x509={KEY}"),
            format!("SharedAccessKey={KEY};GatewayHostName=g;HostName=h;DeviceId=d"),
            format!("SharedAccessKey=!{KEY};HostName=h;DeviceId=d"),
            format!("SharedAccessKey={KEY}x;HostName=h;DeviceId=d"),
            format!("{KEY};HostName=h;DeviceId=d"),
            format!("{};HostName=h;DeviceId=d", &KEY[..KEY.len() - 1]),
            format!("HostName=h;DeviceId=d;SharedAccessKey={}", &KEY[3..]),
        ];
        for s in &cases {
            let _ = err(s);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn never_panics(s in "(?s).{0,80}", parts in proptest::collection::vec("[A-Za-z0-9=+/; ]{0,20}", 0..6)) {
            let _ = parse(&s);
            let _ = parse(&parts.join(";"));
        }

        #[test]
        fn any_order_and_spacing_parses(
            order in Just(vec![0usize, 1, 2]).prop_shuffle(),
            pad in proptest::collection::vec("[ \t]{0,2}", 6),
            key in proptest::collection::vec(any::<u8>(), 1..48),
            device in "[A-Za-z0-9_.:-]{1,20}",
        ) {
            let key = STANDARD.encode(key);
            let parts = [
                "HostName=hub.azure-devices.net".to_owned(),
                format!("DeviceId={device}"),
                format!("SharedAccessKey={key}"),
            ];
            let s = order
                .iter()
                .enumerate()
                .map(|(i, &p)| format!("{}{}{}", pad[2 * i], parts[p], pad[2 * i + 1]))
                .collect::<Vec<_>>()
                .join(";");
            let c = parse(&s).unwrap();
            prop_assert_eq!(c.host_name, "hub.azure-devices.net");
            prop_assert_eq!(c.device_id, device);
            prop_assert_eq!(c.key.as_ref().unwrap().expose(), key.as_str());
        }

        #[test]
        fn errors_never_contain_the_key(
            key in "[A-Za-z0-9+/]{20,40}",
            junk in proptest::collection::vec(proptest::sample::select(vec![
                "HostName=h", "DeviceId=d", "HostName=", "x509=true", "SharedAccessKeyName=o",
                "GatewayHostName=g", "Foo=1", "bare", "", "DeviceId=a/b", "HostName=h/x",
            ]), 0..4),
            mangle in 0usize..4,
        ) {
            let key_part = match mangle {
                0 => format!("SharedAccessKey={key}"),
                1 => format!("SharedAccessKey={key}!"),
                2 => key.clone(),
                _ => format!("{key}="),
            };
            let mut parts: Vec<String> = junk.iter().map(|s| s.to_string()).collect();
            parts.insert(parts.len() / 2, key_part);
            if let Err(e) = parse(&parts.join(";")) {
                let text = format!("{e} {e:?}");
                prop_assert!(!text.contains(&key[..12]), "{}", text);
                prop_assert!(!text.contains(&key[key.len() - 12..]), "{}", text);
            }
        }
    }
}
