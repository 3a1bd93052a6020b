//! The bench's results: a table on stdout (each figure next to its goal,
//! pass or miss) and the same as JSON, with the machine and the gateway.

use super::footprint::Footprint;
use super::latency::{FixedRate, Latency, Percentiles};
use super::{ceiling, rtu, throughput};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub mode: &'static str,
    pub started_at: String,
    pub elapsed_s: f64,
    pub machine: Machine,
    pub gateway: GatewayInfo,
    pub settings: BTreeMap<&'static str, serde_json::Value>,
    pub throughput: Vec<throughput::Run>,
    pub latency: LatencyResults,
    pub rtu: Vec<rtu::Run>,
    /// One slow-ish device: its ceiling and the gateway's share of it.
    pub ceiling: Option<ceiling::Run>,
    pub footprint: Option<Footprint>,
    /// With `--strace`: system calls per message in a saturation pass (8 devices).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscalls_per_message: Option<BTreeMap<String, f64>>,
    pub goals: Vec<Goal>,
    pub errors: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct LatencyResults {
    /// The disk alone: a 256-byte append and fdatasync at the fixed rate
    /// (what each admission's flush costs at least; `bench/disk.rs`).
    pub disk_append: Option<Percentiles>,
    pub fixed_rate: Option<FixedRate>,
    pub saturation: Option<Saturation>,
}

#[derive(Debug, Serialize)]
pub struct Saturation {
    pub devices: usize,
    pub msg_per_s: f64,
    #[serde(flatten)]
    pub latency: Latency,
}

#[derive(Debug, Default, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub mem_total_kb: u64,
    /// Where the gateway's state directories were, and that file system.
    pub state_dir: String,
    pub state_fs: String,
    /// /proc/loadavg when the bench started and ended (other load skews figures).
    pub loadavg_start: String,
    pub loadavg_end: String,
}

#[derive(Debug, Default, Serialize)]
pub struct GatewayInfo {
    pub binary: String,
    pub version: String,
    /// HEAD of the git tree holding the binary, when there is one.
    pub commit: String,
    pub tree_dirty: bool,
    pub profile: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub figure: String,
    pub value: Option<f64>,
    pub unit: &'static str,
    pub goal: String,
    /// None when the figure is missing (its phase failed).
    pub pass: Option<bool>,
}

impl Results {
    /// Every figure of the table, with its goal where there is one.
    pub fn figures(&self) -> Vec<Goal> {
        let mut g = Vec::new();
        let mut add = |figure: String, value: Option<f64>, unit, goal: Option<(bool, f64)>| {
            let (text, pass) = match goal {
                Some((at_least, limit)) => (
                    format!("{} {}", if at_least { ">=" } else { "<=" }, limit),
                    value.map(|v| if at_least { v >= limit } else { v <= limit }),
                ),
                None => (String::new(), None),
            };
            g.push(Goal { figure, value, unit, goal: text, pass });
        };
        for n in [1, 8, 64] {
            let t = self.throughput.iter().find(|t| t.devices == n);
            let goal = (n == 8).then_some((true, 2000.0));
            add(format!("throughput, {n} TCP device(s)"), t.map(|t| t.msg_per_s), "msg/s", goal);
        }
        let t1 = self.throughput.iter().find(|t| t.devices == 1);
        add("CPU per message, 1 device saturated".into(), t1.map(|t| t.cpu_us_per_msg), "us", Some((false, 100.0)));
        add("journal flushes per message, 1 device".into(), t1.and_then(|t| t.journal_flushes_per_msg), "", None);
        let c = self.ceiling.as_ref();
        let which = match c.map(|c| (c.service_time_ms, c.device.as_str())) {
            Some((Some(ms), _)) => format!("slow-ish device ({ms} ms/request)"),
            Some((None, addr)) => format!("device {addr}"),
            None => "slow-ish device".into(),
        };
        add(format!("{which}: tight-loop ceiling"), c.map(|c| c.ceiling_per_s), "msg/s", None);
        add("gateway through it".into(), c.map(|c| c.gateway_per_s), "msg/s", None);
        add("gateway's share of the ceiling".into(), c.map(|c| c.share * 100.0), "%", Some((true, 70.0)));
        // Not the goal's case (the gateway saturated): the device sets the
        // pace, and each message pays its own wake-ups and flushes.
        add("CPU per message through it".into(), c.map(|c| c.cpu_us_per_msg), "us", None);
        add("journal flushes per message through it".into(), c.and_then(|c| c.journal_flushes_per_msg), "", None);
        let fixed = self.latency.fixed_rate.as_ref().map(|f| &f.latency);
        let rate = self.latency.fixed_rate.as_ref().map_or(200.0, |f| f.offered_per_s);
        add(
            format!("gateway-added latency @{rate}/s p50"),
            fixed.map(|l| l.gateway_added.p50_ms),
            "ms",
            Some((false, 1.0)),
        );
        add(
            format!("gateway-added latency @{rate}/s p99"),
            fixed.map(|l| l.gateway_added.p99_ms),
            "ms",
            Some((false, 1.0)),
        );
        add(format!("gateway-added latency @{rate}/s max"), fixed.map(|l| l.gateway_added.max_ms), "ms", None);
        // The floor under it: each message waits for one durable write.
        let disk = self.latency.disk_append.as_ref();
        add(format!("the disk alone: append + fdatasync @{rate}/s p50"), disk.map(|d| d.p50_ms), "ms", None);
        add(format!("the disk alone: append + fdatasync @{rate}/s p99"), disk.map(|d| d.p99_ms), "ms", None);
        add(format!("PUBLISH->PUBACK @{rate}/s p50"), fixed.map(|l| l.publish_to_puback.p50_ms), "ms", None);
        add(
            format!("PUBLISH->PUBACK @{rate}/s p99"),
            fixed.map(|l| l.publish_to_puback.p99_ms),
            "ms",
            Some((false, 10.0)),
        );
        add(format!("PUBLISH->PUBACK @{rate}/s max"), fixed.map(|l| l.publish_to_puback.max_ms), "ms", None);
        let sat = self.latency.saturation.as_ref().map(|s| &s.latency);
        add("gateway-added latency saturated p50".into(), sat.map(|l| l.gateway_added.p50_ms), "ms", None);
        add("gateway-added latency saturated p99".into(), sat.map(|l| l.gateway_added.p99_ms), "ms", None);
        add("gateway-added latency saturated max".into(), sat.map(|l| l.gateway_added.max_ms), "ms", None);
        add("PUBLISH->PUBACK saturated p50".into(), sat.map(|l| l.publish_to_puback.p50_ms), "ms", None);
        add("PUBLISH->PUBACK saturated p99".into(), sat.map(|l| l.publish_to_puback.p99_ms), "ms", None);
        add("PUBLISH->PUBACK saturated max".into(), sat.map(|l| l.publish_to_puback.max_ms), "ms", None);
        for baud in [9600, 115_200] {
            let r = self.rtu.iter().find(|r| r.baud == baud);
            add(format!("RTU {baud} baud writes/s"), r.map(|r| r.writes_per_s), "1/s", None);
            add(format!("RTU {baud} baud wire limit"), r.map(|r| r.wire_limit_per_s), "1/s", None);
            add(format!("RTU {baud} baud utilisation"), r.map(|r| r.utilisation * 100.0), "%", Some((true, 90.0)));
        }
        let f = self.footprint.as_ref();
        let n = f.map_or(0, |f| f.queued.messages);
        add("RSS idle".into(), f.map(|f| f.rss_idle_kb as f64 / 1024.0), "MiB", Some((false, 10.0)));
        let kib = f.map_or(0, |f| f.queued.body_bytes / 1024);
        add(
            format!("RSS with {n} x {kib} KiB queued"),
            f.map(|f| f.queued.rss_kb as f64 / 1024.0),
            "MiB",
            Some((false, 32.0)),
        );
        add(format!("restart to READY, {n} queued"), f.map(|f| f.restart.ready_ms / 1000.0), "s", Some((false, 1.0)));
        let t8 = self.throughput.iter().find(|t| t.devices == 8);
        add(
            "written per message (8 devices)".into(),
            t8.map(|t| t.write_bytes_per_msg / 1024.0),
            "KiB",
            Some((false, 2.0)),
        );
        let secs = f.map_or(0.0, |f| f.idle_cpu.seconds);
        add(format!("idle CPU over {secs:.0} s"), f.map(|f| f.idle_cpu.percent), "%", Some((false, 0.1)));
        g
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "c2d-gateway bench ({}): {} {} ({}), {} CPU(s), {}, kernel {}, state on {}, load {} -> {}",
            self.mode,
            self.gateway.version,
            self.gateway.commit,
            self.gateway.profile,
            m.nproc,
            m.cpu_model,
            m.kernel,
            m.state_fs,
            m.loadavg_start,
            m.loadavg_end
        );
        let _ = writeln!(s, "{:<48} {:>12} {:<6} goal", "figure", "value", "unit");
        for g in &self.goals {
            let v = g.value.map_or("-".to_string(), |v| {
                if v.abs() >= 100.0 {
                    format!("{v:.0}")
                } else if v.abs() >= 1.0 {
                    format!("{v:.2}")
                } else {
                    format!("{v:.3}")
                }
            });
            let verdict = match g.pass {
                Some(true) => "pass",
                Some(false) => "MISS",
                None if g.goal.is_empty() => "",
                None => "n/a",
            };
            let _ = writeln!(s, "{:<48} {:>12} {:<6} {:<10} {}", g.figure, v, g.unit, g.goal, verdict);
        }
        for t in &self.throughput {
            let _ = writeln!(
                s,
                "  {} device(s): {} messages in {:.2} s, {} delivered, {} device writes, {:.0} B written/msg, {:.1} write calls/msg, {:.0} us CPU/msg, {} flushes/msg",
                t.devices, t.messages, t.seconds, t.delivered, t.device_writes, t.write_bytes_per_msg, t.write_syscalls_per_msg,
                t.cpu_us_per_msg, t.journal_flushes_per_msg.map_or("?".into(), |f| format!("{f:.3}"))
            );
        }
        if let Some(c) = &self.ceiling {
            let _ = writeln!(
                s,
                "  {} device: {} messages, {} delivered, {} device writes, {:.0} B written/msg",
                c.device,
                c.messages,
                c.delivered,
                c.device_writes.map_or("(its own log)".into(), |w| w.to_string()),
                c.write_bytes_per_msg
            );
        }
        if let Some(f) = &self.footprint {
            let _ = writeln!(
                s,
                "  queued {} messages in {:.1} s ({}, max_unacked {}, {}); peak RSS {:.1} MiB; status: {}",
                f.queued.messages,
                f.queued.seconds_to_queue,
                f.queued.complete,
                f.queued.max_unacked,
                f.queued.acked_by,
                f.queued.peak_rss_kb as f64 / 1024.0,
                f.queued.status
            );
            let _ = writeln!(
                s,
                "  restart: stop {:.0} ms, READY {:.0} ms, hub connected {:.0} ms; status: {}",
                f.restart.stop_ms, f.restart.ready_ms, f.restart.hub_connected_ms, f.restart.status
            );
        }
        for r in &self.rtu {
            let _ = writeln!(
                s,
                "  RTU {} baud: wire cycle {:.2} ms, measured {:.2} ms; gateway turnaround p50 {:.2} / p99 {:.2} / max {:.2} ms (the line needs {:.2})",
                r.baud, r.wire_cycle_ms, r.measured_cycle_ms, r.gateway_turnaround.p50_ms, r.gateway_turnaround.p99_ms,
                r.gateway_turnaround.max_ms, r.t35_ms
            );
        }
        if let Some(sc) = &self.syscalls_per_message {
            let _ = writeln!(s, "  system calls per message (strace -c -f, 8 devices): {sc:?}");
        }
        for e in &self.errors {
            let _ = writeln!(s, "ERROR: {e}");
        }
        s
    }
}
