//! The seal: what the store held at a clean stop, written beside sled's
//! files and checked (then removed) at the next open. sled opens a store
//! with flipped or zeroed bytes without an error, reading it only up to the
//! damage: the entries after it would be gone in silence. A store that no
//! longer holds what it held when it was sealed is broken. (After a crash
//! there is no seal, and only sled's own checks apply.)

use std::io::Write;
use std::path::Path;

const SEAL: &str = "c2d-sealed";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seal {
    pub entries: u64,
    pub newest: Option<u64>,
}

impl Seal {
    fn text(&self) -> String {
        match self.newest {
            Some(n) => format!("entries {} newest {n}\n", self.entries),
            None => format!("entries {} newest none\n", self.entries),
        }
    }

    fn parse(s: &str) -> Option<Seal> {
        let w: Vec<&str> = s.split_whitespace().collect();
        match w.as_slice() {
            ["entries", e, "newest", n] => {
                Some(Seal { entries: e.parse().ok()?, newest: if *n == "none" { None } else { Some(n.parse().ok()?) } })
            }
            _ => None,
        }
    }
}

/// Writes the seal durably (temporary file, fsync, rename, fsync of the dir).
pub(super) fn write(dir: &Path, seal: Seal) -> std::io::Result<()> {
    let tmp = dir.join(format!("{SEAL}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(seal.text().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(SEAL))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The seal of the last clean stop, if there is one. `Err`: a seal that
/// cannot be read (treated like a mismatch by the caller).
pub(super) fn read(dir: &Path) -> Result<Option<Seal>, String> {
    match std::fs::read_to_string(dir.join(SEAL)) {
        Ok(s) => Seal::parse(&s).map(Some).ok_or_else(|| format!("unreadable seal {s:?}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read the seal: {e}")),
    }
}

/// Removes the seal durably: from now on the store changes.
pub(super) fn remove(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(SEAL)) {
        Ok(()) => std::fs::File::open(dir)?.sync_all(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_removal() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read(tmp.path()), Ok(None));
        for seal in [Seal { entries: 3, newest: Some(41) }, Seal { entries: 0, newest: None }] {
            write(tmp.path(), seal).unwrap();
            assert_eq!(read(tmp.path()), Ok(Some(seal)));
        }
        remove(tmp.path()).unwrap();
        assert_eq!(read(tmp.path()), Ok(None));
        std::fs::write(tmp.path().join(SEAL), "garbage").unwrap();
        assert!(read(tmp.path()).is_err());
    }
}
