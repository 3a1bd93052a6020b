//! IoT Hub's MQTT dialect wired to the link: credentials (connection string
//! from config, file, environment or systemd credential), SAS tokens with
//! renewal, the devicebound topic in, the events topic out.

use super::connstr::{self, ConnectionString};
use super::{propbag, sas};
use crate::config::{Auth, Config, MissingId, Transport};
use crate::hub::dps::{Attestation, Dps, DpsError};
use crate::hub::net::{Endpoint, Net, Scheme};
use crate::hub::{is_loopback, HubError};
use crate::message::{unix_ms, Inbound};
use rumqttc::MqttOptions;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const ENV_CONNECTION_STRING: &str = "C2D_GATEWAY_CONNECTION_STRING";

pub struct AzureDialect {
    cs: ConnectionString,
    api_version: String,
    endpoint: Endpoint,
    net: Net,
    sas_ttl: Duration,
    keep_alive: Duration,
    device_property: String,
    max_body: usize,
    missing_id: MissingId,
    /// Twin setpoints on: subscribe to twin answers and desired changes.
    pub twin: bool,
    /// Provisioned through DPS: where to register, and whether `cs` holds
    /// an assignment yet (else its host is empty).
    dps: Option<(Dps, bool)>,
}

/// The identity DPS gives, as a connection string would: the cached
/// assignment if there is one, else the registration id and no hub yet.
fn dps_identity(d: &Dps) -> (ConnectionString, bool) {
    let a = d.cached();
    let key = match &d.attestation {
        Attestation::Key(k) => Some(k.clone()),
        Attestation::X509 => None,
    };
    let cs = ConnectionString {
        host_name: a.as_ref().map(|a| a.assigned_hub.clone()).unwrap_or_default(),
        device_id: a.as_ref().map_or_else(|| d.registration_id.clone(), |a| a.device_id.clone()),
        module_id: None,
        key,
    };
    (cs, a.is_some())
}

/// Where the connection string comes from, in order: inline, file, the
/// environment, then systemd's `$CREDENTIALS_DIRECTORY/connection-string`.
pub fn load_connection_string(cfg: &Config) -> Result<ConnectionString, HubError> {
    load_connection_string_with(cfg, |k| std::env::var_os(k))
}

/// [`load_connection_string`] with the environment passed in (for tests).
pub fn load_connection_string_with(
    cfg: &Config,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<ConnectionString, HubError> {
    let text = if let Some(s) = &cfg.hub.connection_string {
        s.expose().to_string()
    } else if let Some(path) = &cfg.hub.connection_string_file {
        read_secret_file(path)?
    } else if let Some(s) = env(ENV_CONNECTION_STRING).and_then(|s| s.into_string().ok()) {
        s
    } else if let Some(dir) = env("CREDENTIALS_DIRECTORY") {
        read_secret_file(&Path::new(&dir).join("connection-string")).map_err(|_| {
            HubError::Config(
                "the systemd credential connection-string holds no connection string: put the device's \
                 connection string in /etc/c2d-gateway/connection-string (mode 0600) and restart"
                    .into(),
            )
        })?
    } else {
        return Err(HubError::Config(format!(
            "no connection string: set hub.connection_string_file (or hub.connection_string), \
             the environment variable {ENV_CONNECTION_STRING}, or a systemd credential named connection-string"
        )));
    };
    connstr::parse(text.trim()).map_err(|e| HubError::Config(format!("connection string: {e}")))
}

fn read_secret_file(path: &Path) -> Result<String, HubError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| HubError::Config(format!("cannot read {}: {e}", path.display())))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .ok_or_else(|| HubError::Config(format!("{} holds no connection string", path.display())))
}

/// Where IoT Hub listens for this transport: MQTT over TLS on 8883, plain
/// MQTT (a local emulator), or MQTT over WebSockets at
/// `wss://{host}:443/$iothub/websocket` (with `?iothub-no-client-cert=true`
/// unless the device shows a certificate).
pub fn azure_endpoint(host: &str, transport: Transport, port: Option<u16>, x509: bool) -> Endpoint {
    let scheme = Scheme::of(transport);
    let path = match (transport, x509) {
        (Transport::Websockets, false) => "/$iothub/websocket?iothub-no-client-cert=true",
        (Transport::Websockets, true) => "/$iothub/websocket",
        _ => "",
    };
    Endpoint { scheme, host: host.to_string(), port: port.unwrap_or(scheme.default_port()), path: path.to_string() }
}

impl AzureDialect {
    pub fn from_config(cfg: &Config) -> Result<Self, HubError> {
        let hub = &cfg.hub;
        let net = crate::hub::net_from_config(hub)?;
        let dps = Dps::from_config(cfg, &net)?;
        let (cs, assigned) = match &dps {
            Some(d) => dps_identity(d),
            None => (load_connection_string(cfg)?, true),
        };
        if assigned && hub.transport == Transport::Mqtt && !is_loopback(&cs.host_name) {
            return Err(HubError::Config(format!(
                "transport = \"mqtt\" (no TLS) is only allowed for a hub on this machine, not {}",
                cs.host_name
            )));
        }
        let x509 = match (hub.auth, cs.key.is_some()) {
            (Some(Auth::X509), true) => {
                return Err(HubError::Config(
                    "auth = \"x509\" but the connection string has a SharedAccessKey: use one with x509=true \
                     (HostName=...;DeviceId=...;x509=true)"
                        .into(),
                ))
            }
            (Some(Auth::Sas), false) => {
                return Err(HubError::Config(
                    "auth = \"sas\" but the connection string says x509=true and has no SharedAccessKey".into(),
                ))
            }
            (_, has_key) => !has_key,
        };
        if x509 && net.client_cert.is_none() {
            return Err(HubError::Config(
                "X.509 authentication needs hub.certificate_file and hub.private_key_file (PEM)".into(),
            ));
        }
        if !x509 && net.client_cert.is_some() {
            return Err(HubError::Config(
                "hub.certificate_file is set but the device authenticates with its SharedAccessKey: use a \
                 connection string with x509=true (and no key), or leave the certificate out"
                    .into(),
            ));
        }
        let endpoint = azure_endpoint(&cs.host_name, hub.transport, hub.port, x509);
        Ok(AzureDialect {
            cs,
            api_version: hub.api_version.clone(),
            endpoint,
            net,
            sas_ttl: *hub.sas_ttl,
            keep_alive: *hub.keep_alive,
            device_property: cfg.routing.device_property.clone(),
            max_body: hub.max_body,
            missing_id: hub.missing_id,
            twin: cfg.twin.enabled,
            dps: dps.map(|d| (d, assigned)),
        })
    }

    /// True when DPS must be asked before the first connection.
    pub fn needs_provisioning(&self) -> bool {
        self.dps.as_ref().is_some_and(|(_, assigned)| !assigned)
    }

    /// The hub refused the credentials: with DPS, forget the assignment (the
    /// device may have been moved to another hub) and provision again before
    /// the next connection. False without DPS.
    pub fn forget_assignment(&mut self) -> bool {
        match &mut self.dps {
            Some((d, assigned)) => {
                d.forget();
                *assigned = false;
                true
            }
            None => false,
        }
    }

    /// Registers with DPS and takes the hub it assigns. Fails with
    /// [`DpsError::DeviceIdChanged`] when DPS gives another device id than
    /// the one the gateway runs under (the assignment is cached: a restart
    /// takes it).
    pub async fn provision(&mut self) -> Result<(), DpsError> {
        let Some((d, assigned)) = &mut self.dps else { return Ok(()) };
        tracing::info!(dps = %d.describe(), "provisioning through the Device Provisioning Service");
        let a = d.register().await?;
        if self.endpoint.scheme == Scheme::Mqtt && !is_loopback(&a.assigned_hub) {
            return Err(DpsError::Config(HubError::Config(format!(
                "transport = \"mqtt\" (no TLS) is only allowed for a hub on this machine, not {}",
                a.assigned_hub
            ))));
        }
        let was = std::mem::replace(&mut self.cs.device_id, a.device_id.clone());
        self.cs.host_name = a.assigned_hub.clone();
        self.endpoint.host = a.assigned_hub.clone();
        *assigned = true;
        tracing::info!(hub = %a.assigned_hub, device_id = %a.device_id, "DPS assigned the gateway to a hub");
        if was != a.device_id {
            return Err(DpsError::DeviceIdChanged { was, now: a.device_id });
        }
        Ok(())
    }

    pub fn device_id(&self) -> &str {
        &self.cs.device_id
    }

    pub fn mqtt_options(&self) -> Result<MqttOptions, HubError> {
        let mut o = self.net.options(self.cs.client_id(), &self.endpoint)?;
        // X.509: the certificate is the proof; the password stays empty.
        let password = match &self.cs.key {
            Some(key) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                let expiry = now + self.sas_ttl.as_secs().max(1);
                let token = sas::token(&self.cs.resource(), key.expose(), expiry, None)
                    .map_err(|e| HubError::Config(format!("SAS token: {e}")))?;
                token.expose().to_string()
            }
            None => String::new(),
        };
        o.set_credentials(self.cs.username(&self.api_version), password);
        super::super::mqtt::common_options(&mut o, self.keep_alive);
        Ok(o)
    }

    /// Whether there is a SAS token to renew (not with X.509).
    pub fn uses_sas(&self) -> bool {
        self.cs.key.is_some()
    }

    /// Renew at 80 % of the token's life (the C SDK's choice), less the
    /// second lost by rounding the expiry to whole seconds.
    pub fn renew_after(&self) -> Duration {
        let ttl = self.sas_ttl.max(Duration::from_secs(1));
        ttl.mul_f64(0.8).saturating_sub(Duration::from_secs(1)).max(ttl / 2)
    }

    pub fn subscription(&self) -> String {
        propbag::devicebound_filter(&self.cs.device_id)
    }

    pub fn inbound(&self, topic: &str, payload: &[u8]) -> Option<Inbound> {
        let prefix = format!("devices/{}/messages/devicebound/", self.cs.device_id);
        if !topic.starts_with(&prefix) {
            return None;
        }
        let mut m = Inbound { body: payload.to_vec(), ..Inbound::default() };
        match propbag::parse_devicebound(topic, &self.cs.device_id) {
            Ok(p) => {
                m.id = p.message_id.filter(|s| !s.is_empty());
                m.correlation_id = p.correlation_id;
                m.expires_at = p.expiry.map(unix_ms);
                m.device = p.app.iter().find(|(k, _)| *k == self.device_property).and_then(|(_, v)| v.clone());
            }
            Err(e) => m.reject = Some(format!("malformed devicebound topic: {e}")),
        }
        if m.reject.is_none() && payload.len() > self.max_body {
            m.reject = Some(format!("body of {} bytes exceeds max_body = {}", payload.len(), self.max_body));
        }
        crate::hub::apply_missing_id(&mut m, self.missing_id, "no $.mid: the back end set no message id");
        Some(m)
    }

    pub fn report_topic(&self, message_id: &str, status: &str) -> String {
        let props = [
            ("$.cid".to_string(), Some(message_id.to_string())),
            ("$.ct".to_string(), Some("application/json".to_string())),
            ("$.ce".to_string(), Some("utf-8".to_string())),
            ("c2d-status".to_string(), Some(status.to_string())),
        ];
        propbag::events_topic(&self.cs.device_id, &props)
    }

    pub fn telemetry_topic(&self, device: &str, alerts: &[(String, bool)]) -> String {
        let mut props = vec![
            ("$.ct".to_string(), Some("application/json".to_string())),
            ("$.ce".to_string(), Some("utf-8".to_string())),
            ("device".to_string(), Some(device.to_string())),
        ];
        props.extend(alerts.iter().map(|(k, v)| (k.clone(), Some(v.to_string()))));
        propbag::events_topic(&self.cs.device_id, &props)
    }

    pub fn describe(&self) -> String {
        let how = match (self.endpoint.scheme, self.cs.key.is_some()) {
            (Scheme::Wss, true) => " over WebSockets",
            (Scheme::Wss, false) => " over WebSockets, X.509",
            (_, false) => ", X.509",
            _ => "",
        };
        let dps = if self.dps.is_some() { ", provisioned by DPS" } else { "" };
        format!(
            "IoT Hub {}:{} as device {}{how}{}{dps}",
            self.cs.host_name,
            self.endpoint.port,
            self.cs.device_id,
            self.net.describe_proxy()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialect(extra: &str) -> AzureDialect {
        let cfg: Config = toml::from_str(&format!(
            "[hub]\nkind = \"azure\"\nconnection_string = \"HostName=localhost;DeviceId=gw;SharedAccessKey=c2VjcmV0\"\ntransport = \"mqtt\"\nmax_body = 100\n{extra}"
        ))
        .unwrap();
        AzureDialect::from_config(&cfg).unwrap()
    }

    #[test]
    fn devicebound_messages_are_parsed_and_routed_by_property() {
        let d = dialect("");
        let m = d
            .inbound("devices/gw/messages/devicebound/%24.mid=m1&%24.cid=c1&%24.exp=2030-01-01T00%3A00%3A00.0000000Z&device=boiler", b"{}")
            .unwrap();
        assert_eq!(m.id.as_deref(), Some("m1"));
        assert_eq!(m.correlation_id.as_deref(), Some("c1"));
        assert_eq!(m.device.as_deref(), Some("boiler"));
        assert_eq!(m.expires_at, Some(1_893_456_000_000));
        assert!(m.reject.is_none());
    }

    #[test]
    fn a_message_without_mid_runs_or_is_rejected_as_missing_id_says() {
        let topic = "devices/gw/messages/devicebound/%24.to=%2Fdevices%2Fgw%2Fmessages%2Fdevicebound&device=boiler";
        let m = dialect("").inbound(topic, b"{}").unwrap();
        assert_eq!((m.id, m.reject, m.device.as_deref()), (None, None, Some("boiler")), "run by default");
        let reject = dialect("missing_id = \"reject\"");
        let m = reject.inbound(topic, b"{}").unwrap();
        assert_eq!(m.id, None);
        let why = m.reject.expect("rejected");
        assert!(why.contains("no $.mid") && why.contains("hub.missing_id = \"reject\""), "{why}");
        let m = reject.inbound("devices/gw/messages/devicebound/%24.mid=m1", b"{}").unwrap();
        assert_eq!(m.reject, None, "an id is all it takes");
        let m = reject.inbound("devices/gw/messages/devicebound/%zz=1", b"{}").unwrap();
        assert!(m.reject.unwrap().contains("malformed"), "an earlier reason stays");
    }

    #[test]
    fn malformed_topics_and_oversize_bodies_become_rejections_not_crashes() {
        let d = dialect("");
        for topic in [
            "devices/gw/messages/devicebound/%zz=1",
            "devices/gw/messages/devicebound/%24.mid=a&%24.mid=b",
            "devices/gw/messages/devicebound/%24.exp=yesterday",
            "devices/gw/messages/devicebound/=x",
        ] {
            let m = d.inbound(topic, b"{}").unwrap();
            assert!(m.reject.as_deref().is_some_and(|r| r.contains("malformed")), "{topic}: {m:?}");
        }
        let m = d.inbound("devices/gw/messages/devicebound/%24.mid=big", &[b'x'; 101]).unwrap();
        assert!(m.reject.unwrap().contains("exceeds max_body"));
        assert!(d.inbound("devices/other/messages/devicebound/x", b"").is_none(), "not our topic");
        assert!(d.inbound("$iothub/twin/res/200/?$rid=1", b"").is_none());
    }

    #[test]
    fn the_connection_string_comes_from_config_file_environment_or_systemd_credential() {
        use std::ffi::OsString;
        let tmp = tempfile::tempdir().unwrap();
        let cs = |dev: &str| format!("HostName=localhost;DeviceId={dev};SharedAccessKey=c2VjcmV0");
        let file = tmp.path().join("cs");
        std::fs::write(&file, format!("# comment\n\n{}\n", cs("from-file"))).unwrap();
        std::fs::write(tmp.path().join("connection-string"), cs("from-cred")).unwrap();
        let cfg = |extra: &str| -> Config { toml::from_str(&format!("[hub]\nkind = \"azure\"\n{extra}")).unwrap() };
        let none = |_: &str| None::<OsString>;
        let dir = tmp.path().as_os_str().to_owned();
        let env = |k: &str| match k {
            ENV_CONNECTION_STRING => Some(OsString::from(cs("from-env"))),
            "CREDENTIALS_DIRECTORY" => Some(dir.clone()),
            _ => None,
        };
        let cred_only = |k: &str| (k == "CREDENTIALS_DIRECTORY").then(|| dir.clone());
        let id = |r: Result<ConnectionString, HubError>| r.map(|c| c.device_id).map_err(|e| e.to_string());
        let inline = format!("connection_string = \"{}\"", cs("inline"));
        assert_eq!(id(load_connection_string_with(&cfg(&inline), env)), Ok("inline".into()));
        let from_file = format!("connection_string_file = \"{}\"", file.display());
        assert_eq!(id(load_connection_string_with(&cfg(&from_file), env)), Ok("from-file".into()));
        assert_eq!(id(load_connection_string_with(&cfg(""), env)), Ok("from-env".into()));
        assert_eq!(id(load_connection_string_with(&cfg(""), cred_only)), Ok("from-cred".into()));
        let e = id(load_connection_string_with(&cfg(""), none)).unwrap_err();
        assert!(e.contains("no connection string"), "{e}");
        let missing = "connection_string_file = \"/nonexistent/cs\"";
        assert!(id(load_connection_string_with(&cfg(missing), env))
            .unwrap_err()
            .contains("cannot read /nonexistent/cs"));
    }

    #[test]
    fn plain_mqtt_is_refused_towards_a_remote_hub() {
        let cfg: Config = toml::from_str(
            "[hub]\nkind = \"azure\"\nconnection_string = \"HostName=h.azure-devices.net;DeviceId=gw;SharedAccessKey=c2VjcmV0\"\ntransport = \"mqtt\"",
        )
        .unwrap();
        let e = AzureDialect::from_config(&cfg).err().expect("refused").to_string();
        assert!(e.contains("only allowed for a hub on this machine"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "no key in errors");
    }

    #[test]
    fn reports_and_telemetry_topics_carry_their_properties() {
        let d = dialect("");
        assert_eq!(
            d.report_topic("m1", "delivered"),
            "devices/gw/messages/events/%24.cid=m1&%24.ct=application%2Fjson&%24.ce=utf-8&c2d-status=delivered"
        );
        let t = d.telemetry_topic("boiler", &[("temperatureAlert".into(), true)]);
        assert!(t.ends_with("&device=boiler&temperatureAlert=true"), "{t}");
    }
}
