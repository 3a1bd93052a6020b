//! How an entry is stored. Every change of a message rewrites its entry,
//! and sled writes each value several times over (the value, then its
//! share of the leaf rewritten every few changes), so bytes per entry are
//! bytes on the SD card: entries are postcard (compact binary, varints)
//! behind a version byte, about a third of their JSON. A small body rides
//! in the entry while the message is unfinished (no item of its own to
//! write and remove) and is left out once it is final.
//!
//! Entries written by earlier versions (JSON, starting with `{`) are read
//! as they are, and rewritten in this form at their next change.

use crate::message::{Entry, Operator, State};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Bodies up to this long are stored inside their entry.
pub const INLINE_BODY: usize = 512;

/// The first byte of a stored entry in this form.
const V1: u8 = 1;
/// V1 followed by the read's values (JSON text): an entry with values.
/// Entries without values stay V1, readable by the versions before it.
const V2: u8 = 2;
/// V1 followed by [`Extra`]: an entry an operator acted on. Entries
/// without an operator's mark stay V1 or V2. (A version before this one
/// cannot read V3 and drops such entries at its open, with their dedupe
/// records: a downgrade forgets the messages operators touched.)
const V3: u8 = 3;

/// What follows the fields of a V3 entry.
#[derive(Serialize, Deserialize)]
struct Extra<'a> {
    values: Option<Cow<'a, str>>,
    operator: Option<Cow<'a, Operator>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Binary(#[from] postcard::Error),
    #[error("unknown entry format (first byte {0:#04x})")]
    Format(u8),
    #[error("empty value")]
    Empty,
}

/// Every field of [`Entry`], in a fixed order (postcard has no field names:
/// a new field needs a new version), and the inline body.
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    seq: u64,
    id: Cow<'a, str>,
    id_generated: bool,
    device: Option<Cow<'a, str>>,
    correlation_id: Option<Cow<'a, str>>,
    expires_at: Option<u64>,
    received_at: u64,
    state: State,
    attempts: u32,
    detail: Cow<'a, str>,
    completed_at: Option<u64>,
    handed_over: bool,
    reported: bool,
    resent_after_crash: bool,
    resent: bool,
    unconfirmed: bool,
    reject: Option<Cow<'a, str>>,
    body_len: u64,
    steps: Cow<'a, [String]>,
    fingerprint: Option<u64>,
    conflict: bool,
    acked: bool,
    final_uptime: Option<u64>,
    body: Option<Cow<'a, [u8]>>,
}

fn owned(c: Option<Cow<'_, str>>) -> Option<String> {
    c.map(Cow::into_owned)
}

/// The stored form of `e`, with `body` inside it (unless `e` is final).
pub fn encode(e: &Entry, body: Option<&[u8]>) -> Vec<u8> {
    let s = Stored {
        seq: e.seq,
        id: Cow::Borrowed(&e.id),
        id_generated: e.id_generated,
        device: e.device.as_deref().map(Cow::Borrowed),
        correlation_id: e.correlation_id.as_deref().map(Cow::Borrowed),
        expires_at: e.expires_at,
        received_at: e.received_at,
        state: e.state,
        attempts: e.attempts,
        detail: Cow::Borrowed(&e.detail),
        completed_at: e.completed_at,
        handed_over: e.handed_over,
        reported: e.reported,
        resent_after_crash: e.resent_after_crash,
        resent: e.resent,
        unconfirmed: e.unconfirmed,
        reject: e.reject.as_deref().map(Cow::Borrowed),
        body_len: e.body_len,
        steps: Cow::Borrowed(&e.steps),
        fingerprint: e.fingerprint,
        conflict: e.conflict,
        acked: e.acked,
        final_uptime: e.final_uptime,
        body: body.filter(|_| e.state.keeps_body()).map(Cow::Borrowed),
    };
    match (&e.values, &e.operator) {
        (None, None) => postcard::to_extend(&s, vec![V1]).expect("an entry serialises"),
        (Some(values), None) => {
            let v = postcard::to_extend(&s, vec![V2]).expect("an entry serialises");
            postcard::to_extend(&values.to_string(), v).expect("values serialise")
        }
        (values, Some(op)) => {
            let v = postcard::to_extend(&s, vec![V3]).expect("an entry serialises");
            let values = values.as_ref().map(|v| Cow::Owned(v.to_string()));
            postcard::to_extend(&Extra { values, operator: Some(Cow::Borrowed(op)) }, v).expect("extras serialise")
        }
    }
}

/// An entry and its inline body, from either stored form.
pub fn decode(v: &[u8]) -> Result<(Entry, Option<Vec<u8>>), DecodeError> {
    match v.first() {
        None => Err(DecodeError::Empty),
        Some(b'{') => Ok((serde_json::from_slice(v)?, None)),
        Some(&version @ (V1 | V2 | V3)) => {
            let (s, rest): (Stored, &[u8]) = postcard::take_from_bytes(&v[1..])?;
            let (values, operator) = match version {
                V2 => {
                    let text: Cow<'_, str> = postcard::from_bytes(rest)?;
                    (Some(serde_json::from_str(&text)?), None)
                }
                V3 => {
                    let x: Extra = postcard::from_bytes(rest)?;
                    let values = x.values.map(|t| serde_json::from_str(&t)).transpose()?;
                    (values, x.operator.map(Cow::into_owned))
                }
                _ => (None, None),
            };
            let e = Entry {
                seq: s.seq,
                id: s.id.into_owned(),
                id_generated: s.id_generated,
                device: owned(s.device),
                correlation_id: owned(s.correlation_id),
                expires_at: s.expires_at,
                received_at: s.received_at,
                state: s.state,
                attempts: s.attempts,
                detail: s.detail.into_owned(),
                completed_at: s.completed_at,
                handed_over: s.handed_over,
                reported: s.reported,
                resent_after_crash: s.resent_after_crash,
                resent: s.resent,
                unconfirmed: s.unconfirmed,
                reject: owned(s.reject),
                body_len: s.body_len,
                steps: s.steps.into_owned(),
                fingerprint: s.fingerprint,
                conflict: s.conflict,
                acked: s.acked,
                final_uptime: s.final_uptime,
                values,
                operator,
            };
            Ok((e, s.body.map(Cow::into_owned)))
        }
        Some(&other) => Err(DecodeError::Format(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: State) -> Entry {
        Entry {
            device: Some("boiler".into()),
            detail: "holding 100 = 123456".into(),
            completed_at: Some(1_733_400_000_100),
            fingerprint: Some(0xdead_beef_0123_4567),
            final_uptime: Some(3_600_000),
            body_len: 30,
            steps: vec!["holding 100 = 1".into()],
            reported: true,
            ..Entry::new(123_456, "m-123456".into(), 1_733_400_000_000, state)
        }
    }

    #[test]
    fn an_entry_and_its_body_come_back_as_they_went() {
        let e = entry(State::Queued);
        let v = encode(&e, Some(b"{\"point\":\"seq\",\"value\":1}"));
        assert_eq!(v[0], V1);
        let (back, body) = decode(&v).unwrap();
        assert_eq!(back, e);
        assert_eq!(body.as_deref(), Some(&b"{\"point\":\"seq\",\"value\":1}"[..]));
    }

    #[test]
    fn a_final_entry_keeps_no_body_and_is_a_fraction_of_its_json() {
        let e = entry(State::Delivered);
        let v = encode(&e, Some(b"body"));
        let (back, body) = decode(&v).unwrap();
        assert_eq!((back, body), (e.clone(), None));
        let json = serde_json::to_vec(&e).unwrap();
        assert!(v.len() * 2 < json.len(), "{} bytes stored, {} as JSON", v.len(), json.len());
    }

    #[test]
    fn a_reads_values_come_back_and_entries_without_stay_v1() {
        let e =
            Entry { values: Some(serde_json::json!({"temperature": 48.2, "pump": true})), ..entry(State::Delivered) };
        let v = encode(&e, None);
        assert_eq!(v[0], V2);
        assert_eq!(decode(&v).unwrap(), (e, None));
        assert_eq!(encode(&entry(State::Delivered), None)[0], V1);
        for n in 0..v.len() {
            let _ = decode(&v[..n]);
        }
    }

    #[test]
    fn an_operators_mark_comes_back_and_an_uncertain_entry_keeps_its_body() {
        use crate::message::{Operator, OperatorAction};
        let op = Operator {
            action: OperatorAction::Retried,
            by: "uid 0 (root)".into(),
            at: 1_733_400_000_500,
            note: Some("checked on site".into()),
            previous: State::Uncertain,
        };
        for values in [None, Some(serde_json::json!({"pump": true}))] {
            let e = Entry { operator: Some(op.clone()), values, ..entry(State::Uncertain) };
            let v = encode(&e, Some(b"body"));
            assert_eq!(v[0], V3);
            assert_eq!(decode(&v).unwrap(), (e, Some(b"body".to_vec())), "kept for a retry");
            for n in 0..v.len() {
                let _ = decode(&v[..n]);
            }
        }
        let expired = encode(&entry(State::Expired), Some(b"b"));
        assert_eq!(decode(&expired).unwrap().1.as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn entries_of_earlier_versions_are_read_from_json() {
        let e = entry(State::Sending);
        let (back, body) = decode(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!((back, body), (e, None));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(decode(b""), Err(DecodeError::Empty)));
        assert!(matches!(decode(&[7, 1, 2]), Err(DecodeError::Format(7))));
        assert!(decode(&[V1, 0xff, 0xff]).is_err());
        assert!(decode(b"{not json").is_err());
        for n in 0..40 {
            let v = encode(&entry(State::Queued), Some(b"xyz"));
            let _ = decode(&v[..n.min(v.len())]);
        }
    }
}
