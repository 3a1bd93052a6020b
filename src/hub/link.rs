//! The hub link: the one task that owns the MQTT connection.
//!
//! It reconnects with exponential back-off and jitter (1 s doubling to 60 s),
//! subscribes again after every CONNACK, renews credentials by reconnecting
//! before the SAS token expires, and numbers connections (generations) so a
//! PUBACK is only ever sent on the connection its PUBLISH came from: an ack
//! for an older connection is dropped, and the hub's redelivery is
//! deduplicated by the journal instead. Acks are never sent on their own:
//! rumqttc runs with manual acks and only this task calls it.

use super::inflight::Inflight;
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

/// Runs until `shutdown`; then sends what it still holds (acks, reports)
/// and disconnects. Returns the reports the hub acknowledged while
/// stopping (the pipeline, stopped first, no longer hears of them). Events
/// the stopped pipeline cannot take are dropped: unacknowledged messages
/// come again from the hub.
pub async fn run(
    dialect: Dialect,
    events: mpsc::Sender<HubEvent>,
    mut commands: mpsc::UnboundedReceiver<HubCommand>,
    mut shutdown: watch::Receiver<bool>,
) -> Vec<u64> {
    let mut failures: u32 = 0;
    let opts = loop {
        match dialect.mqtt_options() {
            Ok(o) => break o,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the hub connection settings");
                failures += 1;
                tokio::select! {
                    _ = sleep(reconnect_delay(failures, fastrand::f64())) => continue,
                    _ = shutdown.changed() => return Vec::new(),
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
    let far = Instant::now() + Duration::from_secs(86400 * 365);
    tracing::info!(hub = %dialect.describe(), "connecting to the hub");

    loop {
        // Hand what we can to rumqttc; stop at the first full channel so
        // order is kept (acks must go in arrival order).
        if connected_at.is_some() {
            while let Some(cmd) = outbox.pop_front() {
                let r = match &cmd {
                    HubCommand::Ack { generation: g, pkid } => {
                        if *g != generation {
                            tracing::debug!(pkid, "dropping an ack of an earlier connection; the hub will redeliver");
                            continue;
                        }
                        client.try_ack(&ack_packet(*pkid)).map_err(|_| ())
                    }
                    HubCommand::Publish { topic, payload, report } => {
                        let r = client.try_publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone());
                        if r.is_ok() {
                            inflight.queued(*report);
                        }
                        r.map_err(|_| ())
                    }
                };
                if r.is_err() {
                    outbox.push_front(cmd);
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.changed() => {
                return stop(&client, &mut eventloop, &mut outbox, &mut inflight, &mut commands, generation, connected_at.is_some()).await;
            }
            cmd = commands.recv(), if connected_at.is_some() && outbox.len() < 1024 => match cmd {
                Some(cmd) => outbox.push_back(cmd),
                // The pipeline is gone (it stops first): stop too, sending
                // what is still here.
                None => return stop(&client, &mut eventloop, &mut outbox, &mut inflight, &mut commands, generation, true).await,
            },
            _ = sleep_until(renew_at.unwrap_or(far)), if renew_at.is_some() && connected_at.is_some() => {
                tracing::info!("renewing the SAS token: reconnecting with a new one");
                refresh_credentials(&dialect, &mut eventloop);
                eventloop.clean();
                eventloop.state.events.clear();
                reclaim_publishes(&mut eventloop, &mut outbox, &mut inflight);
                connected_at = None;
                renew_at = None;
                let _ = events.send(HubEvent::Disconnected { generation }).await;
            }
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    generation += 1;
                    connected_at = Some(Instant::now());
                    renew_at = dialect.renew_after().map(|d| Instant::now() + d);
                    tracing::info!(generation, session_present = ack.session_present, "connected to the hub");
                    for topic in dialect.subscriptions() {
                        if let Err(e) = client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                            tracing::error!(%topic, error = %e, "cannot subscribe");
                        }
                    }
                    let _ = events.send(HubEvent::Connected { generation }).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let pkid = if p.qos == QoS::AtMostOnce { 0 } else { p.pkid };
                    match dialect.inbound(&p.topic, &p.payload) {
                        Some(inbound) => {
                            let _ = events.send(HubEvent::Message { generation, pkid, inbound }).await;
                        }
                        None => {
                            tracing::warn!(topic = %p.topic, "PUBLISH on a topic that is not a C2D topic: acknowledged and ignored");
                            if pkid != 0 { outbox.push_back(HubCommand::Ack { generation, pkid }); }
                        }
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => inflight.sent(pkid),
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
                    // Events read from the dead connection must not surface
                    // after the next CONNACK: their packet ids are stale.
                    eventloop.state.events.clear();
                    reclaim_publishes(&mut eventloop, &mut outbox, &mut inflight);
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
                    // The token may have expired during the outage.
                    refresh_credentials(&dialect, &mut eventloop);
                    tokio::select! {
                        _ = sleep(wait) => {}
                        _ = shutdown.changed() => return Vec::new(),
                    }
                }
            }
        }
    }
}

/// The end: the last acks and reports, then DISCONNECT, in that order.
/// Returns the reports taken as done (see below).
async fn stop(
    client: &AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    outbox: &mut VecDeque<HubCommand>,
    inflight: &mut Inflight,
    commands: &mut mpsc::UnboundedReceiver<HubCommand>,
    generation: u64,
    connected: bool,
) -> Vec<u64> {
    // Last acks and reports first, then DISCONNECT, in that order.
    while let Ok(cmd) = commands.try_recv() {
        outbox.push_back(cmd);
    }
    if !connected {
        return Vec::new(); // reports not sent go out after the next start
    }
    {
        for cmd in outbox.drain(..) {
            match cmd {
                HubCommand::Ack { generation: g, pkid } if g == generation => {
                    let _ = client.try_ack(&ack_packet(pkid));
                }
                HubCommand::Publish { topic, payload, report } => {
                    if client.try_publish(topic, QoS::AtLeastOnce, false, payload).is_ok() {
                        inflight.queued(report);
                    }
                }
                HubCommand::Ack { .. } => {}
            }
        }
    }
    let _ = client.try_disconnect();
    // Let the DISCONNECT (and everything queued before it) go out.
    // The reports written before it on this live connection are
    // taken as done (their PUBACKs would come after we stop
    // reading): a clean stop does not send them again.
    let mut reported = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let ev = match eventloop.poll().await {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::debug!(error = %e, "the hub connection ended while stopping");
                    break;
                }
            };
            match ev {
                Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => inflight.sent(pkid),
                Event::Incoming(Packet::PubAck(a)) => reported.extend(inflight.acked(a.pkid)),
                Event::Outgoing(rumqttc::Outgoing::Disconnect) => {
                    reported.extend(inflight.drain_reports());
                    break;
                }
                _ => {}
            }
        }
    })
    .await;
    reported
}

/// Takes back the publishes (result reports, telemetry) rumqttc kept from a
/// dead connection, sent but not acknowledged or still queued, ahead of
/// anything newer in the outbox. rumqttc itself resends them only when the
/// next CONNACK says the session is present and drops them when it is not
/// (a restarted broker, a hub failover): a report would be lost, while the
/// journal already counts it as sent. Sent again they may arrive twice.
fn reclaim_publishes(eventloop: &mut rumqttc::EventLoop, outbox: &mut VecDeque<HubCommand>, inflight: &mut Inflight) {
    let kept: Vec<HubCommand> = eventloop
        .pending
        .drain(..)
        .filter_map(|r| match r {
            rumqttc::Request::Publish(p) => {
                let report = inflight.take_back(p.pkid);
                Some(HubCommand::Publish { topic: p.topic, payload: p.payload.to_vec(), report })
            }
            _ => None, // acks of the dead connection, its subscription (made again on CONNACK), pings
        })
        .collect();
    inflight.clear();
    for cmd in kept.into_iter().rev() {
        outbox.push_front(cmd);
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
            tracing::error!(?code, wait_ms, "the hub refused the connection (check the device id, key or password)")
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
