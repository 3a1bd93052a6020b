//! The disk's own floor under the gateway-added latency: what one durable
//! append costs on the state directory's file system, measured alone at
//! the fixed rate just before the gateway's run there. A message goes to
//! its device only once its admission is durable, so every message pays
//! one of these (the gateway's flush is sled's `pwrite` and
//! `sync_file_range`, then `fdatasync`: the same two trips to the disk, a
//! write and a cache flush, as the `pwrite` and `fdatasync` here).

use super::gateway::Scratch;
use super::latency::Percentiles;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes per append: about one journal entry.
const APPEND: usize = 256;

/// Appends `APPEND` bytes and fdatasyncs, `rate` times a second for `secs`,
/// in a file under `base`; the time of each append + fdatasync.
pub fn durable_append(base: &Path, rate: f64, secs: f64) -> Result<Percentiles, String> {
    let dir = Scratch::new(base)?;
    let path = dir.path().join("append");
    let file = std::fs::File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let data = [0x5au8; APPEND];
    let period = Duration::from_secs_f64(1.0 / rate);
    let n = (rate * secs).ceil() as u64;
    let mut took = Vec::with_capacity(n as usize);
    let mut next = Instant::now();
    for i in 0..n {
        next += period;
        let t0 = Instant::now();
        file.write_all_at(&data, i * APPEND as u64)
            .and_then(|_| file.sync_data())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        took.push(t0.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Percentiles::of(took).ok_or_else(|| "no append measured".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_each_append_and_cleans_up() {
        let base = tempfile::tempdir().unwrap();
        let p = durable_append(base.path(), 200.0, 0.05).unwrap();
        assert_eq!(p.samples, 10);
        assert!(p.p50_ms > 0.0 && p.p50_ms <= p.p99_ms && p.p99_ms <= p.max_ms);
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0, "the scratch directory is removed");
    }
}
