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
    /// Send a C2D message after the SUBACK on connections from this one on.
    c2d_from: usize,
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

async fn broker(script: Script) -> (u16, Shared) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Shared::default();
    let s = seen.clone();
    tokio::spawn(async move {
        let mut conn = 0;
        while let Ok((stream, _)) = l.accept().await {
            conn += 1;
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
                    if conn >= script.c2d_from {
                        let mut p = Publish::new("gw/boiler/c2d", QoS::AtLeastOnce, br#"{"id": "c1"}"#.to_vec());
                        p.pkid = C2D_PKID;
                        w.write(Packet::Publish(p)).await;
                    }
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
    task: tokio::task::JoinHandle<Vec<u64>>,
    events: mpsc::Receiver<HubEvent>,
    commands: mpsc::UnboundedSender<HubCommand>,
    stop: watch::Sender<bool>,
    /// Reports the link said the hub acknowledged.
    reported: Vec<u64>,
}

impl Link {
    fn start(port: u16) -> Link {
        let (ev_tx, events) = mpsc::channel(4096);
        let (commands, cmd_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(link::run(dialect(port), ev_tx, cmd_rx, stop_rx));
        Link { task, events, commands, stop, reported: Vec::new() }
    }

    /// Takes the link's events for a while (acking each C2D message at once).
    async fn pump(&mut self, for_: Duration) {
        let end = Instant::now() + for_;
        while let Ok(Some(ev)) = tokio::time::timeout_at(end, self.events.recv()).await {
            match ev {
                HubEvent::Reported { seq } => self.reported.push(seq),
                HubEvent::Message { generation, pkid, .. } => {
                    self.commands.send(HubCommand::Ack { generation, pkid }).unwrap()
                }
                _ => {}
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
        c2d_from: 2,
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
    let at_stop = (&mut link.task).await.unwrap();
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
        c2d_from: usize::MAX,
    };
    let (port, seen) = broker(script).await;
    let mut link = Link::start(port);
    for seq in 1..=3 {
        link.commands.send(report(seq)).unwrap();
    }
    link.until(Duration::from_secs(10), "3 reports at the broker", |_| seen.lock().unwrap().publishes.len() == 3).await;
    let _ = link.stop.send(true);
    let at_stop = (&mut link.task).await.unwrap();
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
