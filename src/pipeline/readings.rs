//! Telemetry readings on their way to the hub. While the hub is reachable
//! and nothing waits, a reading goes out at once. Otherwise it waits in
//! the journal's telemetry buffer (`journal/telemetry.rs`; bounded by
//! `gateway.telemetry_buffer`, oldest dropped first, counted and logged),
//! and after a reconnect, once the pending result reports are out, the
//! buffer drains in order, a few PUBLISHes in flight at a time; each
//! reading leaves it when the hub acknowledged it.

use super::Pipeline;
use crate::hub::HubCommand;
use crate::telemetry::{self, Reading};

/// Where buffered readings are numbered in the link's report numbers:
/// apart from journal sequences (small) and never-journaled reports
/// (counting down from `u64::MAX`).
const BASE: u64 = 1 << 62;

/// Buffered readings in flight at a time.
const WINDOW: usize = 8;

pub fn is_reading(report: u64) -> bool {
    (BASE..BASE << 1).contains(&report)
}

impl Pipeline {
    pub(super) fn on_reading(&mut self, r: Reading) {
        let alerts: Vec<(String, bool)> = self
            .cfg
            .devices
            .get(&r.device)
            .and_then(|d| d.telemetry.as_ref())
            .map(|t| {
                t.alerts.iter().filter_map(|(name, rule)| rule.eval(&r.values).map(|v| (name.clone(), v))).collect()
            })
            .unwrap_or_default();
        let topic = self.dialect.telemetry_topic(&r.device, &alerts);
        let payload = telemetry::body(&r, &alerts);
        let bound = self.cfg.gateway.telemetry_buffer.0;
        let waiting = self.journal.buffered().0 > 0;
        if self.core.connected() && !waiting {
            let _ = self.hub.send(HubCommand::Publish { topic, payload, report: None });
            return;
        }
        if bound == 0 {
            self.live.telemetry_dropped.inc();
            return;
        }
        match self.journal.buffer_reading(&topic, &payload, bound) {
            Ok(0) => {}
            Ok(n) => {
                self.live.telemetry_dropped.inc_by(n as u64);
                if !self.readings_dropping {
                    self.readings_dropping = true;
                    tracing::warn!(
                        telemetry_buffer = bound,
                        "the telemetry buffer is full: dropping the oldest readings until the hub takes them"
                    );
                }
            }
            Err(e) => {
                self.live.telemetry_dropped.inc();
                tracing::error!(error = %e, "cannot keep a telemetry reading for later: dropped");
            }
        }
        self.pump_readings();
    }

    /// Publishes buffered readings, in order, while the hub is connected,
    /// no result report is pending, and fewer than [`WINDOW`] are out.
    pub(super) fn pump_readings(&mut self) {
        if !self.core.connected() || self.core.footprint().2 > 0 {
            return;
        }
        while self.readings_out.len() < WINDOW {
            let want = WINDOW - self.readings_out.len();
            let batch = match self.journal.buffered_after(self.readings_last, want) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read buffered telemetry");
                    return;
                }
            };
            if batch.is_empty() {
                return;
            }
            for r in batch {
                let report = Some(BASE + r.key);
                let _ = self.hub.send(HubCommand::Publish { topic: r.topic, payload: r.body, report });
                self.readings_out.insert(r.key);
                self.readings_last = Some(r.key);
            }
        }
    }

    /// The hub acknowledged buffered reading `report`.
    pub(super) fn reading_acked(&mut self, report: u64) {
        let key = report - BASE;
        self.readings_out.remove(&key);
        if let Err(e) = self.journal.unbuffer_reading(key) {
            tracing::error!(error = %e, "cannot remove a sent reading from the telemetry buffer");
        }
        if self.journal.buffered().0 == 0 && self.readings_dropping {
            self.readings_dropping = false;
            tracing::info!("the telemetry buffer is empty again");
        }
        self.pump_readings();
    }
}

/// The link's report number of buffered reading `report` back to its key,
/// for the daemon (acknowledgements seen while stopping).
pub fn reading_key(report: u64) -> Option<u64> {
    is_reading(report).then(|| report - BASE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_numbers_stay_apart_from_journal_and_refused_reports() {
        assert!(!is_reading(0) && !is_reading(1 << 40), "journal sequences");
        assert!(!is_reading(u64::MAX) && !is_reading(u64::MAX - 1_000_000), "never-journaled reports");
        assert_eq!(reading_key(BASE + 7), Some(7));
        assert_eq!(reading_key(5), None);
    }
}
