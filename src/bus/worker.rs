//! The task that owns one bus. It takes jobs from the pipeline, lets the
//! scheduler pick the next one, marks it `sending` in the journal (flushed
//! first when a repeat would matter), puts it on the wire, and reports the
//! final outcome once a flush covers it (see `commit.rs`). Only this task
//! touches the port or connection.

use super::commit::{Commit, MAX_AHEAD};
use super::modbus::ModbusLink;
use super::schedule::{Scheduler, Verdict};
use super::seen::Seen;
use super::serial::SerialLink;
use super::{Done, DropJob, Job, Poll, Reply, Request, Wire, Work};
use crate::journal::Journal;
use crate::message::Outcome;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

pub enum Link {
    Modbus(ModbusLink),
    Serial(SerialLink),
}

impl Link {
    async fn connect(&mut self) -> Result<(), super::ConnectError> {
        match self {
            Link::Modbus(l) => l.connect().await,
            Link::Serial(l) => l.connect().await,
        }
    }
}

/// Handle the pipeline keeps for each bus.
pub struct BusHandle {
    pub jobs: mpsc::UnboundedSender<Work>,
    pub task: JoinHandle<()>,
}

pub struct BusSettings {
    pub timeout: Duration,
    pub breaker_after: u32,
    pub breaker_max: Duration,
    /// Where the operator surface learns of connections, isolations and
    /// request times.
    pub live: std::sync::Arc<crate::live::Live>,
}

/// Starts the worker of bus `name`.
pub fn spawn(
    name: String,
    link: Link,
    settings: BusSettings,
    journal: Journal,
    done: mpsc::UnboundedSender<Done>,
    shutdown: watch::Receiver<bool>,
) -> BusHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let sched = Scheduler::new(settings.timeout, settings.breaker_after, settings.breaker_max);
    let seen = Seen::new(settings.live, &name);
    let task = tokio::spawn(run(name, link, sched, seen, rx, journal, done, shutdown));
    BusHandle { jobs: tx, task }
}

enum Step {
    /// Final; the verdict also tells the breaker what the attempt showed.
    Final(Outcome, Verdict),
    Retry {
        timeout: bool,
    },
}

#[allow(clippy::too_many_arguments)]
async fn run(
    name: String,
    mut link: Link,
    mut sched: Scheduler<Job>,
    mut seen: Seen,
    mut rx: mpsc::UnboundedReceiver<Work>,
    journal: Journal,
    done: mpsc::UnboundedSender<Done>,
    mut shutdown: watch::Receiver<bool>,
) {
    let sweep_every = Duration::from_millis(500);
    let mut sweep_at = Instant::now() + sweep_every;
    let mut polls: VecDeque<Poll> = VecDeque::new();
    // Outcomes recorded but not yet flushed wait here for the next flush:
    // one in the background while the wire goes on, or the one before a
    // request to a non-idempotent device (so a busy bus pays at most one
    // flush per message, and usually much less).
    let mut commit = Commit::new(journal.clone(), done);
    loop {
        while let Ok(work) = rx.try_recv() {
            if accept(&mut sched, &mut polls, work, &journal, &mut commit) {
                sweep_at = Instant::now();
            }
        }
        if *shutdown.borrow() {
            break;
        }
        commit.poll();
        let now = Instant::now();
        if now >= sweep_at {
            for job in sched.sweep(|j| j.deadline.as_ref().is_some_and(|(at, _)| *at <= now)) {
                let outcome = Outcome::expired(expiry_detail(&job));
                finish(&journal, &mut commit, job, outcome);
            }
            sweep_at = now + sweep_every;
        }
        if let Some((dev, job)) = sched.next_ready(now) {
            let dev = dev.to_string();
            let idempotent = job.idempotent;
            let step = attempt(&mut link, &journal, job, &mut commit, &mut seen).await;
            let verdict = match &step {
                Step::Final(_, v) => *v,
                Step::Retry { timeout } => Verdict::Retry { timeout: *timeout },
            };
            let popped = sched.record(&dev, verdict, Instant::now(), fastrand::f64());
            let timed_out = matches!(verdict, Verdict::Retry { timeout: true } | Verdict::Done { timeout: true });
            if timed_out && sched.is_isolated(&dev) {
                tracing::warn!(bus = %name, device = %dev, "device keeps timing out: isolated by the circuit breaker, other devices on the bus go on");
            }
            seen.attempted(&dev, timed_out, || sched.is_isolated(&dev));
            match (step, popped) {
                (Step::Final(outcome, _), Some(job)) => finish(&journal, &mut commit, job, outcome),
                (Step::Retry { .. }, None) => {}
                _ => unreachable!("the scheduler pops exactly on a final verdict"),
            }
            // The outcome starts for the disk while the next request goes
            // out, unless that request's own flush (a non-idempotent
            // device's, likely the same one) will take it anyway.
            if idempotent || !sched.has_ready(Instant::now()) {
                commit.kick();
            }
            continue;
        }
        commit.kick();
        // No write is ready: one telemetry poll, then look for writes again.
        if let Some(p) = polls.pop_front() {
            if !sched.is_isolated(&p.device) {
                poll(&mut link, p, &mut seen).await;
            } else if let Reply::Caller(tx) = p.reply {
                let _ = tx.send(Err(format!("device {} keeps timing out: isolated by the circuit breaker", p.device)));
            }
            continue;
        }
        let wake = sched.next_wake().map_or(sweep_at, |w| w.min(sweep_at));
        tokio::select! {
            work = rx.recv() => match work {
                Some(work) => if accept(&mut sched, &mut polls, work, &journal, &mut commit) {
                    sweep_at = Instant::now();
                },
                None => break,
            },
            _ = commit.settle(), if commit.busy() => commit.kick(),
            _ = sleep_until(wake) => {}
            _ = shutdown.changed() => {}
        }
    }
    if commit.flush_all().await.is_err() {
        tracing::error!(bus = %name, "cannot flush the last outcomes to the journal");
    }
    tracing::debug!(bus = %name, left = sched.len(), "bus worker stopped");
}

/// Queues a write, or a poll (a newer poll of a device replaces a waiting
/// one). Says whether the write is past its deadline already (the pipeline
/// feeds a device a few jobs at a time: a backlog that expired while it
/// waited there is swept at once, not a few jobs every sweep).
fn accept(
    sched: &mut Scheduler<Job>,
    polls: &mut VecDeque<Poll>,
    work: Work,
    journal: &Journal,
    commit: &mut Commit,
) -> bool {
    match work {
        Work::Drop(d) => {
            drop_job(sched, d, journal, commit);
            false
        }
        Work::Write(job) => {
            let expired = job.deadline.as_ref().is_some_and(|(at, _)| *at <= Instant::now());
            let dev = job.device.clone();
            sched.push(&dev, job);
            expired
        }
        Work::Poll(p) if !p.is_telemetry() => {
            // A caller's read goes ahead of telemetry polls (after other
            // callers' reads), still behind every write that is ready.
            let at = polls.iter().position(Poll::is_telemetry).unwrap_or(polls.len());
            polls.insert(at, p);
            false
        }
        Work::Poll(p) => {
            match polls.iter_mut().find(|q| q.device == p.device && q.is_telemetry()) {
                Some(q) => *q = p,
                None => polls.push_back(p),
            }
            false
        }
    }
}

/// An operator's `queue drop`: a job held here (not on the wire: the
/// worker takes work between requests) leaves the queue `rejected`; its
/// outcome goes the way of every other (flushed, then reported).
fn drop_job(sched: &mut Scheduler<Job>, d: DropJob, journal: &Journal, commit: &mut Commit) {
    let Some((device, at, job)) = sched.take(|j| j.seq == d.seq) else {
        let _ = d.reply.send(Err(None));
        return;
    };
    match journal.drop_queued(d.seq, d.asked) {
        Ok(e) => {
            let outcome = Outcome::rejected(e.detail.clone());
            let _ = d.reply.send(Ok(e.clone()));
            let done = Done {
                seq: job.seq,
                device: job.device,
                outcome,
                attempts: job.attempts,
                durable: false,
                entry: Some(e),
            };
            commit.record(done);
        }
        Err(why) => {
            let _ = d.reply.send(Err(Some(why.to_string())));
            sched.put_back(&device, at, job);
        }
    }
}

/// Reads a device's points and hands the reading (or, to a caller, why
/// not) back.
async fn poll(link: &mut Link, p: Poll, seen: &mut Seen) {
    // The link's state is shown whether writes or only polls use it.
    let connected = link.connect().await;
    seen.connected(connected.as_ref().map(|_| ()));
    let read = match connected {
        Ok(()) => read_points(link, &p).await,
        Err(e) => Err(format!("cannot reach device {}: {e}", p.device)),
    };
    match p.reply {
        Reply::Telemetry(tx) => match read {
            Ok(r) => {
                let _ = tx.send(r);
            }
            Err(e) => tracing::debug!(device = %p.device, error = %e, "telemetry read failed"),
        },
        Reply::Caller(tx) => {
            let _ = tx.send(read);
        }
    }
}

async fn read_points(link: &mut Link, p: &Poll) -> Result<crate::message::Reading, String> {
    let Link::Modbus(l) = link else {
        return Err(format!("device {} is on a serial bus: it has no points to read", p.device));
    };
    let values = read_values(l, p.unit, &p.reads).await?;
    let at_ms = crate::message::now_ms();
    Ok(crate::message::Reading { device: p.device.clone(), at_ms, values })
}

/// Reads points of unit `unit`, decoded (type, word order, scale).
async fn read_values(
    l: &mut ModbusLink,
    unit: u8,
    points: &[(String, crate::config::PointConfig)],
) -> Result<Vec<(String, serde_json::Value)>, String> {
    let mut values = Vec::with_capacity(points.len());
    for (name, point) in points {
        let (words, bits) = l
            .read(unit, point.table, point.address, point.ty.width())
            .await
            .map_err(|e| format!("reading point {name}: {e}"))?;
        if let Some(v) = crate::router::encode::decode(point, &words, &bits) {
            values.push((name.clone(), v));
        }
    }
    Ok(values)
}

/// Records the outcome in the journal; it reaches the pipeline once a
/// flush covers it (see `commit.rs`).
fn finish(journal: &Journal, commit: &mut Commit, job: Job, outcome: Outcome) {
    let entry = match journal.record(job.seq, &outcome, crate::message::now_ms(), job.attempts) {
        Ok((e, _)) => Some(e),
        Err(e) => {
            tracing::error!(message_id = %job.id, error = %e, "cannot record an outcome");
            None
        }
    };
    commit.record(Done { seq: job.seq, device: job.device, outcome, attempts: job.attempts, durable: false, entry });
}

fn expiry_detail(job: &Job) -> String {
    let why = job.deadline.as_ref().map_or("expired", |(_, why)| why.as_str());
    let tries = match &job.last_error {
        Some(e) => format!("after {} attempts; last error: {e}", job.attempts),
        None => String::new(),
    };
    if job.acked.is_empty() {
        return [format!("{why} before delivery"), tries].join(" ").trim_end().to_string();
    }
    // Part of a multi-step command was written: say which part.
    let detail = format!("{why} after writing: {}; not written: {}", job.acked.join("; "), unwritten(job));
    if tries.is_empty() {
        detail
    } else {
        format!("{detail} ({tries})")
    }
}

/// The steps of a multi-step command not (yet) confirmed by the device.
fn unwritten(job: &Job) -> String {
    match &job.request {
        Request::Modbus(writes) => {
            writes.iter().skip(job.progress).map(|w| w.describe()).collect::<Vec<_>>().join("; ")
        }
        Request::Serial(_) => "the rest".into(),
        Request::Read(_) => "the read".into(),
    }
}

/// Whether `done`, a confirmed step as journaled, is write `w`: its
/// description, maybe followed by a note in brackets (" (device answered
/// acknowledge ...)").
fn step_is(w: &crate::router::modbus::Write, done: &str) -> bool {
    let d = w.describe();
    done.strip_prefix(d.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with(" ("))
}

/// Whether the steps a job resumes after (from the journal) are the first
/// steps of its request as routed now. A reload may have changed the
/// device's points: then the rest cannot be sent as the same command.
fn resumes_cleanly(job: &Job) -> bool {
    if job.progress == 0 {
        return true;
    }
    match &job.request {
        Request::Modbus(writes) => {
            job.progress == job.acked.len()
                && job.progress <= writes.len()
                && writes.iter().zip(&job.acked).all(|(w, done)| step_is(w, done))
        }
        Request::Serial(_) | Request::Read(_) => false,
    }
}

/// One try of the job at the head of its device's queue. A flush before
/// the wire also makes the recorded outcomes durable; they are handed on.
async fn attempt(link: &mut Link, journal: &Journal, job: &mut Job, commit: &mut Commit, seen: &mut Seen) -> Step {
    if job.deadline.as_ref().is_some_and(|(at, _)| Instant::now() >= *at) {
        return Step::Final(Outcome::expired(expiry_detail(job)), Verdict::Dropped);
    }
    if job.attempts >= job.max_attempts {
        let last = job.last_error.as_deref().unwrap_or("none");
        let why = format!("gave up after {} attempts; last error: {last}", job.attempts);
        return Step::Final(Outcome::expired(partial(job, why)), Verdict::Dropped);
    }
    if !resumes_cleanly(job) {
        let why = "the device's configuration changed since part of this command was written; the rest is not sent";
        return Step::Final(Outcome::rejected(partial(job, why.into())), Verdict::Dropped);
    }
    // Connecting sends nothing: its failures cost no attempt.
    let connected = link.connect().await;
    seen.connected(connected.as_ref().map(|_| ()));
    if let Err(e) = connected {
        tracing::debug!(device = %job.device, error = %e, "cannot reach the device");
        job.last_error = Some(e.to_string());
        return Step::Retry { timeout: false };
    }
    // A read changes nothing on the device: no marks, no flush, sent again
    // as often as it takes.
    if let (Request::Read(points), Link::Modbus(l)) = (&job.request, &mut *link) {
        job.attempts += 1;
        return match read_values(l, job.unit, points).await {
            Ok(values) => {
                let names: Vec<&str> = values.iter().map(|(n, _)| n.as_str()).collect();
                let detail = format!("read {}", names.join(", "));
                let values: serde_json::Map<String, serde_json::Value> = values.into_iter().collect();
                Step::Final(Outcome::read(detail, values.into()), Verdict::Done { timeout: false })
            }
            Err(e) => {
                job.last_error = Some(e);
                requeue(journal, job);
                Step::Retry { timeout: false }
            }
        };
    }
    // An idempotent device's plain attempt leaves no `sending` mark (the
    // entry's next write, its outcome or a requeue, records the attempt);
    // a resend after an unclear exchange is marked, since its report must
    // say so. Either way its request goes out at once, and recovery after
    // a crash sends the first MAX_AHEAD unfinished messages of such a
    // device again, saying in their reports that they may have been sent
    // before: so no more than that many may be unsettled (sent, outcome not
    // durable) at a time. A non-idempotent device's mark is durable before
    // the wire: a crash after this point finds `sending` and reports
    // `uncertain` rather than silently repeating the command. A flush before
    // the wire also makes the earlier outcomes durable, so a crash can never
    // replay an older command after a newer one.
    if !job.idempotent || job.unconfirmed {
        if let Err(e) = journal.mark_sending(job.seq, job.unconfirmed) {
            tracing::error!(message_id = %job.id, error = %e, "cannot record `sending` in the journal: not sending");
            job.last_error = Some(e.to_string());
            return Step::Retry { timeout: false };
        }
    }
    let flush_first = !job.idempotent || journal.unsettled_besides(&job.device, job.seq) >= MAX_AHEAD;
    if flush_first {
        if let Err(e) = commit.flush_all().await {
            tracing::error!(message_id = %job.id, error = %e, "cannot flush `sending` to the journal: not sending");
            job.last_error = Some(e.to_string());
            requeue(journal, job);
            return Step::Retry { timeout: false };
        }
    } else {
        commit.kick();
    }
    if job.idempotent {
        journal.sent(&job.device, job.seq);
    }
    job.attempts += 1;
    tracing::debug!(message_id = %job.id, device = %job.device, attempt = job.attempts, "sending");
    let on_wire = Instant::now();
    let wire = match (&job.request, &mut *link) {
        (Request::Modbus(writes), Link::Modbus(l)) => {
            let mut last = Wire::Acked(String::new());
            while job.progress < writes.len() {
                last = l.write(job.unit, &writes[job.progress]).await;
                match &last {
                    Wire::Acked(d) => {
                        job.acked.push(d.clone());
                        job.progress += 1;
                    }
                    _ => break,
                }
            }
            match last {
                Wire::Acked(_) => Wire::Acked(job.acked.join("; ")),
                other => other,
            }
        }
        (Request::Serial(body), Link::Serial(l)) => l.send(body).await,
        _ => {
            let why = "this kind of request cannot go on this kind of bus".to_string();
            return Step::Final(Outcome::rejected(why), Verdict::Dropped);
        }
    };
    seen.request(on_wire.elapsed());
    let answered = Verdict::Done { timeout: false };
    match wire {
        Wire::Acked(detail) => Step::Final(Outcome::delivered(detail), answered),
        Wire::Refused(why) => Step::Final(Outcome::rejected(partial(job, why)), answered),
        Wire::NotSent(why) => {
            job.last_error = Some(why);
            requeue(journal, job);
            Step::Retry { timeout: false }
        }
        Wire::NotRun { reason, timeout } => {
            job.last_error = Some(reason);
            requeue(journal, job);
            Step::Retry { timeout }
        }
        Wire::Unconfirmed { reason, timeout } => {
            if job.idempotent {
                job.last_error = Some(reason);
                job.unconfirmed = true;
                requeue(journal, job);
                Step::Retry { timeout }
            } else {
                let why = format!("{reason}; not sent again because device {} is not idempotent", job.device);
                Step::Final(Outcome::uncertain(partial(job, why)), Verdict::Done { timeout })
            }
        }
    }
}

/// Prefixes what was already done when a multi-write message stops midway.
fn partial(job: &Job, why: String) -> String {
    if job.acked.is_empty() {
        why
    } else {
        format!("{why} (already written: {})", job.acked.join("; "))
    }
}

/// Back to `queued` after an attempt that will be retried, with the steps
/// the device confirmed so far (not flushed: a crash before the next flush
/// leaves `sending`, which errs on the safe side).
fn requeue(journal: &Journal, job: &Job) {
    if let Err(e) = journal.requeue(job.seq, &job.acked, job.unconfirmed, job.attempts) {
        tracing::error!(message_id = %job.id, error = %e, "journal update failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::modbus::Target;
    use crate::journal::Bounds;
    use crate::message::{Inbound, State};
    use crate::router::modbus::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn a_callers_read_goes_ahead_of_telemetry_polls_and_is_never_replaced() {
        let mut sched: Scheduler<Job> = Scheduler::new(Duration::from_secs(1), 3, Duration::from_secs(60));
        let mut polls = VecDeque::new();
        let (readings, _rx) = mpsc::unbounded_channel();
        let poll = |device: &str, reply| Poll { device: device.into(), unit: 1, reads: Vec::new(), reply };
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) =
            Journal::open(&tmp.path().join("j"), 1 << 20, Bounds { max_messages: 10, max_bytes: 1 << 20 }).unwrap();
        let mut commit = Commit::new(journal.clone(), mpsc::unbounded_channel().0);
        let mut accept = |sched: &mut Scheduler<Job>, polls: &mut VecDeque<Poll>, work| {
            accept(sched, polls, work, &journal, &mut commit)
        };
        let caller = || Reply::Caller(tokio::sync::oneshot::channel().0);
        accept(&mut sched, &mut polls, Work::Poll(poll("a", Reply::Telemetry(readings.clone()))));
        accept(&mut sched, &mut polls, Work::Poll(poll("b", Reply::Telemetry(readings.clone()))));
        accept(&mut sched, &mut polls, Work::Poll(poll("b", caller())));
        accept(&mut sched, &mut polls, Work::Poll(poll("a", caller())));
        accept(&mut sched, &mut polls, Work::Poll(poll("b", Reply::Telemetry(readings.clone()))));
        let order: Vec<(&str, bool)> = polls.iter().map(|p| (p.device.as_str(), p.is_telemetry())).collect();
        assert_eq!(
            order,
            [("b", false), ("a", false), ("a", true), ("b", true)],
            "callers first, in order; a newer poll replaces the telemetry one only"
        );
    }

    /// A Modbus TCP device that takes one connection, echoes its first
    /// `answer` FC6 writes, then drops the connection and stops listening
    /// (further connections are refused). Returns (address, value) written.
    async fn dropping_device(listener: TcpListener, answer: usize) -> Vec<(u16, u16)> {
        let (mut s, _) = listener.accept().await.unwrap();
        drop(listener);
        let mut got = Vec::new();
        for _ in 0..answer {
            let mut frame = [0u8; 12];
            s.read_exact(&mut frame).await.unwrap();
            assert_eq!(frame[7], 6, "FC6 expected: {frame:?}");
            got.push((u16::from_be_bytes([frame[8], frame[9]]), u16::from_be_bytes([frame[10], frame[11]])));
            s.write_all(&frame).await.unwrap();
        }
        got
    }

    fn job(seq: u64, entry_steps: &[String]) -> Job {
        let writes =
            vec![Write::SingleRegister { address: 10, value: 1 }, Write::SingleRegister { address: 11, value: 2 }];
        Job {
            seq,
            id: "m-1".into(),
            device: "valve".into(),
            unit: 1,
            idempotent: false,
            request: Request::Modbus(writes),
            deadline: None,
            max_attempts: 10,
            attempts: 0,
            progress: entry_steps.len(),
            acked: entry_steps.to_vec(),
            last_error: None,
            unconfirmed: false,
        }
    }

    fn worker(address: String, journal: &Journal) -> (BusHandle, mpsc::UnboundedReceiver<Done>, watch::Sender<bool>) {
        let link = Link::Modbus(ModbusLink::new(Target::Tcp { address }, Duration::from_millis(500)));
        let settings = BusSettings {
            timeout: Duration::from_millis(500),
            breaker_after: 3,
            breaker_max: Duration::from_secs(5),
            live: Default::default(),
        };
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        (spawn("field".into(), link, settings, journal.clone(), done_tx, stop_rx), done_rx, stop_tx)
    }

    /// A journal in `dir` holding one message for `valve`; its sequence.
    fn journal_with_one_message(dir: &std::path::Path) -> (Journal, u64) {
        let bounds = Bounds { max_messages: 100, max_bytes: 1 << 20 };
        let (journal, _) = Journal::open(&dir.join("j"), 1 << 20, bounds).unwrap();
        let inbound = Inbound {
            id: Some("m-1".into()),
            device: Some("valve".into()),
            body: b"{}".to_vec(),
            ..Default::default()
        };
        match journal.admit(inbound, None, 1).unwrap() {
            crate::journal::Admitted::New(e) => (journal, e.seq),
            other => panic!("{other:?}"),
        }
    }

    /// Waits (5 s at most) until entry `seq` is back to `queued` after one attempt.
    async fn requeued_once(journal: &Journal, seq: u64) -> crate::message::Entry {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let e = journal.get(seq).unwrap();
            if e.state == State::Queued && e.attempts == 1 {
                return e;
            }
            assert!(Instant::now() < deadline, "not requeued: {e:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Write 1 of 2 lands, then the device drops off before write 2 (nothing
    /// of it sent). The journal keeps the confirmed step with the requeue;
    /// a job rebuilt from that entry (as after a reload, a clean stop or a
    /// crash whose last flush covered it) sends only the second write.
    #[tokio::test]
    async fn a_multi_step_command_resumes_after_the_confirmed_steps() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, seq) = journal_with_one_message(tmp.path());

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let device = tokio::spawn(dropping_device(listener, 1));
        let (bus, _done, stop) = worker(address, &journal);
        bus.jobs.send(Work::Write(job(seq, &[]))).unwrap();
        assert_eq!(device.await.unwrap(), [(10, 1)]);
        let entry = requeued_once(&journal, seq).await;
        assert_eq!(entry.steps, ["holding 10 = 1"], "the confirmed step is journaled with the requeue");
        let _ = stop.send(true);
        bus.task.await.unwrap();

        // Rebuilt from the journal (what the pipeline's make_job does).
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let device = tokio::spawn(dropping_device(listener, 1));
        let (bus, mut done, _stop) = worker(address, &journal);
        let mut resumed = job(seq, &entry.steps);
        resumed.attempts = entry.attempts;
        bus.jobs.send(Work::Write(resumed)).unwrap();
        let d = tokio::time::timeout(Duration::from_secs(5), done.recv()).await.unwrap().unwrap();
        assert_eq!(device.await.unwrap(), [(11, 2)], "write 1 is not sent again");
        assert_eq!(d.outcome, Outcome::delivered("holding 10 = 1; holding 11 = 2"));
        assert_eq!(journal.get(seq).unwrap().state, State::Delivered);
    }

    /// A Modbus TCP device that takes one connection, reads one request
    /// and drops the connection without an answer (the write may have run),
    /// then stops listening.
    async fn silent_device(listener: TcpListener) {
        let (mut s, _) = listener.accept().await.unwrap();
        drop(listener);
        let mut frame = [0u8; 12];
        s.read_exact(&mut frame).await.unwrap();
    }

    /// An idempotent device drops the connection after a request: the
    /// attempt is unconfirmed. The requeue journals that; a job rebuilt from
    /// the entry (as `make_job` does after a reload or a restart) resends,
    /// and the entry says so.
    #[tokio::test]
    async fn an_unconfirmed_attempt_survives_a_rebuilt_job_and_the_resend_is_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, seq) = journal_with_one_message(tmp.path());

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let device = tokio::spawn(silent_device(listener));
        let (bus, _done, stop) = worker(address, &journal);
        bus.jobs.send(Work::Write(Job { idempotent: true, ..job(seq, &[]) })).unwrap();
        device.await.unwrap();
        let entry = requeued_once(&journal, seq).await;
        assert!(entry.unconfirmed, "the requeue journals the unconfirmed attempt: {entry:?}");
        assert!(!entry.resent);
        let _ = stop.send(true);
        bus.task.await.unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let device = tokio::spawn(dropping_device(listener, 2));
        let (bus, mut done, _stop) = worker(address, &journal);
        let rebuilt =
            Job { idempotent: true, attempts: entry.attempts, unconfirmed: entry.unconfirmed, ..job(seq, &[]) };
        bus.jobs.send(Work::Write(rebuilt)).unwrap();
        let d = tokio::time::timeout(Duration::from_secs(5), done.recv()).await.unwrap().unwrap();
        assert_eq!(device.await.unwrap(), [(10, 1), (11, 2)]);
        assert_eq!(d.outcome, Outcome::delivered("holding 10 = 1; holding 11 = 2"));
        let e = journal.get(seq).unwrap();
        assert_eq!(e.state, State::Delivered);
        assert!(e.resent, "the report says `resent`: {e:?}");
        assert!(!e.unconfirmed);
    }

    #[test]
    fn a_resumed_job_must_match_its_request() {
        assert!(resumes_cleanly(&job(1, &[])));
        assert!(resumes_cleanly(&job(1, &["holding 10 = 1".into()])));
        assert!(!resumes_cleanly(&job(1, &["holding 12 = 1".into()])), "the points moved under a reload");
        assert!(!resumes_cleanly(&job(1, &["holding 10 = 12".into()])), "another value");
        let acknowledged = "holding 10 = 1 (device answered acknowledge (exception 0x05): accepted, still working)";
        assert!(resumes_cleanly(&job(1, &[acknowledged.into()])), "a step confirmed by exception 0x05");
        let three: Vec<String> = ["holding 10 = 1", "holding 11 = 2", "coil 1 = true"].map(String::from).to_vec();
        assert!(!resumes_cleanly(&job(1, &three)), "more steps than the command has");
    }

    #[test]
    fn expiry_after_a_partial_write_names_what_was_written() {
        let mut j = job(1, &["holding 10 = 1".into()]);
        j.deadline = Some((Instant::now(), "max_age (10m) reached".into()));
        assert_eq!(
            expiry_detail(&j),
            "max_age (10m) reached after writing: holding 10 = 1; not written: holding 11 = 2"
        );
        j.attempts = 4;
        j.last_error = Some("cannot connect".into());
        assert_eq!(
            expiry_detail(&j),
            "max_age (10m) reached after writing: holding 10 = 1; not written: holding 11 = 2 \
             (after 4 attempts; last error: cannot connect)"
        );
        let mut fresh = job(1, &[]);
        fresh.deadline = j.deadline.clone();
        assert_eq!(expiry_detail(&fresh), "max_age (10m) reached before delivery");
        fresh.attempts = 2;
        fresh.last_error = Some("x".into());
        assert_eq!(expiry_detail(&fresh), "max_age (10m) reached before delivery after 2 attempts; last error: x");
    }
}
