//! Stored records in either format, read back: decoding with their segment's dictionary (rebuilt
//! from the records' own definitions, found through the hints in the meta CF, and cached), the
//! segment table, and the walk that verifies a chain from its bytes.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use super::AuditError;
use super::codec::{self, CodecError, FORMAT_V2, Header};
use super::log::{Log, Sealed};
use super::record::{AuditRecord, V1Error, V1Record, chain_hash};
use crate::store::keys::{
    audit_defs_key, audit_defs_prefix, audit_key, audit_segment_key, audit_seq, prefix_end,
    trailing_seq,
};
use crate::store::{Cf, Store};

/// The hash before the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// A stored value, parsed as far as needs no dictionary.
pub(super) enum Stored<'a> {
    /// Format 1: JSON.
    V1(Box<V1Record>),
    /// Format 2: header, body, canonical bytes and the stored hash.
    V2 {
        header: Header,
        body: &'a [u8],
        canonical: &'a [u8],
        hash: [u8; 32],
    },
}

impl<'a> Stored<'a> {
    pub(super) fn parse(bytes: &'a [u8]) -> Result<Self, &'static str> {
        match bytes.first() {
            Some(b'{') => V1Record::parse(bytes)
                .map(|r| Self::V1(Box::new(r)))
                .map_err(|_| "unreadable record"),
            Some(&FORMAT_V2) => {
                let (canonical, hash) = codec::split_stored(bytes).map_err(|e| e.0)?;
                let (header, body) = codec::header(canonical).map_err(|e| e.0)?;
                Ok(Self::V2 {
                    header,
                    body,
                    canonical,
                    hash,
                })
            }
            _ => Err("unknown record format"),
        }
    }

    /// The hash the record carries.
    pub(super) fn hash(&self) -> Option<[u8; 32]> {
        match self {
            Self::V1(r) => r.stored_hash(),
            Self::V2 { hash, .. } => Some(*hash),
        }
    }

    /// The seq the record names.
    pub(super) fn seq(&self) -> Option<u64> {
        match self {
            Self::V1(r) => r.decode().ok().map(|r| r.seq),
            Self::V2 { header, .. } => Some(header.seq),
        }
    }
}

/// Where segment `n` of the log starts: its first seq and the hash before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentStart {
    /// The segment's number, from 1.
    pub segment: u64,
    /// Its first record.
    pub first_seq: u64,
    /// The hash of the record before it.
    pub prev_hash: [u8; 32],
}

impl SegmentStart {
    pub(super) fn encode(&self) -> Vec<u8> {
        [&self.first_seq.to_be_bytes()[..], &self.prev_hash].concat()
    }

    fn decode(segment: u64, bytes: &[u8]) -> Option<Self> {
        (bytes.len() == 40).then_some(())?;
        Some(Self {
            segment,
            first_seq: u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?),
            prev_hash: bytes.get(8..40)?.try_into().ok()?,
        })
    }
}

/// Segment `segment`'s entry in the segment table. Segment 1 always starts the chain (format-1
/// directories wrote no table), so it needs none.
pub(super) fn segment_start(
    store: &Store,
    segment: u64,
) -> Result<Option<SegmentStart>, AuditError> {
    if segment == 1 {
        return Ok(Some(SegmentStart {
            segment,
            first_seq: 1,
            prev_hash: GENESIS,
        }));
    }
    match store.get(Cf::Meta, &audit_segment_key(segment))? {
        None => Ok(None),
        Some(bytes) => SegmentStart::decode(segment, &bytes)
            .map(Some)
            .ok_or_else(|| AuditError::Corrupt(format!("segment {segment}'s entry is malformed"))),
    }
}

/// The strings segment `segment` defined in records before `before` (every one when `None`),
/// rebuilt from the records the hints name; `through` is the last such record.
fn load_dictionary(
    log: Log<'_>,
    segment: u64,
    mut strings: Vec<String>,
    after: u64,
    before: Option<u64>,
) -> Result<(Vec<String>, u64), AuditError> {
    if log.sealed.is_dropped(segment) {
        // Its hints left with it: the archived file's own records define its dictionary.
        return dictionary_from_records(log, segment, before);
    }
    let prefix = audit_defs_prefix(segment);
    let end = before.map_or_else(|| prefix_end(&prefix), |b| Some(audit_defs_key(segment, b)));
    let mut through = after;
    loop {
        let page = log
            .store
            .scan_from(Cf::Meta, &audit_defs_key(segment, through + 1), 256)?;
        let mut progressed = false;
        for (key, _) in page {
            if !key.starts_with(&prefix) || end.as_ref().is_some_and(|e| &key >= e) {
                return Ok((strings, through));
            }
            let seq = trailing_seq(&key)
                .ok_or_else(|| AuditError::Corrupt("malformed dictionary hint".into()))?;
            let bytes = log
                .get(seq)?
                .ok_or_else(|| AuditError::Corrupt(format!("record {seq} is missing")))?;
            let Ok(Stored::V2 { header, .. }) = Stored::parse(&bytes) else {
                return Err(AuditError::Corrupt(format!("record {seq} is unreadable")));
            };
            if header.segment != segment || header.first_id as usize != strings.len() {
                return Err(AuditError::Corrupt(format!(
                    "record {seq} does not continue segment {segment}'s dictionary"
                )));
            }
            strings.extend(header.defs);
            through = seq;
            progressed = true;
        }
        if !progressed {
            return Ok((strings, through));
        }
    }
}

/// The dictionary of sealed segment `segment`, read from its records' definitions.
fn dictionary_from_records(
    log: Log<'_>,
    segment: u64,
    before: Option<u64>,
) -> Result<(Vec<String>, u64), AuditError> {
    let cp = log
        .sealed
        .checkpoints()
        .into_iter()
        .find(|c| c.segment == segment)
        .ok_or_else(|| AuditError::Corrupt(format!("segment {segment} is not sealed")))?;
    let end = before.map_or(cp.last_seq, |b| b.saturating_sub(1).min(cp.last_seq));
    let mut strings = Vec::new();
    let mut at = cp.first_seq;
    while at <= end {
        let page = log.scan_from(at, 1024)?;
        let Some((last, _)) = page.last() else { break };
        let last = *last;
        for (seq, bytes) in page {
            if seq > end {
                break;
            }
            if let Ok(Stored::V2 { header, .. }) = Stored::parse(&bytes)
                && !header.defs.is_empty()
            {
                if header.first_id as usize != strings.len() {
                    return Err(AuditError::Corrupt(format!(
                        "record {seq} does not continue segment {segment}'s dictionary"
                    )));
                }
                strings.extend(header.defs);
            }
        }
        at = last + 1;
    }
    Ok((strings, end))
}

/// Every string segment `segment` has defined so far.
pub(super) fn load_segment_dictionary(
    log: Log<'_>,
    segment: u64,
) -> Result<Vec<String>, AuditError> {
    load_dictionary(log, segment, Vec::new(), 0, None).map(|(strings, _)| strings)
}

/// A segment's dictionary as far as it is known, and the last record whose definitions it holds.
type Known = Arc<(Vec<String>, u64)>;

/// The dictionaries of recently read segments.
pub struct Dictionaries {
    cache: Mutex<lru::LruCache<u64, Known>>,
    /// Records decoded through it: what a query cost.
    decoded: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Dictionaries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dictionaries")
    }
}

impl Default for Dictionaries {
    fn default() -> Self {
        Self {
            cache: Mutex::new(lru::LruCache::new(NonZeroUsize::MIN.saturating_add(15))),
            decoded: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Dictionaries {
    /// Segment `segment`'s dictionary as far as it is known; with `refresh`, extended by the
    /// records written since it was cached.
    fn get(&self, log: Log<'_>, segment: u64, refresh: bool) -> Result<Known, AuditError> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&segment)
            .cloned();
        let built = match cached {
            Some(c) if !refresh => return Ok(c),
            Some(c) => load_dictionary(log, segment, c.0.clone(), c.1, None)?,
            None => load_dictionary(log, segment, Vec::new(), 0, None)?,
        };
        let built = Arc::new(built);
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(segment, Arc::clone(&built));
        Ok(built)
    }

    /// The time and event of stored `bytes` of record `seq`, without its hashes.
    pub fn event(
        &self,
        log: Log<'_>,
        seq: u64,
        bytes: &[u8],
    ) -> Result<(crate::clock::Millis, super::AuditEvent), AuditError> {
        self.decode(log, seq, bytes, Some(GENESIS))
            .map(|r| (r.time_ms, r.event))
    }

    /// Decodes stored `bytes` of record `seq`, whose predecessor's hash is `prev` (read when not
    /// given).
    pub fn decode(
        &self,
        log: Log<'_>,
        seq: u64,
        bytes: &[u8],
        prev: Option<[u8; 32]>,
    ) -> Result<AuditRecord, AuditError> {
        self.decoded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let corrupt = |why: &str| AuditError::Corrupt(format!("record {seq}: {why}"));
        let record = match Stored::parse(bytes).map_err(corrupt)? {
            Stored::V1(r) => r.decode().map_err(|_| corrupt("unreadable record"))?,
            Stored::V2 {
                header, body, hash, ..
            } => {
                let mut event = None;
                for refresh in [false, true] {
                    let dict = self.get(log, header.segment, refresh)?;
                    match codec::body(body, &dict.0) {
                        Ok(e) => {
                            event = Some(e);
                            break;
                        }
                        Err(CodecError(why)) if refresh => return Err(corrupt(why)),
                        Err(_) => {}
                    }
                }
                let event = event.ok_or_else(|| corrupt("undecodable"))?;
                let prev_hash = match prev {
                    Some(p) => p,
                    None => prev_hash_of(log, seq)?,
                };
                AuditRecord {
                    seq: header.seq,
                    time_ms: header.time_ms,
                    event,
                    prev_hash,
                    hash,
                }
            }
        };
        if record.seq != seq {
            return Err(corrupt("stored under another seq"));
        }
        Ok(record)
    }

    /// How many records were decoded through these dictionaries.
    pub fn decoded(&self) -> u64 {
        self.decoded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Record `seq`, if stored.
    pub fn read(&self, log: Log<'_>, seq: u64) -> Result<Option<AuditRecord>, AuditError> {
        match log.get(seq)? {
            None => Ok(None),
            Some(bytes) => self.decode(log, seq, &bytes, None).map(Some),
        }
    }
}

/// The hash of the record before `seq`.
fn prev_hash_of(log: Log<'_>, seq: u64) -> Result<[u8; 32], AuditError> {
    if seq <= 1 {
        return Ok(GENESIS);
    }
    let bytes = log
        .get(seq - 1)?
        .ok_or_else(|| AuditError::Corrupt(format!("record {} is missing", seq - 1)))?;
    Stored::parse(&bytes)
        .ok()
        .and_then(|s| s.hash())
        .ok_or_else(|| AuditError::Corrupt(format!("record {} is unreadable", seq - 1)))
}

/// Where and why a chain failed to verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit record {seq}: {reason}")]
pub struct VerifyError {
    /// The first bad sequence number.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: String,
    /// The log could not be read there (a storage error): nothing is known to be wrong with the
    /// chain, and no tampering may be reported.
    pub unreadable: bool,
}

impl VerifyError {
    pub(super) fn bad(seq: u64, reason: impl Into<String>) -> Self {
        Self {
            seq,
            reason: reason.into(),
            unreadable: false,
        }
    }

    fn storage(seq: u64, e: impl std::fmt::Display) -> Self {
        Self {
            seq,
            reason: e.to_string(),
            unreadable: true,
        }
    }
}

/// The state of a walk along the chain: what the next record must continue.
pub(super) struct Walker {
    prev: [u8; 32],
    expected: u64,
    segment: u64,
    dict: Vec<String>,
    seen_v2: bool,
}

impl Walker {
    /// A walk from the first record.
    pub(super) fn from_genesis() -> Self {
        Self {
            prev: GENESIS,
            expected: 1,
            segment: 1,
            dict: Vec::new(),
            seen_v2: false,
        }
    }

    /// A walk of segment `cp.segment` alone, from its checkpoint's previous hash.
    pub(super) fn at_segment_start(cp: &super::segment::Checkpoint) -> Self {
        Self {
            prev: cp.prev_hash,
            expected: cp.first_seq,
            segment: cp.segment,
            dict: Vec::new(),
            seen_v2: false,
        }
    }

    /// A walk from the first record after dropped segment `cp`, from its signed last hash.
    fn after_segment(cp: &super::segment::Checkpoint) -> Self {
        Self {
            prev: cp.last_hash,
            expected: cp.last_seq + 1,
            segment: cp.segment,
            dict: Vec::new(),
            seen_v2: true,
        }
    }

    /// A walk from record `from`, trusting the stored hash of `from - 1` and rebuilding the
    /// dictionary of `from`'s segment from the records before it.
    fn from_seq(log: Log<'_>, from: u64) -> Result<Self, VerifyError> {
        if from <= 1 {
            return Ok(Self::from_genesis());
        }
        let fail = |reason: &str| VerifyError::bad(from - 1, reason);
        let prev_bytes = log
            .get(from - 1)
            .map_err(|e| VerifyError::storage(from - 1, e))?
            .ok_or_else(|| fail("missing"))?;
        let prev_stored = Stored::parse(&prev_bytes).map_err(fail)?;
        let prev = prev_stored.hash().ok_or_else(|| fail("malformed hash"))?;
        let mut walker = Self {
            prev,
            expected: from,
            segment: 1,
            dict: Vec::new(),
            seen_v2: false,
        };
        if let Stored::V2 { header, .. } = prev_stored {
            walker.seen_v2 = true;
            walker.segment = header.segment;
            walker.dict = load_dictionary(log, header.segment, Vec::new(), 0, Some(from))
                .map_err(|e| VerifyError::bad(from, e.to_string()))?
                .0;
        }
        Ok(walker)
    }

    /// The seq the next record must have.
    pub(super) fn expected(&self) -> u64 {
        self.expected
    }

    /// The hash of the last record walked.
    pub(super) fn prev(&self) -> [u8; 32] {
        self.prev
    }

    /// Checks that `bytes` are the next record; returns its decoded form.
    pub(super) fn step(
        &mut self,
        store: Option<&Store>,
        bytes: &[u8],
    ) -> Result<AuditRecord, VerifyError> {
        let seq = self.expected;
        let fail = |reason: &str| VerifyError::bad(seq, reason);
        let record = match Stored::parse(bytes).map_err(fail)? {
            Stored::V1(r) => {
                if self.seen_v2 {
                    return Err(fail("a format-1 record after format 2"));
                }
                let hash = r.check(seq, &self.prev).map_err(|e| {
                    fail(match e {
                        V1Error::Unreadable => "unreadable record",
                        V1Error::OtherSeq => "stored under another seq",
                        V1Error::PrevHash => "prev_hash does not match the previous record",
                        V1Error::Hash => "hash does not match the record's contents",
                    })
                })?;
                let mut record = r.decode().map_err(|_| fail("unreadable record"))?;
                record.hash = hash;
                record
            }
            Stored::V2 {
                header,
                body,
                canonical,
                hash,
            } => {
                if header.seq != seq {
                    return Err(fail("stored under another seq"));
                }
                if chain_hash(&self.prev, canonical) != hash {
                    return Err(fail("hash does not match the record's contents"));
                }
                if header.segment != self.segment {
                    if header.segment != self.segment + 1 {
                        return Err(fail("segment out of order"));
                    }
                    let Some(store) = store else {
                        return Err(fail("a segment file holds records of another segment"));
                    };
                    let start = segment_start(store, header.segment)
                        .map_err(|e| VerifyError::storage(seq, e))?;
                    if start
                        != Some(SegmentStart {
                            segment: header.segment,
                            first_seq: seq,
                            prev_hash: self.prev,
                        })
                    {
                        return Err(fail("the segment table does not name this segment start"));
                    }
                    self.segment = header.segment;
                    self.dict.clear();
                }
                if !header.defs.is_empty() {
                    if header.first_id as usize != self.dict.len() {
                        return Err(fail("dictionary definitions out of order"));
                    }
                    self.dict.extend(header.defs);
                }
                let event = codec::body(body, &self.dict).map_err(|e| fail(e.0))?;
                self.seen_v2 = true;
                AuditRecord {
                    seq,
                    time_ms: header.time_ms,
                    event,
                    prev_hash: self.prev,
                    hash,
                }
            }
        };
        self.prev = record.hash;
        self.expected += 1;
        Ok(record)
    }
}

/// Walks the whole chain of `store` (its live records and sealed segments); returns the head
/// `(seq, hash)` or the first bad seq.
pub fn verify(store: &Store) -> Result<(u64, String), VerifyError> {
    let sealed = Sealed::load(store).map_err(|e| VerifyError::storage(1, e))?;
    verify_range(
        Log {
            store,
            sealed: &sealed,
        },
        1,
        None,
    )
}

/// Walks records `from..=to` (to the end when `to` is `None`), starting from the stored hash of
/// record `from - 1`; at the end of each sealed segment, checks its checkpoint (the last hash and
/// the signature). Returns the last `(seq, hash)` walked, or the first bad seq and why.
pub fn verify_range(
    log: Log<'_>,
    from: u64,
    to: Option<u64>,
) -> Result<(u64, String), VerifyError> {
    let checkpoints = log.sealed.checkpoints();
    // Segments dropped from the live log whose archive is not at hand: the chain continues from
    // the last one's signed checkpoint.
    let unreadable_prefix = checkpoints
        .iter()
        .take_while(|c| log.sealed.is_dropped(c.segment) && !log.sealed.readable(c.segment))
        .last()
        .copied();
    let mut walker = match unreadable_prefix {
        Some(cp) if from <= cp.last_seq + 1 => {
            cp.check_signature(None).map_err(|why| {
                VerifyError::bad(cp.last_seq, format!("segment {}: {why}", cp.segment))
            })?;
            Walker::after_segment(&cp)
        }
        _ => Walker::from_seq(log, from.max(1))?,
    };
    'pages: loop {
        let at = walker.expected();
        let page = log.scan_from(at, 1024).map_err(|e| match e {
            AuditError::Corrupt(reason) => VerifyError::bad(at, reason),
            e => VerifyError::storage(at, e),
        })?;
        if page.is_empty() {
            break;
        }
        for (seq, value) in page {
            let expected = walker.expected();
            if to.is_some_and(|t| expected > t) {
                break 'pages;
            }
            if seq != expected {
                return Err(VerifyError::bad(
                    expected,
                    "missing (the next record has another seq)",
                ));
            }
            let record = walker.step(Some(log.store), &value)?;
            if let Some(cp) = checkpoints.iter().find(|c| c.last_seq == seq) {
                if cp.last_hash != record.hash {
                    return Err(VerifyError::bad(
                        seq,
                        format!(
                            "segment {} does not end with its checkpoint's hash",
                            cp.segment
                        ),
                    ));
                }
                cp.check_signature(None).map_err(|why| {
                    VerifyError::bad(seq, format!("segment {}: {why}", cp.segment))
                })?;
            }
        }
    }
    if let Some(t) = to
        && walker.expected() <= t
    {
        return Err(VerifyError::bad(
            walker.expected(),
            "missing (the log ends before the requested range)",
        ));
    }
    if let Some(cp) = checkpoints.last()
        && to.is_none()
        && walker.expected() <= cp.last_seq
    {
        return Err(VerifyError::bad(
            walker.expected(),
            format!(
                "missing: segment {} was sealed through seq {}, the log ends before",
                cp.segment, cp.last_seq
            ),
        ));
    }
    Ok((walker.expected() - 1, hex::encode(walker.prev())))
}

/// Writes the subject-index entries of the format-1 (JSON) records of the log, all of segment 1:
/// the upgrade of a directory whose log predates the index. Idempotent. Returns how many records
/// name a subject.
pub fn index_json_records(store: &Store) -> Result<u64, AuditError> {
    let mut indexed = 0;
    let mut next = 1;
    loop {
        let page = store.scan_from(Cf::Audit, &audit_key(next), 1024)?;
        let Some((last, _)) = page.last() else {
            return Ok(indexed);
        };
        next = audit_seq(last).map_or(u64::MAX, |s| s.saturating_add(1));
        let mut batch = crate::store::Batch::new();
        for (key, bytes) in &page {
            let Ok(Stored::V1(record)) = Stored::parse(bytes) else {
                // The first binary record: the JSON ones are all before it.
                store.write(&batch)?;
                return Ok(indexed);
            };
            let seq =
                audit_seq(key).ok_or_else(|| AuditError::Corrupt("malformed record key".into()))?;
            let record = record
                .decode()
                .map_err(|_| AuditError::Corrupt(format!("record {seq} is unreadable")))?;
            if let Some(subject) = record.event.subject {
                batch.put(
                    Cf::AuditIndex,
                    crate::store::keys::audit_index_key(1, &subject.0, seq),
                    Vec::new(),
                );
                indexed += 1;
            }
        }
        store.write(&batch)?;
    }
}
