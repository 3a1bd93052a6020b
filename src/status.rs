//! The status document: what `/status`, the `status` verb, the `status`
//! direct method and the status page show. Built from the live state
//! (`live.rs`), the journal's index and the configuration; no entry is
//! read except those waiting for an operator (at most [`ATTENTION`]).

use crate::config::HubKind;
use crate::journal::Journal;
use crate::live::Live;
use crate::message::{rfc3339_ms, Entry};
use serde_json::{json, Map, Value};

/// Messages waiting for an operator listed in full.
pub const ATTENTION: usize = 50;

fn time(ms: Option<u64>) -> Value {
    ms.map_or(Value::Null, |ms| Value::String(rfc3339_ms(ms)))
}

fn secs(d: std::time::Duration) -> Value {
    json!((d.as_secs_f64() * 10.0).round() / 10.0)
}

/// A message in one line: for the page, `queue list` and the attention list.
pub fn summary(e: &Entry) -> Value {
    json!({
        "seq": e.seq,
        "message_id": e.id,
        "device": e.device,
        "status": e.state,
        "attempts": e.attempts,
        "received_at": rfc3339_ms(e.received_at),
        "completed_at": time(e.completed_at),
        "detail": e.detail,
        "operator": e.operator.as_ref().map(|o| o.action.as_str()),
    })
}

/// The whole document. `started_ms`: when this run started (unix ms).
pub fn document(hub: HubKind, journal: &Journal, live: &Live, started_ms: u64) -> Value {
    let now = crate::message::now_ms();
    let snap = live.snapshot();
    let stats = journal.stats();
    let queues = journal.queues();
    let (attention, uncertain, expired) = journal.unresolved(ATTENTION).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the messages waiting for an operator");
        (Vec::new(), 0, 0)
    });
    let oldest = queues.values().map(|(_, age)| *age).max();
    let buses: Map<String, Value> = snap
        .buses
        .iter()
        .map(|(name, b)| {
            let v = json!({"kind": b.kind, "connected": b.connected, "since": time(b.since_ms), "error": b.error});
            (name.clone(), v)
        })
        .collect();
    let devices: Map<String, Value> = snap
        .devices
        .iter()
        .map(|(name, d)| {
            let (queued, age) = queues.get(&Some(name.clone())).copied().unwrap_or_default();
            let v = json!({
                "bus": d.bus,
                "queued": queued,
                "oldest_queued_s": if queued > 0 { secs(age) } else { Value::Null },
                "isolated": d.isolated,
                "isolated_since": time(d.isolated_since_ms),
                "last": d.last.as_ref().map(outcome),
            });
            (name.clone(), v)
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now": rfc3339_ms(now),
        "started_at": rfc3339_ms(started_ms),
        "uptime_s": secs(std::time::Duration::from_millis(now.saturating_sub(started_ms))),
        "hub": {
            "kind": match hub { HubKind::Azure => "azure", HubKind::Mqtt => "mqtt" },
            "connected": snap.hub.connected,
            "since": time(snap.hub.since_ms),
            "reconnects": snap.hub.connections.saturating_sub(1),
            "endpoint": snap.hub.endpoint,
        },
        "queued": stats.unfinished,
        "oldest_queued_s": oldest.map_or(Value::Null, secs),
        "journal_entries": stats.entries,
        "reports_pending": snap.reports_pending,
        "telemetry_buffered": journal.buffered().0,
        "unresolved": {"uncertain": uncertain, "expired": expired},
        "attention": attention.iter().map(summary).collect::<Vec<_>>(),
        "buses": buses,
        "devices": devices,
        "recent": snap.recent.iter().map(outcome).collect::<Vec<_>>(),
    })
}

fn outcome(o: &crate::live::Outcome) -> Value {
    json!({
        "message_id": o.message_id,
        "device": o.device,
        "status": o.status,
        "at": rfc3339_ms(o.at_ms),
        "detail": o.detail,
    })
}
