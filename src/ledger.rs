//! The deletion ledger: an append-only file beside `db/` (kept apart from data backups, like the
//! keyring) with one synced line per shred: the subject handle, the time and the incarnation that
//! was erased. Every start replays it, so a backup of `db/` restored from before a shred never
//! brings the subject back, while a customer who came back after the shred (a new incarnation)
//! keeps the new data. It holds sids (keyed hashes), random incarnation ids and times only: no
//! identifier, no value. A line torn by a crash mid-append is cut off at open (that shred never
//! committed: the line is synced before the shred's batch is written). On PostgreSQL the lines
//! are rows of `privault_keys.ledger`, in the keys schema, apart from the data schema's backups.
//!
//! Legal holds live here too, one line per placement and per release, for the same reason: a
//! restore of `db/` from before a hold must not drop it, nor may its replay erase what it holds.
//! A hold line adds the scope (a key class or `all`), the lapse time and the reason, which is an
//! operator's case reference (never personal data, like a shred's reason in the audit log).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::domain::Sid;
use crate::hold::{Hold, HoldBook, HoldScope};

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
    /// The database holding the ledger failed.
    #[error("deletion ledger: {0}")]
    Store(#[from] crate::store::StoreError),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    sid: String,
    shredded_ms: Millis,
    // Absent in lines written before incarnations, and for shreds of a subject that had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    incarnation: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum HoldOp {
    Place,
    Release,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldEntry {
    hold: HoldOp,
    sid: String,
    scope: String,
    at_ms: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    reason: String,
}

// Shred lines predate hold lines and keep their shape; a line is whichever it parses as.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Shred(Entry),
    Hold(HoldEntry),
}

fn parse_sid(hex_sid: &str) -> Option<Sid> {
    hex::decode(hex_sid)
        .ok()
        .and_then(|b| b.try_into().ok())
        .map(Sid)
}

/// What the ledger says of one subject handle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shreds {
    /// The incarnations that were shredded.
    pub incarnations: BTreeSet<[u8; 16]>,
    /// The latest shred of any kind.
    pub latest_ms: Millis,
    /// The latest shred that named no incarnation, if any.
    pub latest_untracked_ms: Option<Millis>,
}

impl Shreds {
    /// Whether an incarnation `incarnation` (when known) created at `created_ms` was shredded:
    /// named by a shred, or older than a shred that named none.
    pub fn covers(&self, incarnation: Option<&[u8; 16]>, created_ms: Millis) -> bool {
        match incarnation {
            Some(i) => {
                self.incarnations.contains(i)
                    || self.latest_untracked_ms.is_some_and(|t| t > created_ms)
            }
            None => self.latest_ms > created_ms,
        }
    }
}

/// The open ledger, appended to by shreds.
#[derive(Debug)]
pub struct Ledger {
    // How messages name it: the file, or the table.
    path: PathBuf,
    backing: Backing,
}

/// Where the lines are: a file beside `db/`, or `privault_keys.ledger` in PostgreSQL.
#[derive(Debug)]
enum Backing {
    File(Mutex<File>),
    Database(std::sync::Arc<crate::store::Store>),
}

impl Ledger {
    /// Opens (creating, mode 0600) the ledger at `path`, cutting off a line torn by a crash.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let io = |source| LedgerError::Io {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(io)?;
        repair_tail(&file).map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            backing: Backing::File(Mutex::new(file)),
        })
    }

    /// The ledger in the keys schema of `store`'s PostgreSQL database.
    pub fn in_database(store: std::sync::Arc<crate::store::Store>) -> Result<Self, LedgerError> {
        database(&store)?;
        Ok(Self {
            path: PathBuf::from("privault_keys.ledger"),
            backing: Backing::Database(store),
        })
    }

    /// The raw lines, in order.
    fn raw_lines(&self) -> Result<Vec<String>, LedgerError> {
        match &self.backing {
            Backing::File(_) => {
                let io = |source| LedgerError::Io {
                    path: self.path.clone(),
                    source,
                };
                let reader = BufReader::new(File::open(&self.path).map_err(io)?);
                reader.lines().collect::<Result<_, _>>().map_err(io)
            }
            Backing::Database(store) => Ok(database(store)?.ledger_lines()?),
        }
    }

    /// Every subject handle the ledger names, with its shreds.
    pub fn entries(&self) -> Result<BTreeMap<Sid, Shreds>, LedgerError> {
        let mut out: BTreeMap<Sid, Shreds> = BTreeMap::new();
        for (number, line) in self.lines()? {
            let malformed = || LedgerError::Malformed {
                path: self.path.clone(),
                line: number,
            };
            let Line::Shred(entry) = line else { continue };
            let sid = parse_sid(&entry.sid).ok_or_else(malformed)?;
            let shreds = out.entry(sid).or_default();
            shreds.latest_ms = shreds.latest_ms.max(entry.shredded_ms);
            match entry.incarnation {
                Some(hex_id) => {
                    let id: [u8; 16] = hex::decode(&hex_id)
                        .ok()
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(malformed)?;
                    shreds.incarnations.insert(id);
                }
                None => {
                    shreds.latest_untracked_ms = Some(
                        shreds
                            .latest_untracked_ms
                            .map_or(entry.shredded_ms, |t| t.max(entry.shredded_ms)),
                    );
                }
            }
        }
        Ok(out)
    }

    /// Every line, numbered from 1.
    fn lines(&self) -> Result<Vec<(usize, Line)>, LedgerError> {
        let mut out = Vec::new();
        for (i, line) in self.raw_lines()?.into_iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = serde_json::from_str(&line).map_err(|_| LedgerError::Malformed {
                path: self.path.clone(),
                line: i + 1,
            })?;
            out.push((i + 1, parsed));
        }
        Ok(out)
    }

    /// The holds placed and not released, replayed from the hold lines in order.
    pub fn holds(&self) -> Result<HoldBook, LedgerError> {
        let mut book = HoldBook::default();
        for (number, line) in self.lines()? {
            let Line::Hold(entry) = line else { continue };
            let malformed = || LedgerError::Malformed {
                path: self.path.clone(),
                line: number,
            };
            let sid = parse_sid(&entry.sid).ok_or_else(malformed)?;
            let scope = HoldScope::parse(&entry.scope).map_err(|_| malformed())?;
            match entry.hold {
                HoldOp::Place => book.place(
                    sid,
                    scope,
                    Hold {
                        reason: entry.reason,
                        placed_ms: entry.at_ms,
                        until_ms: entry.until_ms,
                    },
                ),
                HoldOp::Release => {
                    book.release(&sid, &scope);
                }
            }
        }
        Ok(book)
    }

    /// Appends the placement of `hold` on `sid`'s `scope`, synced before returning.
    pub fn append_hold(
        &self,
        sid: &Sid,
        scope: &HoldScope,
        hold: &Hold,
    ) -> Result<(), LedgerError> {
        self.append_line(&Line::Hold(HoldEntry {
            hold: HoldOp::Place,
            sid: hex::encode(sid.0),
            scope: scope.name().to_owned(),
            at_ms: hold.placed_ms,
            until_ms: hold.until_ms,
            reason: hold.reason.clone(),
        }))
    }

    /// Appends the release of the hold on `sid`'s `scope` (`reason`: why), synced before returning.
    pub fn append_release(
        &self,
        sid: &Sid,
        scope: &HoldScope,
        reason: &str,
        at_ms: Millis,
    ) -> Result<(), LedgerError> {
        self.append_line(&Line::Hold(HoldEntry {
            hold: HoldOp::Release,
            sid: hex::encode(sid.0),
            scope: scope.name().to_owned(),
            at_ms,
            until_ms: None,
            reason: reason.to_owned(),
        }))
    }

    /// Every sid the ledger names.
    pub fn sids(&self) -> Result<BTreeSet<Sid>, LedgerError> {
        Ok(self.entries()?.into_keys().collect())
    }

    /// Appends the shred of `sid`'s `incarnation` (when it had one) and syncs before returning.
    pub fn append(
        &self,
        sid: &Sid,
        incarnation: Option<&[u8; 16]>,
        shredded_ms: Millis,
    ) -> Result<(), LedgerError> {
        self.append_line(&Line::Shred(Entry {
            sid: hex::encode(sid.0),
            shredded_ms,
            incarnation: incarnation.map(hex::encode),
        }))
    }

    fn append_line(&self, line: &Line) -> Result<(), LedgerError> {
        let io = |source| LedgerError::Io {
            path: self.path.clone(),
            source,
        };
        let line = serde_json::to_string(line).unwrap_or_default();
        fail::fail_point!("ledger-append", |_| Err(LedgerError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("ledger append failed (injected)"),
        }));
        match &self.backing {
            Backing::File(file) => {
                let mut file = file
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                file.write_all(format!("{line}\n").as_bytes()).map_err(io)?;
                file.sync_data().map_err(io)
            }
            Backing::Database(store) => Ok(database(store)?.append_ledger(&line)?),
        }
    }
}

/// The PostgreSQL backend of `store`, which [`Ledger::in_database`] checked.
fn database(store: &crate::store::Store) -> Result<&crate::store::PgStore, LedgerError> {
    store
        .postgres()
        .ok_or(LedgerError::Store(crate::store::StoreError::Unsupported {
            backend: "rocksdb",
            what: "a deletion ledger in the database (it is a file beside db/)",
        }))
}

/// Cuts a last line that has no newline (an append torn by a crash), keeping every whole line.
fn repair_tail(file: &File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut reader = file;
    let mut last = [0u8; 1];
    reader.seek(SeekFrom::Start(len - 1))?;
    reader.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    let mut text = Vec::new();
    reader.seek(SeekFrom::Start(0))?;
    reader.read_to_end(&mut text)?;
    let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    tracing::warn!(
        bytes = text.len() - keep,
        "the deletion ledger ends in a torn line (a crash mid-append); cutting it off"
    );
    file.set_len(keep as u64)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_sids_are_read_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let ledger = Ledger::open(&path).unwrap();
        ledger.append(&Sid([1; 32]), None, 5).unwrap();
        ledger.append(&Sid([2; 32]), Some(&[9; 16]), 6).unwrap();
        drop(ledger);
        let sids = Ledger::open(&path).unwrap().sids().unwrap();
        assert_eq!(sids, BTreeSet::from([Sid([1; 32]), Sid([2; 32])]));
        std::fs::write(&path, "not json\n").unwrap();
        assert!(Ledger::open(&path).unwrap().sids().is_err());
    }

    #[test]
    fn shreds_cover_only_what_they_erased() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("ledger")).unwrap();
        ledger.append(&Sid([1; 32]), Some(&[7; 16]), 100).unwrap();
        ledger.append(&Sid([2; 32]), None, 100).unwrap();
        let entries = ledger.entries().unwrap();
        let tracked = &entries[&Sid([1; 32])];
        assert!(tracked.covers(Some(&[7; 16]), 50));
        assert!(!tracked.covers(Some(&[8; 16]), 50), "another incarnation");
        assert!(tracked.covers(None, 50), "format 1: older than the shred");
        assert!(
            !tracked.covers(None, 150),
            "format 1: created after the shred"
        );
        let untracked = &entries[&Sid([2; 32])];
        assert!(
            untracked.covers(Some(&[8; 16]), 50),
            "older than a shred of nothing"
        );
        assert!(
            !untracked.covers(Some(&[8; 16]), 100),
            "created at or after it"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_ledger_file_opens_or_is_refused_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ledger");
            std::fs::write(&path, &bytes).unwrap();
            if let Ok(ledger) = Ledger::open(&path) {
                let _ = ledger.entries();
            }
        }
    }

    #[test]
    fn holds_replay_in_order_beside_shreds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let ledger = Ledger::open(&path).unwrap();
        let tax = HoldScope::parse("tax").unwrap();
        let hold = Hold {
            reason: "case-7".into(),
            placed_ms: 10,
            until_ms: Some(99),
        };
        ledger.append(&Sid([1; 32]), None, 5).unwrap();
        ledger.append_hold(&Sid([1; 32]), &tax, &hold).unwrap();
        ledger
            .append_hold(&Sid([2; 32]), &HoldScope::All, &hold)
            .unwrap();
        ledger
            .append_release(&Sid([2; 32]), &HoldScope::All, "settled", 20)
            .unwrap();
        drop(ledger);
        let ledger = Ledger::open(&path).unwrap();
        let book = ledger.holds().unwrap();
        assert_eq!(
            book.of(&Sid([1; 32])).collect::<Vec<_>>(),
            vec![(&tax, &hold)]
        );
        assert_eq!(book.of(&Sid([2; 32])).count(), 0);
        assert_eq!(ledger.sids().unwrap(), BTreeSet::from([Sid([1; 32])]));
    }

    #[test]
    fn a_torn_last_line_is_cut_and_every_whole_line_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let ledger = Ledger::open(&path).unwrap();
        ledger.append(&Sid([1; 32]), None, 5).unwrap();
        drop(ledger);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"sid\":\"02");
        std::fs::write(&path, &bytes).unwrap();
        let ledger = Ledger::open(&path).unwrap();
        assert_eq!(ledger.sids().unwrap(), BTreeSet::from([Sid([1; 32])]));
        ledger.append(&Sid([3; 32]), None, 6).unwrap();
        assert_eq!(
            ledger.sids().unwrap(),
            BTreeSet::from([Sid([1; 32]), Sid([3; 32])])
        );
    }
}
