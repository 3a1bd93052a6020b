//! Latency: PUBLISH written by the emulator → the Modbus request arriving at
//! the simulated device (what the gateway adds), and PUBLISH → PUBACK; at a
//! fixed offered rate and (from the throughput run) at saturation.

use super::gateway::GatewayProc;
use super::rig::Hub;
use crate::emulator::probe::Probe;
use crate::sim::modbus::{Arrival, SimDevice};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(mut v: Vec<f64>) -> Option<Percentiles> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Percentiles { samples: v.len(), p50_ms: at(0.50), p99_ms: at(0.99), max_ms: v[v.len() - 1] })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// PUBLISH written → request at the device.
    pub gateway_added: Percentiles,
    /// PUBLISH written → PUBACK received.
    pub publish_to_puback: Percentiles,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The sequence number a device saw (FC16 of the u32 point `seq`).
fn seq_of(a: &Arrival) -> Option<u64> {
    match (a.fc, a.registers.as_slice()) {
        (16, [hi, lo]) => Some(((*hi as u64) << 16) | *lo as u64),
        _ => None,
    }
}

/// Starts recording at the hub and at the devices.
pub fn start(hub: &Hub, devs: &[Arc<SimDevice>]) {
    hub.shared().start_probe();
    for d in devs {
        d.record_arrivals(true);
    }
}

/// Stops recording and computes the latencies of what was recorded.
pub fn finish(hub: &Hub, devs: &[Arc<SimDevice>]) -> Result<Latency, String> {
    let probe: Probe = hub.shared().take_probe();
    let mut first_arrival: HashMap<u64, Instant> = HashMap::new();
    for d in devs {
        for a in d.take_arrivals() {
            if let Some(seq) = seq_of(&a) {
                first_arrival.entry(seq).or_insert(a.at);
            }
        }
        d.record_arrivals(false);
    }
    let mut added = Vec::new();
    let mut puback = Vec::new();
    for (id, published) in &probe.published {
        let Some(seq) = id.strip_prefix('m').and_then(|s| s.parse::<u64>().ok()) else { continue };
        if let Some(at) = first_arrival.get(&seq) {
            added.push(ms(at.saturating_duration_since(*published)));
        }
        if let Some(at) = probe.acked.get(id) {
            puback.push(ms(at.saturating_duration_since(*published)));
        }
    }
    Ok(Latency {
        gateway_added: Percentiles::of(added).ok_or("no request reached a device while recording")?,
        publish_to_puback: Percentiles::of(puback).ok_or("no PUBACK while recording")?,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct FixedRate {
    pub offered_per_s: f64,
    pub devices: usize,
    pub seconds: f64,
    pub messages: u64,
    /// Sends the hub refused because its queue (50) was full.
    pub refused_queue_full: u64,
    pub latency: Latency,
}

/// Offers `rate` messages/s round robin to `devices` devices for `secs`,
/// then waits for every result report.
pub async fn fixed_rate(
    hub: &mut Hub,
    gw: &mut GatewayProc,
    devs: &[Arc<SimDevice>],
    rate: f64,
    secs: f64,
) -> Result<FixedRate, String> {
    let base = hub.events();
    start(hub, devs);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let (mut sent, mut refused) = (0u64, 0u64);
    while Instant::now() < end {
        tick.tick().await;
        match hub.send(sent as usize % devs.len()) {
            Ok(_) => sent += 1,
            Err(_) => refused += 1,
        }
        if sent % 200 == 0 {
            gw.alive()?;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    hub.drain(gw, base, sent, Duration::from_secs(60)).await?;
    let latency = finish(hub, devs)?;
    Ok(FixedRate {
        offered_per_s: rate,
        devices: devs.len(),
        seconds,
        messages: sent,
        refused_queue_full: refused,
        latency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!((p.p50_ms, p.p99_ms, p.max_ms, p.samples), (50.0, 99.0, 100.0, 100));
        let one = Percentiles::of(vec![3.0]).unwrap();
        assert_eq!((one.p50_ms, one.p99_ms), (3.0, 3.0));
        assert!(Percentiles::of(vec![]).is_none());
    }
}
