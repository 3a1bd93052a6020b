//! Room on the disk. sled does not recover from a failed write (a full
//! disk), and a store written into a full disk can come back damaged. So a
//! reserve file holds some room: when the free space falls under it, the
//! reserve is released (the journal finishes what it holds in that room)
//! and no new message is taken; once there is room for the reserve and as
//! much again, it is made anew and messages are taken again.

use std::path::{Path, PathBuf};

pub struct Space {
    dir: PathBuf,
    reserve: u64,
    /// False while the reserve is released: no new message is journaled.
    open: bool,
    /// When the disk was last looked at (see [`Space::check_recent`]).
    checked: Option<std::time::Instant>,
}

const RESERVE_FILE: &str = "disk-reserve";

impl Space {
    /// `dir`: the state directory; `reserve`: bytes (0: no reserve, always open).
    pub fn new(dir: &Path, reserve: u64) -> Space {
        let _ = std::fs::create_dir_all(dir);
        let mut s = Space { dir: dir.to_path_buf(), reserve, open: true, checked: None };
        s.check();
        s
    }

    fn path(&self) -> PathBuf {
        self.dir.join(RESERVE_FILE)
    }

    /// [`Space::check`], looking at the disk at most every 50 ms (two
    /// system calls per arrival would be a tenth of a busy gateway's
    /// system time; the reserve holds far more than 50 ms of writes).
    pub fn check_recent(&mut self) -> bool {
        const EVERY: std::time::Duration = std::time::Duration::from_millis(50);
        match self.checked {
            Some(at) if at.elapsed() < EVERY => self.open,
            _ => self.check(),
        }
    }

    /// Whether new messages may be journaled; releases or remakes the reserve.
    pub fn check(&mut self) -> bool {
        if self.reserve == 0 {
            return true;
        }
        self.checked = Some(std::time::Instant::now());
        let free = fs2::available_space(&self.dir).unwrap_or(u64::MAX);
        let have = std::fs::metadata(self.path()).map(|m| m.len()).unwrap_or(0);
        if have >= self.reserve {
            if free < self.reserve {
                let _ = std::fs::remove_file(self.path());
                if self.open {
                    tracing::error!(free, reserve = self.reserve, dir = %self.dir.display(), "disk full: released the reserve for the journal; new messages stay with the hub (not acknowledged) until there is room");
                }
                self.open = false;
            } else if !self.open {
                self.open = true;
            }
        } else if free >= 2 * self.reserve {
            match self.make() {
                Ok(()) => {
                    if !self.open {
                        tracing::info!(free, "room on the disk again: taking messages");
                    }
                    self.open = true;
                }
                Err(e) => {
                    let _ = std::fs::remove_file(self.path());
                    tracing::warn!(error = %e, "cannot write the disk reserve");
                }
            }
        } else {
            if self.open {
                tracing::error!(free, reserve = self.reserve, dir = %self.dir.display(), "disk full (less free than disk_reserve): new messages stay with the hub (not acknowledged) until there is room");
            }
            self.open = false;
        }
        self.open
    }

    /// Writes the reserve for real (zeros, synced: a sparse or delayed file
    /// would hold no room).
    fn make(&self) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.dir.join(format!("{RESERVE_FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        let block = vec![0u8; 64 * 1024];
        let mut left = self.reserve;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            f.write_all(&block[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, self.path())
    }

    pub fn is_open(&self) -> bool {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_made_once_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Space::new(tmp.path(), 128 * 1024);
        assert!(s.is_open());
        let file = tmp.path().join(RESERVE_FILE);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 128 * 1024);
        let before = std::fs::metadata(&file).unwrap().modified().unwrap();
        assert!(s.check());
        assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), before, "not rewritten");
    }

    #[test]
    fn no_reserve_means_always_open() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Space::new(tmp.path(), 0);
        assert!(s.check());
        assert!(!tmp.path().join(RESERVE_FILE).exists());
    }
}
