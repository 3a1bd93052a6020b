//! Model-based test of the pipeline's core: random interleavings of
//! arrivals, redeliveries (same and new packet ids), reconnects, device
//! outcomes in any order across devices, flush failures, a full disk,
//! handovers, reloads, clean stops and crashes, with the promises checked
//! after every step and a drain at the end that must finish everything.
//!
//! The journal, the bus workers, the hub and the devices are small models
//! here; the core is the real one. The journal model keeps what was written
//! (`live`) apart from what a flush made durable; a crash keeps only the
//! latter, as a power cut would. Workers follow the bus worker's contract:
//! `sending` (with the steps done so far) made durable before the wire;
//! an idempotent device's request goes out at once, unmarked unless it is
//! a resend, while fewer than [`AHEAD`] of its messages are unsettled
//! (sent, outcome not durable); outcomes recorded and handed on, possibly
//! before their flush.
//!
//! `C2D_MODEL_CASES` sets how many cases run (default 300; `tests/run` runs
//! 10,000); `C2D_MODEL_SEED` replays one case. A failure names its seed.

use super::core::{Action, Admission, Arrival, Core, Finished, Settings, Unfinished};
use crate::config::{Complete, Reports};
use crate::message::{Entry, Inbound, State};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

type Key = (String, String);

/// Messages of an idempotent device that may be unsettled (the product's
/// `bus::MAX_AHEAD`, small here so that cases reach it).
const AHEAD: usize = 2;

/// The devices: (name, idempotent).
const DEVICES: [(&str, bool); 3] = [("boiler", true), ("valve", false), ("pump", false)];

#[derive(Debug, Clone, PartialEq)]
struct MEntry {
    seq: u64,
    key: Option<Key>,
    device: String,
    body: u8,
    steps: usize,
    state: State,
    handed_over: bool,
    reported: bool,
    /// Steps the device confirmed (journaled with requeue and `sending`).
    progress: usize,
    resent: bool,
    /// The last attempt (idempotent device) had no clear answer: the next
    /// one is a marked resend (the journal's `unconf`).
    unconf: bool,
    /// The back end's message that created it (`Inbound::correlation_id`).
    origin: usize,
}

#[derive(Default)]
struct Journal {
    live: BTreeMap<u64, MEntry>,
    durable: BTreeMap<u64, MEntry>,
    next_seq: u64,
    /// Per idempotent device: messages sent whose outcome is not durable.
    unsettled: HashMap<String, std::collections::BTreeSet<u64>>,
}

impl Journal {
    fn by_key(map: &BTreeMap<u64, MEntry>, key: &Key) -> Option<u64> {
        map.values().find(|e| e.key.as_ref() == Some(key)).map(|e| e.seq)
    }

    fn crash(&mut self) {
        self.live = self.durable.clone();
        // The handover mark is kept in memory (written with an entry's
        // next change at best): a crash may lose it.
        for e in self.live.values_mut() {
            e.handed_over = false;
        }
        self.unsettled.clear();
    }

    fn flush(&mut self) {
        self.durable = self.live.clone();
        let live = &self.live;
        for s in self.unsettled.values_mut() {
            s.retain(|seq| live.get(seq).is_some_and(|e| !e.state.is_final()));
        }
    }
}

/// One command the back end sent.
#[derive(Debug, Clone)]
struct Msg {
    id: Option<String>,
    device: String,
    body: u8,
}

#[derive(Default)]
struct Hub {
    /// Every message sent by the back end, by index.
    msgs: Vec<Msg>,
    /// Not yet acknowledged, in the order the hub delivers them.
    pending: VecDeque<usize>,
    generation: u64,
    connected: bool,
    /// PUBLISHes on this connection not yet acknowledged: (pkid, msg).
    outstanding: VecDeque<(u16, usize)>,
    next_pkid: u16,
    acked: Vec<bool>,
    /// Reports published and not yet acknowledged (in the link / at the hub).
    reports_unacked: VecDeque<u64>,
    /// Reports the hub acknowledged.
    reports_acked: std::collections::HashSet<u64>,
}

#[derive(Default)]
struct Worker {
    queue: VecDeque<u64>,
    /// Outcomes recorded, waiting for the worker's next flush.
    pending: Vec<Finished>,
}

struct World {
    rng: fastrand::Rng,
    settings: Settings,
    core: Core,
    journal: Journal,
    hub: Hub,
    workers: HashMap<String, Worker>,
    now: Instant,
    room: bool,
    /// Writes each device took: (key or seq, step) → count.
    device_log: HashMap<(String, u64, usize), u32>,
    /// Per seq since the start: Report actions, and redeliveries (each may
    /// have its stored outcome reported once more).
    reports: HashMap<u64, (u32, u32)>,
    crashes: u32,
    /// Back-end messages refused without a journal entry (reported only).
    refused: std::collections::HashSet<usize>,
    flush_fails: bool,
    /// What happened, kept only when replaying one seed (`C2D_MODEL_SEED`).
    log: Log,
}

/// The event log of a replayed case (formatting every event would slow
/// the thousands of cases down).
struct Log {
    on: bool,
    lines: Vec<String>,
}

macro_rules! log {
    ($w:expr, $line:expr) => {
        if $w.log.on {
            $w.log.lines.push($line);
        }
    };
}

fn idempotent(device: &str) -> bool {
    DEVICES.iter().any(|(d, i)| *d == device && *i)
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = fastrand::Rng::with_seed(seed);
        let settings = Settings {
            complete: if rng.u8(..4) == 0 { Complete::AfterJournal } else { Complete::AfterDevice },
            handover_after: Duration::from_secs(5),
            max_unacked: 1 + rng.usize(..4),
            reports: [Reports::All, Reports::All, Reports::Failures, Reports::None][rng.usize(..4)],
        };
        let mut w = World {
            core: Core::new(settings),
            settings,
            rng,
            journal: Journal::default(),
            hub: Hub::default(),
            workers: HashMap::new(),
            now: Instant::now(),
            room: true,
            device_log: HashMap::new(),
            reports: HashMap::new(),
            crashes: 0,
            refused: Default::default(),
            flush_fails: false,
            log: Log { on: std::env::var("C2D_MODEL_SEED").is_ok(), lines: Vec::new() },
        };
        w.start(false);
        w
    }

    // ------------------------------------------------------------ the shell

    fn act(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            log!(self, format!("  action {a:?}  slots {}", self.core.debug_slots()));
            let more = match a {
                Action::Admit(batch) => {
                    let results = batch.into_iter().map(|a| (a.generation, a.pkid, self.admit(a.inbound))).collect();
                    self.core.admitted(results)
                }
                Action::Flush => {
                    let ok = !(self.flush_fails && self.rng.bool());
                    if ok {
                        self.journal.flush();
                    }
                    self.core.flushed(ok, self.now)
                }
                Action::Finish { seq, outcome } => {
                    let e = self.journal.live.get_mut(&seq).expect("finish: entry exists");
                    assert!(!e.state.is_final(), "finish of a final entry");
                    e.state = outcome.state;
                    vec![]
                }
                Action::Resend(seq) => {
                    let e = self.journal.live.get_mut(&seq).expect("resend: entry exists");
                    e.state = State::Queued;
                    e.resent = true;
                    vec![]
                }
                Action::HandOver { seq, .. } => {
                    // A refused message has no entry (its slot waits for its report).
                    match self.journal.live.get_mut(&seq) {
                        Some(e) => e.handed_over = true,
                        None => assert!(seq > u64::MAX / 2, "handover of entry {seq}, which does not exist"),
                    }
                    vec![]
                }
                Action::Dispatch(seq) => {
                    let e = &self.journal.live[&seq];
                    assert!(!e.state.is_final(), "dispatch of a final entry {seq}");
                    let dev = e.device.clone();
                    let w = self.workers.entry(dev).or_default();
                    assert!(!w.queue.contains(&seq), "entry {seq} dispatched twice");
                    w.queue.push_back(seq);
                    vec![]
                }
                Action::Ack { generation, pkid, .. } => {
                    self.hub_ack(generation, pkid);
                    vec![]
                }
                Action::Report(seq) => {
                    let d = self.journal.durable.get(&seq).expect("report of an entry not durable");
                    assert!(d.state.is_final(), "report of {seq} before its outcome was durable");
                    let (n, redelivered) = self.reports.entry(seq).or_insert((0, 0));
                    *n += 1;
                    assert!(
                        *n <= 1 + *redelivered,
                        "report of {seq} sent {n} times with {redelivered} redeliveries and no crash between"
                    );
                    self.hub.reports_unacked.push_back(seq);
                    vec![]
                }
                Action::Reconnect => {
                    self.disconnect();
                    self.connect();
                    vec![]
                }
                Action::ReportRefused(e) => {
                    self.hub.reports_unacked.push_back(e.seq);
                    vec![]
                }
                Action::MarkReported(seq) => {
                    let state = self.journal.live[&seq].state;
                    assert!(
                        self.hub.reports_acked.contains(&seq) || !crate::report::wanted(self.settings.reports, state),
                        "report of {seq} counted as done without the hub's PUBACK"
                    );
                    if let Some(e) = self.journal.live.get_mut(&seq) {
                        e.reported = true;
                    }
                    vec![]
                }
            };
            queue.extend(more);
            self.check_bounds();
        }
    }

    fn admit(&mut self, inbound: Inbound) -> Admission {
        let device = inbound.device.clone().expect("model messages name their device");
        let origin: usize = inbound.correlation_id.as_deref().and_then(|c| c.parse().ok()).expect("origin");
        let body = inbound.body[0];
        let key = inbound.id.clone().map(|id| (device.clone(), id));
        if let Some(k) = &key {
            if let Some(seq) = Journal::by_key(&self.journal.live, k) {
                let e = &self.journal.live[&seq];
                if e.body != body {
                    // A conflict: journaled, already rejected, and with a
                    // refused copy now and then (the journal full).
                    if self.rng.u8(..8) == 0 {
                        self.refused.insert(origin);
                        return Admission::Refused(Box::new(entry_stub(k)));
                    }
                    self.journal.next_seq += 1;
                    let seq = self.journal.next_seq;
                    let c = MEntry {
                        seq,
                        key: None,
                        device: device.clone(),
                        body,
                        steps: 1,
                        state: State::Rejected,
                        handed_over: false,
                        reported: false,
                        progress: 0,
                        resent: false,
                        unconf: false,
                        origin,
                    };
                    self.journal.live.insert(seq, c);
                    return Admission::New { seq, state: State::Rejected };
                }
                // The stored outcome may be reported once more.
                self.reports.entry(seq).or_insert((0, 0)).1 += 1;
                return Admission::Duplicate { seq, state: e.state, handed_over: e.handed_over, reported: e.reported };
            }
        }
        self.journal.next_seq += 1;
        let seq = self.journal.next_seq;
        let steps = 1 + (body % 2) as usize;
        let e = MEntry {
            seq,
            key,
            device,
            body,
            steps,
            state: State::Queued,
            handed_over: false,
            reported: false,
            progress: 0,
            resent: false,
            unconf: false,
            origin,
        };
        self.journal.live.insert(seq, e);
        Admission::New { seq, state: State::Queued }
    }

    fn hub_ack(&mut self, generation: u64, pkid: u16) {
        if generation != self.hub.generation || !self.hub.connected {
            return; // the link drops acks of an earlier connection
        }
        let (p, m) = self.hub.outstanding.pop_front().expect("an ack with nothing outstanding");
        assert_eq!(p, pkid, "PUBACK out of arrival order; core: {:?}", self.core);
        let msg = &self.hub.msgs[m];
        // Only for a message whose state allows it, durably.
        if let Some(id) = &msg.id {
            let key = (msg.device.clone(), id.clone());
            if let Some(seq) = Journal::by_key(&self.journal.durable, &key) {
                let d = &self.journal.durable[&seq];
                if d.body == msg.body {
                    // Handed over: its admission is durable (it is in
                    // `durable`), the journal has custody.
                    let handed_over = self.journal.live.get(&seq).is_some_and(|e| e.handed_over);
                    let ok = d.state.is_final() || handed_over || self.settings.complete == Complete::AfterJournal;
                    assert!(
                        ok,
                        "PUBACK of {key:?} while it is {:?} durably and not handed over: {d:?}; live: {:?}; core {:?}",
                        d.state, self.journal.live[&seq], self.core
                    );
                }
            } else {
                // A refused conflict is acknowledged without an entry: the key
                // must be journaled for another command, live at least.
                assert!(
                    Journal::by_key(&self.journal.live, &key).is_some(),
                    "PUBACK of {key:?}, which the journal does not hold durably"
                );
            }
        }
        self.hub.acked[m] = true;
    }

    fn start(&mut self, after_crash: bool) {
        self.core = Core::new(self.settings);
        self.workers.clear();
        self.reports.clear();
        let (mut unfinished, unreported) = self.journal_view();
        if after_crash {
            super::core::possibly_sent(&mut unfinished, AHEAD);
        }
        let a = self.core.recover(unfinished, unreported);
        self.act(a);
    }

    fn journal_view(&self) -> (Vec<Unfinished>, Vec<(u64, State)>) {
        let unfinished = self
            .journal
            .live
            .values()
            .filter(|e| !e.state.is_final())
            .map(|e| Unfinished {
                seq: e.seq,
                sending: e.state == State::Sending,
                idempotent: idempotent(&e.device),
                device: e.device.clone(),
            })
            .collect();
        let unreported = self
            .journal
            .live
            .values()
            .filter(|e| e.state.is_final() && !e.reported)
            .map(|e| (e.seq, e.state))
            .collect();
        (unfinished, unreported)
    }

    // ------------------------------------------------------------ the events

    fn step(&mut self) {
        match self.rng.u32(..100) {
            0..=14 => self.backend_sends(),
            15..=34 => self.hub_delivers(),
            35..=54 => self.device_step(),
            55..=59 => self.worker_release(),
            60..=64 => self.report_acked(),
            65..=69 => self.tick(),
            70..=72 => self.disconnect(),
            73..=76 => self.connect(),
            77..=78 => self.crash(),
            79 => self.clean_stop(),
            80..=81 => self.reload(),
            82..=83 => {
                self.room = !self.room;
                log!(self, format!("room {}", self.room));
            }
            84 => {
                self.flush_fails = !self.flush_fails;
                log!(self, format!("flush_fails {}", self.flush_fails));
            }
            _ => self.hub_delivers(),
        }
    }

    fn backend_sends(&mut self) {
        let device = DEVICES[self.rng.usize(..DEVICES.len())].0.to_string();
        // Few ids: the same id comes back for the same device (a retry by
        // the back end, or a conflict) and for other devices.
        let id = if self.rng.u8(..10) == 0 { None } else { Some(format!("m{}", self.rng.u8(..12))) };
        let body = match id.as_ref().and_then(|id| {
            self.hub.msgs.iter().find(|m| m.id.as_ref() == Some(id) && m.device == device).map(|m| m.body)
        }) {
            // Mostly the same command again; sometimes another one.
            Some(b) if self.rng.u8(..4) != 0 => b,
            _ => self.rng.u8(..4),
        };
        let m = Msg { id, device, body };
        log!(self, format!("backend sends {m:?} as #{}", self.hub.msgs.len()));
        self.hub.msgs.push(m);
        self.hub.acked.push(false);
        self.hub.pending.push_back(self.hub.msgs.len() - 1);
    }

    /// The hub delivers its oldest undelivered messages (a window of 6
    /// unacknowledged, like a broker's inflight limit).
    fn hub_delivers(&mut self) {
        if !self.hub.connected {
            return;
        }
        let mut batch = Vec::new();
        for _ in 0..1 + self.rng.usize(..3) {
            if self.hub.outstanding.len() >= 6 {
                break;
            }
            let Some(m) = self.hub.pending.pop_front() else { break };
            self.hub.next_pkid = self.hub.next_pkid % 60_000 + 1;
            let pkid = self.hub.next_pkid;
            self.hub.outstanding.push_back((pkid, m));
            let msg = &self.hub.msgs[m];
            let inbound = Inbound {
                id: msg.id.clone(),
                device: Some(msg.device.clone()),
                body: vec![msg.body],
                correlation_id: Some(m.to_string()),
                ..Inbound::default()
            };
            batch.push(Arrival { generation: self.hub.generation, pkid, inbound });
        }
        if batch.is_empty() {
            return;
        }
        log!(self, format!("hub delivers {:?}", batch.iter().map(|a| a.pkid).collect::<Vec<_>>()));
        let a = self.core.on_received(batch, self.room);
        self.act(a);
    }

    /// One attempt by the worker of a random device, per the bus worker's
    /// contract.
    fn device_step(&mut self) {
        let dev = DEVICES[self.rng.usize(..DEVICES.len())].0.to_string();
        let Some(&seq) = self.workers.get(&dev).and_then(|w| w.queue.front()) else { return };
        let idem = idempotent(&dev);
        // `sending` and the steps done, durable before the wire (the same
        // flush covers the outcomes the worker held); an idempotent device
        // marks only a resend, and flushes only with too many unsettled.
        let e = self.journal.live.get_mut(&seq).expect("queued entry exists");
        if !idem || e.unconf {
            e.state = State::Sending;
            e.resent |= e.unconf;
            e.unconf = false;
        }
        let (key, steps, mut progress) = (e.key.clone(), e.steps, e.progress);
        let unsettled = self.journal.unsettled.entry(dev.clone()).or_default();
        let others = unsettled.len() - usize::from(unsettled.contains(&seq));
        let held = if !idem || others >= AHEAD {
            self.journal.flush();
            std::mem::take(&mut self.workers.get_mut(&dev).unwrap().pending)
        } else {
            Vec::new()
        };
        if idem {
            self.journal.unsettled.entry(dev.clone()).or_default().insert(seq);
        }
        let tag = key.map(|k| format!("{}/{}", k.0, k.1)).unwrap_or_default();
        let mut outcome = None;
        while progress < steps {
            match self.rng.u8(..10) {
                0..=6 => {
                    self.write(&dev, &tag, seq, progress);
                    progress += 1;
                }
                7 => {
                    // Written or not, no clear answer.
                    if self.rng.bool() {
                        self.write(&dev, &tag, seq, progress);
                    }
                    outcome = Some(if idem { None } else { Some(State::Uncertain) });
                    break;
                }
                8 => {
                    outcome = Some(None); // nothing written: retried later
                    break;
                }
                _ => {
                    outcome = Some(Some(State::Rejected));
                    break;
                }
            }
        }
        let state = match outcome {
            None => Some(State::Delivered),
            Some(s) => s,
        };
        let e = self.journal.live.get_mut(&seq).unwrap();
        e.progress = progress;
        log!(
            self,
            format!(
                "device {dev} attempt on {seq}: progress {progress}/{steps}, {state:?} (unsettled {:?})",
                self.journal.unsettled.get(&dev)
            )
        );
        let w = self.workers.get_mut(&dev).unwrap();
        match state {
            Some(s) => {
                e.state = s;
                w.queue.pop_front();
                w.pending.push(Finished { seq, state: s, durable: false, reported: false });
            }
            None => {
                e.state = State::Queued;
                if idem {
                    e.unconf = true;
                }
            }
        }
        if !held.is_empty() {
            let held = self.handing_on(held, true);
            let a = self.core.finished(held);
            self.act(a);
        }
    }

    /// What the task reads back from the journal as it takes outcomes.
    fn handing_on(&self, held: Vec<Finished>, durable: bool) -> Vec<Finished> {
        held.into_iter()
            .map(|f| Finished { durable: f.durable || durable, reported: self.journal.live[&f.seq].reported, ..f })
            .collect()
    }

    fn write(&mut self, dev: &str, tag: &str, seq: u64, step: usize) {
        // Keyed by entry: two entries are two commands even with one tag.
        let n = self.device_log.entry((dev.to_string(), seq, step)).or_insert(0);
        *n += 1;
        let e = &self.journal.live[&seq];
        assert!(
            *n == 1 || (idempotent(dev) && e.resent),
            "step {step} of {tag} (entry {seq}) reached device {dev} {n} times"
        );
    }

    /// A worker hands on its held outcomes: after its flush, or (as after a
    /// failed flush) not durable.
    fn worker_release(&mut self) {
        let dev = DEVICES[self.rng.usize(..DEVICES.len())].0.to_string();
        let Some(w) = self.workers.get_mut(&dev) else { return };
        if w.pending.is_empty() {
            return;
        }
        let held = std::mem::take(&mut w.pending);
        let durable = self.rng.bool();
        if durable {
            self.journal.flush();
        }
        let held = self.handing_on(held, durable);
        log!(self, format!("worker {dev} hands on {held:?}"));
        let a = self.core.finished(held);
        self.act(a);
    }

    fn report_acked(&mut self) {
        if !self.hub.connected {
            return;
        }
        let Some(seq) = self.hub.reports_unacked.pop_front() else { return };
        self.hub.reports_acked.insert(seq);
        log!(self, format!("hub acks report {seq}"));
        let a = self.core.report_acked(seq);
        self.act(a);
    }

    fn tick(&mut self) {
        self.now += Duration::from_millis(self.rng.u64(..4000));
        let a = self.core.tick(self.now, self.room);
        self.act(a);
    }

    fn disconnect(&mut self) {
        if !self.hub.connected {
            return;
        }
        log!(self, "disconnect".into());
        self.hub.connected = false;
        self.core.on_disconnected();
        self.requeue_outstanding();
    }

    /// Unacknowledged messages of a lost connection come again, first.
    fn requeue_outstanding(&mut self) {
        for (_, m) in std::mem::take(&mut self.hub.outstanding).into_iter().rev() {
            self.hub.pending.push_front(m);
        }
    }

    fn connect(&mut self) {
        if self.hub.connected {
            return;
        }
        self.hub.generation += 1;
        self.hub.connected = true;
        log!(self, format!("connect {}", self.hub.generation));
        self.core.on_connected(self.hub.generation);
    }

    fn crash(&mut self) {
        log!(self, "CRASH".into());
        self.crashes += 1;
        self.journal.crash();
        self.hub.connected = false;
        self.requeue_outstanding();
        // Reports not acknowledged are sent again after the start.
        self.hub.reports_unacked.clear();
        self.start(true);
        self.connect();
    }

    /// SIGTERM: the workers hand on what they hold, the journal is
    /// flushed; reports still waiting for their PUBACK are sent again
    /// after the start.
    fn clean_stop(&mut self) {
        log!(self, "STOP".into());
        let held: Vec<Finished> = self.workers.values_mut().flat_map(|w| std::mem::take(&mut w.pending)).collect();
        let held = self.handing_on(held, false);
        if !held.is_empty() {
            let a = self.core.finished(held);
            self.act(a);
        }
        self.journal.flush();
        self.hub.connected = false;
        self.requeue_outstanding();
        self.hub.reports_unacked.clear();
        self.start(false);
        self.connect();
    }

    /// SIGHUP: buses stop (handing on what they hold) and start empty; the
    /// journal's unfinished work is dispatched again by the same core.
    fn reload(&mut self) {
        log!(self, "RELOAD".into());
        let held: Vec<Finished> = self.workers.values_mut().flat_map(|w| std::mem::take(&mut w.pending)).collect();
        let held = self.handing_on(held, false);
        self.workers.clear();
        self.core.buses_stopped();
        if !held.is_empty() {
            let a = self.core.finished(held);
            self.act(a);
        }
        let (unfinished, unreported) = self.journal_view();
        let a = self.core.recover(unfinished, unreported);
        self.act(a);
    }

    // ------------------------------------------------------------ the checks

    fn check_bounds(&self) {
        let (slots, held, _) = self.core.footprint();
        assert!(slots <= 6 + self.settings.max_unacked, "{slots} ack slots: more than the hub's window");
        assert!(held <= self.settings.max_unacked * 2 + super::core::BATCH, "{held} messages held");
    }

    /// No message the hub was told is safe is missing from what a crash keeps.
    fn check_custody(&self) {
        for (m, msg) in self.hub.msgs.iter().enumerate() {
            if !self.hub.acked[m] {
                continue;
            }
            let kept = match &msg.id {
                Some(id) => Journal::by_key(&self.journal.durable, &(msg.device.clone(), id.clone())).is_some(),
                None => self.journal.durable.values().any(|e| e.origin == m),
            };
            assert!(
                kept || self.refused.contains(&m),
                "message #{m} was acknowledged and is not in what a crash keeps"
            );
        }
    }

    /// Heals everything and runs until quiet: every message acknowledged,
    /// every entry final and its report done.
    fn drain(&mut self) {
        log!(self, "DRAIN".into());
        self.room = true;
        self.flush_fails = false;
        self.connect();
        for round in 0..2000 {
            self.hub_delivers();
            for (d, _) in DEVICES {
                let dev = d.to_string();
                // Devices answer from now on.
                if let Some(&seq) = self.workers.get(&dev).and_then(|w| w.queue.front()) {
                    let e = self.journal.live.get_mut(&seq).unwrap();
                    let (steps, progress) = (e.steps, e.progress);
                    e.state = State::Sending;
                    e.resent |= e.unconf;
                    e.unconf = false;
                    self.journal.flush();
                    let tag = String::new();
                    for s in progress..steps {
                        self.write(&dev, &tag, seq, s);
                    }
                    let e = self.journal.live.get_mut(&seq).unwrap();
                    e.progress = steps;
                    e.state = State::Delivered;
                    let w = self.workers.get_mut(&dev).unwrap();
                    w.queue.pop_front();
                    w.pending.push(Finished { seq, state: State::Delivered, durable: false, reported: false });
                }
                if let Some(w) = self.workers.get_mut(&dev) {
                    let held = std::mem::take(&mut w.pending);
                    let held = self.handing_on(held, false);
                    if !held.is_empty() {
                        let a = self.core.finished(held);
                        self.act(a);
                    }
                }
            }
            while !self.hub.reports_unacked.is_empty() {
                self.report_acked();
            }
            self.tick();
            let quiet = self.hub.pending.is_empty()
                && self.hub.outstanding.is_empty()
                && self.workers.values().all(|w| w.queue.is_empty() && w.pending.is_empty())
                && self.hub.reports_unacked.is_empty();
            if quiet && round > 3 {
                break;
            }
        }
        assert!(self.hub.acked.iter().all(|a| *a), "messages never acknowledged: {:?}", {
            self.hub.acked.iter().enumerate().filter(|(_, a)| !**a).map(|(i, _)| i).collect::<Vec<_>>()
        });
        for e in self.journal.live.values() {
            assert!(e.state.is_final(), "entry {} never finished: {:?}", e.seq, e.state);
            assert!(e.reported, "entry {} ({:?}) never reported", e.seq, e.state);
        }
    }
}

fn entry_stub(key: &Key) -> Entry {
    Entry {
        device: Some(key.0.clone()),
        detail: "conflict".into(),
        reported: true,
        ..Entry::new(u64::MAX, key.1.clone(), 0, State::Rejected)
    }
}

fn run_case(seed: u64, steps: usize) -> Result<(), String> {
    let r = std::panic::catch_unwind(|| {
        let mut w = World::new(seed);
        w.connect();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for _ in 0..steps {
                w.step();
                w.check_custody();
            }
            w.drain();
        }));
        if let Err(p) = result {
            let tail = &w.log.lines;
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("{}\n--- last events ---\n{}", msg.unwrap_or_default(), tail.join("\n"));
        }
    });
    r.map_err(|p| p.downcast_ref::<String>().cloned().unwrap_or_else(|| "panic".into()))
}

#[test]
fn pipeline_core_keeps_its_promises_under_random_interleavings_and_crashes() {
    let cases: u64 = std::env::var("C2D_MODEL_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let fixed: Option<u64> = std::env::var("C2D_MODEL_SEED").ok().and_then(|s| s.parse().ok());
    let base = fixed.unwrap_or_else(|| fastrand::u64(..));
    let cases = if fixed.is_some() { 1 } else { cases };
    println!("model: {cases} cases from seed {base} (replay one with C2D_MODEL_SEED=<seed>)");
    let prev = std::panic::take_hook();
    if fixed.is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
    let mut failure = None;
    for i in 0..cases {
        let seed = base.wrapping_add(i);
        if let Err(e) = run_case(seed, 250) {
            failure = Some((seed, e));
            break;
        }
    }
    std::panic::set_hook(prev);
    if let Some((seed, e)) = failure {
        panic!("model case failed; replay with C2D_MODEL_SEED={seed}\n{e}");
    }
    println!("model: {cases} cases passed");
}
