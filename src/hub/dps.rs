//! Device Provisioning Service (DPS) over MQTT: the gateway asks DPS which
//! IoT Hub it belongs to and under which device id, with a symmetric key
//! (individual enrollment), a key derived from an enrollment group's key,
//! or its X.509 certificate. The answer is cached in `state_dir`; the link
//! provisions again when the hub refuses the credentials (the device was
//! moved to another hub).
//!
//! The exchange (`../shared/azure-iot-hub-mqtt.md`): CONNECT with client id
//! = registration id, user name `{idScope}/registrations/{registrationId}/api-version=2019-03-31`,
//! a SAS token for `{idScope}/registrations/{registrationId}` (`skn=registration`);
//! SUBSCRIBE `$dps/registrations/res/#`; PUBLISH the registration, then poll
//! the operation's status until DPS answers 200 with the assigned hub.

use super::net::{Endpoint, Net, Scheme};
use super::{azure::sas, HubError};
use crate::config::{Config, Secret};
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const API_VERSION: &str = "2019-03-31";
pub const DEFAULT_ENDPOINT: &str = "global.azure-devices-provisioning.net";
const CACHE_FILE: &str = "dps-assignment.json";
/// The longest one registration may take, polls included.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);

/// How the gateway proves itself to DPS (and then to its hub).
#[derive(Clone)]
pub enum Attestation {
    /// The device's symmetric key (individual enrollment, or derived from
    /// the group's key); the same key signs the hub's SAS tokens.
    Key(Secret),
    /// The client certificate (hub.certificate_file).
    X509,
}

/// What DPS answered: the hub to connect to, and the identity there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    pub assigned_hub: String,
    pub device_id: String,
}

/// The cache file: the assignment and what it was for.
#[derive(serde::Serialize, serde::Deserialize)]
struct Cached {
    id_scope: String,
    registration_id: String,
    #[serde(flatten)]
    assignment: Assignment,
    provisioned_at_unix: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DpsError {
    #[error("DPS refused the registration's credentials ({0:?}): check the id scope, registration id and key or certificate")]
    Refused(rumqttc::ConnectReturnCode),
    #[error("DPS answered {status}: {detail}")]
    Failed { status: u16, detail: String },
    #[error("no answer from DPS within {0:?}")]
    Timeout(Duration),
    #[error("connection to DPS: {0}")]
    Connection(String),
    #[error("{0}")]
    Config(#[from] HubError),
    #[error("DPS assigned device id {now:?}, the gateway runs as {was:?}: it restarts to take the new identity")]
    DeviceIdChanged { was: String, now: String },
}

/// Everything needed to provision.
pub struct Dps {
    pub id_scope: String,
    pub registration_id: String,
    pub attestation: Attestation,
    endpoint: Endpoint,
    net: Net,
    cache: PathBuf,
}

/// base64(HMAC-SHA256(base64decode(group key), registration id)): the key
/// of one device of an enrollment group.
pub fn derive_key(group_key_b64: &str, registration_id: &str) -> Result<Secret, HubError> {
    sas::sign(group_key_b64, registration_id)
        .map(Secret)
        .map_err(|_| HubError::Config("hub.dps.enrollment_group_key_file does not hold a base64 key".into()))
}

fn read_key(path: &Path, what: &str) -> Result<Secret, HubError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| HubError::Config(format!("cannot read hub.dps.{what} {}: {e}", path.display())))?;
    let key = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or_default();
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(k) if !k.is_empty() => Ok(Secret(key.to_string())),
        _ => Err(HubError::Config(format!("hub.dps.{what} {} does not hold a base64 key", path.display()))),
    }
}

impl Dps {
    /// The DPS settings of `cfg`, or None without `[hub.dps]`.
    pub fn from_config(cfg: &Config, net: &Net) -> Result<Option<Dps>, HubError> {
        let Some(d) = &cfg.hub.dps else { return Ok(None) };
        let cert_cn = match &net.client_cert {
            Some(c) => {
                let (chain, _) = super::tls::read_identity(c)?;
                Some(super::tls::common_name(chain[0].as_ref()).ok_or_else(|| {
                    HubError::Config(format!(
                        "hub.certificate_file {}: no common name (DPS takes it as the registration id)",
                        c.certificate_file.display()
                    ))
                })?)
            }
            None => None,
        };
        let registration_id = match (&d.registration_id, &cert_cn) {
            (Some(r), Some(cn)) if r != cn => {
                return Err(HubError::Config(format!(
                "hub.dps.registration_id {r:?} is not the certificate's common name {cn:?} (DPS requires them equal)"
            )))
            }
            (Some(r), _) => r.clone(),
            (None, Some(cn)) => cn.clone(),
            (None, None) => return Err(HubError::Config("hub.dps needs registration_id".into())),
        };
        let attestation = match (&d.symmetric_key_file, &d.enrollment_group_key_file) {
            (Some(f), None) => Attestation::Key(read_key(f, "symmetric_key_file")?),
            (None, Some(f)) => {
                Attestation::Key(derive_key(read_key(f, "enrollment_group_key_file")?.expose(), &registration_id)?)
            }
            (None, None) if net.client_cert.is_some() => Attestation::X509,
            _ => {
                return Err(HubError::Config(
                    "hub.dps needs one of symmetric_key_file, enrollment_group_key_file, or an X.509 certificate \
                     (hub.certificate_file and hub.private_key_file)"
                        .into(),
                ))
            }
        };
        let (host, port) = match d.global_endpoint.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => (
                h.to_string(),
                p.parse::<u16>().map_err(|_| HubError::Config("hub.dps.global_endpoint: bad port".into()))?,
            ),
            _ => (d.global_endpoint.clone(), 0),
        };
        let scheme = Scheme::of(cfg.hub.transport);
        let path = if scheme.websocket() { "/$iothub/websocket" } else { "" };
        let port = if port == 0 { scheme.default_port() } else { port };
        let endpoint = Endpoint { scheme, host, port, path: path.into() };
        if endpoint.scheme == Scheme::Mqtt && !super::is_loopback(&endpoint.host) {
            return Err(HubError::Config(format!(
                "transport = \"mqtt\" (no TLS) is only allowed for a DPS on this machine, not {}",
                endpoint.host
            )));
        }
        Ok(Some(Dps {
            id_scope: d.id_scope.clone(),
            registration_id,
            attestation,
            endpoint,
            net: net.clone(),
            cache: cfg.gateway.state_dir.join(CACHE_FILE),
        }))
    }

    /// The assignment cached by an earlier registration of this identity.
    pub fn cached(&self) -> Option<Assignment> {
        let text = std::fs::read_to_string(&self.cache).ok()?;
        let c: Cached = serde_json::from_str(&text).ok()?;
        (c.id_scope == self.id_scope && c.registration_id == self.registration_id).then_some(c.assignment)
    }

    /// Forgets the cached assignment (the hub refused it).
    pub fn forget(&self) {
        let _ = std::fs::remove_file(&self.cache);
    }

    fn store(&self, a: &Assignment) -> std::io::Result<()> {
        let c = Cached {
            id_scope: self.id_scope.clone(),
            registration_id: self.registration_id.clone(),
            assignment: a.clone(),
            provisioned_at_unix: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
        };
        let dir = self.cache.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = self.cache.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, serde_json::to_string_pretty(&c).unwrap_or_default().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.cache)?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// For logs: where and as whom (no key).
    pub fn describe(&self) -> String {
        let how = match self.attestation {
            Attestation::Key(_) => "symmetric key",
            Attestation::X509 => "X.509",
        };
        format!(
            "DPS {}:{} scope {} as {} ({how}){}",
            self.endpoint.host,
            self.endpoint.port,
            self.id_scope,
            self.registration_id,
            self.net.describe_proxy()
        )
    }

    fn options(&self) -> Result<MqttOptions, HubError> {
        let mut o = self.net.options(self.registration_id.clone(), &self.endpoint)?;
        let user = format!("{}/registrations/{}/api-version={API_VERSION}", self.id_scope, self.registration_id);
        let password = match &self.attestation {
            Attestation::Key(key) => {
                let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() + 3600;
                let resource = format!("{}/registrations/{}", self.id_scope, self.registration_id);
                sas::token(&resource, key.expose(), expiry, Some("registration"))
                    .map_err(|e| HubError::Config(format!("DPS SAS token: {e}")))?
                    .expose()
                    .to_string()
            }
            Attestation::X509 => String::new(),
        };
        o.set_credentials(user, password);
        o.set_clean_session(true);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(64 * 1024, 64 * 1024);
        Ok(o)
    }

    /// Registers once (polling until DPS decides), caches and returns the
    /// assignment.
    pub async fn register(&self) -> Result<Assignment, DpsError> {
        let a = tokio::time::timeout(REGISTER_TIMEOUT, self.exchange())
            .await
            .map_err(|_| DpsError::Timeout(REGISTER_TIMEOUT))??;
        if let Err(e) = self.store(&a) {
            tracing::warn!(error = %e, path = %self.cache.display(), "cannot cache the DPS assignment; provisioning again at the next start");
        }
        Ok(a)
    }

    async fn exchange(&self) -> Result<Assignment, DpsError> {
        let (client, mut el) = AsyncClient::new(self.options()?, 16);
        let body = serde_json::json!({ "registrationId": self.registration_id }).to_string();
        let mut rid: u32 = 0;
        let mut poll_at: Option<(tokio::time::Instant, String)> = None;
        let result = loop {
            let wait = async {
                match &poll_at {
                    Some((at, _)) => tokio::time::sleep_until(*at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wait => {
                    let (_, op) = poll_at.take().expect("a poll is due");
                    rid += 1;
                    let topic = format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}");
                    let _ = client.publish(topic, QoS::AtLeastOnce, false, Vec::new()).await;
                }
                ev = el.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.subscribe("$dps/registrations/res/#", QoS::AtLeastOnce).await;
                        rid += 1;
                        let topic = format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}");
                        let _ = client.publish(topic, QoS::AtLeastOnce, false, body.clone().into_bytes()).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => match answer(&p.topic, &p.payload) {
                        Some(Answer::Assigned(a)) => break Ok(a),
                        Some(Answer::Wait { operation, retry_after }) => {
                            poll_at = Some((tokio::time::Instant::now() + retry_after, operation));
                        }
                        Some(Answer::Failed { status, detail }) => break Err(DpsError::Failed { status, detail }),
                        None => {}
                    },
                    Ok(_) => {}
                    Err(ConnectionError::ConnectionRefused(code)) => break Err(DpsError::Refused(code)),
                    Err(e) => break Err(DpsError::Connection(e.to_string())),
                }
            }
        };
        let _ = client.try_disconnect();
        result
    }
}

/// What one DPS answer says.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Assigned(Assignment),
    /// Still assigning (202), or throttled (429): poll `operation` again later.
    Wait {
        operation: String,
        retry_after: Duration,
    },
    Failed {
        status: u16,
        detail: String,
    },
}

/// Reads `$dps/registrations/res/{status}/?$rid={rid}&retry-after={s}` and its JSON.
fn answer(topic: &str, payload: &[u8]) -> Option<Answer> {
    let rest = topic.strip_prefix("$dps/registrations/res/")?;
    let (status, query) = rest.split_once('/').unwrap_or((rest, ""));
    let status: u16 = status.parse().ok()?;
    let retry_after = query
        .trim_start_matches('?')
        .split('&')
        .find_map(|kv| kv.strip_prefix("retry-after="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(3)
        .clamp(1, 60);
    let retry_after = Duration::from_secs(retry_after);
    let json: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|s| s.as_str()).map(str::to_string);
    let state = json.get("registrationState").cloned().unwrap_or_default();
    let operation = text(&json, "operationId");
    match (status, text(&json, "status").as_deref(), operation) {
        (200, Some("assigned"), _) => match (text(&state, "assignedHub"), text(&state, "deviceId")) {
            (Some(assigned_hub), Some(device_id)) => Some(Answer::Assigned(Assignment { assigned_hub, device_id })),
            _ => Some(Answer::Failed { status, detail: "assigned, but without assignedHub and deviceId".into() }),
        },
        (200 | 202, Some("assigning" | "unassigned"), Some(operation)) | (429, _, Some(operation)) => {
            Some(Answer::Wait { operation, retry_after })
        }
        (_, st, _) => {
            let detail = text(&state, "errorMessage")
                .or_else(|| text(&json, "message"))
                .unwrap_or_else(|| format!("registration status {}", st.unwrap_or("unknown")));
            Some(Answer::Failed { status, detail })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_member_key_is_the_hmac_of_its_registration_id() {
        // The same vector as the SAS signature test: HMAC-SHA256 with the key over the text.
        let k = derive_key("cGFzc3dvcmQ=", "string-to-sign").unwrap();
        assert_eq!(k.expose(), "o1n1hiIVgzVA2+krq9ty1Z4xsIJKJZP3dYT8MOi65Y4=");
        assert!(derive_key("not base64!", "x").is_err());
    }

    fn dps_for(state: &Path, registration_id: &str) -> Dps {
        let key = state.join("k");
        std::fs::write(&key, "c2VjcmV0LWtleQ==\n").unwrap();
        let text = format!(
            "[gateway]\nstate_dir = \"{}\"\n[hub]\nkind = \"azure\"\n[hub.dps]\nid_scope = \"s\"\n\
             registration_id = \"{registration_id}\"\nsymmetric_key_file = \"{}\"\nglobal_endpoint = \"localhost:9\"\n",
            state.display(),
            key.display()
        );
        let cfg: Config = toml::from_str(&text).unwrap();
        let net = crate::hub::net_from_config(&cfg.hub).unwrap();
        Dps::from_config(&cfg, &net).unwrap().unwrap()
    }

    #[test]
    fn the_cached_assignment_is_for_this_identity_only_and_holds_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dps_for(dir.path(), "gw-1");
        assert_eq!(d.cached(), None);
        let a = Assignment { assigned_hub: "h.azure-devices.net".into(), device_id: "gw-1".into() };
        d.store(&a).unwrap();
        assert_eq!(d.cached(), Some(a.clone()));
        let text = std::fs::read_to_string(dir.path().join(CACHE_FILE)).unwrap();
        assert!(!text.contains("c2VjcmV0LWtleQ"), "{text}");
        assert_eq!(dps_for(dir.path(), "gw-2").cached(), None, "another registration id");
        std::fs::write(dir.path().join(CACHE_FILE), "{ torn").unwrap();
        assert_eq!(d.cached(), None, "an unreadable cache means: provision");
        d.store(&a).unwrap();
        d.forget();
        assert_eq!(d.cached(), None);
        assert_eq!((d.endpoint.host.as_str(), d.endpoint.port), ("localhost", 9));
    }

    #[test]
    fn plain_mqtt_to_a_remote_dps_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, "c2VjcmV0LWtleQ==").unwrap();
        let cfg: Config = toml::from_str(&format!(
            "[hub]\nkind = \"azure\"\ntransport = \"mqtt\"\n[hub.dps]\nid_scope = \"s\"\nregistration_id = \"r\"\n\
             symmetric_key_file = \"{}\"\n",
            key.display()
        ))
        .unwrap();
        let net = crate::hub::net_from_config(&cfg.hub).unwrap();
        let e = Dps::from_config(&cfg, &net).err().expect("refused").to_string();
        assert!(e.contains("only allowed for a DPS on this machine"), "{e}");
    }

    #[test]
    fn answers_are_read_from_topic_and_body() {
        let wait = answer(
            "$dps/registrations/res/202/?$rid=1&retry-after=2",
            br#"{"operationId":"op1","status":"assigning"}"#,
        );
        assert_eq!(wait, Some(Answer::Wait { operation: "op1".into(), retry_after: Duration::from_secs(2) }));
        let done = answer(
            "$dps/registrations/res/200/?$rid=2",
            br#"{"operationId":"op1","status":"assigned","registrationState":{"assignedHub":"h.azure-devices.net","deviceId":"d1","status":"assigned"}}"#,
        );
        assert_eq!(
            done,
            Some(Answer::Assigned(Assignment { assigned_hub: "h.azure-devices.net".into(), device_id: "d1".into() }))
        );
        let failed = answer("$dps/registrations/res/401/?$rid=1", br#"{"errorCode":401002,"message":"Unauthorized"}"#);
        assert_eq!(failed, Some(Answer::Failed { status: 401, detail: "Unauthorized".into() }));
        assert!(matches!(answer("$dps/registrations/res/429/?$rid=1&retry-after=500", br#"{"operationId":"o"}"#),
            Some(Answer::Wait { retry_after, .. }) if retry_after == Duration::from_secs(60)));
        assert_eq!(answer("devices/x/messages/devicebound/", b""), None);
        assert!(matches!(answer("$dps/registrations/res/200/?$rid=1", b"not json"), Some(Answer::Failed { .. })));
    }
}
