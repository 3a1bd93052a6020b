//! The emulator's MQTT side: one task per connection, speaking MQTT 3.1.1
//! through rumqttc's `mqttbytes` codec. CONNECT is checked like IoT Hub
//! does it (client id, username, SAS token); the connection is closed when
//! the token expires, when a second connection takes the same id, or (strict
//! mode) on a PUBACK out of order.

use super::Shared;
use crate::hub::azure::{propbag, sas};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, PubAck, SubAck, SubscribeReasonCode, UnsubAck};
use rumqttc::mqttbytes::QoS;
use rumqttc::Publish;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};

const MAX_PACKET: usize = 512 * 1024;

/// What the hub sends down a connection.
#[derive(Debug)]
pub enum ConnMsg {
    Deliver {
        pkid: u16,
        topic: String,
        body: Vec<u8>,
    },
    /// A QoS 0 PUBLISH (method requests).
    Publish0 {
        topic: String,
        body: Vec<u8>,
    },
    Close(&'static str),
}

pub(super) struct Wire<S> {
    pub(super) stream: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub(super) async fn read(&mut self) -> Result<Packet, String> {
        loop {
            match Packet::read(&mut self.buf, MAX_PACKET) {
                Ok(p) => return Ok(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(format!("bad packet: {e:?}")),
            }
            let n = self.stream.read_buf(&mut self.buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed by the client".into());
            }
        }
    }

    pub(super) async fn write(&mut self, p: Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        p.write(&mut out, MAX_PACKET).map_err(|e| format!("{e:?}"))?;
        self.stream.write_all(&out).await.map_err(|e| e.to_string())
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Twin topics a device may subscribe to.
const TWIN_FILTERS: [&str; 2] = [super::twin::RES_FILTER, super::twin::DESIRED_FILTER];

/// The longest IoT Hub lets a connection stay silent: 1.5 keep-alive
/// periods, at most 1767 s (also for 0, no keep-alive).
pub fn keep_alive_limit(keep_alive_s: u16) -> Duration {
    const MAX_MS: u64 = 1_767_000;
    match keep_alive_s {
        0 => Duration::from_millis(MAX_MS),
        k => Duration::from_millis((u64::from(k) * 1500).min(MAX_MS)),
    }
}

/// Serves one client connection until it ends. `peer`: what the TLS
/// handshake proved (nothing on the plain listener).
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, shared: Arc<Shared>, peer: super::x509::Peer) {
    let mut w = Wire { stream, buf: BytesMut::with_capacity(4096) };
    let connect = match timeout(Duration::from_secs(10), w.read()).await {
        Ok(Ok(Packet::Connect(c))) => c,
        _ => return,
    };
    // DPS shares the listeners; its clients name a registration, not a device.
    if connect.login.as_ref().is_some_and(|l| super::dps::dps_user(&l.username).is_some()) {
        return super::dps::serve(w, connect, shared, peer).await;
    }
    let device = connect.client_id.clone();
    let refuse = |code| Packet::ConnAck(ConnAck::new(code, false));
    let auth = shared.state().devices.get(&device).map(|d| (d.key.clone(), d.x509.clone()));
    let Some((key, x509)) = auth else {
        tracing::info!(%device, "emulator: unknown device id: refused");
        shared.refused();
        let _ = w.write(refuse(ConnectReturnCode::BadClientId)).await;
        return;
    };
    let host = &shared.host_name;
    let (user, token) = match &connect.login {
        Some(l) => (l.username.clone(), l.password.clone()),
        None => (String::new(), String::new()),
    };
    let user_ok = user.starts_with(&format!("{host}/{device}/?api-version="));
    let proof = match &x509 {
        // The certificate is the proof; no token, so nothing expires.
        Some(auth) => super::x509::check(auth, &device, &peer).map(|()| u64::MAX),
        None => sas::verify(&token, &key, &format!("{host}/devices/{device}"), now_unix()).map_err(|e| e.to_string()),
    };
    let expiry = match proof {
        Ok(e) if user_ok => e,
        Ok(_) => {
            tracing::info!(%device, "emulator: bad username: refused");
            shared.refused();
            let _ = w.write(refuse(ConnectReturnCode::BadUserNamePassword)).await;
            return;
        }
        Err(e) => {
            match x509 {
                Some(_) => tracing::info!(%device, error = %e, "emulator: X.509 certificate rejected: refused"),
                None => tracing::info!(%device, error = %e, "emulator: SAS token rejected: refused"),
            }
            shared.refused();
            let _ = w.write(refuse(ConnectReturnCode::NotAuthorized)).await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (conn, session_present) = shared.register(&device, tx, connect.clean_session);
    if w.write(Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, session_present))).await.is_err() {
        shared.unregister(&device, conn);
        return;
    }
    tracing::info!(%device, conn, session_present, "emulator: device connected");
    // A resumed session may hold deliverable messages at once.
    shared.pump();
    let token_left = Duration::from_secs(expiry.saturating_sub(now_unix()));
    let expire = sleep(token_left);
    tokio::pin!(expire);
    // IoT Hub closes a connection silent for 1.5 keep-alive periods (at
    // most 1767 s, the longest keep-alive it allows).
    let silence = keep_alive_limit(connect.keep_alive);
    let idle = sleep(silence);
    tokio::pin!(idle);
    let why = loop {
        tokio::select! {
            _ = &mut expire => break "SAS token expired".to_string(),
            _ = &mut idle => break format!("nothing from the client for {} s (1.5 keep-alive periods)", silence.as_secs()),
            msg = rx.recv() => match msg {
                Some(ConnMsg::Deliver { pkid, topic, body }) => {
                    let probed = shared.probing().then(|| topic.clone());
                    let mut p = Publish::new(topic, QoS::AtLeastOnce, body);
                    p.pkid = pkid;
                    if let Err(e) = w.write(Packet::Publish(p)).await { break e; }
                    if let Some(t) = probed { shared.probe().publish(conn, pkid, &t, std::time::Instant::now()); }
                }
                Some(ConnMsg::Publish0 { topic, body }) => {
                    if let Err(e) = w.write(Packet::Publish(Publish::new(topic, QoS::AtMostOnce, body))).await { break e; }
                }
                Some(ConnMsg::Close(why)) => break why.to_string(),
                None => break "hub stopped".into(),
            },
            p = w.read() => {
                idle.as_mut().reset(tokio::time::Instant::now() + silence);
                match p {
                Err(e) => break e,
                Ok(Packet::Subscribe(s)) => {
                    let mut codes = Vec::new();
                    let mut unsupported = None;
                    for f in &s.filters {
                        if f.path == propbag::devicebound_filter(&device) {
                            shared.subscribed(&device, conn);
                            // QoS 0 asked, QoS 0 granted.
                            let qos = if f.qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
                            codes.push(SubscribeReasonCode::Success(qos));
                        } else if f.path == super::methods::FILTER {
                            shared.methods_subscribed(&device, conn);
                            codes.push(SubscribeReasonCode::Success(QoS::AtMostOnce));
                        } else if TWIN_FILTERS.contains(&f.path.as_str()) {
                            shared.twin_subscribed(&device, conn, &f.path);
                            codes.push(SubscribeReasonCode::Success(QoS::AtMostOnce));
                        } else {
                            unsupported = Some(f.path.clone());
                        }
                    }
                    if let Some(topic) = unsupported {
                        break format!("subscription to a topic IoT Hub does not support: {topic}");
                    }
                    if let Err(e) = w.write(Packet::SubAck(SubAck::new(s.pkid, codes))).await { break e; }
                    shared.pump();
                }
                Ok(Packet::Unsubscribe(u)) => {
                    if let Err(e) = w.write(Packet::UnsubAck(UnsubAck::new(u.pkid))).await { break e; }
                }
                Ok(Packet::Publish(p)) if p.qos == QoS::ExactlyOnce => {
                    break format!("a QoS 2 PUBLISH (IoT Hub does not support QoS 2): {}", p.topic);
                }
                Ok(Packet::Publish(p)) if p.topic.starts_with(super::methods::RESPONSE_PREFIX) => {
                    if let Err(e) = shared.method_answer(&device, &p.topic, &p.payload) { break e; }
                    if p.qos != QoS::AtMostOnce {
                        if let Err(e) = w.write(Packet::PubAck(PubAck::new(p.pkid))).await { break e; }
                    }
                }
                Ok(Packet::Publish(p)) if p.topic.starts_with("$iothub/twin/") => {
                    match shared.twin_request(&device, conn, &p.topic, &p.payload) {
                        Err(e) => break e,
                        Ok(answer) => {
                            if p.qos != QoS::AtMostOnce {
                                if let Err(e) = w.write(Packet::PubAck(PubAck::new(p.pkid))).await { break e; }
                            }
                            if let Some((topic, body)) = answer {
                                if let Err(e) = w.write(Packet::Publish(Publish::new(topic, QoS::AtMostOnce, body))).await { break e; }
                            }
                        }
                    }
                }
                Ok(Packet::Publish(p)) => {
                    let prefix = format!("devices/{device}/messages/events/");
                    let Some(bag) = p.topic.strip_prefix(&prefix) else {
                        break format!("publish to a topic IoT Hub does not accept: {}", p.topic);
                    };
                    match propbag::parse(bag) {
                        Ok(props) => shared.state().record_event(&device, props, &p.payload, SystemTime::now()),
                        Err(e) => break format!("malformed property bag in a D2C topic: {e}"),
                    }
                    if p.qos != QoS::AtMostOnce {
                        if let Err(e) = w.write(Packet::PubAck(PubAck::new(p.pkid))).await { break e; }
                    }
                }
                Ok(Packet::PubAck(a)) => {
                    if shared.probing() { shared.probe().puback(conn, a.pkid, std::time::Instant::now()); }
                    if !shared.complete(&device, conn, a.pkid) {
                        break format!("PUBACK {} out of order (strict mode)", a.pkid);
                    }
                }
                Ok(Packet::PingReq) => { if let Err(e) = w.write(Packet::PingResp).await { break e; } }
                Ok(Packet::Disconnect) => break "client disconnected".into(),
                Ok(_) => {}
                }
            }
        }
    };
    tracing::info!(%device, conn, reason = %why, "emulator: connection closed");
    let _ = w.stream.shutdown().await;
    shared.unregister(&device, conn);
}

#[cfg(test)]
mod tests {
    #[test]
    fn keep_alive_limits() {
        use super::keep_alive_limit as l;
        use std::time::Duration;
        assert_eq!(l(60), Duration::from_secs(90));
        assert_eq!(l(1), Duration::from_millis(1500));
        assert_eq!(l(0), Duration::from_secs(1767));
        assert_eq!(l(1200), Duration::from_secs(1767));
        assert_eq!(l(u16::MAX), Duration::from_secs(1767));
    }
}
