//! What a bus worker tells the operator surface (`live.rs`): whether its
//! port or connection opens, which devices its breaker isolates, and how
//! long each request takes on the wire. Only changes reach the shared
//! state; the histogram is one atomic update per request.

use crate::live::Live;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

pub struct Seen {
    live: Arc<Live>,
    bus: String,
    up: Option<bool>,
    isolated: HashSet<String>,
    duration: Histogram,
}

impl Seen {
    pub fn new(live: Arc<Live>, bus: &str) -> Self {
        let duration = live.request_duration.get_or_create(&[("bus", bus.to_string())]).clone();
        Seen { live, bus: bus.to_string(), up: None, isolated: HashSet::new(), duration }
    }

    /// A connection attempt (or the check that the link is open) ended so.
    pub fn connected(&mut self, r: Result<(), &super::ConnectError>) {
        let up = r.is_ok();
        if self.up != Some(up) || !up {
            self.up = Some(up);
            self.live.bus(&self.bus, r.map_err(|e| e.to_string()), crate::message::now_ms());
        }
    }

    /// After an attempt on `device`: `timed_out` says whether it timed out;
    /// `isolated` asks the breaker (only when the answer may have changed).
    pub fn attempted(&mut self, device: &str, timed_out: bool, isolated: impl FnOnce() -> bool) {
        let marked = self.isolated.contains(device);
        if !timed_out && !marked {
            return;
        }
        let now = isolated();
        if now != marked {
            if now {
                self.isolated.insert(device.to_string());
            } else {
                self.isolated.remove(device);
            }
            self.live.isolated(device, now, crate::message::now_ms());
        }
    }

    pub fn request(&self, took: Duration) {
        self.duration.observe(took.as_secs_f64());
    }
}
