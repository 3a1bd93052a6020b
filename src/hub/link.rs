//! The hub link: the one task that owns the MQTT connection.
//!
//! It reconnects with exponential back-off and jitter (1 s doubling to 60 s),
//! subscribes again after every CONNACK, renews credentials by reconnecting
//! before the SAS token expires, and numbers connections (generations) so a
//! PUBACK is only ever sent on the connection its PUBLISH came from: an ack
//! for an older connection is dropped, and the hub's redelivery is
//! deduplicated by the journal instead. Acks are never sent on their own:
//! rumqttc runs with manual acks and only this task calls it.

use super::inflight::{self, Inflight};
use super::{Dialect, HubCommand, HubEvent};
use rumqttc::{AsyncClient, ConnectionError, Event, Packet, Publish, QoS};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, Instant};

/// Exponential back-off with jitter: 1 s doubling to 60 s, each wait drawn
/// in [50 %, 100 %] of its step.
pub fn reconnect_delay(failures: u32, jitter: f64) -> Duration {
    let step = Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60));
    step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Spots two processes with one identity kicking each other off: several
/// connections in a row that each lived only a short time.
#[derive(Debug, Default)]
pub struct KickDetector {
    short_lived: u32,
}

impl KickDetector {
    pub const SHORT: Duration = Duration::from_secs(10);
    pub const THRESHOLD: u32 = 3;

    /// Records how long a connection lived; true when it looks like a kick loop.
    pub fn record(&mut self, lived: Duration) -> bool {
        if lived < Self::SHORT {
            self.short_lived += 1;
        } else {
            self.short_lived = 0;
        }
        self.short_lived >= Self::THRESHOLD
    }
}

fn ack_packet(pkid: u16) -> Publish {
    let mut p = Publish::new("", QoS::AtLeastOnce, Vec::<u8>::new());
    p.pkid = pkid;
    p
}

/// What happened while the link stopped (the pipeline, stopped first, no
/// longer hears of it): the daemon records it before sealing the journal.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Journal entries whose result report the hub acknowledged.
    pub reported: Vec<u64>,
    /// Journal entries whose PUBACK went out.
    pub acked: Vec<u64>,
}

/// The PUBACKs handed to rumqttc on the current connection and not yet
/// written, in the order they were handed over: (pkid, journal seq; `None`
/// for the link's own acks of PUBLISHes on foreign topics).
#[derive(Debug, Default)]
struct AcksOut(VecDeque<(u16, Option<u64>)>);

impl AcksOut {
    fn handed(&mut self, pkid: u16, seq: Option<u64>) {
        self.0.push_back((pkid, seq));
    }

    /// rumqttc wrote the PUBACK of `pkid`: the entry it acknowledged.
    fn written(&mut self, pkid: u16) -> Option<u64> {
        let i = self.0.iter().position(|(p, _)| *p == pkid)?;
        self.0.remove(i).and_then(|(_, seq)| seq)
    }

    /// The connection is gone: acks not written never will be.
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Runs until `shutdown`; then sends what it still holds (acks, reports)
/// and disconnects. Returns the reports the hub acknowledged and the
/// PUBACKs written while stopping. Events the pipeline cannot take any
/// more (its receiver dropped) are dropped: the daemon drains the
/// receiver while the link stops, so none are lost that way.
///
/// When DPS assigns another device id, the link says so on `restart` and
/// waits for `shutdown`: the daemon stops cleanly and exits 75 (a restart
/// reads the cached assignment).
pub async fn run(
    mut dialect: Dialect,
    events: mpsc::Sender<HubEvent>,
    mut commands: mpsc::UnboundedReceiver<HubCommand>,
    mut shutdown: watch::Receiver<bool>,
    restart: watch::Sender<Option<String>>,
) -> Stopped {
    let mut failures: u32 = 0;
    if dialect.needs_provisioning() && !provision(&mut dialect, &mut shutdown, &restart).await {
        return Stopped::default();
    }
    let opts = loop {
        match dialect.mqtt_options() {
            Ok(o) => break o,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the hub connection settings");
                failures += 1;
                tokio::select! {
                    _ = sleep(reconnect_delay(failures, fastrand::f64())) => continue,
                    _ = shutdown.changed() => return Stopped::default(),
                }
            }
        }
    };
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let mut generation: u64 = 0;
    let mut connected_at: Option<Instant> = None;
    let mut renew_at: Option<Instant> = None;
    let mut outbox: VecDeque<HubCommand> = VecDeque::new();
    let mut kicks = KickDetector::default();
    let mut inflight = Inflight::default();
    let mut acks = AcksOut::default();
    // Set on a packet id collision: the connection ends then if it stays.
    let mut collision_deadline: Option<Instant> = None;
    let far = Instant::now() + Duration::from_secs(86400 * 365);
    tracing::info!(hub = %dialect.describe(), "connecting to the hub");

    loop {
        // Hand what we can to rumqttc; stop at the first full channel so
        // order is kept (acks must go in arrival order).
        let mut end_connection: Option<&str> = None;
        if connected_at.is_some() {
            while let Some(cmd) = outbox.pop_front() {
                let r = match &cmd {
                    HubCommand::Ack { generation: g, pkid, .. } => {
                        if *g != generation {
                            tracing::debug!(pkid, "dropping an ack of an earlier connection; the hub will redeliver");
                            continue;
                        }
                        client.try_ack(&ack_packet(*pkid)).map_err(|_| ())
                    }
                    HubCommand::Publish { topic, payload, .. } => {
                        client.try_publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone()).map_err(|_| ())
                    }
                    HubCommand::Answer { rid, status, payload } => {
                        let topic = super::azure::methods::response_topic(*status, rid);
                        client.try_publish(topic, QoS::AtMostOnce, false, payload.clone()).map_err(|_| ())
                    }
                    HubCommand::Twin { topic, payload } => {
                        client.try_publish(topic.as_str(), QoS::AtMostOnce, false, payload.clone()).map_err(|_| ())
                    }
                    HubCommand::Reconnect => {
                        // Acks handed over before it and not yet written
                        // are dropped with the connection (not counted as
                        // sent: the hub redelivers them); none after it
                        // goes out on this connection.
                        end_connection = Some("asked to");
                        break;
                    }
                };
                match (r, cmd) {
                    (Err(()), cmd) => {
                        outbox.push_front(cmd);
                        break;
                    }
                    (Ok(()), HubCommand::Publish { topic, payload, report }) => {
                        inflight.queued(inflight::Publish { topic, payload, report })
                    }
                    (Ok(()), HubCommand::Ack { pkid, seq, .. }) => acks.handed(pkid, Some(seq)),
                    (Ok(()), HubCommand::Reconnect | HubCommand::Answer { .. } | HubCommand::Twin { .. }) => {}
                }
            }
        }
        if end_connection.is_none() {
            tokio::select! {
                _ = shutdown.changed() => {
                    return stop(&client, &mut eventloop, &mut outbox, &mut inflight, &mut commands, &mut acks, connected_at.map(|_| generation)).await;
                }
                cmd = commands.recv(), if connected_at.is_some() && outbox.len() < 1024 => match cmd {
                    Some(cmd) => outbox.push_back(cmd),
                    // The pipeline is gone (it stops first): stop too, sending
                    // what is still here.
                    None => return stop(&client, &mut eventloop, &mut outbox, &mut inflight, &mut commands, &mut acks, Some(generation)).await,
                },
                _ = sleep_until(collision_deadline.unwrap_or(far)), if collision_deadline.is_some() => {
                    collision_deadline = None;
                    if eventloop.state.collision.is_some() {
                        end_connection = Some("packet id collision: a PUBACK the hub still owes");
                    }
                }
                _ = sleep_until(renew_at.unwrap_or(far)), if renew_at.is_some() && connected_at.is_some() => {
                    tracing::info!("renewing the SAS token: reconnecting with a new one");
                    refresh_credentials(&dialect, &mut eventloop);
                    eventloop.clean();
                    reclaim_publishes(&mut eventloop, &mut outbox, &mut inflight);
                    acks.clear();
                    connected_at = None;
                    renew_at = None;
                    let _ = events.send(HubEvent::Disconnected { generation }).await;
                }
                ev = eventloop.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        generation += 1;
                        collision_deadline = None;
                        connected_at = Some(Instant::now());
                        renew_at = dialect.renew_after().map(|d| Instant::now() + d);
                        tracing::info!(generation, session_present = ack.session_present, "connected to the hub");
                        for topic in dialect.subscriptions() {
                            if let Err(e) = client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                                tracing::error!(%topic, error = %e, "cannot subscribe");
                            }
                        }
                        let _ = events.send(HubEvent::Connected { generation, endpoint: dialect.describe() }).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let pkid = if p.qos == QoS::AtMostOnce { 0 } else { p.pkid };
                        // Methods and twin (IoT Hub's `$iothub/` topics), else a C2D message.
                        let other = match dialect.method_call(&p.topic) {
                            Some((name, rid)) => Some(HubEvent::Method { name, rid, payload: p.payload.to_vec() }),
                            None => dialect.twin_event(&p.topic).map(|t| match t {
                                Some((status, rid)) => HubEvent::TwinAnswer { status, rid, payload: p.payload.to_vec() },
                                None => HubEvent::DesiredPatch,
                            }),
                        };
                        if let Some(ev) = other {
                            let _ = events.send(ev).await;
                            if pkid != 0 { outbox.push_back(HubCommand::Ack { generation, pkid, seq: u64::MAX }); }
                        } else if let Some(inbound) = dialect.inbound(&p.topic, &p.payload) {
                            let _ = events.send(HubEvent::Message { generation, pkid, inbound }).await;
                        } else {
                            tracing::warn!(topic = %p.topic, "PUBLISH on a topic that is not a C2D topic: acknowledged and ignored");
                            if pkid != 0 { outbox.push_back(HubCommand::Ack { generation, pkid, seq: u64::MAX }); }
                        }
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => inflight.sent(pkid),
                    Ok(Event::Outgoing(rumqttc::Outgoing::PubAck(pkid))) => {
                        if let Some(seq) = acks.written(pkid) {
                            let _ = events.send(HubEvent::Acked { seq }).await;
                        }
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::AwaitAck(pkid))) => {
                        // rumqttc's packet ids came round to one whose PUBACK the
                        // hub still owes: it parks this publish and takes no
                        // other request (acks included) until that PUBACK comes,
                        // which on a live connection may be never. PUBACKs on
                        // their way still count for a short while (ending at
                        // once would send every report they acknowledge again).
                        tracing::warn!(pkid, "the hub has not acknowledged a publish for ~100 publishes (its packet id is due again): acks and reports wait behind it; reconnecting unless its PUBACK comes within 2 s");
                        collision_deadline = Some(Instant::now() + COLLISION_GRACE);
                    }
                    Ok(Event::Incoming(Packet::PubAck(a))) => {
                        if let Some(seq) = inflight.acked(a.pkid) {
                            let _ = events.send(HubEvent::Reported { seq }).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        if s.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                            tracing::error!("the hub refused the C2D subscription");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        reclaim_publishes(&mut eventloop, &mut outbox, &mut inflight);
                        acks.clear();
                        outbox.retain(|c| !matches!(c, HubCommand::Reconnect));
                        if let Some(at) = connected_at.take() {
                            renew_at = None;
                            let lived = at.elapsed();
                            let _ = events.send(HubEvent::Disconnected { generation }).await;
                            if kicks.record(lived) {
                                tracing::error!(lived_ms = lived.as_millis() as u64, "the hub keeps dropping the connection shortly after it is made: is another gateway or device connected with the same identity? Backing off");
                            }
                            failures = if lived > KickDetector::SHORT { 0 } else { failures };
                        }
                        failures += 1;
                        let wait = reconnect_delay(failures, fastrand::f64());
                        log_connection_error(&e, wait);
                        let refused = matches!(e, ConnectionError::ConnectionRefused(
                            rumqttc::ConnectReturnCode::NotAuthorized
                                | rumqttc::ConnectReturnCode::BadUserNamePassword
                                | rumqttc::ConnectReturnCode::BadClientId
                        ));
                        let reprovision = refused && dialect.forget_assignment();
                        if reprovision {
                            tracing::warn!("the hub refused the identity DPS gave: provisioning again");
                        }
                        // The token may have expired during the outage.
                        refresh_credentials(&dialect, &mut eventloop);
                        tokio::select! {
                            _ = sleep(wait) => {}
                            _ = shutdown.changed() => return Stopped::default(),
                        }
                        if reprovision {
                            if !provision(&mut dialect, &mut shutdown, &restart).await {
                                return Stopped::default();
                            }
                            match dialect.mqtt_options() {
                                Ok(o) => eventloop.mqtt_options = o,
                                Err(e) => tracing::error!(error = %e, "cannot build the hub connection settings"),
                            }
                            tracing::info!(hub = %dialect.describe(), "connecting to the hub");
                        }
                    }
                }
            }
        }
        if let Some(why) = end_connection {
            // Ended here, not by the hub: the same path as a lost
            // connection (unacknowledged publishes sent again, rumqttc's
            // leftovers and collision state dropped), with the usual
            // back-off, but no kick detection.
            eventloop.clean();
            reclaim_publishes(&mut eventloop, &mut outbox, &mut inflight);
            acks.clear();
            outbox.retain(|c| !matches!(c, HubCommand::Reconnect));
            renew_at = None;
            if let Some(at) = connected_at.take() {
                failures = if at.elapsed() > KickDetector::SHORT { 0 } else { failures };
                let _ = events.send(HubEvent::Disconnected { generation }).await;
            }
            failures += 1;
            let wait = reconnect_delay(failures, fastrand::f64());
            tracing::info!(reason = why, wait_ms = wait.as_millis() as u64, "ended the hub connection; reconnecting");
            tokio::select! {
                _ = sleep(wait) => {}
                _ = shutdown.changed() => return Stopped::default(),
            }
        }
    }
}

/// How long a packet id collision may hold every request (acks included)
/// before the link ends the connection: PUBACKs on their way come in that
/// time; one owed for ~100 publishes is not coming on this connection.
const COLLISION_GRACE: Duration = Duration::from_secs(2);

/// How long a stop waits for the hub's PUBACKs of the last reports.
const STOP_WAIT_FOR_PUBACKS: Duration = Duration::from_secs(2);
/// How long a stop waits for the DISCONNECT to go out.
const STOP_WAIT_FOR_DISCONNECT: Duration = Duration::from_secs(1);

/// The end: the last acks and reports, the hub's PUBACKs of the reports
/// (for a while), then DISCONNECT. Returns the reports the hub
/// acknowledged (only those are done) and the PUBACKs written. A report without its PUBACK (a
/// half-open link swallows them) stays unreported in the journal and is
/// sent again after the next start: the hub may get it twice, never not.
async fn stop(
    client: &AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    outbox: &mut VecDeque<HubCommand>,
    inflight: &mut Inflight,
    commands: &mut mpsc::UnboundedReceiver<HubCommand>,
    acks: &mut AcksOut,
    live: Option<u64>,
) -> Stopped {
    while let Ok(cmd) = commands.try_recv() {
        outbox.push_back(cmd);
    }
    // The generation of the connection up now, if one is.
    let Some(generation) = live else {
        return Stopped::default(); // reports not sent go out after the next start
    };
    for cmd in outbox.drain(..) {
        match cmd {
            HubCommand::Ack { generation: g, pkid, seq } if g == generation => {
                if client.try_ack(&ack_packet(pkid)).is_ok() {
                    acks.handed(pkid, Some(seq));
                }
            }
            HubCommand::Publish { topic, payload, report } => {
                if client.try_publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone()).is_ok() {
                    inflight.queued(inflight::Publish { topic, payload, report });
                }
            }
            HubCommand::Answer { rid, status, payload } => {
                let _ = client.try_publish(
                    super::azure::methods::response_topic(status, &rid),
                    QoS::AtMostOnce,
                    false,
                    payload,
                );
            }
            HubCommand::Twin { topic, payload } => {
                let _ = client.try_publish(topic, QoS::AtMostOnce, false, payload);
            }
            HubCommand::Ack { .. } | HubCommand::Reconnect => {}
        }
    }
    let mut done = Stopped::default();
    let mut ended = false;
    let deadline = Instant::now() + STOP_WAIT_FOR_PUBACKS;
    while !inflight.is_empty() {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => break,
            Ok(Ok(ev)) => on_stop_event(ev, inflight, acks, &mut done),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "the hub connection ended while stopping");
                ended = true;
                break;
            }
        }
    }
    if !ended {
        // DISCONNECT goes after the acks queued before it.
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(STOP_WAIT_FOR_DISCONNECT, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(ev) => on_stop_event(ev, inflight, acks, &mut done),
                }
            }
        })
        .await;
    }
    let unacknowledged = inflight.lost().iter().filter(|p| p.report.is_some()).count();
    if unacknowledged > 0 {
        tracing::warn!(
            unacknowledged,
            "the hub did not acknowledge the last result reports before the stop: they are sent again after the next start"
        );
    }
    done
}

fn on_stop_event(ev: Event, inflight: &mut Inflight, acks: &mut AcksOut, done: &mut Stopped) {
    match ev {
        Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => inflight.sent(pkid),
        Event::Outgoing(rumqttc::Outgoing::PubAck(pkid)) => done.acked.extend(acks.written(pkid)),
        Event::Incoming(Packet::PubAck(a)) => done.reported.extend(inflight.acked(a.pkid)),
        _ => {}
    }
}

/// After a connection is lost: puts every publish (result report,
/// telemetry) the hub did not acknowledge back at the head of the outbox,
/// in the order it was first handed over, from the link's own copies.
/// rumqttc's leftovers are dropped: its unacknowledged publishes and what
/// was still in its queue (the same publishes, sent again from here), the
/// publish it parked on a packet id collision (left there, it would stop
/// every later request, acks included, on every later connection: rumqttc's
/// `clean()` does not clear it), acks of the dead connection, its
/// subscription (made again on CONNACK), pings. rumqttc itself would resend
/// only when the next CONNACK says the session is present and drop them
/// when it is not (a restarted broker, a hub failover), while the journal
/// waits for their PUBACKs. Sent again they may arrive twice.
fn reclaim_publishes(eventloop: &mut rumqttc::EventLoop, outbox: &mut VecDeque<HubCommand>, inflight: &mut Inflight) {
    eventloop.pending.clear();
    eventloop.state.collision = None;
    // Events read from the dead connection must not surface after the
    // next CONNACK: their packet ids are stale.
    eventloop.state.events.clear();
    for p in inflight.lost().into_iter().rev() {
        outbox.push_front(HubCommand::Publish { topic: p.topic, payload: p.payload, report: p.report });
    }
}

/// Registers through DPS until it works (back-off between attempts) or the
/// gateway stops (false). A new device id stops the gateway: the pipeline
/// runs under the old one (its reports, methods and twin), so the link asks
/// the daemon for a clean stop and a restart (`restart`) and connects no
/// more; the restart reads the cached assignment.
async fn provision(
    dialect: &mut Dialect,
    shutdown: &mut watch::Receiver<bool>,
    restart: &watch::Sender<Option<String>>,
) -> bool {
    let mut failures: u32 = 0;
    loop {
        let r = tokio::select! {
            r = dialect.provision() => r,
            _ = shutdown.changed() => return false,
        };
        match r {
            Ok(()) => return true,
            Err(e @ super::dps::DpsError::DeviceIdChanged { .. }) => {
                let _ = restart.send(Some(e.to_string()));
                while !*shutdown.borrow_and_update() {
                    if shutdown.changed().await.is_err() {
                        break;
                    }
                }
                return false;
            }
            Err(e) => {
                failures += 1;
                let wait = reconnect_delay(failures, fastrand::f64());
                tracing::error!(error = %e, wait_ms = wait.as_millis() as u64, "DPS registration failed; trying again");
                tokio::select! {
                    _ = sleep(wait) => {}
                    _ = shutdown.changed() => return false,
                }
            }
        }
    }
}

/// Puts fresh credentials (a new SAS token) into the event loop's options.
fn refresh_credentials(dialect: &Dialect, eventloop: &mut rumqttc::EventLoop) {
    match dialect.mqtt_options() {
        Ok(fresh) => {
            if let Some(login) = fresh.credentials() {
                eventloop.mqtt_options.set_credentials(login.username, login.password);
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot renew credentials"),
    }
}

fn log_connection_error(e: &ConnectionError, wait: Duration) {
    let wait_ms = wait.as_millis() as u64;
    match e {
        ConnectionError::ConnectionRefused(code) => {
            tracing::error!(
                ?code,
                wait_ms,
                "the hub refused the connection (check the device id and its key, password or certificate)"
            )
        }
        other if other.to_string().contains("invalid peer certificate") => tracing::error!(
            error = %other,
            wait_ms,
            "the hub's TLS certificate is not trusted: check hub.ca_file and the system's CA store (a proxy that \
             opens TLS itself is not supported: the gateway verifies the hub end to end)"
        ),
        ConnectionError::Proxy(e) if e.to_string().contains("407") => tracing::error!(
            error = %e,
            wait_ms,
            "the proxy asks for a login (407): give it in hub.proxy as http://user:password@host:port"
        ),
        ConnectionError::Proxy(e) => {
            tracing::error!(error = %e, wait_ms, "the proxy did not open a tunnel to the hub (is hub.proxy right, and \
                does the proxy allow CONNECT to the hub's port?)")
        }
        other => tracing::warn!(error = %other, wait_ms, "hub connection lost or failed; reconnecting"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_doubles_to_a_minute() {
        assert_eq!(reconnect_delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(reconnect_delay(2, 1.0), Duration::from_secs(2));
        assert_eq!(reconnect_delay(6, 1.0), Duration::from_secs(32));
        assert_eq!(reconnect_delay(7, 1.0), Duration::from_secs(60));
        assert_eq!(reconnect_delay(50, 1.0), Duration::from_secs(60));
        assert_eq!(reconnect_delay(3, 0.0), Duration::from_secs(2));
    }

    #[test]
    fn kick_loop_needs_several_short_connections_in_a_row() {
        let mut k = KickDetector::default();
        assert!(!k.record(Duration::from_secs(1)));
        assert!(!k.record(Duration::from_secs(2)));
        assert!(k.record(Duration::from_secs(1)));
        assert!(!k.record(Duration::from_secs(600)), "a long connection resets it");
    }
}
