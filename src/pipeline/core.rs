//! The pipeline's decisions, with no I/O, no clock and no channels: events
//! in (messages admitted by the journal, a flush done, outcomes recorded,
//! the hub connected or lost, a report acknowledged, time passing), actions
//! out (admit, flush, dispatch, acknowledge, report, hand over). The task in
//! `pipeline/mod.rs` carries the actions out and feeds back what happened;
//! `pipeline/model.rs` drives this core through random interleavings with
//! crashes and checks the promises after every step.
//!
//! The promises this file keeps:
//! - a PUBACK goes out in arrival order, and only once its message is final,
//!   handed over (the journal keeps custody) or, with `complete =
//!   "after-journal"`, stored, and that state is durable: every action that
//!   tells the hub something waits for the flush that made it true;
//! - a message the journal could not make durable is never acknowledged;
//! - a report goes out once per outcome in a process: one still waiting for
//!   its PUBACK is not sent again by a reload, a redelivery or a reconnect
//!   (the link resends it on the new connection itself);
//! - what it holds is bounded: messages held while the disk is full, slots
//!   waiting for their PUBACK.

use crate::completion::AckQueue;
use crate::config::{Complete, Reports};
use crate::message::{Entry, Inbound, Outcome, State};
use crate::report;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// Most messages taken into one journal batch (one flush).
pub const BATCH: usize = 256;

/// The flush number of what waits for a flush after one failed: the next
/// tick asks for a flush again.
const RETRY: u64 = u64::MAX;

/// The parts of the configuration the decisions depend on.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub complete: Complete,
    pub handover_after: Duration,
    pub max_unacked: usize,
    pub reports: Reports,
}

impl Settings {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Settings {
            complete: cfg.hub.complete,
            handover_after: *cfg.hub.handover_after,
            max_unacked: cfg.hub.max_unacked,
            reports: cfg.hub.reports,
        }
    }

    /// Most messages held unjournaled while the disk is full: the hub has
    /// them too and delivers them again, so more would only use memory.
    fn max_held(&self) -> usize {
        self.max_unacked.max(1) * 2 + BATCH
    }
}

/// One PUBLISH from the hub. `pkid` 0: QoS 0, nothing to acknowledge.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    pub generation: u64,
    pub pkid: u16,
    pub inbound: Inbound,
}

/// What the journal made of one arrival.
#[derive(Debug, Clone)]
pub enum Admission {
    /// Stored for the first time, not yet durable. `state` is `queued`, or
    /// final when the message was refused on arrival (malformed, oversize).
    New { seq: u64, state: State },
    /// Its key is journaled already: never run again.
    Duplicate { seq: u64, state: State, handed_over: bool, reported: bool },
    /// Rejected without being journaled (journal full, an id reused for
    /// another command): reported under its own id, acknowledged in turn.
    Refused(Box<Entry>),
    /// The journal could not store it: not acknowledged, the hub redelivers.
    Failed,
}

/// An outcome recorded in the journal (by a bus worker, or by the task when
/// a message could not be dispatched). `durable`: a flush covered it already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    pub seq: u64,
    pub state: State,
    pub durable: bool,
    /// Its report is done already (a redelivery of it was answered first).
    pub reported: bool,
}

/// An unfinished journal entry, at start or after a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    pub seq: u64,
    /// It was (or, after a crash, may have been) on the wire when the
    /// gateway stopped.
    pub sending: bool,
    /// Its device takes a command twice without harm (config).
    pub idempotent: bool,
    pub device: String,
}

/// After a crash: the first `ahead` unfinished messages (in arrival order)
/// of each idempotent device not already marked `sending` count as
/// possibly on the wire too. Requests to such a device go out without
/// waiting for the journal, but never with more than `ahead` of its
/// messages unsettled (sent, outcome not durable; see `bus/commit.rs`),
/// and a device takes its messages in arrival order: the unsettled ones
/// are its first unfinished ones.
pub fn possibly_sent(unfinished: &mut [Unfinished], ahead: usize) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for u in unfinished.iter_mut().filter(|u| u.idempotent && !u.sending) {
        let n = seen.entry(u.device.as_str()).or_default();
        *n += 1;
        u.sending |= *n <= ahead;
    }
}

/// What the task is asked to do, in this order. The task carries out every
/// answer's actions after those it already had (first in, first out): so
/// flushes run in the order they were asked for, each after the writes
/// asked for before it, and acks go in the order they were released.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Offer these to the journal; answer with [`Core::admitted`].
    Admit(Vec<Arrival>),
    /// Record this final outcome; it is released after the next flush.
    Finish { seq: u64, outcome: Outcome },
    /// Back to `queued`, flagged: sent again after a crash mid-send.
    Resend(u64),
    /// Mark handed over: acknowledged before delivery, the journal keeps
    /// custody (the mark is kept in memory; see [`Core::hand_over`]).
    HandOver { seq: u64, why: &'static str },
    /// Make every write so far durable; answer with [`Core::flushed`].
    Flush,
    /// Give the entry to its bus.
    Dispatch(u64),
    /// PUBACK this packet of this connection (it carried entry `seq`: the
    /// journal notes that the hub will not deliver it again).
    Ack { generation: u64, pkid: u16, seq: u64 },
    /// End the hub connection and make a new one (messages were dropped
    /// unacknowledged: the hub delivers them again on the new one).
    Reconnect,
    /// Publish the result report of this entry.
    Report(u64),
    /// Publish this report of a message that was never journaled.
    ReportRefused(Box<Entry>),
    /// The report is done (acknowledged by the hub, or not wanted).
    MarkReported(u64),
}

/// Why a message is handed over: it outlived `handover_after`.
pub const HANDOVER_SLOW: &str = "not finished within handover_after";

/// What waits for a flush.
#[derive(Debug)]
enum Gated {
    Admission { generation: u64, pkid: u16, admission: Admission },
    Final { seq: u64, state: State, reported: bool },
}

#[derive(Debug)]
pub struct Core {
    settings: Settings,
    acks: AckQueue,
    generation: u64,
    connected: bool,
    held: Vec<Arrival>,
    /// Waiting for a flush: each with the number of the flush that covers it.
    gated: Vec<(u64, Gated)>,
    /// Flushes asked for, and answered (they run one at a time, in order).
    flushes_asked: u64,
    flushes_done: u64,
    /// Reports handed to the link and not yet acknowledged by the hub.
    reports_out: HashSet<u64>,
    /// Reports of messages refused without being journaled, by the number
    /// they go under (counting down from `u64::MAX`, far from the journal's
    /// sequence numbers), and the last number given.
    refused_out: HashSet<u64>,
    refused_seq: u64,
    /// The bus workers run. While they are stopped (a reload) nothing is
    /// dispatched: [`Core::recover`] dispatches everything unfinished once
    /// they run again, and a message dispatched twice would run twice.
    buses_running: bool,
    /// The connection whose messages are being dropped (see `on_received`).
    dropping: Option<u64>,
}

impl Core {
    pub fn new(settings: Settings) -> Self {
        Core {
            settings,
            acks: AckQueue::default(),
            generation: 0,
            connected: false,
            held: Vec::new(),
            gated: Vec::new(),
            flushes_asked: 0,
            flushes_done: 0,
            reports_out: HashSet::new(),
            refused_out: HashSet::new(),
            refused_seq: u64::MAX,
            buses_running: false,
            dropping: None,
        }
    }

    /// A reload changed the configuration; what is in flight stays.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    pub fn connected(&self) -> bool {
        self.connected
    }

    /// Slots waiting for their PUBACK, messages held, reports waiting for
    /// theirs: for checks of bounds.
    pub fn footprint(&self) -> (usize, usize, usize) {
        (self.acks.len(), self.held.len(), self.reports_out.len() + self.refused_out.len())
    }

    /// Whether the report of `seq` is out and not yet acknowledged, or
    /// waits for a flush: an operator's change of its outcome waits for it
    /// (else the hub's late acknowledgement would mark the new outcome
    /// reported).
    pub fn report_busy(&self, seq: u64) -> bool {
        self.reports_out.contains(&seq)
            || self.gated.iter().any(|(_, g)| matches!(g, Gated::Final { seq: s, .. } if *s == seq))
    }

    #[cfg(test)]
    pub fn debug_slots(&self) -> String {
        format!("{:?} gated {:?}", self.acks, self.gated)
    }

    /// The bus workers stopped (a reload): their queues are gone.
    pub fn buses_stopped(&mut self) {
        self.buses_running = false;
    }

    /// The hub link is connected (CONNACK) as connection `generation`.
    pub fn on_connected(&mut self, generation: u64) {
        self.generation = generation;
        self.connected = true;
        // Packet ids of older connections may now name other messages: the
        // hub redelivers those messages, and the journal recognises them.
        self.acks.reconnected(generation);
        self.dropping = None;
        self.held.retain(|a| a.pkid == 0 || a.generation == generation);
    }

    pub fn on_disconnected(&mut self) {
        self.connected = false;
    }

    /// PUBLISHes arrived. `room`: the state directory's disk has room.
    pub fn on_received(&mut self, batch: Vec<Arrival>, room: bool) -> Vec<Action> {
        let mut out = Vec::new();
        let max = self.settings.max_held();
        for a in batch {
            if a.pkid != 0 && self.dropping == Some(a.generation) {
                continue;
            }
            if self.held.len() >= max {
                // Neither journaled nor acknowledged: nothing newer on this
                // connection may be acknowledged before it (PUBACKs go in
                // arrival order), so the rest of the connection is dropped
                // too and a new one asked for: the hub delivers them all
                // again, in order.
                if a.pkid != 0 {
                    self.dropping = Some(a.generation);
                    out.push(Action::Reconnect);
                }
                continue;
            }
            self.held.push(a);
        }
        if self.held.is_empty() || !room {
            return out;
        }
        let generation = self.generation;
        let take: Vec<Arrival> =
            std::mem::take(&mut self.held).into_iter().filter(|a| a.pkid == 0 || a.generation == generation).collect();
        if !take.is_empty() {
            out.push(Action::Admit(take));
        }
        out
    }

    /// What the journal made of the arrivals of an [`Action::Admit`], in order.
    pub fn admitted(&mut self, results: Vec<(u64, u16, Admission)>) -> Vec<Action> {
        let mut out = Vec::new();
        let after_journal = self.settings.complete == Complete::AfterJournal;
        let ticket = self.flushes_asked + 1;
        for (generation, pkid, admission) in results {
            match &admission {
                Admission::Failed => continue,
                Admission::New { seq, state } if after_journal && !state.is_final() => {
                    out.push(Action::HandOver { seq: *seq, why: "complete = after-journal" });
                }
                _ => {}
            }
            self.gated.push((ticket, Gated::Admission { generation, pkid, admission }));
        }
        out.extend(self.ask_flush());
        out
    }

    /// A flush asked for by [`Action::Flush`] ended.
    pub fn flushed(&mut self, ok: bool, now: Instant) -> Vec<Action> {
        self.flushes_done += 1;
        let done = self.flushes_done;
        if !ok {
            // Nothing is released: the writes are still there and the next
            // flush that works covers them (asked for on the next tick).
            for (t, _) in self.gated.iter_mut().filter(|(t, _)| *t <= done) {
                *t = RETRY;
            }
            return Vec::new();
        }
        // In the order they were gated: admissions in arrival order.
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.gated).into_iter().partition(|(t, _)| *t <= done || *t == RETRY);
        self.gated = waiting;
        let mut out = Vec::new();
        for (_, g) in ready {
            match g {
                Gated::Admission { generation, pkid, admission } => {
                    self.admission_durable(generation, pkid, admission, now, &mut out)
                }
                Gated::Final { seq, state, reported } => {
                    self.acks.mark_ready(seq);
                    if !reported {
                        self.report(seq, state, &mut out);
                    }
                }
            }
        }
        out.extend(self.pop_acks());
        out.extend(self.release_window());
        out
    }

    /// Outcomes recorded in the journal. Those not yet durable are released
    /// after a flush: the hub must not hear of an outcome a crash can undo.
    pub fn finished(&mut self, batch: Vec<Finished>) -> Vec<Action> {
        let mut out = Vec::new();
        if batch.iter().all(|f| f.durable) && !self.gated.iter().any(|(t, _)| *t == RETRY) {
            for f in batch {
                self.acks.mark_ready(f.seq);
                if !f.reported {
                    self.report(f.seq, f.state, &mut out);
                }
            }
            out.extend(self.pop_acks());
            return out;
        }
        let ticket = self.flushes_asked + 1;
        for f in batch {
            self.gated.push((ticket, Gated::Final { seq: f.seq, state: f.state, reported: f.reported }));
        }
        out.extend(self.ask_flush());
        out
    }

    /// The hub acknowledged the report of `seq`.
    pub fn report_acked(&mut self, seq: u64) -> Vec<Action> {
        if self.refused_out.remove(&seq) {
            self.acks.mark_ready(seq);
            return self.pop_acks();
        }
        self.reports_out.remove(&seq);
        // An outcome still waiting for a flush needs no report any more.
        for (_, g) in &mut self.gated {
            if let Gated::Final { seq: s, reported, .. } = g {
                *reported |= *s == seq;
            }
        }
        vec![Action::MarkReported(seq)]
    }

    /// What the journal holds at start (or after a reload, with the buses
    /// restarted empty): unfinished entries in arrival order, and final ones
    /// whose report the hub has not acknowledged.
    pub fn recover(&mut self, unfinished: Vec<Unfinished>, unreported: Vec<(u64, State)>) -> Vec<Action> {
        self.buses_running = true;
        let mut out = Vec::new();
        let ticket = self.flushes_asked + 1;
        // Admissions still waiting for their flush are dispatched by it.
        let admitting: HashSet<u64> = self
            .gated
            .iter()
            .filter_map(|(_, g)| match g {
                Gated::Admission { admission: Admission::New { seq, .. }, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        for u in unfinished.into_iter().filter(|u| !admitting.contains(&u.seq)) {
            if !u.sending {
                out.push(Action::Dispatch(u.seq));
            } else if u.idempotent {
                out.push(Action::Resend(u.seq));
                out.push(Action::Dispatch(u.seq));
            } else {
                let outcome = Outcome::uncertain(format!(
                    "the gateway stopped while this command was on the wire; not sent again because device {} is not idempotent",
                    u.device
                ));
                out.push(Action::Finish { seq: u.seq, outcome });
                self.gated.push((ticket, Gated::Final { seq: u.seq, state: State::Uncertain, reported: false }));
            }
        }
        // Their outcomes may not be durable yet (a reload after a failed
        // flush): reported after the flush.
        // A report already on its way is not sent again.
        for (seq, state) in unreported.into_iter().filter(|(seq, _)| !self.reports_out.contains(seq)) {
            self.gated.push((ticket, Gated::Final { seq, state, reported: false }));
        }
        out.extend(self.ask_flush());
        out
    }

    /// Time passed: hands over overdue messages, takes held ones when the
    /// disk has room again, retries what waits for a failed flush.
    pub fn tick(&mut self, now: Instant, room: bool) -> Vec<Action> {
        let mut out = Vec::new();
        // Handovers first: a held redelivery of a message handed over now
        // must find it handed over when it is admitted.
        let overdue = self.acks.overdue(now, self.settings.handover_after);
        out.extend(self.hand_over(overdue, HANDOVER_SLOW));
        if self.gated.iter().any(|(t, _)| *t == RETRY) {
            let ticket = self.flushes_asked + 1;
            for (t, _) in self.gated.iter_mut().filter(|(t, _)| *t == RETRY) {
                *t = ticket;
            }
            out.extend(self.ask_flush());
        }
        if !self.held.is_empty() {
            out.extend(self.on_received(Vec::new(), room));
        }
        out
    }

    /// When [`Core::tick`] has something to do next (besides housekeeping).
    pub fn next_wake(&self) -> Option<Instant> {
        self.acks.next_overdue(self.settings.handover_after)
    }

    fn admission_durable(
        &mut self,
        generation: u64,
        pkid: u16,
        admission: Admission,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let after_journal = self.settings.complete == Complete::AfterJournal;
        match admission {
            Admission::New { seq, state } if state.is_final() => {
                self.slot(generation, pkid, seq, true, now);
                self.report(seq, state, out);
            }
            Admission::New { seq, .. } => {
                self.slot(generation, pkid, seq, after_journal, now);
                if self.buses_running {
                    out.push(Action::Dispatch(seq));
                }
            }
            Admission::Duplicate { seq, state, handed_over, reported } => {
                self.slot(generation, pkid, seq, state.is_final() || handed_over, now);
                // Its stored outcome, once more: the back end may have missed it.
                if state.is_final() && (!reported || report::wanted(self.settings.reports, state)) {
                    self.report(seq, state, out);
                }
            }
            Admission::Refused(mut entry) => {
                // Not journaled: the report is all the back end will hear of
                // it, so the PUBACK waits for the hub to have the report (a
                // crash before that: the hub delivers the message again).
                let wanted = report::wanted(self.settings.reports, entry.state);
                self.refused_seq -= 1;
                let seq = self.refused_seq;
                self.slot(generation, pkid, seq, !wanted, now);
                if wanted {
                    entry.seq = seq;
                    self.refused_out.insert(seq);
                    out.push(Action::ReportRefused(entry));
                }
            }
            Admission::Failed => {}
        }
    }

    /// A PUBACK to send in its turn; none for QoS 0, nor for a packet of an
    /// earlier connection (its admission waited for a flush across a
    /// reconnect: the hub delivers it again).
    fn slot(&mut self, generation: u64, pkid: u16, seq: u64, ready: bool, now: Instant) {
        if pkid != 0 && generation == self.generation {
            self.acks.push(generation, pkid, seq, ready, now);
        }
    }

    /// Keeps at most `max_unacked` messages un-acknowledged: PUBACKs go in
    /// arrival order, and a broker sends only so many un-acked messages
    /// (Mosquitto: 20), so a slow or dead device at the head would stall
    /// every other device. The oldest unfinished ones are handed over.
    fn release_window(&mut self) -> Vec<Action> {
        let seqs = self.acks.over_limit(self.settings.max_unacked);
        self.hand_over(seqs, "too many messages are waiting for their devices")
    }

    /// Acknowledges these unfinished messages before delivery. Their
    /// admission is durable (a slot exists only after that): the journal
    /// has custody, so no flush comes first. The mark is not durable: a
    /// redelivery after a crash waits for the outcome.
    fn hand_over(&mut self, seqs: Vec<u64>, why: &'static str) -> Vec<Action> {
        let mut out = Vec::with_capacity(seqs.len() + 1);
        for seq in seqs {
            out.push(Action::HandOver { seq, why });
            self.acks.mark_ready(seq);
        }
        out.extend(self.pop_acks());
        out
    }

    /// A flush for what was gated since the last one asked for.
    fn ask_flush(&mut self) -> Option<Action> {
        let ticket = self.flushes_asked + 1;
        if self.gated.iter().any(|(t, _)| *t == ticket) {
            self.flushes_asked = ticket;
            Some(Action::Flush)
        } else {
            None
        }
    }

    /// Publishes the report if the policy wants it (once while it waits for
    /// its PUBACK); an outcome the policy does not report is done at once.
    fn report(&mut self, seq: u64, state: State, out: &mut Vec<Action>) {
        if report::wanted(self.settings.reports, state) {
            if self.reports_out.insert(seq) {
                out.push(Action::Report(seq));
            }
        } else {
            out.push(Action::MarkReported(seq));
        }
    }

    fn pop_acks(&mut self) -> Vec<Action> {
        self.acks
            .pop_ready_slots()
            .into_iter()
            .map(|(generation, pkid, seq)| Action::Ack { generation, pkid, seq })
            .collect()
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
