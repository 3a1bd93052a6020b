//! The pipeline's side of direct methods (`methods.rs` checks the calls):
//! a `write` goes through the journal and the core like a C2D message of
//! QoS 0 (nothing to PUBACK) and is answered once its outcome is durable;
//! a `read` goes to the device's bus worker; `status` is answered at once.

use super::core::Arrival;
use super::methods::{self, Call};
use super::Pipeline;
use crate::bus::{Poll, Reply, Work};
use crate::hub::HubCommand;
use crate::message::{Entry, Inbound, Origin};
use serde_json::{json, Value};
use tokio::time::Instant;

/// A `write` call waiting for its message's outcome.
#[derive(Debug)]
pub struct Wait {
    pub rid: String,
    pub until: Instant,
}

impl Pipeline {
    /// A direct method call from the hub.
    pub(super) async fn on_method(&mut self, name: String, rid: String, payload: Vec<u8>) {
        tracing::info!(method = %name, %rid, "direct method call");
        let call = match methods::parse(&self.cfg, &name, &payload) {
            Ok(c) => c,
            Err(r) => {
                tracing::info!(method = %name, status = r.status, reason = %r.reason, "direct method call refused");
                return self.answer(rid, r.status, json!({"error": r.reason}));
            }
        };
        match call {
            Call::Status => {
                let v = self.status_document();
                self.answer(rid, 200, v);
            }
            Call::Read { device, unit, bus, reads } => self.read(rid, device, unit, bus, reads),
            Call::Write { device, id, body } => {
                let inbound =
                    Inbound { id, device: Some(device), body, origin: Some(Origin::Method(rid)), ..Inbound::default() };
                let arrival = Arrival { generation: self.generation, pkid: 0, inbound };
                let room = self.space.check_recent();
                let actions = self.core.on_received(vec![arrival], room);
                self.act(actions).await;
                self.answer_duplicates().await;
                self.publish_status();
            }
        }
    }

    /// Sends the answer to call `rid`.
    pub(super) fn answer(&self, rid: String, status: u16, payload: Value) {
        let payload = serde_json::to_vec(&payload).expect("a JSON value serialises");
        let _ = self.hub.send(HubCommand::Answer { rid, status, payload });
    }

    /// A command something waits for was admitted: a `write` call waits
    /// for the outcome, or (a repeated id) gets the stored one or its
    /// progress; a twin setpoint waits for its outcome, or records it.
    pub(super) fn call_admitted(&mut self, origin: Origin, e: &Entry, duplicate: bool) {
        let rid = match origin {
            Origin::Method(rid) => rid,
            Origin::Twin { point, value, version } => return self.setpoint_admitted(e, point, value, version),
        };
        if duplicate && e.state.is_final() {
            // Answered after a flush (see `answer_duplicates`): the stored
            // outcome may have been written a moment ago.
            self.dup_answers.push((rid, e.clone()));
        } else if duplicate {
            let (s, v) = methods::pending_answer(e, 202, "a command with this id is in progress");
            self.answer(rid, s, v);
        } else {
            let until = Instant::now() + *self.cfg.methods.timeout;
            self.waits.entry(e.seq).or_default().push(Wait { rid, until });
        }
    }

    /// A command something waits for could not be journaled.
    pub(super) fn not_admitted(&mut self, origin: Origin, why: &str) {
        match origin {
            Origin::Method(rid) => self.answer(rid, 503, json!({"error": why})),
            // Not recorded as applied: the next reconcile tries again.
            Origin::Twin { point, .. } => tracing::error!(%point, reason = why, "cannot journal a twin setpoint"),
        }
    }

    /// Answers repeated ids with their stored outcomes, once durable.
    async fn answer_duplicates(&mut self) {
        if self.dup_answers.is_empty() {
            return;
        }
        if let Err(err) = self.journal.flush().await {
            tracing::error!(error = %err, "cannot flush the journal before answering a repeated method call");
            for (rid, _) in std::mem::take(&mut self.dup_answers) {
                self.answer(rid, 503, json!({"error": "the journal cannot be written; call again later"}));
            }
            return;
        }
        for (rid, e) in std::mem::take(&mut self.dup_answers) {
            let (s, v) = methods::final_answer(&e, true);
            self.answer(rid, s, v);
        }
    }

    /// The outcome of entry `e` is durable: answers the calls waiting for
    /// it, records and reports a twin setpoint.
    pub(super) fn answer_final(&mut self, e: &Entry) {
        self.setpoint_final(e);
        for w in self.waits.remove(&e.seq).unwrap_or_default() {
            let (s, v) = methods::final_answer(e, false);
            self.answer(w.rid, s, v);
        }
    }

    /// [`Pipeline::answer_final`] for entry `seq`, if a call waits for it.
    pub(super) fn answer_final_seq(&mut self, seq: u64) {
        if self.waits.contains_key(&seq) || self.setpoints.contains_key(&seq) {
            if let Ok(e) = self.journal.get(seq) {
                self.answer_final(&e);
            }
        }
    }

    /// Answers 504 to the calls whose `methods.timeout` ran out (their
    /// commands stay queued; the result report follows as D2C).
    pub(super) fn expire_waits(&mut self, now: Instant) {
        let due: Vec<u64> =
            self.waits.iter().filter(|(_, ws)| ws.iter().any(|w| w.until <= now)).map(|(s, _)| *s).collect();
        for seq in due {
            let ws = self.waits.remove(&seq).unwrap_or_default();
            let (late, keep): (Vec<_>, Vec<_>) = ws.into_iter().partition(|w| w.until <= now);
            if !keep.is_empty() {
                self.waits.insert(seq, keep);
            }
            let detail = format!(
                "not final within methods.timeout ({}): the command stays queued; its result report follows as D2C",
                humantime::format_duration(*self.cfg.methods.timeout)
            );
            let e = self.journal.get(seq);
            for w in late {
                let (s, v) = match &e {
                    Ok(e) => methods::pending_answer(e, 504, &detail),
                    Err(_) => (504, json!({"detail": detail})),
                };
                self.answer(w.rid, s, v);
            }
        }
    }

    /// A `read` call: the device's bus worker reads when no write is ready.
    fn read(
        &mut self,
        rid: String,
        device: String,
        unit: u8,
        bus: String,
        reads: Vec<(String, crate::config::PointConfig)>,
    ) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let poll = Poll { device: device.clone(), unit, reads, reply: Reply::Caller(tx) };
        let sent = self.buses.get(&bus).is_some_and(|h| h.jobs.send(Work::Poll(poll)).is_ok());
        if !sent {
            return self.answer(rid, 503, json!({"error": format!("bus {bus:?} is not running")}));
        }
        let hub = self.hub.clone();
        let timeout = *self.cfg.methods.timeout;
        tokio::spawn(async move {
            let (status, v) = match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(Ok(r))) => {
                    let values: serde_json::Map<String, Value> = r.values.into_iter().collect();
                    (200, json!({"device": r.device, "values": values, "read_at": crate::message::rfc3339_ms(r.at_ms)}))
                }
                Ok(Ok(Err(why))) => (502, json!({"device": device, "error": why})),
                Ok(Err(_)) => (503, json!({"device": device, "error": "the bus stopped before the read"})),
                Err(_) => (504, json!({"device": device, "error": "the device was not read within methods.timeout"})),
            };
            let payload = serde_json::to_vec(&v).expect("a JSON value serialises");
            let _ = hub.send(HubCommand::Answer { rid, status, payload });
        });
    }

    /// The `status` method's answer: the status document (`status.rs`).
    pub(super) fn status_document(&self) -> Value {
        crate::status::document(self.cfg.hub.kind, &self.journal, &self.live, self.started_ms)
    }
}
