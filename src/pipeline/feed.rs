//! Feeds the bus workers: each device has at most [`JOBS_PER_DEVICE`] jobs
//! with its bus worker at a time; the rest of its queue waits here as
//! sequence numbers, their bodies in the journal. A backlog for a dead
//! device costs a few bytes of RAM per message, not its body and request.

use std::collections::{HashMap, VecDeque};

/// Jobs a device may have with its bus worker at once: enough that the
/// worker always finds the next one ready while the pipeline refills.
pub const JOBS_PER_DEVICE: usize = 32;

#[derive(Default)]
pub struct Feed {
    devices: HashMap<String, Device>,
}

#[derive(Default)]
struct Device {
    /// Jobs with the worker.
    out: usize,
    /// Waiting, in arrival order.
    waiting: VecDeque<u64>,
}

impl Feed {
    /// Queues message `seq` for `device`.
    pub fn push(&mut self, device: &str, seq: u64) {
        match self.devices.get_mut(device) {
            Some(d) => d.waiting.push_back(seq),
            None => {
                let d = Device { out: 0, waiting: VecDeque::from([seq]) };
                self.devices.insert(device.to_string(), d);
            }
        }
    }

    /// The next message of `device` to hand its worker now (counted as
    /// out), if it has room.
    pub fn next(&mut self, device: &str) -> Option<u64> {
        let d = self.devices.get_mut(device)?;
        if d.out >= JOBS_PER_DEVICE {
            return None;
        }
        let seq = d.waiting.pop_front()?;
        d.out += 1;
        Some(seq)
    }

    /// Whether a new message of `device` may go to its worker at once
    /// (nothing of it waits, and it has room); if so it is counted as out.
    pub fn take_now(&mut self, device: &str) -> bool {
        match self.devices.get_mut(device) {
            None => {
                self.devices.insert(device.to_string(), Device { out: 1, waiting: VecDeque::new() });
                true
            }
            Some(d) if d.waiting.is_empty() && d.out < JOBS_PER_DEVICE => {
                d.out += 1;
                true
            }
            Some(_) => false,
        }
    }

    /// A job of `device` came back from its worker, or never reached it.
    pub fn returned(&mut self, device: &str) {
        if let Some(d) = self.devices.get_mut(device) {
            d.out = d.out.saturating_sub(1);
            if d.out == 0 && d.waiting.is_empty() {
                self.devices.remove(device);
            }
        }
    }

    /// Takes message `seq` out of `device`'s waiting line (an operator's
    /// `queue drop`); says whether it was waiting there.
    pub fn remove(&mut self, device: &str, seq: u64) -> bool {
        let Some(d) = self.devices.get_mut(device) else { return false };
        let Some(i) = d.waiting.iter().position(|s| *s == seq) else { return false };
        d.waiting.remove(i);
        if d.out == 0 && d.waiting.is_empty() {
            self.devices.remove(device);
        }
        true
    }

    /// Forgets everything (the workers stopped; the journal has it all).
    pub fn clear(&mut self) {
        self.devices.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_gets_a_bounded_number_of_jobs_in_order() {
        let mut f = Feed::default();
        for seq in 0..100 {
            f.push("dead", seq);
        }
        f.push("live", 1000);
        let first: Vec<u64> = std::iter::from_fn(|| f.next("dead")).collect();
        assert_eq!(first, (0..JOBS_PER_DEVICE as u64).collect::<Vec<_>>());
        assert_eq!(f.next("live"), Some(1000), "another device is not held up");
        f.returned("dead");
        assert_eq!(f.next("dead"), Some(JOBS_PER_DEVICE as u64));
        assert_eq!(f.next("dead"), None);
        f.clear();
        assert_eq!(f.next("dead"), None);
        f.returned("dead"); // after a clear: nothing to count down
        assert_eq!(f.next("nobody"), None);
    }
}
