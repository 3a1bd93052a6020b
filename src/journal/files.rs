//! The small files at the journal's open, made safe against a power cut:
//! sled's `conf` (written once, when the store is created, and never
//! synced) and our watermark of sled's id counter. A torn `conf` makes sled
//! refuse the whole store, and a watermark durable before the counter it
//! vouches for makes a sound store look cut short: either way the journal
//! would be moved aside and its acknowledged messages lost.

use super::JournalError;
use std::io::Write;
use std::path::Path;

/// What sled 0.34 writes to `conf` for the settings the journal uses (the
/// default 512 KiB segments, no compression), before its 4-byte CRC.
const CONF_TEXT: &str = "segment_size: 524288\nuse_compression: false\nversion: 0.34\n";

/// Removes a `conf` that a power cut left torn (a prefix of what sled
/// writes, or that text with a partial CRC), so that sled writes it afresh
/// instead of refusing the store. Returns whether it did.
pub fn repair_torn_conf(dir: &Path) -> std::io::Result<bool> {
    let path = dir.join("conf");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let text = CONF_TEXT.as_bytes();
    let torn = bytes.len() < text.len() + 4
        && (text.starts_with(&bytes) || bytes.starts_with(text))
        // sled itself rewrites a file of 8 bytes or less
        && bytes.len() > 8;
    if torn {
        std::fs::remove_file(&path)?;
        sync_dir(dir)?;
    }
    Ok(torn)
}

/// Makes `conf` and the directory entries sled created durable (once per
/// open: sled never syncs them).
pub fn sync_created(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir.join("conf"))?.sync_all()?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A file beside sled's own: one more than the id sled handed out at an
/// earlier open. sled's ids only grow, across restarts and crashes alike, so
/// a store that now hands out a smaller one was reset or cut short behind
/// sled's back: sled opens a truncated, zeroed or deleted `db` file without
/// an error, as an empty or shorter store, and the messages it held would be
/// lost in silence. (A store cut short within one run, its id counter
/// intact, is not caught: that needs the newest durable sequence recorded.)
const WATERMARK: &str = "c2d-watermark";

/// Fails when sled's id counter went back since the mark was written (the
/// store lost entries). Returns the mark to write once sled's counter is
/// durable, that is after the journal's next flush ([`write_watermark`]):
/// written now, a power cut before that flush would leave a mark ahead of
/// the counter. Not being able to read the file (absent before the first
/// open) is no reason to give up a store: only a counter that went back is.
pub fn check_watermark(dir: &Path, db: &sled::Db) -> Result<Option<u64>, JournalError> {
    let next = match db.generate_id() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the journal's watermark");
            return Ok(None);
        }
    };
    let path = dir.join(WATERMARK);
    if let Some(mark) = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
        if next < mark {
            return Err(JournalError::Unusable(format!(
                "sled opened it, but its id counter went back (next id {next}, at least {mark} expected): the \
                 store was truncated, zeroed or replaced, and has lost entries"
            )));
        }
    }
    Ok(Some(next + 1))
}

/// Writes the watermark atomically (temporary file, fsync, rename, fsync
/// of the directory).
pub fn write_watermark(dir: &Path, mark: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{WATERMARK}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{mark}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(WATERMARK))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_writes_the_conf_this_module_expects() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).mode(sled::Mode::LowSpace).open().unwrap();
        drop(db);
        let bytes = std::fs::read(dir.path().join("conf")).unwrap();
        assert!(bytes.starts_with(CONF_TEXT.as_bytes()), "sled's conf changed: {bytes:?}");
        assert_eq!(bytes.len(), CONF_TEXT.len() + 4);
    }

    #[test]
    fn a_torn_conf_is_removed_and_sled_opens_the_store_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).mode(sled::Mode::LowSpace).open().unwrap();
        db.insert(b"k", b"v").unwrap();
        db.flush().unwrap();
        drop(db);
        let conf = dir.path().join("conf");
        let whole = std::fs::read(&conf).unwrap();
        for cut in [9, 30, CONF_TEXT.len() - 2, CONF_TEXT.len() + 2] {
            std::fs::write(&conf, &whole[..cut]).unwrap();
            let refused = sled::Config::new().path(dir.path()).mode(sled::Mode::LowSpace).open();
            assert!(refused.is_err() || cut == CONF_TEXT.len() + 2, "sled takes a conf cut at {cut}?");
            drop(refused);
            assert!(repair_torn_conf(dir.path()).unwrap(), "cut at {cut} not seen as torn");
            let db = sled::Config::new().path(dir.path()).mode(sled::Mode::LowSpace).open().unwrap();
            assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        }
        assert!(!repair_torn_conf(dir.path()).unwrap(), "a whole conf is left alone");
        std::fs::write(&conf, b"something else entirely, and long enough\n").unwrap();
        assert!(!repair_torn_conf(dir.path()).unwrap(), "only a torn copy of sled's own text is removed");
    }
}
