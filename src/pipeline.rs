//! The pipeline: the task between the hub link and the bus workers. It
//! journals every received message (one flush per batch: group commit),
//! deduplicates by message id, routes, hands jobs to the buses, records
//! outcomes, sends PUBACKs in arrival order once each message may be
//! completed, hands over messages that take too long, and publishes result
//! reports.

use crate::bus::worker::BusHandle;
use crate::bus::{Done, Job};
use crate::completion::AckQueue;
use crate::config::{Complete, Config};
use crate::hub::{Dialect, HubCommand, HubEvent};
use crate::journal::{Admitted, Journal};
use crate::message::{now_ms, Entry, Inbound, Outcome, State};
use crate::telemetry::{self, Alert, Reading};
use crate::{report, router};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

/// Most messages journaled under one flush.
const BATCH: usize = 256;

/// What the pipeline shows the outside (systemd STATUS=, logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub hub_connected: bool,
    pub queued: usize,
    pub oldest_queued_ms: Option<u64>,
}

/// What the pipeline is wired to.
pub struct Parts {
    pub journal: Journal,
    pub dialect: Arc<Dialect>,
    pub hub: mpsc::UnboundedSender<HubCommand>,
    /// Given to every bus worker (they report outcomes here).
    pub done: mpsc::UnboundedSender<Done>,
    /// Given to every telemetry task.
    pub readings: mpsc::UnboundedSender<Reading>,
    pub status: watch::Sender<Status>,
    /// Counts turns of the pipeline's loop (the systemd watchdog watches it).
    pub heartbeat: Arc<AtomicU64>,
    /// Room on the state directory's disk.
    pub space: crate::journal::space::Space,
}

pub struct Pipeline {
    cfg: Arc<Config>,
    journal: Journal,
    dialect: Arc<Dialect>,
    hub: mpsc::UnboundedSender<HubCommand>,
    done_tx: mpsc::UnboundedSender<Done>,
    readings_tx: mpsc::UnboundedSender<Reading>,
    heartbeat: Arc<AtomicU64>,
    buses: HashMap<String, BusHandle>,
    bus_stop: watch::Sender<bool>,
    acks: AckQueue,
    generation: u64,
    connected: bool,
    status: watch::Sender<Status>,
    /// Outcomes recorded but not yet flushed (a flush failed): acked and
    /// reported after the next successful flush.
    unflushed: Vec<Entry>,
    space: crate::journal::space::Space,
    /// Received while the disk is full: neither journaled nor acknowledged;
    /// taken once there is room (the hub redelivers them after a reconnect).
    held: Vec<(u64, u16, Inbound)>,
    /// After a failed flush, no handover attempt before this.
    handover_not_before: Option<Instant>,
}

impl Pipeline {
    pub fn new(cfg: Arc<Config>, parts: Parts) -> Self {
        Pipeline {
            cfg,
            journal: parts.journal,
            dialect: parts.dialect,
            hub: parts.hub,
            done_tx: parts.done,
            readings_tx: parts.readings,
            heartbeat: parts.heartbeat,
            space: parts.space,
            held: Vec::new(),
            buses: HashMap::new(),
            bus_stop: watch::channel(false).0,
            acks: AckQueue::default(),
            generation: 0,
            connected: false,
            status: parts.status,
            unflushed: Vec::new(),
            handover_not_before: None,
        }
    }

    /// Starts a worker per configured bus and the telemetry schedules.
    pub fn start_buses(&mut self) -> Result<(), String> {
        let (stop_tx, stop_rx) = watch::channel(false);
        self.buses = crate::bus::spawn_all(&self.cfg, &self.journal, &self.done_tx, &stop_rx)?;
        let senders = self.buses.iter().map(|(k, b)| (k.clone(), b.jobs.clone())).collect();
        telemetry::spawn(&self.cfg, &senders, self.readings_tx.clone(), stop_rx);
        self.bus_stop = stop_tx;
        Ok(())
    }

    /// Stops the bus workers (each finishes the request on the wire) and
    /// records the outcomes they still had.
    async fn stop_buses(&mut self, done: &mut mpsc::UnboundedReceiver<Done>) {
        let _ = self.bus_stop.send(true);
        let tasks: Vec<_> = self.buses.drain().map(|(_, b)| b.task).collect();
        for t in tasks {
            let _ = t.await;
        }
        let mut batch = Vec::new();
        while let Ok(d) = done.try_recv() {
            batch.push(d);
        }
        if !batch.is_empty() {
            self.on_done(batch).await;
        }
    }

    /// Applies a new configuration: buses, devices and routing. Queued
    /// messages stay in the journal and are dispatched again under the new
    /// map; nothing is dropped, nothing on the wire is cut.
    async fn reload(&mut self, mut new: Config, done: &mut mpsc::UnboundedReceiver<Done>) {
        if format!("{:?}", new.hub) != format!("{:?}", self.cfg.hub)
            || format!("{:?}", new.gateway) != format!("{:?}", self.cfg.gateway)
        {
            tracing::warn!(
                "[hub] and [gateway] changes take effect after a restart; applying buses, devices and routing now"
            );
            new.hub = self.cfg.hub.clone();
            new.gateway = self.cfg.gateway.clone();
        }
        self.stop_buses(done).await;
        self.cfg = Arc::new(new);
        if let Err(e) = self.start_buses() {
            tracing::error!(error = %e, "cannot start the buses of the new configuration");
        }
        match self.recover().await {
            Ok(()) => {
                tracing::info!(buses = self.cfg.buses.len(), devices = self.cfg.devices.len(), "configuration reloaded")
            }
            Err(e) => tracing::error!(error = %e, "journal error while applying the new configuration"),
        }
    }

    /// Resumes what the journal holds: messages interrupted mid-send first
    /// become `queued` again (idempotent devices) or `uncertain`; then every
    /// unfinished message is dispatched in arrival order, and reports that
    /// never went out are sent.
    pub async fn recover(&mut self) -> Result<(), crate::journal::JournalError> {
        let unfinished = self.journal.unfinished()?;
        let mut resumed = 0;
        for mut e in unfinished {
            if e.state == State::Sending {
                let idempotent =
                    router::route(&self.cfg, e.device.as_deref()).map(|r| r.config.idempotent).unwrap_or(false);
                if idempotent {
                    tracing::warn!(message_id = %e.id, device = e.device.as_deref().unwrap_or(""), "the gateway stopped while this message was on the wire; sending it again (device is idempotent)");
                    e = self.journal.update(e.seq, |e| {
                        e.state = State::Queued;
                        e.resent_after_crash = true;
                    })?;
                } else {
                    let o = Outcome::uncertain(format!(
                        "the gateway stopped while this command was on the wire; not sent again because device {} is not idempotent",
                        e.device.as_deref().unwrap_or("?")
                    ));
                    self.finish_one(e.seq, o);
                    continue;
                }
            }
            resumed += 1;
            self.dispatch(e);
        }
        self.journal.flush().await?;
        self.settle().await;
        for e in self.journal.unreported()? {
            self.report(&e);
        }
        if resumed > 0 {
            tracing::info!(resumed, "resuming unfinished messages from the journal");
        }
        self.publish_status();
        Ok(())
    }

    /// Runs until `shutdown` turns true. Then stops taking messages, lets the
    /// buses finish the request on the wire, records those outcomes, flushes
    /// and sends the acks that became possible.
    pub async fn run(
        mut self,
        mut hub_events: mpsc::Receiver<HubEvent>,
        mut done: mpsc::UnboundedReceiver<Done>,
        mut readings: mpsc::UnboundedReceiver<Reading>,
        mut reloads: mpsc::UnboundedReceiver<Config>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut housekeeping = Instant::now() + Duration::from_secs(1);
        let mut prune_at = Instant::now() + Duration::from_secs(60);
        loop {
            self.heartbeat.fetch_add(1, Ordering::Relaxed);
            let handover = self
                .acks
                .next_overdue(*self.cfg.hub.handover_after)
                .map(|h| self.handover_not_before.map_or(h, |nb| h.max(nb)));
            let wake = handover.map_or(housekeeping, |h| h.min(housekeeping));
            tokio::select! {
                ev = hub_events.recv() => match ev {
                    Some(ev) => self.on_hub_event(ev, &mut hub_events).await,
                    None => break,
                },
                Some(r) = readings.recv() => self.on_reading(r),
                Some(new) = reloads.recv() => self.reload(new, &mut done).await,
                Some(d) = done.recv() => {
                    let mut batch = vec![d];
                    while let Ok(d) = done.try_recv() { batch.push(d); if batch.len() >= BATCH { break; } }
                    self.on_done(batch).await;
                }
                _ = sleep_until(wake) => {
                    self.handover().await;
                    if !self.held.is_empty() {
                        self.on_messages(Vec::new()).await;
                    }
                    let now = Instant::now();
                    if now >= housekeeping {
                        housekeeping = now + Duration::from_secs(1);
                        self.publish_status();
                    }
                    if now >= prune_at {
                        prune_at = now + Duration::from_secs(60);
                        match self.journal.prune(now_ms(), *self.cfg.gateway.dedupe_window) {
                            Ok(0) => {}
                            Ok(n) => tracing::debug!(pruned = n, "pruned finished messages past the dedupe window"),
                            Err(e) => tracing::error!(error = %e, "journal prune failed"),
                        }
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        // Stop: the buses finish what is on the wire, then we record it.
        self.stop_buses(&mut done).await;
        if let Err(e) = self.journal.flush().await {
            tracing::error!(error = %e, "final journal flush failed");
        }
    }

    async fn on_hub_event(&mut self, ev: HubEvent, more: &mut mpsc::Receiver<HubEvent>) {
        match ev {
            HubEvent::Connected { generation } => {
                self.generation = generation;
                self.connected = true;
                self.acks.reconnected(generation);
                self.publish_status();
            }
            HubEvent::Disconnected { .. } => {
                self.connected = false;
                self.publish_status();
            }
            HubEvent::Reported { seq } => self.mark_reported(seq),
            HubEvent::Message { generation, pkid, inbound } => {
                let mut batch = vec![(generation, pkid, inbound)];
                let mut after = None;
                while batch.len() < BATCH {
                    match more.try_recv() {
                        Ok(HubEvent::Message { generation, pkid, inbound }) => batch.push((generation, pkid, inbound)),
                        Ok(other) => {
                            after = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                self.on_messages(batch).await;
                if let Some(ev) = after {
                    Box::pin(self.on_hub_event(ev, more)).await;
                }
            }
        }
    }

    /// Journals a batch of received messages under one flush, then acts.
    async fn on_messages(&mut self, batch: Vec<(u64, u16, Inbound)>) {
        self.held.extend(batch);
        if self.held.is_empty() || !self.space.check() {
            return;
        }
        // Messages of an earlier connection cannot be acknowledged any more:
        // the hub delivers them again.
        let generation = self.generation;
        let batch: Vec<_> =
            std::mem::take(&mut self.held).into_iter().filter(|(g, pkid, _)| *pkid == 0 || *g == generation).collect();
        let now = now_ms();
        let arrived = Instant::now();
        let mut admitted = Vec::with_capacity(batch.len());
        for (generation, pkid, inbound) in batch {
            match self.journal.admit(inbound, self.cfg.routing.default_device.as_deref(), now) {
                Ok(a) => admitted.push((generation, pkid, a)),
                Err(e) => {
                    // Not journaled: not acknowledged; the hub delivers it again.
                    tracing::error!(error = %e, "cannot journal a received message: leaving it unacknowledged");
                }
            }
        }
        if let Err(e) = self.journal.flush().await {
            tracing::error!(error = %e, count = admitted.len(), "cannot flush the journal (disk full?): the messages are not acknowledged and will be redelivered");
            for (_, _, a) in admitted {
                if let Admitted::New(e) | Admitted::Conflict(e) = a {
                    let _ = self.journal.forget(e.seq);
                }
            }
            return;
        }
        let after_journal = self.cfg.hub.complete == Complete::AfterJournal;
        for (generation, pkid, a) in admitted {
            match a {
                Admitted::New(e) | Admitted::Conflict(e) => {
                    tracing::info!(message_id = %e.id, device = e.device.as_deref().unwrap_or(""), seq = e.seq, "received");
                    if e.state.is_final() {
                        tracing::warn!(message_id = %e.id, detail = %e.detail, "rejected");
                        self.slot(generation, pkid, e.seq, true, arrived);
                        self.report(&e);
                        continue;
                    }
                    if after_journal {
                        let _ = self.journal.update(e.seq, |e| e.handed_over = true);
                    }
                    self.slot(generation, pkid, e.seq, after_journal, arrived);
                    self.dispatch(e);
                }
                Admitted::Duplicate(e) => {
                    tracing::info!(message_id = %e.id, state = %e.state, "redelivered message: not executed again");
                    let ready = e.state.is_final() || e.handed_over;
                    self.slot(generation, pkid, e.seq, ready, arrived);
                    if e.state.is_final() {
                        self.report(&e);
                    }
                }
                Admitted::Full { detail, inbound } => {
                    // Not journaled: rejected and reported under its own id,
                    // acknowledged in its turn (a strict hub drops a
                    // connection that acknowledges out of order).
                    let id_generated = inbound.id.is_none();
                    let id = inbound.id.unwrap_or_else(|| format!("unjournaled-{now}-{:08x}", fastrand::u32(..)));
                    tracing::error!(message_id = %id, %detail, "journal full: rejecting a new message");
                    let e = Entry {
                        seq: u64::MAX,
                        id,
                        id_generated,
                        device: inbound.device,
                        correlation_id: inbound.correlation_id,
                        expires_at: inbound.expires_at,
                        received_at: now,
                        state: State::Rejected,
                        attempts: 0,
                        detail,
                        completed_at: Some(now),
                        handed_over: false,
                        reported: true,
                        resent_after_crash: false,
                        resent: false,
                        reject: None,
                        body_len: 0,
                        fingerprint: None,
                        conflict: false,
                        acked: false,
                        final_uptime: None,
                    };
                    self.slot(generation, pkid, u64::MAX, true, arrived);
                    self.send_report(&e);
                }
            }
        }
        self.settle().await;
        self.release_window().await;
        self.send_acks();
        self.publish_status();
    }

    /// Keeps at most `hub.max_unacked` messages un-acknowledged: PUBACKs go
    /// in arrival order, and a broker sends only so many un-acked messages
    /// (Mosquitto: 20), so a slow or dead device at the head would otherwise
    /// stall every other device. The oldest unfinished messages are handed
    /// over: acknowledged, kept in the journal, delivered and reported later.
    async fn release_window(&mut self) {
        let seqs = self.acks.over_limit(self.cfg.hub.max_unacked);
        self.hand_over(seqs, "too many messages are waiting for their devices").await;
    }

    /// Acknowledges unfinished messages to the hub: the journal keeps
    /// custody (flushed first), delivery goes on, the outcome is reported
    /// later. After a failed flush nothing is acknowledged and the next
    /// attempt waits a second.
    async fn hand_over(&mut self, seqs: Vec<u64>, why: &str) {
        if seqs.is_empty() {
            return;
        }
        for seq in &seqs {
            if let Ok(e) = self.journal.update(*seq, |e| e.handed_over = true) {
                tracing::info!(message_id = %e.id, reason = why, "acknowledged to the hub before delivery; delivery goes on from the journal");
            }
        }
        if let Err(e) = self.journal.flush().await {
            tracing::error!(error = %e, "cannot flush handover to the journal: holding acks");
            self.handover_not_before = Some(Instant::now() + Duration::from_secs(1));
            return;
        }
        self.handover_not_before = None;
        for seq in seqs {
            self.acks.mark_ready(seq);
        }
    }

    fn slot(&mut self, generation: u64, pkid: u16, seq: u64, ready: bool, arrived: Instant) {
        if pkid != 0 {
            self.acks.push(generation, pkid, seq, ready, arrived);
        }
    }

    /// Routes an unfinished entry and hands it to its bus, or rejects it.
    fn dispatch(&mut self, e: Entry) {
        let (bus, job) = match self.make_job(&e) {
            Ok(bj) => bj,
            Err(why) => {
                self.finish_one(e.seq, Outcome::rejected(why));
                return;
            }
        };
        match self.buses.get(&bus) {
            Some(h) => {
                if let Err(mpsc::error::SendError(crate::bus::Work::Write(job))) =
                    h.jobs.send(crate::bus::Work::Write(job))
                {
                    tracing::error!(message_id = %job.id, %bus, "bus worker is gone; the message stays queued in the journal");
                }
            }
            None => self.finish_one(e.seq, Outcome::rejected(format!("bus {bus:?} is not running"))),
        }
    }

    /// The job for an entry and the name of the bus it goes to.
    fn make_job(&self, e: &Entry) -> Result<(String, Job), String> {
        let route = router::route(&self.cfg, e.device.as_deref())?;
        let body = self
            .journal
            .body(e.seq)
            .map_err(|err| err.to_string())?
            .ok_or_else(|| "the message body is missing from the journal".to_string())?;
        let request = router::command(&route, &body)?;
        // $.exp is the hub's wall-clock time; max_age counts the age the journal measured (monotonic).
        let (age, max_age) = (self.journal.age(e), *route.config.max_age);
        let deadline = Some(crate::journal::clock::job_deadline(Instant::now(), now_ms(), e.expires_at, age, max_age));
        let job = Job {
            seq: e.seq,
            id: e.id.clone(),
            device: route.device.to_string(),
            unit: route.config.unit.unwrap_or(0),
            idempotent: route.config.idempotent,
            request,
            deadline,
            max_attempts: route.config.max_attempts.max(1),
            attempts: e.attempts,
            progress: 0,
            acked: Vec::new(),
            last_error: None,
            unconfirmed: false,
        };
        Ok((route.bus_name.to_string(), job))
    }

    /// Records a final outcome decided here (not on a bus). Its ack and
    /// report wait for the flush ([`Pipeline::settle`]): a crash before it
    /// must not leave the hub told about an outcome the journal forgot.
    fn finish_one(&mut self, seq: u64, outcome: Outcome) {
        match self.journal.finish(seq, &outcome, now_ms()) {
            Ok(e) => self.unflushed.push(e),
            Err(err) => tracing::error!(seq, error = %err, "cannot record an outcome"),
        }
    }

    /// Flushes outcomes recorded here, then releases their acks and reports.
    /// After a failed flush they wait for the next one.
    async fn settle(&mut self) {
        if self.unflushed.is_empty() {
            return;
        }
        match self.journal.flush().await {
            Ok(()) => {
                for e in std::mem::take(&mut self.unflushed) {
                    self.after_final(&e);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot flush outcomes to the journal: holding their acks and reports")
            }
        }
    }

    async fn on_done(&mut self, batch: Vec<Done>) {
        let now = now_ms();
        let mut finished = std::mem::take(&mut self.unflushed);
        // Bus workers flush their outcomes before handing them on (with the
        // `sending` of their next request); only the rest needs a flush here.
        let mut needs_flush = !finished.is_empty();
        for d in batch {
            // A worker that could not record the outcome left the entry
            // unfinished: recorded here, it needs the flush after all.
            match self.journal.record(d.seq, &d.outcome, now) {
                Ok((e, wrote)) => {
                    needs_flush |= wrote || !d.durable;
                    finished.push(e);
                }
                Err(err) => tracing::error!(seq = d.seq, error = %err, "cannot record an outcome"),
            }
        }
        // The outcome is durable before the hub hears the message is complete.
        if let Err(e) = if needs_flush { self.journal.flush().await } else { Ok(()) } {
            tracing::error!(error = %e, "cannot flush outcomes to the journal: holding their acks and reports");
            self.unflushed = finished;
            return;
        }
        for e in &finished {
            self.after_final(e);
        }
        self.send_acks();
        self.publish_status();
    }

    fn after_final(&mut self, e: &Entry) {
        let level_ok = e.state == State::Delivered;
        if level_ok {
            tracing::info!(message_id = %e.id, device = e.device.as_deref().unwrap_or(""), attempts = e.attempts, detail = %e.detail, "delivered");
        } else {
            tracing::warn!(message_id = %e.id, device = e.device.as_deref().unwrap_or(""), state = %e.state, attempts = e.attempts, detail = %e.detail, "not delivered");
        }
        self.acks.mark_ready(e.seq);
        self.report(e);
    }

    /// Publishes the report if the policy wants it; marks it done either way.
    /// The entry counts as reported once the hub acknowledged the report
    /// ([`HubEvent::Reported`]): a crash before that sends it again after
    /// the restart. An outcome the policy does not report is done at once.
    fn report(&mut self, e: &Entry) {
        if report::wanted(self.cfg.hub.reports, e.state) {
            self.send_report(e);
        } else if !e.reported {
            self.mark_reported(e.seq);
        }
    }

    fn mark_reported(&self, seq: u64) {
        if let Err(err) = self.journal.update(seq, |e| e.reported = true) {
            tracing::debug!(seq, error = %err, "cannot mark a report as done (pruned meanwhile?)");
        }
    }

    fn send_report(&self, e: &Entry) {
        let topic = self.dialect.report_topic(&e.id, e.device.as_deref(), e.state.as_str());
        let report = (e.seq != u64::MAX).then_some(e.seq);
        let _ = self.hub.send(HubCommand::Publish { topic, payload: report::body(e), report });
    }

    fn send_acks(&mut self) {
        for (generation, pkid, seq) in self.acks.pop_ready_slots() {
            let _ = self.hub.send(HubCommand::Ack { generation, pkid });
            let _ = self.journal.acked(seq);
        }
    }

    /// Acknowledges messages unfinished after `handover_after`: the journal
    /// keeps custody and delivery goes on; the outcome is reported later.
    async fn handover(&mut self) {
        let overdue = self.acks.overdue(Instant::now(), *self.cfg.hub.handover_after);
        self.hand_over(overdue, "not finished within handover_after").await;
        self.send_acks();
    }

    /// Sends a telemetry reading to the hub (dropped while disconnected:
    /// readings are not journaled, and a backlog would only grow).
    fn on_reading(&mut self, r: Reading) {
        if !self.connected {
            return;
        }
        let alerts: Vec<(String, bool)> = self
            .cfg
            .devices
            .get(&r.device)
            .and_then(|d| d.telemetry.as_ref())
            .map(|t| {
                t.alerts
                    .iter()
                    .filter_map(|(name, expr)| Alert::parse(name, expr).ok())
                    .filter_map(|a| a.eval(&r.values).map(|v| (a.name, v)))
                    .collect()
            })
            .unwrap_or_default();
        let topic = self.dialect.telemetry_topic(&r.device, &alerts);
        let _ = self.hub.send(HubCommand::Publish { topic, payload: telemetry::body(&r, &alerts), report: None });
    }

    fn publish_status(&self) {
        let s = self.journal.stats();
        let st =
            Status { hub_connected: self.connected, queued: s.unfinished, oldest_queued_ms: s.oldest_unfinished_ms };
        self.status.send_if_modified(|old| {
            let changed = *old != st;
            *old = st;
            changed
        });
    }
}
