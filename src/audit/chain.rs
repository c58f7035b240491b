//! The chain's head and appends: one writer at a time extends the chain inside the caller's batch,
//! and the head moves only once that batch is durable.

use std::sync::Mutex;

use super::AuditError;
use super::record::{AuditEvent, AuditRecord};
use crate::clock::{Millis, rfc3339};
use crate::store::keys::{audit_key, audit_seq};
use crate::store::{Batch, Cf, Store};

const HEAD_KEY: &[u8] = b"audit_head";
const GENESIS: [u8; 32] = [0; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: [u8; 32],
}

fn decode_head(bytes: &[u8]) -> Option<Head> {
    let seq = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let hash = bytes.get(8..40)?.try_into().ok()?;
    (bytes.len() == 40).then_some(Head { seq, hash })
}

fn encode_head(head: &Head) -> Vec<u8> {
    let mut out = head.seq.to_be_bytes().to_vec();
    out.extend_from_slice(&head.hash);
    out
}

/// The appender: holds the head of the chain.
#[derive(Debug)]
pub struct AuditLog {
    head: Mutex<Head>,
}

impl AuditLog {
    /// Loads the head and checks that it names the last stored record.
    pub fn open(store: &Store) -> Result<Self, AuditError> {
        let stored = store.get(Cf::Meta, HEAD_KEY)?;
        let last = store.last(Cf::Audit)?;
        let head = match (stored, last) {
            (None, None) => Head {
                seq: 0,
                hash: GENESIS,
            },
            (Some(bytes), Some((key, value))) => {
                let head = decode_head(&bytes)
                    .ok_or_else(|| AuditError::Corrupt("malformed head".into()))?;
                let record: AuditRecord = serde_json::from_slice(&value)
                    .map_err(|_| AuditError::Corrupt("malformed last record".into()))?;
                if audit_seq(&key) != Some(head.seq) || record.hash != hex::encode(head.hash) {
                    return Err(AuditError::Corrupt(format!(
                        "head names seq {} but the last record is seq {}",
                        head.seq, record.seq
                    )));
                }
                head
            }
            _ => return Err(AuditError::Corrupt("head and records disagree".into())),
        };
        Ok(Self {
            head: Mutex::new(head),
        })
    }

    /// Appends the record of `event` to `batch` and writes the batch durably; returns its seq.
    /// The chain's head moves only when the write succeeded, so a failed write leaves no gap.
    pub fn commit(
        &self,
        store: &Store,
        mut batch: Batch,
        event: AuditEvent,
        now: Millis,
    ) -> Result<u64, AuditError> {
        let mut head = self
            .head
            .lock()
            .map_err(|_| AuditError::Corrupt("audit writer poisoned".into()))?;
        let seq = head.seq + 1;
        let record = AuditRecord::new(seq, rfc3339(now), event, &head.hash);
        let hash: [u8; 32] = hex::decode(&record.hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| AuditError::Corrupt("hash encoding".into()))?;
        let bytes = serde_json::to_vec(&record).map_err(|e| AuditError::Corrupt(e.to_string()))?;
        let next = Head { seq, hash };
        batch.put(Cf::Audit, audit_key(seq).to_vec(), bytes);
        batch.put(Cf::Meta, HEAD_KEY.to_vec(), encode_head(&next));
        store.write(&batch)?;
        *head = next;
        Ok(seq)
    }

    /// The sequence number of the last record.
    pub fn head_seq(&self) -> u64 {
        self.head.lock().map_or(0, |h| h.seq)
    }

    /// The head: the last record's seq and hash.
    pub fn head(&self) -> (u64, [u8; 32]) {
        self.head.lock().map_or((0, GENESIS), |h| (h.seq, h.hash))
    }
}

/// Where and why a chain failed to verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit record {seq}: {reason}")]
pub struct VerifyError {
    /// The first bad sequence number.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// The hash stored in record `seq`, if it exists and parses.
fn stored_hash(store: &Store, seq: u64) -> Result<[u8; 32], VerifyError> {
    let fail = |reason: &str| VerifyError {
        seq,
        reason: reason.to_owned(),
    };
    let bytes = store
        .get(Cf::Audit, &audit_key(seq))
        .map_err(|e| fail(&e.to_string()))?
        .ok_or_else(|| fail("missing"))?;
    let record: AuditRecord =
        serde_json::from_slice(&bytes).map_err(|_| fail("unreadable record"))?;
    hex::decode(&record.hash)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| fail("malformed hash"))
}

/// Walks the whole chain; returns the head `(seq, hash)` or the first bad seq.
pub fn verify(store: &Store) -> Result<(u64, String), VerifyError> {
    verify_range(store, 1, None)
}

/// Walks records `from..=to` (to the end when `to` is `None`), starting from the stored hash of
/// record `from - 1`. Returns the last `(seq, hash)` walked, or the first bad seq and why.
pub fn verify_range(
    store: &Store,
    from: u64,
    to: Option<u64>,
) -> Result<(u64, String), VerifyError> {
    let fail = |seq, reason: &str| VerifyError {
        seq,
        reason: reason.to_owned(),
    };
    let from = from.max(1);
    let mut prev = if from == 1 {
        GENESIS
    } else {
        stored_hash(store, from - 1)?
    };
    let mut expected = from;
    'pages: loop {
        let page = store
            .scan_from(Cf::Audit, &audit_key(expected), 1024)
            .map_err(|e| fail(expected, &e.to_string()))?;
        if page.is_empty() {
            break;
        }
        for (key, value) in page {
            if to.is_some_and(|t| expected > t) {
                break 'pages;
            }
            if audit_seq(&key) != Some(expected) {
                return Err(fail(expected, "missing (the next record has another seq)"));
            }
            let record: AuditRecord =
                serde_json::from_slice(&value).map_err(|_| fail(expected, "unreadable record"))?;
            if record.seq != expected {
                return Err(fail(expected, "stored under another seq"));
            }
            if record.prev_hash != hex::encode(prev) {
                return Err(fail(
                    expected,
                    "prev_hash does not match the previous record",
                ));
            }
            let hash = record.compute_hash(&prev);
            if record.hash != hex::encode(hash) {
                return Err(fail(expected, "hash does not match the record's contents"));
            }
            prev = hash;
            expected += 1;
        }
    }
    if let Some(t) = to
        && expected <= t
    {
        return Err(fail(
            expected,
            "missing (the log ends before the requested range)",
        ));
    }
    Ok((expected - 1, hex::encode(prev)))
}
