//! Time for the journal. A board without a real-time clock boots with a
//! stale wall clock, and NTP steps it (often by days) once it syncs: a span
//! the gateway measures itself must not jump with it. So:
//!
//! - spans inside one run (a message's age for `max_age`, time since it
//!   became final) are measured on the monotonic clock;
//! - the journal keeps an *uptime* clock: milliseconds the gateway has run,
//!   persisted in the store and continued at the next open, so it advances
//!   only with the monotonic clock, across restarts too (downtime is not
//!   counted: the dedupe window then lasts longer, never shorter);
//! - wall-clock times (`received_at`, `completed_at`, `$.exp`) stay what
//!   they are: facts for reports, and the hub's absolute expiry.
//!
//! Pure: the clocks are injected ([`Clock`]), so tests step them at will.

use std::time::{Duration, Instant};

/// The two clocks the journal reads.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time, unix milliseconds (may step).
    fn wall_ms(&self) -> u64;
    /// Monotonic time since an arbitrary fixed origin (never steps).
    fn mono(&self) -> Duration;
}

/// The system's clocks.
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock { origin: Instant::now() }
    }
}

impl Clock for SystemClock {
    fn wall_ms(&self) -> u64 {
        crate::message::now_ms()
    }
    fn mono(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// How long ago, on the uptime clock, something happened at uptime `then`
/// (signed: receipts of an earlier run are placed before this run's start).
pub fn since(now_uptime: u64, then: i64) -> Duration {
    Duration::from_millis((i128::from(now_uptime) - i128::from(then)).clamp(0, i128::from(u64::MAX)) as u64)
}

/// Where on the uptime clock a message of an earlier run was received: its
/// wall-clock age when the journal was opened (the only measure of the
/// downtime there is), before the uptime the journal was opened at. A
/// wall clock behind at the open (stale, not yet synced) gives age 0.
pub fn received_before_open(open_uptime: u64, open_wall_ms: u64, received_at_ms: u64) -> i64 {
    let age = open_wall_ms.saturating_sub(received_at_ms).min(i64::MAX as u64 / 2);
    (open_uptime.min(i64::MAX as u64 / 2) as i64) - age as i64
}

/// Whether a final entry has been final for `window` on both clocks: by the
/// wall clock (`completed_at`) and by the uptime clock (`final_uptime`;
/// entries without it, written by an older version, count from the open).
pub fn past_window(
    now_wall_ms: u64,
    completed_at: Option<u64>,
    now_uptime: u64,
    final_uptime: Option<u64>,
    open_uptime: u64,
    window: Duration,
) -> bool {
    let w = window.as_millis().min(u128::from(u64::MAX)) as u64;
    let wall_age = now_wall_ms.saturating_sub(completed_at.unwrap_or(0));
    let up_age = now_uptime.saturating_sub(final_uptime.unwrap_or(open_uptime));
    wall_age >= w && up_age >= w
}

/// The deadline of a queued message's next job, as a tokio instant, and its
/// reason: the earlier of the hub's expiry (`$.exp`, an absolute wall-clock
/// time, compared with the wall clock now) and `max_age` counted from
/// receipt by the message's `age` as the journal measured it
/// ([`crate::journal::Journal::age`], monotonic: a wall-clock step between
/// receipt and now does not move it). On a tie the expiry is named.
pub fn job_deadline(
    now: tokio::time::Instant,
    now_wall_ms: u64,
    expires_at: Option<u64>,
    age: Duration,
    max_age: Duration,
) -> (tokio::time::Instant, String) {
    let by_age =
        (now + max_age.saturating_sub(age), format!("max_age ({}) reached", humantime::format_duration(max_age)));
    match expires_at {
        Some(exp) => {
            let at = now + Duration::from_millis(exp.saturating_sub(now_wall_ms));
            if at <= by_age.0 {
                (at, "message expiry ($.exp) reached".into())
            } else {
                by_age
            }
        }
        None => by_age,
    }
}

/// A clock for tests: both readings set by hand.
#[cfg(test)]
#[derive(Default)]
pub struct TestClock {
    wall: std::sync::atomic::AtomicU64,
    mono_ms: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
impl TestClock {
    pub fn new(wall_ms: u64) -> std::sync::Arc<TestClock> {
        let c = TestClock::default();
        c.set_wall(wall_ms);
        std::sync::Arc::new(c)
    }
    pub fn set_wall(&self, ms: u64) {
        self.wall.store(ms, std::sync::atomic::Ordering::SeqCst);
    }
    /// Time passes: both clocks move.
    pub fn advance(&self, d: Duration) {
        let ms = d.as_millis() as u64;
        self.wall.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
        self.mono_ms.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for TestClock {
    fn wall_ms(&self) -> u64 {
        self.wall.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn mono(&self) -> Duration {
        Duration::from_millis(self.mono_ms.load(std::sync::atomic::Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;

    #[test]
    fn the_window_needs_both_clocks() {
        let w = Duration::from_millis(48 * H);
        // Wall clock stepped forward by a year: the uptime clock holds it.
        assert!(!past_window(400 * 24 * H, Some(H), 2 * H, Some(H), 0, w));
        // Wall clock stepped back: the wall clock holds it.
        assert!(!past_window(H, Some(2 * H), 100 * H, Some(H), 0, w));
        // Both agree.
        assert!(past_window(50 * H, Some(H), 50 * H, Some(H), 0, w));
        // Older entries without an uptime count from the open.
        assert!(!past_window(500 * H, Some(H), 60 * H, None, 20 * H, w));
        assert!(past_window(500 * H, Some(H), 68 * H, None, 20 * H, w));
    }

    #[test]
    fn receipts_of_an_earlier_run_sit_before_the_open() {
        assert_eq!(received_before_open(1000, 10_000, 9_000), 0);
        assert_eq!(received_before_open(0, 10_000, 4_000), -6000);
        // A wall clock behind at the open (not yet synced): age 0.
        assert_eq!(received_before_open(500, 1_000, 9_000), 500);
        assert_eq!(since(100, -6000), Duration::from_millis(6100));
        assert_eq!(since(100, 200), Duration::ZERO);
    }

    #[test]
    fn the_job_deadline_counts_max_age_by_the_measured_age() {
        let now = tokio::time::Instant::now();
        let max_age = Duration::from_secs(600);
        // A wall clock stepped a day forward since receipt changes nothing:
        // only the measured age counts.
        let (at, why) = job_deadline(now, 86_400_000, None, Duration::from_secs(60), max_age);
        assert_eq!(at, now + Duration::from_secs(540));
        assert_eq!(why, "max_age (10m) reached");
        // $.exp is the hub's absolute time: compared with the wall clock.
        let (at, why) = job_deadline(now, 1_000_000, Some(1_030_000), Duration::ZERO, max_age);
        assert_eq!(at, now + Duration::from_secs(30));
        assert_eq!(why, "message expiry ($.exp) reached");
        let (at, _) = job_deadline(now, 1_000_000, Some(999_000), Duration::from_secs(700), max_age);
        assert_eq!(at, now, "both past: at once");
    }
}
