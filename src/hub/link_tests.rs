//! The hub link against a scripted MQTT broker (on loopback, rumqttc's own
//! codec): one that acknowledges result reports out of order, withholds or
//! delays PUBACKs, drops a connection at a chosen moment, and sends a C2D
//! message after each SUBACK. What matters here is what the link does with
//! packet ids, PUBACKs and lost connections, not the codec (the peer suites
//! test that against Mosquitto and Microsoft's SDK).

use super::link;
use super::{Dialect, HubCommand, HubEvent};
use crate::config::Config;
use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, PubAck, SubAck, SubscribeReasonCode};
use rumqttc::mqttbytes::QoS;
use rumqttc::Publish;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, Instant};

/// The pkid of the C2D message the broker sends after a SUBACK.
const C2D_PKID: u16 = 7;

#[derive(Clone, Copy)]
struct Script {
    /// When to PUBACK a publish carrying `payload` on connection `conn`
    /// (1-based): `None` never.
    ack: fn(conn: usize, payload: &str) -> Option<Duration>,
    /// Close connection `.0` this long (`.2`) after its `.1`-th publish.
    close_after: Option<(usize, usize, Duration)>,
    /// What else the broker does on connection `conn` after its SUBACK
    /// (`n` = 0) and after its `n`-th publish received.
    then: fn(conn: usize, n: usize) -> Vec<Step>,
}

/// A broker's move.
#[derive(Clone, Copy)]
enum Step {
    /// A C2D PUBLISH (QoS 1) after this delay.
    C2d { topic: &'static str, payload: &'static str, pkid: u16, after: Duration },
}

/// The C2D message of the older tests: `{"id": "c1"}` to `boiler` as [`C2D_PKID`].
fn c2d() -> Step {
    Step::C2d { topic: "gw/boiler/c2d", payload: r#"{"id": "c1"}"#, pkid: C2D_PKID, after: Duration::ZERO }
}

fn nothing(_: usize, _: usize) -> Vec<Step> {
    Vec::new()
}

/// What the broker saw.
#[derive(Default, Debug)]
struct Seen {
    /// (connection, payload) of each publish received.
    publishes: Vec<(usize, String)>,
    /// Payloads whose PUBACK the broker sent.
    acked: Vec<String>,
    /// (connection, pkid) of each PUBACK the client sent.
    client_acks: Vec<(usize, u16)>,
    disconnects: usize,
    /// Connections accepted.
    connections: usize,
}

type Shared = Arc<Mutex<Seen>>;

struct Wire {
    stream: TcpStream,
    buf: BytesMut,
}

impl Wire {
    async fn read(&mut self) -> Option<Packet> {
        loop {
            match Packet::read(&mut self.buf, 1 << 20) {
                Ok(p) => return Some(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(_) => return None,
            }
            if self.stream.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    async fn write(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.write(&mut out, 1 << 20).expect("encodes");
        let _ = self.stream.write_all(&out).await;
    }
}

enum Out {
    Send(Packet),
    Close,
}

/// Carries out `steps`: at once on the wire, or later through `tx`.
async fn play(w: &mut Wire, steps: Vec<Step>, tx: &mpsc::UnboundedSender<Out>) {
    for Step::C2d { topic, payload, pkid, after } in steps {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, payload.as_bytes().to_vec());
        p.pkid = pkid;
        if after.is_zero() {
            w.write(Packet::Publish(p)).await;
        } else {
            let tx = tx.clone();
            tokio::spawn(async move {
                sleep(after).await;
                let _ = tx.send(Out::Send(Packet::Publish(p)));
            });
        }
    }
}

async fn broker(script: Script) -> (u16, Shared) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Shared::default();
    let s = seen.clone();
    tokio::spawn(async move {
        let mut conn = 0;
        while let Ok((stream, _)) = l.accept().await {
            conn += 1;
            s.lock().unwrap().connections = conn;
            tokio::spawn(connection(Wire { stream, buf: BytesMut::new() }, conn, script, s.clone()));
        }
    });
    (port, seen)
}

async fn connection(mut w: Wire, conn: usize, script: Script, seen: Shared) {
    let Some(Packet::Connect(_)) = w.read().await else { return };
    w.write(Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false))).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut n = 0;
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Send(p)) => w.write(p).await,
                Some(Out::Close) | None => return,
            },
            p = w.read() => match p {
                None => return,
                Some(Packet::Subscribe(s)) => {
                    let codes = vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); s.filters.len()];
                    w.write(Packet::SubAck(SubAck::new(s.pkid, codes))).await;
                    play(&mut w, (script.then)(conn, 0), &tx).await;
                }
                Some(Packet::Publish(p)) => {
                    n += 1;
                    let payload = String::from_utf8_lossy(&p.payload).to_string();
                    seen.lock().unwrap().publishes.push((conn, payload.clone()));
                    if let Some(delay) = (script.ack)(conn, &payload) {
                        let (tx, seen) = (tx.clone(), seen.clone());
                        tokio::spawn(async move {
                            sleep(delay).await;
                            seen.lock().unwrap().acked.push(payload);
                            let _ = tx.send(Out::Send(Packet::PubAck(PubAck::new(p.pkid))));
                        });
                    }
                    play(&mut w, (script.then)(conn, n), &tx).await;
                    if let Some((c, k, delay)) = script.close_after {
                        if c == conn && k == n {
                            let tx = tx.clone();
                            tokio::spawn(async move {
                                sleep(delay).await;
                                let _ = tx.send(Out::Close);
                            });
                        }
                    }
                }
                Some(Packet::PubAck(a)) => seen.lock().unwrap().client_acks.push((conn, a.pkid)),
                Some(Packet::PingReq) => w.write(Packet::PingResp).await,
                Some(Packet::Disconnect) => {
                    seen.lock().unwrap().disconnects += 1;
                    return;
                }
                Some(_) => {}
            }
        }
    }
}

fn dialect(port: u16) -> Dialect {
    let cfg: Config = toml::from_str(&format!(
        "[hub]\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"gw\"\nsubscribe = \"gw/+/c2d\"\n"
    ))
    .unwrap();
    Dialect::from_config(&cfg).unwrap()
}

fn report(seq: u64) -> HubCommand {
    HubCommand::Publish { topic: "gw/boiler/result".into(), payload: format!("r{seq}").into_bytes(), report: Some(seq) }
}

/// A link to the broker on `port`, its event and command ends, its stop switch.
struct Link {
    task: tokio::task::JoinHandle<link::Stopped>,
    events: mpsc::Receiver<HubEvent>,
    commands: mpsc::UnboundedSender<HubCommand>,
    stop: watch::Sender<bool>,
    /// Reports the link said the hub acknowledged.
    reported: Vec<u64>,
    /// Entries whose PUBACK the link said went out (`HubEvent::Acked`).
    acked: Vec<u64>,
    /// (generation, pkid) of each C2D message.
    messages: Vec<(u64, u16)>,
    /// Generations connected.
    connected: Vec<u64>,
    /// Ack each C2D message at once (as entry `pkid`).
    auto_ack: bool,
}

impl Link {
    fn start(port: u16) -> Link {
        let (ev_tx, events) = mpsc::channel(4096);
        let (commands, cmd_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(link::run(dialect(port), ev_tx, cmd_rx, stop_rx, watch::channel(None).0));
        Link {
            task,
            events,
            commands,
            stop,
            reported: Vec::new(),
            acked: Vec::new(),
            messages: Vec::new(),
            connected: Vec::new(),
            auto_ack: true,
        }
    }

    /// Takes the link's events for a while (acking each C2D message at once).
    async fn pump(&mut self, for_: Duration) {
        let end = Instant::now() + for_;
        while let Ok(Some(ev)) = tokio::time::timeout_at(end, self.events.recv()).await {
            match ev {
                HubEvent::Reported { seq } => self.reported.push(seq),
                HubEvent::Acked { seq } => self.acked.push(seq),
                HubEvent::Connected { generation, .. } => self.connected.push(generation),
                HubEvent::Message { generation, pkid, .. } => {
                    self.messages.push((generation, pkid));
                    if self.auto_ack {
                        self.commands.send(HubCommand::Ack { generation, pkid, seq: u64::from(pkid) }).unwrap()
                    }
                }
                HubEvent::Disconnected { .. }
                | HubEvent::Method { .. }
                | HubEvent::TwinAnswer { .. }
                | HubEvent::DesiredPatch => {}
            }
        }
    }

    /// Pumps until `done` holds; panics with `what` after `within`.
    async fn until(&mut self, within: Duration, what: &str, done: impl Fn(&Link) -> bool) {
        let end = Instant::now() + within;
        while !done(self) {
            assert!(Instant::now() < end, "not within {within:?}: {what}; reported so far {:?}", self.reported);
            self.pump(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_packet_id_collision_ends_with_its_connection_and_every_report_keeps_its_own_entry() {
    // Connection 1: the first report is never acknowledged, the others at
    // once; rumqttc's packet ids come round (it numbers 1..=100) to the
    // first report's, still unacknowledged: a collision, and rumqttc parks
    // the colliding report and takes no request after it. The broker then
    // drops the connection. Connection 2: every report is acknowledged
    // except r103; a C2D message arrives and must be acknowledged.
    let script = Script {
        ack: |conn, payload| match (conn, payload) {
            (1, "r1") | (_, "r103") => None,
            _ => Some(Duration::ZERO),
        },
        close_after: Some((1, 100, Duration::from_millis(300))),
        then: |conn, n| if conn >= 2 && n == 0 { vec![c2d()] } else { Vec::new() },
    };
    let (port, seen) = broker(script).await;
    let mut link = Link::start(port);
    for seq in 1..=105 {
        link.commands.send(report(seq)).unwrap();
    }
    let want: Vec<u64> = (1..=105).filter(|s| *s != 103).collect();
    let c2d_acked = |seen: &Shared| seen.lock().unwrap().client_acks.iter().any(|&(c, p)| c >= 2 && p == C2D_PKID);
    link.until(Duration::from_secs(20), "acks and reports flowing after the reconnect", |l| {
        let mut got = l.reported.clone();
        got.sort_unstable();
        got.dedup();
        c2d_acked(&seen) && got == want
    })
    .await;
    link.pump(Duration::from_millis(300)).await;

    let seen_now = std::mem::take(&mut *seen.lock().unwrap());
    let mut sorted = link.reported.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, want, "each acknowledged report reported once; r103 (never acknowledged) not at all");
    for seq in &link.reported {
        assert!(
            seen_now.acked.contains(&format!("r{seq}")),
            "entry {seq} reported, but the hub never acknowledged r{seq}"
        );
    }
    let second: Vec<&str> = seen_now.publishes.iter().filter(|(c, _)| *c == 2).map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        second,
        ["r1", "r101", "r102", "r103", "r104", "r105"],
        "connection 2 gets what connection 1 left unacknowledged, once, in the order it was first handed over"
    );

    let _ = link.stop.send(true);
    let at_stop = (&mut link.task).await.unwrap().reported;
    assert!(!at_stop.contains(&103), "r103 was never acknowledged: {at_stop:?}");
}

#[tokio::test]
async fn a_stop_counts_only_the_reports_the_hub_acknowledged() {
    // r1 acknowledged at once, r2 never (a half-open link swallowing its
    // PUBACK), r3 during the stop.
    let script = Script {
        ack: |_, payload| match payload {
            "r2" => None,
            "r3" => Some(Duration::from_millis(300)),
            _ => Some(Duration::ZERO),
        },
        close_after: None,
        then: nothing,
    };
    let (port, seen) = broker(script).await;
    let mut link = Link::start(port);
    for seq in 1..=3 {
        link.commands.send(report(seq)).unwrap();
    }
    link.until(Duration::from_secs(10), "3 reports at the broker", |_| seen.lock().unwrap().publishes.len() == 3).await;
    let _ = link.stop.send(true);
    let at_stop = (&mut link.task).await.unwrap().reported;
    link.pump(Duration::from_millis(50)).await;
    let mut done: Vec<u64> = link.reported.iter().chain(&at_stop).copied().collect();
    done.sort_unstable();
    assert_eq!(done, [1, 3], "r2 has no PUBACK: it stays unreported, to be sent again after the next start");
    let end = Instant::now() + Duration::from_secs(2);
    while seen.lock().unwrap().disconnects == 0 && Instant::now() < end {
        sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.lock().unwrap().disconnects, 1, "the stop still ends with DISCONNECT");
}

#[tokio::test]
async fn a_report_never_acknowledged_on_a_live_connection_does_not_stall_acks() {
    // Connection 1 stays open but r1's PUBACK never comes: when rumqttc's
    // packet ids come round to r1's (the 101st publish) it parks that
    // publish and takes no more requests. A C2D message comes after the
    // 100th report; it must still be acknowledged within seconds (on a
    // new connection: the link ends the stalled one itself).
    let script = Script {
        ack: |conn, payload| if conn == 1 && payload == "r1" { None } else { Some(Duration::ZERO) },
        close_after: None,
        then: |conn, n| match (conn, n) {
            (1, 100) => vec![Step::C2d {
                topic: "gw/boiler/c2d",
                payload: r#"{"id": "c1"}"#,
                pkid: C2D_PKID,
                after: Duration::from_millis(200),
            }],
            (c, 0) if c >= 2 => vec![c2d()],
            _ => Vec::new(),
        },
    };
    let (port, seen) = broker(script).await;
    let mut link = Link::start(port);
    for seq in 1..=110 {
        link.commands.send(report(seq)).unwrap();
    }
    link.until(Duration::from_secs(10), "100 reports at the broker", |_| seen.lock().unwrap().publishes.len() >= 100)
        .await;
    link.until(Duration::from_secs(6), "the C2D message acknowledged", |_| {
        seen.lock().unwrap().client_acks.iter().any(|&(_, p)| p == C2D_PKID)
    })
    .await;
    let want: Vec<u64> = (1..=110).collect();
    link.until(Duration::from_secs(10), "every report acknowledged", |l| {
        let mut got = l.reported.clone();
        got.sort_unstable();
        got.dedup();
        got == want
    })
    .await;
    assert_eq!(
        seen.lock().unwrap().disconnects,
        0,
        "the broker never closed a connection, nor did the link say DISCONNECT"
    );
    assert!(seen.lock().unwrap().connections >= 2);
    let _ = link.stop.send(true);
    let _ = (&mut link.task).await.unwrap();
}

#[tokio::test]
async fn reconnect_ends_the_connection_and_only_written_acks_count_as_sent() {
    // Every connection gets the C2D message after its SUBACK. The first is
    // acknowledged only after a Reconnect: that ack belongs to the ended
    // connection and must neither go out nor be reported as sent; the
    // redelivery's ack on connection 2 goes out and is reported.
    let script = Script {
        ack: |_, _| Some(Duration::ZERO),
        close_after: None,
        then: |_, n| if n == 0 { vec![c2d()] } else { Vec::new() },
    };
    let (port, seen) = broker(script).await;
    let mut link = Link::start(port);
    link.auto_ack = false;
    link.until(Duration::from_secs(5), "the C2D message on connection 1", |l| l.messages.contains(&(1, C2D_PKID)))
        .await;
    link.commands.send(HubCommand::Reconnect).unwrap();
    link.commands.send(HubCommand::Ack { generation: 1, pkid: C2D_PKID, seq: 1 }).unwrap();
    link.until(Duration::from_secs(5), "the redelivery on connection 2", |l| l.messages.contains(&(2, C2D_PKID))).await;
    assert_eq!(seen.lock().unwrap().connections, 2);
    link.commands.send(HubCommand::Ack { generation: 2, pkid: C2D_PKID, seq: 2 }).unwrap();
    link.until(Duration::from_secs(5), "the ack on connection 2 reported as sent", |l| l.acked.contains(&2)).await;
    link.pump(Duration::from_millis(200)).await;
    assert_eq!(link.acked, [2], "the ack of the ended connection never went out");
    assert_eq!(seen.lock().unwrap().client_acks, [(2, C2D_PKID)]);
    let _ = link.stop.send(true);
    let _ = (&mut link.task).await.unwrap();
}

/// A Modbus TCP device that takes requests and never answers; says when
/// the first request came.
async fn silent_device() -> (u16, Arc<std::sync::atomic::AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let a = a.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    a.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    (port, asked)
}

/// The whole daemon against the scripted broker on `port`; device
/// `boiler` behind a Modbus TCP bus on `modbus`, no device `ghost` (its
/// messages are rejected at once).
fn gateway(
    port: u16,
    modbus: u16,
    state: &std::path::Path,
    max_messages: usize,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<Result<(), crate::daemon::DaemonError>>) {
    let text = format!(
        r#"
[gateway]
state_dir = "{state}"
max_messages = {max_messages}
[hub]
kind = "mqtt"
url = "mqtt://127.0.0.1:{port}"
client_id = "gw"
subscribe = "gw/+/c2d"
report_topic = "gw/{{device}}/result"
[buses.plc]
kind = "modbus-tcp"
address = "127.0.0.1:{modbus}"
timeout = "1500ms"
[devices.boiler]
bus = "plc"
unit = 1
points.mode = {{ table = "holding", address = 10, type = "u16" }}
"#,
        state = state.display()
    );
    crate::daemon::init_logging(None);
    let cfg = Config::parse(&text, "test.toml").unwrap_or_else(|d| panic!("{d}"));
    let (stop, rx) = watch::channel(false);
    (stop, tokio::spawn(crate::daemon::run(cfg, None, Some(rx))))
}

fn reports_of(seen: &Shared, id: &str) -> usize {
    let needle = format!("\"message_id\":\"{id}\"");
    seen.lock().unwrap().publishes.iter().filter(|(_, p)| p.contains(&needle)).count()
}

#[tokio::test]
async fn reports_acknowledged_while_the_gateway_stops_are_not_sent_again_after_a_restart() {
    // c1 (no such device: rejected at once) is reported, and the hub's
    // PUBACK comes 800 ms later; m2 is on the wire to a device that never
    // answers (1.5 s timeout), so the stop waits for it while c1's PUBACK
    // arrives. After a restart c1's report must not be sent again.
    let script = Script {
        ack: |_, payload| {
            if payload.contains("\"c1\"") {
                Some(Duration::from_millis(800))
            } else {
                Some(Duration::ZERO)
            }
        },
        close_after: None,
        then: |conn, n| match (conn, n) {
            (1, 0) => vec![
                Step::C2d { topic: "gw/ghost/c2d", payload: r#"{"id": "c1"}"#, pkid: 7, after: Duration::ZERO },
                Step::C2d {
                    topic: "gw/boiler/c2d",
                    payload: r#"{"id": "m2", "point": "mode", "value": 3}"#,
                    pkid: 8,
                    after: Duration::ZERO,
                },
            ],
            _ => Vec::new(),
        },
    };
    let (port, seen) = broker(script).await;
    let (modbus, asked) = silent_device().await;
    let state = tempfile::tempdir().unwrap();
    let (stop, task) = gateway(port, modbus, state.path(), 1000);
    let end = Instant::now() + Duration::from_secs(10);
    while reports_of(&seen, "c1") == 0 || !asked.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(Instant::now() < end, "c1 reported and m2 on the wire: {:?}", seen.lock().unwrap());
        sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("stops").unwrap().unwrap();
    assert!(
        seen.lock().unwrap().acked.iter().any(|p| p.contains("\"c1\"")),
        "the scenario needs the hub to acknowledge c1's report during the stop"
    );
    let (stop, task) = gateway(port, modbus, state.path(), 1000);
    sleep(Duration::from_millis(1500)).await;
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("stops").unwrap().unwrap();
    assert_eq!(
        reports_of(&seen, "c1"),
        1,
        "c1's report, acknowledged during the stop, was sent again after the restart: {:?}",
        seen.lock().unwrap().publishes
    );
}
