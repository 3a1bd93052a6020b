//! Requests to idempotent devices that went out before anything durable
//! said so. Such a device gets its request without waiting for a flush
//! (see `bus/commit.rs`); until a flush covers the message's final outcome,
//! a crash would find it unfinished with no trace of the request. The
//! journal counts these messages per device, so that a bus worker never
//! lets more than `bus::MAX_AHEAD` of them pile up, and recovery after a
//! crash can treat that many of a device's first unfinished messages as
//! possibly sent.

use std::collections::{HashMap, HashSet};

#[derive(Default)]
pub struct Unsettled {
    /// Per device: messages sent whose final outcome is not durable yet.
    sent: HashMap<String, HashSet<u64>>,
    /// Of those, the ones whose outcome was written: (device, seq, the
    /// journal's write count after that write).
    finals: Vec<(String, u64, u64)>,
}

impl Unsettled {
    pub fn sent(&mut self, device: &str, seq: u64) {
        match self.sent.get_mut(device) {
            Some(s) => {
                s.insert(seq);
            }
            None => {
                self.sent.insert(device.to_string(), HashSet::from([seq]));
            }
        }
    }

    /// Message `seq` became final with write number `written`.
    pub fn finished(&mut self, device: &str, seq: u64, written: u64) {
        if self.sent.get(device).is_some_and(|s| s.contains(&seq)) {
            self.finals.push((device.to_string(), seq, written));
        }
    }

    /// A flush made every write up to number `upto` durable.
    pub fn flushed(&mut self, upto: u64) {
        let sent = &mut self.sent;
        self.finals.retain(|(device, seq, written)| {
            if *written > upto {
                return true;
            }
            if let Some(s) = sent.get_mut(device) {
                s.remove(seq);
            }
            false
        });
    }

    /// How many messages of `device` other than `seq` are unsettled.
    pub fn others(&self, device: &str, seq: u64) -> usize {
        self.sent.get(device).map_or(0, |s| s.len() - usize::from(s.contains(&seq)))
    }
}

#[cfg(test)]
mod tests {
    use super::Unsettled;

    #[test]
    fn a_message_settles_once_a_flush_covers_its_outcome() {
        let mut u = Unsettled::default();
        u.sent("boiler", 1);
        u.sent("boiler", 2);
        u.sent("pump", 3);
        assert_eq!((u.others("boiler", 1), u.others("boiler", 9), u.others("pump", 9)), (1, 2, 1));
        u.finished("boiler", 1, 10);
        u.flushed(9);
        assert_eq!(u.others("boiler", 9), 2, "the flush started before the outcome was written");
        u.flushed(10);
        assert_eq!(u.others("boiler", 9), 1);
        u.sent("boiler", 2); // sent again (a retry): still one message
        u.flushed(100);
        assert_eq!(u.others("boiler", 9), 1, "no outcome yet: a flush settles nothing");
        u.finished("valve", 7, 11); // never sent unsettled: ignored
        assert_eq!(u.others("valve", 9), 0);
    }
}
