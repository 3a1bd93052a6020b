//! What an operator may do to a message through the control socket
//! (`queue retry`, `resolve`, `drop`), and the lookups behind `queue list`
//! and `queue show`. Each action is one write of the entry, marked with who
//! did it (`Entry::operator`); the pipeline flushes it, dispatches or
//! reports it, and logs it.

use super::{Journal, JournalError};
use crate::message::{Entry, Operator, OperatorAction, State};

/// Why an action was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The message is not in a state the action applies to.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Journal(#[from] JournalError),
}

/// Who asked for an action, when, and why.
#[derive(Debug, Clone)]
pub struct Asked {
    /// The control socket's peer ("uid 0 (root)").
    pub by: String,
    /// Unix milliseconds.
    pub at: u64,
    pub note: Option<String>,
}

impl Asked {
    fn mark(self, action: OperatorAction, previous: State) -> Operator {
        Operator { action, by: self.by, at: self.at, note: self.note, previous }
    }
}

impl Journal {
    /// Entries `keep` says, in arrival order: at most `limit`, and how many
    /// matched in all. Reads the store without holding the index: the
    /// pipeline goes on meanwhile (call it off the runtime's thread).
    pub fn select(&self, keep: impl Fn(&Entry) -> bool, limit: usize) -> Result<(Vec<Entry>, usize), JournalError> {
        let mut out = Vec::new();
        let mut matched = 0;
        for kv in self.inner.messages.iter() {
            let (k, v) = kv?;
            let e = super::decode_at(&k, &v)?;
            if keep(&e) {
                matched += 1;
                if out.len() < limit {
                    out.push(e);
                }
            }
        }
        Ok((out, matched))
    }

    /// The entries of message id `id` (for `device`, if given), found
    /// through the dedupe index: usually one; more when the id was reused
    /// (a conflict) or names messages of several devices.
    pub fn find(&self, id: &str, device: Option<&str>) -> Result<Vec<Entry>, JournalError> {
        let seqs: Vec<u64> = {
            let idx = self.lock();
            let wanted = |(d, i): &(Option<String>, String)| i == id && device.is_none_or(|w| d.as_deref() == Some(w));
            let mut seqs: Vec<u64> = idx.by_key.iter().filter(|(k, _)| wanted(k)).map(|(_, s)| *s).collect();
            seqs.extend(idx.conflicts.iter().filter(|((k, _), _)| wanted(k)).map(|(_, s)| *s));
            seqs
        };
        let mut out = self.entries(seqs)?;
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }

    /// The entries `seqs` names that are still there (pruned meanwhile: left out).
    fn entries(&self, seqs: Vec<u64>) -> Result<Vec<Entry>, JournalError> {
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            match self.get(seq) {
                Ok(e) => out.push(e),
                Err(JournalError::Missing(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The `uncertain` and `expired` entries (the oldest `limit` of them,
    /// read from the index's list) and how many there are of each.
    pub fn unresolved(&self, limit: usize) -> Result<(Vec<Entry>, usize, usize), JournalError> {
        let (seqs, uncertain, expired) = {
            let idx = self.lock();
            let uncertain = idx.unresolved.values().filter(|s| **s == State::Uncertain).count();
            let seqs: Vec<u64> = idx.unresolved.keys().take(limit).copied().collect();
            (seqs, uncertain, idx.unresolved.len() - uncertain)
        };
        Ok((self.entries(seqs)?, uncertain, expired))
    }

    /// The body the journal holds for entry `seq`, whatever its state.
    pub fn stored_body(&self, seq: u64) -> Result<Option<Vec<u8>>, JournalError> {
        match self.get_inline(seq)? {
            (_, Some(inline)) => Ok(Some(inline)),
            (_, None) => self.tree_body(seq),
        }
    }

    /// Whether the journal still holds the body of entry `seq` (a final
    /// `uncertain` or `expired` one keeps it for a retry until the journal
    /// needs the room, or its dedupe window ends).
    pub fn has_body(&self, seq: u64) -> Result<bool, JournalError> {
        let (_, inline) = self.get_inline(seq)?;
        Ok(inline.is_some() || super::has_tree_body(&self.inner.bodies, seq)?)
    }

    /// `queue retry`: an `uncertain` or `expired` message goes back to the
    /// queue, to be sent again as if new (attempts, `max_age` and the hub's
    /// expiry start over: the operator decided it should run now). Steps of
    /// a multi-step command the device confirmed stay confirmed and are not
    /// sent again. Its next outcome is reported with `retried_by`.
    pub fn retry(&self, seq: u64, asked: Asked) -> Result<Entry, ActionError> {
        if !self.has_body(seq)? {
            let e = self.get(seq)?;
            if e.state.needs_operator() {
                return Err(ActionError::Refused(format!(
                    "its body is no longer in the journal (kept for retries only until the journal needs the room); \
                     resolve it instead, or send the command again from the back end (message {})",
                    e.id
                )));
            }
        }
        self.operate(seq, OperatorAction::Retried, asked, |e| {
            e.state = State::Queued;
            e.attempts = 0;
            e.detail.clear();
            e.completed_at = None;
            e.final_uptime = None;
            e.expires_at = None;
            e.reported = false;
            e.resent = false;
            e.resent_after_crash = false;
            e.unconfirmed = false;
            e.values = None;
        })
    }

    /// `queue resolve --as delivered|rejected`: the operator checked the
    /// device and says what became of an `uncertain` or `expired` message.
    /// Reported again with `resolved_by`.
    pub fn resolve(&self, seq: u64, to: State, asked: Asked) -> Result<Entry, ActionError> {
        if !matches!(to, State::Delivered | State::Rejected) {
            return Err(ActionError::Refused(format!("a message is resolved as delivered or rejected, not {to}")));
        }
        let at = asked.at;
        self.operate(seq, OperatorAction::Resolved, asked, |e| {
            e.detail = format!("{to} (resolved by operator; it was {}: {})", e.state, e.detail);
            e.state = to;
            e.completed_at = Some(at);
            e.reported = false;
        })
    }

    /// `queue drop`: a queued message is taken out of the queue, `rejected`.
    /// The caller makes sure no bus worker sends it meanwhile (the worker
    /// that holds it drops it itself).
    pub fn drop_queued(&self, seq: u64, asked: Asked) -> Result<Entry, ActionError> {
        let mut refused = None;
        let (e, wrote) = self.update_if(seq, |e| {
            if e.state != State::Queued {
                refused = Some(match e.state {
                    State::Sending => "it is on the wire right now; look again in a moment".to_string(),
                    s => format!("it is {s} already: only queued messages are dropped"),
                });
                return false;
            }
            e.detail = match e.steps.as_slice() {
                [] => "dropped by operator".into(),
                steps => format!("dropped by operator after writing: {}", steps.join("; ")),
            };
            if e.unconfirmed {
                e.detail += " (an earlier attempt got no clear answer: the device may have acted on it)";
            }
            e.completed_at = Some(asked.at);
            e.operator = Some(asked.mark(OperatorAction::Dropped, e.state));
            e.state = State::Rejected;
            true
        })?;
        match refused {
            Some(why) if !wrote => Err(ActionError::Refused(why)),
            _ => Ok(e),
        }
    }

    /// Applies an action to an `uncertain` or `expired` entry.
    fn operate(
        &self,
        seq: u64,
        action: OperatorAction,
        asked: Asked,
        f: impl FnOnce(&mut Entry),
    ) -> Result<Entry, ActionError> {
        let mut refused = None;
        let (e, wrote) = self.update_if(seq, |e| {
            if !e.state.needs_operator() {
                refused =
                    Some(format!("it is {}: only uncertain or expired messages are {}", e.state, action.as_str()));
                return false;
            }
            let previous = e.state;
            f(e);
            e.operator = Some(asked.mark(action, previous));
            true
        })?;
        match refused {
            Some(why) if !wrote => Err(ActionError::Refused(why)),
            _ => Ok(e),
        }
    }
}

#[cfg(test)]
#[path = "operator_tests.rs"]
mod tests;
