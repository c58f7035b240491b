//! The chain's head and appends, with group commit: callers that commit at the same time share one
//! synced write. The first to arrive leads: it takes every queued commit, chains their records in
//! arrival order, writes them with their callers' changes as one atomic batch (one WAL sync), and
//! hands each caller its seq (or the shared error). The head moves only once that write is
//! durable, so no caller returns before its record is on disk.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

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

/// A commit waiting for a leader.
struct Pending {
    batch: Batch,
    event: AuditEvent,
    now: Millis,
    slot: Arc<Slot>,
}

/// Where one committer waits: woken once, either with its result or to lead the next group. A
/// deferred commit has no waiting thread: its result goes to the `deferred` channel instead.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    woken: Condvar,
    deferred: Mutex<Option<tokio::sync::oneshot::Sender<Result<u64, String>>>>,
}

/// A commit queued without waiting: resolves once its record is durable (or failed to be).
#[derive(Debug)]
pub struct CommitTicket(tokio::sync::oneshot::Receiver<Result<u64, String>>);

impl CommitTicket {
    /// Waits on the async runtime until the record is durable; returns its seq.
    pub async fn durable(self) -> Result<u64, AuditError> {
        match self.0.await {
            Ok(result) => result.map_err(AuditError::GroupFailed),
            Err(_) => Err(AuditError::GroupFailed("audit committer gone".into())),
        }
    }
}

#[derive(Default)]
enum SlotState {
    #[default]
    Waiting,
    Lead,
    Done(Result<u64, String>),
}

impl Slot {
    fn is_deferred(&self) -> bool {
        self.deferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    fn set(&self, state: SlotState) {
        if let SlotState::Done(result) = &state {
            let sender = self
                .deferred
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(sender) = sender {
                let _ = sender.send(result.clone());
                return;
            }
        }
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
        self.woken.notify_one();
    }

    /// Waits until woken; `None` means "lead".
    fn wait(&self) -> Option<Result<u64, String>> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            match std::mem::take(&mut *state) {
                SlotState::Waiting => {
                    state = self
                        .woken
                        .wait(state)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                SlotState::Lead => return None,
                SlotState::Done(result) => return Some(result),
            }
        }
    }
}

/// The shared state of the commit group.
struct Group {
    head: Head,
    queue: Vec<Pending>,
    leading: bool,
}

/// The appender: holds the head of the chain and the commit queue.
pub struct AuditLog {
    group: Mutex<Group>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("head_seq", &self.head_seq())
            .finish()
    }
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
            group: Mutex::new(Group {
                head,
                queue: Vec::new(),
                leading: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Group> {
        self.group
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends the record of `event` to `batch` and writes the batch durably; returns its seq.
    /// Concurrent commits share one synced write (group commit); each still returns only once its
    /// own record and changes are durable, and a failed write fails every commit of its group and
    /// moves the head by none of them.
    pub fn commit(
        &self,
        store: &Store,
        batch: Batch,
        event: AuditEvent,
        now: Millis,
    ) -> Result<u64, AuditError> {
        let slot = Arc::new(Slot::default());
        if self.enqueue(batch, event, now, &slot) {
            self.lead(store);
        }
        loop {
            match slot.wait() {
                Some(result) => return result.map_err(AuditError::GroupFailed),
                None => self.lead(store),
            }
        }
    }

    /// Queues the record of `event` (with `batch`) without waiting for it to be durable: the
    /// returned ticket resolves when it is. The calling thread leads the group when no one else
    /// does, so it may return only after writing other callers' groups. Reads use this to await
    /// durability on the async runtime instead of parking a thread.
    pub fn commit_deferred(
        &self,
        store: &Store,
        batch: Batch,
        event: AuditEvent,
        now: Millis,
    ) -> CommitTicket {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let slot = Arc::new(Slot {
            deferred: Mutex::new(Some(tx)),
            ..Slot::default()
        });
        if self.enqueue(batch, event, now, &slot) {
            self.lead(store);
        }
        CommitTicket(rx)
    }

    /// Queues one commit; true when the caller must lead (no group is being written).
    fn enqueue(&self, batch: Batch, event: AuditEvent, now: Millis, slot: &Arc<Slot>) -> bool {
        let mut group = self.lock();
        group.queue.push(Pending {
            batch,
            event,
            now,
            slot: Arc::clone(slot),
        });
        !std::mem::replace(&mut group.leading, true)
    }

    /// Writes queued groups until the lead can pass to a thread waiting on its own commit, or
    /// nothing is queued.
    fn lead(&self, store: &Store) {
        loop {
            let (pending, head) = {
                let mut group = self.lock();
                (std::mem::take(&mut group.queue), group.head)
            };
            let slots: Vec<Arc<Slot>> = pending.iter().map(|p| Arc::clone(&p.slot)).collect();
            let written = write_group(store, head, pending);
            let mut group = self.lock();
            let results: Vec<Result<u64, String>> = match written {
                Ok((next, seqs)) => {
                    group.head = next;
                    seqs.into_iter().map(Ok).collect()
                }
                Err(message) => vec![Err(message); slots.len()],
            };
            for (s, result) in slots.iter().zip(results) {
                s.set(SlotState::Done(result));
            }
            // Hand the lead to the first queued caller whose thread waits; deferred commits have
            // none, so with only those queued this thread writes their group too.
            if group.queue.is_empty() {
                group.leading = false;
                return;
            }
            if let Some(next) = group.queue.iter().find(|p| !p.slot.is_deferred()) {
                next.slot.set(SlotState::Lead);
                return;
            }
        }
    }

    /// The sequence number of the last record.
    pub fn head_seq(&self) -> u64 {
        self.lock().head.seq
    }

    /// The head: the last record's seq and hash.
    pub fn head(&self) -> (u64, [u8; 32]) {
        let head = self.lock().head;
        (head.seq, head.hash)
    }
}

/// Chains the records of `pending` after `head` and writes them, with their callers' changes, as
/// one synced batch. Returns the new head and each commit's seq, in order, or the error.
fn write_group(
    store: &Store,
    mut head: Head,
    pending: Vec<Pending>,
) -> Result<(Head, Vec<u64>), String> {
    let mut batch = Batch::new();
    let mut results = Vec::with_capacity(pending.len());
    for p in pending {
        let seq = head.seq + 1;
        let record = AuditRecord::new(seq, rfc3339(p.now), p.event, &head.hash);
        let hash: Option<[u8; 32]> = hex::decode(&record.hash)
            .ok()
            .and_then(|h| h.try_into().ok());
        let bytes = serde_json::to_vec(&record);
        let (Some(hash), Ok(bytes)) = (hash, bytes) else {
            return Err("audit log is corrupt: record encoding".into());
        };
        batch.append(p.batch);
        batch.put(Cf::Audit, audit_key(seq).to_vec(), bytes);
        head = Head { seq, hash };
        results.push(seq);
    }
    batch.put(Cf::Meta, HEAD_KEY.to_vec(), encode_head(&head));
    match store.write(&batch) {
        Ok(()) => Ok((head, results)),
        Err(e) => Err(AuditError::Store(e).to_string()),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn concurrent_commits_share_writes_and_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = Arc::new(AuditLog::open(&store).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (store, log) = (Arc::clone(&store), Arc::clone(&log));
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| {
                            let mut batch = Batch::new();
                            batch.put(Cf::Fields, format!("t{t}-{i}"), b"x".to_vec());
                            let event = AuditEvent {
                                principal: format!("p{t}"),
                                action: "write".into(),
                                ..AuditEvent::default()
                            };
                            log.commit(&store, batch, event, 1).unwrap()
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let seqs: BTreeSet<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(seqs, (1..=400).collect(), "every commit got its own seq");
        assert_eq!(verify(&store).unwrap().0, 400);
        assert_eq!(log.head_seq(), 400);
        // Each caller's change landed with its record.
        assert_eq!(store.scan_prefix(Cf::Fields, b"t").unwrap().len(), 400);
        drop(log);
        assert_eq!(AuditLog::open(&store).unwrap().head_seq(), 400);
    }

    #[test]
    fn deferred_commits_resolve_once_durable_and_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = Arc::new(AuditLog::open(&store).unwrap());
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let (store, log) = (Arc::clone(&store), Arc::clone(&log));
                std::thread::spawn(move || {
                    let event = || AuditEvent {
                        principal: format!("p{t}"),
                        action: "read".into(),
                        ..AuditEvent::default()
                    };
                    let mut tickets = Vec::new();
                    for i in 0..40 {
                        if t % 2 == 0 && i % 4 == 0 {
                            log.commit(&store, Batch::new(), event(), 1).unwrap();
                        } else {
                            tickets.push(log.commit_deferred(&store, Batch::new(), event(), 1));
                        }
                    }
                    tickets
                })
            })
            .collect();
        let tickets: Vec<CommitTicket> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let seqs: BTreeSet<u64> = runtime.block_on(async {
            let mut seqs = BTreeSet::new();
            for t in tickets {
                seqs.insert(t.durable().await.unwrap());
            }
            seqs
        });
        assert_eq!(seqs.len(), 6 * 40 - 3 * 10);
        assert_eq!(verify(&store).unwrap().0, 240);
    }
}
