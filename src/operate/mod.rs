//! The operator surface: the control socket (`control.rs`, the `status`
//! and `queue` verbs) and HTTP on a local address (`http.rs`: `/metrics`,
//! `/status`, the status page). Both read the journal and the live state
//! directly; changes to a message go through the pipeline
//! (`pipeline/operator.rs`), the only one that acts on messages.

pub mod control;
pub mod http;
pub mod metrics;
pub mod protocol;

use crate::config::HubKind;
use crate::journal::Journal;
use crate::live::Live;
use std::sync::Arc;

/// What both servers read from.
pub struct Ctx {
    pub journal: Journal,
    pub live: Arc<Live>,
    pub hub: HubKind,
    /// When this run started (unix ms).
    pub started_ms: u64,
}

impl Ctx {
    pub fn status(&self) -> serde_json::Value {
        crate::status::document(self.hub, &self.journal, &self.live, self.started_ms)
    }
}
