//! Throughput end to end (C2D in → device ack → PUBACK → result report) with
//! the durable journal, for N Modbus TCP devices (each its own endpoint and
//! bus); the hub's queue (50) is kept full. Also the bytes written to the
//! state directory's device per message, the saturation latency, and (with
//! `--strace`) the system calls per message.

use super::gateway::GatewayProc;
use super::latency::{self, FixedRate, Latency};
use super::rig::{BusSpec, GwConfig, Hub, TcpSim};
use super::Plan;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// PUBACK only after the device acked: the window must hold the hub's
/// whole queue (50), or the messages beyond it would be handed over
/// (acknowledged before delivery).
pub const MAX_UNACKED: usize = 64;

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub devices: usize,
    pub max_unacked: usize,
    pub messages: u64,
    pub seconds: f64,
    pub msg_per_s: f64,
    /// Reports saying `delivered` (the rest failed: see the gateway log).
    pub delivered: u64,
    /// Writes the simulated devices applied (more than `messages` = a repeat).
    pub device_writes: u64,
    pub write_bytes: u64,
    pub write_bytes_per_msg: f64,
    pub wchar_per_msg: f64,
    pub write_syscalls_per_msg: f64,
    /// The gateway's user + system CPU over the saturation run, per message.
    pub cpu_us_per_msg: f64,
    /// Journal flushes (each a sled flush and an fdatasync) per message,
    /// over the gateway's whole run (warm-up and any fixed-rate run too).
    pub journal_flushes_per_msg: Option<f64>,
    pub latency: Latency,
}

pub struct Outcome {
    pub run: Run,
    pub fixed: Option<FixedRate>,
    pub syscalls: Option<BTreeMap<String, f64>>,
}

/// One gateway with `n` devices: optionally a fixed-rate latency run first,
/// then the saturation run.
pub async fn run(plan: &Plan, n: usize, fixed_rate: Option<f64>) -> Result<Outcome, String> {
    let mut hub = Hub::start(&plan.dir, &plan.exe).await?;
    let mut sims = Vec::with_capacity(n);
    for _ in 0..n {
        sims.push(TcpSim::start().await?);
    }
    let devs: Vec<_> = sims.iter().map(|s| s.dev.clone()).collect();
    let cfg = GwConfig {
        max_unacked: MAX_UNACKED,
        complete: "after-device",
        buses: sims.iter().map(|s| BusSpec::Tcp(s.addr)).collect(),
        bus_timeout: "1s",
    };
    let mut gw = hub.gateway(&cfg).await?;
    // Warm up: every bus connects to its device.
    let base = hub.events();
    hub.feed(&mut gw, n as u64, n).await?;
    hub.drain(&mut gw, base, n as u64, Duration::from_secs(30)).await?;

    let fixed = match fixed_rate {
        Some(rate) => Some(latency::fixed_rate(&mut hub, &mut gw, &devs, rate, plan.fixed_secs).await?),
        None => None,
    };

    let writes_before: usize = devs.iter().map(|d| d.writes().len()).sum();
    let io0 = gw.io().ok_or("cannot read /proc/PID/io of the gateway")?;
    let cpu0 = gw.cpu_ticks().ok_or("cannot read /proc/PID/stat of the gateway")?;
    let base = hub.events();
    latency::start(&hub, &devs);
    let t0 = Instant::now();
    let sent = hub.saturate(&mut gw, n, t0 + Duration::from_secs_f64(plan.sat_secs)).await?;
    let t1 = hub.drain(&mut gw, base, sent, Duration::from_secs(120)).await?;
    let lat = latency::finish(&hub, &devs)?;
    let io = gw.io().ok_or("cannot read /proc/PID/io of the gateway")?.since(&io0);
    let cpu = gw.cpu_ticks().ok_or("cannot read /proc/PID/stat of the gateway")? - cpu0;
    let seconds = (t1 - t0).as_secs_f64();
    let writes: usize = devs.iter().map(|d| d.writes().len()).sum();
    let per = |x: u64| x as f64 / sent.max(1) as f64;
    let run = Run {
        devices: n,
        max_unacked: MAX_UNACKED,
        messages: sent,
        seconds,
        msg_per_s: sent as f64 / seconds,
        delivered: hub.delivered_since(base) as u64,
        device_writes: (writes - writes_before) as u64,
        write_bytes: io.write_bytes,
        write_bytes_per_msg: per(io.write_bytes),
        wchar_per_msg: per(io.wchar),
        write_syscalls_per_msg: per(io.syscw),
        cpu_us_per_msg: cpu_us(cpu, sent),
        journal_flushes_per_msg: None,
        latency: lat,
    };
    let syscalls = if plan.strace { Some(strace_pass(plan, &mut hub, &mut gw, n).await?) } else { None };
    let stopped = gw.stop(Duration::from_secs(30)).await?;
    let all_writes: usize = devs.iter().map(|d| d.writes().len()).sum();
    let run = Run { journal_flushes_per_msg: flushes_per(stopped.journal_flushes, all_writes as u64), ..run };
    drop(sims);
    Ok(Outcome { run, fixed, syscalls })
}

/// CPU clock ticks spent over `messages`, in microseconds each.
pub fn cpu_us(ticks: u64, messages: u64) -> f64 {
    ticks as f64 * 1e6 / super::gateway::clk_tck() as f64 / messages.max(1) as f64
}

/// Flushes per message, when the gateway said how many it made.
pub fn flushes_per(flushes: Option<u64>, messages: u64) -> Option<f64> {
    flushes.map(|f| f as f64 / messages.max(1) as f64)
}

/// A second, short saturation pass under `strace -c -f`: system calls per
/// message (ptrace slows the gateway down, so this pass is not timed).
async fn strace_pass(
    plan: &Plan,
    hub: &mut Hub,
    gw: &mut GatewayProc,
    n: usize,
) -> Result<BTreeMap<String, f64>, String> {
    let out = hub.dir.path().join("strace.txt");
    let mut st = std::process::Command::new("strace")
        .args(["-c", "-f", "-qq", "-e", "trace=fsync,fdatasync,sync_file_range,pwrite64,write,writev,sendto"])
        .arg("-o")
        .arg(&out)
        .args(["-p", &gw.pid.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run strace: {e}"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = hub.events();
    let sent = hub.saturate(gw, n, Instant::now() + Duration::from_secs_f64(plan.sat_secs.min(5.0))).await;
    let drained = match sent {
        Ok(s) => hub.drain(gw, base, s, Duration::from_secs(120)).await.map(|_| s),
        Err(e) => Err(e),
    };
    let _ = std::process::Command::new("sh").args(["-c", &format!("kill -INT {}", st.id())]).status();
    let _ = st.wait();
    let sent = drained?;
    let text = std::fs::read_to_string(&out).map_err(|e| format!("strace wrote no summary: {e}"))?;
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors,] syscall
        if f.len() >= 5 && f[0].parse::<f64>().is_ok() {
            if let (Ok(c), Some(name)) = (f[3].parse::<u64>(), f.last()) {
                calls.insert(name.to_string(), c as f64 / sent.max(1) as f64);
            }
        }
    }
    calls.insert("messages".into(), sent as f64);
    Ok(calls)
}
