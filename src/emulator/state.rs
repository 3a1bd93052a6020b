//! The emulated hub's state: devices, their C2D queues (at most 50 each),
//! message locks and redelivery, TTL, delivery feedback and the D2C event
//! store. Pure bookkeeping under one mutex; time is passed in. The MQTT side
//! (`mqtt.rs`) turns it into packets.

use crate::hub::azure::propbag::C2dProperties;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

pub const QUEUE_LIMIT: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum C2dState {
    /// Waiting to be delivered (again).
    Enqueued,
    /// Delivered on connection `conn` as packet `pkid`, until the lock ends.
    Locked,
}

#[derive(Debug, Clone)]
pub struct C2d {
    pub props: C2dProperties,
    pub body: Vec<u8>,
    pub enqueued: SystemTime,
    pub expires: SystemTime,
    pub state: C2dState,
    pub lock: Option<(u64, u16, SystemTime)>,
    pub deliveries: u32,
    /// When its current lock's PUBLISH was sent, in the hub's send order:
    /// strict mode judges a PUBACK's order by this, not by queue order (a
    /// message redelivered after its lock ran out goes after those sent
    /// before it).
    pub sent: u64,
}

impl C2d {
    /// The id the back end set; `None` when it set none (IoT Hub then
    /// sends no `$.mid`, and feedback about it names no message).
    pub fn id(&self) -> Option<&str> {
        self.props.message_id.as_deref()
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Feedback {
    /// The message id the back end set; empty when it set none.
    pub original_message_id: String,
    pub device_id: String,
    pub status_code: String,
    pub description: String,
    pub enqueued_time_utc: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub device_id: String,
    pub properties: Vec<(String, Option<String>)>,
    /// Body as UTF-8 text when it is, else `None` (see `body_base64`).
    pub body: Option<String>,
    pub body_base64: String,
    pub received_time_utc: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueuedView {
    /// `null` when the back end set no message id.
    pub message_id: Option<String>,
    pub state: C2dState,
    pub delivery_count: u32,
    pub enqueued_time_utc: String,
    pub expiry_time_utc: String,
}

#[derive(Debug, Default)]
pub struct Device {
    /// The SAS key (base64); empty for an X.509 device.
    pub key: String,
    /// How an X.509 device is recognised (no SAS then).
    pub x509: Option<super::x509::X509Auth>,
    pub queue: VecDeque<C2d>,
    /// Live connection id, if connected.
    pub conn: Option<u64>,
    /// Subscribed to its devicebound topic (part of the session).
    pub subscribed: bool,
    /// A session is stored (the last connection used CleanSession = 0).
    pub has_session: bool,
    /// The connection that subscribed to method requests (they reach a
    /// device only on it).
    pub methods_conn: Option<u64>,
    /// Its twin, and the connections subscribed to twin answers and to
    /// desired pushes.
    pub twin: super::twin::Twin,
    pub twin_res_conn: Option<u64>,
    pub desired_conn: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("device {0} is not registered")]
    UnknownDevice(String),
    #[error("the queue of device {0} is full ({QUEUE_LIMIT} messages)")]
    QueueFull(String),
    #[error("the body has {0} bytes; IoT Hub accepts at most 65536")]
    TooLarge(usize),
}

/// What a connection must send after a state change.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub conn: u64,
    pub pkid: u16,
    pub topic: String,
    pub body: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct HubState {
    pub devices: HashMap<String, Device>,
    pub feedback: Vec<Feedback>,
    pub events: Vec<Event>,
    next_pkid: HashMap<u64, u16>,
    /// Counts PUBLISHes sent (see [`C2d::sent`]).
    sends: u64,
    pub lock_timeout: Duration,
}

fn utc(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

impl HubState {
    pub fn new(lock_timeout: Duration) -> Self {
        HubState { lock_timeout, ..HubState::default() }
    }

    fn feedback_for(&mut self, device: &str, m: &C2d, status: &str, description: &str) {
        let wants = match m.props.ack.as_deref().unwrap_or("none") {
            "full" => true,
            "positive" => status == "Success",
            "negative" => status != "Success",
            _ => false,
        };
        if wants {
            self.feedback.push(Feedback {
                original_message_id: m.id().unwrap_or_default().to_string(),
                device_id: device.to_string(),
                status_code: status.to_string(),
                description: description.to_string(),
                enqueued_time_utc: utc(SystemTime::now()),
            });
        }
    }

    /// Queues a message as the back end sent it. Like IoT Hub, the
    /// property bag carries `$.mid` and `$.exp` only when the back end set
    /// them (`props.message_id`, `props.expiry`); without an expiry the
    /// message still ends after `default_ttl`. Returns the message id, if any.
    pub fn enqueue(
        &mut self,
        device: &str,
        mut props: C2dProperties,
        body: Vec<u8>,
        default_ttl: Duration,
        now: SystemTime,
    ) -> Result<Option<String>, SendError> {
        let d = self.devices.get_mut(device).ok_or_else(|| SendError::UnknownDevice(device.into()))?;
        if d.queue.len() >= QUEUE_LIMIT {
            return Err(SendError::QueueFull(device.into()));
        }
        props.message_id = props.message_id.filter(|s| !s.is_empty());
        let id = props.message_id.clone();
        props.to = Some(format!("/devices/{device}/messages/devicebound"));
        let expires = props.expiry.unwrap_or(now + default_ttl);
        d.queue.push_back(C2d {
            props,
            body,
            enqueued: now,
            expires,
            state: C2dState::Enqueued,
            lock: None,
            deliveries: 0,
            sent: 0,
        });
        Ok(id)
    }

    /// Assigns every deliverable message of connected, subscribed devices
    /// to its connection, with a fresh packet id and a lock.
    pub fn pump(&mut self, now: SystemTime) -> Vec<Delivery> {
        let lock = self.lock_timeout;
        let mut out = Vec::new();
        let mut expired = Vec::new();
        for (name, d) in self.devices.iter_mut() {
            // Expiry and lock ends first.
            let mut keep = VecDeque::new();
            for mut m in d.queue.drain(..) {
                if m.expires <= now {
                    expired.push((name.clone(), m));
                    continue;
                }
                // A lock that runs out does not count toward the max
                // delivery count (only an abandon does, and MQTT has none):
                // the message goes again until its TTL ends.
                if let Some((_, _, until)) = m.lock {
                    if until <= now {
                        m.lock = None;
                        m.state = C2dState::Enqueued;
                    }
                }
                keep.push_back(m);
            }
            d.queue = keep;
            let (Some(conn), true) = (d.conn, d.subscribed) else { continue };
            for m in d.queue.iter_mut().filter(|m| m.state == C2dState::Enqueued) {
                let pk = self.next_pkid.entry(conn).or_insert(0);
                *pk = if *pk == u16::MAX { 1 } else { *pk + 1 };
                m.state = C2dState::Locked;
                m.lock = Some((conn, *pk, now + lock));
                m.deliveries += 1;
                self.sends += 1;
                m.sent = self.sends;
                out.push(Delivery {
                    conn,
                    pkid: *pk,
                    topic: crate::hub::azure::propbag::encode_devicebound(name, &m.props),
                    body: m.body.clone(),
                });
            }
        }
        for (dev, m) in expired {
            self.feedback_for(&dev, &m, "Expired", "Message expired");
        }
        out
    }

    /// A PUBACK from `conn`. Returns false when strict ordering is broken:
    /// the packet is not the oldest one outstanding on that connection.
    pub fn complete(&mut self, device: &str, conn: u64, pkid: u16, strict: bool) -> bool {
        let Some(d) = self.devices.get_mut(device) else { return true };
        // In the order their PUBLISHes went out on this connection.
        let mut outstanding: Vec<(usize, u16, u64)> = d
            .queue
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.lock.filter(|(c, _, _)| *c == conn).map(|(_, p, _)| (i, p, m.sent)))
            .collect();
        outstanding.sort_by_key(|(_, _, sent)| *sent);
        let Some(pos) = outstanding.iter().position(|(_, p, _)| *p == pkid) else {
            return true; // unknown or stale packet id: ignored, like IoT Hub
        };
        if strict && pos != 0 {
            return false;
        }
        let idx = outstanding[pos].0;
        let m = d.queue.remove(idx).expect("index from enumerate");
        self.feedback_for(device, &m, "Success", "Success");
        true
    }

    /// A connection ended: what it held becomes deliverable again.
    pub fn disconnected(&mut self, device: &str, conn: u64) {
        if let Some(d) = self.devices.get_mut(device) {
            for c in [&mut d.methods_conn, &mut d.twin_res_conn, &mut d.desired_conn] {
                if *c == Some(conn) {
                    *c = None;
                }
            }
            if d.conn == Some(conn) {
                d.conn = None;
                // A clean session ends with its connection; a persistent
                // one keeps its subscription (IoT Hub, MQTT 3.1.1 §3.1.2.4).
                if !d.has_session {
                    d.subscribed = false;
                }
            }
            for m in d.queue.iter_mut().filter(|m| m.lock.is_some_and(|(c, _, _)| c == conn)) {
                m.lock = None;
                m.state = C2dState::Enqueued;
            }
        }
        self.next_pkid.remove(&conn);
    }

    pub fn purge(&mut self, device: &str) -> Result<usize, SendError> {
        let d = self.devices.get_mut(device).ok_or_else(|| SendError::UnknownDevice(device.into()))?;
        let gone: Vec<C2d> = d.queue.drain(..).collect();
        let n = gone.len();
        for m in gone {
            self.feedback_for(device, &m, "Purged", "Message purged");
        }
        Ok(n)
    }

    pub fn queue_view(&self, device: &str) -> Result<Vec<QueuedView>, SendError> {
        let d = self.devices.get(device).ok_or_else(|| SendError::UnknownDevice(device.into()))?;
        Ok(d.queue
            .iter()
            .map(|m| QueuedView {
                message_id: m.id().map(str::to_string),
                state: m.state,
                delivery_count: m.deliveries,
                enqueued_time_utc: utc(m.enqueued),
                expiry_time_utc: utc(m.expires),
            })
            .collect())
    }

    pub fn record_event(
        &mut self,
        device: &str,
        properties: Vec<(String, Option<String>)>,
        body: &[u8],
        now: SystemTime,
    ) {
        use base64::Engine;
        self.events.push(Event {
            device_id: device.to_string(),
            properties,
            body: std::str::from_utf8(body).ok().map(str::to_string),
            body_base64: base64::engine::general_purpose::STANDARD.encode(body),
            received_time_utc: utc(now),
        });
    }
}

/// A message id like IoT Hub's (a random UUID v4).
pub fn new_id() -> String {
    let b: [u8; 16] = std::array::from_fn(|i| match i {
        6 => (fastrand::u8(..) & 0x0f) | 0x40,
        8 => (fastrand::u8(..) & 0x3f) | 0x80,
        _ => fastrand::u8(..),
    });
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> (HubState, SystemTime) {
        let mut h = HubState::new(Duration::from_secs(60));
        h.devices.insert("d".into(), Device { key: "k".into(), ..Device::default() });
        (h, SystemTime::now())
    }

    /// Device "d" connected (connection 1) and subscribed to C2D.
    fn online(h: &mut HubState) {
        let d = h.devices.get_mut("d").unwrap();
        d.conn = Some(1);
        d.subscribed = true;
    }

    fn props(id: &str, ack: &str) -> C2dProperties {
        C2dProperties { message_id: Some(id.into()), ack: Some(ack.into()), ..C2dProperties::default() }
    }

    #[test]
    fn delivers_to_a_subscribed_connection_and_completes_with_feedback() {
        let (mut h, now) = hub();
        h.enqueue("d", props("m1", "full"), b"x".to_vec(), Duration::from_secs(3600), now).unwrap();
        assert!(h.pump(now).is_empty(), "not connected");
        online(&mut h);
        let out = h.pump(now);
        assert_eq!(out.len(), 1);
        assert!(out[0].topic.starts_with("devices/d/messages/devicebound/%24.mid=m1"), "{}", out[0].topic);
        assert!(h.complete("d", 1, out[0].pkid, true));
        assert_eq!(h.feedback[0].status_code, "Success");
        assert!(h.devices["d"].queue.is_empty());
    }

    #[test]
    fn without_message_id_or_expiry_the_bag_has_neither_and_feedback_names_no_message() {
        let (mut h, now) = hub();
        let props = C2dProperties { ack: Some("full".into()), ..C2dProperties::default() };
        assert_eq!(h.enqueue("d", props.clone(), b"x".to_vec(), Duration::from_secs(60), now), Ok(None));
        assert_eq!(h.queue_view("d").unwrap()[0].message_id, None);
        online(&mut h);
        let out = h.pump(now);
        assert_eq!(out.len(), 1);
        assert!(!out[0].topic.contains("%24.mid") && !out[0].topic.contains("%24.exp"), "{}", out[0].topic);
        assert!(out[0].topic.contains("%24.to=") && out[0].topic.contains("iothub-ack=full"), "{}", out[0].topic);
        assert!(h.complete("d", 1, out[0].pkid, true));
        assert_eq!(h.feedback[0].original_message_id, "");
        assert_eq!(h.feedback[0].status_code, "Success");
        // The default TTL still applies.
        h.enqueue("d", props, vec![], Duration::from_secs(60), now).unwrap();
        h.disconnected("d", 1);
        assert!(h.pump(now + Duration::from_secs(61)).is_empty());
        assert_eq!(h.feedback[1].status_code, "Expired");
        assert_eq!(h.feedback[1].original_message_id, "");
    }

    #[test]
    fn strict_order_follows_the_order_publishes_were_sent_not_the_queue() {
        let (mut h, now) = hub();
        let lock = Duration::from_secs(60);
        h.enqueue("d", props("a", "none"), vec![], Duration::from_secs(3600), now).unwrap();
        online(&mut h);
        let a1 = h.pump(now)[0].pkid;
        let half = now + lock / 2;
        h.enqueue("d", props("b", "none"), vec![], Duration::from_secs(3600), half).unwrap();
        let b = h.pump(half)[0].pkid;
        // a's lock runs out: it goes again, after b on the wire.
        let later = now + lock + Duration::from_secs(1);
        let again = h.pump(later);
        assert_eq!(again.len(), 1, "only a's lock ran out");
        let a2 = again[0].pkid;
        assert!(a2 != a1 && a2 != b);
        // The client acks in the order it received: a's first copy (stale:
        // ignored), b, then a's second copy. Nothing is out of order.
        assert!(h.complete("d", 1, a1, true), "a stale packet id is ignored");
        assert!(h.complete("d", 1, b, true), "b went out before a's second copy");
        assert!(h.complete("d", 1, a2, true));
        assert!(h.devices["d"].queue.is_empty());
    }

    #[test]
    fn strict_mode_refuses_out_of_order_acks() {
        let (mut h, now) = hub();
        for id in ["a", "b"] {
            h.enqueue("d", props(id, "none"), vec![], Duration::from_secs(60), now).unwrap();
        }
        online(&mut h);
        let out = h.pump(now);
        assert!(!h.complete("d", 1, out[1].pkid, true));
        assert!(h.complete("d", 1, out[0].pkid, true));
        assert!(h.complete("d", 1, out[1].pkid, true));
    }

    #[test]
    fn lock_expiry_redelivers_and_ttl_expires_with_feedback() {
        let (mut h, now) = hub();
        h.enqueue("d", props("a", "full"), vec![], Duration::from_secs(120), now).unwrap();
        online(&mut h);
        assert_eq!(h.pump(now).len(), 1);
        assert!(h.pump(now + Duration::from_secs(30)).is_empty(), "locked");
        let again = h.pump(now + Duration::from_secs(61));
        assert_eq!(again.len(), 1, "redelivered after the lock");
        assert!(h.pump(now + Duration::from_secs(121)).is_empty());
        assert_eq!(h.feedback.last().unwrap().status_code, "Expired");
    }

    #[test]
    fn a_lock_that_runs_out_does_not_count_toward_the_max_delivery_count() {
        let (mut h, now) = hub();
        h.enqueue("d", props("a", "full"), vec![], Duration::from_secs(3600), now).unwrap();
        online(&mut h);
        // Twenty locks run out (IoT Hub's max delivery count is 10): it goes
        // again each time, and no DeliveryCountExceeded.
        for n in 0..20u64 {
            assert_eq!(h.pump(now + Duration::from_secs(61 * n)).len(), 1, "delivery {n}");
        }
        assert!(h.feedback.is_empty(), "{:?}", h.feedback);
        assert_eq!(h.devices["d"].queue.len(), 1);
    }

    #[test]
    fn queue_limit_and_unknown_device() {
        let (mut h, now) = hub();
        for i in 0..QUEUE_LIMIT {
            h.enqueue("d", props(&i.to_string(), "none"), vec![], Duration::from_secs(60), now).unwrap();
        }
        assert_eq!(
            h.enqueue("d", props("x", "none"), vec![], Duration::from_secs(60), now),
            Err(SendError::QueueFull("d".into()))
        );
        assert_eq!(
            h.enqueue("z", props("x", "none"), vec![], Duration::from_secs(60), now),
            Err(SendError::UnknownDevice("z".into()))
        );
        assert_eq!(h.purge("d").unwrap(), QUEUE_LIMIT);
    }
}
