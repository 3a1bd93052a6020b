//! Our own packet ids for outgoing QoS 1 publishes, so that the PUBACK of a
//! result report can be traced to its journal entry: the entry counts as
//! reported only once the hub has it. rumqttc keeps a publish whose packet
//! id is set; we give each one a free id in `1..=max` (rumqttc's in-flight
//! window) and remember which report it carries.

use std::collections::HashMap;

#[derive(Debug)]
pub struct Inflight {
    by_pkid: HashMap<u16, Option<u64>>,
    next: u16,
    max: u16,
}

impl Inflight {
    pub fn new(max: u16) -> Self {
        Inflight { by_pkid: HashMap::new(), next: 1, max: max.max(1) }
    }

    /// A free packet id for a publish carrying `report` (None: the window is full).
    pub fn start(&mut self, report: Option<u64>) -> Option<u16> {
        if self.by_pkid.len() >= self.max as usize {
            return None;
        }
        loop {
            let pkid = self.next;
            self.next = if self.next >= self.max { 1 } else { self.next + 1 };
            if let std::collections::hash_map::Entry::Vacant(v) = self.by_pkid.entry(pkid) {
                v.insert(report);
                return Some(pkid);
            }
        }
    }

    /// The PUBACK of `pkid` came: the report it carried, if any.
    pub fn acked(&mut self, pkid: u16) -> Option<u64> {
        self.by_pkid.remove(&pkid).flatten()
    }

    /// The connection is gone: the report a publish taken back from it
    /// carried (it is published again under a new id).
    pub fn take_back(&mut self, pkid: u16) -> Option<u64> {
        self.by_pkid.remove(&pkid).flatten()
    }

    /// Forgets every id (after the publishes were taken back).
    pub fn clear(&mut self) {
        self.by_pkid.clear();
    }

    pub fn len(&self) -> usize {
        self.by_pkid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pkid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_while_in_flight_and_reused_after_the_ack() {
        let mut f = Inflight::new(3);
        let a = f.start(Some(10)).unwrap();
        let b = f.start(None).unwrap();
        let c = f.start(Some(12)).unwrap();
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(f.start(Some(13)), None, "window full");
        assert_eq!(f.acked(b), None, "telemetry carries no report");
        assert_eq!(f.start(Some(13)), Some(2), "the freed id, never one in flight");
        assert_eq!(f.acked(c), Some(12));
        assert_eq!(f.acked(c), None, "a second PUBACK of one id reports nothing");
        assert_eq!(f.take_back(a), Some(10));
        assert_eq!(f.len(), 1);
        f.clear();
        assert!(f.is_empty());
    }

    #[test]
    fn ids_stay_within_the_window_and_never_zero() {
        let mut f = Inflight::new(5);
        for i in 0..1000u64 {
            let p = f.start(Some(i)).unwrap();
            assert!((1..=5).contains(&p));
            assert_eq!(f.acked(p), Some(i));
        }
    }
}
