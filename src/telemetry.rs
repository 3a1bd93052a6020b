//! Telemetry: devices read on a schedule (the seeds' simulated device sends
//! a reading every second with a `temperatureAlert` property). A task per
//! device asks its bus worker for a poll each `interval`; the worker serves
//! polls only when no write is waiting, so commands keep priority. Readings
//! go to the hub as D2C JSON, alerts as application properties.

use crate::bus::{Poll, Reply, Work};
use crate::config::{Config, PointConfig};
pub use crate::message::Reading;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// The D2C body of a reading.
pub fn body(r: &Reading, alerts: &[(String, bool)]) -> Vec<u8> {
    let values: Map<String, Value> = r.values.iter().cloned().collect();
    // `read_at`: when the device was read (a reading kept while the hub was
    // unreachable goes later); `time` is the same, for older consumers.
    let at = crate::message::rfc3339_ms(r.at_ms);
    let mut b = json!({"device": r.device, "time": at, "read_at": at, "values": values});
    if !alerts.is_empty() {
        b["alerts"] = Value::Object(alerts.iter().map(|(k, v)| (k.clone(), Value::Bool(*v))).collect());
    }
    serde_json::to_vec(&b).expect("telemetry serialises")
}

/// Starts one polling task per device with telemetry.
pub fn spawn(
    cfg: &Config,
    buses: &HashMap<String, mpsc::UnboundedSender<Work>>,
    readings: mpsc::UnboundedSender<Reading>,
    shutdown: watch::Receiver<bool>,
) {
    for (name, dev) in &cfg.devices {
        let Some(t) = &dev.telemetry else { continue };
        let Some(bus) = buses.get(&dev.bus).cloned() else { continue };
        let reads: Vec<(String, PointConfig)> =
            t.points.iter().filter_map(|p| dev.points.get(p).map(|pc| (p.clone(), pc.clone()))).collect();
        let poll = Arc::new((name.clone(), dev.unit.unwrap_or(0), reads));
        let interval = *t.interval;
        let (readings, mut shutdown) = (readings.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                let (device, unit, reads) = (poll.0.clone(), poll.1, poll.2.clone());
                if bus
                    .send(Work::Poll(Poll { device, unit, reads, reply: Reply::Telemetry(readings.clone()) }))
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}
