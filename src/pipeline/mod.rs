//! The pipeline: the task between the hub link and the bus workers. Its
//! decisions (what to journal, when a flush must come first, which PUBACK
//! may go, what to hand over or report) are made by the pure [`core`]; this
//! task carries them out against the journal, the buses and the hub link,
//! and feeds back what happened.

mod calls;
pub mod core;
mod feed;
mod methods;
#[cfg(test)]
mod model;
pub mod operator;
pub mod readings;
mod twin;

use self::core::{Action, Admission, Arrival, Core, Finished, Settings, Unfinished, BATCH};
use crate::bus::worker::BusHandle;
use crate::bus::{Done, Job};
use crate::config::Config;
use crate::hub::{Dialect, HubCommand, HubEvent};
use crate::journal::{Admitted, Journal};
use crate::message::{now_ms, Entry, Inbound, Outcome, State};
use crate::telemetry::{self, Reading};
use crate::{report, router};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

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
    /// What the operator surface shows.
    pub live: Arc<crate::live::Live>,
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
    status: watch::Sender<Status>,
    space: crate::journal::space::Space,
    live: Arc<crate::live::Live>,
    core: Core,
    /// What each device's bus worker has, and what waits for it.
    feed: feed::Feed,
    /// Telemetry readings from the buffer published and not yet
    /// acknowledged by the hub, and the last one published.
    readings_out: std::collections::BTreeSet<u64>,
    readings_last: Option<u64>,
    /// Readings are being dropped at the buffer's bound (logged once).
    readings_dropping: bool,
    /// Messages a bus worker holds (handed over, outcome not yet back): an
    /// operator may not change their outcome meanwhile.
    with_workers: std::collections::HashSet<u64>,
    /// Outcomes the bus workers just handed on, as they recorded them:
    /// their reports need not read them back (kept while `on_done` acts).
    finals: HashMap<u64, crate::message::Entry>,
    /// The hub connection's generation (direct method calls arrive on it).
    generation: u64,
    /// `write` calls waiting for their message's outcome, by sequence.
    waits: HashMap<u64, Vec<calls::Wait>>,
    /// `write` calls repeating an id whose outcome is stored: answered
    /// after a flush.
    dup_answers: Vec<(String, crate::message::Entry)>,
    /// Twin setpoints waiting for their outcome, by sequence: (device,
    /// point, desired value, desired version).
    setpoints: HashMap<u64, (String, String, serde_json::Value, u64)>,
    /// Numbers the twin's reported patches.
    twin_rid: u64,
    /// When this run started (unix ms), for the reported `gateway`.
    started_ms: u64,
    /// The journal was opened after a crash and not yet recovered.
    after_crash: bool,
}

impl Pipeline {
    pub fn new(cfg: Arc<Config>, parts: Parts) -> Self {
        Pipeline {
            after_crash: !parts.journal.opened_clean(),
            journal: parts.journal,
            dialect: parts.dialect,
            hub: parts.hub,
            done_tx: parts.done,
            readings_tx: parts.readings,
            heartbeat: parts.heartbeat,
            space: parts.space,
            live: parts.live,
            buses: HashMap::new(),
            bus_stop: watch::channel(false).0,
            status: parts.status,
            core: Core::new(Settings::from_config(&cfg)),
            feed: feed::Feed::default(),
            finals: HashMap::new(),
            with_workers: Default::default(),
            readings_out: Default::default(),
            readings_last: None,
            readings_dropping: false,
            generation: 0,
            waits: HashMap::new(),
            dup_answers: Vec::new(),
            setpoints: HashMap::new(),
            twin_rid: 0,
            started_ms: now_ms(),
            cfg,
        }
    }

    /// Starts a worker per configured bus and the telemetry schedules.
    pub fn start_buses(&mut self) -> Result<(), crate::bus::SpawnError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        self.live.configure(&self.cfg);
        self.buses = crate::bus::spawn_all(&self.cfg, &self.journal, &self.live, &self.done_tx, &stop_rx)?;
        let senders = self.buses.iter().map(|(k, b)| (k.clone(), b.jobs.clone())).collect();
        telemetry::spawn(&self.cfg, &senders, self.readings_tx.clone(), stop_rx);
        self.bus_stop = stop_tx;
        Ok(())
    }

    /// Stops the bus workers (each finishes the request on the wire) and
    /// records the outcomes they still had.
    async fn stop_buses(&mut self, done: &mut mpsc::UnboundedReceiver<Done>) {
        let _ = self.bus_stop.send(true);
        self.core.buses_stopped();
        let tasks: Vec<_> = self.buses.drain().map(|(_, b)| b.task).collect();
        for t in tasks {
            let _ = t.await;
        }
        // Nothing is fed to the stopped buses: `recover` dispatches again.
        self.feed.clear();
        self.with_workers.clear();
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
        if self.cfg.needs_restart_for(&new) {
            tracing::warn!(
                "[hub] and [gateway] changes take effect after a restart; applying buses, devices and routing now"
            );
            new.hub = self.cfg.hub.clone();
            new.gateway = self.cfg.gateway.clone();
        }
        self.stop_buses(done).await;
        let old = std::mem::replace(&mut self.cfg, Arc::new(new));
        if let Err(e) = self.start_buses() {
            // Back to the old map: with no bus running, every queued message
            // would be rejected as "bus not running".
            tracing::error!(error = %e, "cannot start the buses of the new configuration: keeping the running one");
            self.cfg = old;
            if let Err(e) = self.start_buses() {
                tracing::error!(error = %e, "cannot start the buses again");
            }
        }
        self.core.set_settings(Settings::from_config(&self.cfg));
        match self.recover().await {
            Ok(()) => {
                tracing::info!(buses = self.cfg.buses.len(), devices = self.cfg.devices.len(), "configuration reloaded")
            }
            Err(e) => tracing::error!(error = %e, "journal error while applying the new configuration"),
        }
    }

    /// Resumes what the journal holds: messages interrupted mid-send are
    /// sent again (idempotent devices) or end `uncertain`; every unfinished
    /// message is dispatched in arrival order, and reports the hub has not
    /// acknowledged are sent (unless one is on its way already). After a
    /// crash, an idempotent device's first unfinished messages count as
    /// interrupted mid-send too: its requests go out before their `sending`
    /// marks are durable (at most `MAX_AHEAD` of them; see `bus/commit.rs`).
    pub async fn recover(&mut self) -> Result<(), crate::journal::JournalError> {
        let mut unfinished: Vec<Unfinished> = self
            .journal
            .unfinished()?
            .into_iter()
            .map(|e| {
                let route = router::route(&self.cfg, e.device.as_deref());
                Unfinished {
                    seq: e.seq,
                    sending: e.state == State::Sending,
                    idempotent: route.as_ref().map(|r| r.config.idempotent).unwrap_or(false),
                    device: e.device.clone().unwrap_or_else(|| "?".into()),
                }
            })
            .collect();
        if std::mem::take(&mut self.after_crash) {
            core::possibly_sent(&mut unfinished, crate::bus::MAX_AHEAD);
        }
        let unreported = self.journal.unreported()?.into_iter().map(|e| (e.seq, e.state)).collect();
        let resumed = unfinished.len();
        let actions = self.core.recover(unfinished, unreported);
        self.act(actions).await;
        if resumed > 0 {
            tracing::info!(resumed, "resuming unfinished messages from the journal");
        }
        self.publish_status();
        Ok(())
    }

    /// Runs until `shutdown` turns true. Then stops taking messages, lets the
    /// buses finish the request on the wire, records those outcomes, flushes
    /// and sends the acks that became possible. Returns the hub's events
    /// receiver: what is still in it (reports acknowledged, PUBACKs written
    /// while stopping) is the daemon's to record.
    pub async fn run(
        mut self,
        mut hub_events: mpsc::Receiver<HubEvent>,
        mut done: mpsc::UnboundedReceiver<Done>,
        mut readings: mpsc::UnboundedReceiver<Reading>,
        mut reloads: mpsc::UnboundedReceiver<Config>,
        mut asks: mpsc::Receiver<operator::Ask>,
        mut shutdown: watch::Receiver<bool>,
    ) -> mpsc::Receiver<HubEvent> {
        let mut housekeeping = Instant::now() + Duration::from_secs(1);
        let mut prune_at = Instant::now() + Duration::from_secs(60);
        loop {
            self.heartbeat.fetch_add(1, Ordering::Relaxed);
            let wake = self.core.next_wake().map_or(housekeeping, |h| h.min(housekeeping));
            tokio::select! {
                ev = hub_events.recv() => match ev {
                    Some(ev) => self.on_hub_event(ev, &mut hub_events).await,
                    None => break,
                },
                Some(r) = readings.recv() => self.on_reading(r),
                Some(new) = reloads.recv() => self.reload(new, &mut done).await,
                Some(ask) = asks.recv() => self.on_ask(ask).await,
                Some(d) = done.recv() => {
                    let mut batch = vec![d];
                    while let Ok(d) = done.try_recv() { batch.push(d); if batch.len() >= BATCH { break; } }
                    self.on_done(batch).await;
                }
                _ = sleep_until(wake) => {
                    let now = Instant::now();
                    let room = self.space.check();
                    let actions = self.core.tick(now, room);
                    self.act(actions).await;
                    if now >= housekeeping {
                        housekeeping = now + Duration::from_secs(1);
                        self.expire_waits(now);
                        self.publish_status();
                        self.pump_readings();
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
        hub_events
    }

    async fn on_hub_event(&mut self, ev: HubEvent, more: &mut mpsc::Receiver<HubEvent>) {
        match ev {
            HubEvent::Method { name, rid, payload } => self.on_method(name, rid, payload).await,
            HubEvent::TwinAnswer { status, rid, payload } => self.on_twin_answer(status, rid, payload).await,
            HubEvent::DesiredPatch => self.on_desired_patch(),
            HubEvent::Connected { generation, endpoint } => {
                self.live.hub(true, now_ms());
                self.live.hub_endpoint(endpoint);
                self.generation = generation;
                self.core.on_connected(generation);
                self.publish_status();
                self.pump_readings();
                self.twin_connected();
            }
            HubEvent::Disconnected { .. } => {
                self.live.hub(false, now_ms());
                self.core.on_disconnected();
                self.publish_status();
            }
            HubEvent::Reported { seq } if readings::is_reading(seq) => self.reading_acked(seq),
            HubEvent::Reported { seq } => {
                let actions = self.core.report_acked(seq);
                self.act(actions).await;
            }
            HubEvent::Acked { seq } => {
                self.journal.acked(seq);
            }
            HubEvent::Message { generation, pkid, inbound } => {
                let mut batch = vec![Arrival { generation, pkid, inbound }];
                let mut after = None;
                while batch.len() < BATCH {
                    match more.try_recv() {
                        Ok(HubEvent::Message { generation, pkid, inbound }) => {
                            batch.push(Arrival { generation, pkid, inbound })
                        }
                        Ok(other) => {
                            after = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let room = self.space.check_recent();
                let actions = self.core.on_received(batch, room);
                self.act(actions).await;
                self.publish_status();
                if let Some(ev) = after {
                    Box::pin(self.on_hub_event(ev, more)).await;
                }
            }
        }
    }

    /// Carries out the core's actions in order, feeding back what the
    /// journal said (admissions, flushes, outcomes decided here).
    async fn act(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            let more = match a {
                Action::Admit(batch) => {
                    let results = self.admit(batch);
                    self.core.admitted(results)
                }
                Action::Flush => {
                    let ok = match self.journal.flush().await {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot flush the journal (disk full?): holding acks and reports; unjournaled messages stay unacknowledged and are redelivered");
                            false
                        }
                    };
                    self.core.flushed(ok, Instant::now())
                }
                Action::Finish { seq, outcome } => {
                    match self.journal.finish(seq, &outcome, now_ms()) {
                        Ok(e) => self.log_final(&e),
                        Err(err) => tracing::error!(seq, error = %err, "cannot record an outcome"),
                    }
                    Vec::new()
                }
                Action::Resend(seq) => {
                    match self.journal.update(seq, |e| {
                        e.state = State::Queued;
                        e.resent_after_crash = true;
                    }) {
                        Ok(e) => {
                            tracing::warn!(message_id = %e.id, device = e.device.as_deref().unwrap_or(""), "the gateway stopped while this message was on the wire; sending it again (device is idempotent)")
                        }
                        Err(err) => tracing::error!(seq, error = %err, "journal update failed"),
                    }
                    Vec::new()
                }
                Action::HandOver { seq, why } => {
                    self.journal.hand_over(seq);
                    log_handover(&self.journal, seq, why);
                    Vec::new()
                }
                Action::Dispatch(seq) => self.dispatch(seq),
                Action::Ack { generation, pkid, seq } => {
                    // Counted as sent (`journal.acked`) on `HubEvent::Acked`.
                    let _ = self.hub.send(HubCommand::Ack { generation, pkid, seq });
                    Vec::new()
                }
                Action::Reconnect => {
                    tracing::warn!("messages received while the disk is full could not all be held: reconnecting so the hub delivers them again, in order");
                    let _ = self.hub.send(HubCommand::Reconnect);
                    Vec::new()
                }
                Action::Report(seq) => {
                    let e = match self.finals.remove(&seq) {
                        Some(e) => Ok(e),
                        None => self.journal.get(seq),
                    };
                    match e {
                        Ok(e) => {
                            self.send_report(&e, Some(seq));
                            self.answer_final(&e);
                        }
                        Err(err) => tracing::debug!(seq, error = %err, "no entry to report (pruned meanwhile?)"),
                    }
                    Vec::new()
                }
                Action::ReportRefused(e) => {
                    // Traced under its own number: its PUBACK releases the message's.
                    self.send_report(&e, Some(e.seq));
                    Vec::new()
                }
                Action::MarkReported(seq) => {
                    // Not reported by policy: a waiting call is answered now.
                    self.answer_final_seq(seq);
                    if let Err(err) = self.journal.mark_reported(seq) {
                        tracing::debug!(seq, error = %err, "cannot mark a report as done (pruned meanwhile?)");
                    }
                    Vec::new()
                }
            };
            // After what was asked for before (see `core::Action`).
            queue.extend(more);
        }
    }

    /// Offers arrivals to the journal, in order.
    fn admit(&mut self, batch: Vec<Arrival>) -> Vec<(u64, u16, Admission)> {
        let now = now_ms();
        let mut out = Vec::with_capacity(batch.len());
        for Arrival { generation, pkid, mut inbound } in batch {
            let origin = inbound.origin.take();
            let admission = match self.journal.admit(inbound, self.cfg.routing.default_device.as_deref(), now) {
                // A conflict is journaled already final (rejected): it takes
                // the same way as a message refused on arrival.
                Ok(Admitted::New(e) | Admitted::Conflict(e)) => {
                    if let Some(o) = origin {
                        self.call_admitted(o, &e, false);
                    }
                    tracing::info!(message_id = %e.id, device = e.device.as_deref().unwrap_or(""), seq = e.seq, "received");
                    if e.state.is_final() {
                        self.log_final(&e);
                    }
                    Admission::New { seq: e.seq, state: e.state }
                }
                Ok(Admitted::Duplicate(e)) => {
                    tracing::info!(message_id = %e.id, state = %e.state, "redelivered message: not executed again");
                    if let Some(o) = origin {
                        self.call_admitted(o, &e, true);
                    }
                    Admission::Duplicate {
                        seq: e.seq,
                        state: e.state,
                        handed_over: e.handed_over,
                        reported: e.reported,
                    }
                }
                Ok(Admitted::Full { detail, inbound }) => {
                    if let Some(o) = origin {
                        self.not_admitted(o, &detail);
                    }
                    let e = unjournaled(inbound, detail, now);
                    tracing::error!(message_id = %e.id, detail = %e.detail, "journal full: rejecting a new message");
                    self.live.outcome(&e);
                    Admission::Refused(Box::new(e))
                }
                Err(e) => {
                    if let Some(o) = origin {
                        self.not_admitted(o, &format!("cannot journal the command: {e}"));
                    }
                    // Not journaled: not acknowledged; the hub delivers it again.
                    tracing::error!(error = %e, "cannot journal a received message: leaving it unacknowledged");
                    Admission::Failed
                }
            };
            out.push((generation, pkid, admission));
        }
        out
    }

    /// Routes an unfinished entry and queues it for its device (see
    /// `feed.rs`), or rejects it. A device with nothing waiting and room
    /// gets it at once (the entry read once).
    fn dispatch(&mut self, seq: u64) -> Vec<Action> {
        let Some((e, inline)) = self.read_unfinished(seq) else { return Vec::new() };
        let device = match router::route(&self.cfg, e.device.as_deref()) {
            Ok(r) => r.device.to_string(),
            Err(why) => return self.reject(seq, why.to_string()),
        };
        if self.feed.take_now(&device) {
            let (sent, actions) = self.send_entry(e, inline);
            if !sent {
                self.feed.returned(&device);
            }
            return actions;
        }
        self.feed.push(&device, seq);
        self.feed_device(&device)
    }

    /// Hands `device`'s worker the messages it has room for.
    fn feed_device(&mut self, device: &str) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(seq) = self.feed.next(device) {
            let (sent, actions) = self.send_job(seq);
            if !sent {
                self.feed.returned(device);
            }
            out.extend(actions);
        }
        out
    }

    /// Rejects an unfinished message that can never be sent.
    fn reject(&mut self, seq: u64, why: String) -> Vec<Action> {
        let outcome = Outcome::rejected(why);
        match self.journal.finish(seq, &outcome, now_ms()) {
            Ok(e) => {
                self.log_final(&e);
                self.core.finished(vec![Finished { seq, state: e.state, durable: false, reported: e.reported }])
            }
            Err(err) => {
                tracing::error!(seq, error = %err, "cannot record an outcome");
                Vec::new()
            }
        }
    }

    /// Builds the job of an unfinished entry (its body read from the
    /// journal) and hands it to its bus worker, or rejects it. Says
    /// whether the worker got it.
    fn send_job(&mut self, seq: u64) -> (bool, Vec<Action>) {
        match self.read_unfinished(seq) {
            Some((e, inline)) => self.send_entry(e, inline),
            None => (false, Vec::new()),
        }
    }

    /// Entry `seq` and its inline body while it is unfinished (an error
    /// reading it is logged).
    fn read_unfinished(&self, seq: u64) -> Option<(Entry, Option<Vec<u8>>)> {
        match self.journal.get_inline(seq) {
            Ok((e, inline)) if !e.state.is_final() => Some((e, inline)),
            Ok(_) => None,
            Err(err) => {
                tracing::error!(seq, error = %err, "cannot read a queued message back from the journal");
                None
            }
        }
    }

    /// [`Pipeline::send_job`] of an entry read already (`inline`: its
    /// body, if kept inside it).
    fn send_entry(&mut self, e: Entry, inline: Option<Vec<u8>>) -> (bool, Vec<Action>) {
        let seq = e.seq;
        let (e, body) = match self.journal.with_body(e, inline) {
            Ok(eb) => eb,
            Err(err) => {
                tracing::error!(seq, error = %err, "cannot read a queued message back from the journal");
                return (false, Vec::new());
            }
        };
        let (bus, job) = match self.make_job(&e, body) {
            Ok(bj) => bj,
            Err(why) => return (false, self.reject(seq, why)),
        };
        match self.buses.get(&bus) {
            Some(h) => {
                if let Err(mpsc::error::SendError(crate::bus::Work::Write(job))) =
                    h.jobs.send(crate::bus::Work::Write(job))
                {
                    tracing::error!(message_id = %job.id, %bus, "bus worker is gone; the message stays queued in the journal");
                    return (false, Vec::new());
                }
                self.with_workers.insert(seq);
                (true, Vec::new())
            }
            None => (false, self.reject(seq, format!("bus {bus:?} is not running"))),
        }
    }

    /// The job for an entry and the name of the bus it goes to.
    fn make_job(&self, e: &Entry, body: Option<Vec<u8>>) -> Result<(String, Job), String> {
        let route = router::route(&self.cfg, e.device.as_deref()).map_err(|e| e.to_string())?;
        let body = body.ok_or_else(|| "the message body is missing from the journal".to_string())?;
        let request = router::command(&route, &body).map_err(|e| e.to_string())?;
        // $.exp is the hub's wall-clock time; max_age counts the age the
        // journal measured (monotonic: a wall-clock step does not move it).
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
            progress: e.steps.len(),
            acked: e.steps.clone(),
            last_error: None,
            // An unconfirmed attempt before a reload or restart: the next
            // one is a resend (the journal's `sending` mark says so too).
            unconfirmed: e.unconfirmed,
        };
        Ok((route.bus_name.to_string(), job))
    }

    async fn on_done(&mut self, batch: Vec<Done>) {
        let now = now_ms();
        let mut finished = Vec::with_capacity(batch.len());
        let mut refill: Vec<String> = Vec::new();
        for d in batch {
            self.feed.returned(&d.device);
            self.with_workers.remove(&d.seq);
            if !refill.contains(&d.device) {
                refill.push(d.device.clone());
            }
            // Bus workers record and flush their outcomes before handing
            // them on; one that could not record it left the entry
            // unfinished: recorded here, it needs a flush after all.
            let recorded = match d.entry {
                Some(e) if e.state.is_final() => Ok((e, false)),
                _ => self.journal.record(d.seq, &d.outcome, now, d.attempts),
            };
            match recorded {
                Ok((e, wrote)) => {
                    self.log_final(&e);
                    finished.push(Finished {
                        seq: d.seq,
                        state: e.state,
                        durable: !wrote && d.durable,
                        reported: e.reported,
                    });
                    self.finals.insert(d.seq, e);
                }
                Err(err) => tracing::error!(seq = d.seq, error = %err, "cannot record an outcome"),
            }
        }
        let mut actions = self.core.finished(finished);
        for device in refill {
            actions.extend(self.feed_device(&device));
        }
        self.act(actions).await;
        // A report the core holds back reads its entry when it goes.
        self.finals.clear();
        self.publish_status();
    }

    fn send_report(&self, e: &Entry, report: Option<u64>) {
        let topic = self.dialect.report_topic(&e.id, e.device.as_deref(), e.state.as_str());
        let _ = self.hub.send(HubCommand::Publish { topic, payload: report::body(e), report });
    }

    fn publish_status(&self) {
        self.live.reports_pending(self.core.footprint().2);
        let s = self.journal.stats();
        let st = Status {
            hub_connected: self.core.connected(),
            queued: s.unfinished,
            oldest_queued_ms: s.oldest_unfinished_ms,
        };
        self.status.send_if_modified(|old| {
            let changed = *old != st;
            *old = st;
            changed
        });
    }
}

/// A handover at `info` when the message outlived `handover_after` (a slow
/// or dead device: worth an operator's eye); at `debug` when the hub's
/// window was full (flow control under a burst: every message of it).
fn log_handover(journal: &Journal, seq: u64, why: &'static str) {
    let slow = why == core::HANDOVER_SLOW;
    if !(slow && tracing::enabled!(tracing::Level::INFO) || tracing::enabled!(tracing::Level::DEBUG)) {
        return;
    }
    let Ok(e) = journal.get(seq) else { return };
    const WHAT: &str = "acknowledged to the hub before delivery; delivery goes on from the journal";
    if slow {
        tracing::info!(message_id = %e.id, reason = why, "{WHAT}");
    } else {
        tracing::debug!(message_id = %e.id, reason = why, "{WHAT}");
    }
}

impl Pipeline {
    /// Logs a final outcome as it is recorded, and counts it.
    fn log_final(&self, e: &Entry) {
        self.live.outcome(e);
        log_final(e);
    }
}

/// Logs a final outcome as it is recorded.
fn log_final(e: &Entry) {
    let device = e.device.as_deref().unwrap_or("");
    if e.state == State::Delivered {
        tracing::info!(message_id = %e.id, device, attempts = e.attempts, detail = %e.detail, "delivered");
    } else {
        tracing::warn!(message_id = %e.id, device, state = %e.state, attempts = e.attempts, detail = %e.detail, "not delivered");
    }
}

/// The report entry of a message rejected without being journaled.
pub(crate) fn unjournaled(inbound: Inbound, detail: String, now: u64) -> Entry {
    let id_generated = inbound.id.is_none();
    let id = inbound.id.unwrap_or_else(|| format!("unjournaled-{now}-{:08x}", fastrand::u32(..)));
    Entry {
        id_generated,
        device: inbound.device,
        correlation_id: inbound.correlation_id,
        expires_at: inbound.expires_at,
        detail,
        completed_at: Some(now),
        reported: true,
        ..Entry::new(u64::MAX, id, now, State::Rejected)
    }
}
