//! Completion: PUBACKs go out strictly in the order the PUBLISHes arrived
//! (MQTT 3.1.1 §4.6; IoT Hub drops a connection that acks out of order), each
//! once its message may be completed. Pure bookkeeping, no I/O.
//!
//! A slot belongs to one connection (generation); when the link reconnects,
//! slots of older connections are dropped, because their packet ids may now
//! belong to other messages. The hub redelivers those, and the journal
//! recognises them.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
struct Slot {
    generation: u64,
    pkid: u16,
    seq: u64,
    ready: bool,
    arrived: Instant,
}

#[derive(Debug, Default)]
pub struct AckQueue {
    slots: VecDeque<Slot>,
}

impl AckQueue {
    /// A PUBLISH arrived for journal entry `seq`.
    pub fn push(&mut self, generation: u64, pkid: u16, seq: u64, ready: bool, arrived: Instant) {
        self.slots.push_back(Slot { generation, pkid, seq, ready, arrived });
    }

    /// Entry `seq` may now be completed (every PUBLISH that carried it).
    pub fn mark_ready(&mut self, seq: u64) {
        for s in self.slots.iter_mut().filter(|s| s.seq == seq) {
            s.ready = true;
        }
    }

    /// The acks that may go now: the ready slots at the front, in order.
    pub fn pop_ready(&mut self) -> Vec<(u64, u16)> {
        self.pop_ready_slots().into_iter().map(|(g, p, _)| (g, p)).collect()
    }

    /// [`AckQueue::pop_ready`] with the journal entry of each slot:
    /// (generation, packet id, sequence).
    pub fn pop_ready_slots(&mut self) -> Vec<(u64, u16, u64)> {
        let mut out = Vec::new();
        while self.slots.front().is_some_and(|s| s.ready) {
            let s = self.slots.pop_front().expect("front exists");
            out.push((s.generation, s.pkid, s.seq));
        }
        out
    }

    /// A new connection: forget slots of the old ones.
    pub fn reconnected(&mut self, generation: u64) {
        self.slots.retain(|s| s.generation == generation);
    }

    /// Entries waiting longer than `after` (to be handed over), oldest first.
    pub fn overdue(&self, now: Instant, after: Duration) -> Vec<u64> {
        let mut v: Vec<u64> =
            self.slots.iter().filter(|s| !s.ready && s.arrived + after <= now).map(|s| s.seq).collect();
        v.dedup();
        v
    }

    /// Not-ready slots among the oldest ones that must be released so that
    /// at most `limit` slots stay un-acknowledged.
    pub fn over_limit(&self, limit: usize) -> Vec<u64> {
        let excess = self.slots.len().saturating_sub(limit.max(1));
        let mut v: Vec<u64> = self.slots.iter().take(excess).filter(|s| !s.ready).map(|s| s.seq).collect();
        v.dedup();
        v
    }

    /// When the next slot becomes overdue.
    pub fn next_overdue(&self, after: Duration) -> Option<Instant> {
        self.slots.iter().filter(|s| !s.ready).map(|s| s.arrived + after).min()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_go_in_arrival_order_even_when_messages_finish_out_of_order() {
        let t = Instant::now();
        let mut q = AckQueue::default();
        q.push(1, 10, 100, false, t);
        q.push(1, 11, 101, false, t);
        q.push(1, 12, 102, false, t);
        q.mark_ready(102);
        q.mark_ready(101);
        assert!(q.pop_ready().is_empty(), "101 and 102 wait for 100");
        q.mark_ready(100);
        assert_eq!(q.pop_ready(), vec![(1, 10), (1, 11), (1, 12)]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_redelivered_copy_completes_with_its_original() {
        let t = Instant::now();
        let mut q = AckQueue::default();
        q.push(1, 1, 7, false, t);
        q.push(1, 2, 7, false, t);
        q.mark_ready(7);
        assert_eq!(q.pop_ready(), vec![(1, 1), (1, 2)]);
    }

    #[test]
    fn reconnect_drops_slots_of_old_connections() {
        let t = Instant::now();
        let mut q = AckQueue::default();
        q.push(1, 1, 1, false, t);
        q.push(2, 1, 2, true, t);
        q.reconnected(2);
        assert_eq!(q.pop_ready(), vec![(2, 1)]);
        q.mark_ready(1);
        assert!(q.pop_ready().is_empty(), "the old slot is gone: no ack to a reused packet id");
    }

    #[test]
    fn the_window_of_unacked_messages_is_bounded() {
        let t = Instant::now();
        let mut q = AckQueue::default();
        for seq in 0..5 {
            q.push(1, seq as u16 + 1, seq, seq == 1, t);
        }
        assert!(q.over_limit(5).is_empty());
        assert_eq!(q.over_limit(3), vec![0], "slots 0 and 1 must go; 1 is ready already");
        assert_eq!(q.over_limit(1), vec![0, 2, 3]);
    }

    #[test]
    fn overdue_slots_are_found_for_handover() {
        let t = Instant::now();
        let mut q = AckQueue::default();
        q.push(1, 1, 1, false, t);
        q.push(1, 2, 2, true, t);
        q.push(1, 3, 3, false, t + Duration::from_secs(10));
        let after = Duration::from_secs(40);
        assert!(q.overdue(t + Duration::from_secs(39), after).is_empty());
        assert_eq!(q.overdue(t + Duration::from_secs(40), after), vec![1]);
        assert_eq!(q.next_overdue(after), Some(t + after));
        assert_eq!(q.overdue(t + Duration::from_secs(60), after), vec![1, 3]);
    }
}
