//! Where the records are, behind one reader: the live column family (the open segment, and closed
//! ones not sealed yet) and the sealed segment files. This and the group writer are the only parts
//! of the audit module that touch storage: the seam a second backend would fill.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::AuditError;
use super::segment::{Checkpoint, SegmentFile, file_name};
use crate::store::keys::{
    AUDIT_DROPPED_PREFIX, AUDIT_SEALED_PREFIX, audit_key, audit_seq, trailing_seq,
};
use crate::store::{Cf, Store};

/// The sealed segments: their checkpoints (from the meta CF) and recently read files.
pub struct Sealed {
    dir: PathBuf,
    /// Whether closed segments are sealed into files (not on PostgreSQL).
    seals: bool,
    list: RwLock<Vec<Checkpoint>>,
    /// Segments dropped from the live log, and the archive directory holding each.
    dropped: RwLock<BTreeMap<u64, PathBuf>>,
    /// An archive directory to read every dropped segment from instead (`verify --archive`).
    archive: Option<PathBuf>,
    files: Mutex<lru::LruCache<u64, Arc<SegmentFile>>>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed").field("dir", &self.dir).finish()
    }
}

/// The directory of `store`'s sealed segments: `audit/` beside `db/`. None on PostgreSQL, where
/// the table is the log: a closed segment stays in it, since a file would live on one node only.
pub fn segments_dir(store: &Store) -> Option<PathBuf> {
    store.path().map(|db| db.with_file_name("audit"))
}

impl Sealed {
    /// The sealed segments `store` names.
    pub fn load(store: &Store) -> Result<Self, AuditError> {
        let mut list = Vec::new();
        for (key, value) in store.scan_prefix(Cf::Meta, AUDIT_SEALED_PREFIX)? {
            let cp = Checkpoint::decode(&value).ok_or_else(|| {
                AuditError::Corrupt(format!(
                    "sealed segment entry {} is malformed",
                    hex::encode(&key)
                ))
            })?;
            list.push(cp);
        }
        list.sort_by_key(|c| c.first_seq);
        let mut dropped = BTreeMap::new();
        for (key, value) in store.scan_prefix(Cf::Meta, AUDIT_DROPPED_PREFIX)? {
            let marker: super::archive::Marker = serde_json::from_slice(&value).map_err(|_| {
                AuditError::Corrupt("a dropped segment's entry is malformed".into())
            })?;
            let segment = trailing_seq(&key).ok_or_else(|| {
                AuditError::Corrupt("a dropped segment's key is malformed".into())
            })?;
            dropped.insert(segment, marker.archive_dir);
        }
        Ok(Self {
            seals: store.path().is_some(),
            dir: segments_dir(store).unwrap_or_default(),
            list: RwLock::new(list),
            dropped: RwLock::new(dropped),
            archive: None,
            files: Mutex::new(lru::LruCache::new(NonZeroUsize::MIN.saturating_add(7))),
        })
    }

    /// The sealed segments of `store`, with dropped ones read from the archive `dir`.
    pub fn load_with_archive(store: &Store, dir: &Path) -> Result<Self, AuditError> {
        Ok(Self {
            archive: Some(dir.to_owned()),
            ..Self::load(store)?
        })
    }

    /// Where the files are.
    pub fn seals(&self) -> bool {
        self.seals
    }

    /// The directory of the sealed segment files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `segment` was dropped from the live log (its copy is in an archive).
    pub fn is_dropped(&self, segment: u64) -> bool {
        self.dropped
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&segment)
    }

    /// Records that `segment` left the live log for the archive `dir`.
    pub(super) fn mark_dropped(&self, segment: u64, dir: PathBuf) {
        self.dropped
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(segment, dir);
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop(&segment);
    }

    /// Where `segment`'s file is read from.
    fn path(&self, segment: u64) -> PathBuf {
        let name = file_name(segment);
        match self
            .dropped
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&segment)
        {
            Some(archived) => self.archive.as_ref().unwrap_or(archived).join(name),
            None => self.dir.join(name),
        }
    }

    /// Whether `segment`'s file can be read (a dropped one: whether its archive is at hand).
    pub fn readable(&self, segment: u64) -> bool {
        self.path(segment).exists()
    }

    /// Every sealed segment's checkpoint, in order.
    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        self.list
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes a sealed segment visible to readers (before its records leave the column family).
    pub(super) fn add(&self, cp: Checkpoint) {
        let mut list = self.list.write().unwrap_or_else(PoisonError::into_inner);
        if !list.iter().any(|c| c.segment == cp.segment) {
            list.push(cp);
            list.sort_by_key(|c| c.first_seq);
        }
    }

    /// The sealed segment holding `seq`.
    fn find(&self, seq: u64) -> Option<Checkpoint> {
        let list = self.list.read().unwrap_or_else(PoisonError::into_inner);
        let i = list.partition_point(|c| c.last_seq < seq);
        list.get(i).filter(|c| c.first_seq <= seq).copied()
    }

    fn file(&self, segment: u64) -> Result<Arc<SegmentFile>, AuditError> {
        if let Some(f) = self
            .files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&segment)
        {
            return Ok(Arc::clone(f));
        }
        let path = self.path(segment);
        if !path.exists() {
            return Err(AuditError::Corrupt(if self.is_dropped(segment) {
                format!(
                    "segment {segment} was archived to {} and is not there",
                    path.parent().unwrap_or(&path).display()
                )
            } else {
                format!(
                    "sealed segment {segment} is missing from {} (dropped without an archive, \
                     or deleted)",
                    self.dir.display()
                )
            }));
        }
        let file =
            Arc::new(SegmentFile::open(&path).map_err(|e| AuditError::Corrupt(e.to_string()))?);
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(segment, Arc::clone(&file));
        Ok(file)
    }
}

/// A reader of the whole log.
#[derive(Debug, Clone, Copy)]
pub struct Log<'a> {
    /// The database holding the live records.
    pub store: &'a Store,
    /// The sealed segments.
    pub sealed: &'a Sealed,
}

impl Log<'_> {
    /// Record `seq`'s stored bytes.
    pub fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, AuditError> {
        match self.sealed.find(seq) {
            Some(cp) => self
                .sealed
                .file(cp.segment)?
                .get(seq)
                .map_err(|e| AuditError::Corrupt(e.to_string())),
            None => Ok(self.store.get(Cf::Audit, &audit_key(seq))?),
        }
    }

    /// Up to `limit` records from `seq` on, in order; a page read from a sealed segment ends with
    /// it (so that a missing file is reported at its own first seq).
    pub fn scan_from(&self, seq: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        let mut next = seq.max(1);
        // Dropped segments whose archive is not at hand are skipped: the live log starts after.
        while let Some(cp) = self.sealed.find(next)
            && self.sealed.is_dropped(cp.segment)
            && !self.sealed.readable(cp.segment)
        {
            next = cp.last_seq + 1;
        }
        if let Some(cp) = self.sealed.find(next) {
            return self
                .sealed
                .file(cp.segment)?
                .range(next, limit)
                .map_err(|e| AuditError::Corrupt(e.to_string()));
        }
        with_seqs(self.store.scan_from(Cf::Audit, &audit_key(next), limit)?)
    }

    /// Up to `limit` records from `seq` (the last when `None`) backwards.
    pub fn scan_back(
        &self,
        seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        let mut out = Vec::new();
        let in_sealed = seq.is_some_and(|s| self.sealed.find(s).is_some());
        if !in_sealed {
            let start = seq.map(audit_key);
            out = with_seqs(self.store.scan_back(
                Cf::Audit,
                start.as_ref().map(|k| k.as_slice()),
                limit,
            )?)?;
        }
        let mut next = match (out.last(), seq) {
            (Some((s, _)), _) => s.checked_sub(1),
            (None, Some(s)) => Some(s),
            (None, None) => self.sealed.checkpoints().last().map(|c| c.last_seq),
        };
        while out.len() < limit {
            let Some(at) = next.filter(|s| *s > 0) else {
                break;
            };
            let Some(cp) = self.sealed.find(at) else {
                break;
            };
            let want = (limit - out.len()) as u64;
            let from = at.saturating_sub(want - 1).max(cp.first_seq);
            let page = self
                .sealed
                .file(cp.segment)?
                .range(from, (at - from + 1) as usize)
                .map_err(|e| AuditError::Corrupt(e.to_string()))?;
            out.extend(page.into_iter().rev());
            next = from.checked_sub(1);
        }
        Ok(out)
    }

    /// The last record.
    pub fn last(&self) -> Result<Option<(u64, Vec<u8>)>, AuditError> {
        Ok(self.scan_back(None, 1)?.pop())
    }
}

/// Audit-CF entries as `(seq, stored bytes)`.
fn with_seqs(entries: Vec<crate::store::Entry>) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
    entries
        .into_iter()
        .map(|(key, value)| {
            audit_seq(&key)
                .map(|seq| (seq, value))
                .ok_or_else(|| AuditError::Corrupt("malformed record key".into()))
        })
        .collect()
}
