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
}

impl Outcome {
    pub fn delivered(detail: impl Into<String>) -> Self {
        Outcome { state: State::Delivered, detail: detail.into() }
    }
    pub fn rejected(detail: impl Into<String>) -> Self {
        Outcome { state: State::Rejected, detail: detail.into() }
    }
    pub fn expired(detail: impl Into<String>) -> Self {
        Outcome { state: State::Expired, detail: detail.into() }
    }
    pub fn uncertain(detail: impl Into<String>) -> Self {
        Outcome { state: State::Uncertain, detail: detail.into() }
    }
}

/// What the hub link extracted from one PUBLISH, before it is journaled.
#[derive(Debug, Clone, Default)]
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
}

/// One message in the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Arrival order, unique and monotonic across restarts.
    pub seq: u64,
    pub id: String,
    /// True when the id was made up here (no dedupe across hub redeliveries).
    #[serde(default)]
    pub id_generated: bool,
    pub device: Option<String>,
    #[serde(default)]
    pub correlation_id: Option<String>,
    pub expires_at: Option<u64>,
    pub received_at: u64,
    pub state: State,
    pub attempts: u32,
    #[serde(default)]
    pub detail: String,
    pub completed_at: Option<u64>,
    /// PUBACK sent while the message was not final: the journal has custody.
    #[serde(default)]
    pub handed_over: bool,
    /// The result report was handed to the hub link.
    #[serde(default)]
    pub reported: bool,
    /// Sent again after a crash mid-send (idempotent device): the device may
    /// have seen it twice.
    #[serde(default)]
    pub resent_after_crash: bool,
    /// Why the message cannot be delivered, found before it was queued.
    #[serde(default)]
    pub reject: Option<String>,
    /// Body length in bytes (the body itself is stored apart).
    pub body_len: u64,
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
