//! The publishes (result reports, telemetry) handed to rumqttc on the
//! current connection and not yet acknowledged by the hub, so that the
//! PUBACK of a report can be traced to its journal entry (the entry counts
//! as reported only once the hub has it), and so that whatever the hub did
//! not acknowledge can be sent again after the connection is lost.
//!
//! rumqttc numbers publishes itself, in the order they were handed to it,
//! and says so with `Outgoing::Publish(pkid)`; the tickets wait here in that
//! order until their number is known. (Handing rumqttc publishes with our
//! own numbers would go through its `pending` queue, which sleeps a timer
//! tick per request: a thousand reports a second at most.)
//!
//! Everything here belongs to one connection: when it is lost, [`Inflight::lost`]
//! hands back every publish not acknowledged, whole and in the order it was
//! handed over, and starts empty. The link sends those again from here and
//! never from rumqttc's own leftovers, whose packet ids (and a publish parked
//! on a packet id collision) would have to be matched to tickets by guesswork.

use std::collections::{HashMap, VecDeque};

/// One publish as the link handed it to rumqttc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    /// The journal entry this is the result report of (`None`: telemetry).
    pub report: Option<u64>,
}

#[derive(Debug)]
struct Ticket {
    /// Handing order on this connection.
    order: u64,
    publish: Publish,
}

#[derive(Debug, Default)]
pub struct Inflight {
    next_order: u64,
    /// Handed to rumqttc, number not yet known (in order).
    waiting: VecDeque<Ticket>,
    /// Sent under a number, PUBACK not yet seen.
    by_pkid: HashMap<u16, Ticket>,
    /// Numbered while an older publish still held the same number (rumqttc
    /// resolved a collision): each takes its number after that PUBACK.
    collided: VecDeque<(u16, Ticket)>,
}

impl Inflight {
    /// A publish was handed to rumqttc.
    pub fn queued(&mut self, publish: Publish) {
        self.waiting.push_back(Ticket { order: self.next_order, publish });
        self.next_order += 1;
    }

    /// rumqttc sent the next publish as `pkid`.
    pub fn sent(&mut self, pkid: u16) {
        let Some(t) = self.waiting.pop_front() else {
            tracing::debug!(pkid, "rumqttc sent a publish the link did not hand it on this connection");
            return;
        };
        match self.by_pkid.entry(pkid) {
            std::collections::hash_map::Entry::Occupied(_) => self.collided.push_back((pkid, t)),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(t);
            }
        }
    }

    /// The PUBACK of `pkid` came: the report it carried, if any.
    pub fn acked(&mut self, pkid: u16) -> Option<u64> {
        let t = self.by_pkid.remove(&pkid)?;
        if let Some(i) = self.collided.iter().position(|(p, _)| *p == pkid) {
            let (_, next) = self.collided.remove(i).expect("index from position");
            self.by_pkid.insert(pkid, next);
        }
        t.publish.report
    }

    /// The connection is gone: every publish the hub did not acknowledge,
    /// in the order they were handed over (sent, numbered or not, and
    /// still queued in rumqttc alike). Leaves this empty for the next one.
    pub fn lost(&mut self) -> Vec<Publish> {
        let mut all: Vec<Ticket> = self.waiting.drain(..).collect();
        all.extend(self.by_pkid.drain().map(|(_, t)| t));
        all.extend(self.collided.drain(..).map(|(_, t)| t));
        all.sort_by_key(|t| t.order);
        self.next_order = 0;
        all.into_iter().map(|t| t.publish).collect()
    }

    /// Publishes handed over and not acknowledged.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.by_pkid.len() + self.collided.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u64) -> Publish {
        Publish { topic: "r".into(), payload: format!("report {seq}").into_bytes(), report: Some(seq) }
    }

    fn telemetry() -> Publish {
        Publish { topic: "t".into(), payload: b"reading".to_vec(), report: None }
    }

    #[test]
    fn numbers_follow_the_order_publishes_were_handed_over() {
        let mut f = Inflight::default();
        f.queued(report(10));
        f.queued(telemetry());
        f.queued(report(12));
        f.sent(1);
        f.sent(2);
        f.sent(3);
        assert_eq!(f.acked(3), Some(12), "acks may come in any order");
        assert_eq!(f.acked(2), None);
        assert_eq!(f.acked(1), Some(10));
        assert_eq!(f.acked(1), None, "a second PUBACK reports nothing");
        assert!(f.is_empty());
    }

    #[test]
    fn a_collision_takes_its_number_after_the_older_puback() {
        let mut f = Inflight::default();
        f.queued(report(1));
        f.sent(5);
        f.queued(report(2));
        f.sent(5); // same number while the older one is not acknowledged yet
        assert_eq!(f.acked(5), Some(1));
        assert_eq!(f.acked(5), Some(2));
        assert!(f.is_empty());
    }

    #[test]
    fn a_lost_connection_gives_back_every_unacknowledged_publish_whole_and_in_order() {
        let mut f = Inflight::default();
        for seq in 1..=6 {
            f.queued(report(seq));
        }
        f.sent(7);
        f.sent(8);
        f.sent(7); // 3 collided with 1 (7 not acknowledged)
        f.sent(9);
        assert_eq!(f.acked(8), Some(2));
        // 5 and 6: still in rumqttc's queue, or sent with their events lost
        // with the connection: either way not acknowledged.
        let back = f.lost();
        assert_eq!(back, vec![report(1), report(3), report(4), report(5), report(6)]);
        assert!(f.is_empty());
        // The next connection starts afresh: a stale number maps to nothing.
        assert_eq!(f.acked(7), None);
        assert_eq!(f.acked(9), None);
        f.queued(report(7));
        f.sent(7);
        assert_eq!(f.acked(7), Some(7));
    }
}
