//! The control socket: a unix socket (mode 0660: its owner and group; the
//! package's unit puts it in `/run/c2d-gateway`, group `c2d-gateway`) on
//! which the `status` and `queue` verbs talk to the running daemon, which
//! alone opens the journal. Reads are answered from the journal and the
//! live state; actions go to the pipeline. Who asked is taken from the
//! socket's peer credentials, logged and journaled with the action.

use super::protocol::{Envelope, Request, Response, Target, MAX_REQUEST};
use super::Ctx;
use crate::journal::operator::Asked;
use crate::message::{rfc3339_ms, Entry, State};
use crate::pipeline::operator::{Act, Ask};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// `queue list` shows at most this many unless asked for more,
pub const LIST_LIMIT: usize = 200;
/// and never more than this many.
pub const MAX_LIST: usize = 10_000;

/// Notes larger than this are refused (they go into the entry and the report).
pub const MAX_NOTE: usize = 1024;

/// The socket file this process made: removed at the stop only if it is
/// still that file (another gateway may have replaced a stale one since).
pub struct Bound {
    path: PathBuf,
    inode: (u64, u64),
}

impl Bound {
    pub fn remove(self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the socket at `path`: a stale one (nobody answers) is replaced;
/// one a running gateway answers on is left alone (an error).
pub async fn bind(path: &Path) -> Result<(UnixListener, Bound), String> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(format!("{}: another gateway answers on this control socket", path.display()));
        }
        std::fs::remove_file(path).map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let l = UnixListener::bind(path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((l, Bound { path: path.to_path_buf(), inode: (m.dev(), m.ino()) }))
}

/// Serves the socket until the task is dropped.
pub async fn serve(listener: UnixListener, path: PathBuf, ctx: Arc<Ctx>, asks: mpsc::Sender<Ask>) {
    tracing::info!(socket = %path.display(), "control socket ready");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (ctx, asks) = (ctx.clone(), asks.clone());
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, &ctx, &asks).await {
                        tracing::debug!(error = %e, "control connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The uid a user namespace shows for a uid it does not map.
const OVERFLOW_UID: u32 = 65534;

/// Who is on the other end: "uid 1000 (alice)" from the socket's peer
/// credentials; when the service's user namespace hides the uid, what the
/// client says it runs as, marked so.
fn peer(stream: &UnixStream, claimed: Option<&str>) -> String {
    let claimed = claimed.map(|c| c.chars().filter(|ch| !ch.is_control()).take(64).collect::<String>());
    match stream.peer_cred() {
        Ok(c) if c.uid() == OVERFLOW_UID && claimed.is_some() => {
            format!("{} (as the client says; the service cannot see its uid)", claimed.unwrap_or_default())
        }
        Ok(c) => match user_name(c.uid()) {
            Some(name) => format!("uid {} ({name})", c.uid()),
            None => format!("uid {}", c.uid()),
        },
        Err(_) => "unknown peer".into(),
    }
}

/// The name of `uid` in /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

/// How long a client has to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(10);

async fn connection(stream: UnixStream, ctx: &Arc<Ctx>, asks: &mpsc::Sender<Ask>) -> std::io::Result<()> {
    connection_within(stream, ctx, asks, REQUEST_WAIT).await
}

async fn connection_within(
    mut stream: UnixStream,
    ctx: &Arc<Ctx>,
    asks: &mpsc::Sender<Ask>,
    wait: Duration,
) -> std::io::Result<()> {
    let (read, mut write) = stream.split();
    let mut line = Vec::new();
    let got =
        tokio::time::timeout(wait, BufReader::new(read.take(MAX_REQUEST as u64 + 1)).read_until(b'\n', &mut line))
            .await;
    let response = match got {
        Err(_) => Response::error(format!("no request within {}", humantime::format_duration(wait))),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) if line.len() > MAX_REQUEST => Response::error(format!("request longer than {MAX_REQUEST} bytes")),
        Ok(Ok(_)) => match serde_json::from_slice::<Envelope>(&line) {
            Ok(env) => {
                let who = peer(write.as_ref(), env.user.as_deref());
                answer(env.request, who, ctx, asks).await
            }
            Err(e) => Response::error(format!("not a request: {e}")),
        },
    };
    let mut out = serde_json::to_vec(&response).expect("a response serialises");
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

async fn answer(req: Request, who: String, ctx: &Arc<Ctx>, asks: &mpsc::Sender<Ask>) -> Response {
    let note = match &req {
        Request::Retry { note, .. } | Request::Resolve { note, .. } | Request::Drop { note, .. } => note.as_deref(),
        _ => None,
    };
    if note.is_some_and(|n| n.len() > MAX_NOTE) {
        return Response::error(format!(
            "a note is at most {MAX_NOTE} bytes (it goes into the journal and the report)"
        ));
    }
    let r = match req {
        Request::Status => Ok(ctx.status()),
        // Reads of the whole journal run off the daemon's thread.
        Request::List { state, device, limit } => {
            let ctx = ctx.clone();
            blocking(move || list(&ctx, state.as_deref(), device.as_deref(), limit)).await
        }
        Request::Show { target } => {
            let ctx = ctx.clone();
            blocking(move || show(&ctx, &target)).await
        }
        Request::Retry { target, note } => act(ctx, asks, &target, Act::Retry, who, note).await,
        Request::Resolve { target, to, note } => match State::parse(&to) {
            Some(s @ (State::Delivered | State::Rejected)) => act(ctx, asks, &target, Act::Resolve(s), who, note).await,
            _ => Err(format!("--as takes delivered or rejected, not {to:?}")),
        },
        Request::Drop { target, note } => act(ctx, asks, &target, Act::Drop, who, note).await,
    };
    match r {
        Ok(v) => Response::ok(v),
        Err(why) => Response::error(why),
    }
}

async fn blocking(f: impl FnOnce() -> Result<Value, String> + Send + 'static) -> Result<Value, String> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(format!("the request failed: {e}")))
}

/// Which states a `list` filter takes.
fn state_filter(state: Option<&str>) -> Result<Box<dyn Fn(State) -> bool + Send>, String> {
    Ok(match state.unwrap_or("open") {
        "open" => Box::new(|s: State| !matches!(s, State::Delivered | State::Rejected)),
        "unfinished" => Box::new(|s: State| !s.is_final()),
        "unresolved" => Box::new(State::needs_operator),
        "all" => Box::new(|_| true),
        other => match State::parse(other) {
            Some(want) => Box::new(move |s| s == want),
            None => {
                return Err(format!(
                    "--state {other:?}: one of queued, sending, delivered, rejected, expired, uncertain, \
                     open (the default: queued, sending, uncertain, expired), unfinished, unresolved, all"
                ))
            }
        },
    })
}

fn list(ctx: &Ctx, state: Option<&str>, device: Option<&str>, limit: Option<usize>) -> Result<Value, String> {
    let keep_state = state_filter(state)?;
    let limit = limit.unwrap_or(LIST_LIMIT).min(MAX_LIST);
    let keep = |e: &Entry| keep_state(e.state) && device.is_none_or(|d| e.device.as_deref() == Some(d));
    let (entries, matched) = ctx.journal.select(keep, limit).map_err(|e| e.to_string())?;
    let now = crate::message::now_ms();
    let messages: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = crate::status::summary(e);
            v["age_s"] = json!(now.saturating_sub(e.received_at) / 1000);
            v
        })
        .collect();
    Ok(json!({"messages": messages, "matched": matched}))
}

/// The entries a target names (all of them for `show`).
fn find(ctx: &Ctx, t: &Target) -> Result<Vec<Entry>, String> {
    let found = ctx.journal.find(&t.id, t.device.as_deref()).map_err(|e| e.to_string())?;
    let found: Vec<Entry> = found.into_iter().filter(|e| t.seq.is_none_or(|s| e.seq == s)).collect();
    if found.is_empty() {
        let mut why = format!("no message with id {:?}", t.id);
        if let Some(d) = &t.device {
            why += &format!(" for device {d:?}");
        }
        if let Some(s) = t.seq {
            why += &format!(" at seq {s}");
        }
        return Err(why + " in the journal (finished messages stay for the dedupe window)");
    }
    Ok(found)
}

fn show(ctx: &Ctx, t: &Target) -> Result<Value, String> {
    let entries = find(ctx, t)?;
    let mut out = Vec::new();
    for e in entries {
        // A final entry keeps its body only while a retry may need it.
        let body = ctx.journal.stored_body(e.seq).ok().flatten();
        out.push(detail(&e, body.as_deref()));
    }
    Ok(json!({"messages": out}))
}

/// Everything about one entry, for `queue show`.
fn detail(e: &Entry, body: Option<&[u8]>) -> Value {
    let mut v = crate::status::summary(e);
    let body = body.map(|b| {
        const SHOWN: usize = 4096;
        let text = String::from_utf8_lossy(&b[..b.len().min(SHOWN)]).into_owned();
        if b.len() > SHOWN {
            format!("{text}... ({} bytes in all)", b.len())
        } else {
            text
        }
    });
    let extra = json!({
        "correlation_id": e.correlation_id,
        "expires_at": e.expires_at.map(rfc3339_ms),
        "body_len": e.body_len,
        "body": body,
        "steps": e.steps,
        "values": e.values,
        "reported": e.reported,
        "handed_over": e.handed_over,
        "resent": e.resent,
        "resent_after_crash": e.resent_after_crash,
        "conflict": e.conflict,
        "id_generated": e.id_generated,
        "operator_action": e.operator.as_ref().map(|o| json!({
            "action": o.action.as_str(),
            "by": o.by,
            "at": rfc3339_ms(o.at),
            "note": o.note,
            "previous": o.previous,
        })),
    });
    if let (Value::Object(m), Value::Object(x)) = (&mut v, extra) {
        m.extend(x);
    }
    v
}

async fn act(
    ctx: &Ctx,
    asks: &mpsc::Sender<Ask>,
    t: &Target,
    act: Act,
    by: String,
    note: Option<String>,
) -> Result<Value, String> {
    let found = find(ctx, t)?;
    let e = match found.as_slice() {
        [e] => e,
        many => {
            let list: Vec<String> = many
                .iter()
                .map(|e| format!("seq {} (device {}, {})", e.seq, e.device.as_deref().unwrap_or("-"), e.state))
                .collect();
            return Err(format!(
                "{} messages have id {:?}: {}; say which with --device or --seq",
                many.len(),
                t.id,
                list.join(", ")
            ));
        }
    };
    let (reply, rx) = oneshot::channel();
    let asked = Asked { by: by.clone(), at: crate::message::now_ms(), note };
    let ask = Ask { act, seq: e.seq, asked, reply };
    let r = match tokio::time::timeout(Duration::from_secs(30), async move {
        asks.send(ask).await.map_err(|_| ())?;
        rx.await.map_err(|_| ())
    })
    .await
    {
        Ok(Ok(Ok(e))) => return Ok(json!({"message": crate::status::summary(&e)})),
        Ok(Ok(Err(why))) => why,
        Ok(Err(())) => "the gateway is stopping".into(),
        Err(_) => {
            "no answer from the gateway within 30 s (the action may still be carried out: look with queue show)".into()
        }
    };
    tracing::info!(message_id = %e.id, seq = e.seq, action = ?act, by, reason = %r, "operator: refused");
    Err(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Bounds, Journal};

    fn ctx(dir: &Path) -> Arc<Ctx> {
        let (journal, _) =
            Journal::open(&dir.join("j"), 1 << 20, Bounds { max_messages: 10, max_bytes: 1 << 20 }).unwrap();
        Arc::new(Ctx { journal, live: Default::default(), hub: crate::config::HubKind::Mqtt, started_ms: 0 })
    }

    /// What the server answers to `sent` (then the client's end closed).
    async fn answer_to(ctx: &Arc<Ctx>, sent: Vec<u8>, wait: Duration) -> Response {
        let (server, mut client) = UnixStream::pair().unwrap();
        let (asks, _rx) = mpsc::channel(1);
        let ctx = ctx.clone();
        let served = tokio::spawn(async move { connection_within(server, &ctx, &asks, wait).await });
        // A request too long may be cut off before it is all written.
        let _ = client.write_all(&sent).await;
        let mut line = String::new();
        BufReader::new(client).read_line(&mut line).await.unwrap();
        let _ = served.await;
        serde_json::from_str(&line).unwrap()
    }

    #[tokio::test]
    async fn bad_requests_get_a_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = ctx(tmp.path());
        let long = Duration::from_secs(10);
        for (sent, says) in [
            (b"{\"verb\": \"list\", \"state\": \"bogus\"}\n".to_vec(), "--state \"bogus\": one of"),
            (b"{\"verb\": \"retry\", \"id\": 5}\n".to_vec(), "not a request"),
            (b"not json\n".to_vec(), "not a request"),
            ([vec![b' '; MAX_REQUEST + 10], b"\n".to_vec()].concat(), "request longer than 65536 bytes"),
        ] {
            let r = answer_to(&ctx, sent, long).await;
            assert!(!r.ok && r.error.as_deref().unwrap_or("").contains(says), "{r:?}");
        }
        let r = answer_to(&ctx, Vec::new(), Duration::from_millis(100)).await;
        assert_eq!(r.error.as_deref(), Some("no request within 100ms"));
        let r = answer_to(&ctx, b"{\"verb\": \"list\", \"state\": \"all\"}\n".to_vec(), long).await;
        assert!(r.ok && r.result.unwrap()["matched"] == 0);
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("control.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // a stale socket file
        let (listener, bound) = bind(&path).await.expect("a stale socket is replaced");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);
        let again = bind(&path).await.err().expect("a live one is left alone");
        assert!(again.contains("another gateway answers on this control socket"), "{again}");
        assert!(path.exists());
        drop(listener);
        bound.remove();
        assert!(!path.exists());
    }
}
