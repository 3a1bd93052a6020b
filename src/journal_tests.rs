use super::*;
use crate::message::Outcome;

fn inbound(id: Option<&str>, body: &[u8]) -> Inbound {
    Inbound { id: id.map(str::to_string), device: Some("boiler".into()), body: body.to_vec(), ..Inbound::default() }
}

fn bounds() -> Bounds {
    Bounds { max_messages: 1000, max_bytes: 1 << 20 }
}

fn open(dir: &Path) -> Journal {
    let (j, report) = Journal::open(dir, 1 << 20, bounds()).unwrap();
    assert!(report.moved_aside.is_none());
    j
}

fn new_entry(a: Admitted) -> Entry {
    match a {
        Admitted::New(e) => e,
        other => panic!("expected New, got {other:?}"),
    }
}

#[tokio::test]
async fn admitted_messages_survive_reopen_in_arrival_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    {
        let j = open(&dir);
        for i in 0..5 {
            new_entry(j.admit(inbound(Some(&format!("m{i}")), b"{}"), 1000 + i).unwrap());
        }
        j.flush().await.unwrap();
    }
    let j = open(&dir);
    let ids: Vec<String> = j.unfinished().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(j.stats().unfinished, 5);
    assert_eq!(j.stats().body_bytes, 10);
}

#[tokio::test]
async fn a_known_id_is_a_duplicate_with_its_stored_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(&tmp.path().join("j"));
    let e = new_entry(j.admit(inbound(Some("abc"), b"x"), 1).unwrap());
    j.mark_sending(e.seq, false).unwrap();
    j.finish(e.seq, &Outcome::delivered("wrote holding 1"), 2).unwrap();
    match j.admit(inbound(Some("abc"), b"x"), 3).unwrap() {
        Admitted::Duplicate(d) => {
            assert_eq!(d.state, State::Delivered);
            assert_eq!(d.detail, "wrote holding 1");
            assert_eq!(d.attempts, 1);
        }
        other => panic!("{other:?}"),
    }
    // The body is dropped once final; the outcome stays.
    assert_eq!(j.body(e.seq).unwrap(), None);
    assert_eq!(j.stats().body_bytes, 0);
}

#[tokio::test]
async fn messages_without_id_get_distinct_ids_and_never_dedupe() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(&tmp.path().join("j"));
    let a = new_entry(j.admit(inbound(None, b"same"), 1).unwrap());
    let b = new_entry(j.admit(inbound(None, b"same"), 1).unwrap());
    assert_ne!(a.id, b.id);
    assert!(a.id_generated && b.id_generated);
}

#[tokio::test]
async fn rejected_at_arrival_is_final_and_keeps_no_body() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(&tmp.path().join("j"));
    let mut m = inbound(Some("bad"), b"zzz");
    m.reject = Some("malformed topic".into());
    let e = new_entry(j.admit(m, 5).unwrap());
    assert_eq!(e.state, State::Rejected);
    assert_eq!(e.detail, "malformed topic");
    assert_eq!(j.body(e.seq).unwrap(), None);
    assert!(j.unfinished().unwrap().is_empty());
    assert_eq!(j.unreported().unwrap().len(), 1);
}

#[tokio::test]
async fn prune_removes_reported_outcomes_past_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(&tmp.path().join("j"));
    let e = new_entry(j.admit(inbound(Some("old"), b"x"), 0).unwrap());
    j.finish(e.seq, &Outcome::delivered("ok"), 1_000).unwrap();
    let window = Duration::from_secs(10);
    assert_eq!(j.prune(20_000, window).unwrap(), 0, "not reported yet: kept");
    j.update(e.seq, |e| e.reported = true).unwrap();
    assert_eq!(j.prune(5_000, window).unwrap(), 0, "inside the window");
    assert_eq!(j.prune(20_000, window).unwrap(), 1);
    assert!(j.lookup("old").unwrap().is_none());
    new_entry(j.admit(inbound(Some("old"), b"x"), 30_000).unwrap());
}

#[tokio::test]
async fn bounds_evict_old_outcomes_first_then_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(&tmp.path().join("j"), 1 << 20, Bounds { max_messages: 3, max_bytes: 1 << 20 }).unwrap();
    let done = new_entry(j.admit(inbound(Some("a"), b"1"), 0).unwrap());
    j.finish(done.seq, &Outcome::delivered("ok"), 1).unwrap();
    j.update(done.seq, |e| e.reported = true).unwrap();
    new_entry(j.admit(inbound(Some("b"), b"1"), 2).unwrap());
    new_entry(j.admit(inbound(Some("c"), b"1"), 3).unwrap());
    // Full: the finished "a" is forgotten to make room.
    new_entry(j.admit(inbound(Some("d"), b"1"), 4).unwrap());
    assert!(j.lookup("a").unwrap().is_none());
    match j.admit(inbound(Some("e"), b"1"), 5).unwrap() {
        Admitted::Full { detail, .. } => assert!(detail.contains("journal full"), "{detail}"),
        other => panic!("{other:?}"),
    }
    let (j2, _) = Journal::open(&tmp.path().join("j2"), 1 << 20, Bounds { max_messages: 100, max_bytes: 10 }).unwrap();
    new_entry(j2.admit(inbound(Some("a"), b"12345678"), 0).unwrap());
    assert!(matches!(j2.admit(inbound(Some("b"), b"12345"), 0).unwrap(), Admitted::Full { .. }));
}

#[tokio::test]
async fn forget_lets_a_redelivery_in_as_new() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(&tmp.path().join("j"));
    let e = new_entry(j.admit(inbound(Some("x"), b"1"), 0).unwrap());
    j.forget(e.seq).unwrap();
    assert_eq!(j.stats(), Stats::default());
    new_entry(j.admit(inbound(Some("x"), b"1"), 0).unwrap());
}

#[tokio::test]
async fn a_corrupt_store_is_moved_aside_and_an_empty_one_started() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    {
        let j = open(&dir);
        for i in 0..50 {
            j.admit(inbound(Some(&format!("m{i}")), &[7u8; 100]), i).unwrap();
        }
        j.flush().await.unwrap();
    }
    // Overwrite every file of the store with garbage.
    for f in std::fs::read_dir(&dir).unwrap() {
        let p = f.unwrap().path();
        if p.is_file() {
            let len = std::fs::metadata(&p).unwrap().len().max(64) as usize;
            std::fs::write(&p, vec![0xA5u8; len]).unwrap();
        }
    }
    let (j, report) = Journal::open(&dir, 1 << 20, bounds()).unwrap();
    let (aside, why) = report.moved_aside.expect("moved aside");
    assert!(aside.exists(), "{aside:?}");
    assert!(!why.is_empty());
    assert!(j.unfinished().unwrap().is_empty());
    new_entry(j.admit(inbound(Some("new"), b"1"), 0).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_are_shared_and_skipped_when_nothing_changed() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    j.flush().await.unwrap();
    let base = j.flushes();
    j.flush().await.unwrap();
    assert_eq!(j.flushes(), base, "nothing written: no flush");

    new_entry(j.admit(inbound(Some("a"), b"x"), 1).unwrap());
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let j = j.clone();
            tokio::spawn(async move { j.flush().await })
        })
        .collect();
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    let used = j.flushes() - base;
    assert!((1..=2).contains(&used), "eight callers after one write: {used} flushes");

    // Durable for real: reopened, the entry is there.
    drop(j);
    let j = open(dir.path());
    assert!(j.lookup("a").unwrap().is_some());
}

#[tokio::test]
async fn a_journal_in_use_by_another_process_is_refused_not_moved_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    let first = open(&dir);
    new_entry(first.admit(inbound(Some("kept"), b"{}"), 1).unwrap());
    first.flush().await.unwrap();
    let err = Journal::open(&dir, 1 << 20, bounds()).err().expect("a second open must fail");
    assert!(matches!(err, JournalError::InUse(_)), "{err}");
    assert!(err.to_string().contains("in use by another process"), "{err}");
    let siblings: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(siblings, [std::ffi::OsString::from("journal")], "nothing moved aside");
    drop(first);
    assert!(open(&dir).lookup("kept").unwrap().is_some());
}

#[tokio::test]
async fn a_sealed_store_that_lost_entries_is_unusable_and_moved_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    {
        let j = open(&dir);
        for i in 0..3 {
            new_entry(j.admit(inbound(Some(&format!("m{i}")), b"{}"), 1).unwrap());
        }
        j.seal().await.unwrap();
    }
    // A clean reopen checks the seal, passes, and removes it.
    {
        let j = open(&dir);
        assert_eq!(j.unfinished().unwrap().len(), 3);
        assert!(!dir.join("c2d-sealed").exists(), "the seal goes once the store is open");
        j.seal().await.unwrap();
    }
    // Damage that sled cannot see: the seal says 4 entries, the store has 3.
    std::fs::write(dir.join("c2d-sealed"), "entries 4 newest 99\n").unwrap();
    let (j, report) = Journal::open(&dir, 1 << 20, bounds()).unwrap();
    let (aside, why) = report.moved_aside.expect("moved aside");
    assert!(why.contains("damaged"), "{why}");
    assert!(aside.join("db").exists());
    assert_eq!(j.stats().entries, 0);
}

#[tokio::test]
async fn requeue_keeps_the_confirmed_steps_across_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let seq = {
        let j = open(&dir);
        let e = new_entry(j.admit(inbound(Some("multi"), b"{}"), 1).unwrap());
        j.mark_sending(e.seq, false).unwrap();
        let q = j.requeue(e.seq, &["holding 10 = 1".to_string()]).unwrap();
        assert_eq!((q.state, q.attempts, q.steps.as_slice()), (State::Queued, 1, &["holding 10 = 1".to_string()][..]));
        // A later requeue never forgets steps.
        j.mark_sending(e.seq, false).unwrap();
        assert_eq!(j.requeue(e.seq, &[]).unwrap().steps, ["holding 10 = 1"]);
        j.flush().await.unwrap();
        e.seq
    };
    let j = open(&dir);
    let e = j.unfinished().unwrap().pop().unwrap();
    assert_eq!((e.seq, e.state, e.steps), (seq, State::Queued, vec!["holding 10 = 1".to_string()]));
    j.finish(seq, &Outcome::delivered("done"), 2).unwrap();
    let f = j.requeue(seq, &["x".into(), "y".into()]).unwrap();
    assert_eq!((f.state, f.steps), (State::Delivered, vec!["holding 10 = 1".to_string()]), "a final entry stays");
}
