//! The core's decisions one at a time; `model.rs` checks them together
//! under random interleavings.

use super::*;
use crate::config::{Complete, Reports};

fn settings() -> Settings {
    Settings {
        complete: Complete::AfterDevice,
        handover_after: Duration::from_secs(40),
        max_unacked: 10,
        reports: Reports::All,
    }
}

fn arrival(pkid: u16) -> Arrival {
    Arrival { generation: 1, pkid, inbound: Inbound { id: Some(format!("m{pkid}")), ..Inbound::default() } }
}

fn core() -> Core {
    let mut c = Core::new(settings());
    assert_eq!(c.recover(vec![], vec![]), vec![]);
    c.on_connected(1);
    c
}

fn new(seq: u64) -> Admission {
    Admission::New { seq, state: State::Queued }
}

#[test]
fn nothing_is_dispatched_or_acknowledged_before_the_admission_is_flushed() {
    let mut c = core();
    let t = Instant::now();
    assert_eq!(c.on_received(vec![arrival(1)], true), vec![Action::Admit(vec![arrival(1)])]);
    assert_eq!(c.admitted(vec![(1, 1, new(10))]), vec![Action::Flush]);
    assert_eq!(c.flushed(true, t), vec![Action::Dispatch(10)]);
    let done = Finished { seq: 10, state: State::Delivered, durable: true, reported: false };
    assert_eq!(c.finished(vec![done]), vec![Action::Report(10), Action::Ack { generation: 1, pkid: 1, seq: 10 }]);
}

#[test]
fn a_failed_flush_releases_nothing_until_one_works() {
    let mut c = core();
    let t = Instant::now();
    c.admitted(vec![(1, 1, new(10)), (1, 2, new(11))]);
    assert_eq!(c.flushed(false, t), vec![], "no dispatch, no ack");
    // A later batch must not overtake the first in the ack order.
    assert_eq!(c.admitted(vec![(1, 3, new(12))]), vec![Action::Flush]);
    assert_eq!(c.flushed(true, t), vec![Action::Dispatch(10), Action::Dispatch(11), Action::Dispatch(12)]);
}

#[test]
fn an_outcome_not_yet_durable_waits_for_its_flush() {
    let mut c = core();
    let t = Instant::now();
    c.admitted(vec![(1, 1, new(10))]);
    c.flushed(true, t);
    let done = Finished { seq: 10, state: State::Rejected, durable: false, reported: false };
    assert_eq!(c.finished(vec![done]), vec![Action::Flush]);
    assert_eq!(c.flushed(true, t), vec![Action::Report(10), Action::Ack { generation: 1, pkid: 1, seq: 10 }]);
}

#[test]
fn a_report_waiting_for_its_puback_is_not_sent_again_by_a_reload() {
    let mut c = core();
    let t = Instant::now();
    let out = c.recover(vec![], vec![(5, State::Delivered)]);
    assert_eq!(out, vec![Action::Flush]);
    assert_eq!(c.flushed(true, t), vec![Action::Report(5)]);
    c.buses_stopped();
    let out = c.recover(vec![], vec![(5, State::Delivered)]);
    assert_eq!(out, vec![], "still on its way: not sent twice");
    assert_eq!(c.report_acked(5), vec![Action::MarkReported(5)]);
}

#[test]
fn a_crash_mid_send_is_uncertain_for_a_non_idempotent_device_and_resent_for_an_idempotent_one() {
    let mut c = Core::new(settings());
    let u = |seq, idempotent| Unfinished { seq, sending: true, idempotent, device: "d".into() };
    let out = c.recover(vec![u(1, true), u(2, false)], vec![]);
    assert_eq!(out[..2], [Action::Resend(1), Action::Dispatch(1)]);
    assert!(matches!(&out[2], Action::Finish { seq: 2, outcome } if outcome.state == State::Uncertain));
    assert_eq!(out[3], Action::Flush);
    assert_eq!(c.flushed(true, Instant::now()), vec![Action::Report(2)]);
}

#[test]
fn a_redelivery_of_a_final_message_is_acknowledged_with_its_stored_outcome() {
    let mut c = core();
    let t = Instant::now();
    let dup = Admission::Duplicate { seq: 7, state: State::Delivered, handed_over: false, reported: true };
    c.admitted(vec![(1, 1, dup)]);
    assert_eq!(c.flushed(true, t), vec![Action::Report(7), Action::Ack { generation: 1, pkid: 1, seq: 7 }]);
}

#[test]
fn nothing_is_dispatched_while_the_buses_are_stopped() {
    let mut c = core();
    let t = Instant::now();
    c.admitted(vec![(1, 1, new(10))]);
    c.buses_stopped();
    assert_eq!(c.flushed(true, t), vec![], "the reload's recovery dispatches it");
    let u = Unfinished { seq: 10, sending: false, idempotent: false, device: "d".into() };
    assert_eq!(c.recover(vec![u], vec![]), vec![Action::Dispatch(10)]);
}

#[test]
fn slow_messages_are_handed_over_in_order_without_a_flush() {
    let mut c = core();
    let t = Instant::now();
    c.admitted(vec![(1, 1, new(10)), (1, 2, new(11))]);
    c.flushed(true, t);
    assert_eq!(c.next_wake(), Some(t + Duration::from_secs(40)));
    let later = t + Duration::from_secs(41);
    let out = c.tick(later, true);
    assert_eq!(
        out,
        vec![
            Action::HandOver { seq: 10, why: "not finished within handover_after" },
            Action::HandOver { seq: 11, why: "not finished within handover_after" },
            Action::Ack { generation: 1, pkid: 1, seq: 10 },
            Action::Ack { generation: 1, pkid: 2, seq: 11 },
        ],
        "their admissions are durable: the journal has custody"
    );
    assert_eq!(c.next_wake(), None);
}

#[test]
fn messages_held_on_a_full_disk_are_bounded_and_taken_when_there_is_room() {
    let mut c = core();
    let max = 10 * 2 + BATCH;
    let many: Vec<Arrival> = (1..=2000).map(arrival).collect();
    // Beyond the bound the rest of the connection is dropped and a new
    // connection asked for: acking the held ones, older, stays in order.
    assert_eq!(c.on_received(many, false), vec![Action::Reconnect]);
    assert_eq!(c.footprint().1, max);
    assert_eq!(c.on_received(vec![arrival(2001)], true).len(), 1, "dropped too, the held ones admitted");
    assert_eq!(c.footprint().1, 0);
    c.on_connected(2);
    let fresh = Arrival { generation: 2, ..arrival(1) };
    assert_eq!(c.on_received(vec![fresh.clone()], true), vec![Action::Admit(vec![fresh])]);
}

#[test]
fn packets_of_an_earlier_connection_get_no_ack() {
    let mut c = core();
    let t = Instant::now();
    c.admitted(vec![(1, 1, new(10))]);
    c.on_connected(2);
    assert_eq!(c.flushed(true, t), vec![Action::Dispatch(10)], "dispatched, but its packet id is stale");
    let done = Finished { seq: 10, state: State::Delivered, durable: true, reported: false };
    assert_eq!(c.finished(vec![done]), vec![Action::Report(10)]);
}

#[test]
fn memory_stays_bounded_while_a_device_is_dead_and_the_hub_floods() {
    let mut c = core();
    let t = Instant::now();
    // A broker with an in-flight window of 20 sends whenever one is acked;
    // the device never answers, so only handovers free the window.
    let mut window: std::collections::VecDeque<u16> = Default::default();
    for seq in 1..=100_000u64 {
        assert!(window.len() < 20, "the window stays full: the flood stalled at {seq}");
        let pkid = (seq % 60_000) as u16 + 1;
        window.push_back(pkid);
        let out = c.on_received(vec![arrival(pkid)], true);
        assert!(matches!(&out[..], [Action::Admit(_)]));
        let mut queue: std::collections::VecDeque<Action> = c.admitted(vec![(1, pkid, new(seq))]).into();
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Flush => queue.extend(c.flushed(true, t)),
                Action::Ack { pkid, .. } => assert_eq!(window.pop_front(), Some(pkid), "acks in order"),
                _ => {}
            }
        }
        let (slots, held, reports) = c.footprint();
        assert!(slots <= 10 + 1 && held == 0 && reports == 0, "after {seq}: {slots} slots, {held} held");
    }
}

#[test]
fn a_message_refused_unjournaled_is_acknowledged_only_once_the_hub_has_its_report() {
    let mut c = core();
    let t = Instant::now();
    let refused = crate::pipeline::unjournaled(arrival(1).inbound, "journal full".into(), 0);
    c.admitted(vec![(1, 1, Admission::Refused(Box::new(refused))), (1, 2, new(10))]);
    let out = c.flushed(true, t);
    let seq = match &out[..] {
        [Action::ReportRefused(e), Action::Dispatch(10)] => e.seq,
        other => panic!("{other:?}"),
    };
    assert!(seq > u64::MAX / 2, "its own number, far from the journal's");
    let done = Finished { seq: 10, state: State::Delivered, durable: true, reported: false };
    assert_eq!(c.finished(vec![done]), vec![Action::Report(10)], "both PUBACKs wait behind the refused one");
    assert_eq!(
        c.report_acked(seq),
        vec![Action::Ack { generation: 1, pkid: 1, seq }, Action::Ack { generation: 1, pkid: 2, seq: 10 }]
    );
}

#[test]
fn a_held_redelivery_of_a_message_handed_over_in_the_same_tick_is_acknowledged_with_it() {
    let mut c = core();
    let t = Instant::now();
    c.admitted(vec![(1, 1, new(10))]);
    c.flushed(true, t);
    // The disk fills; the hub sends the same message again (same key).
    assert_eq!(c.on_received(vec![arrival(2)], false), vec![]);
    let later = t + Duration::from_secs(41);
    let out = c.tick(later, true);
    assert!(
        matches!(&out[..], [Action::HandOver { seq: 10, .. }, Action::Ack { pkid: 1, .. }, Action::Admit(_)]),
        "handed over before the redelivery is admitted: {out:?}"
    );
}

#[test]
fn after_a_crash_the_first_unsettled_messages_of_each_idempotent_device_count_as_sent() {
    let u = |seq, device: &str, sending, idempotent| Unfinished { seq, sending, idempotent, device: device.into() };
    let mut list = vec![
        u(1, "boiler", true, true), // marked: flagged anyway, not counted
        u(2, "boiler", false, true),
        u(3, "valve", false, false), // not idempotent: its marks are durable before the wire
        u(4, "boiler", false, true),
        u(5, "pump", false, true),
        u(6, "boiler", false, true),
    ];
    possibly_sent(&mut list, 2);
    let sent: Vec<u64> = list.iter().filter(|u| u.sending).map(|u| u.seq).collect();
    assert_eq!(sent, [1, 2, 4, 5], "two per idempotent device after the marked one; never the valve's");
    let out = Core::new(settings()).recover(list, vec![]);
    assert_eq!(out[..4], [Action::Resend(1), Action::Dispatch(1), Action::Resend(2), Action::Dispatch(2)]);
    assert_eq!(out[4], Action::Dispatch(3));
}
