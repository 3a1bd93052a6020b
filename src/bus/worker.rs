//! The task that owns one bus. It takes jobs from the pipeline, lets the
//! scheduler pick the next one, marks it `sending` in the journal (flushed
//! first when a repeat would matter), puts it on the wire, and reports the
//! final outcome. Only this task touches the port or connection.

use super::modbus::ModbusLink;
use super::schedule::{Scheduler, Verdict};
use super::serial::SerialLink;
use super::{Done, Job, Poll, Request, Wire, Work};
use crate::journal::Journal;
use crate::message::{Outcome, State};
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
    async fn connect(&mut self) -> Result<(), String> {
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
    let task = tokio::spawn(run(name, link, sched, rx, journal, done, shutdown));
    BusHandle { jobs: tx, task }
}

enum Step {
    Final(Outcome),
    Retry { timeout: bool },
}

async fn run(
    name: String,
    mut link: Link,
    mut sched: Scheduler<Job>,
    mut rx: mpsc::UnboundedReceiver<Work>,
    journal: Journal,
    done: mpsc::UnboundedSender<Done>,
    mut shutdown: watch::Receiver<bool>,
) {
    let sweep_every = Duration::from_millis(500);
    let mut sweep_at = Instant::now() + sweep_every;
    let mut polls: VecDeque<Poll> = VecDeque::new();
    // Outcomes recorded but not yet flushed: handed to the pipeline after the
    // next flush (the one before the next request, when there is one, so a
    // busy bus pays one flush per message, not two).
    let mut pending: Vec<Done> = Vec::new();
    loop {
        while let Ok(work) = rx.try_recv() {
            accept(&mut sched, &mut polls, work);
        }
        if *shutdown.borrow() {
            break;
        }
        let now = Instant::now();
        if now >= sweep_at {
            for job in sched.sweep(|j| j.deadline.as_ref().is_some_and(|(at, _)| *at <= now)) {
                let outcome = Outcome::expired(expiry_detail(&job));
                finish(&journal, &mut pending, job, outcome);
            }
            sweep_at = now + sweep_every;
        }
        if let Some((dev, job)) = sched.next_ready(now) {
            let dev = dev.to_string();
            let step = attempt(&mut link, &journal, job, &mut pending, &done).await;
            let verdict = match &step {
                Step::Final(_) => Verdict::Done,
                Step::Retry { timeout } => Verdict::Retry { timeout: *timeout },
            };
            let popped = sched.record(&dev, verdict, Instant::now(), fastrand::f64());
            match (step, popped) {
                (Step::Final(outcome), Some(job)) => finish(&journal, &mut pending, job, outcome),
                (Step::Retry { timeout }, None) => {
                    if timeout && sched.is_isolated(&dev) {
                        tracing::warn!(bus = %name, device = %dev, "device keeps timing out: isolated by the circuit breaker, other devices on the bus go on");
                    }
                }
                _ => unreachable!("the scheduler pops exactly on Done"),
            }
            // Another request right away flushes this outcome with it.
            if !sched.has_ready(Instant::now()) && rx.is_empty() {
                release(&journal, &mut pending, &done).await;
            }
            continue;
        }
        release(&journal, &mut pending, &done).await;
        // No write is ready: one telemetry poll, then look for writes again.
        if let Some(p) = polls.pop_front() {
            if !sched.is_isolated(&p.device) {
                poll(&mut link, p).await;
            }
            continue;
        }
        let wake = sched.next_wake().map_or(sweep_at, |w| w.min(sweep_at));
        tokio::select! {
            work = rx.recv() => match work {
                Some(work) => accept(&mut sched, &mut polls, work),
                None => break,
            },
            _ = sleep_until(wake) => {}
            _ = shutdown.changed() => {}
        }
    }
    release(&journal, &mut pending, &done).await;
    tracing::debug!(bus = %name, left = sched.len(), "bus worker stopped");
}

/// Queues a write, or a poll (a newer poll of a device replaces a waiting one).
fn accept(sched: &mut Scheduler<Job>, polls: &mut VecDeque<Poll>, work: Work) {
    match work {
        Work::Write(job) => {
            let dev = job.device.clone();
            sched.push(&dev, job);
        }
        Work::Poll(p) => match polls.iter_mut().find(|q| q.device == p.device) {
            Some(q) => *q = p,
            None => polls.push_back(p),
        },
    }
}

/// Reads a device's telemetry points and hands the reading back.
async fn poll(link: &mut Link, p: Poll) {
    let Link::Modbus(l) = link else { return };
    let mut values = Vec::with_capacity(p.reads.len());
    for (name, point) in &p.reads {
        match l.read(p.unit, point.table, point.address, point.ty.width()).await {
            Ok((words, bits)) => {
                if let Some(v) = crate::telemetry::decode(point, &words, &bits) {
                    values.push((name.clone(), v));
                }
            }
            Err(e) => {
                tracing::debug!(device = %p.device, point = %name, error = %e, "telemetry read failed");
                return;
            }
        }
    }
    let at_ms = crate::message::now_ms();
    let _ = p.reply.send(crate::telemetry::Reading { device: p.device, at_ms, values });
}

/// Records the outcome in the journal; it reaches the pipeline with the next
/// flush (see [`release`]).
fn finish(journal: &Journal, pending: &mut Vec<Done>, job: Job, outcome: Outcome) {
    if let Err(e) = journal.finish(job.seq, &outcome, crate::message::now_ms()) {
        tracing::error!(message_id = %job.id, error = %e, "cannot record an outcome");
    }
    pending.push(Done { seq: job.seq, device: job.device, outcome, attempts: job.attempts, durable: false });
}

/// Flushes recorded outcomes and hands them to the pipeline. After a failed
/// flush they go anyway, marked not durable: the pipeline flushes itself and
/// holds the acks until that works.
async fn release(journal: &Journal, pending: &mut Vec<Done>, done: &mpsc::UnboundedSender<Done>) {
    if pending.is_empty() {
        return;
    }
    let durable = match journal.flush().await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "cannot flush outcomes to the journal");
            false
        }
    };
    hand_on(pending, done, durable);
}

fn hand_on(pending: &mut Vec<Done>, done: &mpsc::UnboundedSender<Done>, durable: bool) {
    for mut d in pending.drain(..) {
        d.durable = durable;
        let _ = done.send(d);
    }
}

fn expiry_detail(job: &Job) -> String {
    let why = job.deadline.as_ref().map_or("expired", |(_, why)| why.as_str());
    match &job.last_error {
        Some(e) => format!("{why} before delivery after {} attempts; last error: {e}", job.attempts),
        None => format!("{why} before delivery"),
    }
}

/// One try of the job at the head of its device's queue. Its flush before
/// the wire also makes the `pending` outcomes durable; they are handed on.
async fn attempt(
    link: &mut Link,
    journal: &Journal,
    job: &mut Job,
    pending: &mut Vec<Done>,
    done: &mpsc::UnboundedSender<Done>,
) -> Step {
    if job.deadline.as_ref().is_some_and(|(at, _)| Instant::now() >= *at) {
        return Step::Final(Outcome::expired(expiry_detail(job)));
    }
    if job.attempts >= job.max_attempts {
        let last = job.last_error.as_deref().unwrap_or("none");
        return Step::Final(Outcome::expired(format!("gave up after {} attempts; last error: {last}", job.attempts)));
    }
    // Connecting sends nothing: its failures cost no attempt.
    if let Err(e) = link.connect().await {
        tracing::debug!(device = %job.device, error = %e, "cannot reach the device");
        job.last_error = Some(e);
        return Step::Retry { timeout: false };
    }
    if let Err(e) = journal.mark_sending(job.seq, job.unconfirmed) {
        tracing::error!(message_id = %job.id, error = %e, "cannot record `sending` in the journal: not sending");
        job.last_error = Some(e.to_string());
        return Step::Retry { timeout: false };
    }
    // Durable before the wire: a crash after this point finds `sending`
    // and reports `uncertain` (or, for an idempotent device, sends again and
    // says so in the report) rather than silently repeating the command. The
    // same flush makes the previous message's outcome durable, so a crash can
    // never replay an older command after a newer one.
    {
        if let Err(e) = journal.flush().await {
            tracing::error!(message_id = %job.id, error = %e, "cannot flush `sending` to the journal: not sending");
            job.last_error = Some(e.to_string());
            requeue(journal, job);
            return Step::Retry { timeout: false };
        }
    }
    hand_on(pending, done, true);
    job.attempts += 1;
    tracing::debug!(message_id = %job.id, device = %job.device, attempt = job.attempts, "sending");
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
        _ => Wire::Refused("this kind of request cannot go on this kind of bus".into()),
    };
    match wire {
        Wire::Acked(detail) => Step::Final(Outcome::delivered(detail)),
        Wire::Refused(why) => Step::Final(Outcome::rejected(partial(job, why))),
        Wire::NotSent(why) => {
            job.last_error = Some(why);
            requeue(journal, job);
            Step::Retry { timeout: false }
        }
        Wire::Unconfirmed { reason, timeout } => {
            if job.idempotent {
                job.last_error = Some(reason);
                job.unconfirmed = true;
                requeue(journal, job);
                Step::Retry { timeout }
            } else {
                Step::Final(Outcome::uncertain(partial(
                    job,
                    format!("{reason}; not sent again because device {} is not idempotent", job.device),
                )))
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

/// Back to `queued` after an attempt that will be retried (not flushed: a
/// crash before the next flush leaves `sending`, which errs on the safe side).
fn requeue(journal: &Journal, job: &Job) {
    if let Err(e) = journal.update(job.seq, |e| {
        if e.state == State::Sending {
            e.state = State::Queued;
        }
    }) {
        tracing::error!(message_id = %job.id, error = %e, "journal update failed");
    }
}
