//! Which device's message goes on the wire next: the pure core of a bus
//! worker (no I/O; time is passed in).
//!
//! Each device has a FIFO (strict order per device). Devices take turns
//! (round-robin) so a busy device cannot starve a quiet one. A device whose
//! head message failed waits out a back-off; a device that keeps timing out
//! is isolated by a circuit breaker whose open period grows, so a dead unit
//! costs the bus at most one timeout per period and the live units keep
//! their pace.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Retry back-off: 200 ms doubling to 30 s, each wait drawn in [50 %, 100 %]
/// of its step (jitter spreads retries of many messages apart).
pub fn retry_delay(failed_attempts: u32, jitter: f64) -> Duration {
    let base = Duration::from_millis(200);
    let cap = Duration::from_secs(30);
    let step = base.saturating_mul(1u32 << failed_attempts.saturating_sub(1).min(16)).min(cap);
    step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// How an attempt ended, as far as scheduling is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The head message is final after an attempt on the wire: pop it.
    /// `timeout`: the device did not answer in time; that counts toward
    /// isolation whatever the message's final state (a non-idempotent
    /// command that timed out ends `uncertain`, but the device is just as
    /// dead). Otherwise the device answered (delivered, refused, garbled):
    /// the breaker closes.
    Done { timeout: bool },
    /// The head message is final without having reached the device (expired
    /// or given up in the queue): pop it; the breaker stays as it is.
    Dropped,
    /// Try the head message again later; `timeout` feeds the breaker.
    Retry { timeout: bool },
}

#[derive(Debug)]
struct Breaker {
    consecutive_timeouts: u32,
    opened: u32,
}

impl Breaker {
    /// Counts a timeout; returns how long the device is isolated when this
    /// one opens (or keeps open) the breaker: `request_timeout` doubled per
    /// opening, capped at `max`.
    fn timed_out(&mut self, after: u32, request_timeout: Duration, max: Duration) -> Option<Duration> {
        self.consecutive_timeouts += 1;
        if self.consecutive_timeouts < after {
            return None;
        }
        self.opened += 1;
        Some(request_timeout.saturating_mul(1u32 << self.opened.min(16)).min(max))
    }
}

#[derive(Debug)]
struct DeviceQueue<J> {
    name: String,
    jobs: VecDeque<J>,
    not_before: Option<Instant>,
    failed_attempts: u32,
    breaker: Breaker,
}

#[derive(Debug)]
pub struct Scheduler<J> {
    devices: Vec<DeviceQueue<J>>,
    next_rr: usize,
    request_timeout: Duration,
    breaker_after: u32,
    breaker_max: Duration,
}

impl<J> Scheduler<J> {
    pub fn new(request_timeout: Duration, breaker_after: u32, breaker_max: Duration) -> Self {
        Scheduler { devices: Vec::new(), next_rr: 0, request_timeout, breaker_after: breaker_after.max(1), breaker_max }
    }

    fn index(&mut self, device: &str) -> usize {
        match self.devices.iter().position(|d| d.name == device) {
            Some(i) => i,
            None => {
                self.devices.push(DeviceQueue {
                    name: device.to_string(),
                    jobs: VecDeque::new(),
                    not_before: None,
                    failed_attempts: 0,
                    breaker: Breaker { consecutive_timeouts: 0, opened: 0 },
                });
                self.devices.len() - 1
            }
        }
    }

    pub fn push(&mut self, device: &str, job: J) {
        let i = self.index(device);
        self.devices[i].jobs.push_back(job);
    }

    pub fn len(&self) -> usize {
        self.devices.iter().map(|d| d.jobs.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next device (round-robin) whose head may go on the wire now.
    pub fn next_ready(&mut self, now: Instant) -> Option<(&str, &mut J)> {
        let n = self.devices.len();
        for k in 0..n {
            let i = (self.next_rr + k) % n;
            let d = &self.devices[i];
            if !d.jobs.is_empty() && d.not_before.is_none_or(|t| t <= now) {
                self.next_rr = (i + 1) % n;
                let d = &mut self.devices[i];
                return Some((d.name.as_str(), d.jobs.front_mut().expect("non-empty")));
            }
        }
        None
    }

    /// Whether [`Scheduler::next_ready`] would return a job (without moving
    /// the round-robin turn).
    pub fn has_ready(&self, now: Instant) -> bool {
        self.devices.iter().any(|d| !d.jobs.is_empty() && d.not_before.is_none_or(|t| t <= now))
    }

    /// When the earliest waiting device becomes ready (None: nothing waits).
    pub fn next_wake(&self) -> Option<Instant> {
        self.devices.iter().filter(|d| !d.jobs.is_empty()).filter_map(|d| d.not_before).min()
    }

    /// Records how the head of `device` fared; returns the popped job when done.
    pub fn record(&mut self, device: &str, verdict: Verdict, now: Instant, jitter: f64) -> Option<J> {
        let timeout = self.request_timeout;
        let (after, max) = (self.breaker_after, self.breaker_max);
        let i = self.index(device);
        let d = &mut self.devices[i];
        match verdict {
            Verdict::Done { timeout: false } => {
                d.failed_attempts = 0;
                d.not_before = None;
                d.breaker = Breaker { consecutive_timeouts: 0, opened: 0 };
                d.jobs.pop_front()
            }
            Verdict::Done { timeout: true } => {
                // The next message starts its own back-off, but waits out
                // the breaker's open period if this timeout opened it.
                d.failed_attempts = 0;
                d.not_before = d.breaker.timed_out(after, timeout, max).map(|open| now + open);
                d.jobs.pop_front()
            }
            Verdict::Dropped => {
                d.failed_attempts = 0;
                d.not_before = d.not_before.filter(|_| d.breaker.consecutive_timeouts >= after);
                d.jobs.pop_front()
            }
            Verdict::Retry { timeout: timed_out } => {
                d.failed_attempts += 1;
                let mut wait = retry_delay(d.failed_attempts, jitter);
                if timed_out {
                    if let Some(open) = d.breaker.timed_out(after, timeout, max) {
                        wait = wait.max(open);
                    }
                } else {
                    d.breaker.consecutive_timeouts = 0;
                }
                d.not_before = Some(now + wait);
                None
            }
        }
    }

    /// True while `device` is isolated by its breaker.
    pub fn is_isolated(&self, device: &str) -> bool {
        self.devices.iter().any(|d| d.name == device && d.breaker.consecutive_timeouts >= self.breaker_after)
    }

    /// Removes every queued job (any position) for which `expired` says so.
    pub fn sweep(&mut self, mut expired: impl FnMut(&J) -> bool) -> Vec<J> {
        let mut out = Vec::new();
        for d in &mut self.devices {
            let mut keep = VecDeque::with_capacity(d.jobs.len());
            for j in d.jobs.drain(..) {
                if expired(&j) {
                    out.push(j);
                } else {
                    keep.push_back(j);
                }
            }
            d.jobs = keep;
            if d.jobs.is_empty() {
                d.failed_attempts = 0;
                d.not_before = d.not_before.filter(|_| d.breaker.consecutive_timeouts > 0);
            }
        }
        out
    }

    /// Takes the first queued job `pick` says (any device, any position),
    /// with its device and position. The head's back-off goes with the
    /// head (its breaker stays as it is).
    pub fn take(&mut self, mut pick: impl FnMut(&J) -> bool) -> Option<(String, usize, J)> {
        for d in &mut self.devices {
            if let Some(i) = d.jobs.iter().position(&mut pick) {
                let job = d.jobs.remove(i).expect("found");
                if i == 0 {
                    d.failed_attempts = 0;
                    d.not_before = d.not_before.filter(|_| d.breaker.consecutive_timeouts > 0);
                }
                return Some((d.name.clone(), i, job));
            }
        }
        None
    }

    /// Puts a job [`Scheduler::take`] took back where it was.
    pub fn put_back(&mut self, device: &str, at: usize, job: J) {
        let i = self.index(device);
        let jobs = &mut self.devices[i].jobs;
        jobs.insert(at.min(jobs.len()), job);
    }

    /// All queued jobs, for shutdown or a config reload.
    pub fn drain(&mut self) -> Vec<J> {
        self.devices.iter_mut().flat_map(|d| d.jobs.drain(..)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched() -> Scheduler<u32> {
        Scheduler::new(Duration::from_millis(500), 3, Duration::from_secs(60))
    }

    #[test]
    fn a_job_is_taken_from_anywhere_and_the_rest_keep_their_order() {
        let mut s = sched();
        let now = Instant::now();
        for j in [1, 2, 3] {
            s.push("a", j);
        }
        let (d, j) = s.next_ready(now).unwrap();
        assert_eq!((d, *j), ("a", 1));
        s.record("a", Verdict::Retry { timeout: false }, now, 1.0);
        assert!(!s.has_ready(now), "a waits out its back-off");
        assert_eq!(s.take(|j| *j == 2), Some(("a".to_string(), 1, 2)), "from the middle");
        assert!(!s.has_ready(now), "still the head's back-off");
        s.put_back("a", 1, 2);
        assert_eq!(s.take(|j| *j == 1), Some(("a".to_string(), 0, 1)), "the head");
        let (d, j) = s.next_ready(now).unwrap();
        assert_eq!((d, *j), ("a", 2), "its back-off went with it; the one put back is in its place");
        assert_eq!(s.take(|j| *j == 99), None);
    }

    #[test]
    fn retry_delay_doubles_and_caps() {
        assert_eq!(retry_delay(1, 1.0), Duration::from_millis(200));
        assert_eq!(retry_delay(2, 1.0), Duration::from_millis(400));
        assert_eq!(retry_delay(3, 0.0), Duration::from_millis(400));
        assert_eq!(retry_delay(30, 1.0), Duration::from_secs(30));
        assert_eq!(retry_delay(0, 1.0), Duration::from_millis(200));
    }

    #[test]
    fn fifo_per_device_round_robin_across_devices() {
        let mut s = sched();
        let now = Instant::now();
        for j in [1, 2, 3] {
            s.push("a", j);
        }
        for j in [10, 20] {
            s.push("b", j);
        }
        let mut order = Vec::new();
        while let Some((dev, j)) = s.next_ready(now) {
            let (dev, j) = (dev.to_string(), *j);
            order.push(j);
            s.record(&dev, Verdict::Done { timeout: false }, now, 0.5);
        }
        assert_eq!(order, vec![1, 10, 2, 20, 3]);
        assert!(s.is_empty());
    }

    #[test]
    fn a_retrying_device_does_not_block_others_and_keeps_its_order() {
        let mut s = sched();
        let now = Instant::now();
        s.push("a", 1);
        s.push("a", 2);
        s.push("b", 10);
        let (d, j) = s.next_ready(now).unwrap();
        assert_eq!((d, *j), ("a", 1));
        assert!(s.record("a", Verdict::Retry { timeout: false }, now, 1.0).is_none());
        let (d, j) = s.next_ready(now).unwrap();
        assert_eq!((d, *j), ("b", 10));
        s.record("b", Verdict::Done { timeout: false }, now, 1.0);
        assert!(s.next_ready(now).is_none(), "a waits out its back-off");
        let wake = s.next_wake().unwrap();
        assert_eq!(wake, now + Duration::from_millis(200));
        let (d, j) = s.next_ready(wake).unwrap();
        assert_eq!((d, *j), ("a", 1), "the same head is retried, 2 waits behind it");
    }

    #[test]
    fn breaker_opens_after_consecutive_timeouts_and_grows() {
        let mut s = sched();
        let mut now = Instant::now();
        s.push("dead", 1);
        for _ in 0..2 {
            s.record("dead", Verdict::Retry { timeout: true }, now, 1.0);
            now = s.next_wake().unwrap();
        }
        assert!(!s.is_isolated("dead"));
        s.record("dead", Verdict::Retry { timeout: true }, now, 0.0);
        assert!(s.is_isolated("dead"));
        let first_open = s.next_wake().unwrap() - now;
        assert_eq!(first_open, Duration::from_secs(1), "2 x timeout");
        now += first_open;
        s.record("dead", Verdict::Retry { timeout: true }, now, 0.0);
        assert_eq!(s.next_wake().unwrap() - now, Duration::from_secs(2));
        for _ in 0..20 {
            now = s.next_wake().unwrap();
            s.record("dead", Verdict::Retry { timeout: true }, now, 0.0);
        }
        assert_eq!(s.next_wake().unwrap() - now, Duration::from_secs(60), "capped at breaker_max");
        s.record("dead", Verdict::Done { timeout: false }, now, 0.0);
        assert!(!s.is_isolated("dead"));
    }

    /// A device that is not idempotent ends each timed-out message
    /// `uncertain` (final): those timeouts still isolate it, and each of
    /// its later messages waits out the open period instead of costing the
    /// bus one more full timeout at once.
    #[test]
    fn final_timeouts_isolate_a_device_too() {
        let mut s = sched();
        let mut now = Instant::now();
        for j in 1..=6 {
            s.push("dead", j);
        }
        for j in 1..=3 {
            let (_, got) = s.next_ready(now).unwrap();
            assert_eq!(*got, j);
            assert_eq!(s.record("dead", Verdict::Done { timeout: true }, now, 0.0), Some(j));
        }
        assert!(s.is_isolated("dead"), "three timeouts in a row, each ending its message");
        assert!(s.next_ready(now).is_none(), "the next message waits out the open period");
        s.push("live", 100);
        let (d, j) = s.next_ready(now).unwrap();
        assert_eq!((d, *j), ("live", 100), "the other devices on the bus go on");
        s.record("live", Verdict::Done { timeout: false }, now, 0.0);
        let open = s.next_wake().unwrap() - now;
        assert_eq!(open, Duration::from_secs(1), "2 x timeout, as after retries");
        now += open;
        let (_, j) = s.next_ready(now).unwrap();
        assert_eq!(*j, 4);
        s.record("dead", Verdict::Done { timeout: true }, now, 0.0);
        assert_eq!(s.next_wake().unwrap() - now, Duration::from_secs(2), "the open period grows");
        now = s.next_wake().unwrap();
        // An answer (delivered, refused) closes the breaker.
        s.record("dead", Verdict::Done { timeout: false }, now, 0.0);
        assert!(!s.is_isolated("dead"));
        assert!(s.next_ready(now).is_some(), "no wait after an answer");
    }

    /// A message given up without reaching the device (expired in the
    /// queue) says nothing about it: the breaker stays open.
    #[test]
    fn a_message_dropped_unsent_leaves_the_breaker_alone() {
        let mut s = sched();
        let now = Instant::now();
        for j in 1..=5 {
            s.push("dead", j);
        }
        for _ in 0..3 {
            s.record("dead", Verdict::Retry { timeout: true }, now, 0.0);
        }
        assert!(s.is_isolated("dead"));
        let wake = s.next_wake().unwrap();
        assert_eq!(s.record("dead", Verdict::Dropped, now, 0.0), Some(1));
        assert!(s.is_isolated("dead"));
        assert_eq!(s.next_wake(), Some(wake), "still isolated until the same moment");
    }

    #[test]
    fn sweep_removes_expired_jobs_anywhere() {
        let mut s = sched();
        for j in 1..=5 {
            s.push("a", j);
        }
        let gone = s.sweep(|j| j % 2 == 0);
        assert_eq!(gone, vec![2, 4]);
        assert_eq!(s.drain(), vec![1, 3, 5]);
    }
}
