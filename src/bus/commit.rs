//! A bus worker's group commit. Outcomes the worker recorded in the
//! journal wait here until a flush covers them, then go to the pipeline
//! (which acknowledges and reports only durable outcomes). One flush is
//! under way at a time, in the background, while the worker goes on with
//! the wire: the outcomes recorded meanwhile ride on the next one, and the
//! journal merges the flushes of every bus and of the admissions.
//!
//! A request to a non-idempotent device goes on the wire only once its
//! `sending` mark is durable ([`Commit::flush_all`]). One to an idempotent
//! device need not wait (a crash sends it again, and says so), but no
//! device has more than [`MAX_AHEAD`] messages sent whose outcome is not
//! durable yet (`Journal::sent`), which bounds what a restart after a
//! crash must treat as possibly sent.

use super::Done;
use crate::journal::{Journal, JournalError};
use tokio::sync::{mpsc, oneshot};

/// Messages an idempotent device may have got whose outcomes are not yet
/// durable. After a crash, the first this many unfinished messages of each
/// idempotent device count as possibly sent (their reports say so).
pub const MAX_AHEAD: usize = 16;

struct Inflight {
    /// Whether the flush worked, once it ended.
    result: oneshot::Receiver<bool>,
    /// The outcomes it covers.
    batch: Vec<Done>,
}

pub struct Commit {
    journal: Journal,
    done: mpsc::UnboundedSender<Done>,
    /// Recorded, not yet covered by a flush that was started.
    pending: Vec<Done>,
    inflight: Option<Inflight>,
    /// A `sending` mark was written since the last flush started.
    marked: bool,
}

impl Commit {
    pub fn new(journal: Journal, done: mpsc::UnboundedSender<Done>) -> Commit {
        Commit { journal, done, pending: Vec::new(), inflight: None, marked: false }
    }

    /// An outcome was recorded in the journal (not flushed).
    pub fn record(&mut self, d: Done) {
        self.pending.push(d);
    }

    /// A `sending` mark was written (not flushed).
    pub fn marked(&mut self) {
        self.marked = true;
    }

    pub fn busy(&self) -> bool {
        self.inflight.is_some()
    }

    /// Starts a flush in the background of what was written, unless one is
    /// under way (its end starts the next) or nothing waits for one.
    pub fn kick(&mut self) {
        if self.inflight.is_some() || (self.pending.is_empty() && !self.marked) {
            return;
        }
        self.marked = false;
        let journal = self.journal.clone();
        let (tx, result) = oneshot::channel();
        tokio::spawn(async move {
            let ok = match journal.flush().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "cannot flush outcomes to the journal");
                    false
                }
            };
            let _ = tx.send(ok);
        });
        self.inflight = Some(Inflight { result, batch: std::mem::take(&mut self.pending) });
    }

    /// Hands on what the flush under way covered, if it has ended, and
    /// starts the next one. Never waits.
    pub fn poll(&mut self) {
        let Some(f) = self.inflight.as_mut() else { return };
        let ok = match f.result.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => return,
            Ok(ok) => ok,
            Err(oneshot::error::TryRecvError::Closed) => false,
        };
        let f = self.inflight.take().expect("in flight");
        self.complete(ok, f.batch);
        self.kick();
    }

    /// Waits for the flush under way to end and hands on what it covered.
    /// Cancel-safe: dropped before the end, it changes nothing.
    pub async fn settle(&mut self) {
        let Some(f) = self.inflight.as_mut() else { return };
        let ok = (&mut f.result).await.unwrap_or(false);
        let f = self.inflight.take().expect("in flight");
        self.complete(ok, f.batch);
    }

    /// Makes everything written so far durable and hands every recorded
    /// outcome on: before a request to a non-idempotent device, when too
    /// far ahead, and when the worker stops. After a failed flush the
    /// outcomes go anyway, marked not durable: the pipeline flushes itself
    /// and holds the acks until that works.
    pub async fn flush_all(&mut self) -> Result<(), JournalError> {
        self.settle().await;
        self.marked = false;
        let r = self.journal.flush().await;
        let batch = std::mem::take(&mut self.pending);
        self.complete(r.is_ok(), batch);
        r
    }

    fn complete(&self, durable: bool, batch: Vec<Done>) {
        for mut d in batch {
            d.durable = durable;
            let _ = self.done.send(d);
        }
    }
}
