//! The gateway's footprint: RSS idle and with many messages of 1 KiB queued
//! for a device that is down, idle CPU, and the restart time to READY=1 with
//! that queue in the journal.

use super::gateway::clk_tck;
use super::rig::{BusSpec, GwConfig, Hub, TcpSim};
use super::Plan;
use crate::emulator::state::QUEUE_LIMIT;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The gateway's defaults: beyond 16 un-acked messages the oldest are handed
/// over (acknowledged once journaled), so a dead device does not stall the hub.
const MAX_UNACKED: usize = 16;

/// The size of each queued message's body.
pub const QUEUED_BODY: usize = 1024;

#[derive(Debug, Clone, Serialize)]
pub struct Footprint {
    pub rss_idle_kb: u64,
    pub idle_cpu: IdleCpu,
    pub queued: Queued,
    pub restart: Restart,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleCpu {
    pub seconds: f64,
    pub ticks: u64,
    pub clk_tck: u64,
    pub percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Queued {
    pub messages: u64,
    pub complete: &'static str,
    pub max_unacked: usize,
    pub body_bytes: usize,
    /// How the messages were acknowledged to the hub before delivery.
    pub acked_by: &'static str,
    pub device: &'static str,
    /// The gateway's own STATUS= line once they were queued.
    pub status: String,
    pub seconds_to_queue: f64,
    pub rss_kb: u64,
    pub peak_rss_kb: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub queued: u64,
    pub stop_ms: f64,
    /// Process start → READY=1.
    pub ready_ms: f64,
    /// Process start → connected at the hub (session resumed).
    pub hub_connected_ms: f64,
    /// The STATUS= line after the restart, showing the resumed queue.
    pub status: String,
}

/// "hub connected, 10000 queued, oldest 3s" → 10000.
fn queued_in(status: &str) -> Option<u64> {
    let (_, rest) = status.split_once(", ")?;
    rest.split_whitespace().next()?.parse().ok()
}

pub async fn run(plan: &Plan) -> Result<Footprint, String> {
    let mut hub = Hub::start(&plan.dir, &plan.exe).await?;
    let live = TcpSim::start().await?;
    let cfg = GwConfig {
        max_unacked: MAX_UNACKED,
        complete: "after-device",
        buses: vec![BusSpec::Tcp(live.addr), BusSpec::DeadSerial],
        bus_timeout: "200ms",
    };
    let mut gw = hub.gateway(&cfg).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle_kb = gw.rss_kb().ok_or("cannot read VmRSS")?;

    let tck = clk_tck();
    let c0 = gw.cpu_ticks().ok_or("cannot read /proc/PID/stat")?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(plan.idle_secs)).await;
    let ticks = gw.cpu_ticks().ok_or("cannot read /proc/PID/stat")? - c0;
    let seconds = t0.elapsed().as_secs_f64();
    let idle_cpu = IdleCpu { seconds, ticks, clk_tck: tck, percent: ticks as f64 / tck as f64 / seconds * 100.0 };
    gw.alive()?;

    // Queue N messages for the dead device (d1): the hub's queue is kept
    // full until every one was PUBLISHed; the gateway's STATUS= then shows
    // them journaled. (The last max_unacked stay un-acked at the hub until
    // handover_after: the gateway holds them in its window.)
    let n = plan.queued;
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < n || !hub.all_published() {
        while sent < n && hub.queued() < QUEUE_LIMIT {
            hub.send_text(1, QUEUED_BODY)?;
            sent += 1;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            return Err(format!("queueing {n} messages took over 300 s ({} still at the hub)", hub.queued()));
        }
        gw.alive()?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (_, status) = gw
        .wait_note(&format!("STATUS with {n} queued"), Duration::from_secs(30), |l| {
            l.strip_prefix("STATUS=").and_then(queued_in).is_some_and(|q| q >= n)
        })
        .await?;
    let seconds_to_queue = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let queued = Queued {
        messages: n,
        complete: "after-device",
        max_unacked: MAX_UNACKED,
        body_bytes: QUEUED_BODY,
        acked_by: "window handover (beyond max_unacked, after the journal flush)",
        device: "serial device whose port does not exist",
        status: status.trim_start_matches("STATUS=").to_string(),
        seconds_to_queue,
        rss_kb: gw.rss_kb().ok_or("cannot read VmRSS")?,
        peak_rss_kb: gw.hwm_kb().ok_or("cannot read VmHWM")?,
    };

    let stop = gw.stop(Duration::from_secs(30)).await?;
    let mut gw = super::gateway::GatewayProc::spawn(
        &plan.exe,
        &hub.dir.path().join("gateway.toml"),
        &hub.dir.path().join("notify.sock"),
    )?;
    let ready = gw.wait_ready(Duration::from_secs(60)).await?;
    hub.wait_subscribed(&mut gw).await?;
    let subscribed = Instant::now();
    let (_, status) = gw
        .wait_note(&format!("STATUS with {n} queued after the restart"), Duration::from_secs(30), |l| {
            l.strip_prefix("STATUS=").and_then(queued_in).is_some_and(|q| q >= n)
        })
        .await?;
    let restart = Restart {
        queued: n,
        stop_ms: stop.took.as_secs_f64() * 1000.0,
        ready_ms: (ready - gw.spawned).as_secs_f64() * 1000.0,
        hub_connected_ms: (subscribed - gw.spawned).as_secs_f64() * 1000.0,
        status: status.trim_start_matches("STATUS=").to_string(),
    };
    gw.stop(Duration::from_secs(30)).await?;
    Ok(Footprint { rss_idle_kb, idle_cpu, queued, restart })
}

#[cfg(test)]
mod tests {
    #[test]
    fn queued_count_from_a_status_line() {
        assert_eq!(super::queued_in("hub connected, 10000 queued, oldest 3s"), Some(10000));
        assert_eq!(super::queued_in("hub disconnected, 0 queued"), Some(0));
        assert_eq!(super::queued_in("garbage"), None);
    }
}
