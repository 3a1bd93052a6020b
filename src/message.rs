//! A C2D message as the gateway keeps it: its journal entry and its states.
//!
//! `queued` → `sending` → one final state (`delivered`, `rejected`, `expired`,
//! `uncertain`). The entry is what sled stores (as JSON; the body is kept
//! apart so a state change does not rewrite it).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Sending,
    Delivered,
    Rejected,
    Expired,
    Uncertain,
}

impl State {
    pub fn is_final(self) -> bool {
        !matches!(self, State::Queued | State::Sending)
    }

    /// The body stays in the journal: the message is unfinished, or it
    /// ended where an operator may send it again (`uncertain`, `expired`:
    /// see `queue retry`).
    pub fn keeps_body(self) -> bool {
        !matches!(self, State::Delivered | State::Rejected)
    }

    /// An operator may retry or resolve a message in this state.
    pub fn needs_operator(self) -> bool {
        matches!(self, State::Uncertain | State::Expired)
    }

    pub fn parse(s: &str) -> Option<State> {
        [State::Queued, State::Sending, State::Delivered, State::Rejected, State::Expired, State::Uncertain]
            .into_iter()
            .find(|st| st.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Sending => "sending",
            State::Delivered => "delivered",
            State::Rejected => "rejected",
            State::Expired => "expired",
            State::Uncertain => "uncertain",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The final result of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub state: State,
    pub detail: String,
    /// What a read returned (point name → value): into the result report.
    pub values: Option<serde_json::Value>,
}

impl Outcome {
    fn new(state: State, detail: impl Into<String>) -> Self {
        Outcome { state, detail: detail.into(), values: None }
    }
    pub fn delivered(detail: impl Into<String>) -> Self {
        Outcome::new(State::Delivered, detail)
    }
    pub fn rejected(detail: impl Into<String>) -> Self {
        Outcome::new(State::Rejected, detail)
    }
    pub fn expired(detail: impl Into<String>) -> Self {
        Outcome::new(State::Expired, detail)
    }
    pub fn uncertain(detail: impl Into<String>) -> Self {
        Outcome::new(State::Uncertain, detail)
    }
    /// The outcome of a read, with the values read.
    pub fn read(detail: impl Into<String>, values: serde_json::Value) -> Self {
        Outcome { values: Some(values), ..Outcome::new(State::Delivered, detail) }
    }
}

/// What the hub link extracted from one PUBLISH, before it is journaled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inbound {
    /// The hub's message id (`$.mid`, or the body's `id`); `None` = generate one.
    pub id: Option<String>,
    /// Target device as named by the message (property or topic).
    pub device: Option<String>,
    pub correlation_id: Option<String>,
    /// Absolute expiry (`$.exp`), unix milliseconds.
    pub expires_at: Option<u64>,
    pub body: Vec<u8>,
    /// Set when the message can never be delivered (malformed topic, oversize...).
    pub reject: Option<String>,
    /// Who waits for its outcome besides the result report (a direct
    /// method call, a twin setpoint). Not journaled.
    pub origin: Option<Origin>,
}

/// Where a command came from when something waits for its outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// A `write` direct method call: its request id.
    Method(String),
    /// A twin setpoint: the desired value of a device's point and the
    /// desired `$version` it came with.
    Twin { point: String, value: serde_json::Value, version: u64 },
}

/// A reading of one device's telemetry points.
#[derive(Debug, Clone)]
pub struct Reading {
    pub device: String,
    pub at_ms: u64,
    /// Point name → value, in the configured order.
    pub values: Vec<(String, serde_json::Value)>,
}

/// One message in the journal. Stored as JSON; fields at their default are
/// left out (the entry is rewritten at each state change, and every byte
/// counts on an SD card), and read back as defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Arrival order, unique and monotonic across restarts.
    pub seq: u64,
    pub id: String,
    /// True when the id was made up here (no dedupe across hub redeliveries).
    #[serde(default, skip_serializing_if = "is_false")]
    pub id_generated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    pub received_at: u64,
    pub state: State,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<u64>,
    /// PUBACK sent while the message was not final: the journal has custody.
    #[serde(default, skip_serializing_if = "is_false")]
    pub handed_over: bool,
    /// The result report was handed to the hub link.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reported: bool,
    /// Sent again after a crash mid-send (idempotent device): the device may
    /// have seen it twice.
    #[serde(default, skip_serializing_if = "is_false")]
    pub resent_after_crash: bool,
    /// Sent again (idempotent device) after an attempt that may have reached
    /// the device: no reply, a garbled one, or a lost connection.
    #[serde(default, skip_serializing_if = "is_false")]
    pub resent: bool,
    /// The last attempt may have reached the device without a clear answer
    /// (idempotent device, requeued): the next one is a resend, to be said
    /// in the report. Written with the requeue, cleared by the next
    /// `sending` mark; kept here so that a job rebuilt from the journal
    /// (a reload, a restart) still knows.
    #[serde(default, rename = "unconf", skip_serializing_if = "is_false")]
    pub unconfirmed: bool,
    /// Why the message cannot be delivered, found before it was queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject: Option<String>,
    /// Body length in bytes (the body itself is stored apart).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub body_len: u64,
    /// The steps of a multi-step command (several writes) the device
    /// confirmed, in order, each as it was reported ("holding 100 = 7").
    /// Written with the requeue after an interrupted attempt (flushed with
    /// the next `sending` mark, or at a clean stop); a job rebuilt from the
    /// journal resumes after them, so no confirmed step is sent twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<String>,
    /// Fingerprint of the command (64 bits of the SHA-256 of the body): a
    /// redelivery carries the same one, an id reused for another command
    /// does not. `None`: written by an older version (deduplicated by key
    /// alone). Short name on disk: the entry is rewritten at every change.
    #[serde(default, rename = "fp", skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<u64>,
    /// Rejected at arrival because its (device, id) was already used for a
    /// different command: it does not take the key over from the original.
    #[serde(default, skip_serializing_if = "is_false")]
    pub conflict: bool,
    /// Its PUBACK went to the hub: the hub will not deliver it again, so it
    /// may be forgotten early at the journal's bound. Absent (older entries,
    /// or a mark lost in a crash): kept for the whole dedupe window.
    #[serde(default, skip_serializing_if = "is_false")]
    pub acked: bool,
    /// The journal's uptime clock (milliseconds the gateway has run, counted
    /// monotonically across restarts) when the entry became final: the
    /// dedupe window is measured on it as well as on the wall clock, so a
    /// wall-clock step cannot prune early.
    #[serde(default, rename = "fin_up", skip_serializing_if = "Option::is_none")]
    pub final_uptime: Option<u64>,
    /// A read's values (point name → value), for its result report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<serde_json::Value>,
    /// The last thing an operator did to it (`queue retry`, `resolve`,
    /// `drop`): in its report and in `queue show`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<Operator>,
}

/// What an operator did to a message, by whom and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    pub action: OperatorAction,
    /// Who asked (the control socket's peer: "uid 0 (root)").
    pub by: String,
    /// Unix milliseconds.
    pub at: u64,
    /// (Always written: the journal stores this with postcard, which has
    /// no field names to skip by.)
    #[serde(default)]
    pub note: Option<String>,
    /// The state the message was in before.
    pub previous: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorAction {
    /// Sent again (it was `uncertain` or `expired`).
    Retried,
    /// Declared `delivered` or `rejected` (it was `uncertain` or `expired`).
    Resolved,
    /// Taken out of the queue: `rejected`.
    Dropped,
}

impl OperatorAction {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorAction::Retried => "retried",
            OperatorAction::Resolved => "resolved",
            OperatorAction::Dropped => "dropped",
        }
    }
}

impl Entry {
    /// An entry with every optional field at its default (build the rest
    /// with `Entry { field, ..Entry::new(...) }`).
    pub fn new(seq: u64, id: String, received_at: u64, state: State) -> Entry {
        Entry {
            seq,
            id,
            id_generated: false,
            device: None,
            correlation_id: None,
            expires_at: None,
            received_at,
            state,
            attempts: 0,
            detail: String::new(),
            completed_at: None,
            handed_over: false,
            reported: false,
            resent_after_crash: false,
            resent: false,
            unconfirmed: false,
            reject: None,
            body_len: 0,
            steps: Vec::new(),
            fingerprint: None,
            values: None,
            operator: None,
            conflict: false,
            acked: false,
            final_uptime: None,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// Milliseconds since the epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64
}

pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// RFC 3339 UTC with milliseconds, for reports and logs.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod entry_encoding {
    use super::*;

    fn entry() -> Entry {
        Entry {
            device: Some("boiler".into()),
            body_len: 25,
            ..Entry::new(7, "m-1".into(), 1_700_000_000_000, State::Queued)
        }
    }

    #[test]
    fn defaults_are_left_out_and_read_back() {
        let e = entry();
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"seq":7,"id":"m-1","device":"boiler","received_at":1700000000000,"state":"queued","body_len":25}"#
        );
        assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), e);
    }

    #[test]
    fn every_field_round_trips() {
        let e = Entry {
            id_generated: true,
            correlation_id: Some("c".into()),
            expires_at: Some(5),
            state: State::Uncertain,
            attempts: 3,
            detail: "no answer".into(),
            completed_at: Some(9),
            handed_over: true,
            reported: true,
            resent_after_crash: true,
            resent: true,
            unconfirmed: true,
            reject: Some("bad".into()),
            steps: vec!["holding 10 = 1".into(), "coil 7 = true".into()],
            fingerprint: Some(u64::MAX),
            conflict: true,
            acked: true,
            final_uptime: Some(12),
            ..entry()
        };
        assert_eq!(serde_json::from_slice::<Entry>(&serde_json::to_vec(&e).unwrap()).unwrap(), e);
    }

    #[test]
    fn entries_written_with_every_field_still_read() {
        let old = r#"{"seq":7,"id":"m-1","id_generated":false,"device":"boiler","correlation_id":null,"expires_at":null,
            "received_at":1700000000000,"state":"queued","attempts":0,"detail":"","completed_at":null,"handed_over":false,
            "reported":false,"resent_after_crash":false,"reject":null,"body_len":25}"#;
        assert_eq!(serde_json::from_str::<Entry>(old).unwrap(), entry());
    }

    #[test]
    fn confirmed_steps_are_stored_compactly() {
        let e = Entry { state: State::Queued, attempts: 1, steps: vec!["holding 10 = 1".into()], ..entry() };
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.ends_with(r#""attempts":1,"body_len":25,"steps":["holding 10 = 1"]}"#), "{text}");
        assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), e);
    }
}
