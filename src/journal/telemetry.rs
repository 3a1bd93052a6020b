//! Telemetry readings held while the hub is unreachable: a sled tree of its
//! own beside the messages (`telemetry`, keyed by a counter in the order
//! the readings were taken), each reading stored as it will be published
//! (topic and body). Bounded in bytes: at the bound the oldest readings go
//! first, and the caller counts them. A reading leaves the buffer when the
//! hub acknowledged its PUBLISH: sent at least once, in order.
//!
//! Not flushed on its own: sled writes the tree within its flush interval
//! (500 ms), and every journal flush and the clean stop take it along; a
//! crash may lose the last readings taken, never a message.

use super::{Journal, JournalError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What one reading costs in the bound besides its topic and body.
const OVERHEAD: u64 = 16;

#[derive(Serialize, Deserialize)]
struct Stored {
    topic: String,
    body: Vec<u8>,
}

/// The buffer's index: each reading's key and size.
#[derive(Debug, Default)]
pub(super) struct Buffer {
    sizes: BTreeMap<u64, u64>,
    bytes: u64,
    next: u64,
}

impl Buffer {
    /// Reads the index of `tree` (at the open). Readings that do not
    /// decode are removed.
    pub(super) fn load(tree: &sled::Tree) -> sled::Result<Buffer> {
        let mut b = Buffer::default();
        for kv in tree.iter() {
            let (k, v) = kv?;
            let key = super::seq_of(&k);
            if postcard::from_bytes::<Stored>(&v).is_err() {
                tree.remove(&k)?;
                continue;
            }
            let size = v.len() as u64 + OVERHEAD;
            b.sizes.insert(key, size);
            b.bytes += size;
            b.next = b.next.max(key + 1);
        }
        Ok(b)
    }
}

/// A reading taken out of the buffer to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buffered {
    pub key: u64,
    pub topic: String,
    pub body: Vec<u8>,
}

impl Journal {
    fn buffer(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.inner.telemetry_index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a reading for later, within `max_bytes`; returns how many of
    /// the oldest readings went to make room (the reading itself, when it
    /// alone is larger than the bound).
    pub fn buffer_reading(&self, topic: &str, body: &[u8], max_bytes: u64) -> Result<usize, JournalError> {
        let v = postcard::to_allocvec(&Stored { topic: topic.to_string(), body: body.to_vec() })
            .expect("a reading serialises");
        let size = v.len() as u64 + OVERHEAD;
        if size > max_bytes {
            return Ok(1);
        }
        let mut b = self.buffer();
        let mut dropped = 0;
        while b.bytes + size > max_bytes {
            let Some((&key, &old)) = b.sizes.iter().next() else { break };
            let r = self.inner.telemetry.remove(super::key(key));
            self.check(r)?;
            b.sizes.remove(&key);
            b.bytes -= old;
            dropped += 1;
        }
        let key = b.next;
        let r = self.inner.telemetry.insert(super::key(key), v);
        self.check(r)?;
        b.next += 1;
        b.sizes.insert(key, size);
        b.bytes += size;
        Ok(dropped)
    }

    /// Up to `n` buffered readings after key `after` (all of them: `None`),
    /// oldest first.
    pub fn buffered_after(&self, after: Option<u64>, n: usize) -> Result<Vec<Buffered>, JournalError> {
        let keys: Vec<u64> = {
            let b = self.buffer();
            let from = after.map_or(0, |k| k + 1);
            b.sizes.range(from..).take(n).map(|(k, _)| *k).collect()
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(v) = self.inner.telemetry.get(super::key(key))? {
                if let Ok(s) = postcard::from_bytes::<Stored>(&v) {
                    out.push(Buffered { key, topic: s.topic, body: s.body });
                }
            }
        }
        Ok(out)
    }

    /// The hub has reading `key`: out of the buffer.
    pub fn unbuffer_reading(&self, key: u64) -> Result<(), JournalError> {
        let mut b = self.buffer();
        if let Some(size) = b.sizes.remove(&key) {
            b.bytes -= size;
            let r = self.inner.telemetry.remove(super::key(key));
            self.check(r)?;
        }
        Ok(())
    }

    /// Readings buffered, and their bytes.
    pub fn buffered(&self) -> (usize, u64) {
        let b = self.buffer();
        (b.sizes.len(), b.bytes)
    }
}

#[cfg(test)]
mod tests {
    use crate::journal::{Bounds, Journal};

    fn open(dir: &std::path::Path) -> Journal {
        Journal::open(dir, 1 << 20, Bounds { max_messages: 10, max_bytes: 1 << 20 }).unwrap().0
    }

    #[tokio::test]
    async fn readings_come_back_in_order_survive_a_restart_and_the_oldest_go_at_the_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("j");
        {
            let j = open(&dir);
            for n in 0..5u8 {
                assert_eq!(j.buffer_reading("t/boiler", &[n; 10], 1000).unwrap(), 0);
            }
            j.seal().await.unwrap();
        }
        let j = open(&dir);
        let (count, bytes) = j.buffered();
        assert_eq!(count, 5);
        let all = j.buffered_after(None, 10).unwrap();
        assert_eq!(all.iter().map(|r| r.body[0]).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert_eq!(all[0].topic, "t/boiler");
        let next = j.buffered_after(Some(all[1].key), 2).unwrap();
        assert_eq!(next.iter().map(|r| r.body[0]).collect::<Vec<_>>(), [2, 3]);
        j.unbuffer_reading(all[0].key).unwrap();
        j.unbuffer_reading(all[0].key).unwrap();
        assert_eq!(j.buffered().0, 4);
        // A bound that holds about two: the oldest go first.
        let per = bytes / 5;
        assert_eq!(j.buffer_reading("t/boiler", &[9; 10], per * 2).unwrap(), 3);
        let left: Vec<u8> = j.buffered_after(None, 10).unwrap().iter().map(|r| r.body[0]).collect();
        assert_eq!(left, [4, 9]);
        assert_eq!(j.buffer_reading("t/boiler", &[1; 500], per * 2).unwrap(), 1, "larger than the bound");
        assert_eq!(j.buffered().0, 2);
    }
}
