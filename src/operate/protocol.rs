//! The control socket's protocol: one JSON request per connection, one
//! line; one JSON answer, one line (`{"ok": true, "result": ...}` or
//! `{"ok": false, "error": "..."}`). The verbs (`cli/operator.rs`) speak
//! it; so may a script (`socat - UNIX-CONNECT:/run/c2d-gateway/control.sock`).

use serde::{Deserialize, Serialize};

/// Which message: its id, and the device or journal sequence number when
/// the id alone names more than one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Target {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "lowercase")]
pub enum Request {
    Status,
    List {
        /// A state, `open` (the default: queued, sending, uncertain,
        /// expired), `unfinished`, `unresolved` or `all`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    Show {
        #[serde(flatten)]
        target: Target,
    },
    Retry {
        #[serde(flatten)]
        target: Target,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    Resolve {
        #[serde(flatten)]
        target: Target,
        /// `delivered` or `rejected`.
        #[serde(rename = "as")]
        to: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    Drop {
        #[serde(flatten)]
        target: Target,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
}

/// A request as it goes on the wire: the verb, and who the client says it
/// runs as (the service may not see the peer's uid: with systemd's
/// `PrivateUsers=`, every user but root and the service's own shows as
/// `nobody`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(flatten)]
    pub request: Request,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Self {
        Response { ok: true, result: Some(result), error: None }
    }
    pub fn error(why: impl Into<String>) -> Self {
        Response { ok: false, result: None, error: Some(why.into()) }
    }
}

/// The longest request line taken.
pub const MAX_REQUEST: usize = 64 * 1024;
