//! The pipeline counts a PUBACK as sent (the journal's `acked` mark, which
//! lets the entry go at the journal's bound) only when the hub link says it
//! was written, not when it was handed to the link: an ack dropped with its
//! connection must leave the entry recognisable when the hub redelivers.

use c2d_gateway::config::Config;
use c2d_gateway::hub::{Dialect, HubCommand, HubEvent};
use c2d_gateway::journal::{Bounds, Journal};
use c2d_gateway::pipeline::{Parts, Pipeline};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Commands until `done` holds (or `within` passes); all of them. The hub
/// acknowledges every result report at once.
async fn commands_until(
    rx: &mut mpsc::UnboundedReceiver<HubCommand>,
    events: &mpsc::Sender<HubEvent>,
    within: Duration,
    seen: &mut Vec<HubCommand>,
    done: impl Fn(&[HubCommand]) -> bool,
) -> bool {
    let end = tokio::time::Instant::now() + within;
    while !done(seen) {
        match tokio::time::timeout_at(end, rx.recv()).await {
            Ok(Some(c)) => {
                if let HubCommand::Publish { report: Some(seq), .. } = c {
                    events.send(HubEvent::Reported { seq }).await.unwrap();
                }
                seen.push(c)
            }
            _ => return false,
        }
    }
    true
}

fn reports_of(seen: &[HubCommand], id: &str) -> usize {
    entries_reported(seen, id).len()
}

/// The journal entries (report seq) the reports of message `id` came from;
/// a redelivery recognised as such is reported again from the same entry.
fn entries_reported(seen: &[HubCommand], id: &str) -> Vec<Option<u64>> {
    let needle = format!("\"message_id\":\"{id}\"");
    let mut v: Vec<Option<u64>> = seen
        .iter()
        .filter_map(|c| match c {
            HubCommand::Publish { payload, report, .. } if String::from_utf8_lossy(payload).contains(&needle) => {
                Some(*report)
            }
            _ => None,
        })
        .collect();
    v.dedup();
    v
}

fn acked(seen: &[HubCommand], want: u16) -> bool {
    seen.iter().any(|c| matches!(c, HubCommand::Ack { pkid, .. } if *pkid == want))
}

#[tokio::test]
async fn an_ack_that_never_went_out_keeps_its_entry_at_the_bound() {
    let state = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[gateway]
state_dir = "{}"
max_messages = 1
[hub]
kind = "mqtt"
url = "mqtt://127.0.0.1:1"
client_id = "gw"
subscribe = "gw/+/c2d"
report_topic = "gw/{{device}}/result"
[buses.plc]
kind = "modbus-tcp"
address = "127.0.0.1:1"
[devices.boiler]
bus = "plc"
unit = 1
points.mode = {{ table = "holding", address = 10, type = "u16" }}
"#,
        state.path().display()
    );
    let cfg = Arc::new(Config::parse(&text, "test.toml").unwrap_or_else(|d| panic!("{d}")));
    let bounds = Bounds { max_messages: 1, max_bytes: cfg.gateway.max_bytes };
    let (journal, _) = Journal::open(&state.path().join("journal"), cfg.gateway.cache_capacity, bounds).unwrap();
    let dialect = Arc::new(Dialect::from_config(&cfg).unwrap());
    let (hub_tx, mut hub_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (readings_tx, readings_rx) = mpsc::unbounded_channel();
    let (_reload_tx, reload_rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::channel(64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let parts = Parts {
        journal: journal.clone(),
        dialect: dialect.clone(),
        hub: hub_tx,
        done: done_tx,
        readings: readings_tx,
        status: watch::channel(Default::default()).0,
        heartbeat: Arc::new(AtomicU64::new(0)),
        space: c2d_gateway::journal::space::Space::new(state.path(), 0),
        live: Default::default(),
    };
    let mut pipeline = Pipeline::new(cfg.clone(), parts);
    pipeline.start_buses().unwrap();
    pipeline.recover().await.unwrap();
    let (_asks_tx, asks_rx) = mpsc::channel(1);
    let task = tokio::spawn(pipeline.run(events_rx, done_rx, readings_rx, reload_rx, asks_rx, stop_rx));
    let c2d = |id: &str| dialect.inbound("gw/ghost/c2d", format!(r#"{{"id": "{id}"}}"#).as_bytes()).unwrap();
    let mut seen = Vec::new();

    // c1 (no device `ghost`: rejected at once) on connection 1: its report
    // goes out and the hub acknowledges it; its PUBACK is handed to the
    // link, which never writes it (the connection dies with it queued, so
    // no `HubEvent::Acked` comes).
    events_tx.send(HubEvent::Connected { generation: 1, endpoint: String::new() }).await.unwrap();
    events_tx.send(HubEvent::Message { generation: 1, pkid: 7, inbound: c2d("c1") }).await.unwrap();
    assert!(
        commands_until(&mut hub_rx, &events_tx, Duration::from_secs(5), &mut seen, |s| reports_of(s, "c1") == 1).await,
        "c1 reported: {seen:?}"
    );
    let seq = seen
        .iter()
        .find_map(|c| match c {
            HubCommand::Publish { report: Some(seq), .. } => Some(*seq),
            _ => None,
        })
        .expect("c1's report names its entry");
    assert!(
        commands_until(&mut hub_rx, &events_tx, Duration::from_secs(5), &mut seen, |s| acked(s, 7)).await,
        "c1's ack handed to the link: {seen:?}"
    );
    events_tx.send(HubEvent::Disconnected { generation: 1 }).await.unwrap();
    events_tx.send(HubEvent::Connected { generation: 2, endpoint: String::new() }).await.unwrap();

    // c2 at the bound: c1 may not make room for it (the hub still owes us
    // its redelivery). Then c1 comes again and must be recognised.
    events_tx.send(HubEvent::Message { generation: 2, pkid: 8, inbound: c2d("c2") }).await.unwrap();
    commands_until(&mut hub_rx, &events_tx, Duration::from_secs(1), &mut seen, |s| reports_of(s, "c2") == 1).await;
    events_tx.send(HubEvent::Message { generation: 2, pkid: 9, inbound: c2d("c1") }).await.unwrap();
    commands_until(&mut hub_rx, &events_tx, Duration::from_secs(1), &mut seen, |_| false).await;
    let shown: Vec<String> = seen
        .iter()
        .map(|c| match c {
            HubCommand::Publish { payload, report, .. } => {
                format!("report {report:?}: {}", String::from_utf8_lossy(payload))
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        entries_reported(&seen, "c1"),
        [Some(seq)],
        "c1 was forgotten at the bound and taken as a new message: {shown:#?}"
    );
    assert!(acked(&seen, 9), "c1's redelivery acknowledged: {shown:#?}");

    let _ = stop_tx.send(true);
    let _ = task.await;
}
