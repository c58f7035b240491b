//! The deletion ledger: an append-only file beside `db/` (kept apart from data backups, like the
//! keyring) with one synced line per shredded subject handle. Every start replays it, so a backup
//! of `db/` restored from before a shred never brings the subject back. It holds sids (keyed
//! hashes) and times only: no identifier, no value.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::domain::Sid;

/// What can go wrong with the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The file could not be read, written or synced.
    #[error("deletion ledger `{path}`: {source}")]
    Io {
        /// The ledger file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line is not a ledger entry.
    #[error("deletion ledger `{path}` line {line} is malformed")]
    Malformed {
        /// The ledger file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    sid: String,
    shredded_ms: Millis,
}

/// The open ledger, appended to by shreds.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: Mutex<File>,
}

impl Ledger {
    /// Opens (creating, mode 0600) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| LedgerError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    /// Every sid the ledger names.
    pub fn sids(&self) -> Result<BTreeSet<Sid>, LedgerError> {
        let io = |source| LedgerError::Io {
            path: self.path.clone(),
            source,
        };
        let reader = BufReader::new(File::open(&self.path).map_err(io)?);
        let mut sids = BTreeSet::new();
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(io)?;
            if line.trim().is_empty() {
                continue;
            }
            let malformed = || LedgerError::Malformed {
                path: self.path.clone(),
                line: i + 1,
            };
            let entry: Entry = serde_json::from_str(&line).map_err(|_| malformed())?;
            let bytes: [u8; 32] = hex::decode(&entry.sid)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(malformed)?;
            sids.insert(Sid(bytes));
        }
        Ok(sids)
    }

    /// Appends `sid` and syncs before returning.
    pub fn append(&self, sid: &Sid, shredded_ms: Millis) -> Result<(), LedgerError> {
        let io = |source| LedgerError::Io {
            path: self.path.clone(),
            source,
        };
        let line = serde_json::to_string(&Entry {
            sid: hex::encode(sid.0),
            shredded_ms,
        })
        .unwrap_or_default()
            + "\n";
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        file.write_all(line.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_sids_are_read_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let ledger = Ledger::open(&path).unwrap();
        ledger.append(&Sid([1; 32]), 5).unwrap();
        ledger.append(&Sid([2; 32]), 6).unwrap();
        drop(ledger);
        let sids = Ledger::open(&path).unwrap().sids().unwrap();
        assert_eq!(sids, BTreeSet::from([Sid([1; 32]), Sid([2; 32])]));
        std::fs::write(&path, "not json\n").unwrap();
        assert!(Ledger::open(&path).unwrap().sids().is_err());
    }
}
