use super::*;
use crate::journal::{Admitted, Bounds};
use crate::message::{Inbound, Outcome};
use std::path::Path;

fn open(dir: &Path, max_bytes: u64) -> Journal {
    Journal::open(dir, 1 << 20, Bounds { max_messages: 1000, max_bytes }).unwrap().0
}

fn admit(j: &Journal, id: &str, body: &[u8]) -> u64 {
    let inbound = Inbound {
        id: Some(id.into()),
        device: Some("valve".into()),
        body: body.to_vec(),
        expires_at: Some(5),
        ..Inbound::default()
    };
    match j.admit(inbound, None, 1).unwrap() {
        Admitted::New(e) => e.seq,
        other => panic!("{other:?}"),
    }
}

fn asked(note: &str) -> Asked {
    Asked { by: "uid 0 (root)".into(), at: 42, note: Some(note.into()) }
}

/// An uncertain message with a small (inline) and one with a large body.
fn two_uncertain(j: &Journal) -> (u64, u64) {
    let small = admit(j, "small", b"{\"point\":\"sp\",\"value\":1}");
    let large = admit(j, "large", &vec![b'x'; 10_000]);
    for seq in [small, large] {
        j.mark_sending(seq, false).unwrap();
        j.finish(seq, &Outcome::uncertain("no answer"), 10).unwrap();
    }
    (small, large)
}

#[tokio::test]
async fn an_uncertain_message_keeps_its_body_and_a_retry_queues_it_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let (small, large) = {
        let j = open(&dir, 1 << 20);
        let seqs = two_uncertain(&j);
        assert_eq!(j.stats().unfinished, 0);
        assert_eq!(j.stats().body_bytes, 10_024, "kept bodies still count");
        assert_eq!(j.unresolved(10).unwrap().1, 2);
        j.flush().await.unwrap();
        seqs
    };
    let j = open(&dir, 1 << 20);
    assert_eq!(j.stats().body_bytes, 10_024, "counted again at the open");
    let now = crate::message::now_ms();
    assert_eq!(j.stored_body(large).unwrap().map(|b| b.len()), Some(10_000));
    for seq in [small, large] {
        let e = j.retry(seq, Asked { at: now, ..asked("checked") }).unwrap();
        assert_eq!((e.state, e.attempts, e.expires_at, e.reported), (State::Queued, 0, None, false));
        let op = e.operator.unwrap();
        assert_eq!(
            (op.action, op.previous, op.note.as_deref()),
            (OperatorAction::Retried, State::Uncertain, Some("checked"))
        );
    }
    assert_eq!(j.stats().unfinished, 2);
    assert_eq!(j.unfinished().unwrap().len(), 2);
    assert_eq!(j.queues().get(&Some("valve".into())).map(|q| q.0), Some(2));
    assert_eq!(j.unresolved(10).unwrap().1, 0);
    assert_eq!(j.body(small).unwrap().as_deref(), Some(&b"{\"point\":\"sp\",\"value\":1}"[..]));
    assert_eq!(j.body(large).unwrap().map(|b| b.len()), Some(10_000));
    // Received long ago (1 ms after the epoch), retried now: its age
    // starts at the retry, also after a restart.
    assert!(j.age(&j.get(small).unwrap()) < std::time::Duration::from_secs(60));
    j.flush().await.unwrap();
    drop(j);
    let j = open(&dir, 1 << 20);
    assert!(j.age(&j.get(small).unwrap()) < std::time::Duration::from_secs(60), "max_age counts from the retry");
    // Delivered this time: the body goes, as for any delivered message.
    j.finish(large, &Outcome::delivered("holding 10 = 1"), 20).unwrap();
    assert_eq!(j.stats().body_bytes, 24);
    assert!(j.stored_body(large).unwrap().is_none());
    let again = j.retry(large, asked("again"));
    assert!(matches!(again, Err(ActionError::Refused(ref why)) if why.contains("it is delivered")), "{again:?}");
}

#[tokio::test]
async fn resolve_and_drop_end_a_message_for_good_and_refuse_other_states() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(&tmp.path().join("j"), 1 << 20);
    let (small, large) = two_uncertain(&j);
    let e = j.resolve(large, State::Delivered, asked("seen open")).unwrap();
    assert_eq!(e.state, State::Delivered);
    assert!(e.detail.contains("resolved by operator; it was uncertain: no answer"), "{}", e.detail);
    assert_eq!((e.completed_at, e.reported), (Some(42), false));
    assert_eq!(j.stats().body_bytes, 24, "a resolved message keeps no body");
    assert!(matches!(j.resolve(small, State::Queued, asked("x")), Err(ActionError::Refused(_))));
    assert!(matches!(j.resolve(large, State::Rejected, asked("x")), Err(ActionError::Refused(_))));
    assert!(
        matches!(j.drop_queued(small, asked("x")), Err(ActionError::Refused(ref w)) if w.contains("uncertain already"))
    );

    let q = admit(&j, "queued", b"{}");
    let e = j.drop_queued(q, asked("superseded")).unwrap();
    assert_eq!((e.state, e.detail.as_str()), (State::Rejected, "dropped by operator"));
    assert_eq!(e.operator.unwrap().action, OperatorAction::Dropped);
    assert_eq!(j.stats().unfinished, 0);
    j.mark_sending(admit(&j, "on-wire", b"{}"), false).unwrap();
    let seq = j.find("on-wire", Some("valve")).unwrap()[0].seq;
    assert!(matches!(j.drop_queued(seq, asked("x")), Err(ActionError::Refused(ref w)) if w.contains("on the wire")));
    assert_eq!(j.find("queued", None).unwrap().len(), 1);
    assert!(j.find("queued", Some("boiler")).unwrap().is_empty());
}

#[tokio::test]
async fn new_messages_go_before_kept_bodies_at_the_byte_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(&tmp.path().join("j"), 12_000);
    let large = admit(&j, "large", &vec![b'x'; 10_000]);
    let small = admit(&j, "small", b"{}");
    for seq in [large, small] {
        j.finish(seq, &Outcome::uncertain("no answer"), 10).unwrap();
    }
    // 10,002 bytes kept; a new 5,000-byte message needs the oldest one's room.
    admit(&j, "new", &vec![b'y'; 5_000]);
    assert_eq!(j.stats().body_bytes, 5_002);
    assert!(j.stored_body(large).unwrap().is_none(), "the oldest kept body went first");
    assert!(j.stored_body(small).unwrap().is_some(), "only as many as needed");
    let r = j.retry(large, asked("x"));
    assert!(matches!(r, Err(ActionError::Refused(ref w)) if w.contains("no longer in the journal")), "{r:?}");
    assert_eq!(j.get(large).unwrap().state, State::Uncertain, "still there to resolve");
    j.resolve(large, State::Rejected, asked("gave up")).unwrap();
    assert_eq!(j.stats().body_bytes, 5_002, "nothing counted twice");
}

#[tokio::test]
async fn kept_bodies_stay_when_forgetting_them_would_not_make_room() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(&tmp.path().join("j"), 12_000);
    let kept = admit(&j, "kept", &vec![b'x'; 1_000]);
    j.finish(kept, &Outcome::uncertain("no answer"), 10).unwrap();
    admit(&j, "queued", &vec![b'q'; 10_000]);
    // 11,000 held; 2,500 more cannot fit even without the kept 1,000.
    let inbound =
        Inbound { id: Some("big".into()), device: Some("valve".into()), body: vec![b'b'; 2_500], ..Default::default() };
    assert!(matches!(j.admit(inbound, None, 1).unwrap(), Admitted::Full { .. }));
    assert!(j.stored_body(kept).unwrap().is_some(), "not forgotten for nothing");
}

#[tokio::test]
async fn at_the_count_bound_unresolved_messages_are_forgotten_last() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(&tmp.path().join("j"), 1 << 20, Bounds { max_messages: 2, max_bytes: 1 << 20 }).unwrap().0;
    let unresolved = admit(&j, "unresolved", b"{}");
    let delivered = admit(&j, "delivered", b"{}");
    j.finish(unresolved, &Outcome::uncertain("no answer"), 10).unwrap();
    j.finish(delivered, &Outcome::delivered("ok"), 11).unwrap();
    for seq in [unresolved, delivered] {
        j.mark_reported(seq).unwrap();
        j.acked(seq);
    }
    admit(&j, "new", b"{}");
    assert!(j.get(unresolved).is_ok(), "the older, unresolved one stays");
    assert!(matches!(j.get(delivered), Err(JournalError::Missing(_))), "the delivered one went");
    // When nothing else may go ('new' is not reported yet), it goes too.
    admit(&j, "newer", b"{}");
    assert!(matches!(j.get(unresolved), Err(JournalError::Missing(_))));
}

#[tokio::test]
async fn a_late_report_acknowledgement_does_not_mark_a_retried_message_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(&tmp.path().join("j"), 1 << 20);
    let seq = admit(&j, "m", b"{}");
    j.finish(seq, &Outcome::uncertain("no answer"), 10).unwrap();
    j.retry(seq, asked("x")).unwrap();
    j.mark_reported(seq).unwrap();
    assert!(!j.get(seq).unwrap().reported, "its next outcome is still to be reported");
    j.finish(seq, &Outcome::delivered("ok"), 20).unwrap();
    j.mark_reported(seq).unwrap();
    assert!(j.get(seq).unwrap().reported);
}
