//! The gateway under test as a separate process: spawned with
//! `run --config`, watched through a NOTIFY_SOCKET the bench binds (READY=1,
//! STATUS=), its stderr kept (last lines) for error messages, and its
//! /proc figures (RSS, I/O, CPU). Dropping it kills the process.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UnixDatagram;
use tokio::task::JoinHandle;

type Notes = Arc<Mutex<Vec<(Instant, String)>>>;

pub struct GatewayProc {
    child: Child,
    pub pid: u32,
    pub spawned: Instant,
    notes: Notes,
    log: Arc<Mutex<VecDeque<String>>>,
    /// The thread reading stderr (ends with the process).
    log_reader: Option<std::thread::JoinHandle<()>>,
    notify_task: JoinHandle<()>,
}

/// How a gateway stopped.
pub struct Stopped {
    /// SIGTERM → exit.
    pub took: Duration,
    /// Journal flushes over the process's life (its last log line says).
    pub journal_flushes: Option<u64>,
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.notify_task.abort();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProc {
    /// Starts `exe run --config config`, NOTIFY_SOCKET bound at `notify`.
    pub fn spawn(exe: &Path, config: &Path, notify: &Path) -> Result<GatewayProc, String> {
        let _ = std::fs::remove_file(notify);
        let sock = UnixDatagram::bind(notify).map_err(|e| format!("cannot bind {}: {e}", notify.display()))?;
        let notes: Notes = Arc::default();
        let n = notes.clone();
        let notify_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(len) = sock.recv(&mut buf).await {
                let at = Instant::now();
                let text = String::from_utf8_lossy(&buf[..len]).to_string();
                let mut v = n.lock().unwrap_or_else(|p| p.into_inner());
                v.extend(text.lines().map(|l| (at, l.to_string())));
            }
        });
        let spawned = Instant::now();
        let mut child = Command::new(exe)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("NOTIFY_SOCKET", notify)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("C2D_GATEWAY_CONNECTION_STRING")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                notify_task.abort();
                format!("cannot start {}: {e}", exe.display())
            })?;
        // Drain stderr like journald would, keeping the last lines for errors.
        let log: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let mut log_reader = None;
        if let Some(err) = child.stderr.take() {
            let l = log.clone();
            log_reader = Some(std::thread::spawn(move || {
                for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                    let mut q = l.lock().unwrap_or_else(|p| p.into_inner());
                    if q.len() >= 40 {
                        q.pop_front();
                    }
                    q.push_back(line);
                }
            }));
        }
        let pid = child.id();
        Ok(GatewayProc { child, pid, spawned, notes, log, log_reader, notify_task })
    }

    /// The last lines the gateway wrote to stderr.
    pub fn log_tail(&self) -> String {
        let q = self.log.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().rev().take(15).rev().cloned().collect::<Vec<_>>().join("\n")
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(format!("the gateway exited ({st}); its last log lines:\n{}", self.log_tail())),
            _ => None,
        }
    }

    /// When the first notification line satisfying `f` arrived.
    fn note(&self, f: &impl Fn(&str) -> bool) -> Option<(Instant, String)> {
        let v = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        v.iter().find(|(_, l)| f(l)).cloned()
    }

    /// Waits for READY=1; returns when it arrived.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Instant, String> {
        self.wait_note("READY=1", timeout, |l| l == "READY=1").await.map(|(t, _)| t)
    }

    /// Waits for a notification line satisfying `f`.
    pub async fn wait_note(
        &mut self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&str) -> bool,
    ) -> Result<(Instant, String), String> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(n) = self.note(&f) {
                return Ok(n);
            }
            if let Some(e) = self.exited() {
                return Err(format!("waiting for {what}: {e}"));
            }
            if Instant::now() > end {
                return Err(format!("the gateway did not send {what} within {timeout:?}; log:\n{}", self.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Fails when the process is gone.
    pub fn alive(&mut self) -> Result<(), String> {
        self.exited().map_or(Ok(()), Err)
    }

    /// SIGTERM (the shell's kill), then waits up to `timeout` for the exit;
    /// SIGKILL after that. Says how long the stop took and what the
    /// gateway's last log line told.
    pub async fn stop(mut self, timeout: Duration) -> Result<Stopped, String> {
        let t0 = Instant::now();
        let term = Command::new("sh").args(["-c", &format!("kill -TERM {}", self.pid)]).status();
        if !term.is_ok_and(|s| s.success()) {
            let _ = self.child.kill();
        }
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) if st.success() => {
                    let took = t0.elapsed();
                    if let Some(r) = self.log_reader.take() {
                        let _ = tokio::task::spawn_blocking(move || r.join()).await;
                    }
                    let flushes = self.log.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().find_map(|l| {
                        let (_, rest) = l.split_once("journal_flushes=")?;
                        rest.split_whitespace().next()?.parse().ok()
                    });
                    return Ok(Stopped { took, journal_flushes: flushes });
                }
                Ok(Some(st)) => return Err(format!("the gateway stopped with {st}; log:\n{}", self.log_tail())),
                Ok(None) if t0.elapsed() > timeout => {
                    return Err(format!("the gateway did not stop within {timeout:?} after SIGTERM"));
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => return Err(format!("waiting for the gateway: {e}")),
            }
        }
    }

    pub fn rss_kb(&self) -> Option<u64> {
        status_kb(self.pid, "VmRSS:")
    }

    pub fn hwm_kb(&self) -> Option<u64> {
        status_kb(self.pid, "VmHWM:")
    }

    pub fn io(&self) -> Option<Io> {
        Io::read(self.pid)
    }

    /// utime + stime in clock ticks.
    pub fn cpu_ticks(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // Fields after "(comm)": state is field 3, utime 14, stime 15.
        let rest = &s[s.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    }
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// /proc/PID/io counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Io {
    /// Bytes the process caused to be sent to the storage layer.
    pub write_bytes: u64,
    /// Bytes passed to write-like system calls.
    pub wchar: u64,
    /// Write-like system calls.
    pub syscw: u64,
}

impl Io {
    fn read(pid: u32) -> Option<Io> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
        let get = |k: &str| s.lines().find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok());
        Some(Io { write_bytes: get("write_bytes:")?, wchar: get("wchar:")?, syscw: get("syscw:")? })
    }

    pub fn since(&self, before: &Io) -> Io {
        Io {
            write_bytes: self.write_bytes.saturating_sub(before.write_bytes),
            wchar: self.wchar.saturating_sub(before.wchar),
            syscw: self.syscw.saturating_sub(before.syscw),
        }
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when that fails).
pub fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// A scratch directory removed (with everything in it) when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(base: &Path) -> Result<Scratch, String> {
        let p = base.join(format!("c2d-bench-{}-{:08x}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&p).map_err(|e| format!("cannot create {}: {e}", p.display()))?;
        Ok(Scratch(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
