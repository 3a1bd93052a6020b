//! The journal: every C2D message, durable in sled before anything else
//! happens to it. All sled access in the crate is in this module.
//!
//! Layout: tree `messages` maps the arrival sequence (u64, big-endian, so
//! key order is arrival order) to the entry as JSON; tree `bodies` holds the
//! body bytes, removed once the message is final (only the outcome is needed
//! to answer a redelivery): a body of up to [`BODY_CHUNK`] bytes under the
//! same 8-byte key, a longer one in chunks under (sequence, chunk number).
//! No stored item, and no sled page of them, reaches sled's blob threshold
//! (about 128 KiB with 512 KiB segments): sled writes those to files under
//! `blobs/` that it never fsyncs, so a power cut could take them. Tree
//! `meta` holds the uptime clock (see `journal/clock.rs`).
//!
//! The (device, id) → sequence index, and the index of conflict entries by
//! (device, id, fingerprint), are rebuilt in memory at open: the entries are
//! the single source of truth, so no crash can leave two trees disagreeing
//! about a key.

pub mod clock;
mod codec;
mod files;
pub mod operator;
mod seal;
pub mod space;
pub mod telemetry;
mod twin;
pub use twin::Applied;
mod unsettled;

use crate::message::{Entry, Inbound, Outcome, State};
use clock::Clock;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("journal entry {0} is unreadable: {1}")]
    Decode(u64, codec::DecodeError),
    #[error("journal has no message with sequence {0}")]
    Missing(u64),
    #[error("journal store is unusable: {0}")]
    Unusable(String),
    #[error("the journal in {0} is in use by another process (a second c2d-gateway with the same state_dir?)")]
    InUse(PathBuf),
    #[error("could not move the broken journal aside: {0}")]
    MoveAside(std::io::Error),
}

/// Limits on what the journal holds.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_messages: usize,
    pub max_bytes: u64,
}

/// Result of offering a received message to the journal.
#[derive(Debug)]
pub enum Admitted {
    /// First time this (device, id) is seen: stored (not yet flushed).
    New(Entry),
    /// The (device, id) is already journaled with the same command: do not
    /// run it again. Also a repeat of a conflict (the same different
    /// command again): its first conflict entry, already rejected.
    Duplicate(Entry),
    /// The (device, id) is already journaled with a *different* command.
    /// Stored (not yet flushed) as an entry of its own, final `rejected`
    /// ("message id ... was already used for a different command"), to be
    /// acknowledged and reported like any rejection; never run. It counts
    /// in the bound like any entry.
    Conflict(Entry),
    /// No room: the journal holds `max_messages` entries it may not forget
    /// yet (unfinished, or the hub may still deliver them again), or a new
    /// body would take the bodies of unfinished messages past `max_bytes`.
    /// Conflicts and messages rejected on arrival count too. The message is
    /// handed back (without its body) for its report.
    Full { detail: String, inbound: Inbound },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub entries: usize,
    pub unfinished: usize,
    pub body_bytes: u64,
    pub oldest_unfinished_ms: Option<u64>,
}

#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    messages: sled::Tree,
    bodies: sled::Tree,
    /// The uptime clock, saved now and then.
    meta: sled::Tree,
    /// Telemetry readings held while the hub is unreachable (`telemetry.rs`).
    telemetry: sled::Tree,
    telemetry_index: Mutex<telemetry::Buffer>,
    clock: Arc<dyn Clock>,
    /// The monotonic clock and the uptime clock at the open.
    opened_mono: Duration,
    open_uptime: u64,
    bounds: Bounds,
    index: Mutex<Index>,
    /// Counts writes; bumped after each one reaches sled.
    written: AtomicU64,
    /// The `written` count the last completed flush covered. Held across a
    /// flush: callers queue behind it, and the first one after it flushes
    /// everything written meanwhile (group commit); the rest find their
    /// writes covered and return at once.
    durable: tokio::sync::Mutex<u64>,
    /// Flushes that reached sled (for tests and figures).
    flushes: AtomicU64,
    /// The `written` count the last completed flush covered (readable
    /// without waiting for a flush under way).
    durable_upto: AtomicU64,
    /// Messages sent to idempotent devices whose outcome is not durable.
    unsettled: Mutex<unsettled::Unsettled>,
    dir: PathBuf,
    /// sled's data file, for fdatasync after each flush.
    db_file: Arc<std::fs::File>,
    /// The store was sealed by a clean stop when it was opened (or is new).
    clean_start: bool,
    /// The watermark to write after the next flush (see `journal/files.rs`).
    watermark: Mutex<Option<u64>>,
    /// The first write or flush error (see [`Journal::failed`]).
    failure: tokio::sync::watch::Sender<Option<String>>,
    /// Tests: [`Journal::update`] stops after its first write, as a power
    /// cut between its two writes would.
    #[cfg(test)]
    cut_update: std::sync::atomic::AtomicBool,
}

/// The dedupe key: the device the message is for (as resolved at arrival;
/// `None` in entries of older versions that named none) and its id.
type Key = (Option<String>, String);

fn key_of(e: &Entry) -> Key {
    (e.device.clone(), e.id.clone())
}

#[derive(Default)]
struct Index {
    by_key: HashMap<Key, u64>,
    /// Conflict entries (not in `by_key`) by (key, fingerprint of the
    /// conflicting command): a redelivery of it is their duplicate.
    conflicts: HashMap<(Key, u64), u64>,
    /// Every entry, conflicts included.
    entries: usize,
    body_bytes: u64,
    unfinished: usize,
    /// PUBACK sent in this run, not yet in the stored entry (written with
    /// the entry's next change, or at the clean stop).
    acked: HashSet<u64>,
    /// Handed over (acknowledged before delivery) in this run, not yet in
    /// the stored entry (written with the entry's next change).
    handed: HashSet<u64>,
    /// The newest sequence number issued (numbers above it are not the
    /// journal's: the pipeline's own for messages it could not journal).
    newest: u64,
    /// Unfinished entries, oldest first: uptime at receipt (earlier runs:
    /// estimated from the wall clock at the open, so it may be before zero).
    arrived: BTreeMap<u64, Arrived>,
    /// `uncertain` and `expired` entries: an operator may want to retry or
    /// resolve them.
    unresolved: BTreeMap<u64, State>,
    /// Final entries whose body is kept for a retry (`uncertain`,
    /// `expired`), oldest first, with the body's length (in `body_bytes`).
    kept: BTreeMap<u64, u64>,
    /// Device names of unfinished entries, one shared copy each (at most
    /// 1,024 kept: names come from messages).
    names: HashMap<String, Arc<str>>,
}

/// An unfinished entry as the index keeps it.
struct Arrived {
    /// Uptime at receipt (see [`Index::arrived`]).
    at: i64,
    /// The device it is for (one shared copy per name).
    device: Option<Arc<str>>,
}

impl Index {
    fn arrival(&mut self, at: i64, device: Option<&str>) -> Arrived {
        let device = device.map(|d| match self.names.get(d) {
            Some(n) => n.clone(),
            None => {
                let n: Arc<str> = Arc::from(d);
                // Names come from messages: only so many are kept shared.
                if self.names.len() < 1024 {
                    self.names.insert(d.to_string(), n.clone());
                }
                n
            }
        });
        Arrived { at, device }
    }

    /// Forgets a removed entry.
    fn remove(&mut self, e: &Entry) {
        let k = key_of(e);
        if e.conflict {
            if let Some(fp) = e.fingerprint {
                let ck = (k, fp);
                if self.conflicts.get(&ck) == Some(&e.seq) {
                    self.conflicts.remove(&ck);
                }
            }
        } else if self.by_key.get(&k) == Some(&e.seq) {
            self.by_key.remove(&k);
        }
        self.entries = self.entries.saturating_sub(1);
        self.acked.remove(&e.seq);
        self.handed.remove(&e.seq);
        self.arrived.remove(&e.seq);
        self.unresolved.remove(&e.seq);
        self.kept.remove(&e.seq);
    }
}

/// Bodies longer than this are stored in chunks of this size. A sled leaf
/// holds up to ~20 items before it splits and is written whole when it is
/// consolidated: 20 chunks stay well under the blob threshold.
pub const BODY_CHUNK: usize = 4096;

/// The command's fingerprint: the first 64 bits of the body's SHA-256.
pub fn fingerprint(body: &[u8]) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(body);
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

const UPTIME: &[u8] = b"uptime";

/// What `open` had to do to get a usable store.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// The store could not be opened and was moved here; the journal starts empty.
    pub moved_aside: Option<(PathBuf, String)>,
    /// Entries that could not be decoded and were dropped.
    pub dropped_entries: Vec<String>,
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn chunk_key(seq: u64, n: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&seq.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Removes a body in either layout; says whether there was one. A body in
/// one item (the usual case) goes with a plain remove: a sled batch costs
/// a log reservation and a global write lock.
fn remove_body(bodies: &sled::Tree, seq: u64) -> sled::Result<bool> {
    if bodies.remove(key(seq))?.is_some() {
        return Ok(true);
    }
    let mut batch = sled::Batch::default();
    let mut any = false;
    for k in bodies.scan_prefix(key(seq)).keys() {
        batch.remove(k?);
        any = true;
    }
    if any {
        bodies.apply_batch(batch)?;
    }
    Ok(any)
}

/// Whether the bodies tree holds a body of entry `seq` (one item or chunks).
fn has_tree_body(bodies: &sled::Tree, seq: u64) -> sled::Result<bool> {
    Ok(bodies.scan_prefix(key(seq)).keys().next().transpose()?.is_some())
}

/// The entry stored under key `k` (its inline body left aside).
fn decode_at(k: &[u8], v: &[u8]) -> Result<Entry, JournalError> {
    decode_full(k, v).map(|(e, _)| e)
}

/// The entry stored under key `k` and its inline body.
fn decode_full(k: &[u8], v: &[u8]) -> Result<(Entry, Option<Vec<u8>>), JournalError> {
    codec::decode(v).map_err(|err| JournalError::Decode(seq_of(k), err))
}

/// When an unfinished message's wait began (unix ms): its arrival, or an
/// operator's retry (its age, and so its `max_age`, start over then).
fn queued_since(e: &Entry) -> u64 {
    match &e.operator {
        Some(o) if o.action == crate::message::OperatorAction::Retried => e.received_at.max(o.at),
        _ => e.received_at,
    }
}

fn seq_of(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = k.len().min(8);
    b[..n].copy_from_slice(&k[..n]);
    u64::from_be_bytes(b)
}

impl Journal {
    /// Opens (or creates) the journal in `dir`. A store that sled cannot open
    /// or read is moved aside, and an empty one is started in its place: the
    /// daemon keeps running and the operator finds the broken copy beside it.
    pub fn open(dir: &Path, cache_capacity: u64, bounds: Bounds) -> Result<(Journal, OpenReport), JournalError> {
        Journal::open_with_clock(dir, cache_capacity, bounds, Arc::new(clock::SystemClock::default()))
    }

    /// [`Journal::open`] with the given clocks (tests step them).
    pub fn open_with_clock(
        dir: &Path,
        cache_capacity: u64,
        bounds: Bounds,
        clock: Arc<dyn Clock>,
    ) -> Result<(Journal, OpenReport), JournalError> {
        let mut report = OpenReport::default();
        match open_guarded(dir, cache_capacity, bounds, &clock, &mut report.dropped_entries) {
            Ok(j) => Ok((j, report)),
            // An I/O error (disk full, permissions, a read-only file system)
            // says nothing about the store's contents: moving it aside would
            // throw away acknowledged messages and the dedupe history. Fail;
            // the service manager starts us again once the cause is gone.
            Err(OpenFailure::Io(e)) => Err(e),
            Err(OpenFailure::Broken(why)) => {
                // sled may fail in other ways when it cannot write (it
                // rewrites its files at open): only a store on a writable
                // disk is judged.
                space_probe(dir).map_err(|e| JournalError::Storage(e.into()))?;
                let stamp = crate::message::now_ms();
                let aside = dir.with_file_name(format!(
                    "{}.corrupt-{stamp}",
                    dir.file_name().and_then(|n| n.to_str()).unwrap_or("journal")
                ));
                std::fs::rename(dir, &aside).map_err(JournalError::MoveAside)?;
                tracing::error!(moved_to = %aside.display(), reason = %why, "the journal is unreadable: moving it aside");
                report.moved_aside = Some((aside, why));
                report.dropped_entries.clear();
                let j = open_guarded(dir, cache_capacity, bounds, &clock, &mut report.dropped_entries).map_err(
                    |f| match f {
                        OpenFailure::Io(e) => e,
                        OpenFailure::Broken(why) => JournalError::Unusable(why),
                    },
                )?;
                Ok((j, report))
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock cannot leave the index half-written
        // in a way that matters more than stopping: recover the guard.
        self.inner.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a received message unless its key is known already. The key
    /// is (device, id): the device the message names, else
    /// `default_device` (the one the router would pick); that resolved
    /// device is what the entry records. Call [`Journal::flush`] before
    /// acting on the result.
    pub fn admit(&self, inbound: Inbound, default_device: Option<&str>, now_ms: u64) -> Result<Admitted, JournalError> {
        let mut idx = self.lock();
        let named = inbound.device.is_some();
        let device = inbound.device.clone().or_else(|| default_device.map(str::to_string));
        let fp = fingerprint(&inbound.body);
        if let Some(id) = &inbound.id {
            let key = (device.clone(), id.clone());
            let found = idx.by_key.get(&key).copied().or_else(|| {
                // Older versions recorded no device for a message that
                // named none (it went to the default device).
                (!named && device.is_some()).then(|| idx.by_key.get(&(None, id.clone())).copied()).flatten()
            });
            let mut known = found.map(|seq| self.get_locked(seq)).transpose()?;
            if let Some(k) = known.as_mut() {
                // Its PUBACK went out before (handed over): so may this one's.
                k.handed_over |= k.acked || idx.handed.contains(&k.seq) || idx.acked.contains(&k.seq);
            }
            if let Some(known) = known.as_ref().filter(|k| k.fingerprint.is_none_or(|f| f == fp)) {
                return Ok(Admitted::Duplicate(known.clone()));
            }
            // This command was a conflict before: answered as then, even
            // if the original has been pruned or evicted since.
            if let Some(&seq) = idx.conflicts.get(&(key.clone(), fp)) {
                return Ok(Admitted::Duplicate(self.get_locked(seq)?));
            }
            if known.is_some() {
                if let Some(detail) = self.make_room(&mut idx, 0)? {
                    let inbound = Inbound { body: Vec::new(), device, ..inbound };
                    return Ok(Admitted::Full { detail, inbound });
                }
                let seq = self.inner.db.generate_id()?;
                idx.newest = idx.newest.max(seq);
                let entry = Entry {
                    device,
                    correlation_id: inbound.correlation_id,
                    expires_at: inbound.expires_at,
                    detail: format!("message id {id} was already used for a different command"),
                    completed_at: Some(now_ms),
                    fingerprint: Some(fp),
                    conflict: true,
                    final_uptime: Some(self.uptime()),
                    ..Entry::new(seq, id.clone(), now_ms, State::Rejected)
                };
                self.put(&entry, None)?;
                idx.conflicts.insert((key, fp), seq);
                idx.entries += 1;
                return Ok(Admitted::Conflict(entry));
            }
        }
        // A message rejected on arrival keeps no body, but its entry counts.
        let body_len = inbound.body.len() as u64;
        let needs_body = inbound.reject.is_none();
        if let Some(detail) = self.make_room(&mut idx, if needs_body { body_len } else { 0 })? {
            let inbound = Inbound { body: Vec::new(), device, ..inbound };
            return Ok(Admitted::Full { detail, inbound });
        }
        let seq = self.inner.db.generate_id()?;
        idx.newest = idx.newest.max(seq);
        let (id, id_generated) = match inbound.id {
            Some(id) => (id, false),
            None => (format!("gw-{seq:016x}-{:08x}", fastrand::u32(..)), true),
        };
        let mut entry = Entry {
            id_generated,
            device,
            correlation_id: inbound.correlation_id,
            expires_at: inbound.expires_at,
            reject: inbound.reject,
            body_len,
            fingerprint: Some(fp),
            ..Entry::new(seq, id, now_ms, State::Queued)
        };
        let mut inline = None;
        if let Some(why) = &entry.reject {
            entry.state = State::Rejected;
            entry.detail = why.clone();
            entry.completed_at = Some(now_ms);
            entry.final_uptime = Some(self.uptime());
        } else {
            if inbound.body.len() <= codec::INLINE_BODY {
                inline = Some(inbound.body);
            } else {
                let r = self.put_body(seq, inbound.body);
                self.check(r)?;
            }
            idx.body_bytes += body_len;
            idx.unfinished += 1;
            let a = idx.arrival(self.uptime() as i64, entry.device.as_deref());
            idx.arrived.insert(seq, a);
        }
        self.put(&entry, inline.as_deref())?;
        idx.by_key.insert(key_of(&entry), seq);
        idx.entries += 1;
        Ok(Admitted::New(entry))
    }

    /// Stores a body: one item, or chunks of [`BODY_CHUNK`] in one batch.
    fn put_body(&self, seq: u64, body: Vec<u8>) -> sled::Result<()> {
        if body.len() <= BODY_CHUNK {
            self.inner.bodies.insert(key(seq), body)?;
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (n, c) in body.chunks(BODY_CHUNK).enumerate() {
            batch.insert(&chunk_key(seq, n as u32)[..], c);
        }
        self.inner.bodies.apply_batch(batch)
    }

    /// The uptime clock now: milliseconds the gateway has run with this
    /// journal, across restarts.
    fn uptime(&self) -> u64 {
        let i = &self.inner;
        i.open_uptime + i.clock.mono().saturating_sub(i.opened_mono).as_millis() as u64
    }

    /// Saves the uptime clock (written with the next flush).
    fn save_uptime(&self) -> Result<(), JournalError> {
        let r = self.inner.meta.insert(UPTIME, &self.uptime().to_be_bytes()[..]);
        self.wrote();
        self.check(r)?;
        Ok(())
    }

    /// How old a message is, for its `max_age`: measured on the monotonic
    /// clock from its receipt in this run (a wall-clock step since does
    /// not change it); for a message of an earlier run, its wall-clock age
    /// when the journal was opened plus the time since.
    pub fn age(&self, e: &Entry) -> Duration {
        let idx = self.lock();
        match idx.arrived.get(&e.seq) {
            Some(a) => clock::since(self.uptime(), a.at),
            None => Duration::from_millis(self.inner.clock.wall_ms().saturating_sub(queued_since(e))),
        }
    }

    /// Unfinished message `seq` is acknowledged to the hub before delivery
    /// (handed over; the journal keeps custody). Noted in memory and in the
    /// entry with its next write, not flushed: its PUBACK needs only the
    /// message durable. A redelivery of it in this run is acknowledged at
    /// once (see [`Journal::admit`]); after a crash it waits for its
    /// outcome. Other sequences (final, or not the journal's) are ignored.
    pub fn hand_over(&self, seq: u64) {
        let mut idx = self.lock();
        if idx.arrived.contains_key(&seq) {
            idx.handed.insert(seq);
        }
    }

    /// The PUBACK of entry `seq` went to the hub: from now on it may be
    /// forgotten early at the journal's bound (see [`Journal::admit`]);
    /// until then only the dedupe window removes it, since the hub may
    /// still deliver it again. Noted in memory, without a read or a write:
    /// the mark goes into the entry with its next write (usually its
    /// report's), or at the clean stop ([`Journal::seal`]); a crash may
    /// lose it, which only leaves the entry to its dedupe window.
    /// Sequences the journal never issued are ignored.
    pub fn acked(&self, seq: u64) {
        let mut idx = self.lock();
        if seq <= idx.newest {
            idx.acked.insert(seq);
        }
    }

    /// Makes room for a new entry (with a body of `body_len` bytes; 0 for
    /// one that keeps none) by forgetting the oldest finished entries whose
    /// report is done and whose PUBACK went out (their dedupe window is cut
    /// short, said in the log). An entry the hub may still deliver again is
    /// never forgotten here (entries of older versions, which cannot tell,
    /// excepted). Only the entry count is helped by forgetting: a final
    /// entry holds no body, so when the bodies are what is over there is
    /// no room and nothing is forgotten. Returns why there is no room.
    fn make_room(&self, idx: &mut Index, body_len: u64) -> Result<Option<String>, JournalError> {
        let b = self.inner.bounds;
        let count_over = |idx: &Index| idx.entries >= b.max_messages;
        let bytes_over = |idx: &Index| body_len > 0 && idx.body_bytes + body_len > b.max_bytes;
        if !count_over(idx) && !bytes_over(idx) {
            return Ok(None);
        }
        // Bodies kept for retries go first, but only when that makes room.
        let kept: u64 = idx.kept.values().sum();
        if bytes_over(idx) && idx.body_bytes - kept.min(idx.body_bytes) + body_len <= b.max_bytes {
            self.forget_kept_bodies(idx, |idx| bytes_over(idx))?;
        }
        if !bytes_over(idx) {
            let mut evicted = 0usize;
            let mut unresolved = Vec::new();
            // Delivered and rejected ones first; messages waiting for an
            // operator only when that is not enough (and named in the log).
            for spare_unresolved in [true, false] {
                for kv in self.inner.messages.iter() {
                    if !count_over(idx) {
                        break;
                    }
                    let (k, v) = kv?;
                    let (e, inline) = decode_full(&k, &v)?;
                    // Entries of older versions (no fingerprint) never had the mark:
                    // evicted as they were, or an upgrade at the bound would refuse
                    // every new message for a whole dedupe window.
                    let puback_sent = e.acked || idx.acked.contains(&e.seq) || e.fingerprint.is_none();
                    if e.state.is_final() && e.reported && puback_sent {
                        if e.state.needs_operator() {
                            if spare_unresolved {
                                continue;
                            }
                            unresolved.push(e.id.clone());
                        }
                        self.remove_final(idx, &k, &e, inline.is_some())?;
                        evicted += 1;
                    }
                }
            }
            if evicted > 0 {
                tracing::warn!(evicted, "journal at its bound: forgot the oldest finished messages early (their redeliveries can no longer be recognised)");
            }
            if !unresolved.is_empty() {
                tracing::warn!(messages = ?unresolved, "journal at its bound: forgot uncertain or expired messages no operator had resolved");
            }
            if !count_over(idx) {
                return Ok(None);
            }
        }
        Ok(Some(format!(
            "journal full: {} unfinished messages, {} bytes of bodies (this one {body_len}), {} entries the hub may still redeliver or whose reports are pending (max_messages = {}, max_bytes = {})",
            idx.unfinished,
            idx.body_bytes,
            idx.entries.saturating_sub(idx.unfinished),
            b.max_messages,
            b.max_bytes
        )))
    }

    /// Removes final entry `e` (stored under `k`) and a body kept with it.
    fn remove_final(&self, idx: &mut Index, k: &[u8], e: &Entry, inline: bool) -> Result<(), JournalError> {
        let r = self.inner.messages.remove(k);
        self.wrote();
        self.check(r)?;
        idx.remove(e);
        if e.state.keeps_body() {
            self.forget_body(idx, e, inline)?;
        }
        Ok(())
    }

    /// Forgets the bodies kept for operators' retries (`uncertain` and
    /// `expired` entries), oldest first, while `over` says the bodies take
    /// too much: new messages go before retries of old ones. Logged.
    fn forget_kept_bodies(&self, idx: &mut Index, over: impl Fn(&Index) -> bool) -> Result<(), JournalError> {
        let mut forgot = Vec::new();
        while over(idx) {
            let Some((&seq, _)) = idx.kept.iter().next() else { break };
            idx.kept.remove(&seq);
            let (e, inline) = self.get_inline(seq)?;
            if inline.is_some() {
                self.put(&e, None)?;
            }
            self.forget_body(idx, &e, inline.is_some())?;
            forgot.push(e.id);
        }
        if !forgot.is_empty() {
            tracing::warn!(messages = ?forgot, "journal at its byte bound: forgot the bodies kept for retries of the oldest uncertain/expired messages (they can no longer be retried)");
        }
        Ok(())
    }

    /// Makes everything written so far durable. Concurrent callers share
    /// flushes (group commit), and nothing is flushed when nothing changed.
    pub async fn flush(&self) -> Result<(), JournalError> {
        let mine = self.inner.written.load(Ordering::Acquire);
        let mut durable = self.inner.durable.lock().await;
        if *durable >= mine {
            return Ok(());
        }
        let upto = self.inner.written.load(Ordering::Acquire);
        // One blocking call for both (sled's `flush_async` would hand the
        // flush to sled's thread pool first, whose every job wakes all its
        // idle threads). sled's flush ends with sync_file_range, which
        // leaves the drive's cache and the file's size unsynced: a power
        // cut could still take what was acknowledged. fdatasync makes it
        // durable for real.
        let (db, file) = (self.inner.db.clone(), self.inner.db_file.clone());
        let r = tokio::task::spawn_blocking(move || {
            db.flush()?;
            file.sync_data().map_err(sled::Error::from)
        })
        .await
        .unwrap_or_else(|e| Err(sled::Error::Io(std::io::Error::other(e.to_string()))));
        self.check(r)?;
        self.inner.flushes.fetch_add(1, Ordering::Relaxed);
        *durable = upto;
        self.inner.durable_upto.fetch_max(upto, Ordering::AcqRel);
        {
            self.unsettled().flushed(upto);
        }
        let mark = self.inner.watermark.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mark) = mark {
            if let Err(e) = files::write_watermark(&self.inner.dir, mark) {
                tracing::warn!(error = %e, "cannot write the journal's watermark");
            }
        }
        Ok(())
    }

    /// Flushes and seals the store at a clean stop: the next open checks
    /// that it still holds what it holds now (see `journal/seal.rs`).
    pub async fn seal(&self) -> Result<(), JournalError> {
        let dir = &self.inner.dir;
        {
            // PUBACK marks still only in memory go into their entries.
            let mut idx = self.lock();
            for seq in std::mem::take(&mut idx.acked) {
                if let Ok((mut e, body)) = self.get_inline(seq) {
                    e.acked = true;
                    self.put(&e, body.as_deref())?;
                }
            }
            self.save_uptime()?;
        }
        self.flush().await?;
        let _idx = self.lock();
        let entries = self.inner.messages.len() as u64;
        let newest = self.inner.messages.last()?.map(|(k, _)| seq_of(&k));
        seal::write(dir, seal::Seal { entries, newest }).map_err(|e| JournalError::Storage(e.into()))
    }

    /// Whether the gateway stopped cleanly before this open (the store was
    /// sealed, or held nothing). After a crash, what was written but not
    /// flushed is gone: an idempotent device may have got requests whose
    /// `sending` marks were among it.
    pub fn opened_clean(&self) -> bool {
        self.inner.clean_start
    }

    /// How many writes reached sled so far (see [`Journal::durable_upto`]).
    pub fn written(&self) -> u64 {
        self.inner.written.load(Ordering::Acquire)
    }

    /// The writes a completed flush made durable: every write counted by
    /// [`Journal::written`] up to this number.
    pub fn durable_upto(&self) -> u64 {
        self.inner.durable_upto.load(Ordering::Acquire)
    }

    /// How many flushes reached the disk since the journal was opened.
    pub fn flushes(&self) -> u64 {
        self.inner.flushes.load(Ordering::Relaxed)
    }

    /// Resolves once a write or flush has failed. sled does not recover from
    /// an I/O error (a full disk): every later write fails too, so the
    /// daemon stops and lets the service manager start it afresh.
    pub async fn failed(&self) -> String {
        let mut rx = self.inner.failure.subscribe();
        let r = rx.wait_for(|f| f.is_some()).await;
        r.ok().and_then(|f| f.clone()).unwrap_or_else(|| "journal closed".into())
    }

    /// Passes a sled result on, noting a failure for [`Journal::failed`].
    fn check<T>(&self, r: sled::Result<T>) -> Result<T, JournalError> {
        r.map_err(|e| {
            let e = JournalError::Storage(e);
            self.inner.failure.send_if_modified(|f| {
                if f.is_none() {
                    *f = Some(e.to_string());
                    true
                } else {
                    false
                }
            });
            e
        })
    }

    /// Notes a write (call after it reached sled).
    fn wrote(&self) {
        self.inner.written.fetch_add(1, Ordering::AcqRel);
    }

    pub fn get(&self, seq: u64) -> Result<Entry, JournalError> {
        let _idx = self.lock();
        self.get_locked(seq)
    }

    fn get_locked(&self, seq: u64) -> Result<Entry, JournalError> {
        self.get_inline(seq).map(|(e, _)| e)
    }

    /// The body of an unfinished message: inside its entry, or in the
    /// bodies tree (one item, or chunks).
    pub fn body(&self, seq: u64) -> Result<Option<Vec<u8>>, JournalError> {
        self.get_with_body(seq).map(|(_, body)| body)
    }

    /// An entry and, while it is unfinished, its body (one read when the
    /// body is inside the entry).
    pub fn get_with_body(&self, seq: u64) -> Result<(Entry, Option<Vec<u8>>), JournalError> {
        let (e, inline) = self.get_inline(seq)?;
        self.with_body(e, inline)
    }

    /// An entry and its body if the body is kept inside it (see
    /// `journal/codec.rs`); [`Journal::with_body`] completes it.
    pub fn get_inline(&self, seq: u64) -> Result<(Entry, Option<Vec<u8>>), JournalError> {
        let v = self.inner.messages.get(key(seq))?.ok_or(JournalError::Missing(seq))?;
        codec::decode(&v).map_err(|e| JournalError::Decode(seq, e))
    }

    /// Completes [`Journal::get_inline`]: the body of an unfinished entry
    /// kept in the bodies tree.
    pub fn with_body(&self, e: Entry, inline: Option<Vec<u8>>) -> Result<(Entry, Option<Vec<u8>>), JournalError> {
        if inline.is_some() || e.state.is_final() {
            return Ok((e, inline));
        }
        let body = self.tree_body(e.seq)?;
        Ok((e, body))
    }

    /// A body kept in the bodies tree (one item, or chunks).
    fn tree_body(&self, seq: u64) -> Result<Option<Vec<u8>>, JournalError> {
        let mut body = Vec::new();
        let mut any = false;
        for v in self.inner.bodies.scan_prefix(key(seq)).values() {
            body.extend_from_slice(&v?);
            any = true;
        }
        Ok(any.then_some(body))
    }

    /// Writes an entry, with its inline body while it is unfinished.
    fn put(&self, e: &Entry, body: Option<&[u8]>) -> Result<(), JournalError> {
        let v = codec::encode(e, body);
        let r = self.inner.messages.insert(key(e.seq), v);
        self.wrote();
        self.check(r)?;
        Ok(())
    }

    /// Read-modify-write of one entry under the journal lock. An entry that
    /// becomes final is written before its body is removed: a flush between
    /// the two (another task's, or sled's own) must never make the removal
    /// durable without the outcome (a `sending` entry with no body). A body
    /// left behind by a crash after the first write goes at the next open.
    pub fn update(&self, seq: u64, f: impl FnOnce(&mut Entry)) -> Result<Entry, JournalError> {
        self.update_if(seq, |e| {
            f(e);
            true
        })
        .map(|(e, _)| e)
    }

    /// The result report of final entry `seq` is done (acknowledged by the
    /// hub, or not wanted). An entry unfinished again (an operator's retry
    /// since) is left as it is: its next outcome is still to be reported.
    pub fn mark_reported(&self, seq: u64) -> Result<(), JournalError> {
        self.update_if(seq, |e| {
            let now = e.state.is_final() && !e.reported;
            e.reported |= now;
            now
        })
        .map(|_| ())
    }

    /// [`Journal::update`] that writes only when `f` says the entry
    /// changed; says whether it wrote.
    fn update_if(&self, seq: u64, f: impl FnOnce(&mut Entry) -> bool) -> Result<(Entry, bool), JournalError> {
        let mut idx = self.lock();
        let (mut e, inline) = self.get_inline(seq)?;
        let was = e.state;
        if !f(&mut e) {
            return Ok((e, false));
        }
        let now_final = !was.is_final() && e.state.is_final();
        // Back to the queue (an operator's retry): unfinished again.
        let reopened = was.is_final() && !e.state.is_final();
        let drops_body = was.keeps_body() && !e.state.keeps_body();
        if now_final {
            e.final_uptime = e.final_uptime.or(Some(self.uptime()));
        }
        let acked = idx.acked.remove(&seq);
        e.acked |= acked;
        let handed = idx.handed.remove(&seq);
        e.handed_over |= handed;
        // A final entry is written without its inline body: outcome and
        // removal in one write.
        if let Err(err) = self.put(&e, inline.as_deref()) {
            if acked {
                idx.acked.insert(seq);
            }
            if handed {
                idx.handed.insert(seq);
            }
            return Err(err);
        }
        if now_final && e.state.keeps_body() {
            idx.kept.insert(seq, e.body_len);
        }
        if reopened {
            idx.kept.remove(&seq);
            idx.unfinished += 1;
            let a = idx.arrival(self.uptime() as i64, e.device.as_deref());
            idx.arrived.insert(seq, a);
        }
        if now_final {
            idx.unfinished = idx.unfinished.saturating_sub(1);
            idx.arrived.remove(&seq);
            if let Some(device) = &e.device {
                self.unsettled().finished(device, seq, self.inner.written.load(Ordering::Acquire));
            }
        }
        if e.state.needs_operator() {
            idx.unresolved.insert(seq, e.state);
        } else {
            idx.unresolved.remove(&seq);
        }
        if drops_body {
            idx.kept.remove(&seq);
            #[cfg(test)]
            if self.inner.cut_update.load(Ordering::Relaxed) {
                return Err(JournalError::Unusable("power cut (test)".into()));
            }
            self.forget_body(&mut idx, &e, inline.is_some())?;
        }
        Ok((e, true))
    }

    /// The body of entry `e` is gone or goes now: an inline one went with
    /// the entry's last write or removal (`inline`), one in the bodies tree
    /// is removed here. Counted off `body_bytes` if there was one.
    fn forget_body(&self, idx: &mut Index, e: &Entry, inline: bool) -> Result<(), JournalError> {
        if inline {
            idx.body_bytes = idx.body_bytes.saturating_sub(e.body_len);
            return Ok(());
        }
        let r = remove_body(&self.inner.bodies, e.seq);
        self.wrote();
        if self.check(r)? {
            idx.body_bytes = idx.body_bytes.saturating_sub(e.body_len);
        }
        Ok(())
    }

    /// `sending`, one more attempt (`resend`, or the entry's `unconfirmed`
    /// mark: an earlier attempt may have reached the device; the mark is
    /// cleared). Flushed before the request goes on the wire, unless the
    /// device is idempotent (see [`Journal::sent`]).
    pub fn mark_sending(&self, seq: u64, resend: bool) -> Result<Entry, JournalError> {
        self.update(seq, |e| {
            e.state = State::Sending;
            e.attempts += 1;
            e.resent |= resend || e.unconfirmed;
            e.unconfirmed = false;
        })
    }

    /// A request of message `seq` went to idempotent `device` before its
    /// `sending` mark, if any, was durable: unsettled until a flush covers
    /// the message's final outcome.
    pub fn sent(&self, device: &str, seq: u64) {
        self.unsettled().sent(device, seq);
    }

    /// How many messages of `device` other than `seq` are unsettled (see
    /// [`Journal::sent`]).
    pub fn unsettled_besides(&self, device: &str, seq: u64) -> usize {
        self.unsettled().others(device, seq)
    }

    fn unsettled(&self) -> MutexGuard<'_, unsettled::Unsettled> {
        self.inner.unsettled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Back to `queued` after an attempt that will be retried, recording
    /// the steps of a multi-step command the device confirmed so far (a job
    /// rebuilt from the journal resumes after them) and whether an attempt
    /// may have reached the device without a clear answer (`unconfirmed`:
    /// the next `sending` mark is a resend, even for a job rebuilt from
    /// the journal). Not flushed: the next `sending` mark or a clean stop
    /// flushes it; a crash before that leaves `sending`, which recovery
    /// never sends again unless the device is idempotent. A final entry is
    /// left as it is.
    /// `attempts`: made so far (an idempotent device's attempts leave no
    /// `sending` mark; see [`Journal::sent`]).
    pub fn requeue(&self, seq: u64, steps: &[String], unconfirmed: bool, attempts: u32) -> Result<Entry, JournalError> {
        self.update(seq, |e| {
            if e.state == State::Sending {
                e.state = State::Queued;
            }
            if !e.state.is_final() {
                e.attempts = e.attempts.max(attempts);
                if e.steps.len() < steps.len() {
                    e.steps = steps.to_vec();
                }
                e.unconfirmed |= unconfirmed;
            }
        })
    }

    /// Records the final outcome (idempotent: a final entry stays as it is).
    /// An entry already final is returned as stored, without a write (the
    /// bus worker records outcomes; the pipeline's call only reads them back).
    pub fn finish(&self, seq: u64, outcome: &Outcome, now_ms: u64) -> Result<Entry, JournalError> {
        self.record(seq, outcome, now_ms, 0).map(|(e, _)| e)
    }

    /// [`Journal::finish`] after `attempts` attempts (at least; those of an
    /// idempotent device left no mark), also saying whether it wrote (the
    /// entry was not final yet): a write that still needs a flush.
    pub fn record(
        &self,
        seq: u64,
        outcome: &Outcome,
        now_ms: u64,
        attempts: u32,
    ) -> Result<(Entry, bool), JournalError> {
        self.update_if(seq, |e| {
            if e.state.is_final() {
                return false;
            }
            e.state = outcome.state;
            e.detail = outcome.detail.clone();
            e.values = outcome.values.clone();
            e.completed_at = Some(now_ms);
            e.attempts = e.attempts.max(attempts);
            true
        })
    }

    /// Unfinished entries (`queued`, `sending`) in arrival order.
    pub fn unfinished(&self) -> Result<Vec<Entry>, JournalError> {
        self.scan(|e| !e.state.is_final())
    }

    /// Final entries whose result report was not yet handed to the hub.
    pub fn unreported(&self) -> Result<Vec<Entry>, JournalError> {
        self.scan(|e| e.state.is_final() && !e.reported)
    }

    /// Every entry `keep` says, in arrival order, read under the index's
    /// lock (no write in between).
    fn scan(&self, keep: impl Fn(&Entry) -> bool) -> Result<Vec<Entry>, JournalError> {
        let _idx = self.lock();
        self.select(keep, usize::MAX).map(|(entries, _)| entries)
    }

    /// Removes final, reported entries that have been final for `window`
    /// by the wall clock (`now_ms`) *and* by the uptime clock (see
    /// `journal/clock.rs`): a wall-clock step cannot prune early. Also
    /// saves the uptime clock. Returns how many.
    pub fn prune(&self, now_ms: u64, window: Duration) -> Result<usize, JournalError> {
        let mut idx = self.lock();
        let now_up = self.uptime();
        let mut removed = 0;
        for kv in self.inner.messages.iter() {
            let (k, v) = kv?;
            let (e, inline) = decode_full(&k, &v)?;
            let past =
                clock::past_window(now_ms, e.completed_at, now_up, e.final_uptime, self.inner.open_uptime, window);
            if e.state.is_final() && e.reported && past {
                self.remove_final(&mut idx, &k, &e, inline.is_some())?;
                removed += 1;
            } else if e.state.is_final() && e.final_uptime.is_none() {
                // Written by an older version: it counts from this open, and
                // from no later one (a gateway restarting daily must prune).
                self.put(&Entry { final_uptime: Some(self.inner.open_uptime), ..e }, inline.as_deref())?;
            }
        }
        self.save_uptime()?;
        Ok(removed)
    }

    /// Unfinished messages per device (as the entries name them; `None`:
    /// none named) and the age of each device's oldest, without reading
    /// an entry.
    pub fn queues(&self) -> BTreeMap<Option<String>, (usize, Duration)> {
        let idx = self.lock();
        let now = self.uptime();
        let mut by: HashMap<Option<&str>, (usize, i64)> = HashMap::new();
        for a in idx.arrived.values() {
            let q = by.entry(a.device.as_deref()).or_insert((0, i64::MAX));
            q.0 += 1;
            q.1 = q.1.min(a.at);
        }
        by.into_iter().map(|(d, (n, at))| (d.map(str::to_string), (n, clock::since(now, at)))).collect()
    }

    pub fn stats(&self) -> Stats {
        let idx = self.lock();
        let oldest = idx.arrived.keys().next().and_then(|&seq| self.get_locked(seq).ok()).map(|e| e.received_at);
        Stats {
            entries: idx.entries,
            unfinished: idx.unfinished,
            body_bytes: idx.body_bytes,
            oldest_unfinished_ms: oldest,
        }
    }
}

/// Opens sled and rebuilds the index; any failure, panics inside sled
/// included, comes back as the reason the store is unusable.
/// An I/O error caused by the machine rather than the store's bytes: a
/// full disk or quota, permissions, a read-only file system, no memory or
/// file handles. (A truncated or garbled file shows up as other errors.)
fn environmental(e: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    const EROFS: i32 = 30;
    const EACCES: i32 = 13;
    const EPERM: i32 = 1;
    const ENOMEM: i32 = 12;
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    use std::io::ErrorKind as K;
    matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT | EROFS | EACCES | EPERM | ENOMEM | EMFILE | ENFILE))
        || matches!(
            e.kind(),
            K::PermissionDenied | K::StorageFull | K::QuotaExceeded | K::ReadOnlyFilesystem | K::OutOfMemory
        )
        || in_use(e)
}

/// Whether the disk under `dir` takes a write (64 KiB, removed again).
fn space_probe(dir: &Path) -> std::io::Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let probe = parent.join(".c2d-space-probe");
    let r = std::fs::File::create(&probe)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &[0u8; 64 * 1024]).and_then(|_| f.sync_all()));
    let _ = std::fs::remove_file(&probe);
    r
}

impl JournalError {
    /// A cause outside the store (a full disk, permissions, another process
    /// holding it): worth waiting for, never a reason to move it aside.
    pub fn is_environmental(&self) -> bool {
        match self {
            JournalError::InUse(_) => true,
            JournalError::Storage(sled::Error::Io(e)) => environmental(e),
            _ => false,
        }
    }
}

/// sled's own words when another process holds the store's lock.
fn in_use(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Other && e.to_string().contains("could not acquire lock")
}

/// Why `open_guarded` failed: the store's contents, or the machine.
enum OpenFailure {
    /// An I/O error of the file system (ENOSPC, EACCES, EROFS ...): the store may be fine.
    Io(JournalError),
    /// The store itself is unreadable (corrupt, a panic inside sled).
    Broken(String),
}

fn open_guarded(
    dir: &Path,
    cache_capacity: u64,
    bounds: Bounds,
    clock: &Arc<dyn Clock>,
    dropped: &mut Vec<String>,
) -> Result<Journal, OpenFailure> {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        open_inner(dir, cache_capacity, bounds, clock.clone(), dropped)
    }));
    match r {
        Ok(Ok(j)) => Ok(j),
        Ok(Err(JournalError::Storage(sled::Error::Io(e)))) if in_use(&e) => {
            Err(OpenFailure::Io(JournalError::InUse(dir.to_path_buf())))
        }
        Ok(Err(JournalError::Storage(sled::Error::Io(e)))) if environmental(&e) => {
            Err(OpenFailure::Io(JournalError::Storage(sled::Error::Io(e))))
        }
        Ok(Err(e)) => Err(OpenFailure::Broken(e.to_string())),
        Err(p) => Err(OpenFailure::Broken(format!(
            "sled panicked: {}",
            p.downcast_ref::<String>().map(String::as_str).or_else(|| p.downcast_ref::<&str>().copied()).unwrap_or("?")
        ))),
    }
}

fn open_inner(
    dir: &Path,
    cache_capacity: u64,
    bounds: Bounds,
    clock: Arc<dyn Clock>,
    dropped: &mut Vec<String>,
) -> Result<Journal, JournalError> {
    if files::repair_torn_conf(dir).map_err(sled::Error::from)? {
        tracing::warn!("the journal's sled `conf` was torn by a power cut: removed, sled writes it again");
    }
    let db = sled::Config::new().path(dir).cache_capacity(cache_capacity).mode(sled::Mode::LowSpace).open()?;
    files::sync_created(dir).map_err(sled::Error::from)?;
    let watermark = files::check_watermark(dir, &db)?;
    let messages = db.open_tree("messages")?;
    let bodies = db.open_tree("bodies")?;
    let meta = db.open_tree("meta")?;
    let telemetry = db.open_tree("telemetry")?;
    let telemetry_index = Mutex::new(telemetry::Buffer::load(&telemetry)?);
    let (opened_mono, opened_wall) = (clock.mono(), clock.wall_ms());
    // The uptime clock goes on from where it was saved, and never behind a
    // time an entry recorded (saves are periodic: a crash loses the rest).
    let mut open_uptime = match meta.get(UPTIME)? {
        Some(v) if v.len() == 8 => u64::from_be_bytes(v[..].try_into().expect("8 bytes")),
        _ => 0,
    };
    let mut idx = Index::default();
    let mut unfinished_received = Vec::new();
    let sealed = seal::read(dir).map_err(JournalError::Unusable)?;
    let clean_start = sealed.is_some() || messages.is_empty();
    let (mut found, mut newest) = (0u64, None);
    for kv in messages.iter() {
        let (k, v) = kv?;
        let seq = seq_of(&k);
        found += 1;
        newest = Some(seq);
        match codec::decode(&v) {
            Ok((e, inline)) => {
                if !e.state.is_final() {
                    idx.unfinished += 1;
                    idx.body_bytes += e.body_len;
                    unfinished_received.push((seq, queued_since(&e), e.device.clone()));
                } else if e.state.keeps_body() && (inline.is_some() || has_tree_body(&bodies, seq)?) {
                    // Kept for an operator's retry (older versions kept none).
                    idx.body_bytes += e.body_len;
                    idx.kept.insert(seq, e.body_len);
                }
                if e.state.needs_operator() {
                    idx.unresolved.insert(seq, e.state);
                }
                open_uptime = open_uptime.max(e.final_uptime.unwrap_or(0));
                idx.entries += 1;
                match (e.conflict, e.fingerprint) {
                    (false, _) => {
                        idx.by_key.insert(key_of(&e), seq);
                    }
                    // The first conflict entry of a command answers its repeats.
                    (true, Some(fp)) => {
                        idx.conflicts.entry((key_of(&e), fp)).or_insert(seq);
                    }
                    (true, None) => {}
                }
            }
            Err(err) => {
                dropped.push(format!("entry {seq}: {err}"));
                messages.remove(&k)?;
                bodies.remove(&k)?;
            }
        }
    }
    idx.newest = newest.unwrap_or(0);
    if let Some(s) = sealed {
        if (s.entries, s.newest) != (found, newest) {
            return Err(JournalError::Unusable(format!(
                "it held {} entries (newest {:?}) when the gateway stopped cleanly, and now {found} (newest {newest:?}): \
                 the files were damaged since",
                s.entries, s.newest
            )));
        }
        seal::remove(dir).map_err(sled::Error::from)?;
    }
    for (seq, received_at, device) in unfinished_received {
        let a = idx.arrival(clock::received_before_open(open_uptime, opened_wall, received_at), device.as_deref());
        idx.arrived.insert(seq, a);
    }
    // Bodies without an unfinished entry are leftovers of a crash mid-write.
    for k in bodies.iter().keys() {
        let k = k?;
        let keep = match messages.get(key(seq_of(&k)))? {
            Some(v) => codec::decode(&v).map(|(e, _)| e.state.keeps_body()).unwrap_or(false),
            None => false,
        };
        if !keep {
            bodies.remove(&k)?;
        }
    }
    // Starts one write ahead of durable: the first flush always runs (it
    // covers whatever opening the store cleaned up).
    let (written, durable) = (AtomicU64::new(1), tokio::sync::Mutex::new(0));
    let db_file = Arc::new(std::fs::File::open(dir.join("db")).map_err(sled::Error::from)?);
    Ok(Journal {
        inner: Arc::new(Inner {
            db,
            messages,
            bodies,
            meta,
            telemetry,
            telemetry_index,
            clock,
            opened_mono,
            open_uptime,
            bounds,
            index: Mutex::new(idx),
            written,
            durable,
            flushes: AtomicU64::new(0),
            durable_upto: AtomicU64::new(0),
            unsettled: Mutex::default(),
            failure: tokio::sync::watch::Sender::new(None),
            #[cfg(test)]
            cut_update: std::sync::atomic::AtomicBool::new(false),
            db_file,
            clean_start,
            watermark: Mutex::new(watermark),
            dir: dir.to_path_buf(),
        }),
    })
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
