//! `c2d-gateway bench`: the real gateway binary as a separate process
//! (`run --config`), against the hub emulator (azure dialect, plain MQTT on
//! loopback) and simulated Modbus devices run in this process. Measures
//! throughput, latency, RTU bus utilisation, memory, restart time, bytes
//! written per message and idle CPU; prints a table with the goals and
//! writes JSON (`--json PATH`). Every process and directory it makes is
//! removed when it ends, on errors and on Ctrl-C too.

mod ceiling;
mod disk;
mod footprint;
mod gateway;
mod latency;
mod report;
mod rig;
mod rtu;
mod throughput;

use report::{GatewayInfo, Machine, Results, Saturation};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

#[derive(clap::Args)]
pub struct Args {
    /// Small counts and short runs (well under a minute): for CI.
    #[arg(long)]
    pub quick: bool,
    /// Write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// The gateway binary to measure (default: this one).
    #[arg(long, value_name = "PATH")]
    pub gateway: Option<PathBuf>,
    /// Parent of the scratch directories (state dirs live there: pick the disk to measure).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The simulated RTU device's reply time (between request and reply).
    #[arg(long, default_value = "1ms", value_parser = crate::cli::duration)]
    pub rtu_reply_time: Duration,
    /// The slow-ish device's own time per request (the ceiling phase).
    #[arg(long, default_value = "300us", value_parser = crate::cli::duration)]
    pub device_service_time: Duration,
    /// The ceiling phase's device: this Modbus TCP device (unit 1, holding
    /// registers 100-101 writable) instead of a simulated one.
    #[arg(long, value_name = "HOST:PORT")]
    pub device: Option<std::net::SocketAddr>,
    /// Also count system calls per message with strace (a separate, untimed pass).
    #[arg(long)]
    pub strace: bool,
    /// Run only these phases (the others' figures stay empty).
    #[arg(long, value_delimiter = ',', value_name = "PHASE,...")]
    pub only: Vec<Phase>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// RSS idle and queued, idle CPU, restart time.
    Footprint,
    /// 1, 8, 64 TCP devices; latency at a fixed rate and saturated; bytes written.
    Throughput,
    /// RTU bus utilisation at 9600 and 115200 baud.
    Rtu,
    /// One slow-ish device: its ceiling from a tight loop, and the gateway through it.
    Ceiling,
}

/// What the phases run with.
pub struct Plan {
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub sat_secs: f64,
    pub fixed_secs: f64,
    pub fixed_rate: f64,
    /// How long the disk's durable append is measured at `fixed_rate`.
    pub disk_secs: f64,
    pub rtu_secs: f64,
    pub rtu_reply_time: Duration,
    pub service_time: Duration,
    pub device: Option<std::net::SocketAddr>,
    pub idle_secs: f64,
    pub queued: u64,
    pub strace: bool,
}

impl Plan {
    fn new(a: &Args) -> Result<Plan, String> {
        let exe = match &a.gateway {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?,
        };
        let dir = a.dir.clone().unwrap_or_else(std::env::temp_dir);
        let q = a.quick;
        Ok(Plan {
            exe,
            dir,
            sat_secs: if q { 1.5 } else { 10.0 },
            fixed_secs: if q { 2.0 } else { 20.0 },
            fixed_rate: 200.0,
            disk_secs: if q { 1.0 } else { 10.0 },
            rtu_secs: if q { 1.5 } else { 10.0 },
            rtu_reply_time: a.rtu_reply_time,
            service_time: a.device_service_time,
            device: a.device,
            idle_secs: if q { 3.0 } else { 60.0 },
            queued: if q { 1_000 } else { 10_000 },
            strace: a.strace,
        })
    }
}

pub async fn run(a: Args) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    // Dropping the bench on a signal drops every gateway (killed) and
    // scratch directory (removed) it holds.
    tokio::select! {
        r = bench(a) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        _ = term.recv() => Err("terminated".into()),
    }
}

async fn bench(a: Args) -> Result<(), String> {
    let plan = Plan::new(&a)?;
    let started = Instant::now();
    let mut r = Results {
        mode: if a.quick { "quick" } else { "full" },
        started_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        machine: machine(&plan.dir),
        gateway: gateway_info(&plan.exe),
        ..Results::default()
    };
    let set = |r: &mut Results, k, v: serde_json::Value| {
        r.settings.insert(k, v);
    };
    set(&mut r, "saturation_seconds", plan.sat_secs.into());
    set(&mut r, "fixed_rate_per_s", plan.fixed_rate.into());
    set(&mut r, "fixed_rate_seconds", plan.fixed_secs.into());
    set(&mut r, "rtu_seconds", plan.rtu_secs.into());
    set(&mut r, "rtu_reply_time_ms", (plan.rtu_reply_time.as_secs_f64() * 1000.0).into());
    set(&mut r, "device_service_time_ms", (plan.service_time.as_secs_f64() * 1000.0).into());
    set(&mut r, "idle_cpu_seconds", plan.idle_secs.into());
    set(&mut r, "queued_messages", plan.queued.into());
    set(&mut r, "hub_queue_limit", crate::emulator::state::QUEUE_LIMIT.into());
    set(&mut r, "throughput_max_unacked", throughput::MAX_UNACKED.into());
    set(
        &mut r,
        "journal",
        "sled journal in the state dir (flushed before dispatch and ack), complete = after-device".into(),
    );
    eprintln!("bench: gateway {} ({}), scratch under {}", plan.exe.display(), r.gateway.version, plan.dir.display());

    let runs = |p: Phase| a.only.is_empty() || a.only.contains(&p);
    if runs(Phase::Footprint) {
        eprintln!("bench: footprint (idle RSS, {} s idle CPU, {} queued, restart)", plan.idle_secs, plan.queued);
        match footprint::run(&plan).await {
            Ok(f) => r.footprint = Some(f),
            Err(e) => r.errors.push(format!("footprint: {e}")),
        }
    }
    for n in [1, 8, 64].into_iter().filter(|_| runs(Phase::Throughput)) {
        eprintln!("bench: throughput with {n} Modbus TCP device(s)");
        let fixed = (n == 8).then_some(plan.fixed_rate);
        if fixed.is_some() {
            let (dir, rate, secs) = (plan.dir.clone(), plan.fixed_rate, plan.disk_secs);
            let took = tokio::task::spawn_blocking(move || disk::durable_append(&dir, rate, secs)).await;
            match took.map_err(|e| e.to_string()).and_then(|t| t) {
                Ok(p) => r.latency.disk_append = Some(p),
                Err(e) => r.errors.push(format!("the disk's durable append: {e}")),
            }
        }
        match throughput::run(&plan, n, fixed).await {
            Ok(o) => {
                if n == 8 {
                    r.latency.fixed_rate = o.fixed;
                    r.latency.saturation =
                        Some(Saturation { devices: n, msg_per_s: o.run.msg_per_s, latency: o.run.latency.clone() });
                    r.syscalls_per_message = o.syscalls;
                }
                r.throughput.push(o.run);
            }
            Err(e) => r.errors.push(format!("throughput with {n} device(s): {e}")),
        }
    }
    if runs(Phase::Ceiling) {
        match plan.device {
            Some(d) => eprintln!("bench: the Modbus TCP device at {d}: its ceiling, then the gateway"),
            None => eprintln!(
                "bench: one slow-ish device ({:?} a request): its ceiling, then the gateway",
                plan.service_time
            ),
        }
        match ceiling::run(&plan).await {
            Ok(c) => {
                if c.delivered != c.messages || c.device_writes.is_some_and(|w| w != c.messages) {
                    r.errors.push(format!(
                        "slow-ish device: {} messages, {} delivered, {:?} device writes (each should run exactly once)",
                        c.messages, c.delivered, c.device_writes
                    ));
                }
                r.ceiling = Some(c);
            }
            Err(e) => r.errors.push(format!("slow-ish device: {e}")),
        }
    }
    for baud in [9600, 115_200].into_iter().filter(|_| runs(Phase::Rtu)) {
        eprintln!("bench: RTU at {baud} baud");
        match rtu::run(&plan, baud).await {
            Ok(x) => r.rtu.push(x),
            Err(e) => r.errors.push(format!("RTU at {baud} baud: {e}")),
        }
    }
    for t in &r.throughput {
        if t.delivered != t.messages || t.device_writes != t.messages {
            r.errors.push(format!(
                "{} device(s): {} messages, {} delivered, {} device writes (each should run exactly once)",
                t.devices, t.messages, t.delivered, t.device_writes
            ));
        }
    }
    r.elapsed_s = started.elapsed().as_secs_f64();
    r.machine.loadavg_end = loadavg();
    r.goals = r.figures();
    print!("{}", r.table());
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if r.errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{} phase(s) failed (see ERROR above)", r.errors.len()))
    }
}

fn machine(dir: &Path) -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let mem_total_kb = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").and_then(|v| v.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0);
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    // The file system of the longest mount point holding `dir`.
    let state_fs = read("/proc/mounts")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && dir.starts_with(f[1])).then(|| (f[1].len(), f[2].to_string()))
        })
        .max()
        .map_or_else(|| "unknown".into(), |(_, fs)| fs);
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpu_model,
        mem_total_kb,
        state_dir: dir.display().to_string(),
        state_fs,
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
    }
}

fn loadavg() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn gateway_info(exe: &Path) -> GatewayInfo {
    let out = |cmd: &mut std::process::Command| {
        cmd.output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let version = out(std::process::Command::new(exe).arg("--version")).unwrap_or_else(|| "unknown".into());
    let dir = exe.parent().unwrap_or(Path::new("."));
    let git = |args: &[&str]| out(std::process::Command::new("git").arg("-C").arg(dir).args(args));
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let tree_dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let profile = dir.file_name().map_or("unknown".into(), |n| n.to_string_lossy().to_string());
    GatewayInfo { binary: exe.display().to_string(), version, commit, tree_dirty, profile }
}
