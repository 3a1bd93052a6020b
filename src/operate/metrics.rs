//! `/metrics`: the Prometheus text format (0.0.4), encoded by
//! prometheus-client. Counters and the request histogram live in
//! [`Live`] (updated as messages go); gauges are read at each scrape from
//! the journal's index and the live state, so the message path pays
//! nothing for them. Labels are bounded: devices and buses come from the
//! configuration, outcomes and states are fixed sets.

use crate::journal::Journal;
use crate::live::Live;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::Arc;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The registry of one daemon.
pub fn registry(journal: Journal, live: Arc<Live>) -> Registry {
    let mut r = Registry::default();
    r.register(
        "c2d_gateway_messages",
        "Messages that reached a final outcome, by outcome (delivered, rejected, expired, uncertain); one an operator resolved or retried counts again",
        live.messages.clone(),
    );
    r.register(
        "c2d_gateway_device_request_duration_seconds",
        "Time from a request to a device going on the wire to its answer (or timeout), by bus",
        live.request_duration.clone(),
    );
    r.register("c2d_gateway_hub_reconnects", "Connections to the hub after the first one", live.reconnects.clone());
    r.register(
        "c2d_gateway_telemetry_dropped",
        "Telemetry readings dropped: the hub unreachable and the buffer full (oldest first) or off",
        live.telemetry_dropped.clone(),
    );
    r.register_collector(Box::new(Gauges { journal, live }));
    r
}

/// The text exposition of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry).expect("writing to a String");
    out
}

/// The gauges computed at each scrape.
struct Gauges {
    journal: Journal,
    live: Arc<Live>,
}

impl std::fmt::Debug for Gauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gauges")
    }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn labelled<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl IntoIterator<Item = (&'a str, f64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (l, v) in values {
        let labels = [(label, l)];
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Gauges {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let snap = self.live.snapshot();
        let stats = self.journal.stats();
        let queues = self.journal.queues();
        let b = |v: bool| if v { 1.0 } else { 0.0 };
        gauge(&mut enc, "c2d_gateway_hub_connected", "1 while the hub connection is up.", b(snap.hub.connected))?;
        gauge(
            &mut enc,
            "c2d_gateway_queue_depth",
            "Unfinished messages (queued or sending).",
            stats.unfinished as f64,
        )?;
        let oldest = queues.values().map(|(_, age)| age.as_secs_f64()).fold(0.0, f64::max);
        gauge(
            &mut enc,
            "c2d_gateway_oldest_queued_seconds",
            "Age of the oldest unfinished message (0 when none).",
            oldest,
        )?;
        let depth = |d: &str| queues.get(&Some(d.to_string())).copied().unwrap_or_default();
        labelled(
            &mut enc,
            "c2d_gateway_device_queue_depth",
            "Unfinished messages per configured device.",
            "device",
            snap.devices.keys().map(|d| (d.as_str(), depth(d).0 as f64)),
        )?;
        labelled(
            &mut enc,
            "c2d_gateway_device_oldest_queued_seconds",
            "Age of each configured device's oldest unfinished message (0 when none).",
            "device",
            snap.devices.keys().map(|d| (d.as_str(), depth(d).1.as_secs_f64())),
        )?;
        labelled(
            &mut enc,
            "c2d_gateway_device_isolated",
            "1 while the device is isolated by its bus's circuit breaker (it keeps timing out).",
            "device",
            snap.devices.iter().map(|(n, d)| (n.as_str(), b(d.isolated))),
        )?;
        labelled(
            &mut enc,
            "c2d_gateway_bus_connected",
            "1 while the bus's port or connection is open (0 after a failed attempt; absent before the first).",
            "bus",
            snap.buses.iter().filter_map(|(n, s)| s.connected.map(|c| (n.as_str(), b(c)))),
        )?;
        let (_, uncertain, expired) = self.journal.unresolved(0).unwrap_or_default();
        labelled(
            &mut enc,
            "c2d_gateway_unresolved_messages",
            "Messages that ended uncertain or expired and wait for an operator (queue retry / resolve).",
            "state",
            [("uncertain", uncertain as f64), ("expired", expired as f64)],
        )?;
        gauge(&mut enc, "c2d_gateway_journal_entries", "Entries in the journal.", stats.entries as f64)?;
        gauge(
            &mut enc,
            "c2d_gateway_journal_body_bytes",
            "Bytes of message bodies the journal holds.",
            stats.body_bytes as f64,
        )?;
        gauge(
            &mut enc,
            "c2d_gateway_reports_pending",
            "Result reports sent and not yet acknowledged by the hub.",
            snap.reports_pending as f64,
        )?;
        gauge(
            &mut enc,
            "c2d_gateway_telemetry_buffered",
            "Telemetry readings kept on disk for the hub (taken while it was unreachable, sent in order after the reconnect).",
            self.journal.buffered().0 as f64,
        )?;
        Ok(())
    }
}
