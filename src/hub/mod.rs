//! The hub side: one connection (IoT Hub's MQTT dialect or any MQTT broker),
//! owned by one task (`link.rs`). The dialects turn a PUBLISH into an
//! [`Inbound`] message and say where result reports go.

pub mod azure;
pub mod dps;
pub mod inflight;
pub mod link;
#[cfg(test)]
mod link_tests;
pub mod mqtt;
pub mod net;
pub mod tls;

use crate::config::{Config, HubConfig, HubKind, MissingId};
use crate::message::Inbound;
use rumqttc::MqttOptions;
use std::time::Duration;

/// What the link tells the pipeline.
#[derive(Debug)]
pub enum HubEvent {
    /// CONNACK received; acks are only valid for this generation.
    /// `endpoint`: where and how, for operators (never credentials).
    Connected {
        generation: u64,
        endpoint: String,
    },
    Disconnected {
        generation: u64,
    },
    /// A C2D message; `pkid` 0 = QoS 0 (nothing to acknowledge).
    Message {
        generation: u64,
        pkid: u16,
        inbound: Inbound,
    },
    /// The hub acknowledged (PUBACK) the result report of journal entry `seq`.
    Reported {
        seq: u64,
    },
    /// The PUBACK of the C2D message journaled as `seq` went out (rumqttc
    /// wrote it on the connection its PUBLISH came from). Only now may the
    /// journal count it as acknowledged (`Journal::acked`).
    Acked {
        seq: u64,
    },
    /// The hub's answer to a twin request (`$iothub/twin/res/{status}/?$rid=`).
    TwinAnswer {
        status: u16,
        rid: String,
        payload: Vec<u8>,
    },
    /// Desired properties changed (`$iothub/twin/PATCH/properties/desired/`).
    DesiredPatch,
    /// A direct method call (IoT Hub, QoS 0): answer it with
    /// [`HubCommand::Answer`] and its `rid`.
    Method {
        name: String,
        rid: String,
        payload: Vec<u8>,
    },
}

/// What the pipeline asks of the link.
#[derive(Debug)]
pub enum HubCommand {
    /// PUBACK packet `pkid` of connection `generation` (dropped if stale),
    /// the message journaled as `seq` (a synthetic value for a message never
    /// journaled). Once written it comes back as [`HubEvent::Acked`].
    Ack { generation: u64, pkid: u16, seq: u64 },
    /// Publish QoS 1 (result reports, telemetry). `report`: the journal
    /// entry this is the result report of; its PUBACK comes back as
    /// [`HubEvent::Reported`].
    Publish { topic: String, payload: Vec<u8>, report: Option<u64> },
    /// A twin request (GET, reported PATCH) on this topic, QoS 0.
    Twin { topic: String, payload: Vec<u8> },
    /// Answer direct method call `rid` (QoS 0; an answer the hub no longer
    /// waits for is dropped there).
    Answer { rid: String, status: u16, payload: Vec<u8> },
    /// End the current connection and connect again with the usual
    /// back-off: the hub redelivers what was not acknowledged, and nothing
    /// after this command is acknowledged on the connection it ended.
    Reconnect,
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("hub configuration: {0}")]
    Config(String),
}

/// The two dialects behind one face.
#[allow(clippy::large_enum_variant)] // two per process, never moved in a hot path
pub enum Dialect {
    Azure(azure::dialect::AzureDialect),
    Mqtt(mqtt::MqttDialect),
}

impl Dialect {
    pub fn from_config(cfg: &Config) -> Result<Dialect, HubError> {
        match cfg.hub.kind {
            HubKind::Azure => Ok(Dialect::Azure(azure::dialect::AzureDialect::from_config(cfg)?)),
            HubKind::Mqtt => Ok(Dialect::Mqtt(mqtt::MqttDialect::from_config(cfg)?)),
        }
    }

    /// Fresh connection options (a new SAS token for IoT Hub).
    pub fn mqtt_options(&self) -> Result<MqttOptions, HubError> {
        match self {
            Dialect::Azure(d) => d.mqtt_options(),
            Dialect::Mqtt(d) => d.mqtt_options(),
        }
    }

    pub fn subscriptions(&self) -> Vec<String> {
        match self {
            Dialect::Azure(d) => {
                let mut v = vec![d.subscription(), azure::methods::FILTER.to_string()];
                if d.twin {
                    v.extend([azure::methods::TWIN_RES_FILTER.to_string(), azure::methods::DESIRED_FILTER.to_string()]);
                }
                v
            }
            Dialect::Mqtt(d) => vec![d.subscription()],
        }
    }

    /// What a twin topic carries: an answer (status, request id), or a
    /// desired patch (None).
    pub fn twin_event(&self, topic: &str) -> Option<Option<(u16, String)>> {
        match self {
            Dialect::Azure(_) => azure::methods::parse_twin_topic(topic),
            Dialect::Mqtt(_) => None,
        }
    }

    /// The method name and request id of a direct method call's topic.
    pub fn method_call(&self, topic: &str) -> Option<(String, String)> {
        match self {
            Dialect::Azure(_) => azure::methods::parse_request_topic(topic),
            Dialect::Mqtt(_) => None,
        }
    }

    /// The message in a PUBLISH, or None when the topic is not a C2D topic.
    pub fn inbound(&self, topic: &str, payload: &[u8]) -> Option<Inbound> {
        match self {
            Dialect::Azure(d) => d.inbound(topic, payload),
            Dialect::Mqtt(d) => d.inbound(topic, payload),
        }
    }

    /// Topic of a result report about `device` with final state `status`.
    pub fn report_topic(&self, message_id: &str, device: Option<&str>, status: &str) -> String {
        match self {
            Dialect::Azure(d) => d.report_topic(message_id, status),
            Dialect::Mqtt(d) => d.report_topic(device),
        }
    }

    /// Topic of a telemetry reading of `device`, with application properties
    /// (IoT Hub carries them in the topic; a plain broker cannot).
    pub fn telemetry_topic(&self, device: &str, alerts: &[(String, bool)]) -> String {
        match self {
            Dialect::Azure(d) => d.telemetry_topic(device, alerts),
            Dialect::Mqtt(d) => d.telemetry_topic(device),
        }
    }

    /// Reconnect with fresh credentials after this long (SAS renewal).
    pub fn renew_after(&self) -> Option<Duration> {
        match self {
            Dialect::Azure(d) => d.uses_sas().then(|| d.renew_after()),
            Dialect::Mqtt(_) => None,
        }
    }

    /// True when DPS must assign a hub before the first connection.
    pub fn needs_provisioning(&self) -> bool {
        matches!(self, Dialect::Azure(d) if d.needs_provisioning())
    }

    /// After the hub refused the credentials: true when DPS is to be asked
    /// again (the cached assignment is forgotten).
    pub fn forget_assignment(&mut self) -> bool {
        match self {
            Dialect::Azure(d) => d.forget_assignment(),
            Dialect::Mqtt(_) => false,
        }
    }

    /// Registers with DPS (azure with `[hub.dps]`; nothing otherwise).
    pub async fn provision(&mut self) -> Result<(), dps::DpsError> {
        match self {
            Dialect::Azure(d) => d.provision().await,
            Dialect::Mqtt(_) => Ok(()),
        }
    }

    /// Host name for log lines (never credentials).
    pub fn describe(&self) -> String {
        match self {
            Dialect::Azure(d) => d.describe(),
            Dialect::Mqtt(d) => d.describe(),
        }
    }
}

/// Applies `hub.missing_id` to a message that carries no id (`what` names
/// where the id would have been): with `reject`, the message is rejected
/// (final, reported, acknowledged in its turn) rather than run without a
/// way to recognise its redelivery. A message rejected already keeps its
/// reason.
pub fn apply_missing_id(m: &mut Inbound, policy: MissingId, what: &str) {
    if policy == MissingId::Reject && m.id.is_none() && m.reject.is_none() {
        m.reject = Some(format!(
            "the message has no id ({what}), so a redelivery could not be recognised: \
             rejected by hub.missing_id = \"reject\""
        ));
    }
}

/// The way to the hub both dialects share: CA, proxy, client certificate.
pub fn net_from_config(hub: &HubConfig) -> Result<net::Net, HubError> {
    let proxy = hub
        .proxy
        .as_ref()
        .map(|p| net::parse_proxy(p.expose()).map_err(|e| HubError::Config(format!("hub.proxy {e}"))))
        .transpose()?;
    let client_cert = match (&hub.certificate_file, &hub.private_key_file) {
        (Some(c), Some(k)) => Some(net::ClientCert { certificate_file: c.clone(), private_key_file: k.clone() }),
        (None, None) => None,
        _ => {
            return Err(HubError::Config(
                "hub.certificate_file and hub.private_key_file go together: set both or neither".into(),
            ))
        }
    };
    if let Some(c) = &client_cert {
        // Read now, so that a wrong path is a start-up error, not a reconnect loop.
        tls::read_identity(c)?;
    }
    Ok(net::Net { ca_file: hub.ca_file.clone(), proxy, client_cert })
}

/// For `check-config`: the files the hub settings name (client
/// certificate and key, DPS keys, a proxy url) read as the daemon will read
/// them. Warnings, not errors: they may be readable only by the service's
/// user. Never quotes a file's contents.
pub fn check_files(cfg: &Config) -> Vec<String> {
    let needs = cfg.hub.dps.is_some() || cfg.hub.certificate_file.is_some() || cfg.hub.proxy.is_some();
    if !needs {
        return Vec::new();
    }
    let r = net_from_config(&cfg.hub).and_then(|net| dps::Dps::from_config(cfg, &net).map(|_| ()));
    match r {
        Ok(()) => Vec::new(),
        Err(e) => vec![format!("{e} (as this user reads it; the service may have other rights)")],
    }
}

/// True for `localhost` and loopback addresses: plain MQTT is allowed only there.
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_config_reads_the_dps_key_and_never_quotes_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        let text = |k: &std::path::Path| {
            format!("[hub]\nkind = \"azure\"\n[hub.dps]\nid_scope = \"s\"\nregistration_id = \"r\"\nsymmetric_key_file = \"{}\"\n", k.display())
        };
        let cfg: Config = toml::from_str(&text(&key)).unwrap();
        assert!(check_files(&cfg)[0].contains("cannot read hub.dps.symmetric_key_file"));
        std::fs::write(&key, "secret-but-not-base64!!\n").unwrap();
        let w = check_files(&cfg);
        assert!(w[0].contains("does not hold a base64 key") && !w[0].contains("secret-but"), "{w:?}");
        std::fs::write(&key, "c2VjcmV0LWtleQ==\n").unwrap();
        assert!(check_files(&cfg).is_empty());
        let plain: Config = toml::from_str("[hub]\nkind = \"azure\"\n").unwrap();
        assert!(check_files(&plain).is_empty(), "nothing to read");
    }

    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "127.0.0.1", "127.3.4.5", "::1", "[::1]", "LOCALHOST"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1", "localhost.example.com", "0.0.0.0"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
