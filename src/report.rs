//! Result reports: one D2C message per final outcome, so the back end learns
//! what the device did (IoT Hub's own feedback only says the message was
//! completed). Properties: `$.cid` = original message id, `$.ct`, `$.ce`,
//! `c2d-status` = the final state.

use crate::config::Reports;
use crate::message::{rfc3339_ms, Entry, OperatorAction, State};
use serde::Serialize;

#[derive(Serialize)]
struct Body<'a> {
    message_id: &'a str,
    device: Option<&'a str>,
    status: &'a str,
    attempts: u32,
    detail: &'a str,
    received_at: String,
    completed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    /// What a read returned (point name → value).
    #[serde(skip_serializing_if = "Option::is_none")]
    values: Option<&'a serde_json::Value>,
    /// The device may have received the command twice (idempotent device,
    /// sent again after the gateway stopped mid-send).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    resent_after_crash: bool,
    /// The device may have received the command twice (idempotent device,
    /// sent again after an attempt without a clear answer).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    resent: bool,
    /// The id was made up by the gateway (the message carried none).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    id_generated: bool,
    /// False when the message carried no id (`hub.missing_id = "execute"`):
    /// a redelivery of it could not be recognised and may have run again.
    /// Left out when true (every message with an id).
    #[serde(skip_serializing_if = "is_true")]
    deduplicated: bool,
    /// "operator": sent again by `queue retry` (it was uncertain or expired).
    #[serde(skip_serializing_if = "Option::is_none")]
    retried_by: Option<&'static str>,
    /// "operator": declared delivered or rejected by `queue resolve`.
    #[serde(skip_serializing_if = "Option::is_none")]
    resolved_by: Option<&'static str>,
    /// "operator": taken out of the queue by `queue drop`.
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped_by: Option<&'static str>,
    /// The operator's note.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
}

fn is_true(b: &bool) -> bool {
    *b
}

fn by_operator(e: &Entry, action: OperatorAction) -> Option<&'static str> {
    e.operator.as_ref().filter(|o| o.action == action).map(|_| "operator")
}

/// Whether the policy asks for a report of this outcome.
pub fn wanted(policy: Reports, state: State) -> bool {
    match policy {
        Reports::All => true,
        Reports::Failures => state != State::Delivered,
        Reports::None => false,
    }
}

/// The JSON body of the report about a final entry.
pub fn body(e: &Entry) -> Vec<u8> {
    let b = Body {
        message_id: &e.id,
        device: e.device.as_deref(),
        status: e.state.as_str(),
        attempts: e.attempts,
        detail: &e.detail,
        received_at: rfc3339_ms(e.received_at),
        completed_at: e.completed_at.map(rfc3339_ms),
        correlation_id: e.correlation_id.as_deref(),
        values: e.values.as_ref(),
        resent_after_crash: e.resent_after_crash,
        resent: e.resent,
        id_generated: e.id_generated,
        deduplicated: !e.id_generated,
        retried_by: by_operator(e, OperatorAction::Retried),
        resolved_by: by_operator(e, OperatorAction::Resolved),
        dropped_by: by_operator(e, OperatorAction::Dropped),
        note: e.operator.as_ref().and_then(|o| o.note.as_deref()),
    };
    serde_json::to_vec(&b).expect("report serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_body_has_the_contract_fields() {
        let e = Entry {
            device: Some("boiler".into()),
            attempts: 1,
            detail: "holding 100..101".into(),
            completed_at: Some(1500),
            body_len: 3,
            ..Entry::new(1, "m1".into(), 0, State::Delivered)
        };
        let v: serde_json::Value = serde_json::from_slice(&body(&e)).unwrap();
        assert_eq!(v["message_id"], "m1");
        assert_eq!(v["device"], "boiler");
        assert_eq!(v["status"], "delivered");
        assert_eq!(v["attempts"], 1);
        assert_eq!(v["detail"], "holding 100..101");
        assert_eq!(v["received_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["completed_at"], "1970-01-01T00:00:01.500Z");
        assert!(v.get("resent_after_crash").is_none());
        assert!(v.get("deduplicated").is_none(), "a message with an id is deduplicated: not said");
    }

    #[test]
    fn a_message_without_id_is_reported_as_not_deduplicated() {
        let e = Entry {
            id_generated: true,
            attempts: 1,
            completed_at: Some(1),
            body_len: 2,
            ..Entry::new(2, "gw-0000000000000002-0badf00d".into(), 0, State::Delivered)
        };
        let v: serde_json::Value = serde_json::from_slice(&body(&e)).unwrap();
        assert_eq!(v["deduplicated"], false);
        assert_eq!(v["id_generated"], true);
    }

    #[test]
    fn an_operators_action_is_in_the_report() {
        use crate::message::Operator;
        let op = |action| Operator {
            action,
            by: "uid 0 (root)".into(),
            at: 1,
            note: Some("valve checked".into()),
            previous: State::Uncertain,
        };
        let e =
            Entry { operator: Some(op(OperatorAction::Retried)), ..Entry::new(3, "m3".into(), 0, State::Delivered) };
        let v: serde_json::Value = serde_json::from_slice(&body(&e)).unwrap();
        assert_eq!(v["retried_by"], "operator");
        assert_eq!(v["note"], "valve checked");
        assert!(v.get("resolved_by").is_none() && v.get("dropped_by").is_none());
        assert!(!v.to_string().contains("uid"), "who it was stays in the gateway's log: {v}");
        let e = Entry { operator: Some(op(OperatorAction::Resolved)), ..e };
        let v: serde_json::Value = serde_json::from_slice(&body(&e)).unwrap();
        assert_eq!((v["resolved_by"].as_str(), v.get("retried_by")), (Some("operator"), None));
        let e = Entry { operator: Some(op(OperatorAction::Dropped)), state: State::Rejected, ..e };
        let v: serde_json::Value = serde_json::from_slice(&body(&e)).unwrap();
        assert_eq!(v["dropped_by"], "operator");
    }

    #[test]
    fn policy() {
        assert!(wanted(Reports::All, State::Delivered));
        assert!(!wanted(Reports::Failures, State::Delivered));
        assert!(wanted(Reports::Failures, State::Uncertain));
        assert!(!wanted(Reports::None, State::Rejected));
    }
}
