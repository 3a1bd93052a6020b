//! The pipeline's side of the operator's verbs (`queue retry`, `resolve`,
//! `drop`; the control socket in `operate/control.rs` finds the message
//! and hands the action over): the journal records it with who asked, and
//! the pipeline carries it on like any other change: a retried message is
//! dispatched again, a resolved or dropped one is flushed and reported.
//! Each action is logged with who asked and the note.

use super::core::Finished;
use super::Pipeline;
use crate::bus::{DropJob, Work};
use crate::journal::operator::{ActionError, Asked};
use crate::message::{Entry, State};
use crate::router;
use tokio::sync::oneshot;

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Retry,
    Resolve(State),
    Drop,
}

/// An action on journal entry `seq`, answered with the entry as it is now
/// or why not.
#[derive(Debug)]
pub struct Ask {
    pub act: Act,
    pub seq: u64,
    pub asked: Asked,
    pub reply: oneshot::Sender<Result<Entry, String>>,
}

fn log(e: &Entry, what: &str) {
    let (by, note) = e.operator.as_ref().map(|o| (o.by.as_str(), o.note.as_deref().unwrap_or(""))).unwrap_or_default();
    let device = e.device.as_deref().unwrap_or("");
    tracing::warn!(message_id = %e.id, device, seq = e.seq, by, note, state = %e.state, "operator: {what}");
}

impl Pipeline {
    pub(super) async fn on_ask(&mut self, ask: Ask) {
        let Ask { act, seq, asked, reply } = ask;
        if act != Act::Drop && self.with_workers.contains(&seq) {
            let why = "its device's bus worker still has it (its outcome is on its way): try again in a moment";
            let _ = reply.send(Err(why.into()));
            return;
        }
        if act != Act::Drop && self.core.report_busy(seq) {
            let why = if self.core.connected() {
                "its result report is not yet acknowledged by the hub: try again in a moment"
            } else {
                "its result report waits for the hub, which is not connected: try again once it is"
            };
            let _ = reply.send(Err(why.into()));
            return;
        }
        let r = match act {
            Act::Retry => self.retry(seq, asked).await,
            Act::Resolve(to) => self.resolve(seq, to, asked).await,
            Act::Drop => return self.drop_queued(seq, asked, reply).await,
        };
        self.publish_status();
        let _ = reply.send(r.map_err(|e| e.to_string()));
    }

    /// Back to the queue once the change is durable, then to its device.
    async fn retry(&mut self, seq: u64, asked: Asked) -> Result<Entry, ActionError> {
        let e = self.journal.retry(seq, asked)?;
        log(&e, "retry: sent again");
        self.journal.flush().await?;
        let actions = self.dispatch(seq);
        self.act(actions).await;
        Ok(e)
    }

    /// The new outcome is flushed and reported like any other.
    async fn resolve(&mut self, seq: u64, to: State, asked: Asked) -> Result<Entry, ActionError> {
        let e = self.journal.resolve(seq, to, asked)?;
        log(&e, "resolved");
        self.finish_by_operator(&e).await;
        Ok(e)
    }

    async fn finish_by_operator(&mut self, e: &Entry) {
        self.live.outcome(e);
        let actions =
            self.core.finished(vec![Finished { seq: e.seq, state: e.state, durable: false, reported: e.reported }]);
        self.act(actions).await;
    }

    /// A message waiting in the pipeline's feed is dropped here; one its
    /// bus worker holds, by the worker (between two requests), which hands
    /// its outcome on as usual.
    async fn drop_queued(&mut self, seq: u64, asked: Asked, reply: oneshot::Sender<Result<Entry, String>>) {
        let e = match self.journal.get(seq) {
            Ok(e) => e,
            Err(err) => {
                let _ = reply.send(Err(err.to_string()));
                return;
            }
        };
        let route = router::route(&self.cfg, e.device.as_deref()).ok();
        // Waiting in the pipeline's feed: taken out of it, dropped here.
        let in_feed = route.as_ref().is_some_and(|r| self.feed.remove(r.device, seq));
        let with_worker = match &route {
            Some(r) if !in_feed && e.state == State::Queued => Some((r.device.to_string(), r.bus_name.to_string())),
            _ => None,
        };
        let Some((device, bus)) = with_worker else {
            // From the feed, not routable, or not queued (refused below).
            let r = self.journal.drop_queued(seq, asked);
            match &r {
                Ok(e) => {
                    log(e, "dropped");
                    self.finish_by_operator(e).await;
                    self.publish_status();
                }
                // Taken from the feed for nothing: back in line.
                Err(ActionError::Journal(_)) if e.state == State::Queued => {
                    let actions = self.dispatch(seq);
                    self.act(actions).await;
                }
                Err(_) => {}
            }
            let _ = reply.send(r.map_err(|e| e.to_string()));
            return;
        };
        let (tx, rx) = oneshot::channel();
        let sent =
            self.buses.get(&bus).is_some_and(|h| h.jobs.send(Work::Drop(DropJob { seq, asked, reply: tx })).is_ok());
        if !sent {
            let _ = reply.send(Err(format!("bus {bus:?} is not running: try again in a moment")));
            return;
        }
        tokio::spawn(async move {
            let r = match rx.await {
                Ok(Ok(e)) => {
                    log(&e, "dropped");
                    Ok(e)
                }
                Ok(Err(Some(why))) => Err(why),
                Ok(Err(None)) | Err(_) => Err(format!(
                    "it is not waiting in device {device}'s queue right now (being admitted or just finished): look again"
                )),
            };
            let _ = reply.send(r);
        });
    }
}
