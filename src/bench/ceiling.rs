//! Throughput through one slow-ish device: how many writes the simulated
//! device takes from a client writing in a tight loop (its ceiling), then
//! how many messages the gateway delivers to the same device end to end
//! (C2D in → device ack → PUBACK → report, journal durable), with the
//! gateway's CPU and journal flushes per message on that run. The gateway
//! is not the bottleneck when it comes close to the ceiling.

use super::rig::{BusSpec, GwConfig, Hub, TcpSim};
use super::throughput::{cpu_us, flushes_per, MAX_UNACKED};
use super::Plan;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// "simulated", or the address of the external device (`--device`).
    pub device: String,
    /// The simulated device's own time per request (reply no earlier than this).
    pub service_time_ms: Option<f64>,
    /// Writes per second a tight-loop Modbus TCP client gets from it.
    pub ceiling_per_s: f64,
    /// The tight loop's writes (to holding registers 100-101).
    pub ceiling_writes: u64,
    /// Messages per second the gateway delivered to it, end to end.
    pub gateway_per_s: f64,
    /// gateway_per_s / ceiling_per_s.
    pub share: f64,
    pub messages: u64,
    pub delivered: u64,
    /// Writes the simulated device applied (an external one keeps its own log).
    pub device_writes: Option<u64>,
    /// Messages the gateway delivered over its whole run (one warm-up too).
    pub gateway_messages: u64,
    pub cpu_us_per_msg: f64,
    pub journal_flushes_per_msg: Option<f64>,
    pub write_bytes_per_msg: f64,
}

/// Writes `seconds` long in a tight loop (FC16 of two registers, the
/// gateway's request for the `seq` point); returns writes per second and
/// how many.
async fn tight_loop(addr: std::net::SocketAddr, seconds: f64) -> Result<(f64, u64), String> {
    use tokio_modbus::client::Writer;
    let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(1))
        .await
        .map_err(|e| format!("tight-loop client: cannot connect: {e}"))?;
    let (t0, mut n) = (Instant::now(), 0u32);
    let end = t0 + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        ctx.write_multiple_registers(100, &[(n >> 16) as u16, n as u16])
            .await
            .map_err(|e| format!("tight-loop client: {e}"))?
            .map_err(|e| format!("tight-loop client: device answered {e}"))?;
        n += 1;
    }
    Ok((n as f64 / t0.elapsed().as_secs_f64(), n as u64))
}

pub async fn run(plan: &Plan) -> Result<Run, String> {
    let sim = match plan.device {
        Some(_) => None,
        None => {
            let sim = TcpSim::start().await?;
            sim.dev.set_service_time(plan.service_time);
            Some(sim)
        }
    };
    let addr = plan.device.or(sim.as_ref().map(|s| s.addr)).expect("a device");
    let writes = || sim.as_ref().map(|s| s.dev.writes().len() as u64);
    let (ceiling_per_s, ceiling_writes) = tight_loop(addr, plan.sat_secs).await?;

    let mut hub = Hub::start(&plan.dir, &plan.exe).await?;
    let cfg = GwConfig {
        max_unacked: MAX_UNACKED,
        complete: "after-device",
        buses: vec![BusSpec::Tcp(addr)],
        bus_timeout: "1s",
    };
    let mut gw = hub.gateway(&cfg).await?;
    let base = hub.events();
    hub.feed(&mut gw, 1, 1).await?;
    hub.drain(&mut gw, base, 1, Duration::from_secs(30)).await?;

    let writes_before = writes();
    let io0 = gw.io().ok_or("cannot read /proc/PID/io of the gateway")?;
    let cpu0 = gw.cpu_ticks().ok_or("cannot read /proc/PID/stat of the gateway")?;
    let base = hub.events();
    let t0 = Instant::now();
    let sent = hub.saturate(&mut gw, 1, t0 + Duration::from_secs_f64(plan.sat_secs)).await?;
    let t1 = hub.drain(&mut gw, base, sent, Duration::from_secs(120)).await?;
    let cpu = gw.cpu_ticks().ok_or("cannot read /proc/PID/stat of the gateway")? - cpu0;
    let io = gw.io().ok_or("cannot read /proc/PID/io of the gateway")?.since(&io0);
    let delivered = hub.delivered_since(base) as u64;
    let device_writes = writes().zip(writes_before).map(|(a, b)| a - b);
    let stopped = gw.stop(Duration::from_secs(30)).await?;
    let gateway_per_s = sent as f64 / (t1 - t0).as_secs_f64();
    // The gateway's messages over its whole run (the warm-up's too).
    let all = hub.delivered_since(0) as u64;
    Ok(Run {
        device: plan.device.map_or("simulated".into(), |d| d.to_string()),
        service_time_ms: sim.as_ref().map(|_| plan.service_time.as_secs_f64() * 1000.0),
        ceiling_per_s,
        ceiling_writes,
        gateway_per_s,
        share: gateway_per_s / ceiling_per_s,
        messages: sent,
        delivered,
        device_writes,
        gateway_messages: all,
        cpu_us_per_msg: cpu_us(cpu, sent),
        journal_flushes_per_msg: flushes_per(stopped.journal_flushes, all),
        write_bytes_per_msg: io.write_bytes as f64 / sent.max(1) as f64,
    })
}
