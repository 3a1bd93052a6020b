//! The operator's verbs: `status` and `queue list|show|retry|resolve|drop`.
//! Each sends one request over the control socket of the running daemon
//! (found through `--config`, like `run`) and prints the answer for a
//! person, or as JSON with `--json`. Nothing here opens the journal: the
//! daemon owns it.

use crate::config::{Config, DEFAULT_PATH};
use crate::operate::protocol::{Envelope, Request, Response, Target};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Common {
    /// The gateway's configuration (the control socket is found there).
    #[arg(long, default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Print the answer as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
    /// The control socket itself, instead of the one `--config` names.
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

impl Common {
    fn socket(&self) -> Result<PathBuf, String> {
        match &self.socket {
            Some(s) => Ok(s.clone()),
            None => socket(&self.config),
        }
    }
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    pub verb: QueueVerb,
}

/// Which message: its id, and `--device` or `--seq` when the id names more
/// than one.
#[derive(clap::Args)]
pub struct Which {
    /// The message id.
    pub id: String,
    #[arg(long)]
    pub device: Option<String>,
    /// The journal's sequence number (`queue list` shows it).
    #[arg(long)]
    pub seq: Option<u64>,
}

impl Which {
    fn target(self) -> Target {
        Target { id: self.id, device: self.device, seq: self.seq }
    }
}

#[derive(clap::Subcommand)]
pub enum QueueVerb {
    /// List messages: by default those not delivered or rejected (queued,
    /// sending, uncertain, expired), oldest first.
    List {
        /// queued, sending, delivered, rejected, expired, uncertain; open
        /// (the default), unfinished, unresolved (uncertain + expired), all.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        device: Option<String>,
        /// At most this many (default 200).
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        common: Common,
    },
    /// Everything the journal holds about a message.
    Show {
        #[command(flatten)]
        which: Which,
        #[command(flatten)]
        common: Common,
    },
    /// Send an uncertain or expired message again (after checking the
    /// device); its report says "retried_by": "operator".
    Retry(Action),
    /// Say what became of an uncertain or expired message; reported with
    /// "resolved_by": "operator".
    Resolve {
        #[command(flatten)]
        action: Action,
        /// delivered or rejected.
        #[arg(long = "as", value_name = "STATE")]
        to: String,
    },
    /// Take a queued message out of the queue: rejected, "dropped by
    /// operator", reported.
    Drop(Action),
}

/// What an action on a message takes.
#[derive(clap::Args)]
pub struct Action {
    #[command(flatten)]
    which: Which,
    /// Why: into the log, the journal and the report (at most 1 KiB).
    #[arg(long)]
    note: Option<String>,
    #[command(flatten)]
    common: Common,
}

/// `status` as a person reads it, from the daemon at control socket `socket`.
pub fn status_text(socket: &Path) -> Result<String, String> {
    call_socket(socket, &Request::Status).map(|v| format::status(&v))
}

pub fn status(args: StatusArgs) -> Result<(), String> {
    let v = call_socket(&args.common.socket()?, &Request::Status)?;
    if args.common.json {
        return print_json(&v);
    }
    print!("{}", format::status(&v));
    Ok(())
}

pub fn queue(args: QueueArgs) -> Result<(), String> {
    let (req, common) = match args.verb {
        QueueVerb::List { state, device, limit, common } => (Request::List { state, device, limit }, common),
        QueueVerb::Show { which, common } => (Request::Show { target: which.target() }, common),
        QueueVerb::Retry(Action { which, note, common }) => (Request::Retry { target: which.target(), note }, common),
        QueueVerb::Resolve { action: Action { which, note, common }, to } => {
            (Request::Resolve { target: which.target(), to, note }, common)
        }
        QueueVerb::Drop(Action { which, note, common }) => (Request::Drop { target: which.target(), note }, common),
    };
    let v = call_socket(&common.socket()?, &req)?;
    if common.json {
        return print_json(&v);
    }
    let text = match req {
        Request::List { .. } => format::list(&v),
        Request::Show { .. } => format::show(&v),
        Request::Retry { .. } => format::acted(&v, "queued again; its outcome will be reported"),
        Request::Resolve { .. } => format::acted(&v, "resolved; reported"),
        Request::Drop { .. } => format::acted(&v, "dropped; reported"),
        Request::Status => unreachable!("handled by `status`"),
    };
    print!("{text}");
    Ok(())
}

fn print_json(v: &Value) -> Result<(), String> {
    println!("{}", serde_json::to_string_pretty(v).map_err(|e| e.to_string())?);
    Ok(())
}

/// The control socket named by the configuration at `config`.
fn socket(config: &Path) -> Result<PathBuf, String> {
    let cfg = Config::load(config).map_err(|d| format!("{}: invalid configuration:\n{d}", config.display()))?;
    cfg.gateway
        .control_socket()
        .ok_or_else(|| format!("{}: the control socket is turned off (gateway.control = \"\")", config.display()))
}

/// One request to the daemon; its result, or its error as ours.
fn call_socket(path: &Path, req: &Request) -> Result<Value, String> {
    let mut s = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "{}: permission denied: the control socket is for its owner and group (the package's: c2d-gateway); \
             run as root or join that group",
            path.display()
        ),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            format!("{}: no gateway answers there: is it running with this configuration?", path.display())
        }
        _ => format!("{}: {e}", path.display()),
    })?;
    s.set_read_timeout(Some(Duration::from_secs(40))).map_err(|e| e.to_string())?;
    let env = Envelope { request: req.clone(), user: whoami() };
    let mut line = serde_json::to_vec(&env).expect("a request serialises");
    line.push(b'\n');
    s.write_all(&line).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(|e| format!("{}: {e}", path.display()))?;
    let r: Response = serde_json::from_str(&answer).map_err(|e| format!("unexpected answer from the gateway: {e}"))?;
    match r {
        Response { ok: true, result, .. } => Ok(result.unwrap_or(Value::Null)),
        Response { error, .. } => Err(error.unwrap_or_else(|| "the gateway refused without a reason".into())),
    }
}

/// "alice (uid 1000)": who runs this verb, for the daemon's log.
fn whoami() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // The owner of our own /proc entry is our uid; no libc call needed.
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let name = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "?".into());
    Some(format!("{name} (uid {uid})"))
}

#[path = "operator_format.rs"]
mod format;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_daemon_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let why = call_socket(&tmp.path().join("control.sock"), &Request::Status).unwrap_err();
        assert!(
            why.ends_with("control.sock: no gateway answers there: is it running with this configuration?"),
            "{why}"
        );
        let cfg = tmp.path().join("config.toml");
        std::fs::write(&cfg, "[gateway]\ncontrol = \"\"\n[hub]\nkind = \"mqtt\"\nurl = \"mqtt://localhost\"\n")
            .unwrap();
        assert!(socket(&cfg).unwrap_err().contains("the control socket is turned off"));
    }
}
