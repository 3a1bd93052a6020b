//! The plain MQTT dialect, for any MQTT 3.1.1 broker: C2D messages arrive on
//! `subscribe` (where `+` is the device name), result reports go to
//! `report_topic` (`{device}` replaced). The message id comes from a JSON
//! `id` field of the body; a message without one gets a fresh id and cannot
//! be recognised when the broker redelivers it (never dedupe by content: two
//! identical commands sent on purpose must both run).

use crate::config::{Config, MissingId, Secret};
use crate::hub::net::{Endpoint, Net};
use crate::hub::{is_loopback, HubError};
use crate::message::Inbound;
use rumqttc::MqttOptions;
use std::time::Duration;

pub struct MqttDialect {
    endpoint: Endpoint,
    net: Net,
    client_id: String,
    login: Option<(String, Secret)>,
    subscribe: String,
    device_level: Option<usize>,
    report_topic: String,
    telemetry_topic: String,
    keep_alive: Duration,
    max_body: usize,
    default_device: Option<String>,
    missing_id: MissingId,
}

/// Options both dialects share.
pub fn common_options(o: &mut MqttOptions, keep_alive: Duration) {
    o.set_clean_session(false);
    o.set_manual_acks(true);
    o.set_max_packet_size(512 * 1024, 512 * 1024);
    o.set_keep_alive(keep_alive.max(Duration::from_secs(5)));
    o.set_inflight(100);
}

impl MqttDialect {
    pub fn from_config(cfg: &Config) -> Result<Self, HubError> {
        let hub = &cfg.hub;
        let url =
            hub.url.as_deref().ok_or_else(|| HubError::Config("hub.url is required with kind = \"mqtt\"".into()))?;
        let endpoint = crate::hub::net::parse_url(url).map_err(|e| HubError::Config(e.to_string()))?;
        let net = crate::hub::net_from_config(hub)?;
        if net.client_cert.is_some() && !endpoint.scheme.tls() {
            return Err(HubError::Config(
                "hub.certificate_file is shown in a TLS handshake: use an mqtts:// or wss:// url".into(),
            ));
        }
        if !endpoint.scheme.tls() && !is_loopback(&endpoint.host) && hub.password.is_some() {
            let host = &endpoint.host;
            tracing::warn!(%host, "sending a password without TLS to a remote broker: use mqtts:// or wss://");
        }
        let password = match (&hub.password, &hub.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(Secret(
                std::fs::read_to_string(f)
                    .map_err(|e| HubError::Config(format!("cannot read {}: {e}", f.display())))?
                    .trim()
                    .to_string(),
            )),
            (None, None) => None,
        };
        let login = match (&hub.username, password) {
            (Some(u), p) => Some((u.clone(), p.unwrap_or(Secret(String::new())))),
            (None, Some(_)) => return Err(HubError::Config("hub.password needs hub.username".into())),
            (None, None) => None,
        };
        let levels: Vec<&str> = hub.subscribe.split('/').collect();
        let device_level = levels.iter().position(|l| *l == "+");
        let client_id = hub.client_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("c2d-gateway-{}", host.trim()).trim_end_matches('-').to_string()
        });
        Ok(MqttDialect {
            endpoint,
            net,
            client_id,
            login,
            subscribe: hub.subscribe.clone(),
            device_level,
            report_topic: hub.report_topic.clone(),
            telemetry_topic: hub.telemetry_topic.clone(),
            keep_alive: *hub.keep_alive,
            max_body: hub.max_body,
            default_device: cfg.routing.default_device.clone(),
            missing_id: hub.missing_id,
        })
    }

    pub fn mqtt_options(&self) -> Result<MqttOptions, HubError> {
        let mut o = self.net.options(self.client_id.clone(), &self.endpoint)?;
        if let Some((u, p)) = &self.login {
            o.set_credentials(u.clone(), p.expose().to_string());
        }
        common_options(&mut o, self.keep_alive);
        Ok(o)
    }

    pub fn subscription(&self) -> String {
        self.subscribe.clone()
    }

    /// The device a topic names, if it matches the subscription pattern.
    fn match_topic(&self, topic: &str) -> Option<Option<String>> {
        let pat: Vec<&str> = self.subscribe.split('/').collect();
        let got: Vec<&str> = topic.split('/').collect();
        if pat.last() == Some(&"#") {
            if got.len() < pat.len() - 1 {
                return None;
            }
        } else if pat.len() != got.len() {
            return None;
        }
        for (p, g) in pat.iter().zip(&got) {
            if *p != "+" && *p != "#" && p != g {
                return None;
            }
        }
        Some(self.device_level.map(|i| got[i].to_string()))
    }

    pub fn inbound(&self, topic: &str, payload: &[u8]) -> Option<Inbound> {
        let device = self.match_topic(topic)?;
        let mut m = Inbound {
            device: device.or_else(|| self.default_device.clone()),
            body: payload.to_vec(),
            ..Inbound::default()
        };
        if payload.len() > self.max_body {
            m.reject = Some(format!("body of {} bytes exceeds max_body = {}", payload.len(), self.max_body));
            return Some(m);
        }
        if let Ok(body) = serde_json::from_slice::<Peek>(payload) {
            m.id = match body.id.as_ref() {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
                // Integers only: a float (or an integer past 64 bits, read as
                // one) is rounded, and two different ids could meet.
                Some(serde_json::Value::Number(n)) if n.is_u64() || n.is_i64() => Some(n.to_string()),
                Some(serde_json::Value::Number(n)) => {
                    m.reject = Some(format!("\"id\" {n} is not a string or an integer (ids must compare exactly)"));
                    None
                }
                _ => None,
            };
            // Envelope for serial devices: {"id": ..., "text": "..."} sends the text.
            if let Some(serde_json::Value::String(text)) = body.text {
                if !body.others {
                    m.body = text.into_bytes();
                }
            }
        }
        crate::hub::apply_missing_id(&mut m, self.missing_id, "no \"id\" in the body");
        Some(m)
    }

    pub fn report_topic(&self, device: Option<&str>) -> String {
        self.report_topic.replace("{device}", device.unwrap_or("unknown"))
    }

    pub fn telemetry_topic(&self, device: &str) -> String {
        self.telemetry_topic.replace("{device}", device)
    }

    pub fn describe(&self) -> String {
        let e = &self.endpoint;
        let how = match e.scheme {
            crate::hub::net::Scheme::Mqtt => "",
            crate::hub::net::Scheme::Mqtts => " (TLS)",
            crate::hub::net::Scheme::Ws => " (WebSockets)",
            crate::hub::net::Scheme::Wss => " (WebSockets, TLS)",
        };
        format!("MQTT broker {}:{}{how}{}", e.host, e.port, self.net.describe_proxy())
    }
}

/// What the dialect reads from a JSON object body: its `id` and, for the
/// serial envelope, its `text` (the last of each, as a JSON object keeps
/// it); every other field is checked and skipped without building a JSON
/// tree of it (a command's points are the router's to read).
#[derive(Default)]
struct Peek {
    id: Option<serde_json::Value>,
    text: Option<serde_json::Value>,
    /// Fields other than `id` and `text`.
    others: bool,
}

#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum PeekKey {
    Id,
    Text,
    #[serde(other)]
    Other,
}

impl<'de> serde::Deserialize<'de> for Peek {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Peek, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Peek;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Peek, A::Error> {
                let mut p = Peek::default();
                while let Some(key) = map.next_key::<PeekKey>()? {
                    match key {
                        PeekKey::Id => p.id = Some(map.next_value()?),
                        PeekKey::Text => p.text = Some(map.next_value()?),
                        PeekKey::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            p.others = true;
                        }
                    }
                }
                Ok(p)
            }
        }
        d.deserialize_map(Fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialect(subscribe: &str) -> MqttDialect {
        let cfg: Config = toml::from_str(&format!(
            "[hub]\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\nsubscribe = \"{subscribe}\"\nclient_id = \"t\""
        ))
        .unwrap();
        MqttDialect::from_config(&cfg).unwrap()
    }

    #[test]
    fn device_from_topic_and_id_from_body() {
        let d = dialect("gateway/+/c2d");
        let m = d.inbound("gateway/boiler/c2d", br#"{"id": "a1", "point": "x", "value": 1}"#).unwrap();
        assert_eq!(m.device.as_deref(), Some("boiler"));
        assert_eq!(m.id.as_deref(), Some("a1"));
        let m = d.inbound("gateway/boiler/c2d", br#"{"id": 42}"#).unwrap();
        assert_eq!(m.id.as_deref(), Some("42"));
        assert_eq!(m.reject, None);
        // Rounded numbers could make two ids one: refused, with the reason.
        for id in ["1.5", "18446744073709551616", "1e3"] {
            let m = d.inbound("gateway/boiler/c2d", format!(r#"{{"id": {id}}}"#).as_bytes()).unwrap();
            assert_eq!(m.id, None, "{id}");
            assert!(m.reject.as_deref().is_some_and(|r| r.contains("not a string or an integer")), "{id}: {m:?}");
        }
        let m = d.inbound("gateway/boiler/c2d", b"not json").unwrap();
        assert_eq!(m.id, None);
        assert!(d.inbound("gateway/boiler/other", b"{}").is_none());
        assert!(d.inbound("gateway/boiler/c2d/x", b"{}").is_none());
        let m = d.inbound("gateway/panel/c2d", br#"{"id": "t1", "text": "HELLO"}"#).unwrap();
        assert_eq!(m.body, b"HELLO");
    }

    #[test]
    fn a_body_without_id_runs_or_is_rejected_as_missing_id_says() {
        let bodies: [&[u8]; 3] = [br#"{"point": "x", "value": 1}"#, br#"{"text": "HELLO"}"#, b"HELLO"];
        let d = dialect("gateway/+/c2d");
        for body in bodies {
            let m = d.inbound("gateway/boiler/c2d", body).unwrap();
            assert_eq!((m.id, m.reject), (None, None), "run by default");
        }
        let cfg: Config = toml::from_str(
            "[hub]\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\nclient_id = \"t\"\nmissing_id = \"reject\"",
        )
        .unwrap();
        let d = MqttDialect::from_config(&cfg).unwrap();
        for body in bodies {
            let m = d.inbound("gateway/boiler/c2d", body).unwrap();
            let why = m.reject.unwrap_or_default();
            assert!(why.contains("no \"id\" in the body") && why.contains("missing_id"), "{why}");
        }
        let m = d.inbound("gateway/boiler/c2d", br#"{"id": "a1", "point": "x", "value": 1}"#).unwrap();
        assert_eq!(m.reject, None);
    }

    #[test]
    fn oversize_is_rejected() {
        let d = dialect("gateway/+/c2d");
        let big = vec![b'x'; 70_000];
        let m = d.inbound("gateway/a/c2d", &big).unwrap();
        assert!(m.reject.unwrap().contains("exceeds max_body"));
    }

    /// The body's `id` and `text` as a JSON tree would give them (the way
    /// they were read before `Peek`), on bodies of every awkward shape.
    #[test]
    fn peek_reads_id_and_text_as_a_json_object_would() {
        let tree = |b: &[u8]| match serde_json::from_slice::<serde_json::Value>(b) {
            Ok(serde_json::Value::Object(o)) => {
                Some((o.get("id").cloned(), o.get("text").cloned(), o.keys().any(|k| k != "id" && k != "text")))
            }
            _ => None,
        };
        let peek = |b: &[u8]| serde_json::from_slice::<Peek>(b).ok().map(|p| (p.id, p.text, p.others));
        for body in [
            &br#"{"id": "a1", "point": "x", "value": 1}"#[..],
            br#"{"id": 1, "id": "later"}"#,
            br#"{"\u0069d": "escaped key", "te\u0078t": "hi"}"#,
            br#"{"id": "s", "text": "line"}"#,
            br#"{"text": 5, "points": {"a": [1, {"b": null}], "c": 1.5e300}}"#,
            br#"{"id": 18446744073709551616}"#,
            br#"{"id": -3.5}"#,
            br#"{}"#,
            br#"[1, 2]"#,
            br#""id""#,
            br#"{"id": "x"} trailing"#,
            br#"{"id": "x""#,
            b"\xff\xfe",
            b"",
        ] {
            assert_eq!(peek(body), tree(body), "{}", String::from_utf8_lossy(body));
        }
        // A number past f64 in another field made the whole tree fail, and
        // the message lose its id; skipped unread, it keeps it (the router
        // still rejects the body, under the message's own id).
        let b = br#"{"id": "big", "value": 1e400}"#;
        assert_eq!(tree(b), None);
        assert_eq!(peek(b).and_then(|p| p.0), Some(serde_json::json!("big")));
    }
}
