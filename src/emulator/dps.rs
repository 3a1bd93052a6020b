//! A Device Provisioning Service at the emulator, on the same listeners as
//! the hub (Microsoft's SDK knows only 8883 and 443 for both), told apart by
//! the CONNECT's user name `{idScope}/registrations/{registrationId}/...`.
//! Enrollments: individual (a symmetric key, or an X.509 thumbprint) and
//! groups (a key from which each device's key is derived; or the emulator's
//! trusted CA, `--x509-ca`, for certificates whose common name is the
//! registration id). A registered device joins the emulator's hub under its
//! registration id, with the credentials it attested with.

use super::mqtt::Wire;
use super::x509::{Peer, X509Auth};
use super::Shared;
use crate::hub::azure::sas;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, PubAck, SubAck, SubscribeReasonCode};
use rumqttc::mqttbytes::QoS;
use rumqttc::Publish;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};

/// An individual enrollment's attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrollment {
    /// Symmetric key (base64).
    Key(String),
    /// An X.509 certificate by its SHA-256 thumbprint.
    X509(String),
}

#[derive(Debug, Default)]
pub struct DpsState {
    /// DPS answers only when an id scope is set.
    pub id_scope: Option<String>,
    pub individual: HashMap<String, Enrollment>,
    /// Enrollment groups: (name, key base64).
    pub groups: Vec<(String, String)>,
    /// The device id a registration is assigned (as a custom allocation
    /// policy may give); absent: the registration id.
    pub device_ids: HashMap<String, String>,
    /// Operation id → (registration id, device id).
    pub(super) operations: HashMap<String, (String, String)>,
    pub(super) next_op: u64,
    /// Registrations completed (a test sees a device provision again).
    pub registrations: u64,
}

/// `{idScope}/registrations/{registrationId}/...` → (scope, registration id).
pub fn dps_user(user: &str) -> Option<(&str, &str)> {
    let (scope, rest) = user.split_once("/registrations/")?;
    let reg = rest.split('/').next()?;
    (!scope.is_empty() && !scope.contains('/') && !reg.is_empty()).then_some((scope, reg))
}

/// How the device will authenticate at the hub once registered.
enum Credential {
    Key(String),
    X509(X509Auth),
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Checks the CONNECT's proof against the enrollments.
fn attest(st: &DpsState, scope: &str, reg: &str, token: &str, peer: &Peer) -> Result<Credential, String> {
    let resource = format!("{scope}/registrations/{reg}");
    let sas_ok = |key: &str| sas::verify(token, key, &resource, now_unix()).is_ok();
    match st.individual.get(reg) {
        Some(Enrollment::Key(k)) if sas_ok(k) => return Ok(Credential::Key(k.clone())),
        Some(Enrollment::Key(_)) => return Err("the SAS token is not signed with the enrollment's key".into()),
        Some(Enrollment::X509(t)) => {
            return match &peer.thumbprint {
                Some(got) if got == t => Ok(Credential::X509(X509Auth::Thumbprint(t.clone()))),
                _ => Err("the client certificate is not the enrollment's".into()),
            }
        }
        None => {}
    }
    for (name, group_key) in &st.groups {
        if let Ok(derived) = sas::sign(group_key, reg) {
            if sas_ok(&derived) {
                tracing::info!(registration = %reg, group = %name, "emulator: DPS: a member of an enrollment group");
                return Ok(Credential::Key(derived));
            }
        }
    }
    if peer.ca_signed_cn.as_deref() == Some(reg) {
        return Ok(Credential::X509(X509Auth::Ca));
    }
    Err("no enrollment matches (individual key or certificate, group key, or the trusted CA)".into())
}

/// Serves one DPS client after its CONNECT (already read).
pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut w: Wire<S>,
    connect: rumqttc::mqttbytes::v4::Connect,
    shared: Arc<Shared>,
    peer: Peer,
) {
    let (user, token) = match &connect.login {
        Some(l) => (l.username.clone(), l.password.clone()),
        None => (String::new(), String::new()),
    };
    let Some((scope, reg)) = dps_user(&user) else { return };
    let (scope, reg) = (scope.to_string(), reg.to_string());
    let verdict = {
        let st = shared.dps();
        match &st.id_scope {
            Some(s) if *s == scope && connect.client_id == reg => attest(&st, &scope, &reg, &token, &peer),
            Some(s) if *s != scope => Err(format!("unknown id scope {scope:?}")),
            Some(_) => Err("the client id is not the registration id".into()),
            None => Err("no DPS here (the emulator was started without --id-scope)".into()),
        }
    };
    let credential = match verdict {
        Ok(c) => c,
        Err(why) => {
            tracing::info!(registration = %reg, reason = %why, "emulator: DPS registration refused");
            shared.refused();
            let _ = w.write(Packet::ConnAck(ConnAck::new(ConnectReturnCode::NotAuthorized, false))).await;
            return;
        }
    };
    if w.write(Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false))).await.is_err() {
        return;
    }
    let mut credential = Some(credential);
    loop {
        let p = match tokio::time::timeout(Duration::from_secs(120), w.read()).await {
            Ok(Ok(p)) => p,
            _ => return,
        };
        let reply = match p {
            Packet::Subscribe(s) => {
                let codes = s.filters.iter().map(|_| SubscribeReasonCode::Success(QoS::AtLeastOnce)).collect();
                w.write(Packet::SubAck(SubAck::new(s.pkid, codes))).await
            }
            Packet::Publish(p) => {
                if p.qos != QoS::AtMostOnce && w.write(Packet::PubAck(PubAck::new(p.pkid))).await.is_err() {
                    return;
                }
                let (status, rid, body) = request(&shared, &reg, &p.topic, &p.payload, &mut credential);
                let topic = format!("$dps/registrations/res/{status}/?$rid={rid}&retry-after=1");
                w.write(Packet::Publish(Publish::new(topic, QoS::AtMostOnce, body.to_string()))).await
            }
            Packet::PingReq => w.write(Packet::PingResp).await,
            Packet::Disconnect => return,
            _ => Ok(()),
        };
        if reply.is_err() {
            return;
        }
    }
}

/// One DPS request: register (202, assigning) or an operation's status
/// (200, assigned). Returns (status, request id, JSON body).
fn request(
    shared: &Shared,
    reg: &str,
    topic: &str,
    payload: &[u8],
    credential: &mut Option<Credential>,
) -> (u16, String, serde_json::Value) {
    let query = |k: &str| {
        topic.split_once('?').and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix(k)).map(str::to_string))
    };
    let rid = query("$rid=").unwrap_or_default();
    let error =
        |status: u16, msg: &str| (status, rid.clone(), serde_json::json!({"errorCode": status, "message": msg}));
    if topic.starts_with("$dps/registrations/PUT/iotdps-register/") {
        let named = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("registrationId").and_then(|r| r.as_str()).map(str::to_string));
        if named.as_deref().is_some_and(|n| n != reg) {
            return error(400, "registrationId is not the connection's registration id");
        }
        // The device joins the hub (again) with the credentials it attested with.
        let cred = credential.take().unwrap_or(Credential::Key(String::new()));
        let device = shared.dps().device_ids.get(reg).cloned().unwrap_or_else(|| reg.to_string());
        {
            let mut st = shared.state();
            let d = st.devices.entry(device.clone()).or_default();
            match cred {
                Credential::Key(k) => (d.key, d.x509) = (k, None),
                Credential::X509(a) => (d.key, d.x509) = (String::new(), Some(a)),
            }
        }
        let mut st = shared.dps();
        st.next_op += 1;
        st.registrations += 1;
        let op = format!("4.{:016x}.{}", st.next_op, reg);
        st.operations.insert(op.clone(), (reg.to_string(), device));
        tracing::info!(registration = %reg, "emulator: DPS registration");
        return (202, rid, serde_json::json!({"operationId": op, "status": "assigning"}));
    }
    if topic.starts_with("$dps/registrations/GET/iotdps-get-operationstatus/") {
        let op = query("operationId=").unwrap_or_default();
        let found = shared.dps().operations.get(&op).cloned();
        return match found {
            Some((r, device)) if r == reg => {
                let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
                (
                    200,
                    rid,
                    serde_json::json!({
                        "operationId": op,
                        "status": "assigned",
                        "registrationState": {
                            "registrationId": reg,
                            "createdDateTimeUtc": now,
                            "assignedHub": shared.host_name,
                            "deviceId": device,
                            "status": "assigned",
                            "substatus": "initialAssignment",
                            "lastUpdatedDateTimeUtc": now,
                            "etag": "\"00000000-0000-0000-0000-000000000000\"",
                        }
                    }),
                )
            }
            _ => error(404, "unknown operation"),
        };
    }
    error(404, "unknown DPS topic")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_name_scope_and_registration() {
        assert_eq!(dps_user("0ne00ABC/registrations/dev-1/api-version=2019-03-31"), Some(("0ne00ABC", "dev-1")));
        assert_eq!(
            dps_user("0ne00ABC/registrations/dev-1/api-version=2019-03-31&ClientVersion=py"),
            Some(("0ne00ABC", "dev-1"))
        );
        assert_eq!(dps_user("localhost/gw/?api-version=2021-04-12"), None);
        assert_eq!(dps_user("/registrations/x/"), None);
    }

    #[test]
    fn enrollments_attest_keys_group_members_and_certificates() {
        let mut st = DpsState { id_scope: Some("s".into()), ..DpsState::default() };
        let key = "cGFzc3dvcmQ=";
        st.individual.insert("one".into(), Enrollment::Key(key.into()));
        st.groups.push(("g".into(), "Z3JvdXAta2V5LWJhc2U2NA==".into()));
        let token = |k: &str, reg: &str| {
            sas::token(&format!("s/registrations/{reg}"), k, now_unix() + 60, Some("registration"))
                .unwrap()
                .expose()
                .to_string()
        };
        let none = Peer::default();
        assert!(matches!(attest(&st, "s", "one", &token(key, "one"), &none), Ok(Credential::Key(k)) if k == key));
        assert!(attest(&st, "s", "one", &token("b3RoZXI=", "one"), &none).is_err());
        let derived = sas::sign("Z3JvdXAta2V5LWJhc2U2NA==", "member-7").unwrap();
        assert!(
            matches!(attest(&st, "s", "member-7", &token(&derived, "member-7"), &none), Ok(Credential::Key(k)) if k == derived)
        );
        assert!(attest(&st, "s", "member-7", &token(&derived, "member-8"), &none).is_err(), "another member's token");
        let ca_peer = Peer { thumbprint: Some("AB".into()), ca_signed_cn: Some("cert-dev".into()) };
        assert!(matches!(attest(&st, "s", "cert-dev", "", &ca_peer), Ok(Credential::X509(X509Auth::Ca))));
        assert!(attest(&st, "s", "other", "", &ca_peer).is_err());
        st.individual.insert("t".into(), Enrollment::X509("AB".into()));
        assert!(attest(&st, "s", "t", "", &ca_peer).is_ok());
        assert!(attest(&st, "s", "t", "", &none).is_err());
    }
}
