//! RTU bus utilisation: a simulated RTU device on a pty pair that replies as
//! late as a real line at the given baud would (a pty has no baud timing);
//! writes/s achieved against the wire limit computed from the frame sizes,
//! the 3.5-character silences and the device's reply time.

use super::latency::Percentiles;
use super::rig::{BusSpec, GwConfig, Hub};
use super::throughput::MAX_UNACKED;
use super::Plan;
use crate::sim::modbus::{rtu_reply_len, rtu_request_len, serve_rtu, Pace, SimDevice};
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio_modbus::{Request, Response};
use tokio_serial::{SerialPort, SerialStream};

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub baud: u32,
    pub reply_time_ms: f64,
    pub request_bytes: usize,
    pub reply_bytes: usize,
    /// One exchange plus the master's silence before the next request.
    pub wire_cycle_ms: f64,
    pub wire_limit_per_s: f64,
    pub writes: u64,
    pub writes_per_s: f64,
    /// writes_per_s / wire_limit_per_s.
    pub utilisation: f64,
    /// Mean time from one request to the next, as the device saw it.
    pub measured_cycle_ms: f64,
    /// The silence the line needs between a reply and the next request.
    pub t35_ms: f64,
    /// From the end of a reply (on the simulated wire) to the next request:
    /// the gateway's turnaround; t35_ms is the least the wire allows.
    pub gateway_turnaround: Percentiles,
}

pub async fn run(plan: &Plan, baud: u32) -> Result<Run, String> {
    let pace = Pace { baud, reply_time: plan.rtu_reply_time };
    // The bench's message: FC16 writing the u32 point `seq`.
    let request_bytes = rtu_request_len(&Request::WriteMultipleRegisters(100, vec![0, 0].into()));
    let reply_bytes = rtu_reply_len(&Ok(Response::WriteMultipleRegisters(100, 2)));
    let cycle = pace.exchange(request_bytes, reply_bytes) + pace.t35();

    let (master, slave) = SerialStream::pair().map_err(|e| format!("cannot make a pty pair: {e}"))?;
    let path = slave.name().ok_or("the pty has no path")?;
    // A plain handle keeps the slave open so the master never reads EIO.
    let keep = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {path}: {e}"))?;
    drop(slave);
    let dev = SimDevice::new(&[1]);
    dev.set_pace(Some(pace));
    let server = tokio::spawn(serve_rtu(master, dev.clone()));

    let result = async {
        let mut hub = Hub::start(&plan.dir, &plan.exe).await?;
        let cfg = GwConfig {
            max_unacked: MAX_UNACKED,
            complete: "after-device",
            buses: vec![BusSpec::Rtu { port: path.clone(), baud }],
            bus_timeout: "1s",
        };
        let mut gw = hub.gateway(&cfg).await?;
        let base = hub.events();
        hub.send(0)?;
        hub.drain(&mut gw, base, 1, Duration::from_secs(30)).await?;
        dev.record_arrivals(true);
        let base = hub.events();
        let sent = hub.saturate(&mut gw, 1, Instant::now() + Duration::from_secs_f64(plan.rtu_secs)).await?;
        let arrivals = dev.take_arrivals();
        dev.record_arrivals(false);
        // The rest drains at the line's pace.
        hub.drain(&mut gw, base, sent, Duration::from_secs(120)).await?;
        gw.stop(Duration::from_secs(30)).await?;
        // Steady state: skip the first tenth.
        let skip = arrivals.len() / 10;
        let a = &arrivals[skip..];
        if a.len() < 3 {
            return Err(format!("only {} requests reached the RTU device", arrivals.len()));
        }
        let span = (a[a.len() - 1].at - a[0].at).as_secs_f64();
        let per_s = (a.len() - 1) as f64 / span;
        let exchange = pace.exchange(request_bytes, reply_bytes);
        let turnaround: Vec<f64> = a
            .windows(2)
            .map(|w| (w[1].at.saturating_duration_since(w[0].at + exchange)).as_secs_f64() * 1000.0)
            .collect();
        Ok(Run {
            baud,
            reply_time_ms: plan.rtu_reply_time.as_secs_f64() * 1000.0,
            request_bytes,
            reply_bytes,
            wire_cycle_ms: cycle.as_secs_f64() * 1000.0,
            wire_limit_per_s: 1.0 / cycle.as_secs_f64(),
            writes: arrivals.len() as u64,
            writes_per_s: per_s,
            utilisation: per_s * cycle.as_secs_f64(),
            measured_cycle_ms: 1000.0 / per_s,
            t35_ms: pace.t35().as_secs_f64() * 1000.0,
            gateway_turnaround: Percentiles::of(turnaround).ok_or("no turnaround measured")?,
        })
    }
    .await;
    server.abort();
    drop(keep);
    result
}
