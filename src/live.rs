//! What the gateway is doing now, for the operator surface (`src/operate/`,
//! `src/status.rs`): counters and a histogram the pipeline and the bus
//! workers update as they go (prometheus-client types: atomics), and the
//! last known state of the hub link, each bus and each device behind one
//! small lock. Nothing here does I/O; a leaf every other part may write to.

use crate::message::{Entry, State};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// Outcomes kept for the status page.
pub const RECENT: usize = 20;

type Label<V> = [(&'static str, V); 1];

/// The final states, in the order of `Live::by_outcome`.
const FINAL: [State; 4] = [State::Delivered, State::Rejected, State::Expired, State::Uncertain];

/// The live counters and state. One per daemon, shared (`Arc`).
#[derive(Debug)]
pub struct Live {
    /// Final outcomes by state (`outcome` label: the six states' final four;
    /// an outcome an operator changed, or of a retried message, counts again).
    pub messages: Family<Label<&'static str>, Counter>,
    /// `messages`' counter of each final state (in [`FINAL`] order), kept
    /// at hand: the family's lookup takes a lock and a hash per message.
    by_outcome: [Counter; 4],
    /// Time on the wire per device request, by bus.
    pub request_duration: Family<Label<String>, Histogram, fn() -> Histogram>,
    /// Connections to the hub after the first.
    pub reconnects: Counter,
    /// Telemetry readings dropped (the hub unreachable, the buffer full or off).
    pub telemetry_dropped: Counter,
    state: Mutex<Snapshot>,
}

/// The state part, as the status document shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub hub: Hub,
    pub buses: BTreeMap<String, Bus>,
    pub devices: BTreeMap<String, Device>,
    /// Newest first.
    pub recent: VecDeque<Outcome>,
    pub reports_pending: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Hub {
    pub connected: bool,
    /// When it last connected or lost the connection (unix ms).
    pub since_ms: Option<u64>,
    pub connections: u64,
    /// Where and how the last connection went (host, port, device id,
    /// WebSockets, X.509, proxy, DPS); no credentials.
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Bus {
    /// `modbus-tcp`, `modbus-rtu`, `serial`.
    pub kind: &'static str,
    /// `None` until the first request or connection attempt.
    pub connected: Option<bool>,
    /// Why the last connection attempt failed.
    pub error: Option<String>,
    pub since_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Device {
    pub bus: String,
    /// Isolated by its bus's circuit breaker (it keeps timing out).
    pub isolated: bool,
    pub isolated_since_ms: Option<u64>,
    pub last: Option<Outcome>,
}

/// A final outcome, as the page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub message_id: String,
    pub device: Option<String>,
    pub status: State,
    pub at_ms: u64,
    pub detail: String,
}

impl Default for Live {
    fn default() -> Self {
        fn histogram() -> Histogram {
            // 0.5 ms .. about 16 s (a bus timeout is at most a few seconds).
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        }
        let messages: Family<Label<&'static str>, Counter> = Family::default();
        // Every outcome from the start: a rate() sees its first increase.
        let by_outcome = FINAL.map(|s| messages.get_or_create(&[("outcome", s.as_str())]).clone());
        Live {
            messages,
            by_outcome,
            request_duration: Family::new_with_constructor(histogram),
            reconnects: Counter::default(),
            telemetry_dropped: Counter::default(),
            state: Mutex::new(Snapshot::default()),
        }
    }
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configured buses and devices (at start and after a reload):
    /// the page lists each, and labels stay bounded by the configuration.
    /// The buses start anew (new workers, new connections, breakers
    /// closed): their state and the devices' isolation start over; the
    /// devices' last outcomes stay.
    pub fn configure(&self, cfg: &crate::config::Config) {
        let mut s = self.lock();
        for gone in s.buses.keys().filter(|n| !cfg.buses.contains_key(*n)) {
            self.request_duration.remove(&[("bus", gone.clone())]);
        }
        s.buses =
            cfg.buses.iter().map(|(name, b)| (name.clone(), Bus { kind: b.kind.name(), ..Bus::default() })).collect();
        s.devices.retain(|name, _| cfg.devices.contains_key(name));
        for (name, d) in &cfg.devices {
            let dev = s.devices.entry(name.clone()).or_default();
            dev.bus = d.bus.clone();
            dev.isolated = false;
            dev.isolated_since_ms = None;
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    /// How the hub link connected (see [`Hub::endpoint`]).
    pub fn hub_endpoint(&self, endpoint: String) {
        self.lock().hub.endpoint = (!endpoint.is_empty()).then_some(endpoint);
    }

    /// The hub link connected or lost its connection.
    pub fn hub(&self, connected: bool, now_ms: u64) {
        let mut s = self.lock();
        if connected && !s.hub.connected {
            s.hub.connections += 1;
            if s.hub.connections > 1 {
                self.reconnects.inc();
            }
        }
        if connected != s.hub.connected || s.hub.since_ms.is_none() {
            s.hub.since_ms = Some(now_ms);
        }
        s.hub.connected = connected;
    }

    /// A bus's connection came up (`Ok`) or could not be made.
    pub fn bus(&self, name: &str, up: Result<(), String>, now_ms: u64) {
        let mut s = self.lock();
        let Some(b) = s.buses.get_mut(name) else { return };
        let connected = up.is_ok();
        if b.connected != Some(connected) {
            b.since_ms = Some(now_ms);
        }
        b.connected = Some(connected);
        b.error = up.err();
    }

    /// A device's breaker opened (`true`) or closed.
    pub fn isolated(&self, device: &str, isolated: bool, now_ms: u64) {
        let mut s = self.lock();
        if let Some(d) = s.devices.get_mut(device) {
            if d.isolated != isolated {
                d.isolated_since_ms = isolated.then_some(now_ms);
            }
            d.isolated = isolated;
        }
    }

    /// A message became final (or an operator changed its outcome).
    pub fn outcome(&self, e: &Entry) {
        if let Some(i) = FINAL.iter().position(|s| *s == e.state) {
            self.by_outcome[i].inc();
        }
        let o = Outcome {
            message_id: e.id.clone(),
            device: e.device.clone(),
            status: e.state,
            at_ms: e.completed_at.unwrap_or_else(crate::message::now_ms),
            detail: e.detail.clone(),
        };
        let mut s = self.lock();
        if let Some(d) = e.device.as_deref().and_then(|d| s.devices.get_mut(d)) {
            d.last = Some(o.clone());
        }
        if s.recent.len() >= RECENT {
            s.recent.pop_back();
        }
        s.recent.push_front(o);
    }

    pub fn reports_pending(&self, n: usize) {
        self.lock().reports_pending = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_count_connections_after_the_first() {
        let live = Live::default();
        live.hub(true, 1);
        live.hub(true, 2);
        live.hub(false, 3);
        live.hub(true, 4);
        assert_eq!(live.reconnects.get(), 1);
        let s = live.snapshot();
        assert_eq!((s.hub.connected, s.hub.since_ms, s.hub.connections), (true, Some(4), 2));
    }

    #[test]
    fn a_reload_starts_the_buses_and_breakers_anew() {
        let cfg = crate::config::Config::parse(
            "[hub]\nkind = \"mqtt\"\nurl = \"mqtt://localhost\"\n[buses.a]\nkind = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n\
             [devices.d]\nbus = \"a\"\nunit = 1\n",
            "t.toml",
        )
        .unwrap();
        let live = Live::default();
        live.configure(&cfg);
        live.bus("a", Err("refused".into()), 1);
        live.isolated("d", true, 2);
        live.outcome(&Entry { device: Some("d".into()), ..Entry::new(1, "m".into(), 0, State::Uncertain) });
        live.configure(&cfg);
        let s = live.snapshot();
        assert_eq!((s.buses["a"].connected, s.buses["a"].kind), (None, "modbus-tcp"));
        assert!(!s.devices["d"].isolated && s.devices["d"].last.is_some());
    }

    #[test]
    fn recent_outcomes_are_bounded_newest_first() {
        let live = Live::default();
        for n in 0..RECENT + 5 {
            let e =
                Entry { completed_at: Some(n as u64), ..Entry::new(n as u64, format!("m{n}"), 0, State::Delivered) };
            live.outcome(&e);
        }
        let s = live.snapshot();
        assert_eq!(s.recent.len(), RECENT);
        assert_eq!(s.recent[0].message_id, format!("m{}", RECENT + 4));
        assert_eq!(live.messages.get_or_create(&[("outcome", "delivered")]).get(), (RECENT + 5) as u64);
    }
}
