//! A bus worker's group commit. Outcomes the worker recorded in the
//! journal wait here until a flush covers them, then go to the pipeline
//! (which acknowledges and reports only durable outcomes). Any flush
//! covers them: the worker's own, which runs in the background while it
//! goes on with the wire, another bus's, or the pipeline's for arrivals
//! (the journal numbers its writes; an outcome is durable once a flush
//! covered its write). The worker's own flush waits [`LINGER`] first, so
//! that a busy bus pays one flush for several outcomes: an outcome only
//! holds its PUBACK and its report, never a request to a device.
//!
//! A request to a non-idempotent device goes on the wire only once its
//! `sending` mark is durable ([`Commit::flush_all`]). One to an idempotent
//! device need not wait (a crash sends it again, and says so), but no
//! device has more than [`MAX_AHEAD`] messages sent whose outcome is not
//! durable yet (`Journal::sent`), which bounds what a restart after a
//! crash must treat as possibly sent.

use super::Done;
use crate::journal::{Journal, JournalError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Messages an idempotent device may have got whose outcomes are not yet
/// durable. After a crash, the first this many unfinished messages of each
/// idempotent device count as possibly sent (their reports say so).
pub const MAX_AHEAD: usize = 16;

/// How long the worker's background flush waits for more outcomes.
pub const LINGER: Duration = Duration::from_millis(1);

pub struct Commit {
    journal: Journal,
    done: mpsc::UnboundedSender<Done>,
    /// Recorded, not yet known durable: each with the journal's write
    /// count after its write.
    pending: Vec<(Done, u64)>,
    /// The worker's flush under way: whether it worked, once it ended.
    inflight: Option<oneshot::Receiver<bool>>,
}

impl Commit {
    pub fn new(journal: Journal, done: mpsc::UnboundedSender<Done>) -> Commit {
        Commit { journal, done, pending: Vec::new(), inflight: None }
    }

    /// An outcome was recorded in the journal (not flushed).
    pub fn record(&mut self, d: Done) {
        let written = self.journal.written();
        self.pending.push((d, written));
    }

    pub fn busy(&self) -> bool {
        self.inflight.is_some()
    }

    /// Starts a flush in the background (after [`LINGER`]) unless one is
    /// under way (its end starts the next) or nothing waits for one.
    pub fn kick(&mut self) {
        if self.inflight.is_some() || self.pending.is_empty() {
            return;
        }
        let journal = self.journal.clone();
        let (tx, result) = oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(LINGER).await;
            let ok = match journal.flush().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "cannot flush outcomes to the journal");
                    false
                }
            };
            let _ = tx.send(ok);
        });
        self.inflight = Some(result);
    }

    /// Hands on the outcomes any finished flush covered, and after the
    /// worker's own flush ended, starts the next one. Never waits.
    pub fn poll(&mut self) {
        if let Some(rx) = self.inflight.as_mut() {
            let ok = match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => {
                    self.release(true);
                    return;
                }
                Ok(ok) => ok,
                Err(oneshot::error::TryRecvError::Closed) => false,
            };
            self.inflight = None;
            self.release(ok);
            self.kick();
        } else {
            self.release(true);
        }
    }

    /// Waits for the worker's flush under way to end and hands on what is
    /// durable. Cancel-safe: dropped before the end, it changes nothing.
    pub async fn settle(&mut self) {
        let Some(rx) = self.inflight.as_mut() else { return };
        let ok = rx.await.unwrap_or(false);
        self.inflight = None;
        self.release(ok);
    }

    /// Makes everything written so far durable and hands every recorded
    /// outcome on: before a request to a non-idempotent device, when too
    /// many are unsettled, and when the worker stops.
    pub async fn flush_all(&mut self) -> Result<(), JournalError> {
        // Not behind the background flush's linger: the journal queues
        // this flush after one under way, and one covers everything.
        let r = self.journal.flush().await;
        self.release(r.is_ok());
        r
    }

    /// Hands on the outcomes a flush covered. After a failed flush (`ok`
    /// false) every recorded outcome goes, marked not durable: the pipeline
    /// flushes itself and holds the acks until that works.
    fn release(&mut self, ok: bool) {
        if self.pending.is_empty() {
            return;
        }
        let upto = self.journal.durable_upto();
        // Recorded in order: what a flush covered is a prefix (all of it
        // after a failed flush).
        let n = if ok {
            self.pending.iter().take_while(|(_, written)| *written <= upto).count()
        } else {
            self.pending.len()
        };
        for (mut d, written) in self.pending.drain(..n) {
            d.durable = written <= upto;
            let _ = self.done.send(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Bounds;
    use crate::message::{Inbound, Outcome};

    fn setup() -> (tempfile::TempDir, Journal, Commit, mpsc::UnboundedReceiver<Done>, Vec<u64>) {
        let tmp = tempfile::tempdir().unwrap();
        let bounds = Bounds { max_messages: 100, max_bytes: 1 << 20 };
        let (j, _) = Journal::open(&tmp.path().join("j"), 1 << 20, bounds).unwrap();
        let seqs = (0..3)
            .map(|i| {
                let inbound = Inbound { id: Some(format!("m{i}")), body: b"{}".to_vec(), ..Inbound::default() };
                match j.admit(inbound, None, 1).unwrap() {
                    crate::journal::Admitted::New(e) => e.seq,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let c = Commit::new(j.clone(), tx);
        (tmp, j, c, rx, seqs)
    }

    fn outcome(j: &Journal, c: &mut Commit, seq: u64) {
        let o = Outcome::delivered("ok");
        j.finish(seq, &o, 2).unwrap();
        c.record(Done { seq, device: "d".into(), outcome: o, attempts: 1, durable: false, entry: None });
    }

    #[tokio::test]
    async fn an_outcome_goes_on_only_once_a_flush_covered_it() {
        let (_tmp, j, mut c, mut rx, seqs) = setup();
        outcome(&j, &mut c, seqs[0]);
        c.poll();
        assert!(rx.try_recv().is_err(), "not durable yet");
        c.kick();
        assert!(c.busy());
        outcome(&j, &mut c, seqs[1]); // while the lingering flush waits: it rides along
        c.settle().await;
        let got: Vec<(u64, bool)> = std::iter::from_fn(|| rx.try_recv().ok()).map(|d| (d.seq, d.durable)).collect();
        assert_eq!(got, [(seqs[0], true), (seqs[1], true)]);
        assert!(!c.busy());
    }

    #[tokio::test]
    async fn another_flush_releases_outcomes_without_one_of_the_workers_own() {
        let (_tmp, j, mut c, mut rx, seqs) = setup();
        outcome(&j, &mut c, seqs[2]);
        j.flush().await.unwrap(); // the pipeline's, for arrivals
        c.poll();
        let d = rx.try_recv().expect("released by the other flush");
        assert!(d.durable && d.seq == seqs[2]);
        assert!(!c.busy(), "no flush of its own was needed");
        c.flush_all().await.unwrap();
        assert!(rx.try_recv().is_err());
    }
}
