//! Optional timestamps of the hub side of each C2D message, for `bench`:
//! when the emulator wrote a message's PUBLISH to the socket and when its
//! PUBACK came back. Off by default; one atomic load per packet when off.

use std::collections::HashMap;
use std::time::Instant;

#[derive(Debug, Default)]
pub struct Probe {
    /// (connection, packet id) → message id, while the PUBLISH is unacked.
    inflight: HashMap<(u64, u16), String>,
    /// Message id → when its (last) PUBLISH was written.
    pub published: HashMap<String, Instant>,
    /// Message id → when its PUBACK arrived.
    pub acked: HashMap<String, Instant>,
}

impl Probe {
    /// A PUBLISH on `topic` was written as `pkid` on connection `conn`.
    pub fn publish(&mut self, conn: u64, pkid: u16, topic: &str, at: Instant) {
        let Some(id) = message_id(topic) else { return };
        self.published.insert(id.clone(), at);
        self.inflight.insert((conn, pkid), id);
    }

    /// A PUBACK for `pkid` arrived on connection `conn`.
    pub fn puback(&mut self, conn: u64, pkid: u16, at: Instant) {
        if let Some(id) = self.inflight.remove(&(conn, pkid)) {
            self.acked.insert(id, at);
        }
    }
}

/// `$.mid` of a devicebound topic.
fn message_id(topic: &str) -> Option<String> {
    let bag = topic.split_once("/messages/devicebound/")?.1;
    let props = crate::hub::azure::propbag::parse(bag).ok()?;
    props.into_iter().find(|(k, _)| k == "$.mid").and_then(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_and_puback_are_matched_by_connection_and_packet_id() {
        let mut p = Probe::default();
        let t = Instant::now();
        p.publish(1, 7, "devices/gw/messages/devicebound/%24.mid=m42&device=b", t);
        p.puback(2, 7, t);
        assert!(p.acked.is_empty(), "other connection");
        p.puback(1, 7, t);
        assert_eq!(p.published.get("m42"), Some(&t));
        assert_eq!(p.acked.get("m42"), Some(&t));
    }
}
