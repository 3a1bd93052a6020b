//! Which result report each outgoing publish carries, so that the PUBACK of
//! a report can be traced to its journal entry: the entry counts as
//! reported only once the hub has it.
//!
//! rumqttc numbers publishes itself, in the order they were handed to it,
//! and says so with `Outgoing::Publish(pkid)`; the tickets wait here in that
//! order until their number is known. (Handing rumqttc publishes with our
//! own numbers would go through its `pending` queue, which sleeps a timer
//! tick per request: a thousand reports a second at most.)

use std::collections::{HashMap, VecDeque};

#[derive(Debug, Default)]
pub struct Inflight {
    /// Handed to rumqttc, number not yet known (in order).
    waiting: VecDeque<Option<u64>>,
    by_pkid: HashMap<u16, Option<u64>>,
    /// A publish rumqttc sent under a number whose PUBACK we have not seen
    /// yet (a collision it resolved): takes the number after that PUBACK.
    collided: Option<(u16, Option<u64>)>,
}

impl Inflight {
    /// A publish carrying `report` was handed to rumqttc.
    pub fn queued(&mut self, report: Option<u64>) {
        self.waiting.push_back(report);
    }

    /// rumqttc sent the next publish as `pkid`.
    pub fn sent(&mut self, pkid: u16) {
        let t = self.waiting.pop_front().flatten();
        match self.by_pkid.entry(pkid) {
            std::collections::hash_map::Entry::Occupied(_) => self.collided = Some((pkid, t)),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(t);
            }
        }
    }

    /// The PUBACK of `pkid` came: the report it carried, if any.
    pub fn acked(&mut self, pkid: u16) -> Option<u64> {
        let r = self.by_pkid.remove(&pkid).flatten();
        if let Some((p, t)) = self.collided {
            if p == pkid {
                self.by_pkid.insert(p, t);
                self.collided = None;
            }
        }
        r
    }

    /// The connection is gone and rumqttc hands back a publish (`pkid` 0:
    /// never numbered): the report it carried. Call in rumqttc's order
    /// (numbered ones first, then the rest as queued).
    pub fn take_back(&mut self, pkid: u16) -> Option<u64> {
        if pkid != 0 {
            if let Some(t) = self.by_pkid.remove(&pkid) {
                return t;
            }
        }
        // numbered, but the event saying so was lost with the connection
        self.waiting.pop_front().flatten()
    }

    /// Every report not yet acknowledged, forgotten (see the link's stop).
    pub fn drain_reports(&mut self) -> Vec<u64> {
        let mut v: Vec<u64> = self.waiting.drain(..).flatten().collect();
        v.extend(self.by_pkid.drain().filter_map(|(_, t)| t));
        v.extend(self.collided.take().and_then(|(_, t)| t));
        v
    }

    /// Forgets everything (after the publishes were taken back).
    pub fn clear(&mut self) {
        self.waiting.clear();
        self.by_pkid.clear();
        self.collided = None;
    }

    pub fn len(&self) -> usize {
        self.waiting.len() + self.by_pkid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_order_publishes_were_handed_over() {
        let mut f = Inflight::default();
        f.queued(Some(10));
        f.queued(None); // telemetry
        f.queued(Some(12));
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
        f.queued(Some(1));
        f.sent(5);
        f.queued(Some(2));
        f.sent(5); // rumqttc resolved a collision: same number, older not acked yet
        assert_eq!(f.acked(5), Some(1));
        assert_eq!(f.acked(5), Some(2));
    }

    #[test]
    fn taking_back_after_a_lost_connection() {
        let mut f = Inflight::default();
        for r in [Some(1), Some(2), Some(3), Some(4)] {
            f.queued(r);
        }
        f.sent(7);
        f.sent(8); // 9 was sent too, but its event went with the connection
                   // rumqttc hands back: 7, 8, 9 (numbered), then the unsent one (0)
        assert_eq!(f.take_back(7), Some(1));
        assert_eq!(f.take_back(8), Some(2));
        assert_eq!(f.take_back(9), Some(3));
        assert_eq!(f.take_back(0), Some(4));
        f.clear();
        assert!(f.is_empty());
    }
}
